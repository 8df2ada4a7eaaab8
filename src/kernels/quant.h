/* quant.h: the ggml tensor types (GGUF's weight formats): their codes and
 * block geometry, and for the types the engine computes with a scalar
 * reference quantizer, dequantizer and dot product.
 *
 * Block layouts are exactly llama.cpp's (ggml-common.h), so a GGUF file
 * written by either program reads the same in the other:
 *   Q8_0   32 values: f16 d, i8 q[32]                       x = d*q
 *   Q4_0   32: f16 d, u8 qs[16] (x[j] low nibble, x[j+16] high)  x = d*(q-8)
 *   Q4_1   32: f16 d, f16 m, qs[16]                         x = d*q + m
 *   Q5_0   32: f16 d, u32 qh (bit j: 5th bit of x[j]), qs[16]  x = d*(q-16)
 *   Q5_1   32: f16 d, f16 m, qh, qs[16]                     x = d*q + m
 *   IQ4_NL 32: f16 d, qs[16] as Q4_0; x = d*KVALUES[q] (a non-uniform grid)
 *   Q2_K  256: u8 scales[16] (4-bit scale | 4-bit min per 16), qs[64] (2 bits),
 *              f16 d, f16 dmin                     x = d*sc*q - dmin*m
 *   Q3_K  256: hmask[32] (3rd bit), qs[64] (2 bits), scales[12] (16 6-bit
 *              signed scales, packed), f16 d       x = d*(sc-32)*(q-4)
 *   Q4_K  256: f16 d, f16 dmin, scales[12] (8 6-bit scales and mins per 32),
 *              qs[128]                             x = d*sc*q - dmin*m
 *   Q5_K  256: as Q4_K plus qh[32] (5th bits)
 *   Q6_K  256: ql[128] (low 4 bits), qh[64] (high 2), i8 scales[16], f16 d
 *                                                  x = d*sc*(q-32)
 * The bit orders inside the K-quant blocks (which value a nibble or a pair
 * of bits belongs to) are spelled out beside each codec in quant.c.
 *
 * The quantizers are this project's own (a small search over each
 * sub-block's scale and a least-squares refit, not llama.cpp's); they write
 * valid blocks of the same layout, so quality may differ from llama.cpp's
 * quantizer but any reader decodes them identically. */
#ifndef DSV_QUANT_H
#define DSV_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* ggml tensor types (the on-disk codes; gaps are retired types). */
typedef enum dsv_ggml_type {
    DSV_GGML_F32 = 0, DSV_GGML_F16 = 1, DSV_GGML_Q4_0 = 2, DSV_GGML_Q4_1 = 3,
    DSV_GGML_Q5_0 = 6, DSV_GGML_Q5_1 = 7, DSV_GGML_Q8_0 = 8, DSV_GGML_Q8_1 = 9,
    DSV_GGML_Q2_K = 10, DSV_GGML_Q3_K = 11, DSV_GGML_Q4_K = 12, DSV_GGML_Q5_K = 13,
    DSV_GGML_Q6_K = 14, DSV_GGML_Q8_K = 15, DSV_GGML_IQ2_XXS = 16, DSV_GGML_IQ2_XS = 17,
    DSV_GGML_IQ3_XXS = 18, DSV_GGML_IQ1_S = 19, DSV_GGML_IQ4_NL = 20, DSV_GGML_IQ3_S = 21,
    DSV_GGML_IQ2_S = 22, DSV_GGML_IQ4_XS = 23, DSV_GGML_I8 = 24, DSV_GGML_I16 = 25,
    DSV_GGML_I32 = 26, DSV_GGML_I64 = 27, DSV_GGML_F64 = 28, DSV_GGML_IQ1_M = 29,
    DSV_GGML_BF16 = 30, DSV_GGML_TQ1_0 = 34, DSV_GGML_TQ2_0 = 35, DSV_GGML_MXFP4 = 39,
    DSV_GGML_NTYPES = 40
} dsv_ggml_type;

/* Elements per block and bytes per block of a type; both 0 for a code that
 * is not a ggml type. */
int dsv_ggml_blck(uint32_t type);
size_t dsv_ggml_bsize(uint32_t type);
/* llama.cpp's spelling ("Q4_K", "BF16", ...), "?" for an unknown code. */
const char *dsv_ggml_name(uint32_t type);
/* Parses llama.cpp's spelling, case-insensitive; -1 if unknown. */
int dsv_ggml_from_name(const char *name);
/* Bytes of n elements of type (n a multiple of the block size). */
size_t dsv_ggml_row_size(uint32_t type, int64_t n);

/* 1 for the types the functions below compute with: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
 * Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. */
int dsv_q_supported(uint32_t type);

/* n values (a multiple of the block size) of a supported type to floats. */
void dsv_q_dequant(uint32_t type, const void *src, float *dst, int64_t n);
/* n floats to blocks of a supported type (dst: dsv_ggml_row_size bytes).
 * Deterministic; no allocation. */
void dsv_q_quant(uint32_t type, const float *src, void *dst, int64_t n);
/* Σ w[i]*x[i] over n values of a weight row of a supported type: each
 * block is decoded and its products summed in fp32 in index order, block
 * sums added in order (the reference the SIMD kernels are tested against). */
float dsv_q_dot(uint32_t type, const void *w, const float *x, int64_t n);

/* 8-bit activations, as llama.cpp computes quantized linears: a row of K
 * values (K % 32 == 0) as int8 q[K], then per 32 values the scale d =
 * amax/127 (float d[K/32]), then per 16 values the sum of their q (int16
 * s[K/16], for the types with a minimum). dsv_q8_act_bytes(K) bytes. */
size_t dsv_q8_act_bytes(int K);
void dsv_q8_act_quant(void *act, const float *x, int K);
/* The same bytes from fp32 or (x_bf16) bf16 rows, per kernel level:
 * _for(level) gives the level's variant (vector loops with the reference's
 * arithmetic). */
typedef void (*dsv_q8_act_quant_fn)(void *act, const void *x, int x_bf16, int K);
void dsv_q8_act_quant_ref(void *act, const void *x, int x_bf16, int K);
void dsv_q8_act_quant_avx512(void *act, const void *x, int x_bf16, int K);
void dsv_q8_act_quant_avx2(void *act, const void *x, int x_bf16, int K);
dsv_q8_act_quant_fn dsv_q8_act_quant_for(int level);
/* Σ w·x of a weight row of a supported block type (not F32/F16/BF16) with
 * 8-bit activations: per 16 weights, the block's integer levels times the
 * activations' integers summed exactly in int32, then scaled in fp32 as
 * the block says (dsv_q_dot's decode, in integers), block sums added in
 * order. The scalar reference; the _avx512 (VNNI) and _avx2 variants give
 * the same integer sums and may add the scaled sums in another order (each
 * variant's file documents its order; results still depend only on the
 * weight row and the activation row, never on the batch around them). A
 * variant handles the types it has kernels for and calls the reference for
 * the rest. */
float dsv_q_vec_dot_ref(uint32_t type, const void *w, const void *act, int K);
float dsv_q_vec_dot_avx512(uint32_t type, const void *w, const void *act, int K);
float dsv_q_vec_dot_avx2(uint32_t type, const void *w, const void *act, int K);
typedef float (*dsv_q_vec_dot_fn)(uint32_t type, const void *w, const void *act, int K);
/* The scale of the rounding error of any order of adding the scaled sums:
 * Σ over 16-value groups k of |d_k| * (|a_k| * Σ_i |w_i * q_i| + |b_k * s_k|)
 * in double (dsv_q_vec_dot_ref's terms, each product's magnitude before any
 * cancellation). A sum of these terms computed with p roundings on each
 * term's path (multiplications and additions, any order) is within
 * γ_p = p*u/(1-p*u) (u = 2^-24) times this of the exact value (Higham,
 * Accuracy and Stability of Numerical Algorithms, 2nd ed., §3.1, §4.2),
 * so two such orders differ by at most γ_p1 + γ_p2 times it. For tests. */
double dsv_q_dot_mag(uint32_t type, const void *w, const void *act, int K);
/* The same weight row against n <= DSV_Q_ROWS activation rows, stride bytes
 * apart, into out[n]: each result equal to the one-row call's (a block is
 * decoded once for all rows, which is what batching saves). */
#define DSV_Q_ROWS 16
void dsv_q_dot_rows_ref(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out);
void dsv_q_dot_rows_avx512(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out);
void dsv_q_dot_rows_avx2(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out);
typedef void (*dsv_q_dot_rows_fn)(uint32_t type, const void *w, const void *act, size_t stride, int n, int K,
                                  float *out);
/* The variant of a kernel level (DSV_KLEVEL_*, ops.h: a context's level). */
dsv_q_dot_rows_fn dsv_q_dot_rows_for(int level);
/* nw weight rows, wrow bytes apart, against the same n <= DSV_Q_ROWS
 * activation rows: out[j * n + r] is weight row j's dot with activation
 * row r, equal to dsv_q_dot_rows's for that weight row (one call for a
 * range of rows: the kernels' set-up and dispatch once, not per row). */
void dsv_q_dot_mat_ref(uint32_t type, const void *w, size_t wrow, int nw, const void *act, size_t stride, int n, int K,
                       float *out);
void dsv_q_dot_mat_avx512(uint32_t type, const void *w, size_t wrow, int nw, const void *act, size_t stride, int n,
                          int K, float *out);
void dsv_q_dot_mat_avx2(uint32_t type, const void *w, size_t wrow, int nw, const void *act, size_t stride, int n,
                        int K, float *out);
typedef void (*dsv_q_dot_mat_fn)(uint32_t type, const void *w, size_t wrow, int nw, const void *act, size_t stride,
                                 int n, int K, float *out);
dsv_q_dot_mat_fn dsv_q_dot_mat_for(int level);

/* Linear layers on block-quantized weights (dsv_linear.gtype): output
 * columns [n0, n1) of every input row, y [m][ldy], as the other linear
 * kernels (ops.h). Each input row is quantized to 8-bit activations and
 * each output is dsv_q_vec_dot of a weight row with it, so an output
 * depends only on its input row and weight row. Up to DSV_Q_ROWS input rows
 * are quantized together and share each weight row's decoding. scratch:
 * DSV_LIN_SCRATCH bytes (as many activation rows as fit are used).
 * dsv_linear_q rounds to bf16. level: the context's kernel level. */
struct dsv_linear;
void dsv_linear_q(uint16_t *y, int ldy, const uint16_t *x, const struct dsv_linear *w, int m, int n0, int n1,
                  void *scratch, int level);
void dsv_linear_q_f32(float *y, int ldy, const float *x, const struct dsv_linear *w, int m, int n0, int n1,
                      void *scratch, int level);
/* The same in two steps, for a layer whose rows are cut in many chunks
 * (each chunk would quantize the same inputs again): dsv_q_act_rows
 * quantizes m rows x (bf16 if x_bf16, else fp32; K wide) into act, rows
 * dsv_q_act_stride(K) bytes apart; dsv_linear_q_act computes output
 * columns [n0, n1) from them into yf (fp32) or, if yf is NULL, yb (bf16),
 * bit for bit what dsv_linear_q / dsv_linear_q_f32 give. */
size_t dsv_q_act_stride(int K);
void dsv_q_act_rows(void *act, const void *x, int x_bf16, int K, int m, int level);
void dsv_linear_q_act(float *yf, uint16_t *yb, int ldy, const void *act, const struct dsv_linear *w, int m, int n0,
                      int n1, int level);

/* The absorbed attention's per-head products on a GGUF's block-quantized
 * attn_k_b / attn_v_b (model/mla.c), with the activations as they are (no
 * 8-bit rounding): for heads h in [h0, h1) and rows r < R,
 *   y[h*R + r] = bf16(Σ_k W[h*R + r][k] * x[h*ldx + k]),  k < K,
 * W's rows wrow bytes apart (type t, K values each), x and y bf16. The
 * reference dequantizes a row with dsv_q_dequant and adds w[k]*x[k] in
 * index order in fp32 (a multiply and an add per term). The variants
 * (quant_avx2.c, quant_avx512.c, each documents its order) take each
 * weight from its block in registers: as its float value times x, or as
 * scale * (level * x) + minimum * x with the level's product exact. Any of
 * them is within γ_p (p = K + 2) times dsv_q_absorb_mag of the exact sum
 * before the bf16 rounding, so two differ by at most 2*γ_p times it. One
 * call covers a thread's heads; each output depends on its weight row and
 * its head's x alone. Needs dsv_q_absorb_ok(t, K). */
#define DSV_Q_ABSORB_KMAX 2048
int dsv_q_absorb_ok(uint32_t t, int K);
/* 1 for the types the AVX2 / AVX-512 variants decode in registers: Q8_0,
 * Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K, Q6_K (only those). */
int dsv_q_absorb_fast(uint32_t t);
/* Σ_k (|scale * level| + |minimum|) * |x[k]| over a row of K values in
 * double (int_decode's split of each weight: the terms the variants add),
 * at least Σ|w[k] * x[k]|. For tests. */
double dsv_q_absorb_mag(uint32_t t, const void *w, const float *x, int K);
typedef void (*dsv_q_absorb_fn)(uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                                uint16_t *y, int h0, int h1);
void dsv_q_absorb_ref(uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                      uint16_t *y, int h0, int h1);
void dsv_q_absorb_avx512(uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                         uint16_t *y, int h0, int h1);
void dsv_q_absorb_avx2(uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                       uint16_t *y, int h0, int h1);
/* The variant of a kernel level for type t (the reference for a type the
 * level has no kernel for). */
dsv_q_absorb_fn dsv_q_absorb_for(int level, uint32_t t);

/* IEEE half from float, round to nearest even (overflow to inf). */
uint16_t dsv_f32_to_f16(float f);

#endif /* DSV_QUANT_H */
