/* quant_avx2.c: AVX2 dot products of block-quantized weight rows with 8-bit
 * activations (quant.h), for CPUs without AVX-512. Q8_0 has its own kernel
 * (only the order of its scaled block sums differs from the reference);
 * every other type decodes its integer levels with quant_levels.h and
 * scales the 16-value integer sums in the reference's order, bit for bit.
 * The integer sums are exact: pairs of byte products fit int16
 * (2 * 128 * 127). */
#include <immintrin.h>
#include <string.h>

#include "base/numeric.h"
#include "quant.h"
#include "quant_levels.h"

#define h2f q_h2f

static float dot_q8_0(const uint8_t *w, const int8_t *q, const float *d, int K) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int b = 0; b < K / 32; b++, w += 34) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 2));
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * b));
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv));
        const __m256i p32 = _mm256_madd_epi16(p16, ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(h2f(w) * d[b]), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* dsv_q8_act_quant's bytes (see quant_avx512.c), 8 values per vector. */
void dsv_q8_act_quant_avx2(void *act, const void *x, int x_bf16, int K) {
    int8_t *q = act;
    float *d = (float *)((char *)act + K);
    int16_t *s = (int16_t *)(d + K / 32);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
    for (int b = 0; b < K / 32; b++) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            if (x_bf16) {
                const __m128i raw = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + 32 * b + 8 * j));
                v[j] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
            } else v[j] = _mm256_loadu_ps((const float *)x + 32 * b + 8 * j);
            m = _mm256_max_ps(_mm256_and_ps(v[j], absm), m); /* keeps m where x is NaN */
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        d[b] = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(amax ? 127.0f / amax : 0);
        int32_t lanes[32];
        for (int j = 0; j < 4; j++) {
            const __m256 p = _mm256_mul_ps(v[j], id);
            __m256i iv = _mm256_and_si256(_mm256_cvtps_epi32(p), _mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_ORD_Q)));
            iv = _mm256_max_epi32(_mm256_min_epi32(iv, lim), nlim);
            _mm256_storeu_si256((__m256i *)(lanes + 8 * j), iv);
        }
        for (int h = 0; h < 2; h++) {
            int sum = 0;
            for (int j = 16 * h; j < 16 * h + 16; j++) {
                q[32 * b + j] = (int8_t)lanes[j];
                sum += lanes[j];
            }
            s[2 * b + h] = (int16_t)sum;
        }
    }
}

/* n/16 sums of 16 products of signed levels and activations. */
static inline void isums2(const int8_t *w, const int8_t *q, int32_t *out, int n) {
    const __m256i ones = _mm256_set1_epi16(1);
    int32_t lanes[8];
    for (int c = 0; c < n / 32; c++) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 32 * c));
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * c));
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv)), ones);
        _mm256_storeu_si256((__m256i *)lanes, p);
        out[2 * c] = lanes[0] + lanes[1] + lanes[2] + lanes[3];
        out[2 * c + 1] = lanes[4] + lanes[5] + lanes[6] + lanes[7];
    }
}

Q_DOT_LEVELS(dot_levels, isums2)

void dsv_q_dot_rows_avx2(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out) {
    if (type != DSV_GGML_Q8_0) {
        dot_levels(type, w, act, stride, n, K, out);
        return;
    }
    for (int r = 0; r < n; r++) {
        const int8_t *q = (const int8_t *)((const char *)act + (size_t)r * stride);
        out[r] = dot_q8_0(w, q, (const float *)((const char *)q + K), K);
    }
}

float dsv_q_vec_dot_avx2(uint32_t type, const void *w, const void *act, int K) {
    float o;
    dsv_q_dot_rows_avx2(type, w, act, 0, 1, K, &o);
    return o;
}
