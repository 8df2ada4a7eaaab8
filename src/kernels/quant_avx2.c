/* quant_avx2.c: AVX2 dot products of block-quantized weight rows with 8-bit
 * activations (quant.h), for CPUs without AVX-512.
 *
 * Every type streams as in quant_avx512.c (levels decoded in
 * registers, up to 4 activation rows per weight pass, two weight rows per
 * pass for one activation row of a K-quant, the same code per row whatever
 * the batch), with vpmaddubsw (unsigned by signed bytes, pairs
 * summed to int16) and vpmaddwd by ones for the 4-value int32 lane sums.
 * The int16 pairs never saturate: unsigned levels are at most 31 (Q5_K,
 * Q5_1; Q2_K's at most 3), signed levels go in as |w| <= 128 (Q8_0: 2 * 128 * 127 < 32768)
 * with the activation taking w's sign.
 * Order of the float arithmetic: per sub-block S = (weight scale *
 * sub-block scale) * activation scale; per lane acc += float(lane sum) * S
 * (fused), blocks in order, in 8 lanes (Q8_0: one set; the K-quants: two,
 * for the even and odd 32-value pieces of a block, added lane by lane at
 * the end); then the lanes as hsum8 adds them; Q4_K's and Q5_K's minimum term
 * (dmin * m) * (activation scale * 32-value activation sum) in a third
 * set, subtracted at the end; Q2_K's, (dmin * m) * (activation scale *
 * 16-value activation sum), likewise, sub-blocks 0-7 then 8-15 of each
 * block into the same 8 lanes; Q4_1's and Q5_1's (plus) in 4 lanes.
 * At the end: the absorbed attention's products of such rows with bf16
 * activations (dsv_q_absorb). */
#include <immintrin.h>
#include <string.h>

#include "base/numeric.h"
#include "base/util.h"
#include "quant.h"
#include "quant_levels.h"

#define INLINE static inline __attribute__((always_inline))

/* Σ of 4 products per int32 lane: unsigned u times signed q. */
static inline __m256i dot_u8s8(__m256i u, __m256i q) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1));
}

#define Q_DOT(u, q) dot_u8s8((u), (q))
#include "quant_b32.h"

/* Q4_K: the low nibbles of qs[32c..] are sub-block 2c, the high ones
 * 2c + 1 (quant_avx512.c). Q5_K: the same, and the 5th bits of qh[l]
 * (bit 2c for the low nibble, 2c + 1 for the high) added as 16. */
INLINE void q45_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                       float *const *ov, int five) {
    __m256 acc[2][4][2], accm[2][4];
    struct arow a[4];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) acc[k][r][0] = acc[k][r][1] = accm[k][r] = _mm256_setzero_ps();
    const int bs = five ? 176 : 144;
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    for (int blk = 0; blk < K / 256; blk++)
#pragma GCC unroll 2
    for (int k = 0; k < nw; k++) { /* a block of each weight row in turn */
        const uint8_t *w = wv[k] + (size_t)blk * bs;
        q_prefetch(w, bs);
        const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(w)));
        uint64_t sc, mn;
        k4_unpack(w + 4, &sc, &mn);
        const __m256 scf = _mm256_mul_ps(_mm256_broadcastss_ps(dm), u8x8_ps(sc));
        const __m256 mnf = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), u8x8_ps(mn));
        __m256i lo[4], hi[4];
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(w + 16));
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(w + (five ? 48 : 16) + 32 * c));
            lo[c] = _mm256_and_si256(raw, m4);
            hi[c] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (five) {
                const __m256i bl = _mm256_set1_epi8((char)(1 << 2 * c)), bh = _mm256_set1_epi8((char)(1 << (2 * c + 1)));
                const __m256i k16 = _mm256_set1_epi8(16);
                lo[c] = _mm256_or_si256(lo[c], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bl), bl), k16));
                hi[c] = _mm256_or_si256(hi[c], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bh), bh), k16));
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const __m256 da = _mm256_loadu_ps(a[r].d + 8 * blk);
            const __m256 S = _mm256_mul_ps(scf, da);
            const int8_t *q = a[r].q + 256 * blk;
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m256i pl = dot_u8s8(lo[c], _mm256_loadu_si256((const __m256i *)(q + 64 * c)));
                const __m256i ph = dot_u8s8(hi[c], _mm256_loadu_si256((const __m256i *)(q + 64 * c + 32)));
                acc[k][r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pl), _mm256_permutevar8x32_ps(S, _mm256_set1_epi32(2 * c)),
                                            acc[k][r][0]);
                acc[k][r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ph),
                                            _mm256_permutevar8x32_ps(S, _mm256_set1_epi32(2 * c + 1)), acc[k][r][1]);
            }
            const __m256i s32 = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(a[r].s + 16 * blk)), ones);
            accm[k][r] = _mm256_fmadd_ps(mnf, _mm256_mul_ps(da, _mm256_cvtepi32_ps(s32)), accm[k][r]);
        }
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum8(_mm256_add_ps(acc[k][r][0], acc[k][r][1])) - hsum8(accm[k][r]);
}

/* One weight row against nr <= 4 activation rows. */
INLINE void q45_k_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out, int five) {
    q45_k_core(&w, 1, act, stride, nr, K, &out, five);
}

/* Two weight rows against one activation row (decoding), a block of each
 * in turn: two forward streams through memory (rows j and j + nw/2 of a
 * call, see dsv_q_dot_mat_avx2); each row runs the one-row kernel's
 * operations. */
INLINE void q4_k_pair(const uint8_t *w0, const uint8_t *w1, const uint8_t *act, int K, float *o0, float *o1) {
    const uint8_t *const wv[2] = {w0, w1};
    float *const ov[2] = {o0, o1};
    q45_k_core(wv, 2, act, 0, 1, K, ov, 0);
}
INLINE void q5_k_pair(const uint8_t *w0, const uint8_t *w1, const uint8_t *act, int K, float *o0, float *o1) {
    const uint8_t *const wv[2] = {w0, w1};
    float *const ov[2] = {o0, o1};
    q45_k_core(wv, 2, act, 0, 1, K, ov, 1);
}

INLINE void q4_k_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) {
    q45_k_rows(w, act, stride, nr, K, out, 0);
}
INLINE void q5_k_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) {
    q45_k_rows(w, act, stride, nr, K, out, 1);
}

/* Q2_K and Q3_K (layout in quant_avx512.c): register i = 4h + j holds
 * values 32i..32i+31, the 2-bit fields (qs[32h + l] >> 2j) & 3; lanes 0-3
 * sub-block 2i, lanes 4-7 sub-block 2i + 1 (as Q6_K): k16_lanes spreads
 * their scales from S[0] (sub-blocks 0-7) or S[1] (8-15). */
INLINE __m256 k16_lanes(const __m256 S[2], int i) {
    const int k = 2 * (i & 3);
    return _mm256_permutevar8x32_ps(S[i >> 2], _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1));
}

/* Q2_K: unsigned levels 0..3 straight into vpmaddubsw; the minimum term
 * of sub-block k, (dmin * m[k]) * (activation scale * 16-value activation
 * sum), in lane k % 8 of a third accumulator, sub-blocks 0-7 then 8-15. */
INLINE void q2_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                      float *const *ov) {
    __m256 acc[2][4][2], accm[2][4];
    struct arow a[4];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) acc[k][r][0] = acc[k][r][1] = accm[k][r] = _mm256_setzero_ps();
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i idx_lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), idx_hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    for (int blk = 0; blk < K / 256; blk++)
#pragma GCC unroll 2
    for (int k = 0; k < nw; k++) { /* a block of each weight row in turn */
        const uint8_t *w = wv[k] + (size_t)blk * 84;
        q_prefetch(w, 84);
        const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(w + 80))); /* d, dmin */
        const __m256 d = _mm256_broadcastss_ps(dm), dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
        const __m128i sm = _mm_loadu_si128((const __m128i *)w);
        const __m256i sm_lo = _mm256_cvtepu8_epi32(sm), sm_hi = _mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8));
        const __m256i k15 = _mm256_set1_epi32(15);
        const __m256 scf[2] = {_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(sm_lo, k15))),
                               _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(sm_hi, k15)))};
        const __m256 mnf[2] = {_mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_srli_epi32(sm_lo, 4))),
                               _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_srli_epi32(sm_hi, 4)))};
        __m256i wz[8];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * h));
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) wz[4 * h + j] = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * j), m3);
        }
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const __m256 da = _mm256_loadu_ps(a[r].d + 8 * blk);
            const __m256 dal = _mm256_permutevar8x32_ps(da, idx_lo), dah = _mm256_permutevar8x32_ps(da, idx_hi);
            const __m256 S[2] = {_mm256_mul_ps(scf[0], dal), _mm256_mul_ps(scf[1], dah)};
            const int8_t *q = a[r].q + 256 * blk;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m256i p = dot_u8s8(wz[i], _mm256_loadu_si256((const __m256i *)(q + 32 * i)));
                acc[k][r][i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), k16_lanes(S, i), acc[k][r][i & 1]);
            }
            const __m256i s16 = _mm256_loadu_si256((const __m256i *)(a[r].s + 16 * blk));
            const __m256 sl = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s16)));
            const __m256 sh = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(s16, 1)));
            accm[k][r] = _mm256_fmadd_ps(mnf[0], _mm256_mul_ps(dal, sl), accm[k][r]);
            accm[k][r] = _mm256_fmadd_ps(mnf[1], _mm256_mul_ps(dah, sh), accm[k][r]);
        }
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum8(_mm256_add_ps(acc[k][r][0], acc[k][r][1])) - hsum8(accm[k][r]);
}

INLINE void q2_k_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) {
    q2_k_core(&w, 1, act, stride, nr, K, &out);
}
/* Two weight rows against one activation row, a block of each in turn
 * (two forward streams, as the other types' pairs). */
INLINE void q2_k_pair(const uint8_t *w0, const uint8_t *w1, const uint8_t *act, int K, float *o0, float *o1) {
    const uint8_t *const wv[2] = {w0, w1};
    float *const ov[2] = {o0, o1};
    q2_k_core(wv, 2, act, 0, 1, K, ov);
}

/* Q3_K: the level is the 2-bit field, minus 4 where bit 4h + j of
 * hmask[l] is clear; -4..3 go in as |w| with the activation taking w's
 * sign (as Q6_K). */
INLINE void q3_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                      float *const *ov) {
    __m256 acc[2][4][2];
    struct arow a[4];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) acc[k][r][0] = acc[k][r][1] = _mm256_setzero_ps();
    const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    const __m256i idx_lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), idx_hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    for (int blk = 0; blk < K / 256; blk++)
#pragma GCC unroll 2
    for (int k = 0; k < nw; k++) { /* a block of each weight row in turn */
        const uint8_t *w = wv[k] + (size_t)blk * 110;
        q_prefetch(w, 110);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)w);
        __m256i sw[8], aw[8];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(w + 32 + 32 * h));
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const __m256i bit = _mm256_set1_epi8((char)(1 << (4 * h + j)));
                const __m256i clear = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), _mm256_setzero_si256());
                const __m256i v = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(raw, 2 * j), m3), _mm256_and_si256(clear, four));
                sw[4 * h + j] = v;
                aw[4 * h + j] = _mm256_sign_epi8(v, v);
            }
        }
        const __m256 d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(ld16(w + 108))));
        const __m128i sc = k3_scales(w + 96);
        const __m256i k32 = _mm256_set1_epi32(32);
        const __m256 scf[2] = {_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(sc), k32))),
                               _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(sc, 8)), k32)))};
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const __m256 da = _mm256_loadu_ps(a[r].d + 8 * blk);
            const __m256 S[2] = {_mm256_mul_ps(scf[0], _mm256_permutevar8x32_ps(da, idx_lo)),
                                 _mm256_mul_ps(scf[1], _mm256_permutevar8x32_ps(da, idx_hi))};
            const int8_t *q = a[r].q + 256 * blk;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * i));
                const __m256i p = dot_u8s8(aw[i], _mm256_sign_epi8(qv, sw[i]));
                acc[k][r][i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), k16_lanes(S, i), acc[k][r][i & 1]);
            }
        }
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum8(_mm256_add_ps(acc[k][r][0], acc[k][r][1]));
}

INLINE void q3_k_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) {
    q3_k_core(&w, 1, act, stride, nr, K, &out);
}
/* Two weight rows against one activation row, a block of each in turn
 * (two forward streams, as the other types' pairs). */
INLINE void q3_k_pair(const uint8_t *w0, const uint8_t *w1, const uint8_t *act, int K, float *o0, float *o1) {
    const uint8_t *const wv[2] = {w0, w1};
    float *const ov[2] = {o0, o1};
    q3_k_core(wv, 2, act, 0, 1, K, ov);
}

/* Q6_K (layout in quant_avx512.c): register i = 4h + k holds values
 * 32i..32i+31, lanes 0-3 sub-block 2i, lanes 4-7 sub-block 2i + 1. */
INLINE void q6_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                      float *const *ov) {
    __m256 acc[2][4][2];
    struct arow a[4];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) acc[k][r][0] = acc[k][r][1] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30), k32 = _mm256_set1_epi8(32);
    const __m256i idx_lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), idx_hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    for (int blk = 0; blk < K / 256; blk++)
#pragma GCC unroll 2
    for (int k = 0; k < nw; k++) { /* a block of each weight row in turn */
        const uint8_t *w = wv[k] + (size_t)blk * 210;
        q_prefetch(w, 210);
        __m256i sw[8], aw[8];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(w + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(w + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h));
            __m256i u[4];
            u[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
            u[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
            u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
            u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                sw[4 * h + k] = _mm256_sub_epi8(u[k], k32);
                aw[4 * h + k] = _mm256_sign_epi8(sw[4 * h + k], sw[4 * h + k]);
            }
        }
        const __m256 d = _mm256_set1_ps(dsv_f16_to_f32(ld16(w + 208)));
        const __m128i sc = _mm_loadu_si128((const __m128i *)(w + 192));
        const __m256 scf_lo = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
        const __m256 scf_hi = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))));
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const __m256 da = _mm256_loadu_ps(a[r].d + 8 * blk);
            const __m256 S[2] = {_mm256_mul_ps(scf_lo, _mm256_permutevar8x32_ps(da, idx_lo)),
                                 _mm256_mul_ps(scf_hi, _mm256_permutevar8x32_ps(da, idx_hi))};
            const int8_t *q = a[r].q + 256 * blk;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + 32 * i));
                const __m256i p = dot_u8s8(aw[i], _mm256_sign_epi8(qv, sw[i]));
                const __m256i idx = _mm256_setr_epi32(2 * (i & 3), 2 * (i & 3), 2 * (i & 3), 2 * (i & 3),
                                                      2 * (i & 3) + 1, 2 * (i & 3) + 1, 2 * (i & 3) + 1, 2 * (i & 3) + 1);
                acc[k][r][i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_permutevar8x32_ps(S[i >> 2], idx),
                                                acc[k][r][i & 1]);
            }
        }
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum8(_mm256_add_ps(acc[k][r][0], acc[k][r][1]));
}

INLINE void q6_k_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out) {
    q6_k_core(&w, 1, act, stride, nr, K, &out);
}
/* Two weight rows against one activation row, as q4_k_pair. */
INLINE void q6_k_pair(const uint8_t *w0, const uint8_t *w1, const uint8_t *act, int K, float *o0, float *o1) {
    const uint8_t *const wv[2] = {w0, w1};
    float *const ov[2] = {o0, o1};
    q6_k_core(wv, 2, act, 0, 1, K, ov);
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

#include "quant_mat.h"

void dsv_q_dot_mat_avx2(uint32_t type, const void *w, size_t wrow, int nw, const void *act, size_t stride, int n,
                        int K, float *out) {
    Q_DOT_MAT_SWITCH(ROWS_BY_4)
}

void dsv_q_dot_rows_avx2(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out) {
    dsv_q_dot_mat_avx2(type, w, 0, 1, act, stride, n, K, out);
}

float dsv_q_vec_dot_avx2(uint32_t type, const void *w, const void *act, int K) {
    float o;
    dsv_q_dot_rows_avx2(type, w, act, 0, 1, K, &o);
    return o;
}

/* ---- absorbed attention with float activations (quant.h, dsv_q_absorb) ---- */

/* 8 levels of lv from byte 8q as floats. */
INLINE __m256 levels8_ps(__m256i lv, int q) {
    const __m128i h = q < 2 ? _mm256_castsi256_si128(lv) : _mm256_extracti128_si256(lv, 1);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q & 1 ? _mm_srli_si128(h, 8) : h));
}

/* Every type as quant_avx512.c does Q8_0 (AVX2 has no bf16 dot product):
 * up to 4 weight rows at a time against the head's activations (fp32 once
 * per head), each row's weights decoded to their
 * float values per 16 and added as acc += w * x (fused) in 8 lanes, values
 * in order; then the lanes as hsum8 adds them. */
INLINE void absorb_t(const uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                     uint16_t *y, int h0, int h1) {
    const int bk = dsv_ggml_blck(t), ng = bk / 32;
    const size_t bs = dsv_ggml_bsize(t);
    _Alignas(32) float xf[DSV_Q_ABSORB_KMAX];
    for (int h = h0; h < h1; h++) {
        const uint16_t *xh = x + (size_t)h * ldx;
        for (int k = 0; k < K; k += 8)
            _mm256_store_ps(xf + k, _mm256_castsi256_ps(_mm256_slli_epi32(
                                        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(xh + k))), 16)));
        for (int r0 = 0; r0 < R; r0 += 4) {
            const int nr = R - r0 < 4 ? R - r0 : 4;
            const uint8_t *wr[4];
            __m256 acc[4];
            for (int i = 0; i < 4; i++) {
                wr[i] = (const uint8_t *)w + ((size_t)h * R + r0 + (i < nr ? i : 0)) * wrow;
                acc[i] = _mm256_setzero_ps();
            }
            for (int b = 0; b < K / bk; b++) {
                float sc[4][16], mn[4][16];
                int has_min = 0;
#pragma GCC unroll 4
                for (int i = 0; i < nr; i++) has_min = absorb_scales(t, wr[i] + (size_t)b * bs, sc[i], mn[i]);
                for (int g = 0; g < ng; g++) {
                    const float *xg = xf + b * bk + 32 * g;
#pragma GCC unroll 4
                    for (int i = 0; i < nr; i++) {
                        const __m256i lv = absorb_levels(t, wr[i] + (size_t)b * bs, g);
#pragma GCC unroll 4
                        for (int q = 0; q < 4; q++) {
                            const __m256 s = _mm256_set1_ps(sc[i][2 * g + q / 2]);
                            __m256 f = levels8_ps(lv, q);
                            f = has_min ? _mm256_fmadd_ps(f, s, _mm256_set1_ps(mn[i][2 * g + q / 2])) : _mm256_mul_ps(f, s);
                            acc[i] = _mm256_fmadd_ps(f, _mm256_load_ps(xg + 8 * q), acc[i]);
                        }
                    }
                }
            }
            for (int i = 0; i < nr; i++) y[(size_t)h * R + r0 + i] = dsv_f32_to_bf16(hsum8(acc[i]));
        }
    }
}

/* One body per type (the decoding's switches resolved at compile time). */
void dsv_q_absorb_avx2(uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                       uint16_t *y, int h0, int h1) {
    DSV_ASSERT(dsv_q_absorb_fast(t) && dsv_q_absorb_ok(t, K));
    switch (t) {
#define T(ty) case ty: absorb_t(ty, w, wrow, R, K, x, ldx, y, h0, h1); break
    T(DSV_GGML_Q8_0); T(DSV_GGML_Q4_0); T(DSV_GGML_Q4_1); T(DSV_GGML_Q5_0); T(DSV_GGML_Q5_1);
    T(DSV_GGML_IQ4_NL); T(DSV_GGML_Q4_K); T(DSV_GGML_Q5_K); T(DSV_GGML_Q6_K);
#undef T
    default: break;
    }
}
