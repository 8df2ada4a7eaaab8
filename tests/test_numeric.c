/* test_numeric.c: bf16 and e4m3 rounding, the ue8m0 scale rule, act_quant. */
#include "base/numeric.h"
#include "test.h"

/* Independent e4m3 oracle: the nearest of all 126 finite non-negative codes,
 * ties to the even code (the one with an even mantissa, i.e. even code). */
static uint8_t e4m3_oracle(float f) {
    float a = fabsf(f);
    uint8_t sign = signbit(f) ? 0x80 : 0;
    if (a != a) return 0x7f;
    if (a >= 448) return sign | 0x7e;
    int best = 0;
    for (int c = 1; c < 0x7f; c++) {
        float d = fabsf(dsv_e4m3_to_f32((uint8_t)c) - a), db = fabsf(dsv_e4m3_to_f32((uint8_t)best) - a);
        if (d < db || (d == db && (c & 1) == 0)) best = c;
    }
    return sign | (uint8_t)best;
}

TEST(e4m3_decode_all_codes) {
    /* Hand values: the extremes of each range. */
    CHECK(dsv_e4m3_to_f32(0x00) == 0.0f);
    CHECK(dsv_e4m3_to_f32(0x01) == 0x1p-9f);            /* smallest subnormal */
    CHECK(dsv_e4m3_to_f32(0x07) == 7 * 0x1p-9f);        /* largest subnormal */
    CHECK(dsv_e4m3_to_f32(0x08) == 0x1p-6f);            /* smallest normal */
    CHECK(dsv_e4m3_to_f32(0x38) == 1.0f);
    CHECK(dsv_e4m3_to_f32(0x7e) == 448.0f);
    CHECK(dsv_e4m3_to_f32(0xfe) == -448.0f);
    CHECK(isnan(dsv_e4m3_to_f32(0x7f)) && isnan(dsv_e4m3_to_f32(0xff)));
    CHECK(signbit(dsv_e4m3_to_f32(0x80)));
    /* Every finite code encodes back to itself, values strictly increase. */
    for (int c = 0; c < 256; c++) {
        float v = dsv_e4m3_to_f32((uint8_t)c);
        if (isnan(v)) continue;
        CHECKF(dsv_f32_to_e4m3(v) == c || (v == 0 && (c & 0x7f) == 0), "code 0x%02x -> %g -> 0x%02x", c, v,
               dsv_f32_to_e4m3(v));
        if (c > 0 && c < 0x7e) CHECK(dsv_e4m3_to_f32((uint8_t)(c + 1)) > v);
    }
}

TEST(e4m3_round_half_even_and_saturation) {
    /* Every midpoint between adjacent codes rounds to the even code. */
    for (int c = 0; c < 0x7e; c++) {
        float lo = dsv_e4m3_to_f32((uint8_t)c), hi = dsv_e4m3_to_f32((uint8_t)(c + 1));
        float mid = (lo + hi) / 2; /* exact: both have few mantissa bits */
        uint8_t want = (c & 1) ? (uint8_t)(c + 1) : (uint8_t)c;
        CHECKF(dsv_f32_to_e4m3(mid) == want, "midpoint of 0x%02x and 0x%02x -> 0x%02x", c, c + 1,
               dsv_f32_to_e4m3(mid));
        CHECK(dsv_f32_to_e4m3(-mid) == (0x80 | want));
        CHECK(dsv_f32_to_e4m3(nextafterf(mid, 0)) == c);
        CHECK(dsv_f32_to_e4m3(nextafterf(mid, 1000)) == c + 1);
    }
    CHECK(dsv_f32_to_e4m3(448.0f) == 0x7e);
    CHECK(dsv_f32_to_e4m3(463.0f) == 0x7e);
    CHECK(dsv_f32_to_e4m3(1e30f) == 0x7e);
    CHECK(dsv_f32_to_e4m3(-1e30f) == 0xfe);
    CHECK(dsv_f32_to_e4m3(INFINITY) == 0x7e);
    CHECK(dsv_f32_to_e4m3(NAN) == 0x7f);
    CHECK(dsv_f32_to_e4m3(0x1p-11f) == 0x00); /* a quarter of the smallest subnormal */
    CHECK(dsv_f32_to_e4m3(0x1p-10f) == 0x00); /* half: ties to even (0) */
    CHECK(dsv_f32_to_e4m3(0x3p-11f) == 0x01);
    /* Random values against the exhaustive oracle. */
    uint32_t s = 12345;
    for (int i = 0; i < 20000; i++) {
        s = s * 1664525u + 1013904223u;
        float v = ldexpf((float)(s >> 8) / 16777216.0f, (int)(s % 24) - 14) * ((s & 1) ? -1 : 1);
        CHECKF(dsv_f32_to_e4m3(v) == e4m3_oracle(v), "%a -> 0x%02x, oracle 0x%02x", v, dsv_f32_to_e4m3(v),
               e4m3_oracle(v));
    }
}

TEST(bf16_rounding) {
    CHECK(dsv_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(dsv_f32_to_bf16(dsv_f32_from_bits(0x3f808000)) == 0x3f80); /* tie -> even */
    CHECK(dsv_f32_to_bf16(dsv_f32_from_bits(0x3f818000)) == 0x3f82); /* tie -> even (up) */
    CHECK(dsv_f32_to_bf16(dsv_f32_from_bits(0x3f808001)) == 0x3f81);
    CHECK(dsv_f32_to_bf16(dsv_f32_from_bits(0x7f7fffff)) == 0x7f80); /* rounds to inf */
    CHECK((dsv_f32_to_bf16(NAN) & 0x7fff) > 0x7f80);
    CHECK(dsv_f16_to_f32(0x3c00) == 1.0f && dsv_f16_to_f32(0x0001) == 0x1p-24f && dsv_f16_to_f32(0xfbff) == -65504.0f);
}

TEST(ue8m0_scale_rule) {
    /* s = 2^ceil(log2(amax/448)), from the float's bits; amax floored at 1e-4. */
    CHECK(dsv_act_scale(448.0f, DSV_SCALE_UE8M0) == 1.0f);
    CHECK(dsv_act_scale(449.0f, DSV_SCALE_UE8M0) == 2.0f);
    CHECK(dsv_act_scale(224.0f, DSV_SCALE_UE8M0) == 0.5f);
    CHECK(dsv_act_scale(225.0f, DSV_SCALE_UE8M0) == 1.0f);
    CHECK(dsv_act_scale(0.0f, DSV_SCALE_UE8M0) == dsv_act_scale(1e-4f, DSV_SCALE_UE8M0));
    CHECK(dsv_act_scale(0.0f, DSV_SCALE_UE8M0) == 0x1p-22f); /* 1e-4/448 = 2.2e-7 -> 2^-22 */
    for (int e = -13; e < 20; e++) { /* amax >= 1e-4: no floor */
        float amax = ldexpf(1.37f, e);
        float s = dsv_act_scale(amax, DSV_SCALE_UE8M0);
        float t = amax * (1.0f / 448.0f);
        CHECK(dsv_f32_bits(s) << 9 == 0); /* a power of two ... */
        CHECK(s >= t && s / 2 < t);       /* ... the smallest one >= amax/448 */
    }
    CHECK(dsv_act_scale(448.0f, DSV_SCALE_NONE) == 448.0f * (1.0f / 448.0f));
    CHECK(dsv_act_scale(3.0f, DSV_SCALE_NONE) == 3.0f * (1.0f / 448.0f));
}

TEST(act_quant_groups) {
    float x[256];
    uint8_t q[256];
    float s[2];
    for (int i = 0; i < 256; i++) x[i] = (i < 128 ? 0.01f : 3.0f) * sinf((float)i);
    x[5] = 0.02f;
    x[200] = -7.0f;
    for (int fmt = 0; fmt < 2; fmt++) {
        dsv_act_quant(q, s, x, 256, fmt);
        for (int g = 0; g < 2; g++) {
            float amax = 0;
            for (int i = 0; i < 128; i++) amax = fmaxf(amax, fabsf(x[g * 128 + i]));
            CHECK(s[g] == dsv_act_scale(amax, fmt));
            for (int i = 0; i < 128; i++) {
                float v = x[g * 128 + i] / s[g];
                CHECK(q[g * 128 + i] == dsv_f32_to_e4m3(fmaxf(-448, fminf(448, v))));
            }
        }
        /* The group maximum maps to <= 448 and, under ue8m0, above 224. */
        float top = fabsf(dsv_e4m3_to_f32(q[200]));
        CHECK(top <= 448 && (fmt == DSV_SCALE_NONE || top >= 224));
    }
}
