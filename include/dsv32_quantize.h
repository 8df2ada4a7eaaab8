/* dsv32_quantize.h: writing a Hugging Face DeepSeek-V3.2 checkpoint as a GGUF
 * file that llama.cpp also loads (`dsv32 quantize`).
 *
 * The output has arch "deepseek32", llama.cpp's tensor names and layouts
 * (kv_b_proj split into attn_k_b, transposed per head, and attn_v_b; routed
 * experts stacked per layer), its metadata keys and the tokenizer from
 * tokenizer.json (+ tokenizer_config.json) as llama.cpp's converter writes
 * it. Tensors are read one at a time through the mapping and written a row at
 * a time, so memory stays bounded by one row per tensor plus a head's k_b.
 *
 * Types per tensor (the "policy"), from the preset T:
 *   routed experts gate/up: T; routed experts down: one step up;
 *   attention, shared experts, dense layers' MLP: two steps up;
 *   token_embd: one step up; output: two steps up, at least Q6_K;
 *   indexer projections: BF16; router, indexer weights_proj, norms, biases: F32.
 * Steps: Q2_K < Q3_K < Q4_K < Q5_K < Q6_K < Q8_0 (the ladder ends at Q8_0).
 * F32/F16/BF16 presets write every matrix at that type (router and indexer
 * weights_proj stay F32, as llama.cpp's converter keeps them). Rows a block
 * type cannot hold fall back as llama.cpp does: Q2_K/Q3_K -> IQ4_NL,
 * Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and rows not a multiple of 32 to
 * BF16. --tensor-type REGEX=T rules (POSIX extended regex on the GGUF
 * tensor name, first match wins) override the policy before fallbacks. */
#ifndef DSV32_QUANTIZE_H
#define DSV32_QUANTIZE_H

#include <stdint.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsv_quantize_params {
    const char *model_dir;          /* Hugging Face directory (FP8 or BF16) */
    const char *out_path;           /* NAME.gguf; with splits NAME-0000i-of-0000N.gguf */
    const char *preset;             /* Q8_0, Q4_K_M, Q2_K, F32, F16, BF16, or a
                                     * type (Q4_0, Q5_K, IQ4_NL, ...) as the base */
    const char *const *overrides;   /* "REGEX=TYPE" */
    int n_overrides;
    uint64_t split_max_size;        /* bytes of tensor data per file; 0: one file */
    const char *arch;               /* "deepseek32" (NULL: the default) or "deepseek2":
                                     * without the indexer (DeepSeek-V3's layout) */
    /* Called after each tensor with counts (may be NULL). */
    void (*progress)(int done, int total, const char *tensor, const char *type, void *user);
    void *progress_user;
    /* Called once per line of the policy summary (may be NULL). */
    void (*report)(const char *line, void *user);
    void *report_user;
} dsv_quantize_params;

/* Writes the GGUF. Errors: DSV_ERR_ARG (bad preset, rule or type),
 * DSV_ERR_IO, DSV_ERR_FORMAT/CONFIG/MODEL (the input), DSV_ERR_NOMEM. On
 * error no partial output file is left under the output name. */
DSV_API int dsv_quantize(const dsv_quantize_params *p);

#ifdef __cplusplus
}
#endif

#endif /* DSV32_QUANTIZE_H */
