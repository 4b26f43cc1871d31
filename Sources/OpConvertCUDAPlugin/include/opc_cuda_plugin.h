/* The CUDA kernel plugin (driver API + NVRTC + cuBLAS, all dlopen'ed at run time, so it
   builds with no CUDA toolkit). Its only export is the ABI entry point. */
#ifndef OPC_CUDA_PLUGIN_H
#define OPC_CUDA_PLUGIN_H
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
