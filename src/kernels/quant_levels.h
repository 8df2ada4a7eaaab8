/* quant_levels.h: what quant_avx2.c and quant_avx512.c share, compiled
 * with each file's flags (AVX2 instructions only): small helpers of the
 * streaming kernels (activation rows, Q4_K/Q5_K scale unpacking, lane
 * sums), and the integer levels of a weight block with vector bit
 * operations for the types without a streaming kernel. Each function gives exactly what the
 * scalar reference's int_decode (quant.c) gives: levels w[i] and, per 16
 * values, the scale a[k] and offset b[k] (value = a[k]*w[i] + b[k]). A
 * kernel then takes the 16-value integer sums with its own instructions and
 * scales them in the reference's order, so it returns the reference's
 * result bit for bit. Include only from an AVX2 or AVX-512 kernel file. */
#ifndef DSV_QUANT_LEVELS_H
#define DSV_QUANT_LEVELS_H

#include <immintrin.h>
#include <string.h>

#include "base/numeric.h"
#include "quant.h"

static inline float q_h2f(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return dsv_f16_to_f32(h); }

/* ---- helpers of the streaming kernels (quant_avx2.c, quant_avx512.c) ---- */

static inline uint16_t ld16(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return h; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* Lane sums: 8 lanes as ((0+4)+(2+6)) + ((1+5)+(3+7)) (hsum16 in
 * quant_avx512.c first adds lanes i and i+8). */
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One activation row: int8 q[K], float d[K/32], int16 s[K/16]. */
struct arow {
    const int8_t *q;
    const float *d;
    const int16_t *s;
};
static inline struct arow arow_at(const uint8_t *act, size_t stride, int r, int K) {
    struct arow a;
    a.q = (const int8_t *)(act + (size_t)r * stride);
    a.d = (const float *)((const char *)a.q + K);
    a.s = (const int16_t *)(a.d + K / 32);
    return a;
}

/* The 8 6-bit scales and mins of a Q4_K/Q5_K block (quant.c, k4_scale_min)
 * as bytes: words a, b, c are scale bytes 0-3, 4-7, 8-11; scales 0-3 are
 * a's low 6 bits, 4-7 c's low nibbles with a's top 2 bits above them; the
 * mins likewise from b and c's high nibbles. */
static inline void k4_unpack(const uint8_t *sc, uint64_t *scales, uint64_t *mins) {
    const uint32_t a = ld32(sc), b = ld32(sc + 4), c = ld32(sc + 8);
    const uint32_t s_lo = a & 0x3f3f3f3fu, s_hi = (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u);
    const uint32_t m_lo = b & 0x3f3f3f3fu, m_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u);
    *scales = (uint64_t)s_hi << 32 | s_lo;
    *mins = (uint64_t)m_hi << 32 | m_lo;
}

static inline __m256 u8x8_ps(uint64_t v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v))); }

/* ---- levels to memory (the other types) ---- */

/* 32 bytes of b, each shifted right by s and masked to m; s + the width of
 * m stays within 8 bits, so nothing leaks in from the next byte. */
static inline __m256i q_bits(__m256i b, int s, int m) {
    return _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_set1_epi32(s)), _mm256_set1_epi8((char)m));
}

/* The 32 5th bits of a Q5 block's u32 qh as bytes 0 or 16. */
static inline __m256i q_bit5(const uint8_t *qhp) {
    uint32_t qh;
    memcpy(&qh, qhp, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
                                               _mm256_setr_epi64x(0, 0x0101010101010101ll, 0x0202020202020202ll,
                                                                  0x0303030303030303ll));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_and_si256(on, _mm256_set1_epi8(16));
}

/* A 32-value block's levels (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) in a register:
 * signed for Q4_0, Q5_0 and IQ4_NL, unsigned (0..31) for Q4_1 and Q5_1. */
static inline __m256i q_levels_32v(uint32_t t, const uint8_t *x) {
    const int off = t == DSV_GGML_Q4_1 ? 4 : t == DSV_GGML_Q5_0 ? 6 : t == DSV_GGML_Q5_1 ? 8 : 2;
    const __m128i raw = _mm_loadu_si128((const __m128i *)(x + off)), m4 = _mm_set1_epi8(15);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
    switch (t) {
    case DSV_GGML_Q4_0: v = _mm256_sub_epi8(v, _mm256_set1_epi8(8)); break;
    case DSV_GGML_IQ4_NL: {
        const __m128i kv = _mm_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
        v = _mm256_shuffle_epi8(_mm256_set_m128i(kv, kv), v);
        break;
    }
    case DSV_GGML_Q5_0: v = _mm256_sub_epi8(_mm256_or_si256(v, q_bit5(x + 2)), _mm256_set1_epi8(16)); break;
    case DSV_GGML_Q5_1: v = _mm256_or_si256(v, q_bit5(x + 4)); break;
    }
    return v;
}

/* The same to memory, with the scale a and offset b. */
static inline void q_levels_32(uint32_t t, const uint8_t *x, int8_t *w, float *a, float *b) {
    _mm256_storeu_si256((__m256i *)w, q_levels_32v(t, x));
    *a = q_h2f(x);
    *b = t == DSV_GGML_Q4_1 || t == DSV_GGML_Q5_1 ? q_h2f(x + 2) : 0;
}

/* A 256-value K-quant block (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): 256 levels. */
static inline void q_levels_k(uint32_t t, const uint8_t *x, int8_t *w) {
    switch (t) {
    case DSV_GGML_Q2_K:
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x + 16 + 32 * h));
            for (int j = 0; j < 4; j++) _mm256_storeu_si256((__m256i *)(w + 128 * h + 32 * j), q_bits(q, 2 * j, 3));
        }
        return;
    case DSV_GGML_Q3_K: {
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x), four = _mm256_set1_epi8(4);
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x + 32 + 32 * h));
            for (int j = 0; j < 4; j++) {
                const __m256i v = _mm256_or_si256(q_bits(q, 2 * j, 3), _mm256_slli_epi16(q_bits(hm, 4 * h + j, 1), 2));
                _mm256_storeu_si256((__m256i *)(w + 128 * h + 32 * j), _mm256_sub_epi8(v, four));
            }
        }
        return;
    }
    case DSV_GGML_Q4_K: case DSV_GGML_Q5_K: {
        const int five = t == DSV_GGML_Q5_K;
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(x + 16));
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x + (five ? 48 : 16) + 32 * c));
            __m256i lo = q_bits(q, 0, 15), hi = q_bits(q, 4, 15);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(q_bits(qh, 2 * c, 1), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(q_bits(qh, 2 * c + 1, 1), 4));
            }
            _mm256_storeu_si256((__m256i *)(w + 64 * c), lo);
            _mm256_storeu_si256((__m256i *)(w + 64 * c + 32), hi);
        }
        return;
    }
    default: { /* Q6_K */
        const __m256i k32 = _mm256_set1_epi8(32);
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x + 128 + 32 * h));
            for (int k = 0; k < 4; k++) {
                const __m256i lo = q_bits(k & 1 ? l1 : l0, k < 2 ? 0 : 4, 15);
                const __m256i v = _mm256_or_si256(lo, _mm256_slli_epi16(q_bits(qh, 2 * k, 3), 4));
                _mm256_storeu_si256((__m256i *)(w + 128 * h + 32 * k), _mm256_sub_epi8(v, k32));
            }
        }
    }
    }
}

/* The per-16 scales a[k] and offsets b[k] of a K-quant block. */
static inline void q_scales_k(uint32_t t, const uint8_t *x, float *a, float *b) {
    switch (t) {
    case DSV_GGML_Q2_K: {
        const float d = q_h2f(x + 80), dmin = q_h2f(x + 82);
        for (int k = 0; k < 16; k++) { a[k] = d * (float)(x[k] & 15); b[k] = -dmin * (float)(x[k] >> 4); }
        return;
    }
    case DSV_GGML_Q3_K: {
        const float d = q_h2f(x + 108);
        const uint8_t *s = x + 96;
        for (int k = 0; k < 16; k++) {
            const int low = k < 8 ? s[k] & 15 : s[k - 8] >> 4;
            a[k] = d * (float)((low | ((s[8 + k % 4] >> (2 * (k / 4))) & 3) << 4) - 32);
            b[k] = 0;
        }
        return;
    }
    case DSV_GGML_Q4_K: case DSV_GGML_Q5_K: {
        const float d = q_h2f(x), dmin = q_h2f(x + 2);
        const uint8_t *q = x + 4;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            if (j < 4) { sc = q[j] & 63; m = q[j + 4] & 63; }
            else { sc = (q[j + 4] & 15) | (q[j - 4] >> 6) << 4; m = (q[j + 4] >> 4) | (q[j] >> 6) << 4; }
            a[2 * j] = a[2 * j + 1] = d * (float)sc;
            b[2 * j] = b[2 * j + 1] = -dmin * (float)m;
        }
        return;
    }
    default: {
        const float d = q_h2f(x + 208);
        for (int k = 0; k < 16; k++) { a[k] = d * (float)(int8_t)x[192 + k]; b[k] = 0; }
    }
    }
}

/* A weight row against n activation rows (stride bytes apart): each
 * block's levels decoded once, then per row the 16-value integer sums
 * (isums(w, q, out, count): count/16 sums of count products) scaled in the
 * reference's order (dsv_q_vec_dot_ref), so out[r] is the reference's. */
#define Q_DOT_LEVELS(name, isums)                                                                 \
    static void name(uint32_t t, const uint8_t *w, const uint8_t *act, size_t stride, int n, int K, float *out) { \
        const int bk = dsv_ggml_blck(t);                                                          \
        const size_t bs = dsv_ggml_bsize(t);                                                      \
        int8_t lv[256];                                                                           \
        int32_t is[16];                                                                           \
        float a[16], b[16];                                                                       \
        for (int r = 0; r < n; r++) out[r] = 0;                                                   \
        for (int blk = 0; blk < K / bk; blk++, w += bs) {                                         \
            if (bk == 32) {                                                                       \
                q_levels_32(t, w, lv, &a[0], &b[0]);                                              \
                a[1] = a[0];                                                                      \
                b[1] = b[0];                                                                      \
            } else {                                                                              \
                q_levels_k(t, w, lv);                                                             \
                q_scales_k(t, w, a, b);                                                           \
            }                                                                                     \
            for (int r = 0; r < n; r++) {                                                         \
                const int8_t *q = (const int8_t *)(act + (size_t)r * stride);                     \
                const float *d = (const float *)((const char *)q + K);                            \
                const int16_t *s = (const int16_t *)(d + K / 32);                                 \
                isums(lv, q + (size_t)blk * bk, is, bk);                                          \
                float bsum = 0;                                                                   \
                for (int k = 0; k < bk / 16; k++) {                                               \
                    const int i0 = blk * bk + 16 * k;                                             \
                    bsum += d[i0 / 32] * (a[k] * (float)is[k] + b[k] * (float)s[i0 / 16]);       \
                }                                                                                 \
                out[r] += bsum;                                                                   \
            }                                                                                     \
        }                                                                                         \
    }

#endif /* DSV_QUANT_LEVELS_H */
