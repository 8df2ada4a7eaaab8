/* ops_avx512.c: the AVX-512 kernel set (F, BW, DQ, VL, BF16).
 *
 * Dot products run on fp32 FMA over 16 lanes, or on AVX512_BF16's pair dot
 * product (VDPBF16PS) where both operands are bf16: bf16 and e4m3 operands
 * widen exactly, and a product of two such values is exact in fp32, so
 * every product is the reference's; only the order of the fp32 additions
 * differs from ops_ref.c (lane-wise partial sums, then one fixed reduction
 * tree, hsum_tree). That order depends only on the element's own row and
 * weight row, never on how many rows a call carries or on the tile the
 * kernel happens to process it in: edge tiles run the same per-element
 * sequence, so batch and thread splits give identical bits.
 *
 * Linear layers: bf16 and fp8 weights run on VDPBF16PS. bf16 layers read
 * their inputs as given (bf16 rows, zero-padded to 32) and their weights in
 * place; fp8 layers widen weights and quantized inputs to bf16 (exact: e4m3
 * has 3 mantissa bits) and promote each 128-wide block's sum by the
 * block's scales (fp8_gemm's two-level accumulation, lane by lane). One or
 * two input rows (up to 4 for fp8: decoding) take one weight row at a time,
 * a sequential stream; more rows (prefill) run register tiles that reuse
 * each loaded weight vector over 6 input rows (bf16: 4 x 6, fp8: 2 x 6 from
 * weight rows widened once into the thread's scratch), over blocks of
 * weight rows that stay in L2. The fp32 linears (router, indexer weights,
 * lm head: fp32 inputs) keep fp32 FMA, 4 x 4 tiles.
 *
 * Subnormals: VDPBF16PS treats subnormal inputs and partial sums as zero.
 * fp8 operands are never subnormal in bf16 (see fp8_row); bf16 layers lose
 * products and partial sums below 2^-126 in magnitude, as the AMX tiles do
 * (their TDPBF16PS has the same rule), which moves an output only when it
 * is itself that small. The indexer's e4m3 queries and keys take the same
 * dot product. Attention processes 8 heads per pass over the keys, so each
 * key row is read once per 8 heads; the absorptions stream wkv_b once.
 * Elsewhere AVX512_BF16 is not used: its conversions flush subnormals,
 * which bf16 activations may hold.
 */
#include <math.h>
#include <string.h>

#include "lin_rows.h"
#include "ops_avx512.h"

#define UNROLL _Pragma("GCC unroll 16")

static inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* ---- act_quant and its inverse ------------------------------------------ */

void dsv_avx512_act_quant(uint8_t *q, float *s, const dsv_bf16 *x, int n, int scale_fmt) {
    for (int g = 0; g < n / DSV_QBLOCK; g++) {
        __m512 v[8];
        for (int i = 0; i < 8; i++) v[i] = bf16x16_load(x + g * DSV_QBLOCK + 16 * i);
        s[g] = act_quant_group(q + g * DSV_QBLOCK, v, scale_fmt);
    }
}

/* The sparse attention's gather runs this on every selected latent row, so
 * the usual case takes a shorter path: for a block scale in [2^-116, 2^100]
 * no product of an e4m3 value (|v| in [2^-9, 448]) and the scale is an fp32
 * subnormal or overflows, and then AVX512_BF16's two-vector conversion
 * (round to nearest even; it flushes only subnormal inputs) gives exactly
 * dsv_f32_to_bf16. The 2^8 that e4m3x16_scaled leaves out is folded into
 * the scale (a power of two: the same real product, the same rounding);
 * NaN codes become the quiet NaN the reference gives. Other scales take the
 * generic path. */
void dsv_avx512_dequant(dsv_bf16 *y, const uint8_t *q, const float *s, int n) {
    for (int b = 0; b < n; b += DSV_QBLOCK) {
        const float sb = s[b / DSV_QBLOCK];
        if (sb >= 0x1p-116f && sb <= 0x1p100f) {
            const __m512 s256 = _mm512_set1_ps(sb * 256.0f);
            for (int i = b; i < b + DSV_QBLOCK; i += 32) {
                const __m512 lo = _mm512_mul_ps(e4m3x16_scaled(q + i), s256);
                const __m512 hi = _mm512_mul_ps(e4m3x16_scaled(q + i + 16), s256);
                const __m256i c = _mm256_loadu_si256((const void *)(q + i));
                const __mmask32 nan = _mm256_cmpeq_epi8_mask(_mm256_and_si256(c, _mm256_set1_epi8(0x7f)), _mm256_set1_epi8(0x7f));
                const __m512i r = _mm512_mask_mov_epi16((__m512i)_mm512_cvtne2ps_pbh(hi, lo), nan, _mm512_set1_epi16(0x7fc0));
                _mm512_storeu_si512((void *)(y + i), r);
            }
            continue;
        }
        for (int i = b; i < b + DSV_QBLOCK; i += 16)
            bf16x16_store(y + i, _mm512_mul_ps(e4m3x16_load_nan(q + i), _mm512_set1_ps(sb)));
    }
}

/* ---- linear layers ------------------------------------------------------- */

/* Packed input of bf16 layers: bf16 rows (lin_pack_bf16). Of fp8 layers: the e4m3
 * values (unscaled) as bf16 rows [m][K] (exact: e4m3 has 3 mantissa bits),
 * then the scales [m][K/128] from the next 64-byte boundary. */
static float *pack_scales(void *xp, int m, int K) {
    return (float *)((char *)xp + (((size_t)m * K * 2 + 63) & ~(size_t)63));
}

static void lin_pack_fp8(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt) {
    float *xs = pack_scales(xp, m, K);
    for (int i = i0; i < i1; i++) {
        dsv_bf16 *xb = (dsv_bf16 *)xp + (size_t)i * K;
        for (int g = 0; g < K / DSV_QBLOCK; g++) {
            __m512 v[8];
            uint8_t q[DSV_QBLOCK];
            for (int j = 0; j < 8; j++) v[j] = bf16x16_load(x + (size_t)i * K + g * DSV_QBLOCK + 16 * j);
            xs[(size_t)i * (K / DSV_QBLOCK) + g] = act_quant_group(q, v, scale_fmt);
            for (int j = 0; j < 8; j++) bf16x16_store(xb + g * DSV_QBLOCK + 16 * j, e4m3x16_load_nan(q + 16 * j));
        }
    }
}

/* bf16 layers: the rows as given, each zero-padded to a multiple of 32
 * (kpad32), so every step of the pair dot product reads whole vectors. */
static inline int kpad32(int K) { return (K + 31) & ~31; }

static void lin_pack_bf16(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1) {
    (void)m;
    const int Kp = kpad32(K);
    for (int i = i0; i < i1; i++) {
        dsv_bf16 *d = (dsv_bf16 *)xp + (size_t)i * Kp;
        memcpy(d, x + (size_t)i * K, (size_t)K * sizeof *d);
        memset(d + K, 0, (size_t)(Kp - K) * sizeof *d);
    }
}

/* 16 weights from element index i of row-major w, as fp32; the first n
 * only when n < 16. as_bf16: non-bf16 weights rounded to bf16 first (the
 * reference runs every non-fp8 Linear in bf16). */
static inline __attribute__((always_inline)) __m512 w_load(const void *w, dsv_dtype dt, size_t i, int n,
                                                           int as_bf16) {
    const __mmask16 m = tail_mask(n);
    __m512 v;
    switch (dt) {
    case DSV_DT_BF16:
        return n >= 16 ? bf16x16_load((const dsv_bf16 *)w + i) : bf16x16_load_n((const dsv_bf16 *)w + i, n);
    case DSV_DT_F16:
        v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i));
        break;
    default:
        v = _mm512_maskz_loadu_ps(m, (const float *)w + i);
        break;
    }
    return as_bf16 ? f32x16_round_bf16(v) : v;
}

/* One tile of an F.linear: weight rows n..n+nr, input rows i..i+mr, fp32
 * accumulators over the whole K (lane l sums k = l mod 16 in order), then
 * one reduction. out_bf16 selects bf16 or fp32 output. */
static inline __attribute__((always_inline)) void dense_tile(void *y, int ldy, int out_bf16, const float *x, int ldx,
                                                             const dsv_linear *w, dsv_dtype dt, int as_bf16, int n,
                                                             int i, int nr, int mr) {
    const int K = w->n_in;
    __m512 acc[4][4];
    UNROLL for (int r = 0; r < 4; r++) UNROLL for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        const int len = K - k < 16 ? K - k : 16;
        __m512 wv[4];
        UNROLL for (int r = 0; r < 4; r++)
            wv[r] = r < nr ? w_load(w->w, dt, (size_t)(n + r) * w->ld + k, len, as_bf16) : _mm512_setzero_ps();
        UNROLL for (int c = 0; c < 4; c++) {
            if (c >= mr) continue;
            const __m512 xv = _mm512_maskz_loadu_ps(tail_mask(len), x + (size_t)(i + c) * ldx + k);
            UNROLL for (int r = 0; r < 4; r++) if (r < nr) acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
    UNROLL for (int r = 0; r < 4; r++) UNROLL for (int c = 0; c < 4; c++) {
        if (r >= nr || c >= mr) continue;
        const float v = _mm512_reduce_add_ps(acc[r][c]);
        if (out_bf16) ((dsv_bf16 *)y)[(size_t)(i + c) * ldy + n + r] = dsv_f32_to_bf16(v);
        else ((float *)y)[(size_t)(i + c) * ldy + n + r] = v;
    }
}

/* The fp32 linears (linear_f32): tiles of 4 weight rows by 4 input rows; the same per-element arithmetic
 * in the narrower edge tiles. Blocks of 64 weight rows stay in L2 while
 * every input row passes over them, 4 at a time (those in L1). One or two
 * input rows (decoding) take one weight row at a time instead: a
 * sequential stream, as fp8_row reads, at ~1.4x the bandwidth of 4
 * interleaved rows (tools/kbench); from 3 rows on, the 4x4 tile's reuse of
 * each loaded input wins. */
static inline __attribute__((always_inline)) void dense(void *y, int ldy, int out_bf16, const float *x, int ldx,
                                                        const dsv_linear *w, dsv_dtype dt, int as_bf16, int m, int n0,
                                                        int n1) {
    if (m <= 2) {
        for (int n = n0; n < n1; n++) {
            if (m == 2) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, 0, 1, 2);
            else dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, 0, 1, 1);
        }
        return;
    }
    for (int nb = n0; nb < n1; nb += 64) {
        const int ne = n1 - nb < 64 ? n1 : nb + 64;
        for (int i = 0; i < m; i += 4) {
            const int mr = m - i < 4 ? m - i : 4;
            int n = nb;
            for (; n + 4 <= ne; n += 4) {
                if (mr == 4) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, i, 4, 4);
                else for (int r = i; r < m; r++) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, r, 4, 1);
            }
            for (; n < ne; n++) {
                if (mr == 4) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, i, 1, 4);
                else for (int r = i; r < m; r++) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, r, 1, 1);
            }
        }
    }
}

/* The sum of a vector's 16 lanes in one fixed tree: lanes j and j+8, then
 * j and j+4, j and j+2, j and j+1. reduce16 computes the same tree for 16
 * vectors at once; a linear's outputs go through one or the other
 * depending on the tile they fall in, so the two must agree bit for bit
 * (fp32 addition is commutative, and each pairs the same partial sums). */
static inline float hsum_tree(__m512 v) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}
/* hsum_tree of v[0..16): lane 4k+p of the result holds the sum of v[4p+k]. */
static inline __attribute__((always_inline)) __m512 reduce16(const __m512 v[16]) {
    __m512 h[8], q[4], e[2];
    UNROLL for (int i = 0; i < 8; i++) /* j + j+8: lanes 0-7 of v[2i], 8-15 of v[2i+1] */
        h[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    UNROLL for (int i = 0; i < 4; i++) /* j + j+4: 128-bit lane l of v[4i+l] */
        q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0xdd));
    UNROLL for (int i = 0; i < 2; i++) /* j + j+2 */
        e[i] = _mm512_add_ps(_mm512_shuffle_ps(q[2 * i], q[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(q[2 * i], q[2 * i + 1], 0xee));
    /* j + j+1 */
    return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xdd));
}

/* 32 weights from element index i as bf16 pairs; the first n only when
 * n < 32 (zeros after). f16 and f32 weights are rounded to bf16, as the
 * reference runs every non-fp8 Linear in bf16. */
static inline __attribute__((always_inline)) __m512i w_load32(const void *w, dsv_dtype dt, size_t i, int n) {
    if (dt == DSV_DT_BF16)
        return n >= 32 ? _mm512_loadu_si512((const dsv_bf16 *)w + i)
                       : _mm512_maskz_loadu_epi16(((__mmask32)1 << n) - 1, (const dsv_bf16 *)w + i);
    const __m512 lo = w_load(w, dt, i, n < 16 ? n : 16, 0);
    const __m512 hi = n > 16 ? w_load(w, dt, i + 16, n - 16, 0) : _mm512_setzero_ps();
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(f32x16_bf16_bits(lo))),
                              _mm512_cvtepi32_epi16(f32x16_bf16_bits(hi)), 1);
}

/* Rows of the bf16 register tile: 4 weight rows by up to 6 input rows,
 * 24 accumulators (of 32 registers) besides the 4 weight vectors and one
 * input vector; each 32-wide step loads 10 vectors for 24 dot products. */
#define BF_NR 4
#define BF_MR 6

/* One step of k (len <= 32 values) of a bf16 tile. */
static inline __attribute__((always_inline)) void bf16_step(__m512 acc[BF_NR][BF_MR], const dsv_bf16 *x, int Kp,
                                                            const dsv_linear *w, dsv_dtype dt, int n, int i, int nr,
                                                            int mr, int k, int len) {
    __m512i wv[BF_NR];
    UNROLL for (int r = 0; r < BF_NR; r++)
        wv[r] = r < nr ? w_load32(w->w, dt, (size_t)(n + r) * w->ld + k, len) : _mm512_setzero_si512();
    UNROLL for (int c = 0; c < BF_MR; c++) {
        if (c >= mr) continue;
        const __m512i xv = _mm512_loadu_si512((const void *)(x + (size_t)(i + c) * Kp + k));
        UNROLL for (int r = 0; r < BF_NR; r++)
            if (r < nr) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], (__m512bh)xv);
    }
}

/* One tile of a bf16 F.linear: weight rows n..n+nr, input rows i..i+mr.
 * Per output element: one accumulator over the whole K, each lane adding
 * the pair products of k = 32t + 2l, 32t + 2l + 1 (VDPBF16PS) in order of
 * t, then hsum_tree (or reduce16, the same tree), then one rounding to
 * bf16. Nothing in that sequence depends on nr, mr or the tile's place. */
static inline __attribute__((always_inline)) void bf16_tile(dsv_bf16 *y, int ldy, const dsv_bf16 *x, int Kp,
                                                            const dsv_linear *w, dsv_dtype dt, int n, int i, int nr,
                                                            int mr) {
    const int K = w->n_in;
    __m512 acc[BF_NR][BF_MR];
    UNROLL for (int r = 0; r < BF_NR; r++) UNROLL for (int c = 0; c < BF_MR; c++) acc[r][c] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) bf16_step(acc, x, Kp, w, dt, n, i, nr, mr, k, 32);
    if (k < K) bf16_step(acc, x, Kp, w, dt, n, i, nr, mr, k, K - k);
    if (nr == 1) {
        UNROLL for (int c = 0; c < BF_MR; c++)
            if (c < mr) y[(size_t)(i + c) * ldy + n] = dsv_f32_to_bf16(hsum_tree(acc[0][c]));
        return;
    }
    /* Groups of 4 input rows: v[4c + r] = acc[r][c], so lane 4r + c of the
     * reduction is element (c, r). */
    UNROLL for (int c0 = 0; c0 < BF_MR; c0 += 4) {
        if (c0 >= mr) continue;
        __m512 v[16];
        UNROLL for (int c = 0; c < 4; c++) UNROLL for (int r = 0; r < 4; r++)
            v[4 * c + r] = c0 + c < BF_MR ? acc[r][c0 + c < BF_MR ? c0 + c : 0] : _mm512_setzero_ps();
        float out[16];
        _mm512_storeu_ps(out, reduce16(v));
        UNROLL for (int c = 0; c < 4; c++) UNROLL for (int r = 0; r < 4; r++)
            if (c0 + c < mr && r < nr) y[(size_t)(i + c0 + c) * ldy + n + r] = dsv_f32_to_bf16(out[4 * r + c]);
    }
}

/* Input rows [i, i+mr) against weight rows [nb, ne) in tiles of 4. */
static inline __attribute__((always_inline)) void bf16_rows(dsv_bf16 *y, int ldy, const dsv_bf16 *x, int Kp,
                                                            const dsv_linear *w, dsv_dtype dt, int nb, int ne, int i,
                                                            int mr) {
    int n = nb;
    for (; n + BF_NR <= ne; n += BF_NR) bf16_tile(y, ldy, x, Kp, w, dt, n, i, BF_NR, mr);
    for (; n < ne; n++) bf16_tile(y, ldy, x, Kp, w, dt, n, i, 1, mr);
}

/* One or two input rows (decoding) take one weight row at a time: a
 * sequential stream, which the hardware prefetchers follow (tools/kbench).
 * More rows: blocks of weight rows that stay in L2 (about 256 KB) while
 * every input row passes over them, 6 at a time (in L1 for K <= 2048),
 * in 4 x 6 tiles. */
static inline __attribute__((always_inline)) void bf16_linear(dsv_bf16 *y, int ldy, const dsv_bf16 *x,
                                                              const dsv_linear *w, dsv_dtype dt, int m, int n0,
                                                              int n1) {
    const int Kp = kpad32(w->n_in);
    if (m <= 2) {
        for (int n = n0; n < n1; n++) {
            if (m == 2) bf16_tile(y, ldy, x, Kp, w, dt, n, 0, 1, 2);
            else bf16_tile(y, ldy, x, Kp, w, dt, n, 0, 1, 1);
        }
        return;
    }
    const size_t row = (size_t)Kp * (dt == DSV_DT_F32 ? 4 : 2);
    int nblk = (int)(((size_t)256 << 10) / row) / BF_NR * BF_NR;
    nblk = nblk < BF_NR ? BF_NR : nblk;
    for (int nb = n0; nb < n1; nb += nblk) {
        const int ne = n1 - nb < nblk ? n1 : nb + nblk;
        for (int i = 0; i < m; i += BF_MR) {
            switch (m - i < BF_MR ? m - i : BF_MR) {
            case 6: bf16_rows(y, ldy, x, Kp, w, dt, nb, ne, i, 6); break;
            case 5: bf16_rows(y, ldy, x, Kp, w, dt, nb, ne, i, 5); break;
            case 4: bf16_rows(y, ldy, x, Kp, w, dt, nb, ne, i, 4); break;
            case 3: bf16_rows(y, ldy, x, Kp, w, dt, nb, ne, i, 3); break;
            case 2: bf16_rows(y, ldy, x, Kp, w, dt, nb, ne, i, 2); break;
            default: bf16_rows(y, ldy, x, Kp, w, dt, nb, ne, i, 1); break;
            }
        }
    }
}

static void linear_bf16(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                        void *scratch) {
    (void)scratch;
    switch (w->dtype) {
    case DSV_DT_BF16: bf16_linear(y, ldy, xp, w, DSV_DT_BF16, m, n0, n1); break;
    case DSV_DT_F16: bf16_linear(y, ldy, xp, w, DSV_DT_F16, m, n0, n1); break;
    default: bf16_linear(y, ldy, xp, w, DSV_DT_F32, m, n0, n1); break;
    }
}

void dsv_avx512_linear_f32(float *y, int ldy, const float *x, const dsv_linear *w, int m, int n0, int n1,
                           void *scratch) {
    (void)scratch;
    switch (w->dtype) {
    case DSV_DT_BF16: dense(y, ldy, 0, x, w->n_in, w, DSV_DT_BF16, 0, m, n0, n1); break;
    case DSV_DT_F16: dense(y, ldy, 0, x, w->n_in, w, DSV_DT_F16, 0, m, n0, n1); break;
    default: dense(y, ldy, 0, x, w->n_in, w, DSV_DT_F32, 0, m, n0, n1); break;
    }
}

/* 32 e4m3 weight codes -> their values as 32 bf16 (exact), in order. A
 * normal code s.eeee.mmm is the bf16 s.(eeee+120).mmm0000, built with a
 * shift, a mask and an add; the 8 subnormal magnitudes (eeee = 0: mmm * 2^-9,
 * normal in bf16) come from a table `sub` indexed by the code's low bits.
 * 0x7f/0xff read as +-480, as e4m3x16_scaled does (weights hold no NaN). */
static inline __attribute__((always_inline)) __m512i e4m3x32_bf16(const uint8_t *p, __m512i sub) {
    const __m512i c = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const void *)p)); /* sign-extended */
    __m512i v = _mm512_add_epi16(_mm512_and_si512(_mm512_slli_epi16(c, 4), _mm512_set1_epi16(0x07f0)),
                                 _mm512_set1_epi16(120 << 7));
    v = _mm512_mask_permutexvar_epi16(v, _mm512_testn_epi16_mask(c, _mm512_set1_epi16(0x78)), c, sub);
    return _mm512_ternarylogic_epi32(v, c, _mm512_set1_epi16((short)0x8000), 0xf8); /* v | (c & sign) */
}
/* The table e4m3x32_bf16 reads: entry i < 8 holds bf16(i * 2^-9). */
static inline __m512i e4m3_sub_table(void) {
    const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)),
                                   _mm512_set1_ps(1.0f / 512));
    return _mm512_castsi256_si512(_mm512_cvtepi32_epi16(f32x16_bf16_bits(f)));
}

static inline __m512 dot_bf16(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

/* One weight row n of fp8_gemm against input rows i..i+mr (mr <= 4). Per
 * 128-wide block, the four 32-wide steps' pair dot products (AVX512_BF16:
 * each lane adds the products of two adjacent inputs) chain into one
 * accumulator started at zero, and the block sum is promoted into the
 * total as tot += blk * (xs * ws); one hsum_tree at the end. The weight row
 * is widened once for all mr inputs.
 *
 * One row at a time: the weights are then read as one sequential stream,
 * which the hardware prefetchers follow across rows; tiles that read 4
 * rows side by side (4 short streams, restarted every tile) measured half
 * the bandwidth on an AMD EPYC (tools/kbench). The blocks' chains are
 * independent of each other (only the promotion links them), so the core
 * overlaps the dot products' latency across blocks.
 *
 * Exact as fp32 FMA would be: weights and inputs are e4m3 values, exact in
 * bf16 and never bf16 subnormals (the smallest, 2^-9, is normal), so the
 * dot product's flush of subnormal inputs never applies; the products are
 * exact in fp32 and multiples of 2^-18, and so is every partial sum and its
 * rounding, so no sum is an fp32 subnormal that would be flushed either.
 * The order of additions is fixed by the element's own rows alone: batching
 * and column splits give the same bits (fp8_tile runs the same sequence). */
static inline __attribute__((always_inline)) void fp8_row(dsv_bf16 *y, int ldy, const dsv_bf16 *x, const float *xs,
                                                          const dsv_linear *w, int n, int i, int mr, __m512i sub) {
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const uint8_t *W = (const uint8_t *)w->w + (size_t)n * w->ld;
    const float *ws = w->scale + (size_t)(n / DSV_QBLOCK) * w->scale_ld;
    __m512 tot[4];
    UNROLL for (int c = 0; c < 4; c++) tot[c] = _mm512_setzero_ps();
    for (int kb = 0; kb < nb; kb++) {
        const int k0 = kb * DSV_QBLOCK;
        __m512i wv[4];
        UNROLL for (int j = 0; j < 4; j++) wv[j] = e4m3x32_bf16(W + k0 + 32 * j, sub);
        UNROLL for (int c = 0; c < 4; c++) {
            if (c >= mr) continue;
            const dsv_bf16 *xr = x + (size_t)(i + c) * K + k0;
            __m512 blk = _mm512_setzero_ps();
            UNROLL for (int j = 0; j < 4; j++) blk = dot_bf16(blk, wv[j], _mm512_loadu_si512((const void *)(xr + 32 * j)));
            tot[c] = _mm512_fmadd_ps(blk, _mm512_set1_ps(xs[(size_t)(i + c) * nb + kb] * ws[kb]), tot[c]);
        }
    }
    UNROLL for (int c = 0; c < 4; c++)
        if (c < mr) y[(size_t)(i + c) * ldy + n] = dsv_f32_to_bf16(hsum_tree(tot[c]));
}

/* The fp8 prefill tile: 2 weight rows (widened to bf16 in the scratch
 * buffer wb, rows K apart) by up to 6 input rows, in the order of fp8_row
 * for every element: per 128-wide block the four 32-wide pair dot products
 * chained from zero, promoted as tot += blk * (xs * ws); one hsum_tree (as
 * reduce16) at the end. The rows of a tile lie in one 128-row scale block,
 * so ws is theirs. 2 x 12 accumulators (blk, tot) of 32 registers; each
 * 32-wide step loads 8 vectors for 12 dot products. */
#define F8_NR 2
#define F8_MR 6
static inline __attribute__((always_inline)) void fp8_tile(dsv_bf16 *y, int ldy, const dsv_bf16 *x, const float *xs,
                                                           const dsv_bf16 *wb, const float *ws, int K, int n, int i,
                                                           int nr, int mr) {
    const int nb = K / DSV_QBLOCK;
    __m512 tot[F8_NR][F8_MR];
    UNROLL for (int r = 0; r < F8_NR; r++) UNROLL for (int c = 0; c < F8_MR; c++) tot[r][c] = _mm512_setzero_ps();
    for (int kb = 0; kb < nb; kb++) {
        const int k0 = kb * DSV_QBLOCK;
        __m512 blk[F8_NR][F8_MR];
        UNROLL for (int r = 0; r < F8_NR; r++) UNROLL for (int c = 0; c < F8_MR; c++) blk[r][c] = _mm512_setzero_ps();
        UNROLL for (int j = 0; j < 4; j++) {
            __m512i wv[F8_NR];
            UNROLL for (int r = 0; r < F8_NR; r++)
                wv[r] = r < nr ? _mm512_loadu_si512((const void *)(wb + (size_t)r * K + k0 + 32 * j)) : _mm512_setzero_si512();
            UNROLL for (int c = 0; c < F8_MR; c++) {
                if (c >= mr) continue;
                const __m512i xv = _mm512_loadu_si512((const void *)(x + (size_t)(i + c) * K + k0 + 32 * j));
                UNROLL for (int r = 0; r < F8_NR; r++)
                    if (r < nr) blk[r][c] = dot_bf16(blk[r][c], wv[r], xv);
            }
        }
        UNROLL for (int c = 0; c < F8_MR; c++) {
            if (c >= mr) continue;
            const __m512 sc = _mm512_set1_ps(xs[(size_t)(i + c) * nb + kb] * ws[kb]);
            UNROLL for (int r = 0; r < F8_NR; r++)
                if (r < nr) tot[r][c] = _mm512_fmadd_ps(blk[r][c], sc, tot[r][c]);
        }
    }
    /* Groups of 4 input rows: v[4c + r] = tot[r][c], lane 4r + c of the
     * reduction is element (c, r). */
    UNROLL for (int c0 = 0; c0 < F8_MR; c0 += 4) {
        if (c0 >= mr) continue;
        __m512 v[16];
        UNROLL for (int c = 0; c < 4; c++) UNROLL for (int r = 0; r < 4; r++)
            v[4 * c + r] = c0 + c < F8_MR && r < F8_NR ? tot[r < F8_NR ? r : 0][c0 + c < F8_MR ? c0 + c : 0]
                                                       : _mm512_setzero_ps();
        float out[16];
        _mm512_storeu_ps(out, reduce16(v));
        UNROLL for (int c = 0; c < 4; c++) UNROLL for (int r = 0; r < F8_NR; r++)
            if (c0 + c < mr && r < nr) y[(size_t)(i + c0 + c) * ldy + n + r] = dsv_f32_to_bf16(out[4 * r + c]);
    }
}

/* fp8_tile with constant shapes (each one compiled on its own, so the
 * accumulators of the full tile stay in registers). */
static inline __attribute__((always_inline)) void fp8_tiles(dsv_bf16 *y, int ldy, const dsv_bf16 *x, const float *xs,
                                                            const dsv_bf16 *wb, const float *ws, int K, int n, int i,
                                                            int nr, int mr) {
    switch (mr) {
    case 6: fp8_tile(y, ldy, x, xs, wb, ws, K, n, i, nr, 6); break;
    case 5: fp8_tile(y, ldy, x, xs, wb, ws, K, n, i, nr, 5); break;
    case 4: fp8_tile(y, ldy, x, xs, wb, ws, K, n, i, nr, 4); break;
    case 3: fp8_tile(y, ldy, x, xs, wb, ws, K, n, i, nr, 3); break;
    case 2: fp8_tile(y, ldy, x, xs, wb, ws, K, n, i, nr, 2); break;
    default: fp8_tile(y, ldy, x, xs, wb, ws, K, n, i, nr, 1); break;
    }
}

/* Many input rows: groups of weight rows within one 128-row scale block,
 * widened once to bf16 in the thread's scratch (at most 64 rows, 256 KB at
 * K = 2048: in L2), then every input row passes over them in 2 x 6 tiles. */
static void fp8_prefill(dsv_bf16 *y, int ldy, const dsv_bf16 *x, const float *xs, const dsv_linear *w, int m, int n0,
                        int n1, dsv_bf16 *wb, __m512i sub) {
    const int K = w->n_in;
    int g = (int)(DSV_LIN_SCRATCH / ((size_t)K * sizeof(dsv_bf16)));
    g = g > 64 ? 64 : g < 1 ? 1 : g;
    for (int nb = n0; nb < n1;) {
        int ne = (nb / DSV_QBLOCK + 1) * DSV_QBLOCK;
        ne = ne > n1 ? n1 : ne; /* the range's end, then the scratch's g rows */
        ne = ne > nb + g ? nb + g : ne;
        for (int r = 0; r < ne - nb; r++) {
            const uint8_t *W = (const uint8_t *)w->w + (size_t)(nb + r) * w->ld;
            for (int k = 0; k < K; k += 32)
                _mm512_storeu_si512((void *)(wb + (size_t)r * K + k), e4m3x32_bf16(W + k, sub));
        }
        const float *ws = w->scale + (size_t)(nb / DSV_QBLOCK) * w->scale_ld;
        for (int i = 0; i < m; i += F8_MR) {
            const int mr = m - i < F8_MR ? m - i : F8_MR;
            for (int n = nb; n < ne; n += F8_NR) {
                const dsv_bf16 *wt = wb + (size_t)(n - nb) * K;
                if (ne - n >= F8_NR) fp8_tiles(y, ldy, x, xs, wt, ws, K, n, i, F8_NR, mr);
                else fp8_tiles(y, ldy, x, xs, wt, ws, K, n, i, 1, mr);
            }
        }
        nb = ne;
    }
}

/* Up to 4 input rows (decoding): blocks of 64 weight rows (in L2) against
 * every input row, widened as they stream by; more: fp8_prefill. */
static void linear_fp8(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                       void *scratch) {
    const dsv_bf16 *x = xp;
    const float *xs = pack_scales((void *)xp, m, w->n_in);
    const __m512i sub = e4m3_sub_table();
    if (m > 4) {
        fp8_prefill(y, ldy, x, xs, w, m, n0, n1, scratch, sub);
        return;
    }
#define ROW(n, i, mr) fp8_row(y, ldy, x, xs, w, n, i, mr, sub)
    DSV_LIN_ROWS_64X4(m, n0, n1, ROW);
#undef ROW
}

/* ---- indexer ------------------------------------------------------------- */

/* The indexer runs on AVX512_BF16's pair dot product, as the fp8 linears
 * do and for the same reason it is exact: queries and keys are e4m3 values
 * (normal in bf16; NaN codes stay NaN), their products are exact fp32
 * multiples of 2^-18 and so is every partial sum: no subnormal to flush.
 * Per head, the 128 products are summed in 64 pairs (d = 2p, 2p+1) into one
 * lane, pairs in order; a score depends only on its query and key.
 *
 * Packed query: bf16 pairs q[p][h][2] = (q8[h][2p], q8[h][2p+1]) (heads
 * padded to 16 with zeros), so one vector holds one pair of 16 heads and a
 * key's pair is one broadcast dword. */
static inline int heads_padded(int n_heads) { return (n_heads + 15) & ~15; }

/* Keys [j, j+nk) widened to bf16 into kb (NaN codes stay NaN). */
static inline void widen_keys(dsv_bf16 *kb, const uint8_t *k8, int nk, __m512i sub) {
    for (int j = 0; j < nk * 128; j += 32) {
        const uint8_t *c = k8 + j;
        const __mmask32 nan =
            _mm256_cmpeq_epi8_mask(_mm256_and_si256(_mm256_loadu_si256((const void *)c), _mm256_set1_epi8(0x7f)),
                                   _mm256_set1_epi8(0x7f));
        _mm512_storeu_si512((void *)(kb + j), _mm512_mask_mov_epi16(e4m3x32_bf16(c, sub), nan, _mm512_set1_epi16(0x7fc0)));
    }
}

/* A decoded token packs its query on one thread before the scoring run,
 * so this is vector code: each head's 128 codes widened as widen_keys
 * widens keys (NaN codes give 0x7fc0, as the scalar bf16 rounding of the
 * table's NaN does), then its 64 pairs stored down the head's column. */
void dsv_avx512_index_q_pack(void *qp, const uint8_t *q8, int n_heads) {
    const int hp = heads_padded(n_heads);
    const __m512i sub = e4m3_sub_table();
    uint32_t *q = qp;
    _Alignas(64) uint32_t col[64];
    for (int h = 0; h < hp; h++) {
        if (h < n_heads) widen_keys((dsv_bf16 *)col, q8 + (size_t)h * 128, 1, sub);
        else memset(col, 0, sizeof col);
        for (int p = 0; p < 64; p++) q[(size_t)p * hp + h] = col[p];
    }
}

/* Scores of `nk` (<= 4) keys kb [nk][128] (bf16) for one query: heads in
 * lanes, 64 at a time; then the ReLU-weighted head sum and the key scale. */
static inline __attribute__((always_inline)) void score_keys(float *out, const dsv_bf16 *q, const float *w, int n_heads,
                                                             const dsv_bf16 *kb, const float *ks, int nk) {
    const int hp = heads_padded(n_heads);
    __m512 sum[4];
    UNROLL for (int j = 0; j < 4; j++) sum[j] = _mm512_setzero_ps();
    for (int h0 = 0; h0 < hp; h0 += 64) {
        const int ng = (hp - h0) / 16 < 4 ? (hp - h0) / 16 : 4;
        __m512 acc[4][4];
        UNROLL for (int j = 0; j < 4; j++) UNROLL for (int g = 0; g < 4; g++) acc[j][g] = _mm512_setzero_ps();
        for (int p = 0; p < 64; p++) {
            __m512i qv[4];
            UNROLL for (int g = 0; g < 4; g++)
                qv[g] = g < ng ? _mm512_loadu_si512((const void *)(q + ((size_t)p * hp + h0 + 16 * g) * 2))
                               : _mm512_setzero_si512();
            UNROLL for (int j = 0; j < 4; j++) {
                if (j >= nk) continue;
                int pair;
                memcpy(&pair, kb + j * 128 + 2 * p, 4);
                const __m512i kd = _mm512_set1_epi32(pair);
                UNROLL for (int g = 0; g < 4; g++) if (g < ng) acc[j][g] = dot_bf16(acc[j][g], qv[g], kd);
            }
        }
        UNROLL for (int g = 0; g < 4; g++) {
            if (g >= ng) continue;
            const int hb = h0 + 16 * g;
            const __m512 wv = _mm512_maskz_loadu_ps(tail_mask(n_heads - hb), w + hb);
            UNROLL for (int j = 0; j < 4; j++)
                if (j < nk) sum[j] = _mm512_fmadd_ps(_mm512_max_ps(acc[j][g], _mm512_setzero_ps()), wv, sum[j]);
        }
    }
    UNROLL for (int j = 0; j < 4; j++) if (j < nk) out[j] = _mm512_reduce_add_ps(sum[j]) * ks[j];
}


/* Several queries (prefill): 64 keys widened once, then every query over
 * them (a query stays in L1 for the 64). One query (decode): 4 keys at a
 * time widened just before they are scored, with the keys 16 ahead
 * prefetched, so that a page's keys arrive while earlier ones are scored
 * instead of in one stall at its start. Either way each key's arithmetic is
 * the same. */
void dsv_avx512_index_score(float *out, int ldo, const void *qp, const float *w, int n_heads, int nq,
                            const uint8_t *k8, const float *ks, int n, void *scratch) {
    dsv_bf16 *kb = scratch; /* up to 64 keys, widened once for every query: [64][128] */
    const __m512i sub = e4m3_sub_table();
    if (nq == 1) {
        const dsv_bf16 *q = qp;
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            for (int f = (j + 16) * 128; f < (j + 20) * 128 && f < n * 128; f += 64)
                _mm_prefetch((const char *)k8 + f, _MM_HINT_T0);
            widen_keys(kb, k8 + (size_t)j * 128, 4, sub);
            score_keys(out + j, q, w, n_heads, kb, ks + j, 4);
        }
        for (; j < n; j++) {
            widen_keys(kb, k8 + (size_t)j * 128, 1, sub);
            score_keys(out + j, q, w, n_heads, kb, ks + j, 1);
        }
        return;
    }
    for (int j0 = 0; j0 < n; j0 += 64) {
        const int nk = n - j0 < 64 ? n - j0 : 64;
        widen_keys(kb, k8 + (size_t)j0 * 128, nk, sub);
        for (int t = 0; t < nq; t++) {
            const dsv_bf16 *q = (const dsv_bf16 *)((const char *)qp + (size_t)t * dsv_index_q_bytes(n_heads));
            const float *wt = w + (size_t)t * n_heads;
            float *o = out + (size_t)t * ldo + j0;
            int j = 0;
            for (; j + 4 <= nk; j += 4) score_keys(o + j, q, wt, n_heads, kb + j * 128, ks + j0 + j, 4);
            for (; j < nk; j++) score_keys(o + j, q, wt, n_heads, kb + j * 128, ks + j0 + j, 1);
        }
    }
}

/* ---- attention ----------------------------------------------------------- */

void dsv_avx512_softmax_bf16(float *x, int n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(_mm512_loadu_ps(x + i), mx);
    if (i < n) mx = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i), x + i), mx);
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    /* The sum in double, as dsv_softmax_bf16 does. */
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        const __m512 e = _mm512_maskz_mov_ps(k, exp_f32x16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), m)));
        _mm512_mask_storeu_ps(x + i, k, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    const __m512 inv = _mm512_set1_ps(1.0f / (float)_mm512_reduce_add_pd(_mm512_add_pd(s0, s1)));
    for (i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, k, f32x16_round_bf16(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv)));
    }
}

/* Widens n bf16 values to fp32 (n a multiple of 16 or not). */
static void widen(float *y, const dsv_bf16 *x, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, bf16x16_load(x + i));
    if (i < n) _mm512_mask_storeu_ps(y + i, tail_mask(n - i), bf16x16_load_n(x + i, n - i));
}

/* o[h][c] = bf16(Σ_j p[h][j] * v_j[c]) for up to 8 heads, 32 columns at a
 * time, keys in order; v_j = base + j*ld (or rows at idx). */
static inline __attribute__((always_inline)) void weighted_rows8(dsv_bf16 *o, int ldo, const float *p, int ldp, int nh,
                                                                 const dsv_bf16 *base, size_t ld, const int32_t *idx,
                                                                 size_t idx_ld, int n, int C) {
    for (int c = 0; c < C; c += 32) {
        const int l0 = C - c < 16 ? C - c : 16, l1 = C - c - 16 < 0 ? 0 : C - c - 16 < 16 ? C - c - 16 : 16;
        __m512 acc[8][2];
        UNROLL for (int h = 0; h < 8; h++) acc[h][0] = acc[h][1] = _mm512_setzero_ps();
        for (int j = 0; j < n; j++) {
            const dsv_bf16 *v = idx ? base + (size_t)idx[j] * idx_ld : base + (size_t)j * ld;
            const __m512 v0 = l0 == 16 ? bf16x16_load(v + c) : bf16x16_load_n(v + c, l0);
            const __m512 v1 = l1 == 16 ? bf16x16_load(v + c + 16) : l1 ? bf16x16_load_n(v + c + 16, l1) : v0;
            UNROLL for (int h = 0; h < 8; h++) {
                if (h >= nh) continue;
                const __m512 pj = _mm512_set1_ps(p[(size_t)h * ldp + j]);
                acc[h][0] = _mm512_fmadd_ps(pj, v0, acc[h][0]);
                acc[h][1] = _mm512_fmadd_ps(pj, v1, acc[h][1]);
            }
        }
        UNROLL for (int h = 0; h < 8; h++) {
            if (h >= nh) continue;
            bf16x16_store_n(o + (size_t)h * ldo + c, acc[h][0], l0);
            if (l1) bf16x16_store_n(o + (size_t)h * ldo + c + 16, acc[h][1], l1);
        }
    }
}

/* Absorbed attention runs on AVX512_BF16's pair dot product, with the
 * heads in the lanes (16 at a time), as the indexer does: a score or output
 * element is one lane's sum, so nothing is reduced across lanes, and a key
 * row read from the cache serves all 16 heads. Products of two bf16 values
 * are exact in fp32; the instruction adds them in pairs (flushing bf16
 * subnormal inputs, values below 2^-126 that contribute nothing visible
 * after the bf16 roundings of the scores and outputs). Each element's order
 * of additions is fixed by its head and the keys alone, not by [j0, j1),
 * [c0, c1) or which thread runs them.
 *
 * Scores: the queries of 16 heads packed as dword pairs qp[p][h] = (q[h][2p],
 * q[h][2p+1]), one key's pair broadcast; 8 keys at a time share each query
 * load. Needs C and R even (the config checks both). */
static inline __attribute__((always_inline)) void mqa_score_keys(float *S, int lds, const int32_t *qa, const int32_t *qr,
                                                                 const dsv_bf16 *kv, const dsv_bf16 *pe, int C, int R,
                                                                 __m512 scale, int nh, int j, int nk) {
    __m512 a[8], b[8];
    UNROLL for (int u = 0; u < 8; u++) a[u] = b[u] = _mm512_setzero_ps();
    for (int p = 0; p < C / 2; p++) {
        const __m512i q = _mm512_load_si512((const void *)(qa + (size_t)p * 16));
        UNROLL for (int u = 0; u < 8; u++) {
            if (u >= nk) continue;
            int32_t pair;
            memcpy(&pair, kv + (size_t)(j + u) * C + 2 * p, 4);
            a[u] = dot_bf16(a[u], q, _mm512_set1_epi32(pair));
        }
    }
    for (int p = 0; p < R / 2; p++) {
        const __m512i q = _mm512_load_si512((const void *)(qr + (size_t)p * 16));
        UNROLL for (int u = 0; u < 8; u++) {
            if (u >= nk) continue;
            int32_t pair;
            memcpy(&pair, pe + (size_t)(j + u) * R + 2 * p, 4);
            b[u] = dot_bf16(b[u], q, _mm512_set1_epi32(pair));
        }
    }
    float t[8][16];
    UNROLL for (int u = 0; u < 8; u++) {
        if (u >= nk) continue;
        /* (einsum(q_abs, kv) + einsum(q_pe, pe)) * scale, each a bf16 tensor. */
        const __m512 v = _mm512_add_ps(f32x16_round_bf16(a[u]), f32x16_round_bf16(b[u]));
        _mm512_storeu_ps(t[u], f32x16_round_bf16(_mm512_mul_ps(f32x16_round_bf16(v), scale)));
    }
    for (int h = 0; h < nh; h++)
        for (int u = 0; u < nk; u++) S[(size_t)h * lds + j + u] = t[u][h];
}

/* Packs `len` (even) bf16 values of nh (<= 16) rows q [nh][len] as dword
 * pairs qp[p][16], heads past nh zero. */
static void mqa_q_pairs(int32_t *qp, const dsv_bf16 *q, int nh, int len) {
    const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(len / 2));
    for (int p = 0; p < len / 2; p++)
        _mm512_store_si512((void *)(qp + (size_t)p * 16),
                           _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), tail_mask(nh), rows,
                                                       (const int *)(const void *)q + p, 4));
}

/* Scratch: the packed queries of 16 heads, (C + R) / 2 * 16 dwords. pf is
 * asked for in the first group of heads, a share before each 8 keys. */
void dsv_avx512_mqa_scores(float *S, int lds, const dsv_bf16 *q_abs, const dsv_bf16 *q_pe, const dsv_bf16 *kv,
                           const dsv_bf16 *pe, int H, int C, int R, float scale, int j0, int j1, const dsv_prefetch *pf,
                           float *scratch) {
    int next = 0;
    int32_t *qa = (int32_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63), *qr = qa + (size_t)C / 2 * 16;
    const __m512 sc = _mm512_set1_ps(scale);
    for (int hb = 0; hb < H; hb += 16) {
        const int nh = H - hb < 16 ? H - hb : 16;
        mqa_q_pairs(qa, q_abs + (size_t)hb * C, nh, C);
        mqa_q_pairs(qr, q_pe + (size_t)hb * R, nh, R);
        float *Sh = S + (size_t)hb * lds;
        int j = j0;
        for (; j + 8 <= j1; j += 8) {
            if (pf && hb == 0) dsv_prefetch_rows(pf, &next, (int)((long)pf->n * (j + 8 - j0) / (j1 - j0)));
            mqa_score_keys(Sh, lds, qa, qr, kv, pe, C, R, sc, nh, j, 8);
        }
        if (j < j1) mqa_score_keys(Sh, lds, qa, qr, kv, pe, C, R, sc, nh, j, j1 - j);
        if (hb == 0) dsv_prefetch_rows(pf, &next, pf ? pf->n : 0);
    }
}

/* Weighted sums: keys in pairs (j, j+1) interleaved per column by one
 * permute (16 columns of both rows in one vector), each head's two weights
 * one broadcast dword. The weights of 16 heads are first laid out by pair,
 * pw[j/2][h] = (P[h][j], P[h][j+1]), so one pointer reaches every head's.
 * Columns in blocks of 16, keys in blocks of MQA_PV_KEYS (their rows stay
 * in L2 across the column blocks), the fp32 sums of 16 heads kept in
 * scratch between key blocks. */
#define MQA_PV_KEYS 256
static inline __attribute__((always_inline)) void mqa_pv_block(float *acc, const int32_t *pw, const dsv_bf16 *kv, int C,
                                                               int c, int l, int j0, int j1, int n, int nh) {
    const __m512i perm = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                          37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __mmask16 cm = tail_mask(l);
    __m512 o[16];
    UNROLL for (int h = 0; h < 16; h++) o[h] = h < nh ? _mm512_load_ps(acc + h * 16) : _mm512_setzero_ps();
    for (int j = j0; j < j1; j += 2) {
        const __m256i r0 = _mm256_maskz_loadu_epi16(cm, kv + (size_t)j * C + c);
        const __m256i r1 = j + 1 < n ? _mm256_maskz_loadu_epi16(cm, kv + (size_t)(j + 1) * C + c) : _mm256_setzero_si256();
        const __m512i v = _mm512_permutex2var_epi16(_mm512_castsi256_si512(r0), perm, _mm512_castsi256_si512(r1));
        const int32_t *w = pw + (size_t)j * 8;
        UNROLL for (int h = 0; h < 16; h++)
            if (h < nh) o[h] = dot_bf16(o[h], v, _mm512_set1_epi32(w[h]));
    }
    UNROLL for (int h = 0; h < 16; h++) if (h < nh) _mm512_store_ps(acc + h * 16, o[h]);
}

/* Scratch: the paired weights (dsv_mqa_keys_padded(n) / 2 x 16 dwords),
 * then 16 heads' sums of the columns [c0, c1) (16 x 16 floats per column
 * block). P's padding (zeros from n to ldp) makes an odd n's last pair
 * whole; its missing row reads as zeros. */
void dsv_avx512_mqa_pv(dsv_bf16 *o_lat, const dsv_bf16 *P, int ldp, const dsv_bf16 *kv, const void *kvp, int n, int H,
                       int C, int c0, int c1, float *scratch) {
    (void)kvp;
    const int np = dsv_mqa_keys_padded(n), nb = (c1 - c0 + 15) / 16;
    int32_t *pw = (int32_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *acc = (float *)(pw + (size_t)np * 8);
    for (int hb = 0; hb < H; hb += 16) {
        const int nh = H - hb < 16 ? H - hb : 16;
        for (int h = 0; h < 16; h++) {
            const dsv_bf16 *ph = P + (size_t)(hb + h) * ldp;
            for (int j = 0; j < np; j += 2) {
                int32_t pair = 0;
                if (h < nh) memcpy(&pair, ph + j, 4);
                pw[(size_t)j * 8 + h] = pair;
            }
        }
        memset(acc, 0, (size_t)nb * 256 * sizeof(float));
        for (int jb = 0; jb < n; jb += MQA_PV_KEYS) {
            const int je = n - jb < MQA_PV_KEYS ? n : jb + MQA_PV_KEYS;
            for (int b = 0; b < nb; b++) {
                const int c = c0 + 16 * b, l = c1 - c < 16 ? c1 - c : 16;
                if (nh == 16) mqa_pv_block(acc + b * 256, pw, kv, C, c, l, jb, je, n, 16);
                else mqa_pv_block(acc + b * 256, pw, kv, C, c, l, jb, je, n, nh);
            }
        }
        for (int h = 0; h < nh; h++)
            for (int b = 0; b < nb; b++) {
                const int c = c0 + 16 * b, l = c1 - c < 16 ? c1 - c : 16;
                bf16x16_store_n(o_lat + (size_t)(hb + h) * C + c, _mm512_load_ps(acc + b * 256 + h * 16), l);
            }
    }
}

/* One query and one head at a time: a head's keys are its own (k_nope
 * from wkv_b), so heads share nothing. */
void dsv_avx512_mha_attn(dsv_bf16 *o, const dsv_bf16 *q, int T, const int32_t *idx_all, int ldi, const int32_t *n_sel,
                         const dsv_bf16 *kvb, const dsv_bf16 *pe, int E, int H, int N, int R, int V, float scale, int h0,
                         int h1, float *scratch) {
    (void)E;
    float *qf = scratch, *s = qf + N + R + 16;
    const size_t row = (size_t)(N + V);
    for (int t = 0; t < T; t++) {
        const int32_t *idx = idx_all + (size_t)t * ldi;
        const int n = n_sel[t];
        for (int h = h0; h < h1; h++) {
            widen(qf, q + ((size_t)t * H + h) * (N + R), N + R);
            for (int j = 0; j < n; j++) {
                /* One fp32 accumulation over [nope | rope], as the einsum. */
                const dsv_bf16 *k = kvb + ((size_t)idx[j] * H + h) * row, *p = pe + (size_t)idx[j] * R;
                __m512 acc = _mm512_setzero_ps();
                for (int c = 0; c < N; c += 16) {
                    const int l = N - c < 16 ? N - c : 16;
                    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail_mask(l), qf + c),
                                          l == 16 ? bf16x16_load(k + c) : bf16x16_load_n(k + c, l), acc);
                }
                for (int c = 0; c < R; c += 16) {
                    const int l = R - c < 16 ? R - c : 16;
                    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail_mask(l), qf + N + c),
                                          l == 16 ? bf16x16_load(p + c) : bf16x16_load_n(p + c, l), acc);
                }
                s[j] = dsv_round_bf16(dsv_round_bf16(_mm512_reduce_add_ps(acc)) * scale);
            }
            dsv_avx512_softmax_bf16(s, n);
            weighted_rows8(o + ((size_t)t * H + h) * V, V, s, n, 1, kvb + (size_t)h * row + N, 0, idx, (size_t)H * row,
                           n, V);
        }
    }
}

/* ---- row ops ----------------------------------------------------------------
 * The reference's per-element arithmetic in the same order (ops_ref.c);
 * a norm's sum of squares is still taken in double, lane-wise. */

/* Adds (double)(v*v) of 16 values (zeros past a tail) to two double sums. */
static inline void sum_sq(__m512 v, __m512d *a0, __m512d *a1) {
    const __m512 sq = _mm512_mul_ps(v, v);
    *a0 = _mm512_add_pd(*a0, _mm512_cvtps_pd(_mm512_castps512_ps256(sq)));
    *a1 = _mm512_add_pd(*a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sq), 1))));
}

void dsv_avx512_rmsnorm(dsv_bf16 *y, const dsv_bf16 *x, const float *w, int n, float eps) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (int i = 0; i < n; i += 16)
        sum_sq(n - i >= 16 ? bf16x16_load(x + i) : bf16x16_load_n(x + i, n - i), &a0, &a1);
    const double ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    const __m512 r = _mm512_set1_ps(1.0f / sqrtf((float)(ss / n) + eps));
    for (int i = 0; i < n; i += 16) {
        const int l = n - i < 16 ? n - i : 16;
        const __m512 v = l == 16 ? bf16x16_load(x + i) : bf16x16_load_n(x + i, l);
        bf16x16_store_n(y + i, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(l), w + i), _mm512_mul_ps(v, r)), l);
    }
}

void dsv_avx512_rmsnorm_residual(dsv_bf16 *y, dsv_bf16 *res, const dsv_bf16 *x, const float *w, int n, float eps) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (int i = 0; i < n; i += 16) {
        const int l = n - i < 16 ? n - i : 16;
        sum_sq(_mm512_add_ps(bf16x16_load_n(x + i, l), bf16x16_load_n(res + i, l)), &a0, &a1);
    }
    const double ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    const __m512 r = _mm512_set1_ps(1.0f / sqrtf((float)(ss / n) + eps));
    for (int i = 0; i < n; i += 16) {
        const int l = n - i < 16 ? n - i : 16;
        /* The norm uses the fp32 sum; only the stored residual is rounded. */
        const __m512 v = _mm512_add_ps(bf16x16_load_n(x + i, l), bf16x16_load_n(res + i, l));
        bf16x16_store_n(y + i, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(l), w + i), _mm512_mul_ps(v, r)), l);
        bf16x16_store_n(res + i, v, l);
    }
}

void dsv_avx512_rope(dsv_bf16 *x, const float *cos, const float *sin, int n_half, int interleaved) {
    for (int i = 0; i < n_half; i += 16) {
        const int l = n_half - i < 16 ? n_half - i : 16;
        const __mmask16 m = tail_mask(l);
        const __m512 c = _mm512_maskz_loadu_ps(m, cos + i), sn = _mm512_maskz_loadu_ps(m, sin + i);
        __m512 a, b;
        if (interleaved) {
            /* 16 pairs (x[2i], x[2i+1]) as 32-bit lanes: low half a, high half b. */
            const __m512i p = _mm512_maskz_loadu_epi32(m, x + 2 * i);
            a = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
            b = _mm512_castsi512_ps(_mm512_and_si512(p, _mm512_set1_epi32((int)0xffff0000)));
        } else {
            a = bf16x16_load_n(x + i, l);
            b = bf16x16_load_n(x + n_half + i, l);
        }
        /* (a + ib)(cos + i sin), as complex64 multiplication. */
        const __m512 ra = _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, sn));
        const __m512 rb = _mm512_add_ps(_mm512_mul_ps(a, sn), _mm512_mul_ps(b, c));
        if (interleaved) {
            const __m512i p = _mm512_or_si512(f32x16_bf16_bits(ra), _mm512_slli_epi32(f32x16_bf16_bits(rb), 16));
            _mm512_mask_storeu_epi32(x + 2 * i, m, p);
        } else {
            bf16x16_store_n(x + i, ra, l);
            bf16x16_store_n(x + n_half + i, rb, l);
        }
    }
}

/* One butterfly stage within vectors: lanes j and j+h (h < 16) become
 * a + b and a - b, exactly the reference's pair operations. */
static inline __m512 fwht_in(__m512 v, __m512 p, __mmask16 upper) {
    return _mm512_mask_sub_ps(_mm512_add_ps(v, p), upper, p, v);
}

void dsv_avx512_hadamard128(dsv_bf16 *x) {
    __m512 v[8];
    for (int i = 0; i < 8; i++) {
        __m512 t = bf16x16_load(x + 16 * i);
        t = fwht_in(t, _mm512_permute_ps(t, 0xb1), 0xaaaa);         /* h = 1 */
        t = fwht_in(t, _mm512_permute_ps(t, 0x4e), 0xcccc);         /* h = 2 */
        t = fwht_in(t, _mm512_shuffle_f32x4(t, t, 0xb1), 0xf0f0);   /* h = 4 */
        v[i] = fwht_in(t, _mm512_shuffle_f32x4(t, t, 0x4e), 0xff00); /* h = 8 */
    }
    for (int h = 1; h < 8; h *= 2) /* h = 16, 32, 64 values: across vectors */
        for (int i = 0; i < 8; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                const __m512 a = v[j], b = v[j + h];
                v[j] = _mm512_add_ps(a, b);
                v[j + h] = _mm512_sub_ps(a, b);
            }
    const __m512 scale = _mm512_set1_ps(0.088388347648318440550f); /* 128^-0.5 */
    for (int i = 0; i < 8; i++) bf16x16_store(x + 16 * i, _mm512_mul_ps(v[i], scale));
}

void dsv_avx512_swiglu(dsv_bf16 *y, const dsv_bf16 *a, const dsv_bf16 *b, int n) {
    for (int i = 0; i < n; i += 16) {
        const int l = n - i < 16 ? n - i : 16;
        const __m512 x = bf16x16_load_n(a + i, l);
        const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_f32x16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        bf16x16_store_n(y + i, _mm512_mul_ps(silu, bf16x16_load_n(b + i, l)), l);
    }
}

void dsv_avx512_axpy_bf16(float *y, const dsv_bf16 *x, float w, int n) {
    const __m512 wv = _mm512_set1_ps(w);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        /* the product, then the add: two roundings, as the reference */
        const __m512 p = _mm512_mul_ps(bf16x16_load_n(x + i, n - i < 16 ? n - i : 16), wv);
        _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), p));
    }
}

/* ---- absorption through wkv_b -------------------------------------------- */

/* 16 elements of wkv_b row r from column c as the reference's bf16
 * weight_dequant gives them (dsv_wkvb_at), exactly; the first n if n < 16. */
static inline __m512 wkvb16(const dsv_linear *w, int r, int c, int n) {
    const size_t i = (size_t)r * w->ld + c;
    if (w->dtype != DSV_DT_F8_E4M3) return w_load(w->w, w->dtype, i, n, w->dtype != DSV_DT_BF16);
    __m512 v;
    if (n >= 16) {
        v = e4m3x16_load((const uint8_t *)w->w + i);
    } else {
        uint8_t b[16] = {0};
        memcpy(b, (const uint8_t *)w->w + i, (size_t)n);
        v = e4m3x16_load(b);
    }
    const float s = w->scale[(size_t)(r / DSV_QBLOCK) * w->scale_ld + c / DSV_QBLOCK];
    return f32x16_round_bf16(_mm512_mul_ps(v, _mm512_set1_ps(s)));
}

/* The fp8 block scale of wkv_b element (r, c) times 2^8, which
 * e4m3x16_scaled's 2^-8 cancels exactly; *exact when the product
 * e4m3 * scale is a bf16 value already (a power-of-two scale, far from
 * underflow), so that weight_dequant's rounding can be skipped. */
static inline __m512 wkvb_scale(const dsv_linear *w, int r, int c, int *exact) {
    const float s = w->scale[(size_t)(r / DSV_QBLOCK) * w->scale_ld + c / DSV_QBLOCK];
    *exact = (dsv_f32_bits(s) & 0x7fffffu) == 0 && s >= 0x1p-100f && s <= 0x1p100f;
    return _mm512_set1_ps(s * 256.0f);
}

/* 16 values of a wkv_b row from p (bf16 values, or e4m3 codes with their
 * block's scale s256) as dsv_wkvb_at gives them. */
static inline __attribute__((always_inline)) __m512 wkvb_bf16(const void *p) { return bf16x16_load(p); }
static inline __attribute__((always_inline)) __m512 wkvb_fp8(const void *p, __m512 s256, int exact) {
    const __m512 v = _mm512_mul_ps(e4m3x16_scaled(p), s256);
    return exact ? v : f32x16_round_bf16(v);
}

/* Column-wise, 256 columns at a time, rows d in order with a separate
 * multiply and add per element: exactly ops_ref.c's arithmetic. */
void dsv_avx512_absorb_q(dsv_bf16 *q_abs, const dsv_bf16 *q_nope, const dsv_linear *wkv_b, int row0, int N,
                         float *acc) {
    (void)acc;
    const int C = wkv_b->n_in;
    const int fast = C % 128 == 0 && (wkv_b->dtype == DSV_DT_BF16 || wkv_b->dtype == DSV_DT_F8_E4M3);
    for (int c0 = 0; c0 < C; c0 += 256) {
        __m512 a[16];
        UNROLL for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
        if (fast) {
            const int nv = C - c0 < 256 ? 8 : 16; /* C % 128 == 0: one or two 128-blocks */
            for (int d = 0; d < N; d++) {
                const __m512 q = _mm512_set1_ps(dsv_bf16_to_f32(q_nope[d]));
                const int r = row0 + d;
                if (wkv_b->dtype == DSV_DT_BF16) {
                    const dsv_bf16 *row = (const dsv_bf16 *)wkv_b->w + (size_t)r * wkv_b->ld + c0;
                    UNROLL for (int i = 0; i < 16; i++)
                        if (i < nv) a[i] = _mm512_add_ps(a[i], _mm512_mul_ps(q, wkvb_bf16(row + 16 * i)));
                } else {
                    const uint8_t *row = (const uint8_t *)wkv_b->w + (size_t)r * wkv_b->ld + c0;
                    int e0, e1 = 0;
                    const __m512 s0 = wkvb_scale(wkv_b, r, c0, &e0), s1 = nv > 8 ? wkvb_scale(wkv_b, r, c0 + 128, &e1) : s0;
                    if (e0 && e1) {
                        UNROLL for (int i = 0; i < 16; i++)
                            if (i < nv) a[i] = _mm512_add_ps(a[i], _mm512_mul_ps(q, wkvb_fp8(row + 16 * i, i < 8 ? s0 : s1, 1)));
                    } else {
                        UNROLL for (int i = 0; i < 16; i++)
                            if (i < nv)
                                a[i] = _mm512_add_ps(a[i], _mm512_mul_ps(q, wkvb_fp8(row + 16 * i, i < 8 ? s0 : s1,
                                                                                      i < 8 ? e0 : e1)));
                    }
                }
            }
        } else {
            for (int d = 0; d < N; d++) {
                const __m512 q = _mm512_set1_ps(dsv_bf16_to_f32(q_nope[d]));
                UNROLL for (int i = 0; i < 16; i++) {
                    const int c = c0 + 16 * i;
                    if (c < C) a[i] = _mm512_add_ps(a[i], _mm512_mul_ps(q, wkvb16(wkv_b, row0 + d, c, C - c)));
                }
            }
        }
        UNROLL for (int i = 0; i < 16; i++) {
            const int c = c0 + 16 * i;
            if (c < C) bf16x16_store_n(q_abs + c, a[i], C - c < 16 ? C - c : 16);
        }
    }
}

/* Row-wise dots, 4 rows at a time sharing the o_lat loads. */
void dsv_avx512_absorb_o(dsv_bf16 *o, const dsv_bf16 *o_lat, const dsv_linear *wkv_b, int row0, int V) {
    const int C = wkv_b->n_in;
    const int fast = C % 128 == 0 && (wkv_b->dtype == DSV_DT_BF16 || wkv_b->dtype == DSV_DT_F8_E4M3);
    for (int d = 0; d < V; d += 4) {
        const int nr = V - d < 4 ? V - d : 4;
        __m512 a[4];
        UNROLL for (int r = 0; r < 4; r++) a[r] = _mm512_setzero_ps();
        if (fast && wkv_b->dtype == DSV_DT_BF16) {
            const dsv_bf16 *row = (const dsv_bf16 *)wkv_b->w + (size_t)(row0 + d) * wkv_b->ld;
            for (int c = 0; c < C; c += 16) {
                const __m512 x = bf16x16_load(o_lat + c);
                UNROLL for (int r = 0; r < 4; r++)
                    if (r < nr) a[r] = _mm512_fmadd_ps(x, wkvb_bf16(row + (size_t)r * wkv_b->ld + c), a[r]);
            }
        } else if (fast) {
            const uint8_t *row = (const uint8_t *)wkv_b->w + (size_t)(row0 + d) * wkv_b->ld;
            for (int cb = 0; cb < C; cb += DSV_QBLOCK) {
                __m512 s[4];
                int e[4] = {1, 1, 1, 1};
                UNROLL for (int r = 0; r < 4; r++) s[r] = r < nr ? wkvb_scale(wkv_b, row0 + d + r, cb, &e[r]) : s[0];
                for (int c = cb; c < cb + DSV_QBLOCK; c += 16) {
                    const __m512 x = bf16x16_load(o_lat + c);
                    UNROLL for (int r = 0; r < 4; r++)
                        if (r < nr) a[r] = _mm512_fmadd_ps(x, wkvb_fp8(row + (size_t)r * wkv_b->ld + c, s[r], e[r]), a[r]);
                }
            }
        } else {
            for (int c = 0; c < C; c += 16) {
                const int l = C - c < 16 ? C - c : 16;
                const __m512 x = l == 16 ? bf16x16_load(o_lat + c) : bf16x16_load_n(o_lat + c, l);
                UNROLL for (int r = 0; r < 4; r++) if (r < nr) a[r] = _mm512_fmadd_ps(x, wkvb16(wkv_b, row0 + d + r, c, l), a[r]);
            }
        }
        UNROLL for (int r = 0; r < 4; r++) if (r < nr) o[d + r] = dsv_f32_to_bf16(_mm512_reduce_add_ps(a[r]));
    }
}

/* ---- fp8_gemm with float weights (dsv_linear.act_fp8) ----------------------
 * The input is packed by lin_pack_fp8 (e4m3 values as bf16, and scales).
 * BF16 weights take fp8_row's arithmetic with the weight row loaded as it
 * is: the same pair dot products chained from zero per block, promoted as
 * tot += blk * xs, the same hsum_tree at the end. For weights that are e4m3 * a power of two (a ue8m0 checkpoint
 * written as BF16) every product and partial sum is fp8_row's times that
 * power, so the result is linear_fp8's bit for bit. F16/F32 weights are
 * widened to fp32 and summed with FMAs per block (lane l sums k = l mod 16,
 * two chains), promoted the same way. */
static inline __attribute__((always_inline)) void fp8x_row_bf16(dsv_bf16 *y, int ldy, const dsv_bf16 *x,
                                                                const float *xs, const dsv_linear *w, int n, int i,
                                                                int mr) {
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const dsv_bf16 *W = (const dsv_bf16 *)w->w + (size_t)n * w->ld;
    __m512 tot[4];
    UNROLL for (int c = 0; c < 4; c++) tot[c] = _mm512_setzero_ps();
    for (int kb = 0; kb < nb; kb++) {
        const int k0 = kb * DSV_QBLOCK;
        __m512i wv[4];
        UNROLL for (int j = 0; j < 4; j++) wv[j] = _mm512_loadu_si512((const void *)(W + k0 + 32 * j));
        UNROLL for (int c = 0; c < 4; c++) {
            if (c >= mr) continue;
            const dsv_bf16 *xr = x + (size_t)(i + c) * K + k0;
            __m512 blk = _mm512_setzero_ps();
            UNROLL for (int j = 0; j < 4; j++) blk = dot_bf16(blk, wv[j], _mm512_loadu_si512((const void *)(xr + 32 * j)));
            tot[c] = _mm512_fmadd_ps(blk, _mm512_set1_ps(xs[(size_t)(i + c) * nb + kb]), tot[c]);
        }
    }
    UNROLL for (int c = 0; c < 4; c++)
        if (c < mr) y[(size_t)(i + c) * ldy + n] = dsv_f32_to_bf16(hsum_tree(tot[c]));
}

static inline __attribute__((always_inline)) void fp8x_row_wide(dsv_bf16 *y, int ldy, const dsv_bf16 *x,
                                                                const float *xs, const dsv_linear *w, dsv_dtype dt,
                                                                int n, int i, int mr) {
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const size_t r0 = (size_t)n * w->ld;
    __m512 tot[4];
    UNROLL for (int c = 0; c < 4; c++) tot[c] = _mm512_setzero_ps();
    for (int kb = 0; kb < nb; kb++) {
        const int k0 = kb * DSV_QBLOCK;
        __m512 wv[8];
        UNROLL for (int j = 0; j < 8; j++) wv[j] = w_load(w->w, dt, r0 + k0 + 16 * j, 16, 0);
        UNROLL for (int c = 0; c < 4; c++) {
            if (c >= mr) continue;
            const dsv_bf16 *xr = x + (size_t)(i + c) * K + k0;
            __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
            UNROLL for (int j = 0; j < 8; j += 2) {
                a = _mm512_fmadd_ps(bf16x16_load(xr + 16 * j), wv[j], a);
                b = _mm512_fmadd_ps(bf16x16_load(xr + 16 * j + 16), wv[j + 1], b);
            }
            tot[c] = _mm512_fmadd_ps(_mm512_add_ps(a, b), _mm512_set1_ps(xs[(size_t)(i + c) * nb + kb]), tot[c]);
        }
    }
    UNROLL for (int c = 0; c < 4; c++)
        if (c < mr) y[(size_t)(i + c) * ldy + n] = dsv_f32_to_bf16(_mm512_reduce_add_ps(tot[c]));
}

static inline __attribute__((always_inline)) void fp8x_row(dsv_bf16 *y, int ldy, const dsv_bf16 *x, const float *xs,
                                                           const dsv_linear *w, int n, int i, int mr) {
    switch (w->dtype) {
    case DSV_DT_BF16: fp8x_row_bf16(y, ldy, x, xs, w, n, i, mr); break;
    case DSV_DT_F16: fp8x_row_wide(y, ldy, x, xs, w, DSV_DT_F16, n, i, mr); break;
    default: fp8x_row_wide(y, ldy, x, xs, w, DSV_DT_F32, n, i, mr); break;
    }
}

void dsv_avx512_lin_pack_fp8x(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt) {
    lin_pack_fp8(xp, x, m, K, i0, i1, scale_fmt);
}

/* linear_fp8's schedule (lin_rows.h): blocks of 64 weight rows against
 * every input row, 4 at a time. */
void dsv_avx512_linear_fp8x(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                            void *scratch) {
    (void)scratch;
    const dsv_bf16 *x = xp;
    const float *xs = pack_scales((void *)xp, m, w->n_in);
#define ROW(n, i, mr) fp8x_row(y, ldy, x, xs, w, n, i, mr)
    DSV_LIN_ROWS_64X4(m, n0, n1, ROW);
#undef ROW
}

const dsv_kernels dsv_kernels_avx512 = {
    .name = "avx512",
    .act_quant = dsv_avx512_act_quant,
    .dequant = dsv_avx512_dequant,
    .lin_pack_fp8 = lin_pack_fp8,
    .linear_fp8 = linear_fp8,
    .lin_pack_fp8x = dsv_avx512_lin_pack_fp8x,
    .linear_fp8x = dsv_avx512_linear_fp8x,
    .lin_pack_bf16 = lin_pack_bf16,
    .linear_bf16 = linear_bf16,
    .linear_f32 = dsv_avx512_linear_f32,
    .index_q_pack = dsv_avx512_index_q_pack,
    .index_score = dsv_avx512_index_score,
    .mqa_scores = dsv_avx512_mqa_scores,
    .mqa_pack = NULL,
    .mqa_pv = dsv_avx512_mqa_pv,
    .softmax_bf16 = dsv_avx512_softmax_bf16,
    .mha_attn = dsv_avx512_mha_attn,
    .rmsnorm = dsv_avx512_rmsnorm,
    .rmsnorm_residual = dsv_avx512_rmsnorm_residual,
    .rope = dsv_avx512_rope,
    .hadamard128 = dsv_avx512_hadamard128,
    .swiglu = dsv_avx512_swiglu,
    .axpy_bf16 = dsv_avx512_axpy_bf16,
    .absorb_q = dsv_avx512_absorb_q,
    .absorb_o = dsv_avx512_absorb_o,
};
