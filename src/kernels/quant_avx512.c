/* quant_avx512.c: AVX-512 VNNI dot products of block-quantized weight rows
 * with 8-bit activations (quant.h), and at the end the absorbed attention's
 * products of such rows with bf16 activations (dsv_q_absorb).
 *
 * Every type has a streaming kernel (Q8_0, Q4_K, Q5_K and Q6_K are the
 * types of llama.cpp's and dsv32's Q8_0 and Q4_K_M files, Q2_K and Q3_K
 * those of the low-bit files' routed experts; the 32-value types are what
 * 128-wide rows fall back to): a block's levels are decoded in registers
 * (nibbles and high bits shifted and masked in place), multiplied by the
 * activations with vpdpbusd (unsigned by signed bytes: Q4_K's and Q2_K's
 * levels are unsigned already; a signed level w times an activation q is taken as
 * |w| * (q with w's sign), both in range since |w| <= 128 and q > -128),
 * and each 32-bit lane's integer sum (4 products) is converted to float and
 * added into a vector accumulator with the scale of its sub-block. A
 * block's levels are decoded once for up to 4 activation rows (8 for the
 * K-quants, whose decoding is dearer), and for one activation row
 * (decoding) the K-quants take two weight rows per pass; each row
 * runs exactly the same operations whatever the number of rows, so results
 * do not depend on the batch.
 *
 * Order of the float arithmetic (quant.h allows it to differ from the
 * reference's; the integer sums are exact):
 *   per sub-block: S = (weight scale * sub-block scale) * activation scale;
 *   per lane: acc += float(lane sum) * S (fused), blocks in order, one lane
 *   chain per position (8 lanes for Q8_0; for the K-quants two sets of 16,
 *   the even and odd 64-value quarters of each block, added lane by lane at
 *   the end, so two chains overlap); then the lanes are added as a tree
 *   (hsum below). Q4_K's and Q5_K's minimum term, (dmin * m) * (activation
 *   scale * 32-value activation sum), goes into a second accumulator of 8
 *   lanes (one per sub-block position), reduced the same way and
 *   subtracted at the end; Q2_K's, (dmin * m) * (activation scale *
 *   16-value activation sum), likewise in 16 lanes. The 32-value types other than Q8_0 go as Q8_0;
 *   Q4_1's and Q5_1's minimum term in 4 lanes (b32_rows).
 */
#include <immintrin.h>
#include <string.h>

#include "base/numeric.h"
#include "base/util.h"
#include "quant.h"
#include "quant_levels.h"

#define INLINE static inline __attribute__((always_inline))

static inline float hsum16(__m512 v) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

/* VNNI: one instruction for the 4-byte dot products of quant_b32.h. */
#define Q_DOT(u, q) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (q))
#include "quant_b32.h"

/* ---- Q4_K, Q5_K: 144- and 176-byte blocks of 256 ------------------------------ */

/* Nibbles of qs[32c + l]: low = value 64c + l (sub-block 2c), high = value
 * 64c + 32 + l (sub-block 2c + 1). One 512-bit register holds both, in
 * value order, so it meets 64 consecutive activations; lanes 0-7 belong to
 * sub-block 2c, lanes 8-15 to 2c + 1. */
INLINE void q45_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                       float *const *ov, int five) {
    __m512 acc[2][8][2];
    __m256 accm[2][8];
    struct arow a[8];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int i = 0; i < nw; i++)
        for (int r = 0; r < nr; r++) {
            acc[i][r][0] = acc[i][r][1] = _mm512_setzero_ps();
            accm[i][r] = _mm256_setzero_ps();
        }
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m256i ones = _mm256_set1_epi16(1);
    __m512i idx[4];
    for (int c = 0; c < 4; c++)
        idx[c] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * c)), _mm256_set1_epi32(2 * c + 1), 1);
    const int bs = five ? 176 : 144;
    for (int blk = 0; blk < K / 256; blk++) {
        __m256 scf[2], mnf[2];
        __m512i wz[2][4];
#pragma GCC unroll 2
        for (int i = 0; i < nw; i++) {
            const uint8_t *w = wv[i] + (size_t)blk * bs;
            q_prefetch(w, bs);
            const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(w))); /* d, dmin */
            uint64_t sc, mn;
            k4_unpack(w + 4, &sc, &mn);
            scf[i] = _mm256_mul_ps(_mm256_broadcastss_ps(dm), u8x8_ps(sc));
            mnf[i] = _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dm)), u8x8_ps(mn));
            const __m512i qh = five ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + 16))) : m4;
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m512i raw =
                    _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + (five ? 48 : 16) + 32 * c)));
                wz[i][c] = _mm512_and_si512(_mm512_srlv_epi16(raw, shift), m4);
                if (five) { /* Q5_K: the 5th bit of value 64c + l is bit 2c of qh[l], of 64c + 32 + l bit 2c + 1 */
                    const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << 2 * c)),
                                                           _mm256_set1_epi8((char)(1 << (2 * c + 1))), 1);
                    wz[i][c] = _mm512_mask_add_epi8(wz[i][c], _mm512_test_epi8_mask(qh, bit), wz[i][c], _mm512_set1_epi8(16));
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            const __m256 da = _mm256_loadu_ps(a[r].d + 8 * blk);
            const int8_t *q = a[r].q + 256 * blk;
            const __m256i s32 = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(a[r].s + 16 * blk)), ones);
            const __m256 as = _mm256_mul_ps(da, _mm256_cvtepi32_ps(s32));
#pragma GCC unroll 2
            for (int i = 0; i < nw; i++) {
                const __m512 S = _mm512_castps256_ps512(_mm256_mul_ps(scf[i], da));
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) {
                    const __m512i p =
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), wz[i][c], _mm512_loadu_si512(q + 64 * c));
                    acc[i][r][c & 1] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx[c], S), acc[i][r][c & 1]);
                }
                accm[i][r] = _mm256_fmadd_ps(mnf[i], as, accm[i][r]);
            }
        }
    }
    for (int i = 0; i < nw; i++)
        for (int r = 0; r < nr; r++)
            ov[i][r] = hsum16(_mm512_add_ps(acc[i][r][0], acc[i][r][1])) - hsum8(accm[i][r]);
}

/* One weight row against nr <= 8 activation rows. */
INLINE void q45_k_rows(const uint8_t *w, const uint8_t *act, size_t stride, int nr, int K, float *out, int five) {
    q45_k_core(&w, 1, act, stride, nr, K, &out, five);
}

/* Two weight rows against one activation row (decoding): the activations'
 * loads serve both, and two streams of weights keep more memory reads in
 * flight (the rows come from the two halves of a call's range, see
 * dsv_q_dot_mat_avx512). Each row runs the one-row kernel's operations. */
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

/* ---- Q2_K, Q3_K: 84- and 110-byte blocks of 256 ------------------------------ */

/* Value 128h + 32j + l has its low 2 bits at bits 2j of qs[32h + l] (Q2_K:
 * all of its level, 0..3; Q3_K: with bit 4h + j of hmask[l] set, the level
 * is those 2 bits, clear, they minus 4). The 32 bytes qs[32h..], copied to
 * both halves and shifted by 4i' and 4i' + 2 (per half), give j = 2i' and
 * 2i' + 1: register i = 2h + i' holds values 64i..64i+63 in order, lanes
 * 4j..4j+3 sub-block 4i + j (as Q6_K). The idx tables are Q6_K's. */
static inline void k16_idx(__m512i *idx_half, __m512i idx[4]) {
    *idx_half = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    for (int i = 0; i < 4; i++)
        idx[i] = _mm512_add_epi32(_mm512_set1_epi32(4 * i),
                                  _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
}

/* The shift counts of register 2h + i' (above): 4i' and 4i' + 2. */
static inline void q23_shifts(__m512i shift[2]) {
    for (int ip = 0; ip < 2; ip++)
        shift[ip] = _mm512_inserti64x4(_mm512_set1_epi16((short)(4 * ip)), _mm256_set1_epi16((short)(4 * ip + 2)), 1);
}

/* The 2-bit fields of qs[32h..] for register 2h + i'. */
INLINE __m512i q23_low2(const uint8_t *qs, int h, __m512i shift) {
    const __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * h)));
    return _mm512_and_si512(_mm512_srlv_epi16(raw, shift), _mm512_set1_epi8(3));
}

/* Q2_K: levels unsigned, straight into vpdpbusd; the minimum term of
 * sub-block k, (dmin * m[k]) * (activation scale * 16-value activation
 * sum), in lane k of a second accumulator. */
INLINE void q2_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                      float *const *ov) {
    __m512 acc[2][8][2], accm[2][8];
    struct arow a[8];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) acc[k][r][0] = acc[k][r][1] = accm[k][r] = _mm512_setzero_ps();
    __m512i idx_half, idx[4];
    k16_idx(&idx_half, idx);
    __m512i shift[2];
    q23_shifts(shift);
    for (int blk = 0; blk < K / 256; blk++)
#pragma GCC unroll 2
    for (int k = 0; k < nw; k++) { /* a block of each weight row in turn */
        const uint8_t *w = wv[k] + (size_t)blk * 84;
        q_prefetch(w, 84);
        const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(w + 80))); /* d, dmin */
        const __m512i sm = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)w));
        const __m512 scf = _mm512_mul_ps(_mm512_broadcastss_ps(dm),
                                         _mm512_cvtepi32_ps(_mm512_and_si512(sm, _mm512_set1_epi32(15))));
        const __m512 mnf = _mm512_mul_ps(_mm512_broadcastss_ps(_mm_movehdup_ps(dm)),
                                         _mm512_cvtepi32_ps(_mm512_srli_epi32(sm, 4)));
        __m512i wz[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) wz[i] = q23_low2(w + 16, i >> 1, shift[i & 1]);
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            const __m512 da = _mm512_permutexvar_ps(idx_half, _mm512_castps256_ps512(_mm256_loadu_ps(a[r].d + 8 * blk)));
            const __m512 S = _mm512_mul_ps(scf, da);
            const int8_t *q = a[r].q + 256 * blk;
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wz[i], _mm512_loadu_si512(q + 64 * i));
                acc[k][r][i & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx[i], S), acc[k][r][i & 1]);
            }
            const __m512 sf = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(a[r].s + 16 * blk))));
            accm[k][r] = _mm512_fmadd_ps(mnf, _mm512_mul_ps(da, sf), accm[k][r]);
        }
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum16(_mm512_add_ps(acc[k][r][0], acc[k][r][1])) - hsum16(accm[k][r]);
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

/* Q3_K: levels -4..3 go in as |w| with the activation taking w's sign
 * (as Q6_K); the high bit of value 128h + 32j + l is bit 4h + j of
 * hmask[l], so register 2h + i' tests bits 4h + 2i' (low half) and
 * 4h + 2i' + 1 (high half) of hmask copied to both halves. */
INLINE void q3_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                      float *const *ov) {
    __m512 acc[2][8][2];
    struct arow a[8];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) acc[k][r][0] = acc[k][r][1] = _mm512_setzero_ps();
    __m512i idx_half, idx[4];
    k16_idx(&idx_half, idx);
    const __m512i four = _mm512_set1_epi8(4);
    __m512i shift[2], sel[4];
    q23_shifts(shift);
    for (int i = 0; i < 4; i++) {
        const int bit = 4 * (i >> 1) + 2 * (i & 1);
        sel[i] = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << bit)), _mm256_set1_epi8((char)(1 << (bit + 1))), 1);
    }
    for (int blk = 0; blk < K / 256; blk++)
#pragma GCC unroll 2
    for (int k = 0; k < nw; k++) { /* a block of each weight row in turn */
        const uint8_t *w = wv[k] + (size_t)blk * 110;
        q_prefetch(w, 110);
        const __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)w));
        __m512i aw[4];
        __mmask64 neg[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m512i low = q23_low2(w + 32, i >> 1, shift[i & 1]);
            const __m512i v = _mm512_mask_sub_epi8(low, _mm512_testn_epi8_mask(hm, sel[i]), low, four);
            aw[i] = _mm512_abs_epi8(v);
            neg[i] = _mm512_movepi8_mask(v);
        }
        const __m512 d = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(ld16(w + 108))));
        const __m512i sc = _mm512_sub_epi32(_mm512_cvtepu8_epi32(k3_scales(w + 96)), _mm512_set1_epi32(32));
        const __m512 scf = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            const __m512 da = _mm512_permutexvar_ps(idx_half, _mm512_castps256_ps512(_mm256_loadu_ps(a[r].d + 8 * blk)));
            const __m512 S = _mm512_mul_ps(scf, da);
            const int8_t *q = a[r].q + 256 * blk;
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                const __m512i qv = _mm512_loadu_si512(q + 64 * i);
                const __m512i sq = _mm512_mask_sub_epi8(qv, neg[i], _mm512_setzero_si512(), qv);
                const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw[i], sq);
                acc[k][r][i & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx[i], S), acc[k][r][i & 1]);
            }
        }
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum16(_mm512_add_ps(acc[k][r][0], acc[k][r][1]));
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

/* ---- Q6_K: 210-byte blocks of 256 -------------------------------------------- */

/* Value 128h + 32k + l: low 4 bits in ql[64h + 32(k&1) + l] (low nibble
 * for k < 2, high for k >= 2), high 2 bits at bits 2k of qh[32h + l]. The
 * 64 bytes ql[64h..] give k = 0, 1 (low nibbles) and k = 2, 3 (high); the
 * 32 bytes qh[32h..], copied to both halves, give the high bits, shifted
 * to bits 4-5 by a per-half count. Register i then holds values 64i..64i+63
 * in order; lanes 4j..4j+3 are 16-value sub-block 4i + j. */
INLINE void q6_k_core(const uint8_t *const *wv, int nw, const uint8_t *act, size_t stride, int nr, int K,
                      float *const *ov) {
    __m512 acc[2][8][2];
    struct arow a[8];
    for (int r = 0; r < nr; r++) a[r] = arow_at(act, stride, r, K);
    for (int i = 0; i < nw; i++)
        for (int r = 0; r < nr; r++) acc[i][r][0] = acc[i][r][1] = _mm512_setzero_ps();
    const __m512i left01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i right23 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30), k32 = _mm512_set1_epi8(32);
    /* idx_half: d[k/2] for k = 0..15; idx[i]: sub-block 4i + lane/4 */
    const __m512i idx_half = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    __m512i idx[4];
    for (int i = 0; i < 4; i++)
        idx[i] = _mm512_add_epi32(_mm512_set1_epi32(4 * i),
                                  _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
    for (int blk = 0; blk < K / 256; blk++) {
        __m512i aw[2][4];
        __mmask64 neg[2][4];
        __m512 scf[2];
#pragma GCC unroll 2
        for (int k = 0; k < nw; k++) {
            const uint8_t *w = wv[k] + (size_t)blk * 210;
            q_prefetch(w, 210);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m512i l = _mm512_loadu_si512(w + 64 * h);
                const __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h)));
                const __m512i u01 =
                    _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(hb, left01), m30));
                const __m512i u23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                                    _mm512_and_si512(_mm512_srlv_epi16(hb, right23), m30));
                const __m512i w01 = _mm512_sub_epi8(u01, k32), w23 = _mm512_sub_epi8(u23, k32);
                aw[k][2 * h] = _mm512_abs_epi8(w01);
                neg[k][2 * h] = _mm512_movepi8_mask(w01);
                aw[k][2 * h + 1] = _mm512_abs_epi8(w23);
                neg[k][2 * h + 1] = _mm512_movepi8_mask(w23);
            }
            const float d = dsv_f16_to_f32(ld16(w + 208));
            scf[k] = _mm512_mul_ps(_mm512_set1_ps(d),
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 192)))));
        }
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            const __m512 da = _mm512_permutexvar_ps(idx_half, _mm512_castps256_ps512(_mm256_loadu_ps(a[r].d + 8 * blk)));
            const int8_t *q = a[r].q + 256 * blk;
#pragma GCC unroll 2
            for (int k = 0; k < nw; k++) {
                const __m512 S = _mm512_mul_ps(scf[k], da);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    const __m512i qv = _mm512_loadu_si512(q + 64 * i);
                    const __m512i sq = _mm512_mask_sub_epi8(qv, neg[k][i], _mm512_setzero_si512(), qv);
                    const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw[k][i], sq);
                    acc[k][r][i & 1] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx[i], S), acc[k][r][i & 1]);
                }
            }
        }
    }
    for (int k = 0; k < nw; k++)
        for (int r = 0; r < nr; r++) ov[k][r] = hsum16(_mm512_add_ps(acc[k][r][0], acc[k][r][1]));
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

/* ---- 8-bit activations -------------------------------------------------------- */

/* dsv_q8_act_quant's bytes, 32 values per step: the max of |x| is exact in
 * any order, x * (127/amax) is one rounding as in the reference, and the
 * conversion rounds to nearest even as lrintf does; a NaN product gives 0
 * as the reference's (int)lrintf does on this architecture. */
void dsv_q8_act_quant_avx512(void *act, const void *x, int x_bf16, int K) {
    int8_t *q = act;
    float *d = (float *)((char *)act + K);
    int16_t *s = (int16_t *)(d + K / 32);
    const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
    for (int b = 0; b < K / 32; b++) {
        __m512 v[2];
        for (int h = 0; h < 2; h++) {
            if (x_bf16) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + 32 * b + 16 * h));
                v[h] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            } else v[h] = _mm512_loadu_ps((const float *)x + 32 * b + 16 * h);
        }
        /* max(|x|, acc) keeps acc where x is NaN, as fmaxf does */
        const __m512 m = _mm512_max_ps(_mm512_abs_ps(v[1]), _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps()));
        const float amax = _mm512_reduce_max_ps(m);
        d[b] = amax / 127.0f;
        const __m512 id = _mm512_set1_ps(amax ? 127.0f / amax : 0);
        for (int h = 0; h < 2; h++) {
            const __m512 p = _mm512_mul_ps(v[h], id);
            __m512i iv = _mm512_maskz_cvtps_epi32(_mm512_cmp_ps_mask(p, p, _CMP_ORD_Q), p);
            iv = _mm512_max_epi32(_mm512_min_epi32(iv, lim), nlim);
            _mm_storeu_si128((__m128i *)(q + 32 * b + 16 * h), _mm512_cvtepi32_epi8(iv));
            s[2 * b + h] = (int16_t)_mm512_reduce_add_epi32(iv);
        }
    }
}

#include "quant_mat.h"

void dsv_q_dot_mat_avx512(uint32_t type, const void *w, size_t wrow, int nw, const void *act, size_t stride, int n,
                          int K, float *out) {
    Q_DOT_MAT_SWITCH(ROWS_BY_8)
}

void dsv_q_dot_rows_avx512(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out) {
    dsv_q_dot_mat_avx512(type, w, 0, 1, act, stride, n, K, out);
}

float dsv_q_vec_dot_avx512(uint32_t type, const void *w, const void *act, int K) {
    float o;
    dsv_q_dot_rows_avx512(type, w, act, 0, 1, K, &o);
    return o;
}

/* ---- absorbed attention with float activations (quant.h, dsv_q_absorb) ---- */

/* The 32 levels of lv as floats, values 0-15 and 16-31. */
INLINE void levels_ps(__m256i lv, __m512 *f0, __m512 *f1) {
    *f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(lv)));
    *f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(lv, 1)));
}

/* Q8_0 (its 8-bit levels have no 32-entry bf16 table, absorb_bf below):
 * up to 4 weight rows at a time against the head's activations (made
 * fp32 once per head): per 16 values each row's weights are decoded to
 * their float values (absorb_scales) and added as acc += w * x (fused) in
 * 16 lanes, values in order; then the lanes as hsum16 adds them. The rows
 * of a pass only share the activation loads; each runs the same
 * operations alone. */
INLINE void absorb_t(const uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                     uint16_t *y, int h0, int h1) {
    const int bk = dsv_ggml_blck(t), ng = bk / 32;
    const size_t bs = dsv_ggml_bsize(t);
    _Alignas(64) float xf[DSV_Q_ABSORB_KMAX];
    for (int h = h0; h < h1; h++) {
        const uint16_t *xh = x + (size_t)h * ldx;
        for (int k = 0; k < K; k += 16)
            _mm512_store_ps(xf + k, _mm512_castsi512_ps(_mm512_slli_epi32(
                                        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(xh + k))), 16)));
        for (int r0 = 0; r0 < R; r0 += 4) {
            const int nr = R - r0 < 4 ? R - r0 : 4;
            const uint8_t *wr[4];
            __m512 acc[4];
            for (int i = 0; i < 4; i++) {
                wr[i] = (const uint8_t *)w + ((size_t)h * R + r0 + (i < nr ? i : 0)) * wrow;
                acc[i] = _mm512_setzero_ps();
            }
            for (int b = 0; b < K / bk; b++) {
                float sc[4][16], mn[4][16];
                int has_min = 0;
#pragma GCC unroll 4
                for (int i = 0; i < nr; i++) has_min = absorb_scales(t, wr[i] + (size_t)b * bs, sc[i], mn[i]);
                for (int g = 0; g < ng; g++) {
                    const __m512 x0 = _mm512_load_ps(xf + b * bk + 32 * g), x1 = _mm512_load_ps(xf + b * bk + 32 * g + 16);
#pragma GCC unroll 4
                    for (int i = 0; i < nr; i++) {
                        __m512 f0, f1;
                        levels_ps(absorb_levels(t, wr[i] + (size_t)b * bs, g), &f0, &f1);
                        const __m512 s0 = _mm512_set1_ps(sc[i][2 * g]), s1 = _mm512_set1_ps(sc[i][2 * g + 1]);
                        if (has_min) {
                            f0 = _mm512_fmadd_ps(f0, s0, _mm512_set1_ps(mn[i][2 * g]));
                            f1 = _mm512_fmadd_ps(f1, s1, _mm512_set1_ps(mn[i][2 * g + 1]));
                        } else {
                            f0 = _mm512_mul_ps(f0, s0);
                            f1 = _mm512_mul_ps(f1, s1);
                        }
                        acc[i] = _mm512_fmadd_ps(f1, x1, _mm512_fmadd_ps(f0, x0, acc[i]));
                    }
                }
            }
            for (int i = 0; i < nr; i++) y[(size_t)h * R + r0 + i] = dsv_f32_to_bf16(hsum16(acc[i]));
        }
    }
}

/* The 4-, 5- and 6-bit types with the activations' own bf16: per 32
 * values (a sub-block, or a Q6_K pair of 16s) the levels are looked up as
 * exact bf16 integers (vpermw on a byte's nibble, zero-extended to a word,
 * its 5th bit or-ed in from a mask; Q6_K's 6 bits from two tables), their
 * products with the 32 bf16 activations are exact in fp32 and vdpbf16ps
 * adds them in pairs into 16 lanes (it reads denormal activations, below
 * 2^-126, as 0); the lanes times the scale of their 16 values are added
 * into a 16-lane accumulator (fused), values in order, then hsum16; a
 * minimum's term, min * (sum of the 32 activations, taken once per head
 * in float as 16 lanes and hsum16), is added in a float in value order and
 * to the lanes' sum at the end. A level times an activation is the
 * reference's product d*q*x split as d*(q*x) + m*x: within 2*γ_p of the
 * exact sum of |d*q*x| + |m*x| (quant.h, dsv_q_absorb_mag). */

/* The bf16 values of levels 0..63 as this type stores them (minus its
 * offset: Q4_0 8, Q5_0 16, Q6_K 32; IQ4_NL's grid), 32 words a table. */
INLINE void bf_tables(uint32_t t, __m512i tab[2]) {
    static const int8_t iq4[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    const int off = t == DSV_GGML_Q4_0 ? 8 : t == DSV_GGML_Q5_0 ? 16 : t == DSV_GGML_Q6_K ? 32 : 0;
    _Alignas(64) uint16_t v[64];
    for (int u = 0; u < 64; u++)
        v[u] = dsv_f32_to_bf16((float)(t == DSV_GGML_IQ4_NL ? iq4[u & 15] : u - off));
    tab[0] = _mm512_load_si512(v);
    tab[1] = _mm512_load_si512(v + 32);
}

/* 32 levels (word indices) of a 32-value block: bytes j hold values j
 * (low nibble) and j + 16 (high). */
INLINE __m512i b32_idx(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    const __m512i z = _mm512_cvtepu8_epi16(_mm256_set_m128i(raw, raw));
    const __m512i sh = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(z, sh), _mm512_set1_epi16(15));
}

INLINE __m512 bf_dot(__m512i lv_bf16, const uint16_t *x) {
    return _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)lv_bf16, (__m512bh)_mm512_loadu_si512(x));
}

/* nr (1..4, a constant) rows from row r0 of head h; xs: the head's sums
 * of 32 activations. */
INLINE void absorb_bf_pass(const uint32_t t, const int nr, const uint8_t *w, size_t wrow, int R, int K,
                           const uint16_t *xh, const float *xs, const __m512i tab[2], uint16_t *y, int h, int r0) {
    const int kq = t == DSV_GGML_Q4_K || t == DSV_GGML_Q5_K;
    const int five = t == DSV_GGML_Q5_0 || t == DSV_GGML_Q5_1 || t == DSV_GGML_Q5_K;
    const int has_min = t == DSV_GGML_Q4_1 || t == DSV_GGML_Q5_1 || kq;
    const int bk = dsv_ggml_blck(t);
    const size_t bs = dsv_ggml_bsize(t);
    const int qs_off = t == DSV_GGML_Q4_1 ? 4 : t == DSV_GGML_Q5_0 ? 6 : t == DSV_GGML_Q5_1 ? 8 : 2;
    const __m512i m15 = _mm512_set1_epi16(15), b16 = _mm512_set1_epi16(16);
    __m512 acc[4];
    float accm[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        acc[i] = _mm512_setzero_ps();
        accm[i] = 0;
    }
    for (int b = 0; b < K / bk; b++) {
        const uint16_t *xb = xh + b * bk;
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            const uint8_t *p = w + ((size_t)h * R + r0 + i) * wrow + (size_t)b * bs;
            if (!kq && t != DSV_GGML_Q6_K) {
                __m512i idx = b32_idx(p + qs_off);
                if (five) idx = _mm512_mask_add_epi16(idx, (__mmask32)ld32(p + 2 + 2 * (t == DSV_GGML_Q5_1)), idx, b16);
                const __m512 pd = bf_dot(_mm512_permutexvar_epi16(idx, tab[0]), xb);
                acc[i] = _mm512_fmadd_ps(pd, _mm512_set1_ps(h2f_c(p)), acc[i]);
                if (has_min) accm[i] += h2f_c(p + 2) * xs[b];
                continue;
            }
            float sc[16], mn[16];
            absorb_scales(t, p, sc, mn);
            if (t == DSV_GGML_Q6_K) { /* group g = 4h + k: value 128h + 32k + l, as absorb_levels */
#pragma GCC unroll 8
                for (int g = 0; g < 8; g++) {
                    const int hh = g >> 2, k = g & 3;
                    const __m512i lo = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + 64 * hh + 32 * (k & 1))));
                    const __m512i hi = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + 128 + 32 * hh)));
                    const __m512i l4 = _mm512_and_si512(k < 2 ? lo : _mm512_srli_epi16(lo, 4), m15);
                    const __m512i h2 = _mm512_and_si512(_mm512_srli_epi16(hi, 2 * k), _mm512_set1_epi16(3));
                    const __m512i idx = _mm512_or_si512(l4, _mm512_slli_epi16(h2, 4));
                    const __m512 pd = bf_dot(_mm512_permutex2var_epi16(tab[0], idx, tab[1]), xb + 32 * g);
                    const __m512 s = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(sc[2 * g]), _mm512_set1_ps(sc[2 * g + 1]));
                    acc[i] = _mm512_fmadd_ps(pd, s, acc[i]);
                }
                continue;
            }
            const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) { /* qs[32c + l]: sub-block 2c (low nibble), 2c + 1 (high) */
                const __m512i z = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + (five ? 48 : 16) + 32 * c)));
#pragma GCC unroll 2
                for (int j = 0; j < 2; j++) {
                    const int sb = 2 * c + j;
                    __m512i idx = _mm512_and_si512(j ? _mm512_srli_epi16(z, 4) : z, m15);
                    if (five) idx = _mm512_mask_add_epi16(idx, _mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << sb))), idx, b16);
                    const __m512 pd = bf_dot(_mm512_permutexvar_epi16(idx, tab[0]), xb + 32 * sb);
                    acc[i] = _mm512_fmadd_ps(pd, _mm512_set1_ps(sc[2 * sb]), acc[i]);
                    accm[i] += mn[2 * sb] * xs[b * 8 + sb];
                }
            }
        }
    }
    for (int i = 0; i < nr; i++) y[(size_t)h * R + r0 + i] = dsv_f32_to_bf16(hsum16(acc[i]) + accm[i]);
}

INLINE void absorb_bf(const uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                      uint16_t *y, int h0, int h1) {
    __m512i tab[2];
    bf_tables(t, tab);
    float xs[DSV_Q_ABSORB_KMAX / 32];
    for (int h = h0; h < h1; h++) {
        const uint16_t *xh = x + (size_t)h * ldx;
        for (int g = 0; g < K / 32; g++) {
            __m512 v[2];
            for (int q = 0; q < 2; q++)
                v[q] = _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(xh + 32 * g + 16 * q))), 16));
            xs[g] = hsum16(_mm512_add_ps(v[0], v[1]));
        }
        int r0 = 0;
        for (; r0 + 4 <= R; r0 += 4) absorb_bf_pass(t, 4, w, wrow, R, K, xh, xs, tab, y, h, r0);
        switch (R - r0) {
        case 3: absorb_bf_pass(t, 3, w, wrow, R, K, xh, xs, tab, y, h, r0); break;
        case 2: absorb_bf_pass(t, 2, w, wrow, R, K, xh, xs, tab, y, h, r0); break;
        case 1: absorb_bf_pass(t, 1, w, wrow, R, K, xh, xs, tab, y, h, r0); break;
        }
    }
}

/* One body per type (the decoding's switches resolved at compile time). */
void dsv_q_absorb_avx512(uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                         uint16_t *y, int h0, int h1) {
    DSV_ASSERT(dsv_q_absorb_fast(t) && dsv_q_absorb_ok(t, K));
    switch (t) {
#define T(ty) case ty: absorb_t(ty, w, wrow, R, K, x, ldx, y, h0, h1); break
#define L(ty) case ty: absorb_bf(ty, w, wrow, R, K, x, ldx, y, h0, h1); break
    T(DSV_GGML_Q8_0);
    L(DSV_GGML_Q4_0); L(DSV_GGML_Q4_1); L(DSV_GGML_Q5_0); L(DSV_GGML_Q5_1); L(DSV_GGML_IQ4_NL);
    L(DSV_GGML_Q4_K); L(DSV_GGML_Q5_K); L(DSV_GGML_Q6_K);
#undef T
#undef L
    default: break;
    }
}
