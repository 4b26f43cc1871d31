/* The CPU kernel plugin (OpenBLAS). Its only export is the ABI entry point. */
#ifndef OPC_CPU_PLUGIN_H
#define OPC_CPU_PLUGIN_H
#include "opc_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

__attribute__((visibility("default")))
const opc_plugin *opc_plugin_entry(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif
#endif
