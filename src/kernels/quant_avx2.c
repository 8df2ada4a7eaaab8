/* quant_avx2.c: AVX2 dot products of block-quantized weight rows with 8-bit
 * activations (quant.h), for CPUs without AVX-512. Q8_0 has a kernel; other
 * types go to the scalar reference. The integer sums are exact (pairs of
 * byte products fit int16: 2 * 128 * 127), only the order of the scaled
 * block sums differs from the reference. */
#include <immintrin.h>
#include <string.h>

#include "base/numeric.h"
#include "quant.h"

static float h2f(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return dsv_f16_to_f32(h); }

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

float dsv_q_vec_dot_avx2(uint32_t type, const void *w, const void *act, int K) {
    if (type == DSV_GGML_Q8_0) return dot_q8_0(w, act, (const float *)((const char *)act + K), K);
    return dsv_q_vec_dot_ref(type, w, act, K);
}
