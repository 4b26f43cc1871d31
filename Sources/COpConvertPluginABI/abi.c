/* Gives the header-only ABI target a compilation unit, so Swift can import it. */
#include "opc_plugin.h"
