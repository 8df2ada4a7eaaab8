/* test_quant.c: the ggml weight types' scalar codecs (src/kernels/quant.c).
 *
 * Hand-made blocks whose values were worked out on paper from the layouts in
 * quant.h (which match llama.cpp's ggml-common.h): they pin every bit
 * position a decoder reads, so a decoder that swaps two nibbles or scales
 * fails here rather than producing a subtly wrong model. Then quantize ->
 * dequantize round trips on Gaussian data with a per-type NMSE bound
 * (measured, with about 30% margin), the dot product against a double-
 * precision sum, and the half-precision encoder on every code. */
#include "test.h"

#include "base/numeric.h"
#include "kernels/ops.h"
#include "kernels/quant.h"

static void put16(uint8_t *p, uint16_t h) { memcpy(p, &h, 2); }

static float dq_at(uint32_t type, const uint8_t *b, int i) {
    float y[256];
    dsv_q_dequant(type, b, y, dsv_ggml_blck(type));
    return y[i];
}

TEST(quant_hand_blocks_32) {
    uint8_t b[34];
    memset(b, 0, sizeof b); /* Q8_0: d = 0.5 */
    put16(b, 0x3800);
    b[2 + 0] = 5;
    b[2 + 31] = 0x80;
    CHECK(dq_at(DSV_GGML_Q8_0, b, 0) == 2.5f && dq_at(DSV_GGML_Q8_0, b, 31) == -64.0f);

    memset(b, 0, sizeof b); /* Q4_0: d = 2; byte 0 holds values 0 (low) and 16 (high) */
    put16(b, 0x4000);
    b[2] = 0x1F;
    CHECK(dq_at(DSV_GGML_Q4_0, b, 0) == 14.0f && dq_at(DSV_GGML_Q4_0, b, 16) == -14.0f);
    CHECK(dq_at(DSV_GGML_Q4_0, b, 1) == -16.0f);

    memset(b, 0, sizeof b); /* Q4_1: d = 0.5, m = -1 */
    put16(b, 0x3800);
    put16(b + 2, 0xBC00);
    b[4 + 1] = 0xA3;
    CHECK(dq_at(DSV_GGML_Q4_1, b, 1) == 0.5f && dq_at(DSV_GGML_Q4_1, b, 17) == 4.0f);

    memset(b, 0, sizeof b); /* Q5_0: d = 1, 5th bits of values 2 and 18 set */
    put16(b, 0x3C00);
    uint32_t qh = 1u << 2 | 1u << 18;
    memcpy(b + 2, &qh, 4);
    b[6 + 2] = 0x35;
    CHECK(dq_at(DSV_GGML_Q5_0, b, 2) == 5.0f && dq_at(DSV_GGML_Q5_0, b, 18) == 3.0f);
    CHECK(dq_at(DSV_GGML_Q5_0, b, 0) == -16.0f);

    memset(b, 0, sizeof b); /* Q5_1: d = 2, m = 1, 5th bit of value 31 */
    put16(b, 0x4000);
    put16(b + 2, 0x3C00);
    qh = 1u << 31;
    memcpy(b + 4, &qh, 4);
    b[8 + 15] = 0xF0;
    CHECK(dq_at(DSV_GGML_Q5_1, b, 15) == 1.0f && dq_at(DSV_GGML_Q5_1, b, 31) == 63.0f);

    memset(b, 0, sizeof b); /* IQ4_NL: d = 0.5; grid points 15 (113) and 8 (1) */
    put16(b, 0x3800);
    b[2] = 0x8F;
    CHECK(dq_at(DSV_GGML_IQ4_NL, b, 0) == 56.5f && dq_at(DSV_GGML_IQ4_NL, b, 16) == 0.5f);
    CHECK(dq_at(DSV_GGML_IQ4_NL, b, 1) == -63.5f);
}

TEST(quant_hand_blocks_k) {
    uint8_t b[210];
    /* Q2_K: d = 1, dmin = 0.5; sub-block 5 scale 3 min 2; value 81 = 2 */
    memset(b, 0, sizeof b);
    put16(b + 80, 0x3C00);
    put16(b + 82, 0x3800);
    b[5] = 0x23;
    b[16 + 17] = 0x20; /* value 81: half 0, pair 2, l 17 */
    b[9] = 0x11;
    b[16 + 32 + 17] = 3; /* value 145: half 1, pair 0, l 17 */
    CHECK(dq_at(DSV_GGML_Q2_K, b, 81) == 5.0f);
    CHECK(dq_at(DSV_GGML_Q2_K, b, 145) == 2.5f);
    CHECK(dq_at(DSV_GGML_Q2_K, b, 80) == -1.0f);

    /* Q3_K: d = 1; scale 10 = 5 (stored 37: low nibble in byte 2's high
     * nibble, top bits 2 at bits 4-5 of byte 10); value 165 = 7 - 4 */
    memset(b, 0, sizeof b);
    put16(b + 108, 0x3C00);
    b[96 + 2] = 0x50;
    b[96 + 10] = 0x20;
    b[32 + 32 + 5] = 0x0C; /* value 165: half 1, pair 1, l 5 */
    b[5] = 0x20;           /* its 3rd bit: hmask[5] bit 4*1 + 1 */
    CHECK(dq_at(DSV_GGML_Q3_K, b, 165) == 15.0f);
    CHECK(dq_at(DSV_GGML_Q3_K, b, 160) == -20.0f);
    CHECK(dq_at(DSV_GGML_Q3_K, b, 0) == 128.0f); /* scale 0 - 32, value 0 - 4 */

    /* Q4_K: d = dmin = 1; pair 0 (5, 2); pair 5 (23, 35) from byte 9 and
     * the top bits of bytes 1 and 5 */
    memset(b, 0, sizeof b);
    put16(b, 0x3C00);
    put16(b + 2, 0x3C00);
    b[4 + 0] = 0x05;
    b[4 + 4] = 0x02;
    b[4 + 9] = 0x37;
    b[4 + 1] = 0x40;
    b[4 + 5] = 0x80;
    b[16 + 3] = 0x04;
    b[16 + 64 + 10] = 0x90; /* value 170: chunk 2, high nibble, l 10 */
    CHECK(dq_at(DSV_GGML_Q4_K, b, 3) == 18.0f);
    CHECK(dq_at(DSV_GGML_Q4_K, b, 170) == 172.0f);
    CHECK(dq_at(DSV_GGML_Q4_K, b, 138) == 0.0f);
    CHECK(dq_at(DSV_GGML_Q4_K, b, 35) == 0.0f);

    /* Q5_K: d = 1, dmin = 0; pair 3 scale 10; value 100 = 7 + 16 */
    memset(b, 0, sizeof b);
    put16(b, 0x3C00);
    b[4 + 3] = 10;
    b[48 + 32 + 4] = 0x70;
    b[16 + 4] = 0x08; /* qh[4] bit 2*1 + 1 */
    CHECK(dq_at(DSV_GGML_Q5_K, b, 100) == 230.0f);
    CHECK(dq_at(DSV_GGML_Q5_K, b, 68) == 0.0f);

    /* Q6_K: d = 0.5; scales[13] = -3; value 210 = (11 | 2 << 4) - 32 */
    memset(b, 0, sizeof b);
    put16(b + 208, 0x3800);
    b[192 + 13] = 0xFD;
    b[64 + 18] = 0xB0;
    b[128 + 32 + 18] = 0x20;
    CHECK(dq_at(DSV_GGML_Q6_K, b, 210) == -16.5f);
    CHECK(dq_at(DSV_GGML_Q6_K, b, 146) == 0.0f); /* scale 0 */
}

/* Gaussian values from a fixed LCG (Box-Muller). */
static void gauss(float *x, int n, uint64_t seed) {
    for (int i = 0; i < n; i += 2) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        double u1 = ((seed >> 11) + 1.0) / 9007199254740993.0;
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        double u2 = (seed >> 11) / 9007199254740992.0;
        double r = sqrt(-2 * log(u1));
        x[i] = (float)(r * cos(6.283185307179586 * u2));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(6.283185307179586 * u2));
    }
}

TEST(quant_round_trip_nmse) {
    /* Bounds: the measured NMSE of this encoder on this data, +30%. */
    static const struct { uint32_t t; double bound; } cases[] = {
        {DSV_GGML_F32, 0},           {DSV_GGML_F16, 1e-7},        {DSV_GGML_BF16, 1e-5},
        {DSV_GGML_Q8_0, 7e-5},          {DSV_GGML_Q6_K, 7e-4},          {DSV_GGML_Q5_1, 2.1e-3},
        {DSV_GGML_Q5_0, 4.4e-3},          {DSV_GGML_Q5_K, 2.3e-3},          {DSV_GGML_Q4_1, 8.6e-3},
        {DSV_GGML_Q4_0, 1.7e-2},          {DSV_GGML_IQ4_NL, 1.2e-2},        {DSV_GGML_Q4_K, 9.1e-3},
        {DSV_GGML_Q3_K, 4e-2},          {DSV_GGML_Q2_K, 0.112},
    };
    enum { N = 8192 };
    static float x[N], y[N];
    static uint8_t q[N * 4];
    gauss(x, N, 7);
    for (int i = 0; i < N; i += 97) x[i] *= 6; /* outliers, as weights have */
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint32_t t = cases[c].t;
        dsv_q_quant(t, x, q, N);
        dsv_q_dequant(t, q, y, N);
        double e = 0, s = 0;
        for (int i = 0; i < N; i++) { e += (double)(y[i] - x[i]) * (y[i] - x[i]); s += (double)x[i] * x[i]; }
        fprintf(stderr, "    %-7s nmse %.3g\n", dsv_ggml_name(t), e / s);
        CHECKF(e / s <= cases[c].bound, "%s: nmse %.3g > %.3g", dsv_ggml_name(t), e / s, cases[c].bound);
    }
}

TEST(quant_dot_matches_dequant) {
    enum { N = 1024 };
    static float w[N], x[N], y[N];
    static uint8_t q[N * 4];
    gauss(w, N, 3);
    gauss(x, N, 4);
    const uint32_t types[] = {DSV_GGML_F32, DSV_GGML_F16, DSV_GGML_BF16, DSV_GGML_Q8_0, DSV_GGML_Q4_0,
                              DSV_GGML_Q4_1, DSV_GGML_Q5_0, DSV_GGML_Q5_1, DSV_GGML_IQ4_NL, DSV_GGML_Q2_K,
                              DSV_GGML_Q3_K, DSV_GGML_Q4_K, DSV_GGML_Q5_K, DSV_GGML_Q6_K};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        dsv_q_quant(types[k], w, q, N);
        dsv_q_dequant(types[k], q, y, N);
        double ref = 0, mag = 0;
        for (int i = 0; i < N; i++) { ref += (double)y[i] * x[i]; mag += fabs((double)y[i] * x[i]); }
        const float d = dsv_q_dot(types[k], q, x, N);
        CHECKF(fabs(d - ref) <= 1e-6 * mag, "%s: dot %.9g vs %.9g", dsv_ggml_name(types[k]), d, ref);
    }
    CHECK(!dsv_q_supported(DSV_GGML_IQ2_XXS) && !dsv_q_supported(DSV_GGML_Q8_K) && !dsv_q_supported(4));
}

TEST(quant_f16_encoder_every_code) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaN */
        if (dsv_f32_to_f16(dsv_f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    /* Ties go to even; past the largest half (65504) the midpoint rounds to inf. */
    CHECK_EQ_INT(dsv_f32_to_f16(1.0f + 1.0f / 2048), 0x3C00);
    CHECK_EQ_INT(dsv_f32_to_f16(1.0f + 3.0f / 2048), 0x3C02);
    CHECK_EQ_INT(dsv_f32_to_f16(65519.0f), 0x7BFF);
    CHECK_EQ_INT(dsv_f32_to_f16(65520.0f), 0x7C00);
    CHECK_EQ_INT(dsv_f32_to_f16(-1e-8f), 0x8000);
    CHECK_EQ_INT(dsv_f32_to_f16(3e-8f), 0x0001); /* 2^-24 = 5.96e-8: 3e-8 rounds up */
}

static const uint32_t BLOCK_TYPES[] = {DSV_GGML_Q8_0, DSV_GGML_Q4_0, DSV_GGML_Q4_1, DSV_GGML_Q5_0, DSV_GGML_Q5_1,
                                       DSV_GGML_IQ4_NL, DSV_GGML_Q2_K, DSV_GGML_Q3_K, DSV_GGML_Q4_K, DSV_GGML_Q5_K,
                                       DSV_GGML_Q6_K};
enum { NB = sizeof BLOCK_TYPES / sizeof BLOCK_TYPES[0] };

/* The 8-bit-activation dot (integers, then scales) against the float dot
 * of the same weights: they differ only by the activations' rounding,
 * at most half a step (amax/254) per value. */
TEST(quant_vec_dot_ref_vs_float) {
    enum { K = 1024 };
    static float w[K], x[K], y[K];
    static uint8_t q[K * 4], act[K * 2];
    gauss(w, K, 11);
    gauss(x, K, 12);
    dsv_q8_act_quant(act, x, K);
    /* The activations decode to within half a step of x. */
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)(act + K);
    const int16_t *as = (const int16_t *)(ad + K / 32);
    for (int i = 0; i < K; i++) CHECK(fabsf(aq[i] * ad[i / 32] - x[i]) <= 0.5001f * ad[i / 32]);
    for (int k = 0; k < K / 16; k++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += aq[16 * k + j];
        CHECK_EQ_INT(as[k], s);
    }
    for (int t = 0; t < NB; t++) {
        dsv_q_quant(BLOCK_TYPES[t], w, q, K);
        dsv_q_dequant(BLOCK_TYPES[t], q, y, K);
        double bound = 0;
        for (int i = 0; i < K; i++) bound += fabs(y[i]) * 0.5001 * ad[i / 32];
        const double f = dsv_q_dot(BLOCK_TYPES[t], q, x, K), r = dsv_q_vec_dot_ref(BLOCK_TYPES[t], q, act, K);
        CHECKF(fabs(f - r) <= bound + 1e-4, "%s: %.6g vs %.6g (bound %.3g)", dsv_ggml_name(BLOCK_TYPES[t]), r, f, bound);
    }
}

/* The kernel level of a TEST_LEVELS entry and its row kernel. */
static int level_now(void) { return dsv_kernels_level_parse(test_level()); }

/* γ_p of the error bound (quant.h, dsv_q_dot_mag): p roundings on each
 * term's path. Any variant and the reference take at most p = K/16 + 32:
 * the reference 5 for a 16-value term (scale, times the sum, the minimum's
 * product, the add, the activation scale), at most 16 sub-block sums in a
 * block and K/32 block sums in a row; the variants at most 3 to form a
 * sub-block's scale, one fused multiply-add per block in a lane (K/32 at
 * most), and 5 to add the lanes and the minimum accumulator. */
static double gamma_for(int K) {
    const double p = K / 16 + 32, u = 1.0 / 16777216.0;
    return p * u / (1 - p * u);
}

/* γ_p itself (p roundings on each term's path). */
static double gamma_for_p(int p) {
    const double u = 1.0 / 16777216.0;
    return p * u / (1 - p * u);
}

/* Whether the level's kernel adds the scaled sums in its own order (then
 * it matches the reference within the bound) or is the reference (then
 * bit for bit): every type streams on AVX2 and AVX-512. */
static int own_order(int level) { return level != DSV_KLEVEL_GENERIC; }

/* A level's row kernel against the reference on awkward data: outliers,
 * zero blocks, -128 weights in Q8_0 (written by hand: our encoder never
 * makes them), at K = 96, 128, 1120 (32-value types only: blocks left over
 * after groups of 4), 256, 1152 and 2048. */
TEST_LEVELS(quant_vec_dot_matches_ref) {
    const int level = level_now();
    const dsv_q_dot_rows_fn rows = dsv_q_dot_rows_for(level);
    enum { KMAX = 2048 };
    static float w[KMAX], x[KMAX];
    static uint8_t q[KMAX * 4], act[KMAX * 2];
    static const int Ks[] = {96, 128, 256, 1120, 1152, 2048};
    int exact = 0, bounded = 0;
    double worst = 0;
    for (int seed = 0; seed < 4; seed++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
            const int K = Ks[ki];
            gauss(w, K, 100 + seed);
            gauss(x, K, 200 + seed);
            for (int i = 0; i < K; i += 61) w[i] *= 20;
            for (int i = 64; i < 96; i++) x[i] = 0;
            if (seed == 3)
                for (int i = 0; i < K; i++) x[i] *= 1e-3f * (float)(1 + i % 7); /* scales far from 1 */
            dsv_q8_act_quant(act, x, K);
            for (int t = 0; t < NB; t++) {
                const uint32_t ty = BLOCK_TYPES[t];
                if (K % dsv_ggml_blck(ty)) continue;
                dsv_q_quant(ty, w, q, K);
                if (ty == DSV_GGML_Q8_0) q[2 + 5] = 0x80;
                const float r = dsv_q_vec_dot_ref(ty, q, act, K);
                float v;
                rows(ty, q, act, 0, 1, K, &v);
                if (own_order(level)) {
                    const double bound = 2 * gamma_for(K) * dsv_q_dot_mag(ty, q, act, K);
                    CHECKF(fabs((double)r - v) <= bound, "%s %s K=%d: %.9g vs reference %.9g (bound %.3g)",
                           test_level(), dsv_ggml_name(ty), K, v, r, bound);
                    if (bound > 0 && fabs((double)r - v) / bound > worst) worst = fabs((double)r - v) / bound;
                    bounded++;
                } else {
                    CHECKF(r == v, "%s %s K=%d: %.9g is not the reference's %.9g", test_level(), dsv_ggml_name(ty),
                           K, v, r);
                    exact++;
                }
            }
        }
    fprintf(stderr, "    %s: %d exact, %d within the bound (largest difference %.3g of it)\n", test_level(), exact,
            bounded, worst);
}

/* Batch invariance: m = 1..16 activation rows against one weight row give
 * each row's one-row result bit for bit. */
TEST_LEVELS(quant_dot_rows_match_one_row) {
    const dsv_q_dot_rows_fn rows = dsv_q_dot_rows_for(level_now());
    enum { K = 512, R = 16 };
    static float w[K], x[K];
    static uint8_t q[K * 4], act[R][K * 2];
    gauss(w, K, 31);
    for (int r = 0; r < R; r++) {
        gauss(x, K, 40 + r);
        dsv_q8_act_quant(act[r], x, K);
    }
    for (int t = 0; t < NB; t++) {
        dsv_q_quant(BLOCK_TYPES[t], w, q, K);
        float one[R];
        for (int r = 0; r < R; r++) rows(BLOCK_TYPES[t], q, act[r], 0, 1, K, &one[r]);
        for (int m = 2; m <= R; m++) {
            float out[R];
            rows(BLOCK_TYPES[t], q, act, sizeof act[0], m, K, out);
            for (int r = 0; r < m; r++)
                CHECKF(out[r] == one[r], "%s %s m=%d row %d: %.9g vs %.9g alone", test_level(),
                       dsv_ggml_name(BLOCK_TYPES[t]), m, r, out[r], one[r]);
        }
    }
}

/* A range of weight rows in one call (what the linear layer runs): 37 rows
 * (odd: no row pairing can divide them), K = 256 (one K-quant block), 512
 * and 1152 (32-value types also 96), 1..16 activation rows (odd counts and
 * those past a group of 4 or 8): each output equal, bit for bit, to the
 * one-row kernel's for its weight row. The reference checks the variants'
 * own orders elsewhere (quant_vec_dot_matches_ref). */
TEST_LEVELS(quant_dot_mat_matches_rows) {
    const int level = level_now();
    const dsv_q_dot_rows_fn rows = dsv_q_dot_rows_for(level);
    const dsv_q_dot_mat_fn mat = dsv_q_dot_mat_for(level);
    enum { N = 37, R = 16, KMAX = 1152 };
    static const int Ks[] = {96, 256, 512, 1152};
    static float wf[N * KMAX], x[KMAX];
    static uint8_t q[N * KMAX * 2], act[R][KMAX * 2];
    static float out[N * R];
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
        const int K = Ks[ki];
        gauss(wf, N * K, 500 + ki);
        for (int r = 0; r < R; r++) {
            gauss(x, K, 600 + 16 * ki + r);
            dsv_q8_act_quant(act[r], x, K);
        }
        for (int t = 0; t < NB; t++) {
            const uint32_t ty = BLOCK_TYPES[t];
            if (K % dsv_ggml_blck(ty)) continue;
            const size_t row = dsv_ggml_row_size(ty, K);
            dsv_q_quant(ty, wf, q, (int64_t)N * K);
            static const int ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16};
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                const int m = ms[mi];
                for (int i = 0; i < N * R; i++) out[i] = -1;
                mat(ty, q, row, N, act, sizeof act[0], m, K, out);
                for (int n = 0; n < N; n++) {
                    float one[R];
                    rows(ty, q + (size_t)n * row, act, sizeof act[0], m, K, one);
                    for (int r = 0; r < m; r++)
                        CHECKF(out[n * m + r] == one[r], "%s %s K=%d m=%d weight row %d, input row %d: %.9g vs %.9g",
                               test_level(), dsv_ggml_name(ty), K, m, n, r, out[n * m + r], one[r]);
                }
                CHECKF(m == R || out[N * m] == -1, "%s %s K=%d m=%d: wrote past its outputs", test_level(),
                       dsv_ggml_name(ty), K, m);
            }
        }
    }
}

/* The linear layer: an odd number of weight rows (37) and of input rows, a
 * column range that starts and ends mid-matrix, each output the row
 * kernel's dot of its weight row with its quantized input row, whatever m. */
TEST_LEVELS(quant_linear_rows_and_batches) {
    const int level = level_now();
    const dsv_q_dot_rows_fn rows = dsv_q_dot_rows_for(level);
    enum { K = 256, N = 37, M = 16 };
    static float wf[N * K], x[M * K], y[M * N], y1[N];
    static uint8_t q[N * K * 2], act[K * 2];
    static uint8_t scratch[DSV_LIN_SCRATCH];
    gauss(wf, N * K, 77);
    gauss(x, M * K, 78);
    for (int t = 0; t < NB; t++) {
        const uint32_t ty = BLOCK_TYPES[t];
        dsv_q_quant(ty, wf, q, (int64_t)N * K);
        const dsv_linear lin = {.dtype = DSV_DT_BF16, .n_out = N, .n_in = K, .ld = K, .w = q, .gtype = ty};
        const size_t row = dsv_ggml_row_size(ty, K);
        for (int m = 1; m <= M; m += 4) { /* 1, 5, 9, 13 */
            for (size_t i = 0; i < sizeof y / sizeof y[0]; i++) y[i] = -1;
            dsv_linear_q_f32(y, N, x, &lin, m, 3, N - 1, scratch, level);
            for (int i = 0; i < m; i++) {
                dsv_q8_act_quant(act, x + (size_t)i * K, K);
                dsv_linear_q_f32(y1, N, x + (size_t)i * K, &lin, 1, 3, N - 1, scratch, level);
                for (int n = 0; n < N; n++) {
                    if (n < 3 || n >= N - 1) {
                        CHECKF(y[(size_t)i * N + n] == -1, "%s column %d written", dsv_ggml_name(ty), n);
                        continue;
                    }
                    float v;
                    rows(ty, q + (size_t)n * row, act, 0, 1, K, &v);
                    CHECKF(y[(size_t)i * N + n] == v && y1[n] == v, "%s %s m=%d y[%d][%d] %.9g, alone %.9g, dot %.9g",
                           test_level(), dsv_ggml_name(ty), m, i, n, y[(size_t)i * N + n], y1[n], v);
                }
            }
            /* Quantized once (dsv_q_act_rows) and computed in chunks of
             * rows, as the thread pool cuts a layer: the same bits, and
             * nothing written outside the chunks. */
            static _Alignas(64) uint8_t qa[M * ((K * 2 + 63) / 64 * 64)];
            static float y2[M * N];
            REQUIRE((size_t)m * dsv_q_act_stride(K) <= sizeof qa);
            dsv_q_act_rows(qa, x, 0, K, m, level);
            for (size_t i = 0; i < sizeof y2 / sizeof y2[0]; i++) y2[i] = -1;
            for (int r0 = 3; r0 < N - 1; r0 += 5) dsv_linear_q_act(y2, NULL, N, qa, &lin, m, r0, r0 + 5 < N - 1 ? r0 + 5 : N - 1, level);
            CHECKF(!memcmp(y, y2, (size_t)m * N * sizeof(float)), "%s %s m=%d: pre-quantized chunks differ", test_level(),
                   dsv_ggml_name(ty), m);
        }
    }
}

/* The levels' activation quantizers write the reference's bytes, from fp32
 * and from bf16 rows: Gaussian values, a zero block, ties (a block whose
 * amax is 127, so x * 127/amax is x: halves round to even), huge and tiny
 * scales, and NaN and infinity (which the reference turns into 0 levels). */
TEST_LEVELS(quant_act_quant_matches_ref) {
    const dsv_q8_act_quant_fn aq = dsv_q8_act_quant_for(level_now());
    enum { K = 1024 };
    static float x[K];
    static uint16_t xb[K];
    static uint8_t ref[K * 2], got[K * 2];
    gauss(x, K, 90);
    for (int i = 32; i < 64; i++) x[i] = 0;
    for (int i = 64; i < 96; i++) x[i] = i == 64 ? 127.0f : (float)(i - 80) + 0.5f;
    for (int i = 96; i < 128; i++) x[i] *= 1e30f;
    for (int i = 128; i < 160; i++) x[i] *= 1e-30f;
    x[200] = NAN;
    x[300] = INFINITY;
    x[301] = -3;
    const size_t n = dsv_q8_act_bytes(K);
    for (int bf = 0; bf < 2; bf++) {
        const void *src = x;
        if (bf) {
            for (int i = 0; i < K; i++) xb[i] = dsv_f32_to_bf16(x[i]);
            for (int i = 0; i < K; i++) x[i] = dsv_bf16_to_f32(xb[i]);
            src = xb;
        }
        dsv_q8_act_quant(ref, x, K);
        memset(got, 0x55, sizeof got);
        aq(got, src, bf, K);
        int diff = -1;
        for (size_t i = 0; i < n && diff < 0; i++)
            if (ref[i] != got[i]) diff = (int)i;
        CHECKF(diff < 0, "%s %s: byte %d differs (%d vs reference %d)", test_level(), bf ? "bf16" : "fp32", diff,
               diff < 0 ? 0 : got[diff], diff < 0 ? 0 : ref[diff]);
    }
}

/* ---- absorbed attention on block-quantized weights (dsv_q_absorb) ---- */

/* A level's absorb against dsv_q_dot (the float dot product of quant.c,
 * written apart from dsv_q_absorb_ref) for every output of heads [1, 3) of
 * 4: R = 7 rows a head (a pass of 4 and one of 3), K = 64..512, x a bf16
 * row per head in a wider row (ldx > K) with outliers and a zero stretch,
 * the -128 code in Q8_0. Each output must be its own head's row times its
 * own head's x: within 2*γ_(K+2) * dsv_q_absorb_mag of dsv_q_dot (quant.h;
 * dsv_q_dot adds the dequantized terms in order, K deep, as the reference)
 * plus the two bf16 roundings (2^-8 relative each, the float sums' size);
 * a kernel that takes another head's rows or x is off by the size of the
 * outputs. Heads 0 and 3 stay unwritten. Also the reference bit for bit. */
TEST_LEVELS(quant_absorb_matches_dot) {
    enum { H = 4, R = 7, KMAX = 512, LDX = KMAX + 48 };
    static const int Ks[] = {64, 128, 256, 512};
    static const uint32_t types[] = {DSV_GGML_Q8_0, DSV_GGML_Q4_0, DSV_GGML_Q4_1, DSV_GGML_Q5_0, DSV_GGML_Q5_1,
                                     DSV_GGML_IQ4_NL, DSV_GGML_Q4_K, DSV_GGML_Q5_K, DSV_GGML_Q6_K, DSV_GGML_Q3_K,
                                     DSV_GGML_Q2_K};
    static float wf[H * R * KMAX], xf[KMAX], wrow[KMAX];
    static uint8_t q[H * R * KMAX * 2];
    static uint16_t x[H * LDX], y[H * R], yr[H * R];
    double worst = 0;
    int n = 0;
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
        const int K = Ks[ki];
        gauss(wf, H * R * K, 700 + ki);
        for (int i = 0; i < H * R * K; i += 53) wf[i] *= 12;
        for (int h = 0; h < H; h++) {
            gauss(xf, K, 800 + 8 * ki + h);
            for (int k = 0; k < K; k += 37) xf[k] *= 30;
            for (int k = 16; k < 32; k++) xf[k] = 0;
            for (int k = 0; k < LDX; k++) x[h * LDX + k] = dsv_f32_to_bf16(k < K ? xf[k] * (float)(1 + h) : 1e6f);
        }
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            const uint32_t ty = types[ti];
            if (K % dsv_ggml_blck(ty)) continue;
            REQUIRE(dsv_q_absorb_ok(ty, K));
            const size_t row = dsv_ggml_row_size(ty, K);
            dsv_q_quant(ty, wf, q, (int64_t)H * R * K);
            if (ty == DSV_GGML_Q8_0) q[row * 9 + 2 + 3] = 0x80;
            for (int i = 0; i < H * R; i++) y[i] = yr[i] = 0x7fc1;
            dsv_q_absorb_for(level_now(), ty)(ty, q, row, R, K, x, LDX, y, 1, 3);
            dsv_q_absorb_ref(ty, q, row, R, K, x, LDX, yr, 1, 3);
            for (int h = 0; h < H; h++)
                for (int r = 0; r < R; r++) {
                    const int o = h * R + r;
                    if (h == 0 || h == 3) {
                        CHECKF(y[o] == 0x7fc1, "%s %s: head %d written", test_level(), dsv_ggml_name(ty), h);
                        continue;
                    }
                    const uint8_t *wr = q + (size_t)o * row;
                    dsv_q_dequant(ty, wr, wrow, K);
                    double plain = 0;
                    for (int k = 0; k < K; k++) {
                        xf[k] = dsv_bf16_to_f32(x[h * LDX + k]);
                        plain += fabs((double)wrow[k] * xf[k]);
                    }
                    const double mag = dsv_q_absorb_mag(ty, wr, xf, K);
                    CHECK(mag >= plain * (1 - 1e-6));
                    const float d = dsv_q_dot(ty, wr, xf, K), v = dsv_bf16_to_f32(y[o]);
                    const double bound = 2 * gamma_for_p(K + 2) * mag + 0x1p-8 * (fabs(d) + fabs(v)) * 1.001;
                    CHECKF(fabs((double)v - d) <= bound, "%s %s K=%d head %d row %d: %.7g vs dot %.7g (bound %.3g)",
                           test_level(), dsv_ggml_name(ty), K, h, r, v, d, bound);
                    if (bound > 0 && fabs((double)v - d) / bound > worst) worst = fabs((double)v - d) / bound;
                    if (level_now() == DSV_KLEVEL_GENERIC)
                        CHECKF(y[o] == yr[o], "generic %s: not the reference", dsv_ggml_name(ty));
                    n++;
                }
        }
    }
    fprintf(stderr, "    %s: %d outputs within the bound (largest difference %.3g of it)\n", test_level(), n, worst);
}
