/* quant_levels.h: what quant_avx2.c and quant_avx512.c share, compiled
 * with each file's flags (AVX2 instructions only): small helpers of the
 * streaming kernels (activation rows, lane sums, the K-quants' scale
 * unpacking) and the levels of a 32-value block decoded in a register with
 * vector bit operations. Every type's kernel streams: no levels go through
 * memory. Include only from an AVX2 or AVX-512 kernel file. */
#ifndef DSV_QUANT_LEVELS_H
#define DSV_QUANT_LEVELS_H

#include <immintrin.h>
#include <string.h>

#include "base/numeric.h"
#include "quant.h"

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

/* The K-quant kernels ask for the weight bytes Q_PF_AHEAD ahead of the
 * block they decode, a line per 64 bytes from each block's start (the line
 * at a block boundary may be asked for twice; harmless): decoding streams each weight row once
 * from memory, and one core's hardware prefetchers alone keep too few lines
 * in flight (one core, weights in DRAM, old and new alternated in one
 * process: Q4_K and Q6_K 15-25% more GB/s at 4-6 KiB ahead, less at 1-2;
 * nothing changes when the weights are in cache). Rows of a matrix are
 * contiguous, so the lines ahead are the next rows'; past the last row of
 * a call it costs at most Q_PF_AHEAD bytes of reading. */
#ifndef Q_PF_AHEAD
#define Q_PF_AHEAD 6144
#endif
static inline __attribute__((always_inline)) void q_prefetch(const uint8_t *w, int bytes) {
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)w + Q_PF_AHEAD + o, _MM_HINT_T0);
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

/* The 16 6-bit scales of a Q3_K block (quant.c, int_decode), unsigned
 * (the stored value, 32 above the signed scale) as bytes: the low 4 bits
 * of scale k are byte k's low nibble for k < 8, byte k - 8's high nibble
 * above; the top 2 bits are bits 2(k / 4) of byte 8 + k % 4. */
static inline __m128i k3_scales(const uint8_t *sc) {
    uint64_t l;
    memcpy(&l, sc, 8);
    const uint32_t h = ld32(sc + 8);
    const uint64_t h0 = (uint64_t)((h >> 2) & 0x03030303u) << 32 | (h & 0x03030303u);
    const uint64_t h1 = (uint64_t)((h >> 6) & 0x03030303u) << 32 | ((h >> 4) & 0x03030303u);
    const uint64_t lo = (l & 0x0f0f0f0f0f0f0f0full) | h0 << 4, hi = ((l >> 4) & 0x0f0f0f0f0f0f0f0full) | h1 << 4;
    return _mm_set_epi64x((long long)hi, (long long)lo);
}

/* ---- levels of the 32-value types in a register ---- */

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
static inline __attribute__((always_inline)) __m256i q_levels_32v(uint32_t t, const uint8_t *x) {
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

/* ---- float weights of a block, for the absorbed products (quant.h,
 * dsv_q_absorb_*) ---- */

/* An f16 as a float (F16C: exact, as dsv_f16_to_f32). */
static inline float h2f_c(const uint8_t *p) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(ld16(p)))); }

/* Per 16 values of the block at b, the scale and the minimum with which a
 * level becomes the value dsv_q_dequant gives: value = level * sc + mn,
 * one rounding (fused), as the reference's d*q + m and d*sc*q - dmin*m
 * round once after exact products; mn is 0 for the types without one,
 * where level * sc is exact. Returns whether the type has a minimum. */
static inline __attribute__((always_inline)) int absorb_scales(uint32_t t, const uint8_t *b, float *sc, float *mn) {
    switch (t) {
    case DSV_GGML_Q4_K:
    case DSV_GGML_Q5_K: {
        const float d = h2f_c(b), dmin = h2f_c(b + 2);
        uint64_t s, m;
        k4_unpack(b + 4, &s, &m);
        for (int j = 0; j < 8; j++) {
            sc[2 * j] = sc[2 * j + 1] = d * (float)((s >> 8 * j) & 0xff);
            mn[2 * j] = mn[2 * j + 1] = -(dmin * (float)((m >> 8 * j) & 0xff));
        }
        return 1;
    }
    case DSV_GGML_Q6_K: {
        const float d = h2f_c(b + 208);
        for (int j = 0; j < 16; j++) sc[j] = d * (float)(int8_t)b[192 + j];
        return 0;
    }
    case DSV_GGML_Q4_1:
    case DSV_GGML_Q5_1:
        sc[0] = sc[1] = h2f_c(b);
        mn[0] = mn[1] = h2f_c(b + 2);
        return 1;
    default: /* Q8_0, Q4_0, Q5_0, IQ4_NL */
        sc[0] = sc[1] = h2f_c(b);
        return 0;
    }
}

/* The levels (int8) of values 32g..32g+31 of the block at b, in order. */
static inline __attribute__((always_inline)) __m256i absorb_levels(uint32_t t, const uint8_t *b, int g) {
    const __m256i m4 = _mm256_set1_epi8(15);
    switch (t) {
    case DSV_GGML_Q8_0: return _mm256_loadu_si256((const __m256i *)(b + 2));
    case DSV_GGML_Q4_K:
    case DSV_GGML_Q5_K: { /* qs[32(g/2) + l]: low nibble for even g, high for odd */
        const int five = t == DSV_GGML_Q5_K;
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(b + (five ? 48 : 16) + 32 * (g >> 1)));
        __m256i v = _mm256_and_si256(g & 1 ? _mm256_srli_epi16(raw, 4) : raw, m4);
        if (five) { /* the 5th bit of value 32g + l is bit g of qh[l] */
            const __m256i bit = _mm256_set1_epi8((char)(1 << g));
            const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(b + 16)), bit), bit);
            v = _mm256_or_si256(v, _mm256_and_si256(on, _mm256_set1_epi8(16)));
        }
        return v;
    }
    case DSV_GGML_Q6_K: { /* value 128h + 32k + l: quant.c's dq_q6_k */
        const int h = g >> 2, k = g & 3;
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (k & 1)));
        const __m256i hb = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
        const __m256i l4 = _mm256_and_si256(k < 2 ? lo : _mm256_srli_epi16(lo, 4), m4);
        const __m256i h2 = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * k)), _mm256_set1_epi8(3));
        return _mm256_sub_epi8(_mm256_or_si256(l4, _mm256_slli_epi16(h2, 4)), _mm256_set1_epi8(32));
    }
    default: return q_levels_32v(t, b);
    }
}

#endif /* DSV_QUANT_LEVELS_H */
