/* numeric.c: the e4m3 codec and the act_quant rounding of the reference. */
#include "numeric.h"

#include <math.h>

/* All 256 codes, generated from the definition in numeric.h (code = s eeee mmm):
 * e == 0: m * 2^-9; otherwise (8 + m) * 2^(e - 10); 0x7f and 0xff are NaN. */
const float dsv_e4m3_table[256] = {
    0.0f, 0.001953125f, 0.00390625f, 0.005859375f, 0.0078125f, 0.009765625f, 0.01171875f, 0.013671875f,
    0.015625f, 0.017578125f, 0.01953125f, 0.021484375f, 0.0234375f, 0.025390625f, 0.02734375f, 0.029296875f,
    0.03125f, 0.03515625f, 0.0390625f, 0.04296875f, 0.046875f, 0.05078125f, 0.0546875f, 0.05859375f,
    0.0625f, 0.0703125f, 0.078125f, 0.0859375f, 0.09375f, 0.1015625f, 0.109375f, 0.1171875f,
    0.125f, 0.140625f, 0.15625f, 0.171875f, 0.1875f, 0.203125f, 0.21875f, 0.234375f,
    0.25f, 0.28125f, 0.3125f, 0.34375f, 0.375f, 0.40625f, 0.4375f, 0.46875f,
    0.5f, 0.5625f, 0.625f, 0.6875f, 0.75f, 0.8125f, 0.875f, 0.9375f,
    1.0f, 1.125f, 1.25f, 1.375f, 1.5f, 1.625f, 1.75f, 1.875f,
    2.0f, 2.25f, 2.5f, 2.75f, 3.0f, 3.25f, 3.5f, 3.75f,
    4.0f, 4.5f, 5.0f, 5.5f, 6.0f, 6.5f, 7.0f, 7.5f,
    8.0f, 9.0f, 10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f,
    16.0f, 18.0f, 20.0f, 22.0f, 24.0f, 26.0f, 28.0f, 30.0f,
    32.0f, 36.0f, 40.0f, 44.0f, 48.0f, 52.0f, 56.0f, 60.0f,
    64.0f, 72.0f, 80.0f, 88.0f, 96.0f, 104.0f, 112.0f, 120.0f,
    128.0f, 144.0f, 160.0f, 176.0f, 192.0f, 208.0f, 224.0f, 240.0f,
    256.0f, 288.0f, 320.0f, 352.0f, 384.0f, 416.0f, 448.0f, NAN,
    -0.0f, -0.001953125f, -0.00390625f, -0.005859375f, -0.0078125f, -0.009765625f, -0.01171875f, -0.013671875f,
    -0.015625f, -0.017578125f, -0.01953125f, -0.021484375f, -0.0234375f, -0.025390625f, -0.02734375f, -0.029296875f,
    -0.03125f, -0.03515625f, -0.0390625f, -0.04296875f, -0.046875f, -0.05078125f, -0.0546875f, -0.05859375f,
    -0.0625f, -0.0703125f, -0.078125f, -0.0859375f, -0.09375f, -0.1015625f, -0.109375f, -0.1171875f,
    -0.125f, -0.140625f, -0.15625f, -0.171875f, -0.1875f, -0.203125f, -0.21875f, -0.234375f,
    -0.25f, -0.28125f, -0.3125f, -0.34375f, -0.375f, -0.40625f, -0.4375f, -0.46875f,
    -0.5f, -0.5625f, -0.625f, -0.6875f, -0.75f, -0.8125f, -0.875f, -0.9375f,
    -1.0f, -1.125f, -1.25f, -1.375f, -1.5f, -1.625f, -1.75f, -1.875f,
    -2.0f, -2.25f, -2.5f, -2.75f, -3.0f, -3.25f, -3.5f, -3.75f,
    -4.0f, -4.5f, -5.0f, -5.5f, -6.0f, -6.5f, -7.0f, -7.5f,
    -8.0f, -9.0f, -10.0f, -11.0f, -12.0f, -13.0f, -14.0f, -15.0f,
    -16.0f, -18.0f, -20.0f, -22.0f, -24.0f, -26.0f, -28.0f, -30.0f,
    -32.0f, -36.0f, -40.0f, -44.0f, -48.0f, -52.0f, -56.0f, -60.0f,
    -64.0f, -72.0f, -80.0f, -88.0f, -96.0f, -104.0f, -112.0f, -120.0f,
    -128.0f, -144.0f, -160.0f, -176.0f, -192.0f, -208.0f, -224.0f, -240.0f,
    -256.0f, -288.0f, -320.0f, -352.0f, -384.0f, -416.0f, -448.0f, NAN,
};

uint8_t dsv_f32_to_e4m3(float f) {
    uint32_t u = dsv_f32_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    float a = fabsf(f);
    if (a != a) return 0x7f;
    if (a >= 448.0f) return sign | 0x7e;
    /* Below 2^-6 the e4m3 grid is uniform with step 2^-9: round a*2^9 to an
     * integer (nearest even) exactly; the code is then that integer (<= 8
     * lands on the first normal binade, whose encoding continues seamlessly). */
    if (a < 0.015625f) {
        float r = nearbyintf(a * 512.0f); /* exact scaling by a power of two */
        return sign | (uint8_t)r;
    }
    /* Normal range: keep 3 mantissa bits of the float with RNE on the bits. */
    int e = (int)((u >> 23) & 0xff) - 127;    /* -6 .. 8 */
    uint32_t mant = u & 0x7fffffu;
    uint32_t keep = mant >> 20, rest = mant & 0xfffffu;
    if (rest > 0x80000u || (rest == 0x80000u && (keep & 1))) keep++;
    if (keep == 8) { keep = 0; e++; }
    if (e > 8 || (e == 8 && keep == 7)) return sign | 0x7e; /* rounds past 448 */
    return sign | (uint8_t)(((e + 7) << 3) | keep);
}

void dsv_act_quant(uint8_t *q, float *s, const float *x, int n, int scale_fmt) {
    for (int g = 0; g < n / DSV_QBLOCK; g++) {
        const float *xg = x + g * DSV_QBLOCK;
        float amax = 0;
        for (int i = 0; i < DSV_QBLOCK; i++) amax = fmaxf(amax, fabsf(xg[i]));
        float sc = dsv_act_scale(amax, scale_fmt);
        s[g] = sc;
        for (int i = 0; i < DSV_QBLOCK; i++) {
            float v = xg[i] / sc; /* kernel.py divides by the scale */
            v = v > 448.0f ? 448.0f : v < -448.0f ? -448.0f : v;
            q[g * DSV_QBLOCK + i] = dsv_f32_to_e4m3(v);
        }
    }
}

void dsv_act_quant_bf16(uint8_t *q, float *s, const dsv_bf16 *x, int n, int scale_fmt) {
    float buf[DSV_QBLOCK];
    for (int g = 0; g < n / DSV_QBLOCK; g++) {
        for (int i = 0; i < DSV_QBLOCK; i++) buf[i] = dsv_bf16_to_f32(x[g * DSV_QBLOCK + i]);
        dsv_act_quant(q + g * DSV_QBLOCK, s + g, buf, DSV_QBLOCK, scale_fmt);
    }
}
