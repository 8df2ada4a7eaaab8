/* quant_avx512.c: AVX-512 VNNI dot products of block-quantized weight rows
 * with 8-bit activations (quant.h). Q8_0 and Q4_K have dedicated kernels;
 * every other type decodes each block's integer levels with vector bit
 * operations (quant_levels.h), takes the 16-value integer sums with VNNI,
 * and scales them in the reference's order, so it gives the reference's
 * result bit for bit.
 *
 * The integer sums are exact and equal the reference's; in the Q8_0 and
 * Q4_K kernels only the order in which the scaled sums are added differs
 * (lanes, then a final reduction), so results match to float rounding.
 * vpdpbusd multiplies unsigned by signed bytes: a signed weight w times an
 * activation q is |w| * (q with w's sign), both within range (|w| <= 128,
 * the activations never -128). */
#include <immintrin.h>
#include <string.h>

#include "base/numeric.h"
#include "quant.h"
#include "quant_levels.h"

#define h2f q_h2f

/* Σ of 32 signed w times 32 signed q, in 8 int32 lanes. */
static inline __m256i dot32(__m256i w, __m256i q) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
}

static float dot_q8_0(const uint8_t *w, const int8_t *q, const float *d, int K) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < K / 32; b++, w += 34) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 2));
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * b));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32(wv, qv)), _mm256_set1_ps(h2f(w) * d[b]), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Q4_K: 8 sub-blocks of 32 with a 6-bit scale and min each; nibbles of
 * qs[32c + l] are values 64c + l (low) and 64c + 32 + l (high), all >= 0,
 * so they multiply the signed activations directly. */
static float dot_q4_k(const uint8_t *w, const int8_t *q, const float *d, const int16_t *s, int K) {
    float sum = 0;
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int blk = 0; blk < K / 256; blk++, w += 144) {
        const float dd = h2f(w), dmin = h2f(w + 2);
        const uint8_t *sc = w + 4, *qs = w + 16;
        const int8_t *qb = q + 256 * blk;
        const float *db = d + 8 * blk;
        const int16_t *sb = s + 16 * blk;
        int scale[8], min[8];
        for (int j = 0; j < 8; j++) {
            if (j < 4) { scale[j] = sc[j] & 63; min[j] = sc[j + 4] & 63; }
            else { scale[j] = (sc[j + 4] & 15) | (sc[j - 4] >> 6) << 4; min[j] = (sc[j + 4] >> 4) | (sc[j] >> 6) << 4; }
        }
        float bsum = 0;
        for (int c = 0; c < 4; c++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            const __m256i pl = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo,
                                                   _mm256_loadu_si256((const __m256i *)(qb + 64 * c)));
            const __m256i ph = _mm256_dpbusd_epi32(_mm256_setzero_si256(), hi,
                                                   _mm256_loadu_si256((const __m256i *)(qb + 64 * c + 32)));
            /* Two 16-value halves per sub-block, as the reference groups them. */
            int32_t l8[8], h8[8];
            _mm256_storeu_si256((__m256i *)l8, pl);
            _mm256_storeu_si256((__m256i *)h8, ph);
            for (int half = 0; half < 2; half++) {
                const int jl = 2 * c, jh = 2 * c + 1;
                const int32_t il = l8[4 * half] + l8[4 * half + 1] + l8[4 * half + 2] + l8[4 * half + 3];
                const int32_t ih = h8[4 * half] + h8[4 * half + 1] + h8[4 * half + 2] + h8[4 * half + 3];
                const int kl = 4 * c + half, kh = 4 * c + 2 + half; /* 16-value sub-block indices */
                bsum += db[kl / 2] * (dd * (float)scale[jl] * (float)il + -dmin * (float)min[jl] * (float)sb[kl]);
                bsum += db[kh / 2] * (dd * (float)scale[jh] * (float)ih + -dmin * (float)min[jh] * (float)sb[kh]);
            }
        }
        sum += bsum;
    }
    return sum;
}

/* n/16 sums of 16 products of signed levels and activations (n = 32 or 256). */
static inline void isums512(const int8_t *w, const int8_t *q, int32_t *out, int n) {
    int32_t lanes[16];
    for (int c = 0; c < n / 64; c++) {
        const __m512i wv = _mm512_loadu_si512(w + 64 * c), qv = _mm512_loadu_si512(q + 64 * c);
        const __mmask64 neg = _mm512_movepi8_mask(wv);
        const __m512i sq = _mm512_mask_sub_epi8(qv, neg, _mm512_setzero_si512(), qv);
        _mm512_storeu_si512(lanes, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), sq));
        for (int g = 0; g < 4; g++) out[4 * c + g] = lanes[4 * g] + lanes[4 * g + 1] + lanes[4 * g + 2] + lanes[4 * g + 3];
    }
    if (n == 32) {
        _mm256_storeu_si256((__m256i *)lanes, dot32(_mm256_loadu_si256((const __m256i *)w),
                                                     _mm256_loadu_si256((const __m256i *)q)));
        for (int g = 0; g < 2; g++) out[g] = lanes[4 * g] + lanes[4 * g + 1] + lanes[4 * g + 2] + lanes[4 * g + 3];
    }
}

Q_DOT_LEVELS(dot_levels, isums512)

void dsv_q_dot_rows_avx512(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out) {
    if (type != DSV_GGML_Q8_0 && type != DSV_GGML_Q4_K) {
        dot_levels(type, w, act, stride, n, K, out);
        return;
    }
    for (int r = 0; r < n; r++) {
        const int8_t *q = (const int8_t *)((const char *)act + (size_t)r * stride);
        const float *d = (const float *)((const char *)q + K);
        out[r] = type == DSV_GGML_Q8_0 ? dot_q8_0(w, q, d, K) : dot_q4_k(w, q, d, (const int16_t *)(d + K / 32), K);
    }
}

float dsv_q_vec_dot_avx512(uint32_t type, const void *w, const void *act, int K) {
    float o;
    dsv_q_dot_rows_avx512(type, w, act, 0, 1, K, &o);
    return o;
}
