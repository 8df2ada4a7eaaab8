/* test_kernels.c: every fast kernel set against the scalar reference
 * (ops_ref.c), on random inputs of awkward sizes: one runner entry per fast
 * level (avx2, avx512, amx), and a level this CPU lacks is a skip.
 *
 * Tolerances, as normalized mean squared error NMSE = Σ(a-r)² / Σr²:
 * - act_quant, dequant: exact (bit for bit): every set implements the same
 *   rounding, and the KV cache and top-k depend on it.
 * - absorb_q: exact on the avx2/avx512 sets (the same per-element multiply
 *   and add in the same order); tolerance 1e-5 otherwise.
 * - linear_fp8, linear_fp8x, linear_bf16, absorb_o: 1e-5. Products are exact in fp32 in
 *   every set; only the fp32 summation order differs (lane-wise partials,
 *   AMX's internal adder), which moves an fp32 sum by ~1e-7 relative, so a
 *   bf16 output moves by at most one ulp (2^-8 relative, 1.5e-5 squared)
 *   and only where the sum lies near a rounding midpoint.
 * - linear_f32, index_score: 1e-9 (fp32 outputs; summation order only).
 * - mqa_attn, mha_attn: 1e-4. Scores are rounded to bf16 three times and
 *   the softmax output once, so an fp32 difference in a dot product can move
 *   a weight by one bf16 ulp; the output is a weighted mean of bf16 rows.
 * - row ops (norms, RoPE, Hadamard, SwiGLU): see kernels_row_ops.
 * Besides closeness, each fast kernel must be batch invariant: the same
 * bits for a row computed alone or among others, and for any split of the
 * output columns (linear) or heads (attention) or queries (index). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"
#include "base/numeric.h"
#include "kernels/ops.h"
#include "test.h"
#include "base/util.h"

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rnd_unit(void) { return (float)((rnd_u32() & 0xffffff) / 8388608.0 - 1.0); } /* [-1, 1) */
static float rnd_normal(void) {
    float s = 0;
    for (int i = 0; i < 4; i++) s += rnd_unit();
    return s * 0.866f;
}
static void fill_bf16(dsv_bf16 *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = dsv_f32_to_bf16(rnd_normal() * scale);
}
/* Random finite e4m3 codes (no NaN), all magnitudes including subnormals. */
static void fill_e4m3(uint8_t *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c;
        do c = (uint8_t)rnd_u32(); while ((c & 0x7f) == 0x7f);
        x[i] = c;
    }
}

static double nmse_f32(const float *a, const float *r, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - r[i]; num += d * d; den += (double)r[i] * r[i]; }
    return den > 0 ? num / den : num;
}
static double nmse_bf16(const dsv_bf16 *a, const dsv_bf16 *r, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double x = dsv_bf16_to_f32(a[i]), y = dsv_bf16_to_f32(r[i]);
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0 ? num / den : num;
}

/* The fast set under test: the level of this runner entry
 * (TEST_FAST_LEVELS; one the CPU lacks was skipped before the test ran);
 * the generic set is the reference. */
static int fast_sets(const dsv_kernels **out) {
    for (int lv = 0; lv < DSV_KLEVEL_COUNT; lv++)
        if (!strcmp(dsv_kernels_level_name(lv), test_level())) {
            out[0] = dsv_kernels_at(lv);
            REQUIREF(out[0], "kernel level %s: no set", test_level());
            return 1;
        }
    REQUIREF(0, "unknown kernel level %s", test_level());
    return 0;
}

/* The worst NMSE seen per set in the current test, printed at its end. */
static double worst[3];
static const char *worst_names[3];
static double track(int s, const dsv_kernels *k, double e) {
    worst_names[s] = k->name;
    if (e > worst[s]) worst[s] = e;
    return e;
}
static void report(const char *op) {
    for (int s = 0; s < 3; s++)
        if (worst_names[s]) printf("    %-7s %-12s worst NMSE %.2e\n", worst_names[s], op, worst[s]);
}

/* 64-byte aligned memory (aligned_alloc wants a multiple of the alignment). */
static void *alloc64(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

static void *scratch_lin(void) {
    static void *p;
    if (!p) p = alloc64(DSV_LIN_SCRATCH);
    return p;
}

/* ---- act_quant, dequant ---------------------------------------------------- */

TEST_FAST_LEVELS(kernels_act_quant_and_dequant_exact) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    enum { N = 128 * 6 };
    static dsv_bf16 x[N], y0[N], y1[N];
    static uint8_t q0[N], q1[N];
    static float s0[N / 128], s1[N / 128];
    for (int trial = 0; trial < 40; trial++) {
        /* Groups at very different magnitudes, with specials sprinkled in. */
        for (int g = 0; g < N / 128; g++) {
            float mag = powf(2.0f, (float)((int)(rnd_u32() % 60) - 30));
            fill_bf16(x + g * 128, 128, mag);
        }
        if (trial % 4 == 1) { x[3] = 0x7fc0; x[200] = 0x7f80; x[300] = 0xff80; } /* NaN, +inf, -inf */
        if (trial % 4 == 2) { x[5] = 0x8000; x[130] = 0x0001; for (int i = 256; i < 384; i++) x[i] = 0; }
        for (int fmt = 0; fmt < 2; fmt++) {
            dsv_kernels_ref.act_quant(q0, s0, x, N, fmt);
            for (int k = 0; k < ns; k++) {
                memset(q1, 0xaa, sizeof q1);
                sets[k]->act_quant(q1, s1, x, N, fmt);
                CHECKF(!memcmp(q0, q1, N) && !memcmp(s0, s1, sizeof s0), "%s act_quant differs (trial %d fmt %d)",
                       sets[k]->name, trial, fmt);
            }
        }
        uint8_t q[N];
        fill_e4m3(q, N);
        if (trial % 3 == 0) { q[7] = 0x7f; q[500] = 0xff; } /* NaN codes dequantize to NaN */
        float sc[N / 128];
        for (int g = 0; g < N / 128; g++) sc[g] = powf(2.0f, (float)((int)(rnd_u32() % 40) - 20)) * (trial & 1 ? 1.3f : 1.0f);
        /* Scales whose products leave the normal fp32 range (the sets' fast
         * paths must step aside for them). */
        if (trial % 5 == 4) { sc[1] = 0x1p-125f; sc[2] = 0x1p-117f; sc[3] = 0x1p110f; }
        dsv_kernels_ref.dequant(y0, q, sc, N);
        for (int k = 0; k < ns; k++) {
            sets[k]->dequant(y1, q, sc, N);
            CHECKF(!memcmp(y0, y1, sizeof y0), "%s dequant differs (trial %d)", sets[k]->name, trial);
        }
    }
}

/* ---- linear layers ------------------------------------------------------- */

/* A random weight [N][K] of dtype dt (fp8 with scales). When N / 8 is odd it is the
 * first K columns of a [N][K + 128] matrix (ld > K), as a tensor-parallel
 * slice of a row-split layer is. */
typedef struct { dsv_linear w; void *data; float *scale; } test_weight;

static test_weight make_weight(dsv_dtype dt, int N, int K) {
    const int ld = K + ((N / 8) % 2 ? 128 : 0);
    test_weight t = {{.dtype = dt, .n_out = N, .n_in = K, .ld = ld}, NULL, NULL};
    size_t n = (size_t)N * ld;
    if (dt == DSV_DT_F8_E4M3) {
        t.data = malloc(n);
        fill_e4m3(t.data, n);
        t.w.scale_ld = (ld + 127) / 128;
        size_t ns = (size_t)((N + 127) / 128) * t.w.scale_ld;
        t.scale = malloc(ns * sizeof(float));
        for (size_t i = 0; i < ns; i++) t.scale[i] = (0.5f + (float)(rnd_u32() % 1000) / 1000.0f) / 256.0f;
        t.w.scale = t.scale;
    } else if (dt == DSV_DT_BF16) {
        t.data = malloc(n * 2);
        fill_bf16(t.data, n, 0.1f);
    } else if (dt == DSV_DT_F16) {
        uint16_t *h = malloc(n * 2);
        for (size_t i = 0; i < n; i++) {
            /* halves from small integers over a power of two: exact and normal */
            int v = (int)(rnd_u32() % 2001) - 1000;
            float f = (float)v / 8192.0f;
            uint32_t u = dsv_f32_bits(f);
            uint16_t s = (uint16_t)((u >> 16) & 0x8000);
            if (v == 0) { h[i] = s; continue; }
            int e = (int)((u >> 23) & 0xff) - 127 + 15;
            h[i] = (uint16_t)(s | (e << 10) | ((u >> 13) & 0x3ff));
        }
        t.data = h;
    } else {
        float *f = malloc(n * 4);
        for (size_t i = 0; i < n; i++) f[i] = rnd_normal() * 0.1f;
        t.data = f;
    }
    t.w.w = t.data;
    return t;
}
static void free_weight(test_weight *t) { free(t->data); free(t->scale); }

/* Runs a set's linear (packing as linear.c does) on rows [r0, r0+m) of x
 * into y [m][ldy], columns [n0, n1). */
static void run_linear(const dsv_kernels *k, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const test_weight *t, int m,
                       int n0, int n1, void *xp, int scale_fmt) {
    const int K = t->w.n_in, half = m / 32 * 16; /* packed in two pieces split at a multiple of 16, as linear.c does */
    if (t->w.act_fp8) {
        if (half) k->lin_pack_fp8x(xp, x, m, K, 0, half, scale_fmt);
        k->lin_pack_fp8x(xp, x, m, K, half, m, scale_fmt);
        k->linear_fp8x(y, ldy, xp, &t->w, m, n0, n1, scratch_lin());
    } else if (t->w.dtype == DSV_DT_F8_E4M3) {
        if (half) k->lin_pack_fp8(xp, x, m, K, 0, half, scale_fmt);
        k->lin_pack_fp8(xp, x, m, K, half, m, scale_fmt);
        k->linear_fp8(y, ldy, xp, &t->w, m, n0, n1, scratch_lin());
    } else if (k->lin_pack_bf16) {
        if (half) k->lin_pack_bf16(xp, x, m, K, 0, half);
        k->lin_pack_bf16(xp, x, m, K, half, m);
        k->linear_bf16(y, ldy, xp, &t->w, m, n0, n1, scratch_lin());
    } else {
        k->linear_bf16(y, ldy, x, &t->w, m, n0, n1, scratch_lin());
    }
}

/* act_fp8: float weights of an fp8-born linear (linear_fp8x). */
static void check_linear_act(const dsv_kernels **sets, int ns, dsv_dtype dt, int act_fp8, int M, int N, int K) {
    test_weight t = make_weight(dt, N, K);
    t.w.act_fp8 = act_fp8;
    dsv_bf16 *x = malloc((size_t)M * K * 2), *y0 = malloc((size_t)M * N * 2), *y1 = malloc((size_t)M * N * 2);
    dsv_bf16 *y2 = malloc((size_t)M * N * 2);
    void *xp = alloc64(dsv_lin_pack_bytes(M, K));
    fill_bf16(x, (size_t)M * K, 1.0f);
    for (int fmt = 0; fmt < (dt == DSV_DT_F8_E4M3 || act_fp8 ? 2 : 1); fmt++) {
        run_linear(&dsv_kernels_ref, y0, N, x, &t, M, 0, N, xp, fmt);
        for (int s = 0; s < ns; s++) {
            memset(y1, 0xff, (size_t)M * N * 2);
            run_linear(sets[s], y1, N, x, &t, M, 0, N, xp, fmt);
            double e = track(s, sets[s], nmse_bf16(y1, y0, (size_t)M * N));
            CHECKF(e <= 1e-5, "%s linear %s M=%d N=%d K=%d: NMSE %.3g", sets[s]->name, dsv_dtype_name(dt), M, N, K, e);
            /* Invariance: each row alone, and the columns split at 16. */
            for (int i = 0; i < M; i++) run_linear(sets[s], y2 + (size_t)i * N, N, x + (size_t)i * K, &t, 1, 0, N, xp, fmt);
            CHECKF(!memcmp(y1, y2, (size_t)M * N * 2), "%s linear %s M=%d N=%d K=%d: rows alone differ",
                   sets[s]->name, dsv_dtype_name(dt), M, N, K);
            if (N > 16) {
                run_linear(sets[s], y2, N, x, &t, M, 0, 16, xp, fmt);
                run_linear(sets[s], y2, N, x, &t, M, 16, N, xp, fmt);
                CHECKF(!memcmp(y1, y2, (size_t)M * N * 2), "%s linear %s M=%d N=%d K=%d: column split differs",
                       sets[s]->name, dsv_dtype_name(dt), M, N, K);
            }
        }
    }
    free(x); free(y0); free(y1); free(y2); free(xp);
    free_weight(&t);
}
static void check_linear(const dsv_kernels **sets, int ns, dsv_dtype dt, int M, int N, int K) {
    check_linear_act(sets, ns, dt, 0, M, N, K);
}

TEST_FAST_LEVELS(kernels_linear_fp8) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    /* 1-16 rows: the decoding kernel, whose tiles are m columns wide; above: the others. */
    static const int Ms[] = {1, 2, 3, 4, 16, 17, 40}, Ns[] = {16, 40, 130, 200}, Ks[] = {128, 384};
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < 2; c++) check_linear(sets, ns, DSV_DT_F8_E4M3, Ms[a], Ns[b], Ks[c]);
    check_linear(sets, ns, DSV_DT_F8_E4M3, 33, 48, 1024);
    report("linear_fp8");
}

/* linear_fp8x (fp8_gemm on float weights) against the reference, same
 * tolerance and invariances as linear_fp8. */
TEST_FAST_LEVELS(kernels_linear_fp8x) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    static const int Ms[] = {1, 2, 3, 4, 5, 17, 40}, Ns[] = {16, 40, 130}, Ks[] = {128, 384};
    static const dsv_dtype dts[] = {DSV_DT_BF16, DSV_DT_F16, DSV_DT_F32};
    for (int d = 0; d < 3; d++)
        for (int a = 0; a < 7; a++)
            for (int b = 0; b < 3; b++)
                for (int c = 0; c < 2; c++) check_linear_act(sets, ns, dts[d], 1, Ms[a], Ns[b], Ks[c]);
    report("linear_fp8x");
}

/* With weights that are e4m3 codes times power-of-two block scales (a ue8m0
 * checkpoint written as BF16 or F32), a set's linear_fp8x gives its own
 * linear_fp8's bits: the scale moves through every product and sum
 * exactly. This is why a BF16 GGUF of such a checkpoint reproduces the
 * safetensors model. Checked for BF16 weights in every set with its own
 * linear_fp8x, F32 in generic and avx2 (avx512 sums F32 weights with FMAs,
 * not its fp8 kernel's pair dot products). The amx set runs avx512's
 * linear_fp8x, so it is compared with avx512's linear_fp8. */
TEST_LEVELS(kernels_linear_fp8x_equals_fp8) {
    const dsv_kernels *k = NULL;
    for (int lv = 0; lv < DSV_KLEVEL_COUNT; lv++)
        if (!strcmp(dsv_kernels_level_name(lv), test_level())) k = dsv_kernels_at(lv);
    REQUIRE(k);
    const int amx = !strcmp(k->name, "amx"), wide_fma = amx || !strcmp(k->name, "avx512");
    const dsv_kernels *kf = amx ? dsv_kernels_at(DSV_KLEVEL_AVX512) : k;
    REQUIRE(kf);
    static const int Ms[] = {1, 2, 5, 17}, Ns[] = {16, 130}, Ks[] = {128, 384};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 2; c++) {
                const int M = Ms[a], N = Ns[b], K = Ks[c];
                test_weight f = make_weight(DSV_DT_F8_E4M3, N, K);
                const size_t ns = (size_t)((N + 127) / 128) * f.w.scale_ld, n = (size_t)N * f.w.ld;
                for (size_t i = 0; i < ns; i++) f.scale[i] = ldexpf(1.0f, -6 - (int)(rnd_u32() % 6));
                dsv_bf16 *wb = malloc(n * 2);
                float *wf = malloc(n * 4);
                for (size_t i = 0; i < n; i++) {
                    const size_t r = i / (size_t)f.w.ld, col = i % (size_t)f.w.ld;
                    wf[i] = dsv_e4m3_to_f32(((const uint8_t *)f.data)[i]) * f.scale[(r / 128) * f.w.scale_ld + col / 128];
                    wb[i] = dsv_f32_to_bf16(wf[i]);
                    REQUIRE(dsv_bf16_to_f32(wb[i]) == wf[i] || wf[i] != wf[i]);
                }
                test_weight tb = {f.w, NULL, NULL}, tf = {f.w, NULL, NULL};
                tb.w.dtype = DSV_DT_BF16, tb.w.w = wb, tb.w.scale = NULL, tb.w.act_fp8 = 1;
                tf.w.dtype = DSV_DT_F32, tf.w.w = wf, tf.w.scale = NULL, tf.w.act_fp8 = 1;
                dsv_bf16 *x = malloc((size_t)M * K * 2), *y0 = malloc((size_t)M * N * 2), *y1 = malloc((size_t)M * N * 2);
                void *xp = alloc64(dsv_lin_pack_bytes(M, K));
                fill_bf16(x, (size_t)M * K, 1.0f);
                run_linear(kf, y0, N, x, &f, M, 0, N, xp, DSV_SCALE_FMT_UE8M0);
                run_linear(k, y1, N, x, &tb, M, 0, N, xp, DSV_SCALE_FMT_UE8M0);
                CHECKF(!memcmp(y0, y1, (size_t)M * N * 2), "%s BF16 M=%d N=%d K=%d: linear_fp8x != linear_fp8", k->name, M, N, K);
                if (!wide_fma) {
                    run_linear(k, y1, N, x, &tf, M, 0, N, xp, DSV_SCALE_FMT_UE8M0);
                    CHECKF(!memcmp(y0, y1, (size_t)M * N * 2), "%s F32 M=%d N=%d K=%d: linear_fp8x != linear_fp8", k->name, M, N, K);
                }
                free(x); free(y0); free(y1); free(xp); free(wb); free(wf);
                free_weight(&f);
            }
}

TEST_FAST_LEVELS(kernels_linear_bf16) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    static const int Ms[] = {1, 2, 3, 17, 33}, Ns[] = {16, 40, 130}, Ks[] = {16, 100, 256, 576};
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 4; c++) check_linear(sets, ns, DSV_DT_BF16, Ms[a], Ns[b], Ks[c]);
    check_linear(sets, ns, DSV_DT_F16, 5, 40, 96);
    check_linear(sets, ns, DSV_DT_F32, 5, 40, 96);
    report("linear_bf16");
}

/* The prefill tiles (more than 4 input rows): every row count modulo the
 * tile heights (6 on avx512), odd output counts that leave edge tiles,
 * K tails (bf16: not a multiple of 32), and K long enough that the fp8
 * path widens fewer weight rows at a time than a 128-row scale block
 * holds (groups that end inside a block). avx2's fp8 tiles are 4 weight
 * rows x 3 input rows over panels of 48 weight rows, chunks of 8 blocks
 * of K and passes of 126 input rows: 150 outputs end on a 2-row tile,
 * K = 1280 ends on a short chunk, and 130 rows take two passes. */
TEST_FAST_LEVELS(kernels_linear_prefill_tiles) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    static const int Ms[] = {5, 6, 7, 11, 12, 13, 25}, Ns[] = {7, 33, 131};
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 3; b++) {
            check_linear(sets, ns, DSV_DT_BF16, Ms[a], Ns[b], 33);
            check_linear(sets, ns, DSV_DT_BF16, Ms[a], Ns[b], 608);
            check_linear(sets, ns, DSV_DT_F8_E4M3, Ms[a], Ns[b], 256);
        }
    check_linear(sets, ns, DSV_DT_BF16, 19, 45, 4000);
    check_linear(sets, ns, DSV_DT_F8_E4M3, 19, 150, 7168);
    check_linear(sets, ns, DSV_DT_F8_E4M3, 130, 50, 1280);
    /* A range that ends inside a 128-row block more than a scratch's worth
     * of rows (g = 27 at K = 7168) after the group's start: the group must
     * stop at g rows, not at the range's end. */
    check_linear(sets, ns, DSV_DT_F8_E4M3, 5, 100, 7168);
    check_linear(sets, ns, DSV_DT_F16, 13, 9, 70);
    check_linear(sets, ns, DSV_DT_F32, 13, 9, 70);
    report("linear prefill tiles");
}

TEST_FAST_LEVELS(kernels_linear_f32) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    static const int Ms[] = {1, 3, 17}, Ns[] = {8, 40, 130}, Ks[] = {16, 100, 256};
    static const dsv_dtype dts[] = {DSV_DT_BF16, DSV_DT_F16, DSV_DT_F32};
    for (int d = 0; d < 3; d++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                for (int c = 0; c < 3; c++) {
                    const int M = Ms[a], N = Ns[b], K = Ks[c];
                    test_weight t = make_weight(dts[d], N, K);
                    float *x = malloc((size_t)M * K * 4), *y0 = malloc((size_t)M * N * 4), *y1 = malloc((size_t)M * N * 4);
                    float *y2 = malloc((size_t)M * N * 4);
                    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = rnd_normal();
                    dsv_kernels_ref.linear_f32(y0, N, x, &t.w, M, 0, N, scratch_lin());
                    for (int s = 0; s < ns; s++) {
                        sets[s]->linear_f32(y1, N, x, &t.w, M, 0, N, scratch_lin());
                        double e = track(s, sets[s], nmse_f32(y1, y0, (size_t)M * N));
                        CHECKF(e <= 1e-9, "%s linear_f32 %s M=%d N=%d K=%d: NMSE %.3g", sets[s]->name,
                               dsv_dtype_name(dts[d]), M, N, K, e);
                        for (int i = 0; i < M; i++)
                            sets[s]->linear_f32(y2 + (size_t)i * N, N, x + (size_t)i * K, &t.w, 1, 0, N, scratch_lin());
                        CHECKF(!memcmp(y1, y2, (size_t)M * N * 4), "%s linear_f32 rows alone differ", sets[s]->name);
                    }
                    free(x); free(y0); free(y1); free(y2);
                    free_weight(&t);
                }
    report("linear_f32");
}

/* ---- indexer --------------------------------------------------------------- */

TEST_FAST_LEVELS(kernels_index_score) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    static const int Hs[] = {8, 64, 20}, Ns[] = {1, 5, 16, 64, 100}, NQ = 5;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 5; b++) {
            const int H = Hs[a], n = Ns[b];
            const size_t qb = dsv_index_q_bytes(H);
            uint8_t *q8 = malloc((size_t)NQ * H * 128), *k8 = malloc((size_t)n * 128);
            float *w = malloc((size_t)NQ * H * 4), *ks = malloc((size_t)n * 4);
            float *o0 = malloc((size_t)NQ * n * 4), *o1 = malloc((size_t)NQ * n * 4), *o2 = malloc((size_t)NQ * n * 4);
            char *qp = alloc64(NQ * qb);
            fill_e4m3(q8, (size_t)NQ * H * 128);
            fill_e4m3(k8, (size_t)n * 128);
            for (int i = 0; i < NQ * H; i++) w[i] = rnd_normal() * 0.01f;
            for (int i = 0; i < n; i++) ks[i] = powf(2.0f, (float)((int)(rnd_u32() % 8) - 4));
            for (int t = 0; t < NQ; t++) dsv_kernels_ref.index_q_pack(qp + t * qb, q8 + (size_t)t * H * 128, H);
            dsv_kernels_ref.index_score(o0, n, qp, w, H, NQ, k8, ks, n, scratch_lin());
            for (int s = 0; s < ns; s++) {
                for (int t = 0; t < NQ; t++) sets[s]->index_q_pack(qp + t * qb, q8 + (size_t)t * H * 128, H);
                sets[s]->index_score(o1, n, qp, w, H, NQ, k8, ks, n, scratch_lin());
                double e = track(s, sets[s], nmse_f32(o1, o0, (size_t)NQ * n));
                CHECKF(e <= 1e-9, "%s index_score H=%d n=%d: NMSE %.3g", sets[s]->name, H, n, e);
                /* Invariance: one query at a time, and keys split at 3. */
                for (int t = 0; t < NQ; t++) {
                    sets[s]->index_score(o2 + (size_t)t * n, n, qp + t * qb, w + (size_t)t * H, H, 1, k8, ks,
                                         n < 3 ? n : 3, scratch_lin());
                    if (n > 3)
                        sets[s]->index_score(o2 + (size_t)t * n + 3, n, qp + t * qb, w + (size_t)t * H, H, 1,
                                             k8 + 3 * 128, ks + 3, n - 3, scratch_lin());
                }
                CHECKF(!memcmp(o1, o2, (size_t)NQ * n * 4), "%s index_score H=%d n=%d: split differs", sets[s]->name,
                       H, n);
            }
            free(q8); free(k8); free(w); free(ks); free(o0); free(o1); free(o2); free(qp);
        }
    report("index_score");
    /* The AVX-512 query layout, element by element, over every code (NaN
     * too, which the scores above cannot see): pairs q[p][h][2] of the
     * bf16 rounding of the code's value, heads padded to 16 with zeros. */
    if (!strcmp(sets[0]->name, "avx512")) {
        for (int a = 0; a < 3; a++) {
            const int H = Hs[a], hp = (H + 15) & ~15;
            uint8_t *q8 = malloc((size_t)H * 128);
            uint16_t *qp = alloc64(dsv_index_q_bytes(H));
            REQUIRE(q8 && qp);
            for (int i = 0; i < H * 128; i++) q8[i] = (uint8_t)(i * 7 + a);
            memset(qp, 0xa5, dsv_index_q_bytes(H));
            sets[0]->index_q_pack(qp, q8, H);
            int bad = 0;
            for (int p = 0; p < 64; p++)
                for (int h = 0; h < hp; h++)
                    for (int e = 0; e < 2; e++) {
                        const uint16_t want = h < H ? dsv_f32_to_bf16(dsv_e4m3_to_f32(q8[h * 128 + 2 * p + e])) : 0;
                        bad += qp[((size_t)p * hp + h) * 2 + e] != want;
                    }
            CHECKF(!bad, "avx512 index_q_pack H=%d: %d elements differ from the scalar layout", H, bad);
            free(q8);
            free(qp);
        }
    }
}

TEST(kernels_topk_select_equals_topk) {
    enum { MAXN = 9000 };
    static float s[MAXN];
    static int32_t a[MAXN], b[MAXN], r[MAXN], scratch[2 * MAXN + 8192];
    /* 5000 and 9000: long rows, chosen among the keys a sample bounds */
    static const int ns[] = {1, 2, 7, 64, 1000, 3000, 5000, 9000};
    for (int trial = 0; trial < 30; trial++)
        for (int ni = 0; ni < 8; ni++) {
            const int n = ns[ni];
            if (n > 3000 && trial % 3) continue;
            /* Few distinct values (many ties), or fine ones; signs, zeros of both signs, -inf;
             * and rows whose sampled positions (every 8th) hold the large values, where the
             * sample's bound lets fewer than k through for large k. */
            for (int i = 0; i < n; i++) {
                if (trial % 3 == 0) s[i] = (float)((int)(rnd_u32() % 7) - 3);
                else s[i] = rnd_normal() * (trial % 3 == 1 ? 1e-3f : 1e3f);
                if (trial % 6 == 3) s[i] = i % 8 ? rnd_normal() : 10.0f + rnd_normal();
            }
            if (n > 4 && trial % 5 == 1) { s[0] = -0.0f; s[1] = 0.0f; s[2] = -INFINITY; s[3] = INFINITY; }
            if (n > 10 && trial % 7 == 2) s[n / 2] = NAN;
            for (int k = 1; k <= n; k += (n > 3000 ? 997 : n > 100 ? 97 : 1)) {
                dsv_topk(a, s, n, k, scratch);
                dsv_topk_select(b, r, s, n, k, scratch);
                /* ranked equals dsv_topk's order; b is the same set, ascending */
                CHECKF(!memcmp(a, r, (size_t)k * 4), "topk_select order differs (n=%d k=%d trial %d)", n, k, trial);
                for (int i = 1; i < k; i++) CHECK(b[i - 1] < b[i]);
                int in = 1;
                for (int i = 0; i < k && in; i++) {
                    in = 0;
                    for (int j = 0; j < k; j++) in |= a[j] == b[i];
                }
                CHECKF(in, "topk_select set differs (n=%d k=%d)", n, k);
            }
        }
}

/* ---- attention ------------------------------------------------------------- */

/* One token's MQA through a set's steps, as mla.c runs them, with the keys
 * and columns cut into `parts` ranges (each step on its own). With
 * `prefetch`, each range's scores are asked to prefetch the rows of the
 * next range (all of them, or at most 5: fewer rows than keys), as mla.c
 * asks for its next block's records. */
static void run_mqa(const dsv_kernels *k, dsv_bf16 *o, const dsv_bf16 *qa, const dsv_bf16 *qp, const dsv_bf16 *kv,
                    const dsv_bf16 *pe, int n, int H, int C, int R, int parts, int prefetch, float *S, dsv_bf16 *P,
                    void *kvp, float *scr) {
    const int np = dsv_mqa_keys_padded(n), blocks = (n + 31) / 32, tiles = (C + 15) / 16;
    const void **rows = malloc(sizeof *rows * (size_t)n);
    for (int i = 0; i < parts; i++) {
        const int j0 = DSV_MIN(blocks * i / parts * 32, n), j1 = DSV_MIN(blocks * (i + 1) / parts * 32, n);
        const int jn = DSV_MIN(blocks * (i + 2) / parts * 32, n);
        if (j0 >= j1) continue;
        int nr = 0;
        for (int j = j1; j < jn && (prefetch == 1 || nr < 5); j++) rows[nr++] = kv + (size_t)j * C;
        const dsv_prefetch pf = {rows, nr, C * 2};
        if (k->mqa_pack) k->mqa_pack(kvp, kv, n, C, j0, j1);
        k->mqa_scores(S, np, qa, qp, kv, pe, H, C, R, 0.135f, j0, j1, prefetch ? &pf : NULL, scr);
    }
    free(rows);
    for (int h = 0; h < H; h++) {
        k->softmax_bf16(S + (size_t)h * np, n);
        for (int j = 0; j < np; j++) P[(size_t)h * np + j] = j < n ? dsv_f32_to_bf16(S[(size_t)h * np + j]) : 0;
    }
    for (int i = 0; i < parts; i++) {
        const int c0 = tiles * i / parts * 16, c1 = DSV_MIN(tiles * (i + 1) / parts * 16, C);
        if (c0 < c1) k->mqa_pv(o, P, np, kv, kvp, n, H, C, c0, c1, scr);
    }
}

TEST_FAST_LEVELS(kernels_mqa_attn) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    static const struct { int H, C, R, n; } cs[] = {{16, 512, 64, 1}, {16, 512, 64, 77}, {6, 256, 32, 40},
                                                     {20, 128, 32, 300}, {4, 128, 32, 17}, {16, 512, 64, 2048}};
    for (int ci = 0; ci < 6; ci++) {
        const int H = cs[ci].H, C = cs[ci].C, R = cs[ci].R, n = cs[ci].n, np = dsv_mqa_keys_padded(n);
        dsv_bf16 *qa = malloc((size_t)H * C * 2), *qp = malloc((size_t)H * R * 2), *kv = malloc((size_t)n * C * 2);
        dsv_bf16 *pe = malloc((size_t)n * R * 2), *o0 = malloc((size_t)H * C * 2), *o1 = malloc((size_t)H * C * 2);
        dsv_bf16 *o2 = malloc((size_t)H * C * 2), *P = malloc(((size_t)H + 15) / 16 * 16 * np * 2);
        float *S = malloc((size_t)H * np * 4), *scr = alloc64(dsv_attn_scratch(n, C, R) * 4);
        void *kvp = alloc64(dsv_mqa_kvp_bytes(n, C));
        fill_bf16(qa, (size_t)H * C, 0.05f);
        fill_bf16(qp, (size_t)H * R, 0.3f);
        fill_bf16(kv, (size_t)n * C, 1.0f);
        fill_bf16(pe, (size_t)n * R, 1.0f);
        fill_bf16(P, ((size_t)H + 15) / 16 * 16 * np, 1.0f); /* rows past H: anything */
        run_mqa(&dsv_kernels_ref, o0, qa, qp, kv, pe, n, H, C, R, 1, 0, S, P, kvp, scr);
        for (int s = 0; s < ns; s++) {
            run_mqa(sets[s], o1, qa, qp, kv, pe, n, H, C, R, 1, 0, S, P, kvp, scr);
            double e = track(s, sets[s], nmse_bf16(o1, o0, (size_t)H * C));
            CHECKF(e <= 1e-4, "%s mqa_attn H=%d C=%d n=%d: NMSE %.3g", sets[s]->name, H, C, n, e);
            /* Invariance: keys and columns cut into 2 and 3 ranges, the
             * scores prefetching the next range's rows or not. */
            for (int parts = 2; parts <= 3; parts++)
                for (int prefetch = 0; prefetch <= 2; prefetch++) {
                    memset(o2, 0xff, (size_t)H * C * 2);
                    run_mqa(sets[s], o2, qa, qp, kv, pe, n, H, C, R, parts, prefetch, S, P, kvp, scr);
                    CHECKF(!memcmp(o1, o2, (size_t)H * C * 2), "%s mqa_attn: %d ranges (prefetch %d) differ",
                           sets[s]->name, parts, prefetch);
                }
        }
        free(qa); free(qp); free(kv); free(pe); free(o0); free(o1); free(o2); free(P); free(S); free(scr); free(kvp);
    }
    report("mqa_attn");
}

TEST_FAST_LEVELS(kernels_mha_attn) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    /* T queries of one sequence at positions E-T..E-1: causal (every
     * earlier position), or sparse (every third), as the indexer chooses. */
    static const struct { int H, N, R, V, E, T, sparse; } cs[] = {
        {16, 128, 64, 128, 300, 40, 0}, {6, 64, 32, 64, 50, 1, 0}, {4, 48, 32, 64, 90, 33, 1},
        {3, 128, 64, 128, 20, 20, 0},   {2, 64, 32, 64, 77, 19, 1}};
    for (int ci = 0; ci < 5; ci++) {
        const int H = cs[ci].H, N = cs[ci].N, R = cs[ci].R, V = cs[ci].V, E = cs[ci].E, T = cs[ci].T;
        dsv_bf16 *q = malloc((size_t)T * H * (N + R) * 2), *kvb = malloc((size_t)E * H * (N + V) * 2);
        dsv_bf16 *pe = malloc((size_t)E * R * 2), *o0 = malloc((size_t)T * H * V * 2), *o1 = malloc((size_t)T * H * V * 2);
        dsv_bf16 *o2 = malloc((size_t)T * H * V * 2);
        int32_t *idx = malloc((size_t)T * E * 4), *n_sel = malloc((size_t)T * 4);
        float *scr = alloc64(dsv_mha_scratch(E, N + R, V) * 4);
        fill_bf16(q, (size_t)T * H * (N + R), 0.1f);
        fill_bf16(kvb, (size_t)E * H * (N + V), 1.0f);
        fill_bf16(pe, (size_t)E * R, 1.0f);
        for (int t = 0; t < T; t++) {
            const int pos = E - T + t;
            n_sel[t] = 0;
            for (int j = 0; j <= pos; j++)
                if (!cs[ci].sparse || j % 3 == t % 3 || j == pos) idx[(size_t)t * E + n_sel[t]++] = j;
        }
        dsv_kernels_ref.mha_attn(o0, q, T, idx, E, n_sel, kvb, pe, E, H, N, R, V, 0.135f, 0, H, scr);
        for (int s = 0; s < ns; s++) {
            sets[s]->mha_attn(o1, q, T, idx, E, n_sel, kvb, pe, E, H, N, R, V, 0.135f, 0, H, scr);
            double e = track(s, sets[s], nmse_bf16(o1, o0, (size_t)T * H * V));
            CHECKF(e <= 1e-4, "%s mha_attn H=%d N=%d T=%d: NMSE %.3g", sets[s]->name, H, N, T, e);
            /* Invariance: each query alone, and heads one by one. */
            for (int t = 0; t < T; t++)
                sets[s]->mha_attn(o2 + (size_t)t * H * V, q + (size_t)t * H * (N + R), 1, idx + (size_t)t * E, E,
                                  n_sel + t, kvb, pe, E, H, N, R, V, 0.135f, 0, H, scr);
            CHECKF(!memcmp(o1, o2, (size_t)T * H * V * 2), "%s mha_attn: queries alone differ", sets[s]->name);
            for (int h = 0; h < H; h++)
                sets[s]->mha_attn(o2, q, T, idx, E, n_sel, kvb, pe, E, H, N, R, V, 0.135f, h, h + 1, scr);
            CHECKF(!memcmp(o1, o2, (size_t)T * H * V * 2), "%s mha_attn: heads alone differ", sets[s]->name);
        }
        free(q); free(kvb); free(pe); free(o0); free(o1); free(o2); free(idx); free(n_sel); free(scr);
    }
    report("mha_attn");
}

TEST_FAST_LEVELS(kernels_absorb) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    /* pow2: power-of-two block scales (ue8m0 checkpoints), which fast
     * kernels may use to skip weight_dequant's rounding (exact there). */
    static const struct { int H, N, V, C; dsv_dtype dt; int pow2; } cs[] = {
        {4, 128, 128, 512, DSV_DT_F8_E4M3, 0}, {3, 64, 64, 256, DSV_DT_F8_E4M3, 0}, {4, 48, 64, 128, DSV_DT_BF16, 0},
        {2, 128, 128, 512, DSV_DT_BF16, 0}, {2, 16, 16, 40, DSV_DT_F32, 0}, {3, 128, 128, 384, DSV_DT_F8_E4M3, 1}};
    for (int ci = 0; ci < 6; ci++) {
        const int H = cs[ci].H, N = cs[ci].N, V = cs[ci].V, C = cs[ci].C;
        test_weight t = make_weight(cs[ci].dt, H * (N + V), C);
        if (cs[ci].pow2)
            for (size_t i = 0; i < (size_t)((t.w.n_out + 127) / 128) * t.w.scale_ld; i++)
                t.scale[i] = ldexpf(1.0f, -6 - (int)(rnd_u32() % 6));
        dsv_bf16 *qn = malloc((size_t)N * 2), *ol = malloc((size_t)C * 2);
        dsv_bf16 *a0 = malloc((size_t)C * 2), *a1 = malloc((size_t)C * 2), *b0 = malloc((size_t)V * 2), *b1 = malloc((size_t)V * 2);
        float *acc = malloc((size_t)C * 4);
        fill_bf16(qn, (size_t)N, 1.0f);
        fill_bf16(ol, (size_t)C, 1.0f);
        for (int h = 0; h < H; h++) {
            dsv_kernels_ref.absorb_q(a0, qn, &t.w, h * (N + V), N, acc);
            dsv_kernels_ref.absorb_o(b0, ol, &t.w, h * (N + V) + N, V);
            for (int s = 0; s < ns; s++) {
                sets[s]->absorb_q(a1, qn, &t.w, h * (N + V), N, acc);
                sets[s]->absorb_o(b1, ol, &t.w, h * (N + V) + N, V);
                double e = track(s, sets[s], nmse_bf16(a1, a0, (size_t)C));
                if (strcmp(sets[s]->name, "amx")) CHECKF(!memcmp(a0, a1, (size_t)C * 2), "%s absorb_q not exact", sets[s]->name);
                CHECKF(e <= 1e-5, "%s absorb_q: NMSE %.3g", sets[s]->name, e);
                e = track(s, sets[s], nmse_bf16(b1, b0, (size_t)V));
                CHECKF(e <= 1e-5, "%s absorb_o C=%d: NMSE %.3g", sets[s]->name, C, e);
            }
        }
        free(qn); free(ol); free(a0); free(a1); free(b0); free(b1); free(acc);
        free_weight(&t);
    }
    report("absorb");
}

/* Row ops: RoPE and the Hadamard transform run the reference's operations
 * exactly (bit for bit); norms may differ only by the order of their
 * double sums of squares (NMSE 1e-10: at most a rare one-ulp flip);
 * SwiGLU's exp is within 2 ulp of expf (NMSE 1e-5, bf16 outputs); the
 * MoE's axpy is exact. */
TEST_FAST_LEVELS(kernels_row_ops) {
    const dsv_kernels *sets[3];
    int ns = fast_sets(sets);
    enum { N = 1000 };
    static dsv_bf16 x[N], r0[N], r1[N], y0[N], y1[N], b[N];
    static float w[N], cs[64], sn[64];
    for (int trial = 0; trial < 20; trial++) {
        fill_bf16(x, N, trial % 2 ? 3.0f : 0.01f);
        fill_bf16(b, N, 1.0f);
        for (int i = 0; i < N; i++) w[i] = 1.0f + 0.1f * rnd_normal();
        for (int i = 0; i < 64; i++) { float a = rnd_unit() * 3.14159f; cs[i] = cosf(a); sn[i] = sinf(a); }
        const int n = trial % 3 ? N : 2 * 7 * 16 + 5;
        for (int s = 0; s < ns; s++) {
            dsv_kernels_ref.rmsnorm(y0, x, w, n, 1e-6f);
            sets[s]->rmsnorm(y1, x, w, n, 1e-6f);
            CHECKF(nmse_bf16(y1, y0, (size_t)n) <= 1e-10, "%s rmsnorm", sets[s]->name);
            memcpy(r0, b, sizeof b);
            memcpy(r1, b, sizeof b);
            dsv_kernels_ref.rmsnorm_residual(y0, r0, x, w, n, 1e-6f);
            sets[s]->rmsnorm_residual(y1, r1, x, w, n, 1e-6f);
            CHECKF(nmse_bf16(y1, y0, (size_t)n) <= 1e-10 && !memcmp(r0, r1, (size_t)n * 2), "%s rmsnorm_residual",
                   sets[s]->name);
            for (int il = 0; il < 2; il++)
                for (int half = 16; half <= 64; half *= 2) {
                    memcpy(y0, x, sizeof x);
                    memcpy(y1, x, sizeof x);
                    dsv_kernels_ref.rope(y0, cs, sn, half / 2 + (half == 64 ? 0 : 8), il);
                    sets[s]->rope(y1, cs, sn, half / 2 + (half == 64 ? 0 : 8), il);
                    CHECKF(!memcmp(y0, y1, sizeof y0), "%s rope n_half %d interleaved %d", sets[s]->name, half, il);
                }
            memcpy(y0, x, 256);
            memcpy(y1, x, 256);
            dsv_kernels_ref.hadamard128(y0);
            sets[s]->hadamard128(y1);
            CHECKF(!memcmp(y0, y1, 256), "%s hadamard128", sets[s]->name);
            dsv_kernels_ref.swiglu(y0, x, b, n);
            sets[s]->swiglu(y1, x, b, n);
            CHECKF(nmse_bf16(y1, y0, (size_t)n) <= 1e-5, "%s swiglu", sets[s]->name);
            static float f0[N], f1[N];
            for (int i = 0; i < N; i++) f0[i] = f1[i] = rnd_normal();
            dsv_kernels_ref.axpy_bf16(f0, x, 0.37f, n);
            sets[s]->axpy_bf16(f1, x, 0.37f, n);
            CHECKF(!memcmp(f0, f1, (size_t)n * 4), "%s axpy_bf16", sets[s]->name);
        }
    }
}

TEST(kernels_levels_and_names) {
    /* The one list of names, both ways. */
    for (int lv = 0; lv < DSV_KLEVEL_COUNT; lv++) {
        CHECK_EQ_INT(dsv_kernels_level_parse(dsv_kernels_level_name(lv)), lv);
        if (dsv_kernels_at(lv)) CHECK_STR(dsv_kernels_at(lv)->name, dsv_kernels_level_name(lv));
        if (dsv_kernels_at(lv)) CHECK_EQ_INT(dsv_kernels_level_of(dsv_kernels_at(lv)), lv);
        CHECK_EQ_INT(dsv_kernels_at(lv) != NULL, lv <= dsv_kernels_top());
    }
    CHECK(dsv_kernels_level_name(DSV_KLEVEL_COUNT) == NULL);
    CHECK_EQ_INT(dsv_kernels_level_parse("sse9"), -1);
    CHECK_EQ_INT(dsv_kernels_level_parse(NULL), -1);
    CHECK(dsv_kernels_at(DSV_KLEVEL_GENERIC) == &dsv_kernels_ref);

    /* A named level wins over DSV32_ISA; "" falls back to it, then to the best. */
    char *saved = getenv("DSV32_ISA") ? strdup(getenv("DSV32_ISA")) : NULL;
    const dsv_kernels *k = NULL;
    unsetenv("DSV32_ISA");
    CHECK_EQ_INT(dsv_kernels_choose(&k, NULL), DSV_OK);
    CHECK(k == dsv_kernels_at(dsv_kernels_top()));
    CHECK_STR(dsv_kernels_name(), k->name);
    CHECK_EQ_INT(dsv_kernels_env_level(), -1);
    setenv("DSV32_ISA", "generic", 1);
    CHECK_EQ_INT(dsv_kernels_choose(&k, ""), DSV_OK);
    CHECK(k == &dsv_kernels_ref);
    CHECK_STR(dsv_kernels_name(), "generic");
    CHECK_EQ_INT(dsv_kernels_env_level(), DSV_KLEVEL_GENERIC);
    CHECK_EQ_INT(dsv_kernels_choose(&k, dsv_kernels_level_name(dsv_kernels_top())), DSV_OK);
    CHECK(k == dsv_kernels_at(dsv_kernels_top()));
    /* Unknown names are errors that say where the name came from, not crashes. */
    CHECK_EQ_INT(dsv_kernels_choose(&k, "sse9"), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "sse9") != NULL);
    CHECK_EQ_INT(dsv_kernels_supported("sse9"), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_kernels_supported("generic"), DSV_OK);
    setenv("DSV32_ISA", "bogus", 1);
    CHECK_EQ_INT(dsv_kernels_choose(&k, NULL), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "DSV32_ISA") != NULL);
    CHECK_STR(dsv_kernels_name(), "generic");
    CHECK_EQ_INT(dsv_kernels_env_level(), -1);
    if (dsv_kernels_top() < DSV_KLEVEL_AMX) {
        CHECK_EQ_INT(dsv_kernels_supported("amx"), DSV_ERR_UNSUPPORTED);
        CHECK_EQ_INT(dsv_kernels_choose(&k, "amx"), DSV_ERR_UNSUPPORTED);
    }
    if (saved) setenv("DSV32_ISA", saved, 1);
    else unsetenv("DSV32_ISA");
    free(saved);
}
