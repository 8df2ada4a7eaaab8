/* test_ops.c: the small reference ops pinned by hand: Hadamard, both RoPE
 * layouts, top-k, softmax, norms. */
#include "base/numeric.h"
#include "kernels/ops.h"
#include "test.h"

static void to_bf16(dsv_bf16 *y, const float *x, int n) { for (int i = 0; i < n; i++) y[i] = dsv_f32_to_bf16(x[i]); }

TEST(hadamard_orthonormal) {
    /* H/sqrt(128) is orthonormal and symmetric: its rows are the transforms of
     * unit vectors; they have unit norm and are mutually orthogonal. */
    static float rows[128][128];
    for (int i = 0; i < 128; i++) {
        dsv_bf16 v[128] = {0};
        v[i] = dsv_f32_to_bf16(1.0f);
        dsv_hadamard128(v);
        for (int j = 0; j < 128; j++) rows[i][j] = dsv_bf16_to_f32(v[j]);
    }
    for (int i = 0; i < 128; i++)
        for (int j = i; j < 128; j++) {
            double d = 0;
            for (int k = 0; k < 128; k++) d += (double)rows[i][k] * rows[j][k];
            /* entries are bf16(±0.0883883...), exact products; 0.2% bf16 error */
            CHECK_NEAR(d, i == j ? 1.0 : 0.0, 0.005);
            CHECK_NEAR(rows[i][j], rows[j][i], 0); /* symmetric */
        }
    /* Sylvester order: row 1 alternates signs, row 2 goes ++--. */
    CHECK(rows[1][0] > 0 && rows[1][1] < 0 && rows[1][2] > 0);
    CHECK(rows[2][0] > 0 && rows[2][1] > 0 && rows[2][2] < 0 && rows[2][3] < 0);
    /* Involution: applying it twice gives the input back (up to bf16). */
    float x[128];
    dsv_bf16 v[128];
    for (int i = 0; i < 128; i++) x[i] = sinf(0.3f * i) * 4;
    to_bf16(v, x, 128);
    dsv_hadamard128(v);
    dsv_hadamard128(v);
    for (int i = 0; i < 128; i++) CHECK_NEAR(dsv_bf16_to_f32(v[i]), x[i], 0.05);
}

TEST(rope_layouts_pinned) {
    /* Four values, two frequency pairs: cos/sin chosen exactly representable. */
    const float cs[2] = {0.5f, 0.0f}, sn[2] = {0.75f, 1.0f};
    const float x[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    dsv_bf16 v[4];
    /* Interleaved (MLA): pairs (x0,x1), (x2,x3).
     * (1 + 2i)(0.5 + 0.75i) = 0.5 - 1.5 + (0.75 + 1)i = -1 + 1.75i
     * (3 + 4i)(0 + 1i)      = -4 + 3i */
    to_bf16(v, x, 4);
    dsv_rope(v, cs, sn, 2, 1);
    CHECK(dsv_bf16_to_f32(v[0]) == -1.0f && dsv_bf16_to_f32(v[1]) == 1.75f);
    CHECK(dsv_bf16_to_f32(v[2]) == -4.0f && dsv_bf16_to_f32(v[3]) == 3.0f);
    /* Half-split (indexer): pairs (x0,x2), (x1,x3).
     * (1 + 3i)(0.5 + 0.75i) = 0.5 - 2.25 + (0.75 + 1.5)i = -1.75 + 2.25i
     * (2 + 4i)(0 + 1i)      = -4 + 2i */
    to_bf16(v, x, 4);
    dsv_rope(v, cs, sn, 2, 0);
    CHECK(dsv_bf16_to_f32(v[0]) == -1.75f && dsv_bf16_to_f32(v[2]) == 2.25f);
    CHECK(dsv_bf16_to_f32(v[1]) == -4.0f && dsv_bf16_to_f32(v[3]) == 2.0f);
}

static int in_set(const int32_t *v, int n, int x) { for (int i = 0; i < n; i++) if (v[i] == x) return 1; return 0; }

TEST(topk_sets_ties_and_order) {
    enum { N = 1000 };
    static float s[N];
    static int32_t idx[N], scratch[N];
    uint32_t r = 7;
    for (int i = 0; i < N; i++) { r = r * 1103515245u + 12345u; s[i] = (float)((r >> 16) % 200) - 100.0f; }
    for (int k = 1; k <= N; k += 37) {
        dsv_topk(idx, s, N, k, scratch);
        /* descending, ties toward the lower position, and the true top set */
        for (int j = 1; j < k; j++) CHECK(s[idx[j - 1]] > s[idx[j]] || (s[idx[j - 1]] == s[idx[j]] && idx[j - 1] < idx[j]));
        float kth = s[idx[k - 1]];
        for (int i = 0; i < N; i++) {
            int in = in_set(idx, k, i);
            if (s[i] > kth) CHECK(in);
            if (s[i] < kth) CHECK(!in);
            if (s[i] == kth && !in) CHECK(i > idx[k - 1]); /* ties: lower positions won */
        }
    }
    /* k == n: everything, in order. */
    dsv_topk(idx, s, N, N, scratch);
    for (int i = 0; i < N; i++) CHECK(in_set(idx, N, i));
    /* All equal: positions 0..k-1. */
    for (int i = 0; i < N; i++) s[i] = 1.0f;
    dsv_topk(idx, s, N, 10, scratch);
    for (int i = 0; i < 10; i++) CHECK_EQ_INT(idx[i], i);
    /* -inf and NaN never beat finite scores. */
    s[3] = -INFINITY;
    s[4] = NAN;
    dsv_topk(idx, s, N, N - 2, scratch);
    CHECK(!in_set(idx, N - 2, 3) && !in_set(idx, N - 2, 4));
}

TEST(softmax_bf16_output) {
    float x[5] = {1, 2, 3, -INFINITY, 0};
    dsv_softmax_bf16(x, 5);
    double sum = 0;
    for (int i = 0; i < 5; i++) { sum += x[i]; CHECK(x[i] == dsv_round_bf16(x[i])); }
    CHECK(x[3] == 0);
    CHECK_NEAR(sum, 1.0, 0.01);
    CHECK_NEAR(x[2], exp(3) / (exp(0) + exp(1) + exp(2) + exp(3)), 0.002);
}

TEST(norms) {
    float x[256], w[256], b[256];
    dsv_bf16 xb[256], y[256], res[256];
    for (int i = 0; i < 256; i++) { x[i] = sinf(i * 0.1f) * 3; w[i] = 1.0f + 0.01f * i; b[i] = 0.1f; }
    to_bf16(xb, x, 256);
    dsv_rmsnorm(y, xb, w, 256, 1e-6f);
    double ss = 0;
    for (int i = 0; i < 256; i++) ss += (double)dsv_bf16_to_f32(xb[i]) * dsv_bf16_to_f32(xb[i]);
    double r = 1 / sqrt(ss / 256 + 1e-6);
    for (int i = 0; i < 256; i++) {
        double want = w[i] * dsv_bf16_to_f32(xb[i]) * r;
        CHECK_NEAR(dsv_bf16_to_f32(y[i]), want, fabs(want) * 0x1p-8 + 1e-6); /* half a bf16 ulp, plus slack */
    }
    /* Residual form: the stored residual is the bf16 sum; the norm is of the fp32 sum. */
    for (int i = 0; i < 256; i++) res[i] = dsv_f32_to_bf16(0.5f);
    dsv_rmsnorm_residual(y, res, xb, w, 256, 1e-6f);
    for (int i = 0; i < 256; i++) CHECK(res[i] == dsv_f32_to_bf16(dsv_bf16_to_f32(xb[i]) + 0.5f));
    dsv_layernorm(y, xb, w, b, 256, 1e-6f);
    double mean = 0, var = 0;
    for (int i = 0; i < 256; i++) mean += dsv_bf16_to_f32(xb[i]);
    mean /= 256;
    for (int i = 0; i < 256; i++) var += pow(dsv_bf16_to_f32(xb[i]) - mean, 2);
    var /= 256;
    for (int i = 0; i < 256; i++) {
        double want = (dsv_bf16_to_f32(xb[i]) - mean) / sqrt(var + 1e-6) * w[i] + b[i];
        CHECK_NEAR(dsv_bf16_to_f32(y[i]), want, fabs(want) * 0x1p-8 + 1e-6);
    }
}
