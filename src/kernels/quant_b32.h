/* quant_b32.h: the kernels of the 32-value block types (Q8_0, Q4_0, Q4_1,
 * Q5_0, Q5_1, IQ4_NL), one body for quant_avx2.c and quant_avx512.c: 256-bit
 * registers either way, the levels' 8-bit dot product the only difference.
 * Include from such a file after quant_levels.h, INLINE and
 *   Q_DOT(u, q): 8 int32 lanes, each the sum of 4 products of the unsigned
 *   bytes u and the signed bytes q (AVX2: maddubs + madd; VNNI: vpdpbusd),
 * so both levels add the same integers in the same order. */
#ifndef DSV_QUANT_B32_H
#define DSV_QUANT_B32_H

/* ---- Q8_0: 34-byte blocks, f16 d then 32 int8 ------------------------------ */

/* Blocks four at a time: their four scales are converted together (F16C)
 * and multiplied by the activations' four scales in one vector. nw weight
 * rows (1, or 2 against one activation row: see q8_0_pair) share the
 * activations' loads; each row runs the same operations either way. */
INLINE void q8_0_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                      float *const *ov) {
    __m256 acc[2][4];
    struct arow a[4];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) acc[k][r] = _mm256_setzero_ps();
    const int nb = K / 32;
    int b = 0;
    for (; b + 4 <= nb; b += 4) {
        float s[2][4][4];
#pragma GCC unroll 2
        for (int k = 0; k < nw; k++) {
            const uint8_t *w = wv[k] + (size_t)b * 34;
            const __m128 wd = _mm_cvtph_ps(_mm_setr_epi16((short)ld16(w), (short)ld16(w + 34), (short)ld16(w + 68),
                                                          (short)ld16(w + 102), 0, 0, 0, 0));
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) _mm_storeu_ps(s[k][r], _mm_mul_ps(wd, _mm_loadu_ps(a[r].d + b)));
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i wvj[2], aw[2];
#pragma GCC unroll 2
            for (int k = 0; k < nw; k++) {
                wvj[k] = _mm256_loadu_si256((const __m256i *)(wv[k] + (size_t)(b + j) * 34 + 2));
                aw[k] = _mm256_sign_epi8(wvj[k], wvj[k]);
            }
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                const __m256i qv = _mm256_loadu_si256((const __m256i *)(a[r].q + 32 * (b + j)));
#pragma GCC unroll 2
                for (int k = 0; k < nw; k++) {
                    const __m256i p = Q_DOT(aw[k], _mm256_sign_epi8(qv, wvj[k]));
                    acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s[k][r][j]), acc[k][r]);
                }
            }
        }
    }
    for (; b < nb; b++) /* K not a multiple of 128 */
        for (int k = 0; k < nw; k++) {
            const uint8_t *w = wv[k] + (size_t)b * 34;
            const float wd = dsv_f16_to_f32(ld16(w));
            const __m256i wvb = _mm256_loadu_si256((const __m256i *)(w + 2));
            const __m256i aw = _mm256_sign_epi8(wvb, wvb);
            for (int r = 0; r < nr; r++) {
                const __m256i qv = _mm256_loadu_si256((const __m256i *)(a[r].q + 32 * b));
                const __m256i p = Q_DOT(aw, _mm256_sign_epi8(qv, wvb));
                acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(wd * a[r].d[b]), acc[k][r]);
            }
        }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum8(acc[k][r]);
}

INLINE void q8_0_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) {
    q8_0_core(&w, 1, act, stride, nr, K, &out);
}
/* Two weight rows against one activation row (decoding; rows j and
 * j + nw/2 of a call, as the K-quants' pairs). */
INLINE void q8_0_pair(const uint8_t *w0, const uint8_t *w1, const uint8_t *act, int K, float *o0, float *o1) {
    const uint8_t *const wv[2] = {w0, w1};
    float *const ov[2] = {o0, o1};
    q8_0_core(wv, 2, act, 0, 1, K, ov);
}

/* ---- Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL: 32-value blocks -------------------------- */

/* As Q8_0, with the levels decoded in a register (quant_levels.h); Q4_1's
 * and Q5_1's levels are unsigned and their minimum term, m * (activation
 * scale * 32-value activation sum), goes into a 4-lane accumulator (block
 * b % 4 in lane b % 4), added after the lanes of the main one. Signed
 * levels go in as |w| <= 127 (IQ4_NL's grid), unsigned ones are at most 31,
 * so AVX2's int16 pairs do not saturate. */
INLINE void b32_core(uint32_t t, const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                     float *const *ov) {
    const size_t bs = dsv_ggml_bsize(t);
    const int has_min = t == DSV_GGML_Q4_1 || t == DSV_GGML_Q5_1;
    __m256 acc[2][4];
    __m128 accm[2][4];
    struct arow a[4];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) {
            acc[k][r] = _mm256_setzero_ps();
            accm[k][r] = _mm_setzero_ps();
        }
    const __m128i ones = _mm_set1_epi16(1);
    const int nb = K / 32;
    for (int b = 0; b < nb; b++) {
        const int four = b % 4 == 0 && b + 4 <= nb;
        const int n4 = four ? 4 : 1; /* blocks in this step: 4, or 1 at the tail */
        float s[2][4][4];
#pragma GCC unroll 2
        for (int k = 0; k < nw; k++) {
            const uint8_t *x = wv[k] + (size_t)b * bs;
            __m128 wd, wm = _mm_setzero_ps();
            if (four) {
                wd = _mm_cvtph_ps(_mm_setr_epi16((short)ld16(x), (short)ld16(x + bs), (short)ld16(x + 2 * bs),
                                                 (short)ld16(x + 3 * bs), 0, 0, 0, 0));
                if (has_min)
                    wm = _mm_cvtph_ps(_mm_setr_epi16((short)ld16(x + 2), (short)ld16(x + bs + 2),
                                                     (short)ld16(x + 2 * bs + 2), (short)ld16(x + 3 * bs + 2), 0, 0, 0, 0));
            } else {
                wd = _mm_set_ss(dsv_f16_to_f32(ld16(x)));
                if (has_min) wm = _mm_set_ss(dsv_f16_to_f32(ld16(x + 2)));
            }
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                const __m128 da = four ? _mm_loadu_ps(a[r].d + b) : _mm_set_ss(a[r].d[b]);
                _mm_storeu_ps(s[k][r], _mm_mul_ps(wd, da));
                if (has_min) {
                    const __m128i s16 = four ? _mm_loadu_si128((const __m128i *)(a[r].s + 2 * b))
                                             : _mm_cvtsi32_si128((int)ld32((const uint8_t *)(a[r].s + 2 * b)));
                    const __m128 sum = _mm_cvtepi32_ps(_mm_madd_epi16(s16, ones));
                    accm[k][r] = _mm_fmadd_ps(wm, _mm_mul_ps(da, sum), accm[k][r]);
                }
            }
        }
        for (int j = 0; j < n4; j++) {
            __m256i v[2], av[2];
#pragma GCC unroll 2
            for (int k = 0; k < nw; k++) {
                v[k] = q_levels_32v(t, wv[k] + (size_t)(b + j) * bs);
                av[k] = has_min ? v[k] : _mm256_sign_epi8(v[k], v[k]);
            }
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                const __m256i qv = _mm256_loadu_si256((const __m256i *)(a[r].q + 32 * (b + j)));
#pragma GCC unroll 2
                for (int k = 0; k < nw; k++) {
                    const __m256i p = Q_DOT(av[k], has_min ? qv : _mm256_sign_epi8(qv, v[k]));
                    acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s[k][r][j]), acc[k][r]);
                }
            }
        }
        b += n4 - 1;
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) {
            __m128 m = _mm_add_ps(accm[k][r], _mm_movehl_ps(accm[k][r], accm[k][r]));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            ov[k][r] = hsum8(acc[k][r]) + _mm_cvtss_f32(m);
        }
}

INLINE void b32_rows(uint32_t t, const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) {
    b32_core(t, &w, 1, act, stride, nr, K, &out);
}

/* name##_rows: one weight row against nr activation rows; name##_pair: two
 * weight rows against one (decoding, as q8_0_pair). */
#define B32_ROWS(T, name)                                                                           \
    INLINE void name##_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) { \
        b32_rows(T, w, act, stride, nr, K, out);                                                    \
    }                                                                                               \
    INLINE void name##_pair(const uint8_t *w0, const uint8_t *w1, const uint8_t *act, int K, float *o0, float *o1) { \
        const uint8_t *const wv[2] = {w0, w1};                                                      \
        float *const ov[2] = {o0, o1};                                                              \
        b32_core(T, wv, 2, act, 0, 1, K, ov);                                                       \
    }
B32_ROWS(DSV_GGML_Q4_0, q4_0)
B32_ROWS(DSV_GGML_Q4_1, q4_1)
B32_ROWS(DSV_GGML_Q5_0, q5_0)
B32_ROWS(DSV_GGML_Q5_1, q5_1)
B32_ROWS(DSV_GGML_IQ4_NL, iq4_nl)

#endif /* DSV_QUANT_B32_H */
