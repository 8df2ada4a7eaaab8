/* ops_avx2.c: the AVX2 kernel set (AVX2, FMA, F16C), for x86-64 machines
 * without AVX-512.
 *
 * The same scheme as ops_avx512.c on 8 lanes: bf16 and e4m3 operands widen
 * exactly to fp32, products are exact in fp32, and only the order of the
 * fp32 additions differs from ops_ref.c: lane-wise partial sums, then one
 * fixed reduction tree. An element's order depends only on its own row and
 * weight row; the tile shapes (4 weight rows x 1 input row, 2 x 2, 3 x 3,
 * and their edges) only share loads, so batching and thread splits never
 * change a result. With 16 vector registers the tiles are small, which
 * makes large batches slower than on AVX-512. A single input row (decoding)
 * takes one weight row at a time: one sequential stream, which the hardware
 * prefetchers follow (fp8 m=1: 1.8x the bandwidth of 4 interleaved rows,
 * tools/kbench). Prefill (more than 2 rows) of bf16, f16 and f32 weights
 * runs 3 x 3 tiles over blocks of weight rows kept in L2; fp8 prefill (more
 * than 4 rows) widens panels of weight rows once into the thread's scratch
 * and runs 4 x 3 tiles over them (fp8_prefill). e4m3 codes widen through
 * F16C (the code's bits are an fp16 of value * 2^-8), so no floating-point
 * operation ever sees a subnormal (a microcode assist on Intel cores).
 * The row ops (norms, RoPE, Hadamard, SwiGLU) are the reference's. */
#include <math.h>
#include <string.h>
#include <immintrin.h>

#include "lin_rows.h"
#include "ops.h"

#define UNROLL _Pragma("GCC unroll 8")

/* ---- conversions (all exact) -------------------------------------------- */

static inline __m256 bf16x8_load(const dsv_bf16 *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const void *)p)), 16));
}
/* The first n (<= 8) of 8 bf16, zeros after. */
static inline __m256 bf16x8_load_n(const dsv_bf16 *p, int n) {
    if (n >= 8) return bf16x8_load(p);
    dsv_bf16 b[8] = {0};
    memcpy(b, p, (size_t)n * 2);
    return bf16x8_load(b);
}
static inline __m256 f32x8_load_n(const float *p, int n) {
    if (n >= 8) return _mm256_loadu_ps(p);
    float b[8] = {0};
    memcpy(b, p, (size_t)n * 4);
    return _mm256_loadu_ps(b);
}
static inline __m256 f16x8_load_n(const uint16_t *p, int n) {
    uint16_t b[8] = {0};
    memcpy(b, p, (size_t)(n < 8 ? n : 8) * 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const void *)b));
}

/* fp32 -> bf16 bits (low 16 of each lane), round to nearest even, NaN kept
 * quiet (numeric.h dsv_f32_to_bf16). */
static inline __m256i f32x8_bf16_bits(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                     _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x00400000)), nan);
    return _mm256_srli_epi32(r, 16);
}
static inline __m256 f32x8_round_bf16(__m256 v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(f32x8_bf16_bits(v), 16));
}
/* Stores the first n (<= 8) of 8 values as bf16. */
static inline void bf16x8_store_n(dsv_bf16 *p, __m256 v, int n) {
    const __m256i b = f32x8_bf16_bits(v);
    const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    if (n >= 8) {
        _mm_storeu_si128((void *)p, h);
    } else {
        dsv_bf16 t[8];
        _mm_storeu_si128((void *)t, h);
        memcpy(p, t, (size_t)n * 2);
    }
}

/* 8 e4m3 codes -> fp32 times 2^-8 (see the file comment), and the value. */
static inline __m256 e4m3x8_scaled(const uint8_t *p) {
    const __m128i t = _mm_cvtepu8_epi16(_mm_loadl_epi64((const void *)p));
    return _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(_mm_slli_epi16(t, 8), 1), _mm_set1_epi16((short)0xbfff)));
}
static inline __m256 e4m3x8_load(const uint8_t *p) { return _mm256_mul_ps(e4m3x8_scaled(p), _mm256_set1_ps(256.0f)); }
/* The same with NaN codes (0x7f, 0xff) as NaN: quantized activations. */
static inline __m256 e4m3x8_load_nan(const uint8_t *p) {
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const void *)p));
    const __m256i nan = _mm256_cmpeq_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x7f)), _mm256_set1_epi32(0x7f));
    return _mm256_blendv_ps(e4m3x8_load(p), _mm256_set1_ps(__builtin_nanf("")), _mm256_castsi256_ps(nan));
}

/* fp32 -> e4m3 codes for values clamped to [-448, 448] or NaN (numeric.h
 * dsv_f32_to_e4m3): below 2^-6 the rounded v * 2^9, above it the fp32
 * bits rounded to 3 mantissa bits with the exponent rebiased; NaN -> 0x7f. */
static inline __m256i f32x8_e4m3(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    __m256i nrm = _mm256_add_epi32(a, _mm256_add_epi32(_mm256_set1_epi32(0x7ffff),
                                                       _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1))));
    nrm = _mm256_sub_epi32(_mm256_srli_epi32(nrm, 20), _mm256_set1_epi32(120 << 3));
    const __m256 af = _mm256_castsi256_ps(a);
    const __m256i sub = _mm256_cvtps_epi32(_mm256_mul_ps(af, _mm256_set1_ps(512.0f))); /* MXCSR: nearest even */
    const __m256i small = _mm256_castps_si256(_mm256_cmp_ps(af, _mm256_set1_ps(0.015625f), _CMP_LT_OQ));
    __m256i code = _mm256_blendv_epi8(nrm, sub, small);
    code = _mm256_or_si256(code, _mm256_srli_epi32(_mm256_andnot_si256(_mm256_set1_epi32(0x7fffffff), u), 24));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7f), nan);
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* act_quant of one 128-group held as 16 vectors (numeric.h dsv_act_quant):
 * codes to q, returns the scale. Under ue8m0 the scale is a power of two
 * and x * (1/scale) equals x / scale exactly; otherwise this divides. */
static float act_quant_group(uint8_t *q, const __m256 x[16], int scale_fmt) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 16; i++) amax = _mm256_max_ps(_mm256_and_ps(x[i], abs_mask), amax); /* NaN ignored */
    const float sc = dsv_act_scale(hmax8(amax), scale_fmt);
    const __m256 s = _mm256_set1_ps(sc), r = _mm256_set1_ps(1.0f / sc);
    for (int i = 0; i < 16; i += 4) {
        __m256i c[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = scale_fmt == DSV_SCALE_UE8M0 ? _mm256_mul_ps(x[i + j], r) : _mm256_div_ps(x[i + j], s);
            /* min/max return their second operand on NaN: NaN survives. */
            v = _mm256_max_ps(_mm256_set1_ps(-448.0f), _mm256_min_ps(_mm256_set1_ps(448.0f), v));
            c[j] = f32x8_e4m3(v);
        }
        /* 32 codes (dwords) -> bytes; packs work per 128-bit lane, so put the lanes back in order. */
        const __m256i w = _mm256_packus_epi16(_mm256_packus_epi32(c[0], c[1]), _mm256_packus_epi32(c[2], c[3]));
        _mm256_storeu_si256((void *)(q + 8 * i),
                            _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
    return sc;
}

/* exp(x) within 2 ulp of expf (Cephes' scheme, as ops_avx512.h): 0 below
 * -87.3, -inf -> 0, NaN kept. */
static inline __m256 exp8(__m256 x0) {
    const __m256 x = _mm256_min_ps(_mm256_set1_ps(88.37f), _mm256_max_ps(_mm256_set1_ps(-87.33f), x0));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* times 2^k: k + 127 into the exponent field (k is in [-126, 127]) */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(_mm256_cmp_ps(x0, _mm256_set1_ps(-87.33f), _CMP_LT_OQ), y);
}

/* ---- act_quant and its inverse -------------------------------------------- */

static void act_quant(uint8_t *q, float *s, const dsv_bf16 *x, int n, int scale_fmt) {
    for (int g = 0; g < n / DSV_QBLOCK; g++) {
        __m256 v[16];
        for (int i = 0; i < 16; i++) v[i] = bf16x8_load(x + g * DSV_QBLOCK + 8 * i);
        s[g] = act_quant_group(q + g * DSV_QBLOCK, v, scale_fmt);
    }
}

/* The sparse attention's gather runs this on every selected latent row, so
 * the usual block takes a shorter path: no NaN code among its 128 and a
 * scale in [2^-116, 2^100], so that every product is a finite normal fp32
 * (|v| in [2^-9, 448]) and the rounding to bf16 needs no NaN case. The 2^8
 * that the fp16 route leaves out is folded into the scale (a power of two:
 * the same real product, the same rounding). Other blocks take the generic
 * path; both give dsv_f32_to_bf16(e4m3 * s) exactly. */
static inline __m256i round_bf16_finite(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    return _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(u, 16),
                                                                                       _mm256_set1_epi32(1)))),
        16);
}
static void dequant(dsv_bf16 *y, const uint8_t *q, const float *s, int n) {
    for (int b = 0; b < n; b += DSV_QBLOCK) {
        const float sb = s[b / DSV_QBLOCK];
        __m256i nan = _mm256_setzero_si256();
        for (int i = b; i < b + DSV_QBLOCK; i += 32) {
            const __m256i c = _mm256_and_si256(_mm256_loadu_si256((const void *)(q + i)), _mm256_set1_epi8(0x7f));
            nan = _mm256_or_si256(nan, _mm256_cmpeq_epi8(c, _mm256_set1_epi8(0x7f)));
        }
        if (_mm256_testz_si256(nan, nan) && sb >= 0x1p-116f && sb <= 0x1p100f) {
            const __m256 s256 = _mm256_set1_ps(sb * 256.0f);
            for (int i = b; i < b + DSV_QBLOCK; i += 16) {
                /* 16 codes as fp16 (e4m3x8_scaled's bit moves, 16 lanes at once) */
                const __m256i t = _mm256_cvtepu8_epi16(_mm_loadu_si128((const void *)(q + i)));
                const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(t, 8), 1), _mm256_set1_epi16((short)0xbfff));
                const __m256i lo = round_bf16_finite(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), s256));
                const __m256i hi = round_bf16_finite(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), s256));
                _mm256_storeu_si256((void *)(y + i), _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8));
            }
            continue;
        }
        for (int i = b; i < b + DSV_QBLOCK; i += 8)
            bf16x8_store_n(y + i, _mm256_mul_ps(e4m3x8_load_nan(q + i), _mm256_set1_ps(sb)), 8);
    }
}

/* ---- linear layers ---------------------------------------------------------
 * Packed input: fp32 rows [m][K]; for fp8 layers the e4m3 values
 * (unscaled), then the scales [m][K/128] from the next 64-byte boundary. */

static float *pack_scales(void *xp, int m, int K) {
    return (float *)((char *)xp + (((size_t)m * K * 4 + 63) & ~(size_t)63));
}

static void lin_pack_fp8(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt) {
    float *xs = pack_scales(xp, m, K);
    for (int i = i0; i < i1; i++) {
        float *xf = (float *)xp + (size_t)i * K;
        for (int g = 0; g < K / DSV_QBLOCK; g++) {
            __m256 v[16];
            uint8_t q[DSV_QBLOCK];
            for (int j = 0; j < 16; j++) v[j] = bf16x8_load(x + (size_t)i * K + g * DSV_QBLOCK + 8 * j);
            xs[(size_t)i * (K / DSV_QBLOCK) + g] = act_quant_group(q, v, scale_fmt);
            for (int j = 0; j < 16; j++) _mm256_storeu_ps(xf + g * DSV_QBLOCK + 8 * j, e4m3x8_load_nan(q + 8 * j));
        }
    }
}

static void lin_pack_bf16(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1) {
    (void)m;
    for (int i = i0; i < i1; i++) {
        float *xf = (float *)xp + (size_t)i * K;
        const dsv_bf16 *xr = x + (size_t)i * K;
        int k = 0;
        for (; k + 8 <= K; k += 8) _mm256_storeu_ps(xf + k, bf16x8_load(xr + k));
        for (; k < K; k++) xf[k] = dsv_bf16_to_f32(xr[k]);
    }
}

/* 8 weights from element i (the first n if n < 8, zeros after) as fp32;
 * as_bf16 rounds non-bf16 weights to bf16 first. */
static inline __attribute__((always_inline)) __m256 w_load(const void *w, dsv_dtype dt, size_t i, int n, int as_bf16) {
    __m256 v;
    switch (dt) {
    case DSV_DT_BF16: return bf16x8_load_n((const dsv_bf16 *)w + i, n);
    case DSV_DT_F16: v = f16x8_load_n((const uint16_t *)w + i, n); break;
    default: v = f32x8_load_n((const float *)w + i, n); break;
    }
    return as_bf16 ? f32x8_round_bf16(v) : v;
}

/* One tile of an F.linear: weight rows n..n+nr (nr <= 4), input rows
 * i..i+mr (mr <= 4, nr * mr <= 9), accumulators over the
 * whole K (lane l sums k = l mod 8 in order), then hsum8. */
static inline __attribute__((always_inline)) void dense_tile(void *y, int ldy, int out_bf16, const float *x, int ldx,
                                                             const dsv_linear *w, dsv_dtype dt, int as_bf16, int n,
                                                             int i, int nr, int mr) {
    const int K = w->n_in;
    __m256 acc[4][4];
    UNROLL for (int r = 0; r < 4; r++) UNROLL for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) {
        const int len = K - k < 8 ? K - k : 8;
        if (mr <= 2) { /* decoding shapes: each weight vector widened per input row */
            UNROLL for (int c = 0; c < 2; c++) {
                if (c >= mr) continue;
                const __m256 xv = f32x8_load_n(x + (size_t)(i + c) * ldx + k, len);
                UNROLL for (int r = 0; r < 4; r++)
                    if (r < nr)
                        acc[r][c] = _mm256_fmadd_ps(w_load(w->w, dt, (size_t)(n + r) * w->ld + k, len, as_bf16), xv, acc[r][c]);
            }
            continue;
        }
        /* prefill tiles: each weight vector widened once for mr input rows */
        __m256 wv[4];
        UNROLL for (int r = 0; r < 4; r++)
            wv[r] = r < nr ? w_load(w->w, dt, (size_t)(n + r) * w->ld + k, len, as_bf16) : _mm256_setzero_ps();
        UNROLL for (int c = 0; c < 4; c++) {
            if (c >= mr) continue;
            const __m256 xv = f32x8_load_n(x + (size_t)(i + c) * ldx + k, len);
            UNROLL for (int r = 0; r < 4; r++) if (r < nr) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
    UNROLL for (int r = 0; r < 4; r++) UNROLL for (int c = 0; c < 4; c++) {
        if (r >= nr || c >= mr) continue;
        const float v = hsum8(acc[r][c]);
        if (out_bf16) ((dsv_bf16 *)y)[(size_t)(i + c) * ldy + n + r] = dsv_f32_to_bf16(v);
        else ((float *)y)[(size_t)(i + c) * ldy + n + r] = v;
    }
}

/* Input rows [i, i+mr) (mr <= 3) against weight rows [nb, ne), 3 at a time. */
static inline __attribute__((always_inline)) void dense_rows(void *y, int ldy, int out_bf16, const float *x, int ldx,
                                                             const dsv_linear *w, dsv_dtype dt, int as_bf16, int nb,
                                                             int ne, int i, int mr) {
    int n = nb;
    for (; n + 3 <= ne; n += 3) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, i, 3, mr);
    for (; n < ne; n++) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, i, 1, mr);
}

/* One or two input rows (decoding): tiles of 4 x 1 and 2 x 2. More
 * (prefill): blocks of weight rows that stay in L2 (about 256 KB) while
 * every input row passes over them in 3 x 3 tiles, each weight vector
 * widened once for 3 input rows (9 accumulators: with 16 registers, 3 x 4
 * spilled accumulators to the stack and ran at 0.6x, tools/kbench). Every
 * shape runs the same per-element sequence. */
static inline __attribute__((always_inline)) void dense(void *y, int ldy, int out_bf16, const float *x, int ldx,
                                                        const dsv_linear *w, dsv_dtype dt, int as_bf16, int m, int n0,
                                                        int n1) {
    if (m > 2) {
        const size_t row = (size_t)w->n_in * (dt == DSV_DT_F32 ? 4 : 2);
        int nblk = (int)(((size_t)256 << 10) / row) / 3 * 3;
        nblk = nblk < 3 ? 3 : nblk;
        for (int nb = n0; nb < n1; nb += nblk) {
            const int ne = n1 - nb < nblk ? n1 : nb + nblk;
            for (int i = 0; i < m; i += 3) {
                switch (m - i < 3 ? m - i : 3) {
                case 3: dense_rows(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, nb, ne, i, 3); break;
                case 2: dense_rows(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, nb, ne, i, 2); break;
                default: dense_rows(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, nb, ne, i, 1); break;
                }
            }
        }
        return;
    }
    int n = n0;
    for (; n + 4 <= n1; n += 4) {
        if (m == 1) {
            UNROLL for (int r = 0; r < 4; r++) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n + r, 0, 1, 1);
            continue;
        }
        for (int i = 0; i < m; i += 2)
            for (int r = 0; r < 4; r += 2)
                dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n + r, i, 2, m - i < 2 ? 1 : 2);
    }
    for (; n < n1; n++)
        for (int i = 0; i < m; i++) dense_tile(y, ldy, out_bf16, x, ldx, w, dt, as_bf16, n, i, 1, 1);
}

static void linear_bf16(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                        void *scratch) {
    (void)scratch;
    const float *x = xp;
    switch (w->dtype) {
    case DSV_DT_BF16: dense(y, ldy, 1, x, w->n_in, w, DSV_DT_BF16, 0, m, n0, n1); break;
    case DSV_DT_F16: dense(y, ldy, 1, x, w->n_in, w, DSV_DT_F16, 1, m, n0, n1); break;
    default: dense(y, ldy, 1, x, w->n_in, w, DSV_DT_F32, 1, m, n0, n1); break;
    }
}

static void linear_f32(float *y, int ldy, const float *x, const dsv_linear *w, int m, int n0, int n1, void *scratch) {
    (void)scratch;
    switch (w->dtype) {
    case DSV_DT_BF16: dense(y, ldy, 0, x, w->n_in, w, DSV_DT_BF16, 0, m, n0, n1); break;
    case DSV_DT_F16: dense(y, ldy, 0, x, w->n_in, w, DSV_DT_F16, 0, m, n0, n1); break;
    default: dense(y, ldy, 0, x, w->n_in, w, DSV_DT_F32, 0, m, n0, n1); break;
    }
}

/* Requests the line at byte offset off of fp8 weight rows n..n+nr (the
 * next tile's rows, while this tile reads the same offset of its own). A
 * decoding tile of 2 rows reads 2 interleaved streams that restart every
 * few KB, which the hardware prefetchers do not follow well: with these
 * requests bench/kbench -k fp8 avx2 runs 1.6x faster at -m 2 and 1.4x at
 * -m 3 and 4. One row at a time (-m 1) is a sequential stream the hardware
 * follows, so none is made there. (The dense tiles made the same requests;
 * they gained at -m 2 but cost 3% at -m 1 and 20-30% in the prefill tiles,
 * whose weights sit in L2, so they make none.) Always inlined: gcc judges a
 * function that only prefetches to be pure and deletes the calls it has not
 * inlined, which had silently made these requests dead code. */
static inline __attribute__((always_inline)) void prefetch_next(const dsv_linear *w, int n, int nr, size_t off) {
    if (nr < 2 || n + nr > w->n_out) return;
    const char *p = (const char *)w->w + (size_t)n * w->ld + off;
    for (int r = 0; r < nr; r++) _mm_prefetch(p + (size_t)r * w->ld, _MM_HINT_T0);
}

/* One tile of fp8_gemm: weight rows n..n+nr of one 128-row scale block,
 * input rows i..i+mr (nr * mr <= 4). Per 128-wide block, lane-wise sums of
 * products blk (the even and the odd 8-wide steps in two chains, so one
 * weight row alone is not bound by the FMA latency, then added), promoted
 * as tot += blk * (xs * ws). Weights are read as
 * value * 2^-8 and the promotion multiplies the 2^8 back (powers of two:
 * no rounding changes). */
static inline __attribute__((always_inline)) void fp8_tile(dsv_bf16 *y, int ldy, const float *x, const float *xs,
                                                           const dsv_linear *w, int n, int i, int nr, int mr) {
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const uint8_t *W = (const uint8_t *)w->w + (size_t)n * w->ld;
    const float *ws = w->scale + (size_t)(n / DSV_QBLOCK) * w->scale_ld;
    __m256 tot[4][2];
    UNROLL for (int r = 0; r < 4; r++) tot[r][0] = tot[r][1] = _mm256_setzero_ps();
    for (int kb = 0; kb < nb; kb++) {
        __m256 blk[2][4][2]; /* even and odd 8-wide steps: two dependency chains */
        UNROLL for (int e = 0; e < 2; e++) UNROLL for (int r = 0; r < 4; r++) blk[e][r][0] = blk[e][r][1] = _mm256_setzero_ps();
        for (int k = kb * DSV_QBLOCK; k < (kb + 1) * DSV_QBLOCK; k += 16) {
            if (k % 64 == 0) prefetch_next(w, n + nr, nr, (size_t)k);
            UNROLL for (int e = 0; e < 2; e++) UNROLL for (int r = 0; r < 4; r++) {
                if (r >= nr) continue;
                const __m256 wv = e4m3x8_scaled(W + (size_t)r * w->ld + k + 8 * e);
                UNROLL for (int c = 0; c < 2; c++)
                    if (c < mr)
                        blk[e][r][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)(i + c) * K + k + 8 * e), blk[e][r][c]);
            }
        }
        UNROLL for (int c = 0; c < 2; c++) {
            if (c >= mr) continue;
            const __m256 t = _mm256_set1_ps(xs[(size_t)(i + c) * nb + kb] * ws[kb] * 256.0f);
            UNROLL for (int r = 0; r < 4; r++)
                if (r < nr) tot[r][c] = _mm256_fmadd_ps(_mm256_add_ps(blk[0][r][c], blk[1][r][c]), t, tot[r][c]);
        }
    }
    UNROLL for (int r = 0; r < 4; r++) UNROLL for (int c = 0; c < 2; c++)
        if (r < nr && c < mr) y[(size_t)(i + c) * ldy + n + r] = dsv_f32_to_bf16(hsum8(tot[r][c]));
}

/* ---- fp8 prefill (more than 4 input rows) ----------------------------------
 * The decoding tiles above widen every e4m3 code once per tile and hold
 * three accumulators per element (the block's two chains and the total), so
 * their 2 x 2 tiles ran at 29% of the FMA peak (now about 60%, bench/kbench.c). Here a panel of up to
 * F8P_NP weight rows (one 128-row scale block) is widened once into the
 * thread's scratch, as fp32 value * 2^-8 (e4m3x8_scaled's values), for a
 * chunk of F8P_KCB 128-wide blocks, and input rows pass over it in
 * 4 x 3 register tiles (12 accumulators, 3 weight vectors and an input
 * vector of the 16 registers). Each element still runs fp8_tile's
 * sequence: per block the even 8-wide steps chain from zero, then the odd
 * ones, the two are added and promoted as tot += blk * (xs * ws * 256); the
 * tile computes the even chains of all its elements first (kept on the
 * stack), then the odd ones, so only one accumulator per element is live.
 * The totals wait in the scratch between blocks and chunks (an fp32 store
 * and load change nothing), and one hsum8 ends the last chunk. Within a
 * block the widened weights are stored even steps first, so each chain
 * reads them contiguously. */
#define F8P_NR 4
#define F8P_MR 3 /* 4 x 3 measured 1.1x 3 x 3 at K = 7168 (bench/kbench.c) */
#define F8P_KCB 8  /* 128-wide blocks per chunk */
#define F8P_NP 48  /* weight rows per panel (a multiple of F8P_NR) */
#define F8P_LDW (F8P_KCB * DSV_QBLOCK)
/* input rows per pass: the totals [F8P_MC][F8P_NP][8] fill the rest of the scratch */
#define F8P_MC ((int)((DSV_LIN_SCRATCH - (size_t)F8P_NP * F8P_LDW * 4) / ((size_t)F8P_NP * 32)) / F8P_MR * F8P_MR)
_Static_assert(F8P_MC >= F8P_MR, "fp8 prefill scratch");
/* clang 14 unrolls the 8 steps of a chain and hoists their loads: kept
 * rolled, 41 -> 55 GFLOPS per CPU-second (gcc: 72, bench/kbench.c). */
#ifdef __clang__
#define F8P_NO_UNROLL _Pragma("clang loop unroll(disable)")
#else
#define F8P_NO_UNROLL
#endif

/* One tile: weight rows n..n+nr (widened, rows F8P_LDW apart from wt),
 * input rows i..i+mr, blocks [kb0, kb1); totals at st (element (c, r) at
 * st + (c * F8P_NP + r) * 8), started at zero when first, written out when
 * last. */
static inline __attribute__((always_inline)) void fp8p_tile(dsv_bf16 *y, int ldy, const float *x, const float *xs,
                                                            const float *wt, const float *ws, float *st, int K, int n,
                                                            int i, int kb0, int kb1, int first, int last, int nr,
                                                            int mr) {
    const int nb = K / DSV_QBLOCK;
    for (int kb = kb0; kb < kb1; kb++) {
        const float *wb = wt + (size_t)(kb - kb0) * DSV_QBLOCK;
        const float *xb = x + (size_t)i * K + (size_t)kb * DSV_QBLOCK;
        __m256 even[F8P_NR][F8P_MR], acc[F8P_NR][F8P_MR];
        UNROLL for (int e = 0; e < 2; e++) {
            UNROLL for (int r = 0; r < F8P_NR; r++) UNROLL for (int c = 0; c < F8P_MR; c++) acc[r][c] = _mm256_setzero_ps();
            F8P_NO_UNROLL for (int j = 0; j < 8; j++) {
                __m256 wv[F8P_NR];
                UNROLL for (int r = 0; r < F8P_NR; r++)
                    wv[r] = r < nr ? _mm256_loadu_ps(wb + (size_t)r * F8P_LDW + 64 * e + 8 * j) : _mm256_setzero_ps();
                UNROLL for (int c = 0; c < F8P_MR; c++) {
                    if (c >= mr) continue;
                    const __m256 xv = _mm256_loadu_ps(xb + (size_t)c * K + 16 * j + 8 * e);
                    UNROLL for (int r = 0; r < F8P_NR; r++)
                        if (r < nr) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
                }
            }
            if (e == 0) UNROLL for (int r = 0; r < F8P_NR; r++) UNROLL for (int c = 0; c < F8P_MR; c++) even[r][c] = acc[r][c];
        }
        UNROLL for (int c = 0; c < F8P_MR; c++) {
            if (c >= mr) continue;
            const __m256 t = _mm256_set1_ps(xs[(size_t)(i + c) * nb + kb] * ws[kb] * 256.0f);
            UNROLL for (int r = 0; r < F8P_NR; r++) {
                if (r >= nr) continue;
                float *p = st + ((size_t)c * F8P_NP + r) * 8;
                const __m256 tot = first && kb == kb0 ? _mm256_setzero_ps() : _mm256_loadu_ps(p);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(_mm256_add_ps(even[r][c], acc[r][c]), t, tot));
            }
        }
    }
    if (!last) return;
    UNROLL for (int c = 0; c < F8P_MR; c++) UNROLL for (int r = 0; r < F8P_NR; r++)
        if (r < nr && c < mr)
            y[(size_t)(i + c) * ldy + n + r] = dsv_f32_to_bf16(hsum8(_mm256_loadu_ps(st + ((size_t)c * F8P_NP + r) * 8)));
}

/* fp8p_tile with constant shapes, each compiled on its own so the full
 * tile's accumulators stay in registers. */
static void fp8p_tiles(dsv_bf16 *y, int ldy, const float *x, const float *xs, const float *wt, const float *ws,
                       float *st, int K, int n, int i, int kb0, int kb1, int first, int last, int nr, int mr) {
#define F8P_CASE(NR_, MR_) \
    case (NR_) * 4 + (MR_): fp8p_tile(y, ldy, x, xs, wt, ws, st, K, n, i, kb0, kb1, first, last, NR_, MR_); break
    switch (nr * 4 + mr) {
    F8P_CASE(4, 3); F8P_CASE(4, 2); F8P_CASE(4, 1);
    F8P_CASE(3, 3); F8P_CASE(3, 2); F8P_CASE(3, 1);
    F8P_CASE(2, 3); F8P_CASE(2, 2); F8P_CASE(2, 1);
    F8P_CASE(1, 3); F8P_CASE(1, 2);
    default: fp8p_tile(y, ldy, x, xs, wt, ws, st, K, n, i, kb0, kb1, first, last, 1, 1); break;
    }
#undef F8P_CASE
}

static void fp8_prefill(dsv_bf16 *y, int ldy, const float *x, const float *xs, const dsv_linear *w, int m, int n0,
                        int n1, void *scratch) {
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    float *wp = scratch, *st = wp + (size_t)F8P_NP * F8P_LDW;
    for (int i0 = 0; i0 < m; i0 += F8P_MC) {
        const int ie = m - i0 < F8P_MC ? m : i0 + F8P_MC;
        for (int pn = n0; pn < n1;) {
            int pe = (pn / DSV_QBLOCK + 1) * DSV_QBLOCK;
            pe = pe > n1 ? n1 : pe;
            pe = pe > pn + F8P_NP ? pn + F8P_NP : pe;
            const float *ws = w->scale + (size_t)(pn / DSV_QBLOCK) * w->scale_ld;
            for (int kc = 0; kc < nb; kc += F8P_KCB) {
                const int ke = nb - kc < F8P_KCB ? nb : kc + F8P_KCB;
                /* widen the panel's chunk: per block, the even 8-wide steps, then the odd */
                for (int r = 0; r < pe - pn; r++) {
                    const uint8_t *W = (const uint8_t *)w->w + (size_t)(pn + r) * w->ld + (size_t)kc * DSV_QBLOCK;
                    float *d = wp + (size_t)r * F8P_LDW;
                    for (int k = 0; k < (ke - kc) * DSV_QBLOCK; k += 16) {
                        const int b = k & ~(DSV_QBLOCK - 1), j = (k % DSV_QBLOCK) / 16;
                        _mm256_storeu_ps(d + b + 8 * j, e4m3x8_scaled(W + k));
                        _mm256_storeu_ps(d + b + 64 + 8 * j, e4m3x8_scaled(W + k + 8));
                    }
                }
                for (int i = i0; i < ie; i += F8P_MR) {
                    const int mr = ie - i < F8P_MR ? ie - i : F8P_MR;
                    for (int n = pn; n < pe; n += F8P_NR) {
                        const int nr = pe - n < F8P_NR ? pe - n : F8P_NR;
                        fp8p_tiles(y, ldy, x, xs, wp + (size_t)(n - pn) * F8P_LDW, ws,
                                   st + ((size_t)(i - i0) * F8P_NP + (n - pn)) * 8, K, n, i, kc, ke, kc == 0,
                                   ke == nb, nr, mr);
                    }
                }
            }
            pn = pe;
        }
    }
}

static void linear_fp8(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                       void *scratch) {
    const float *x = xp, *xs = pack_scales((void *)xp, m, w->n_in);
    if (m > 4) {
        fp8_prefill(y, ldy, x, xs, w, m, n0, n1, scratch);
        return;
    }
    int n = n0;
    for (; n + 4 <= n1 && n % 4 == 0; n += 4) {
        if (m == 1) {
            UNROLL for (int r = 0; r < 4; r++) fp8_tile(y, ldy, x, xs, w, n + r, 0, 1, 1);
            continue;
        }
        for (int i = 0; i < m; i += 2)
            for (int r = 0; r < 4; r += 2) fp8_tile(y, ldy, x, xs, w, n + r, i, 2, m - i < 2 ? 1 : 2);
    }
    for (; n < n1; n++)
        for (int i = 0; i < m; i++) fp8_tile(y, ldy, x, xs, w, n, i, 1, 1);
}

/* ---- indexer -----------------------------------------------------------------
 * Packed query: fp32 q[d][h], heads padded to 16 with zeros (the
 * dsv_index_q_bytes layout). Heads are the lanes: no reductions per head. */

static inline int heads_padded(int n_heads) { return (n_heads + 15) & ~15; }

static void index_q_pack(void *qp, const uint8_t *q8, int n_heads) {
    const int hp = heads_padded(n_heads);
    float *q = qp;
    for (int d = 0; d < 128; d++)
        for (int h = 0; h < hp; h++) q[d * hp + h] = h < n_heads ? dsv_e4m3_to_f32(q8[h * 128 + d]) : 0.0f;
}

/* nk (1 or 2) keys kf [nk][128] (fp32) against one packed query: each
 * head's dot over d in order (8 heads a vector, 32 at a time: the two keys'
 * 8 accumulators keep both FMA pipes busy, and each query load serves both
 * keys), ReLU, weights, head sum in head order. */
static inline __attribute__((always_inline)) void score_keys(float *out, const float *q, const float *w, int n_heads,
                                                             const float *kf, const float *ks, int nk) {
    const int hp = heads_padded(n_heads);
    __m256 sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int h0 = 0; h0 < hp; h0 += 32) {
        const int ng = (hp - h0) / 8 < 4 ? (hp - h0) / 8 : 4;
        __m256 acc[2][4];
        UNROLL for (int u = 0; u < 2; u++) UNROLL for (int g = 0; g < 4; g++) acc[u][g] = _mm256_setzero_ps();
        for (int d = 0; d < 128; d++) {
            const __m256 k0 = _mm256_broadcast_ss(kf + d), k1 = _mm256_broadcast_ss(kf + (nk > 1 ? 128 : 0) + d);
            UNROLL for (int g = 0; g < 4; g++) {
                if (g >= ng) continue;
                const __m256 qv = _mm256_loadu_ps(q + d * hp + h0 + 8 * g);
                acc[0][g] = _mm256_fmadd_ps(qv, k0, acc[0][g]);
                if (nk > 1) acc[1][g] = _mm256_fmadd_ps(qv, k1, acc[1][g]);
            }
        }
        UNROLL for (int g = 0; g < 4; g++) {
            if (g >= ng) continue;
            const int hb = h0 + 8 * g;
            const __m256 wv = f32x8_load_n(w + hb, n_heads - hb < 0 ? 0 : n_heads - hb);
            UNROLL for (int u = 0; u < 2; u++)
                if (u < nk) sum[u] = _mm256_fmadd_ps(_mm256_max_ps(acc[u][g], _mm256_setzero_ps()), wv, sum[u]);
        }
    }
    for (int u = 0; u < nk; u++) out[u] = hsum8(sum[u]) * ks[u];
}

static void index_score(float *out, int ldo, const void *qp, const float *w, int n_heads, int nq, const uint8_t *k8,
                        const float *ks, int n, void *scratch) {
    float *kf = scratch; /* up to 64 keys, widened once for every query */
    for (int j0 = 0; j0 < n; j0 += 64) {
        const int nk = n - j0 < 64 ? n - j0 : 64;
        for (int j = 0; j < nk * 128; j += 8) _mm256_storeu_ps(kf + j, e4m3x8_load_nan(k8 + (size_t)j0 * 128 + j));
        for (int t = 0; t < nq; t++) {
            const float *q = (const float *)((const char *)qp + (size_t)t * dsv_index_q_bytes(n_heads));
            float *o = out + (size_t)t * ldo + j0;
            int j = 0;
            for (; j + 2 <= nk; j += 2) score_keys(o + j, q, w + (size_t)t * n_heads, n_heads, kf + j * 128, ks + j0 + j, 2);
            if (j < nk) score_keys(o + j, q, w + (size_t)t * n_heads, n_heads, kf + j * 128, ks + j0 + j, 1);
        }
    }
}

/* ---- attention ------------------------------------------------------------- */

static void softmax_bf16(float *x, int n) {
    __m256 mx = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) mx = _mm256_max_ps(_mm256_loadu_ps(x + i), mx);
    float m = hmax8(mx);
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    double sum = 0;
    const __m256 mv = _mm256_set1_ps(m);
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        _mm256_storeu_ps(x + i, e);
        float t[8];
        _mm256_storeu_ps(t, e);
        for (int j = 0; j < 8; j++) sum += t[j];
    }
    for (; i < n; i++) {
        float t[8] = {x[i] - m};
        _mm256_storeu_ps(t, exp8(_mm256_loadu_ps(t)));
        x[i] = t[0];
        sum += t[0];
    }
    const __m256 inv = _mm256_set1_ps(1.0f / (float)sum);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, f32x8_round_bf16(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv)));
    for (; i < n; i++) x[i] = dsv_round_bf16(x[i] * (1.0f / (float)sum));
}

static void widen(float *y, const dsv_bf16 *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, bf16x8_load(x + i));
    for (; i < n; i++) y[i] = dsv_bf16_to_f32(x[i]);
}

/* o[h][c] = bf16(Σ_j p[h][j] * v_j[c]) for up to 4 heads, 16 columns at a
 * time, keys in order; v_j = base + j*ld, or base + idx[j]*idx_ld. */
static void weighted_rows4(dsv_bf16 *o, int ldo, const float *p, int ldp, int nh, const dsv_bf16 *base, size_t ld,
                           const int32_t *idx, size_t idx_ld, int n, int C) {
    for (int c = 0; c < C; c += 16) {
        const int l0 = C - c < 8 ? C - c : 8, l1 = C - c - 8 <= 0 ? 0 : C - c - 8 < 8 ? C - c - 8 : 8;
        __m256 acc[4][2];
        UNROLL for (int h = 0; h < 4; h++) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            const dsv_bf16 *v = idx ? base + (size_t)idx[j] * idx_ld : base + (size_t)j * ld;
            const __m256 v0 = bf16x8_load_n(v + c, l0), v1 = l1 ? bf16x8_load_n(v + c + 8, l1) : v0;
            UNROLL for (int h = 0; h < 4; h++) {
                if (h >= nh) continue;
                const __m256 pj = _mm256_set1_ps(p[(size_t)h * ldp + j]);
                acc[h][0] = _mm256_fmadd_ps(pj, v0, acc[h][0]);
                acc[h][1] = _mm256_fmadd_ps(pj, v1, acc[h][1]);
            }
        }
        for (int h = 0; h < nh; h++) {
            bf16x8_store_n(o + (size_t)h * ldo + c, acc[h][0], l0);
            if (l1) bf16x8_store_n(o + (size_t)h * ldo + c + 8, acc[h][1], l1);
        }
    }
}

/* The 8 sums of acc[0..7] as one vector (lane h: acc[h]'s lanes added in
 * a fixed tree). */
static inline __m256 hsum8x8(const __m256 *acc) {
    const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Dots of 8 fp32 rows q [8][ldq] (zero past len, rounded up to 8) with one
 * bf16 row k of len values: each key's 8 columns are widened once for the 8
 * heads, whose 8 accumulators keep both FMA pipes busy. */
static inline __attribute__((always_inline)) __m256 dots8(const float *q, int ldq, const dsv_bf16 *k, int len) {
    __m256 acc[8];
    UNROLL for (int h = 0; h < 8; h++) acc[h] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= len; c += 8) {
        const __m256 kv = bf16x8_load(k + c);
        UNROLL for (int h = 0; h < 8; h++) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)h * ldq + c), kv, acc[h]);
    }
    if (c < len) {
        const __m256 kv = bf16x8_load_n(k + c, len - c);
        UNROLL for (int h = 0; h < 8; h++) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)h * ldq + c), kv, acc[h]);
    }
    return hsum8x8(acc);
}

/* 8 heads at a time, one key after another (the key's row stays in L1 for
 * all 8). Scratch: q [8][C8], qpe [8][R8] widened, rows padded with zeros
 * to a multiple of 8, heads past H zero. pf is asked for in the first group
 * of heads, a share before each key. */
static void mqa_scores(float *S, int lds, const dsv_bf16 *q_abs, const dsv_bf16 *q_pe, const dsv_bf16 *kv,
                       const dsv_bf16 *pe, int H, int C, int R, float scale, int j0, int j1, const dsv_prefetch *pf,
                       float *scratch) {
    int next = 0;
    const int C8 = (C + 7) & ~7, R8 = (R + 7) & ~7;
    float *qf = scratch, *qr = qf + 8 * (size_t)C8;
    const __m256 sc = _mm256_set1_ps(scale);
    for (int hb = 0; hb < H; hb += 8) {
        const int nh = H - hb < 8 ? H - hb : 8;
        memset(qf, 0, sizeof(float) * 8 * (size_t)(C8 + R8));
        for (int h = 0; h < nh; h++) {
            widen(qf + (size_t)h * C8, q_abs + (size_t)(hb + h) * C, C);
            widen(qr + (size_t)h * R8, q_pe + (size_t)(hb + h) * R, R);
        }
        for (int j = j0; j < j1; j++) {
            if (pf && hb == 0) dsv_prefetch_rows(pf, &next, (int)((long)pf->n * (j + 1 - j0) / (j1 - j0)));
            const __m256 a = dots8(qf, C8, kv + (size_t)j * C, C), b = dots8(qr, R8, pe + (size_t)j * R, R);
            /* (einsum(q_abs, kv) + einsum(q_pe, pe)) * scale, each a bf16 tensor. */
            const __m256 v = _mm256_add_ps(f32x8_round_bf16(a), f32x8_round_bf16(b));
            float t[8];
            _mm256_storeu_ps(t, f32x8_round_bf16(_mm256_mul_ps(f32x8_round_bf16(v), sc)));
            for (int h = 0; h < nh; h++) S[(size_t)(hb + h) * lds + j] = t[h];
        }
    }
}

/* Weighted sums of 4 heads over 16 columns: 8 accumulators, keys in order.
 * acc [4][16] holds the sums between key blocks. */
static inline __attribute__((always_inline)) void pv_block(float *acc, const float *pw, int n, const dsv_bf16 *kv, int C,
                                                           int c, int l, int j0, int j1, int nh) {
    __m256 o[4][2];
    UNROLL for (int h = 0; h < 4; h++) {
        o[h][0] = _mm256_loadu_ps(acc + h * 16);
        o[h][1] = _mm256_loadu_ps(acc + h * 16 + 8);
    }
    for (int j = j0; j < j1; j++) {
        const dsv_bf16 *v = kv + (size_t)j * C + c;
        const __m256 v0 = l >= 8 ? bf16x8_load(v) : bf16x8_load_n(v, l);
        const __m256 v1 = l >= 16 ? bf16x8_load(v + 8) : l > 8 ? bf16x8_load_n(v + 8, l - 8) : _mm256_setzero_ps();
        UNROLL for (int h = 0; h < 4; h++) {
            if (h >= nh) continue;
            const __m256 pj = _mm256_broadcast_ss(pw + (size_t)h * n + j);
            o[h][0] = _mm256_fmadd_ps(pj, v0, o[h][0]);
            o[h][1] = _mm256_fmadd_ps(pj, v1, o[h][1]);
        }
    }
    UNROLL for (int h = 0; h < 4; h++) {
        _mm256_storeu_ps(acc + h * 16, o[h][0]);
        _mm256_storeu_ps(acc + h * 16 + 8, o[h][1]);
    }
}

/* Passes of up to 16 heads; in each, keys in blocks of PV_KEYS (their rows
 * stay in L2 across the column blocks and the 4-head groups), each element's
 * keys added in order. Scratch: the weights of 4 heads widened [4][n], then
 * the pass's sums, [4][16] per group and column block of [c0, c1). */
#define PV_KEYS 256
static void mqa_pv(dsv_bf16 *o_lat, const dsv_bf16 *P, int ldp, const dsv_bf16 *kv, const void *kvp, int n, int H, int C,
                   int c0, int c1, float *scratch) {
    (void)kvp;
    const int nb = (c1 - c0 + 15) / 16;
    float *pw = scratch, *acc = pw + 4 * (size_t)n;
    for (int hp = 0; hp < H; hp += 16) {
        const int ng = ((H - hp < 16 ? H - hp : 16) + 3) / 4;
        memset(acc, 0, sizeof(float) * 64 * (size_t)ng * nb);
        for (int jb = 0; jb < n; jb += PV_KEYS) {
            const int je = n - jb < PV_KEYS ? n : jb + PV_KEYS;
            for (int g = 0; g < ng; g++) {
                const int hb = hp + 4 * g, nh = H - hb < 4 ? H - hb : 4;
                for (int h = 0; h < nh; h++) widen(pw + (size_t)h * n + jb, P + (size_t)(hb + h) * ldp + jb, je - jb);
                for (int b = 0; b < nb; b++) {
                    float *a = acc + ((size_t)g * nb + b) * 64;
                    const int c = c0 + 16 * b, l = c1 - c < 16 ? c1 - c : 16;
                    if (nh == 4) pv_block(a, pw, n, kv, C, c, l, jb, je, 4);
                    else pv_block(a, pw, n, kv, C, c, l, jb, je, nh);
                }
            }
        }
        for (int g = 0; g < ng; g++)
            for (int h = 0; h < 4 && hp + 4 * g + h < H; h++)
                for (int b = 0; b < nb; b++) {
                    const int c = c0 + 16 * b, l = c1 - c < 16 ? c1 - c : 16;
                    const float *a = acc + ((size_t)g * nb + b) * 64 + h * 16;
                    dsv_bf16 *o = o_lat + (size_t)(hp + 4 * g + h) * C + c;
                    bf16x8_store_n(o, _mm256_loadu_ps(a), l < 8 ? l : 8);
                    if (l > 8) bf16x8_store_n(o + 8, _mm256_loadu_ps(a + 8), l - 8);
                }
    }
}

static void mha_attn(dsv_bf16 *o, const dsv_bf16 *q, int T, const int32_t *idx_all, int ldi, const int32_t *n_sel,
                     const dsv_bf16 *kvb, const dsv_bf16 *pe, int E, int H, int N, int R, int V, float scale, int h0,
                     int h1, float *scratch) {
    (void)E;
    float *qf = scratch, *s = qf + N + R + 8;
    const size_t row = (size_t)(N + V);
    for (int t = 0; t < T; t++) {
        const int32_t *idx = idx_all + (size_t)t * ldi;
        const int n = n_sel[t];
        for (int h = h0; h < h1; h++) {
            widen(qf, q + ((size_t)t * H + h) * (N + R), N + R);
            for (int j = 0; j < n; j++) {
                /* one fp32 accumulation over [nope | rope] */
                const dsv_bf16 *k = kvb + ((size_t)idx[j] * H + h) * row, *p = pe + (size_t)idx[j] * R;
                __m256 acc = _mm256_setzero_ps();
                for (int c = 0; c < N; c += 8) {
                    const int l = N - c < 8 ? N - c : 8;
                    acc = _mm256_fmadd_ps(f32x8_load_n(qf + c, l), bf16x8_load_n(k + c, l), acc);
                }
                for (int c = 0; c < R; c += 8) {
                    const int l = R - c < 8 ? R - c : 8;
                    acc = _mm256_fmadd_ps(f32x8_load_n(qf + N + c, l), bf16x8_load_n(p + c, l), acc);
                }
                s[j] = dsv_round_bf16(dsv_round_bf16(hsum8(acc)) * scale);
            }
            softmax_bf16(s, n);
            weighted_rows4(o + ((size_t)t * H + h) * V, V, s, n, 1, kvb + (size_t)h * row + N, 0, idx, (size_t)H * row,
                           n, V);
        }
    }
}

/* ---- absorption through wkv_b ------------------------------------------------ */

/* 8 elements of wkv_b row r from column c (the first n if n < 8) as the
 * reference's bf16 weight_dequant gives them, exactly. */
static inline __m256 wkvb8(const dsv_linear *w, int r, int c, int n) {
    const size_t i = (size_t)r * w->ld + c;
    if (w->dtype != DSV_DT_F8_E4M3) return w_load(w->w, w->dtype, i, n, w->dtype != DSV_DT_BF16);
    uint8_t b[8] = {0};
    memcpy(b, (const uint8_t *)w->w + i, (size_t)(n < 8 ? n : 8));
    const float s = w->scale[(size_t)(r / DSV_QBLOCK) * w->scale_ld + c / DSV_QBLOCK];
    return f32x8_round_bf16(_mm256_mul_ps(e4m3x8_load(b), _mm256_set1_ps(s)));
}

/* Column-wise, 64 columns at a time, rows d in order, a separate multiply
 * and add per element: exactly ops_ref.c's arithmetic. */
static void absorb_q(dsv_bf16 *q_abs, const dsv_bf16 *q_nope, const dsv_linear *wkv_b, int row0, int N, float *acc) {
    (void)acc;
    const int C = wkv_b->n_in;
    for (int c0 = 0; c0 < C; c0 += 64) {
        __m256 a[8];
        UNROLL for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
        for (int d = 0; d < N; d++) {
            const __m256 q = _mm256_set1_ps(dsv_bf16_to_f32(q_nope[d]));
            UNROLL for (int i = 0; i < 8; i++) {
                const int c = c0 + 8 * i;
                if (c < C) a[i] = _mm256_add_ps(a[i], _mm256_mul_ps(q, wkvb8(wkv_b, row0 + d, c, C - c)));
            }
        }
        UNROLL for (int i = 0; i < 8; i++) {
            const int c = c0 + 8 * i;
            if (c < C) bf16x8_store_n(q_abs + c, a[i], C - c);
        }
    }
}

static void absorb_o(dsv_bf16 *o, const dsv_bf16 *o_lat, const dsv_linear *wkv_b, int row0, int V) {
    const int C = wkv_b->n_in;
    for (int d = 0; d < V; d += 4) {
        const int nr = V - d < 4 ? V - d : 4;
        __m256 a[4];
        UNROLL for (int r = 0; r < 4; r++) a[r] = _mm256_setzero_ps();
        for (int c = 0; c < C; c += 8) {
            const int l = C - c < 8 ? C - c : 8;
            const __m256 x = bf16x8_load_n(o_lat + c, l);
            UNROLL for (int r = 0; r < 4; r++) if (r < nr) a[r] = _mm256_fmadd_ps(x, wkvb8(wkv_b, row0 + d + r, c, l), a[r]);
        }
        UNROLL for (int r = 0; r < 4; r++) if (r < nr) o[d + r] = dsv_f32_to_bf16(hsum8(a[r]));
    }
}

/* ---- fp8_gemm with float weights (dsv_linear.act_fp8) ----------------------
 * The input is packed by lin_pack_fp8 (e4m3 values as fp32, and scales);
 * per weight row and input row, each 128-wide block is summed with FMAs in
 * two chains of 8 lanes (weights as stored, widened exactly), then promoted
 * as tot += blk * xs; one reduction at the end. Up to 4 input rows share
 * each weight load; a row's arithmetic is the same however many do. */
static inline __attribute__((always_inline)) void fp8x_row(dsv_bf16 *y, int ldy, const float *x, const float *xs,
                                                           const dsv_linear *w, int n, int i, int mr) {
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const size_t r0 = (size_t)n * w->ld;
    __m256 tot[4];
    UNROLL for (int c = 0; c < 4; c++) tot[c] = _mm256_setzero_ps();
    for (int kb = 0; kb < nb; kb++) {
        __m256 a[4], b[4];
        UNROLL for (int c = 0; c < 4; c++) a[c] = b[c] = _mm256_setzero_ps();
        for (int k = kb * DSV_QBLOCK; k < (kb + 1) * DSV_QBLOCK; k += 16) {
            const __m256 w0 = w_load(w->w, w->dtype, r0 + k, 8, 0), w1 = w_load(w->w, w->dtype, r0 + k + 8, 8, 0);
            UNROLL for (int c = 0; c < 4; c++) {
                if (c >= mr) continue;
                const float *xr = x + (size_t)(i + c) * K + k;
                a[c] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, a[c]);
                b[c] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w1, b[c]);
            }
        }
        UNROLL for (int c = 0; c < 4; c++)
            if (c < mr)
                tot[c] = _mm256_fmadd_ps(_mm256_add_ps(a[c], b[c]), _mm256_set1_ps(xs[(size_t)(i + c) * nb + kb]), tot[c]);
    }
    UNROLL for (int c = 0; c < 4; c++)
        if (c < mr) y[(size_t)(i + c) * ldy + n] = dsv_f32_to_bf16(hsum8(tot[c]));
}

static void linear_fp8x(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                        void *scratch) {
    (void)scratch;
    const float *x = xp, *xs = pack_scales((void *)xp, m, w->n_in);
#define ROW(n, i, mr) fp8x_row(y, ldy, x, xs, w, n, i, mr)
    DSV_LIN_ROWS_64X4(m, n0, n1, ROW);
#undef ROW
}

const dsv_kernels dsv_kernels_avx2 = {
    .name = "avx2",
    .act_quant = act_quant,
    .dequant = dequant,
    .lin_pack_fp8 = lin_pack_fp8,
    .linear_fp8 = linear_fp8,
    .lin_pack_fp8x = lin_pack_fp8,
    .linear_fp8x = linear_fp8x,
    .lin_pack_bf16 = lin_pack_bf16,
    .linear_bf16 = linear_bf16,
    .linear_f32 = linear_f32,
    .index_q_pack = index_q_pack,
    .index_score = index_score,
    .mqa_scores = mqa_scores,
    .mqa_pack = NULL,
    .mqa_pv = mqa_pv,
    .softmax_bf16 = softmax_bf16,
    .mha_attn = mha_attn,
    .rmsnorm = dsv_rmsnorm,
    .rmsnorm_residual = dsv_rmsnorm_residual,
    .rope = dsv_rope,
    .hadamard128 = dsv_hadamard128,
    .swiglu = dsv_swiglu,
    .axpy_bf16 = dsv_axpy_bf16,
    .absorb_q = absorb_q,
    .absorb_o = absorb_o,
};
