/* ops.h: the compute kernels of the forward pass, and their dispatch table.
 *
 * Every kernel here has a scalar reference in ops_ref.c: the oracle that the
 * SIMD/AMX variants (ops_<isa>.c, same signatures) are tested against, and
 * the code that runs where no variant applies. Each context holds the set
 * it runs (ctx->kern), chosen by cpu.c at dsv_context_open from CPU features
 * (DSV32_ISA or dsv_context_params.kernels name a level); code without a
 * context is handed the table.
 *
 * Conventions (ggml style): output first, then inputs, then sizes; a kernel
 * covers one slice [n0, n1) or one (ith, nth) share of the work and never
 * allocates. The rounding points are those of the reference (model.py and
 * kernel.py at commit 87e509a): what it keeps in bf16 is rounded to bf16
 * here at the same point, accumulations are in fp32. */
#ifndef DSV_OPS_H
#define DSV_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "base/numeric.h"
#include "base/dtype.h"

/* A linear layer's weight, borrowed from the mapped checkpoint.
 * y = x · Wᵀ with W [n_out][n_in] row-major. For fp8 weights, scale is
 * weight_scale_inv [ceil(n_out/128)][ceil(n_in/128)], a multiplier despite
 * its name: W_real[r][c] = fp8(W[r][c]) * scale[r/128][c/128]. */
typedef struct dsv_linear {
    dsv_dtype dtype;       /* F8_E4M3 (with scale), BF16, F16 or F32 */
    int n_out, n_in;
    int ld;                /* elements from one row of W to the next (n_in, or
                            * more for a slice of a wider matrix's columns) */
    const void *w;
    const float *scale;
    int scale_ld;          /* ceil(n_in / 128) */
    uint32_t gtype;        /* nonzero: rows are blocks of this ggml type
                            * (kernels/quant.h; from a GGUF file), ld elements
                            * apart, and dtype is not used */
    int act_fp8;           /* nonzero (float dtypes only): the weight was fp8
                            * in its checkpoint, so the layer quantizes its
                            * input as act_quant does (linear_fp8x) */
} dsv_linear;

/* One weight element as the reference computes with it. fp8: the e4m3 code's
 * value (the block scale is applied per 128-block by the caller). Other
 * dtypes: the value, rounded to bf16 when `as_bf16` (the reference keeps
 * every non-fp8 Linear in bf16, whatever the file holds). */
static inline float dsv_weight_at(const dsv_linear *w, long i, int as_bf16) {
    float v;
    switch (w->dtype) {
    case DSV_DT_F8_E4M3: return dsv_e4m3_to_f32(((const uint8_t *)w->w)[i]);
    case DSV_DT_BF16: { dsv_bf16 h; memcpy(&h, (const char *)w->w + 2 * i, 2); return dsv_bf16_to_f32(h); }
    case DSV_DT_F16: { uint16_t h; memcpy(&h, (const char *)w->w + 2 * i, 2); v = dsv_f16_to_f32(h); break; }
    default: memcpy(&v, (const char *)w->w + 4 * i, 4); break;
    }
    return as_bf16 ? dsv_round_bf16(v) : v;
}

/* Packed activations of a linear layer: each kernel set lays out the input
 * rows of one call its own way (AMX: transposed bf16 tiles; AVX: fp32 rows,
 * bf16 rows for AVX-512's fp8 layers; generic: as given), once per call, in
 * the form its inner loop reads. The size covers the largest layout of any
 * set, so a context works whichever set runs. */
static inline size_t dsv_lin_pack_bytes(int m, int K) {
    size_t mp = ((size_t)m + 15) & ~(size_t)15, kp = ((size_t)K + 31) & ~(size_t)31;
    return mp * kp * 4 + mp * ((size_t)K / DSV_QBLOCK + 1) * 4 + 128;
}
/* Per-thread scratch bytes a linear or indexer kernel may use. */
#define DSV_LIN_SCRATCH ((size_t)384 << 10)
/* Bytes of one packed indexer query (index_q_pack) of n_heads heads. */
static inline size_t dsv_index_q_bytes(int n_heads) { return (((size_t)n_heads + 15) & ~(size_t)15) * 128 * 4 + 64; }
/* MQA attention steps (see dsv_kernels): keys padded to a multiple of 32
 * (the rows of the weights P and the stride of the scores), the bytes of
 * the packed latent rows kvp, and the floats of per-thread scratch for n
 * keys of width C and rope width R. */
static inline int dsv_mqa_keys_padded(int n) { return (n + 31) & ~31; }
static inline size_t dsv_mqa_kvp_bytes(int n, int C) { return (size_t)dsv_mqa_keys_padded(n) * (size_t)C * 2 + 64; }
/* Memory a kernel is asked to prefetch (into L2) while it computes, spread
 * over its work: n rows of `bytes` bytes at rows[i]. The caller knows what
 * it reads next (the decoder: the latent records of its next block of keys,
 * scattered over the KV cache); the kernel knows when the core is busy with
 * arithmetic, which is when the memory's latency is hidden. */
typedef struct {
    const void *const *rows;
    int n, bytes;
} dsv_prefetch;
/* Prefetches rows [*next, upto) of pf (NULL: none) and advances *next. */
static inline void dsv_prefetch_rows(const dsv_prefetch *pf, int *next, int upto) {
    if (!pf) return;
    if (upto > pf->n) upto = pf->n;
    for (; *next < upto; ++*next)
        for (int o = 0; o < pf->bytes; o += 64) __builtin_prefetch((const char *)pf->rows[*next] + o, 0, 2);
}
static inline size_t dsv_attn_scratch(int n, int C, int R) {
    return ((size_t)n + 64) * 8 + 48 * ((size_t)C + (size_t)R) + 8192;
}
/* Floats of per-thread scratch mha_attn needs for E positions, query width
 * D = N+R and value width V (AMX: the values of a head repacked, 16
 * queries' scores and weights). */
static inline size_t dsv_mha_scratch(int E, int D, int V) {
    return ((size_t)E + 64) * ((size_t)V / 2 + 26) + 8 * (size_t)D + 16 * (size_t)V + 8192;
}

typedef struct dsv_kernels {
    const char *name;

    /* act_quant (kernel.py act_quant_kernel) of n bf16 values, n % 128 == 0:
     * e4m3 codes q[n] and one scale per 128-group s[n/128]. Every set gives
     * exactly numeric.h's dsv_act_quant_bf16. */
    void (*act_quant)(uint8_t *q, float *s, const dsv_bf16 *x, int n, int scale_fmt);
    /* What the reference caches of a quantized latent: y[i] = bf16(e4m3(q[i])
     * * s[i/128]) for n values (n % 128 == 0); exact in every set. */
    void (*dequant)(dsv_bf16 *y, const uint8_t *q, const float *s, int n);

    /* Linear layers. Per call, rows [i0, i1) of the input x [m][K] are first
     * packed into xp (dsv_lin_pack_bytes(m, K) bytes); the call that packs
     * row m-1 also writes the padding. linear_* then computes the output
     * columns [n0, n1) of every row into y [m][ldy]. Each output element's
     * arithmetic depends only on its input row and weight row: not on m, the
     * other rows or [n0, n1), so batching and threading never change a
     * result. scratch: DSV_LIN_SCRATCH bytes of the calling thread.
     *
     * lin_pack_fp8 quantizes as act_quant does; linear_fp8 is fp8_gemm
     * (kernel.py): y[i][n] = bf16(Σ_kb blk_kb * (xs[i][kb] * ws[n/128][kb]))
     * where each 128-wide block's products blk_kb are summed in fp32 and then
     * promoted into the fp32 total. */
    void (*lin_pack_fp8)(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt);
    void (*linear_fp8)(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                       void *scratch);
    /* fp8_gemm's arithmetic with float weights (a GGUF model whose linears
     * were fp8 in its checkpoint: dsv_linear.act_fp8): the input rows are
     * packed by lin_pack_fp8x exactly as act_quant quantizes them, and
     * y[i][n] = bf16(Σ_kb blk_kb * xs[i][kb]), blk_kb the fp32 sum over the
     * 128-wide block of e4m3(x) * w (w as stored: bf16, f16 or f32, not
     * rounded). For weights that are e4m3 * a power-of-two block scale (a
     * ue8m0 checkpoint written as BF16 or F32) this is linear_fp8's result:
     * the scale moves through every product and sum exactly. */
    void (*lin_pack_fp8x)(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt);
    void (*linear_fp8x)(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                        void *scratch);
    /* F.linear in bf16 (weights that are not fp8, used as bf16): y = bf16(Σ
     * x·w) with fp32 accumulation. lin_pack_bf16 may be NULL: linear_bf16
     * then reads x [m][K] as given. */
    void (*lin_pack_bf16)(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1);
    void (*linear_bf16)(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                        void *scratch);
    /* F.linear in fp32 (router gate, indexer weights_proj, lm head) on fp32
     * rows x [m][K]; y [m][ldy]. */
    void (*linear_f32)(float *y, int ldy, const float *x, const dsv_linear *w, int m, int n0, int n1,
                       void *scratch);

    /* fp8_index (kernel.py). index_q_pack lays out one query's e4m3 heads
     * q8 [n_heads][128] in dsv_index_q_bytes(n_heads) bytes; index_score
     * scores nq packed queries (qp, dsv_index_q_bytes apart; head weights w
     * [nq][n_heads]) against n keys k8 [n][128] with scales ks [n]:
     *   out[q*ldo + j] = ks[j] * Σ_h w[q][h] * max(0, Σ_d q8[h][d] * k8[j][d]).
     * A score depends only on its query and key. scratch: DSV_LIN_SCRATCH. */
    void (*index_q_pack)(void *qp, const uint8_t *q8, int n_heads);
    void (*index_score)(float *out, int ldo, const void *qp, const float *w, int n_heads, int nq,
                        const uint8_t *k8, const float *ks, int n, void *scratch);

    /* Absorbed (MQA) attention of one query over n gathered latent rows
     * (model.py "MQA decode"), in steps that each split their own range, so
     * that every thread shares one token's work whatever its head count:
     *  - mqa_scores, keys [j0, j1) of every head h < H:
     *      S[h*lds + j] = bf16(bf16(bf16(q_abs·kv_j) + bf16(q_pe·pe_j)) * scale)
     *    with q_abs [H][C], q_pe [H][R], kv [n][C], pe [n][R];
     *  - softmax_bf16 of each head's scores (p = bf16(softmax(s))), which the
     *    caller writes as P [H][ldp] bf16, zeros from n to ldp =
     *    dsv_mqa_keys_padded(n);
     *  - mqa_pack (NULL in sets that read kv directly) lays out keys [j0, j1)
     *    of kv in kvp (dsv_mqa_kvp_bytes(n, C)) for mqa_pv, which gives
     *    o_lat[h][c] = bf16(Σ_j P[h][j] kv_j[c]) for every head and columns
     *    [c0, c1).
     * j0, j1 are multiples of 32 (j1 may be n), c0, c1 of 16 (c1 may be C).
     * Each score and output element depends only on its head and inputs,
     * not on the ranges. scratch: dsv_attn_scratch(n, C, R) floats.
     * mqa_scores prefetches pf (may be NULL) spread over its keys. */
    void (*mqa_scores)(float *S, int lds, const dsv_bf16 *q_abs, const dsv_bf16 *q_pe, const dsv_bf16 *kv,
                       const dsv_bf16 *pe, int H, int C, int R, float scale, int j0, int j1, const dsv_prefetch *pf,
                       float *scratch);
    void (*mqa_pack)(void *kvp, const dsv_bf16 *kv, int n, int C, int j0, int j1);
    void (*mqa_pv)(dsv_bf16 *o_lat, const dsv_bf16 *P, int ldp, const dsv_bf16 *kv, const void *kvp, int n, int H,
                   int C, int c0, int c1, float *scratch);
    /* Softmax of n scores in place (dsv_softmax_bf16; exp may round
     * differently). */
    void (*softmax_bf16)(float *x, int n);

    /* Non-absorbed (MHA prefill) attention of T queries of one sequence,
     * heads [h0, h1): query t (q [T][H][N+R] = [q_nope | q_pe]) attends to
     * the n_sel[t] positions idx[t*ldi ..] (ascending, all < E), with kvb
     * [E][H][N+V] = [k_nope | v] per position and head and pe [E][R]:
     *   s_j = bf16(bf16(q·[k_nope_j | pe_j]) * scale), p = bf16(softmax(s)),
     *   o = bf16(Σ_j p_j v_j) -> o [T][H][V].
     * A query's result depends only on that query (not on T, the other
     * queries or [h0, h1)). scratch: dsv_mha_scratch(E, N+R, V) floats. */
    void (*mha_attn)(dsv_bf16 *o, const dsv_bf16 *q, int T, const int32_t *idx, int ldi, const int32_t *n_sel,
                     const dsv_bf16 *kvb, const dsv_bf16 *pe, int E, int H, int N, int R, int V, float scale,
                     int h0, int h1, float *scratch);

    /* Row ops of the forward pass, as their reference functions declared
     * below (dsv_rmsnorm, dsv_rmsnorm_residual, dsv_rope, dsv_hadamard128,
     * dsv_swiglu, dsv_axpy_bf16): the same per-element arithmetic, except that a norm's sum
     * of squares and SwiGLU's exp may round differently. */
    void (*rmsnorm)(dsv_bf16 *y, const dsv_bf16 *x, const float *w, int n, float eps);
    void (*rmsnorm_residual)(dsv_bf16 *y, dsv_bf16 *res, const dsv_bf16 *x, const float *w, int n, float eps);
    void (*rope)(dsv_bf16 *x, const float *cos, const float *sin, int n_half, int interleaved);
    void (*hadamard128)(dsv_bf16 *x);
    void (*swiglu)(dsv_bf16 *y, const dsv_bf16 *a, const dsv_bf16 *b, int n);
    /* The MoE's weighted sum: y[i] += float(x[i]) * w, the product rounded
     * before the add (exact in every set: the same two operations). */
    void (*axpy_bf16)(float *y, const dsv_bf16 *x, float w, int n);

    /* The absorbed query of one head (model.py: einsum("bshd,hdc->bshc",
     * q_nope, wkv_b[:, :nope])): q_abs[c] = bf16(Σ_d q_nope[d] * Wb[row0+d][c])
     * over d < N, where Wb is wkv_b as the reference's bf16 weight_dequant
     * (fp8: bf16(e4m3 * block scale)). acc: C floats of scratch. */
    void (*absorb_q)(dsv_bf16 *q_abs, const dsv_bf16 *q_nope, const dsv_linear *wkv_b,
                     int row0, int N, float *acc);
    /* The head's output (einsum("bshc,hdc->bshd", o_lat, wkv_b[:, -v:])):
     * o[d] = bf16(Σ_c o_lat[c] * Wb[row0+d][c]) for d < V. */
    void (*absorb_o)(dsv_bf16 *o, const dsv_bf16 *o_lat, const dsv_linear *wkv_b, int row0, int V);
} dsv_kernels;

/* The sets: generic (ops_ref.c) everywhere; on x86-64 also avx2, avx512 and
 * amx (ops_<isa>.c), each used only where cpu.c finds CPU and OS support. */
extern const dsv_kernels dsv_kernels_ref;
#if defined(__x86_64__)
extern const dsv_kernels dsv_kernels_avx2, dsv_kernels_avx512, dsv_kernels_amx;
#endif

/* wkv_b's element (r, c) as the reference's bf16 weight_dequant gives it. */
static inline float dsv_wkvb_at(const dsv_linear *w, int r, int c) {
    long i = (long)r * w->ld + c;
    if (w->dtype != DSV_DT_F8_E4M3) return dsv_weight_at(w, i, 1);
    float s = w->scale[(size_t)(r / DSV_QBLOCK) * w->scale_ld + c / DSV_QBLOCK];
    return dsv_round_bf16(dsv_e4m3_to_f32(((const uint8_t *)w->w)[i]) * s);
}

/* ---- small shared ops (ops_ref.c) --------------------------------------------
 * The reference versions; the forward pass calls the row ops through the
 * table (ctx->kern->rmsnorm, ...). */

/* Softmax as torch computes it on a bf16 tensor: fp32 inside, bf16 out.
 * In place over n scores (already bf16 values); returns nothing. */
void dsv_softmax_bf16(float *x, int n);

/* RMSNorm (model.py RMSNorm.forward): y = bf16(w * x * rsqrt(mean(x²) + eps)). */
void dsv_rmsnorm(dsv_bf16 *y, const dsv_bf16 *x, const float *w, int n, float eps);
/* The fused residual form: r = float(x) + float(res); y = bf16(w*r*rsqrt(mean(r²)+eps));
 * res = bf16(r). */
void dsv_rmsnorm_residual(dsv_bf16 *y, dsv_bf16 *res, const dsv_bf16 *x, const float *w,
                          int n, float eps);
/* LayerNorm with bias over n values in fp32, output bf16 (indexer k_norm). */
void dsv_layernorm(dsv_bf16 *y, const dsv_bf16 *x, const float *w, const float *b, int n,
                   float eps);

/* RoPE over the first 2*n_half values of x (bf16, in place) with cos/sin
 * [n_half] (model.py apply_rotary_emb, fp32 maths, bf16 out).
 * Interleaved pairs (x[2i], x[2i+1]) for MLA; half-split pairs (x[i],
 * x[i+n_half]) for the indexer. */
void dsv_rope(dsv_bf16 *x, const float *cos, const float *sin, int n_half, int interleaved);

/* Walsh-Hadamard transform of 128 bf16 values, scaled by 128^-0.5, in
 * place (fast_hadamard_transform; fp32 inside, bf16 out). */
void dsv_hadamard128(dsv_bf16 *x);

/* y = bf16(silu(float(a)) * float(b)) (model.py MLP/Expert). */
void dsv_swiglu(dsv_bf16 *y, const dsv_bf16 *a, const dsv_bf16 *b, int n);

/* y[i] += float(x[i]) * w (model.py MoE: y += expert(x) * weight, in fp32). */
void dsv_axpy_bf16(float *y, const dsv_bf16 *x, float w, int n);

/* Top-k of n scores: idx gets the k largest in descending order, ties broken
 * toward the lower position (deterministic). k <= n. scratch: n int32. */
void dsv_topk(int32_t *idx, const float *scores, int n, int k, int32_t *scratch);
/* The same choice in O(n) (a radix select on the scores' bits, topk.c): pos
 * gets the k chosen positions in ascending order and, when ranked is not
 * NULL, ranked gets them in dsv_topk's order. scratch: dsv_topk_scratch(n)
 * int32. */
static inline size_t dsv_topk_scratch(int n) { return 2 * (size_t)n + 8192; }
void dsv_topk_select(int32_t *pos, int32_t *ranked, const float *scores, int n, int k, int32_t *scratch);

/* Kernel levels (cpu.c), lowest first; a level's set runs on any CPU that
 * runs a higher one. */
enum { DSV_KLEVEL_GENERIC, DSV_KLEVEL_AVX2, DSV_KLEVEL_AVX512, DSV_KLEVEL_AMX, DSV_KLEVEL_COUNT };
/* "generic", "avx2", "avx512", "amx"; NULL out of range. */
const char *dsv_kernels_level_name(int level);
/* The level called `name`, or -1. */
int dsv_kernels_level_parse(const char *name);
/* The best level this CPU, OS and build support (detected once). */
int dsv_kernels_top(void);
/* The set of a level, or NULL when this machine lacks it. */
const dsv_kernels *dsv_kernels_at(int level);
/* The level of a set (-1 for a table that is none of the sets). */
int dsv_kernels_level_of(const dsv_kernels *k);
/* The set a context runs: the level `name` when it is not NULL or "", else
 * DSV32_ISA when it is set, else the best this machine supports. Errors:
 * DSV_ERR_ARG (unknown name), DSV_ERR_UNSUPPORTED (a level this machine
 * lacks); the message names DSV32_ISA when the name came from it. */
int dsv_kernels_choose(const dsv_kernels **out, const char *name);
/* DSV32_ISA's level, or -1 when it is unset or names no level (for code
 * that picks its own kernels, like training's GEMM). */
int dsv_kernels_env_level(void);

#endif
