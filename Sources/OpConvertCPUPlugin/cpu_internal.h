/* Shared between the CPU plugin's C files (not installed, not exported). */
#ifndef OPC_CPU_INTERNAL_H
#define OPC_CPU_INTERNAL_H
#include "opc_plugin.h"

/* Internal to the plugin: hidden without -fvisibility=hidden (clang and GCC honour it). */
#pragma GCC visibility push(hidden)

/* Sets ctx's last_error (printf-style) and returns code. */
int opc_cpu_fail(opc_context *ctx, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Clears ctx's last_error and returns OPC_OK. */
int opc_cpu_ok(opc_context *ctx);
/* Worker threads kernels that split work themselves may use (>= 1). */
int opc_cpu_threads(opc_context *ctx);

/* ABI v3 kernels (cpu_transformer.c). */
int opc_cpu_embedding_forward(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr table,
                              opc_dev_ptr ids, opc_dev_ptr out);
int opc_cpu_embedding_backward(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr ids,
                               opc_dev_ptr dout, opc_dev_ptr dtable);
int opc_cpu_rmsnorm_forward(opc_context *ctx, int rows, int dim, float eps, opc_dev_ptr x, opc_dev_ptr w,
                            opc_dev_ptr y, opc_dev_ptr rstd);
int opc_cpu_rmsnorm_backward(opc_context *ctx, int rows, int dim, opc_dev_ptr x, opc_dev_ptr w, opc_dev_ptr rstd,
                             opc_dev_ptr dy, opc_dev_ptr dx, opc_dev_ptr dw);
int opc_cpu_rope(opc_context *ctx, int rows, int heads, int head_dim, opc_dev_ptr x, opc_dev_ptr positions,
                 int table_rows, opc_dev_ptr cos, opc_dev_ptr sin, int inverse);
int opc_cpu_attention_forward(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                              float scale, opc_dev_ptr q, opc_dev_ptr k, opc_dev_ptr v, opc_dev_ptr probs,
                              opc_dev_ptr out);
int opc_cpu_attention_backward(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                               float scale, opc_dev_ptr q, opc_dev_ptr k, opc_dev_ptr v, opc_dev_ptr probs,
                               opc_dev_ptr dout, opc_dev_ptr dq, opc_dev_ptr dk, opc_dev_ptr dv);
int opc_cpu_silu_gate_forward(opc_context *ctx, size_t n, opc_dev_ptr g, opc_dev_ptr u, opc_dev_ptr h);
int opc_cpu_silu_gate_backward(opc_context *ctx, size_t n, opc_dev_ptr g, opc_dev_ptr u, opc_dev_ptr dh,
                               opc_dev_ptr dg, opc_dev_ptr du);
int opc_cpu_token_xent(opc_context *ctx, int rows, int classes, opc_dev_ptr logits, opc_dev_ptr labels,
                       int64_t ignore_index, float grad_scale, opc_dev_ptr dlogits, double *loss_sum_out,
                       int64_t *count_out);
#pragma GCC visibility pop
#endif
