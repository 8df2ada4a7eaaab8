/* ops_avx512.h: inline AVX-512 helpers shared by ops_avx512.c and ops_amx.c
 * (include it only from files compiled with the avx512 flags), and the
 * AVX-512 kernels the AMX set reuses.
 *
 * Every conversion here is exact and rounds like numeric.h: bf16 and e4m3
 * decode exactly to fp32, fp32 -> bf16 is round-to-nearest-even with NaN
 * kept quiet (dsv_f32_to_bf16), and e4m3 encoding is act_quant's. None of
 * them depends on MXCSR's DAZ/FTZ (never set by this library), and none uses
 * AVX512_BF16's conversions, which flush denormals. */
#ifndef DSV_OPS_AVX512_H
#define DSV_OPS_AVX512_H

#include <immintrin.h>

#include "ops.h"

/* 16 bf16 -> fp32 (exact). */
static inline __m512 bf16x16_load(const dsv_bf16 *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)p)), 16));
}
/* The first n (< 16) of 16 bf16, zeros after. */
static inline __m512 bf16x16_load_n(const dsv_bf16 *p, int n) {
    __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
/* 16 halves -> fp32 (exact; F16C's conversion handles subnormals). */
static inline __m512 f16x16_load(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const void *)p));
}

/* fp32 -> bf16 bits in the low 16 of each lane: round to nearest even, NaN
 * stays NaN with the quiet bit set (numeric.h dsv_f32_to_bf16). */
static inline __m512i f32x16_bf16_bits(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
    return _mm512_srli_epi32(r, 16);
}
static inline void bf16x16_store(dsv_bf16 *p, __m512 v) {
    _mm256_storeu_si256((void *)p, _mm512_cvtepi32_epi16(f32x16_bf16_bits(v)));
}
static inline void bf16x16_store_n(dsv_bf16 *p, __m512 v, int n) {
    _mm256_mask_storeu_epi16(p, (__mmask16)((1u << n) - 1), _mm512_cvtepi32_epi16(f32x16_bf16_bits(v)));
}
/* bf16(v) as fp32: the value after a round trip through bf16. */
static inline __m512 f32x16_round_bf16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(f32x16_bf16_bits(v), 16));
}

/* 16 e4m3 codes -> fp32 times 2^-8, exactly, with no floating-point
 * operation on a subnormal (those take a microcode assist of ~100 cycles
 * on Intel cores): s.eeee.mmm moved into an fp16's sign, low exponent and
 * top mantissa bits is the value times 2^-8 (e4m3 subnormals land on fp16
 * subnormals), and F16C's conversion to fp32 is exact and assist-free.
 * e4m3x16_load multiplies the 2^8 back; fp8_gemm folds it into its block
 * scale instead. NaN codes (0x7f, 0xff) read as +-480; the _nan variant
 * turns them into NaN, for data that may hold them (quantized activations). */
static inline __m512 e4m3x16_scaled(const uint8_t *p) {
    const __m256i t = _mm256_cvtepu8_epi16(_mm_loadu_si128((const void *)p));
    /* s at bit 15, eeee.mmm at bits 13..7 (bit 14, a copy of s, cleared) */
    const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(t, 8), 1), _mm256_set1_epi16((short)0xbfff));
    return _mm512_cvtph_ps(h);
}
static inline __m512 e4m3x16_load(const uint8_t *p) {
    return _mm512_mul_ps(e4m3x16_scaled(p), _mm512_set1_ps(256.0f));
}
static inline __m512 e4m3x16_load_nan(const uint8_t *p) {
    const __m128i c = _mm_loadu_si128((const void *)p);
    const __mmask16 nan = _mm_cmpeq_epi8_mask(_mm_and_si128(c, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
    return _mm512_mask_mov_ps(e4m3x16_load(p), nan, _mm512_set1_ps(__builtin_nanf("")));
}

/* fp32 -> e4m3 codes with round-to-nearest-even, for values already
 * clamped to [-448, 448] or NaN (numeric.h dsv_f32_to_e4m3): below 2^-6 the
 * grid is uniform (step 2^-9), so the code is the rounded v * 2^9; above,
 * rounding the fp32 bits to 3 mantissa bits and rebiasing the exponent
 * (127 -> 7) gives the code directly. NaN -> 0x7f. */
static inline __m512i f32x16_e4m3(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    __m512i nrm = _mm512_add_epi32(a, _mm512_add_epi32(_mm512_set1_epi32(0x7ffff),
                                                       _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1))));
    nrm = _mm512_sub_epi32(_mm512_srli_epi32(nrm, 20), _mm512_set1_epi32(120 << 3));
    const __m512 af = _mm512_castsi512_ps(a);
    const __m512i sub = _mm512_cvt_roundps_epi32(_mm512_mul_ps(af, _mm512_set1_ps(512.0f)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 small = _mm512_cmp_ps_mask(af, _mm512_set1_ps(0.015625f), _CMP_LT_OQ);
    __m512i code = _mm512_mask_mov_epi32(nrm, small, sub);
    code = _mm512_or_si512(code, _mm512_srli_epi32(_mm512_andnot_si512(_mm512_set1_epi32(0x7fffffff), u), 24));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(code, nan, _mm512_set1_epi32(0x7f));
}

/* act_quant of one 128-group of fp32 values x[8] (8 vectors): codes to q,
 * returns the scale (numeric.h dsv_act_quant: the same scale, x / scale,
 * clamp, round). Under ue8m0 the scale is a power of two and x * (1/scale)
 * equals x / scale exactly; otherwise this divides. */
static inline float act_quant_group(uint8_t *q, const __m512 x[8], int scale_fmt) {
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < 8; i++) amax = _mm512_max_ps(_mm512_abs_ps(x[i]), amax); /* NaN ignored, as fmaxf */
    const float sc = dsv_act_scale(_mm512_reduce_max_ps(amax), scale_fmt);
    const __m512 s = _mm512_set1_ps(sc), r = _mm512_set1_ps(1.0f / sc);
    for (int i = 0; i < 8; i++) {
        __m512 v = scale_fmt == DSV_SCALE_UE8M0 ? _mm512_mul_ps(x[i], r) : _mm512_div_ps(x[i], s);
        /* min/max return their second operand on NaN: NaN survives the clamp. */
        v = _mm512_max_ps(_mm512_set1_ps(-448.0f), _mm512_min_ps(_mm512_set1_ps(448.0f), v));
        _mm_storeu_si128((void *)(q + 16 * i), _mm512_cvtepi32_epi8(f32x16_e4m3(v)));
    }
    return sc;
}

/* exp(x) for the softmax, within 2 ulp of expf (Cephes' expf scheme):
 * x = k ln2 + r with |r| <= ln2/2 (ln2 split in two so the reduction is
 * exact), a degree-7 polynomial for e^r, then the exponent. Below -87.3
 * (where expf is subnormal or 0, and so is its bf16 softmax weight) the
 * result is 0; -inf gives 0 and NaN stays NaN. */
static inline __m512 exp_f32x16(__m512 x0) {
    /* max/min return their second operand on NaN, which keeps NaN. */
    const __m512 x = _mm512_min_ps(_mm512_set1_ps(88.37f), _mm512_max_ps(_mm512_set1_ps(-87.33f), x0));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __mmask16 tiny = _mm512_cmp_ps_mask(x0, _mm512_set1_ps(-87.33f), _CMP_LT_OQ);
    return _mm512_maskz_scalef_ps((__mmask16)~tiny, p, k);
}

/* The AVX-512 kernels (ops_avx512.c) that the AMX set shares. */
void dsv_avx512_act_quant(uint8_t *q, float *s, const dsv_bf16 *x, int n, int scale_fmt);
void dsv_avx512_dequant(dsv_bf16 *y, const uint8_t *q, const float *s, int n);
void dsv_avx512_linear_f32(float *y, int ldy, const float *x, const dsv_linear *w, int m, int n0, int n1,
                           void *scratch);
/* fp8_gemm with float weights (dsv_kernels.lin_pack_fp8x / linear_fp8x). */
void dsv_avx512_lin_pack_fp8x(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt);
void dsv_avx512_linear_fp8x(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                            void *scratch);
void dsv_avx512_index_q_pack(void *qp, const uint8_t *q8, int n_heads);
void dsv_avx512_index_score(float *out, int ldo, const void *qp, const float *w, int n_heads, int nq,
                            const uint8_t *k8, const float *ks, int n, void *scratch);
void dsv_avx512_mqa_scores(float *S, int lds, const dsv_bf16 *q_abs, const dsv_bf16 *q_pe, const dsv_bf16 *kv,
                           const dsv_bf16 *pe, int H, int C, int R, float scale, int j0, int j1, const dsv_prefetch *pf,
                           float *scratch);
void dsv_avx512_mqa_pv(dsv_bf16 *o_lat, const dsv_bf16 *P, int ldp, const dsv_bf16 *kv, const void *kvp, int n, int H,
                       int C, int c0, int c1, float *scratch);
void dsv_avx512_mha_attn(dsv_bf16 *o, const dsv_bf16 *q, int T, const int32_t *idx, int ldi, const int32_t *n_sel,
                         const dsv_bf16 *kvb, const dsv_bf16 *pe, int E, int H, int N, int R, int V, float scale, int h0,
                         int h1, float *scratch);
void dsv_avx512_absorb_q(dsv_bf16 *q_abs, const dsv_bf16 *q_nope, const dsv_linear *wkv_b, int row0, int N,
                         float *acc);
void dsv_avx512_absorb_o(dsv_bf16 *o, const dsv_bf16 *o_lat, const dsv_linear *wkv_b, int row0, int V);
void dsv_avx512_rmsnorm(dsv_bf16 *y, const dsv_bf16 *x, const float *w, int n, float eps);
void dsv_avx512_rmsnorm_residual(dsv_bf16 *y, dsv_bf16 *res, const dsv_bf16 *x, const float *w, int n, float eps);
void dsv_avx512_rope(dsv_bf16 *x, const float *cos, const float *sin, int n_half, int interleaved);
void dsv_avx512_hadamard128(dsv_bf16 *x);
void dsv_avx512_swiglu(dsv_bf16 *y, const dsv_bf16 *a, const dsv_bf16 *b, int n);
void dsv_avx512_axpy_bf16(float *y, const dsv_bf16 *x, float w, int n);
/* Softmax of n scores in place, bf16 out, as dsv_softmax_bf16 (within the
 * exp's rounding). */
void dsv_avx512_softmax_bf16(float *x, int n);

#endif
