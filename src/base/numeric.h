/* numeric.h: the number formats of DeepSeek-V3.2-Exp and the exact rounding
 * rules of its reference implementation.
 *
 * - bf16: the default dtype of the reference. Every tensor that the reference
 *   keeps in bf16 is rounded here with round-to-nearest-even at the same point.
 * - fp8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities,
 *   S.1111.111 is NaN, the largest finite value is 448, subnormals down to 2^-9.
 * - act_quant (kernel.py act_quant_kernel): 1x128 groups, amax floored at 1e-4,
 *   scale amax/448 (scale_fmt null) or the next power of two (ue8m0), values
 *   divided by the scale, clamped to +-448 and rounded to e4m3. */
#ifndef DSV_NUMERIC_H
#define DSV_NUMERIC_H

#include <stdint.h>
#include <string.h>

typedef uint16_t dsv_bf16;

enum { DSV_SCALE_NONE = 0, DSV_SCALE_UE8M0 = 1 };
#define DSV_QBLOCK 128 /* the reference's block_size: fp8 blocks are 128 wide */

static inline float dsv_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t dsv_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float dsv_bf16_to_f32(dsv_bf16 h) { return dsv_f32_from_bits((uint32_t)h << 16); }

/* Round to nearest even, as torch's float->bfloat16 cast does; NaN stays NaN. */
static inline dsv_bf16 dsv_f32_to_bf16(float f) {
    uint32_t u = dsv_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (dsv_bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (dsv_bf16)(u >> 16);
}

/* IEEE half -> float (exact). */
static inline float dsv_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 0x3ff;
    if (e == 31) return dsv_f32_from_bits(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        float v = (float)m * (1.0f / 16777216.0f); /* m * 2^-24 */
        return sign ? -v : v;
    }
    return dsv_f32_from_bits(sign | ((e + 112) << 23) | (m << 13));
}

/* The value a float takes after a round trip through bf16. */
static inline float dsv_round_bf16(float f) { return dsv_bf16_to_f32(dsv_f32_to_bf16(f)); }

/* e4m3fn decode table: all 256 codes (0x7f and 0xff are NaN). */
extern const float dsv_e4m3_table[256];
static inline float dsv_e4m3_to_f32(uint8_t c) { return dsv_e4m3_table[c]; }

/* Round a float to e4m3fn with round-to-nearest-even. Magnitudes beyond 448
 * saturate to 448 (callers clamp first, as act_quant does); NaN -> 0x7f. */
uint8_t dsv_f32_to_e4m3(float f);

/* The activation scale of one group whose largest magnitude is amax
 * (kernel.py: amax floored at 1e-4; then amax * (1/448), rounded up to a power
 * of two from the float's bits under ue8m0). */
static inline float dsv_act_scale(float amax, int scale_fmt) {
    if (amax < 1e-4f) amax = 1e-4f;
    float t = amax * (1.0f / 448.0f);
    if (scale_fmt == DSV_SCALE_NONE) return t;
    uint32_t b = dsv_f32_bits(t);
    int e = (int)((b >> 23) & 0xff) - 127 + ((b & 0x7fffffu) != 0);
    return dsv_f32_from_bits((uint32_t)(e + 127) << 23);
}

/* act_quant of n values (n a multiple of 128): q gets the e4m3 codes, s one
 * scale per 128-group. */
void dsv_act_quant(uint8_t *q, float *s, const float *x, int n, int scale_fmt);
/* The same from bf16 input. */
void dsv_act_quant_bf16(uint8_t *q, float *s, const dsv_bf16 *x, int n, int scale_fmt);

#endif
