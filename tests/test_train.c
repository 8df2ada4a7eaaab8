/* test_train.c: the training model: the matrix product against its
 * reference, every backward op against finite differences, whole-model
 * gradients of each stage of the recipe, a short run whose loss falls,
 * checkpoint resume, and export to a directory the engine loads. */
#include "test.h"

#include "dsv32.h"
#include "train/train.h"

#include <sys/stat.h>

static uint64_t rng_state = 88172645463325252ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static void fill(float *x, long n, float s) {
    for (long i = 0; i < n; i++) x[i] = frand() * s;
}

/* ---- gemm ----------------------------------------------------------------- */

TEST(train_gemm_matches_reference) {
    const int shapes[][3] = {{1, 1, 1}, {7, 33, 5}, {13, 70, 300}, {130, 31, 17}, {64, 512, 96}, {5, 600, 260}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
        float *C0 = malloc(sizeof(float) * M * (N + 3)), *C1 = malloc(sizeof(float) * M * (N + 3));
        fill(A, (long)M * K, 1);
        fill(B, (long)K * N, 1);
        for (int form = 0; form < 4; form++) {
            /* A as [M][K] or [K][M]; B as [K][N] or [N][K]. */
            long asi = form & 1 ? 1 : K, ask = form & 1 ? M : 1, bsk = form & 2 ? 1 : N, bsj = form & 2 ? K : 1;
            fill(C0, (long)M * (N + 3), 1);
            memcpy(C1, C0, sizeof(float) * M * (N + 3));
            int acc = form & 1;
            dsv_tr_gemm_ref(C0, N + 3, A, asi, ask, B, bsk, bsj, M, N, K, acc);
            dsv_tr_gemm(C1, N + 3, A, asi, ask, B, bsk, bsj, M, N, K, acc);
            double err = 0, ref = 0;
            for (long i = 0; i < (long)M * (N + 3); i++) {
                err += (C0[i] - C1[i]) * (double)(C0[i] - C1[i]);
                ref += C0[i] * (double)C0[i];
            }
            CHECKF(err <= 1e-10 * ref, "gemm %dx%dx%d form %d: nmse %g", M, N, K, form, err / ref);
        }
        free(A); free(B); free(C0); free(C1);
    }
}

/* ---- single ops against finite differences -------------------------------- */

/* Loss L = Σ r ⊙ f(x) for a fixed random r; checks dL/dx (given by the
 * op's backward) along a random direction. */
typedef void (*op_fn)(float *y, const float *x, void *ctx);

static void fd_check(const char *name, op_fn f, void *ctx, const float *x0, int nx, int ny, const float *gx_analytic,
                     const float *r) {
    float *x = malloc(sizeof(float) * nx), *y = malloc(sizeof(float) * ny), *u = malloc(sizeof(float) * nx);
    fill(u, nx, 1);
    const double eps = 1e-3;
    double lp = 0, lm = 0, an = 0;
    for (int i = 0; i < nx; i++) x[i] = x0[i] + (float)eps * u[i];
    f(y, x, ctx);
    for (int i = 0; i < ny; i++) lp += (double)r[i] * y[i];
    for (int i = 0; i < nx; i++) x[i] = x0[i] - (float)eps * u[i];
    f(y, x, ctx);
    for (int i = 0; i < ny; i++) lm += (double)r[i] * y[i];
    for (int i = 0; i < nx; i++) an += (double)gx_analytic[i] * u[i];
    double num = (lp - lm) / (2 * eps);
    CHECKF(fabs(num - an) <= 2e-3 * (fabs(an) + 1e-1), "%s: numeric %.6g vs analytic %.6g", name, num, an);
    free(x); free(y); free(u);
}

enum { NV = 128 };
static float W[NV], B[NV];

static void op_rms(float *y, const float *x, void *c) { (void)c; dsv_tr_rmsnorm_fwd(y, x, W, NV, 1e-6f); }
static void op_rms_w(float *y, const float *w, void *c) { dsv_tr_rmsnorm_fwd(y, c, w, NV, 1e-6f); }
static void op_ln(float *y, const float *x, void *c) { (void)c; float m, r; dsv_tr_layernorm_fwd(y, &m, &r, x, W, B, NV, 1e-6f); }
static void op_ln_w(float *y, const float *w, void *c) { float m, r; dsv_tr_layernorm_fwd(y, &m, &r, c, w, B, NV, 1e-6f); }
static void op_ln_b(float *y, const float *b, void *c) { float m, r; dsv_tr_layernorm_fwd(y, &m, &r, c, W, b, NV, 1e-6f); }

TEST(train_norms_backward) {
    float x[NV], r[NV], y[NV], dx[NV], dw[NV], db[NV];
    fill(x, NV, 2);
    fill(r, NV, 1);
    for (int i = 0; i < NV; i++) { W[i] = 1 + frand() * 0.5f; B[i] = frand(); }
    memset(dx, 0, sizeof dx); memset(dw, 0, sizeof dw);
    float rs = dsv_tr_rmsnorm_fwd(y, x, W, NV, 1e-6f);
    dsv_tr_rmsnorm_bwd(dx, dw, r, x, W, rs, NV);
    fd_check("rmsnorm dx", op_rms, NULL, x, NV, NV, dx, r);
    fd_check("rmsnorm dw", op_rms_w, x, W, NV, NV, dw, r);
    memset(dx, 0, sizeof dx); memset(dw, 0, sizeof dw); memset(db, 0, sizeof db);
    float mu, rstd;
    dsv_tr_layernorm_fwd(y, &mu, &rstd, x, W, B, NV, 1e-6f);
    dsv_tr_layernorm_bwd(dx, dw, db, r, x, W, mu, rstd, NV);
    fd_check("layernorm dx", op_ln, NULL, x, NV, NV, dx, r);
    fd_check("layernorm dw", op_ln_w, x, W, NV, NV, dw, r);
    fd_check("layernorm db", op_ln_b, x, B, NV, NV, db, r);
}

static float COS[32], SIN[32];
static void op_rope_i(float *y, const float *x, void *c) { (void)c; memcpy(y, x, 64 * 4); dsv_tr_rope(y, COS, SIN, 32, 1, 0); }
static void op_rope_h(float *y, const float *x, void *c) { (void)c; memcpy(y, x, 64 * 4); dsv_tr_rope(y, COS, SIN, 32, 0, 0); }
static void op_had(float *y, const float *x, void *c) { (void)c; memcpy(y, x, NV * 4); dsv_tr_hadamard(y, NV); }

TEST(train_rope_hadamard_backward) {
    float x[NV], r[NV], g[NV];
    for (int i = 0; i < 32; i++) { float a = frand() * 3; COS[i] = cosf(a); SIN[i] = sinf(a); }
    fill(x, NV, 1);
    fill(r, NV, 1);
    for (int il = 0; il < 2; il++) {
        memcpy(g, r, sizeof g);
        dsv_tr_rope(g, COS, SIN, 32, il, 1);
        fd_check(il ? "rope interleaved" : "rope half-split", il ? op_rope_i : op_rope_h, NULL, x, 64, 64, g, r);
    }
    /* Pairs: interleaved rotates (0,1); half-split rotates (0,32). */
    float v[64] = {0};
    v[0] = 1;
    dsv_tr_rope(v, COS, SIN, 32, 1, 0);
    CHECK_NEAR(v[1], SIN[0], 1e-6);
    memset(v, 0, sizeof v);
    v[0] = 1;
    dsv_tr_rope(v, COS, SIN, 32, 0, 0);
    CHECK_NEAR(v[32], SIN[0], 1e-6);
    memcpy(g, r, sizeof g);
    dsv_tr_hadamard(g, NV);
    fd_check("hadamard", op_had, NULL, x, NV, NV, g, r);
}

static void op_swiglu_a(float *y, const float *a, void *c) { dsv_tr_swiglu_fwd(y, a, c, NV); }
static void op_swiglu_b(float *y, const float *b, void *c) { dsv_tr_swiglu_fwd(y, c, b, NV); }

TEST(train_swiglu_xent_kl_backward) {
    float a[NV], b[NV], r[NV], da[NV] = {0}, db[NV] = {0};
    fill(a, NV, 3);
    fill(b, NV, 2);
    fill(r, NV, 1);
    dsv_tr_swiglu_bwd(da, db, r, a, b, NV);
    fd_check("swiglu da", op_swiglu_a, b, a, NV, NV, da, r);
    fd_check("swiglu db", op_swiglu_b, a, b, NV, NV, db, r);

    /* Cross entropy and the indexer KL: gradients of the scalar loss. */
    float lg[NV], dl[NV], p[NV], dI[NV], u[NV];
    uint8_t allow[NV];
    fill(lg, NV, 3);
    fill(u, NV, 1);
    dsv_tr_xent(dl, lg, NV, 17, 1.0f);
    double an = 0, eps = 1e-3;
    for (int i = 0; i < NV; i++) an += dl[i] * u[i];
    float x1[NV], x2[NV];
    for (int i = 0; i < NV; i++) { x1[i] = lg[i] + (float)eps * u[i]; x2[i] = lg[i] - (float)eps * u[i]; }
    double num = (dsv_tr_xent(NULL, x1, NV, 17, 1) - dsv_tr_xent(NULL, x2, NV, 17, 1)) / (2 * eps);
    CHECK_NEAR(num, an, 2e-3 * (fabs(an) + 0.1));
    double ps = 0;
    for (int i = 0; i < NV; i++) {
        allow[i] = (i % 3) != 1;
        p[i] = allow[i] ? fabsf(frand()) : 0;
        ps += p[i];
    }
    for (int i = 0; i < NV; i++) p[i] /= (float)ps;
    float kl = dsv_tr_kl(dI, lg, p, allow, NV, 1.0f);
    CHECK(kl >= 0);
    an = 0;
    for (int i = 0; i < NV; i++) an += dI[i] * u[i];
    num = (dsv_tr_kl(NULL, x1, p, allow, NV, 1) - dsv_tr_kl(NULL, x2, p, allow, NV, 1)) / (2 * eps);
    CHECK_NEAR(num, an, 2e-3 * (fabs(an) + 0.1));
    for (int i = 0; i < NV; i++)
        if (!allow[i]) CHECK(dI[i] == 0);
}

/* Attention of one head: T=37 (awkward for the row blocks), dk=12, dv=8. */
enum { AT = 150, ADK = 12, ADV = 8 };
static float AQ[AT * ADK], AK[AT * ADK], AV[AT * ADV];
static uint8_t AMASK[AT * AT];
static int which_in;
static void op_attn(float *y, const float *x, void *c) {
    (void)c;
    static float P[AT * AT];
    const float *q = which_in == 0 ? x : AQ, *k = which_in == 1 ? x : AK, *v = which_in == 2 ? x : AV;
    dsv_tr_attn_fwd(y, ADV, P, q, ADK, k, ADK, v, ADV, AT, ADK, ADV, 0.3f, AMASK);
}

TEST(train_attention_backward) {
    static float O[AT * ADV], P[AT * AT], r[AT * ADV], dq[AT * ADK], dk[AT * ADK], dv[AT * ADV], scratch[AT * AT];
    fill(AQ, AT * ADK, 1);
    fill(AK, AT * ADK, 1);
    fill(AV, AT * ADV, 1);
    fill(r, AT * ADV, 1);
    for (int i = 0; i < AT * AT; i++) AMASK[i] = (i % 5) != 2 || (i / AT) == (i % AT);
    dsv_tr_attn_fwd(O, ADV, P, AQ, ADK, AK, ADK, AV, ADV, AT, ADK, ADV, 0.3f, AMASK);
    for (int t = 0; t < AT; t++) {
        double s = 0;
        for (int j = 0; j < AT; j++) {
            if (j > t || !AMASK[t * AT + j]) CHECK(P[t * AT + j] == 0);
            s += P[t * AT + j];
        }
        CHECK_NEAR(s, 1.0, 1e-5);
    }
    memset(dq, 0, sizeof dq); memset(dk, 0, sizeof dk); memset(dv, 0, sizeof dv);
    dsv_tr_attn_bwd(dq, dk, dv, r, ADV, P, AQ, ADK, AK, ADK, AV, ADV, AT, ADK, ADV, 0.3f, scratch);
    which_in = 0; fd_check("attention dq", op_attn, NULL, AQ, AT * ADK, AT * ADV, dq, r);
    which_in = 1; fd_check("attention dk", op_attn, NULL, AK, AT * ADK, AT * ADV, dk, r);
    which_in = 2; fd_check("attention dv", op_attn, NULL, AV, AT * ADV, AT * ADV, dv, r);
}

TEST(train_router_backward) {
    dsv_config c = {0};
    c.n_routed_experts = 8; c.n_activated_experts = 2; c.n_expert_groups = 4; c.n_limited_groups = 2;
    c.norm_topk_prob = 1; c.route_scale = 2.5f;
    float lg[8], bias[8], s[8], w[2], dw[2], dl[8] = {0};
    int32_t idx[2], idx2[2];
    fill(lg, 8, 2);
    fill(bias, 8, 0.2f);
    dsv_tr_route_fwd(idx, w, s, lg, bias, &c);
    CHECK_NEAR(w[0] + w[1], 2.5, 1e-5);
    CHECK(idx[0] / 2 != idx[1] / 2 || 1); /* group choice is exercised below */
    fill(dw, 2, 1);
    dsv_tr_route_bwd(dl, dw, idx, s, &c);
    /* Finite differences on logits that keep the same choice. */
    float u[8], l1[8], l2[8], w1[2], w2[2];
    fill(u, 8, 1);
    double an = 0, eps = 1e-3;
    for (int i = 0; i < 8; i++) { an += dl[i] * u[i]; l1[i] = lg[i] + (float)eps * u[i]; l2[i] = lg[i] - (float)eps * u[i]; }
    dsv_tr_route_fwd(idx2, w1, s, l1, bias, &c);
    REQUIRE(idx2[0] == idx[0] && idx2[1] == idx[1]);
    dsv_tr_route_fwd(idx2, w2, s, l2, bias, &c);
    REQUIRE(idx2[0] == idx[0] && idx2[1] == idx[1]);
    double num = (dw[0] * (w1[0] - w2[0]) + dw[1] * (w1[1] - w2[1])) / (2 * eps);
    CHECK_NEAR(num, an, 2e-3 * (fabs(an) + 0.1));
    /* Group-limited: with groups {0,1} {2,3} {4,5} {6,7} and two kept, a
     * strong expert alone in a weak group loses to a strong pair. */
    float L2[8] = {5, -5, 3, 3, 2.9f, 2.9f, -5, -5}, b0[8] = {0};
    dsv_tr_route_fwd(idx, w, s, L2, b0, &c);
    CHECK(idx[0] == 2 || idx[0] == 3);
    CHECK(idx[1] == 2 || idx[1] == 3);
    /* The bias chooses, the unbiased score weighs. */
    float L3[8] = {1, 1, 1, 1, 1, 1, 1, 1}, b3[8] = {0, 0, 0, 0, 0, 0, 0.5f, 0.4f};
    dsv_tr_route_fwd(idx, w, s, L3, b3, &c);
    CHECK_EQ_INT(idx[0], 6);
    CHECK_EQ_INT(idx[1], 7);
    CHECK_NEAR(w[0], 1.25, 1e-6);
}

/* ---- the whole model ------------------------------------------------------ */

static const char *tiny_config =
    "{\"architectures\": [\"DeepseekV32ForCausalLM\"], \"model_type\": \"deepseek_v32\", \"vocab_size\": 320,"
    " \"hidden_size\": 32, \"intermediate_size\": 48, \"moe_intermediate_size\": 16, \"num_hidden_layers\": 2,"
    " \"first_k_dense_replace\": 1, \"num_attention_heads\": 2, \"n_routed_experts\": 4, \"n_shared_experts\": 1,"
    " \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 2, \"q_lora_rank\": 16, \"kv_lora_rank\": 128,"
    " \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 8, \"v_head_dim\": 8, \"index_n_heads\": 2,"
    " \"index_head_dim\": 128, \"index_topk\": 5, \"max_position_embeddings\": 64, \"routed_scaling_factor\": 2.5,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000, \"scoring_func\": \"sigmoid\", \"topk_method\": \"noaux_tc\","
    " \"norm_topk_prob\": true, \"bos_token_id\": 0, \"eos_token_id\": 1}";

static dsv_trainer *tiny_trainer(int stage, int seq_len, int threads) {
    dsv_train_opts o = dsv_train_default_opts();
    o.stage = stage;
    o.seq_len = seq_len;
    o.batch = 2;
    o.n_threads = threads;
    dsv_trainer *t = NULL;
    int st = dsv_train_new(&t, tiny_config, &o);
    REQUIREF(st == DSV_OK, "dsv_train_new: %s", dsv_errmsg());
    return t;
}

/* Larger weights than the initialization, so every path carries signal. */
static void perturb(dsv_trainer *t) {
    float *p;
    long n;
    const char *name;
    for (int i = 0; (p = dsv_train_tensor(t, i, NULL, &n, &name)); i++) {
        int vec = strstr(name, "norm") != NULL;
        for (long j = 0; j < n; j++) p[j] = vec ? 1 + 0.3f * frand() : 0.4f * frand();
        if (strstr(name, "e_score_correction_bias"))
            for (long j = 0; j < n; j++) p[j] = 0.05f * frand();
    }
}

/* Directional finite difference of the stage's loss for each trained
 * tensor: main ones against the LM loss, the indexer's against the KL. */
static void model_grad_check(int stage) {
    enum { T = 12 };
    dsv_trainer *t = tiny_trainer(stage, T, 1);
    perturb(t);
    int32_t tok[T + 1];
    for (int i = 0; i <= T; i++) tok[i] = (int32_t)((i * 7 + 3) % 64);
    double kl;
    dsv_train_loss_grad(t, tok, 1, &kl);
    dsv_train_freeze_selection(t, 1);
    float *p, *g;
    long n;
    const char *name;
    int checked = 0;
    for (int i = 0; (p = dsv_train_tensor(t, i, &g, &n, &name)); i++) {
        int idx = strstr(name, "indexer") != NULL;
        if (strstr(name, "e_score_correction_bias")) continue;
        if ((stage == 1 && idx) || (stage == 2 && !idx)) continue;
        float *save = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n);
        memcpy(save, p, sizeof(float) * n);
        fill(u, n, 1);
        double an = 0, eps = stage == 1 ? 2e-3 : 5e-4, l[2];
        for (long j = 0; j < n; j++) an += (double)g[j] * u[j];
        for (int sgn = 0; sgn < 2; sgn++) {
            for (long j = 0; j < n; j++) p[j] = save[j] + (float)(sgn ? -eps : eps) * u[j];
            double k, lm = dsv_train_loss_grad(t, tok, 0, &k);
            l[sgn] = idx ? k : lm;
        }
        memcpy(p, save, sizeof(float) * n);
        double num = (l[0] - l[1]) / (2 * eps);
        CHECKF(fabs(num - an) <= 3e-2 * fabs(an) + 2e-4, "stage %d %s: numeric %.6g vs analytic %.6g", stage, name,
               num, an);
        checked++;
        free(save);
        free(u);
    }
    CHECK(checked >= (stage == 2 ? 10 : 20));
    dsv_train_free(t);
}

TEST(train_model_gradients_stage1_dense) { model_grad_check(1); }
TEST(train_model_gradients_stage2_indexer_warmup) { model_grad_check(2); }
TEST(train_model_gradients_stage3_sparse) { model_grad_check(3); }

/* ---- training runs, checkpoints, export ----------------------------------- */

static const char *verses =
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
    "And God said, Let there be light: and there was light.\n"
    "And God saw the light, that it was good: and God divided the light from the darkness.\n";

/* Byte-level ids of the verses (3 + byte, as the BPE numbers its bytes). */
static void text_batch(int32_t *out, int batch, int T, int step) {
    size_t n = strlen(verses);
    for (int b = 0; b < batch; b++) {
        size_t at = ((size_t)step * 37 + (size_t)b * 101) % (n - T);
        out[(size_t)b * (T + 1)] = 0;
        for (int i = 1; i <= T; i++) out[(size_t)b * (T + 1) + i] = 3 + (uint8_t)verses[at + i - 1];
    }
}

TEST(train_short_run_loss_falls) {
    enum { T = 32, STEPS = 40 };
    dsv_train_opts o = dsv_train_default_opts();
    o.seq_len = T;
    o.batch = 4;
    o.steps = STEPS;
    o.warmup = 4;
    o.lr = 1e-2f;
    o.n_threads = 2;
    dsv_trainer *t;
    REQUIRE(dsv_train_new(&t, tiny_config, &o) == DSV_OK);
    int32_t buf[4 * (T + 1)];
    double first = 0, last = 0;
    for (int s = 0; s < STEPS; s++) {
        dsv_train_stats st;
        text_batch(buf, 4, T, s);
        REQUIRE(dsv_train_step(t, buf, &st) == DSV_OK);
        CHECK(isfinite(st.lm_loss) && st.grad_norm > 0);
        if (s < 3) first += st.lm_loss / 3;
        if (s >= STEPS - 3) last += st.lm_loss / 3;
    }
    CHECKF(last < first - 2.0, "loss %.3f -> %.3f", first, last);
    dsv_train_free(t);
}

/* Stages 2 and 3 from a trained model: the KL falls while the main model is
 * frozen; sparse training keeps the LM loss. */
TEST(train_stages_indexer_kl_falls) {
    enum { T = 48 };
    dsv_train_opts o = dsv_train_default_opts();
    o.seq_len = T;
    o.batch = 2;
    o.steps = 30;
    o.warmup = 2;
    o.lr = 1e-2f;
    o.n_threads = 1;
    dsv_trainer *t;
    REQUIRE(dsv_train_new(&t, tiny_config, &o) == DSV_OK);
    int32_t buf[2 * (T + 1)];
    dsv_train_stats st;
    for (int s = 0; s < 30; s++) { text_batch(buf, 2, T, s); REQUIRE(dsv_train_step(t, buf, &st) == DSV_OK); }
    char path[1024];
    snprintf(path, sizeof path, "%s/s1.ckpt", test_tmpdir());
    REQUIRE(dsv_train_save(t, path) == DSV_OK);
    dsv_train_free(t);
    o.stage = 2;
    REQUIRE(dsv_train_load(&t, path, &o, 0) == DSV_OK);
    text_batch(buf, 2, T, 999);
    dsv_train_stats e0, e1;
    REQUIRE(dsv_train_eval(t, buf, 2, &e0) == DSV_OK);
    for (int s = 0; s < 30; s++) { text_batch(buf, 2, T, s); REQUIRE(dsv_train_step(t, buf, &st) == DSV_OK); CHECK(st.lm_loss == 0); }
    text_batch(buf, 2, T, 999);
    REQUIRE(dsv_train_eval(t, buf, 2, &e1) == DSV_OK);
    CHECKF(e1.kl < 0.7 * e0.kl, "indexer KL %.4f -> %.4f", e0.kl, e1.kl);
    CHECK_NEAR(e1.lm_loss, e0.lm_loss, 1e-6); /* main model frozen */
    snprintf(path, sizeof path, "%s/s2.ckpt", test_tmpdir());
    REQUIRE(dsv_train_save(t, path) == DSV_OK);
    dsv_train_free(t);
    o.stage = 3;
    o.lr = 1e-3f;
    REQUIRE(dsv_train_load(&t, path, &o, 0) == DSV_OK);
    for (int s = 0; s < 5; s++) {
        text_batch(buf, 2, T, s);
        REQUIRE(dsv_train_step(t, buf, &st) == DSV_OK);
        CHECK(st.kl > 0 && isfinite(st.lm_loss));
    }
    double rec[2];
    text_batch(buf, 2, T, 999);
    CHECK(dsv_train_recall(t, buf, 2, rec) == 2 * (T - 5));
    CHECKF(rec[0] > 0 && rec[0] <= 1.0 + 1e-9 && rec[1] > 0 && rec[1] <= 1.0 + 1e-9, "recall %.4f %.4f", rec[0], rec[1]);
    dsv_train_free(t);
}

TEST(train_resume_continues_exactly) {
    enum { T = 24 };
    dsv_train_opts o = dsv_train_default_opts();
    o.seq_len = T;
    o.batch = 2;
    o.steps = 8;
    o.warmup = 2;
    o.n_threads = 1;
    dsv_trainer *a, *b;
    REQUIRE(dsv_train_new(&a, tiny_config, &o) == DSV_OK);
    int32_t buf[2 * (T + 1)];
    dsv_train_stats st, sb;
    char path[1024];
    snprintf(path, sizeof path, "%s/r.ckpt", test_tmpdir());
    for (int s = 0; s < 8; s++) {
        text_batch(buf, 2, T, s);
        REQUIRE(dsv_train_step(a, buf, &st) == DSV_OK);
        if (s == 3) {
            REQUIRE(dsv_train_save(a, path) == DSV_OK);
            REQUIRE(dsv_train_load(&b, path, &o, 1) == DSV_OK);
            CHECK_EQ_INT(dsv_train_step_no(b), 4);
        }
        if (s > 3) {
            REQUIRE(dsv_train_step(b, buf, &sb) == DSV_OK);
            CHECK(sb.lm_loss == st.lm_loss && sb.lr == st.lr);
        }
    }
    o.stage = 2;
    CHECK(dsv_train_load(&b, path, &o, 1) == DSV_ERR_ARG); /* a stage 1 checkpoint */
    CHECK(dsv_train_load(&b, "/nonexistent/x.ckpt", &o, 0) != DSV_OK);
    dsv_train_free(a);
    dsv_train_free(b);
}

/* Cross entropy of the engine's logits for every position of one sequence. */
static double engine_loss(const char *dir, const int32_t *tok, int T, int dense, int topk) {
    dsv_model *m;
    REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
    const dsv_config *c = dsv_model_config(m);
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = T;
    cp.n_batch = T;
    cp.n_threads = 2;
    cp.attn = dense ? DSV_ATTN_DENSE : DSV_ATTN_SPARSE;
    cp.topk = topk;
    dsv_context *cx;
    REQUIRE(dsv_context_open(&cx, m, &cp) == DSV_OK);
    float *lg = malloc(sizeof(float) * T * c->vocab_size);
    dsv_batch_entry e = {.seq = 0, .n_tokens = T, .tokens = tok, .logits = DSV_LOGITS_ALL};
    REQUIRE(dsv_forward(cx, &e, 1, lg) == DSV_OK);
    double loss = 0;
    for (int i = 0; i < T; i++) loss += dsv_tr_xent(NULL, lg + (size_t)i * c->vocab_size, c->vocab_size, tok[i + 1], 1);
    free(lg);
    dsv_context_close(cx);
    dsv_model_close(m);
    return loss / T;
}

/* The exported model loads in the engine and computes what the training
 * forward computes, up to the engine's bf16/fp8 numerics. */
TEST(train_export_loads_in_engine) {
    enum { T = 40 };
    dsv_trainer *t = tiny_trainer(3, T, 1);
    perturb(t);
    int32_t tok[T + 1];
    text_batch(tok, 1, T, 3);
    dsv_train_stats st;
    REQUIRE(dsv_train_eval(t, tok, 1, &st) == DSV_OK);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/m", test_tmpdir());
    REQUIRE(mkdir(dir, 0777) == 0);
    REQUIRE(dsv_train_export(t, dir, 0) == DSV_OK);
    double e = engine_loss(dir, tok, T, 0, 0);
    CHECKF(fabs(e - st.lm_loss) < 0.03 * st.lm_loss, "engine loss %.4f vs training %.4f", e, st.lm_loss);
    /* fp8 export: linears with 128-multiple inputs become e4m3 + scales. */
    REQUIRE(dsv_train_export(t, dir, 1) == DSV_OK);
    double e8 = engine_loss(dir, tok, T, 0, 0);
    CHECKF(fabs(e8 - st.lm_loss) < 0.1 * st.lm_loss, "fp8 engine loss %.4f vs training %.4f", e8, st.lm_loss);
    dsv_trainer *back;
    REQUIRE(dsv_train_load(&back, dir, NULL, 0) == DSV_OK);
    dsv_train_free(back);
    dsv_train_free(t);
}

/* The training forward against the engine on the conformance model (YaRN
 * active, group-limited MoE, 8 indexer heads): same losses, dense and sparse. */
TEST(train_forward_matches_engine_on_conformance_model) {
    const char *dir = test_shared("conformance/public_sparse_bf16/hf");
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    FILE *f = fopen(cfg, "rb");
    REQUIREF(f, "missing fixture: no conformance model at %s", dir);
    fclose(f);
    enum { T = 96 };
    int32_t tok[T + 1];
    for (int i = 0; i <= T; i++) tok[i] = (int32_t)((i * 131 + 7) % 777);
    for (int stage = 1; stage <= 3; stage += 2) {
        dsv_train_opts o = dsv_train_default_opts();
        o.seq_len = T;
        o.stage = stage;
        o.n_threads = 2;
        dsv_trainer *t;
        REQUIREF(dsv_train_load(&t, dir, &o, 0) == DSV_OK, "%s", dsv_errmsg());
        dsv_train_stats st;
        REQUIRE(dsv_train_eval(t, tok, 1, &st) == DSV_OK);
        double e = engine_loss(dir, tok, T, stage == 1, 0);
        /* 2%: the engine's kernel sets sum in different orders, and on this
         * random model a one-ulp change flips sparse top-k choices (see the
         * conformance README); its loss here ranges 8.12-8.18 across the
         * levels, the reference kernels' included. */
        CHECKF(fabs(e - st.lm_loss) < 0.02 * st.lm_loss, "stage %d: engine loss %.5f vs training %.5f", stage, e,
               st.lm_loss);
        dsv_train_free(t);
    }
}

/* ---- BPE trainer and the ppl command -------------------------------------- */

#include "dsv32_tokenizer.h"

TEST(bpe_trains_a_tokenizer_the_engine_loads) {
    const char *dir = test_tmpdir();
    int n = 0;
    REQUIRE(dsv_bpe_train(dir, verses, strlen(verses), 300, &n) == DSV_OK);
    dsv_tokenizer *tok;
    REQUIREF(dsv_tokenizer_open(&tok, dir) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_tokenizer_n_vocab(tok), n);
    CHECK(n > 300);
    CHECK_EQ_INT(dsv_tokenizer_bos(tok), 0);
    CHECK_EQ_INT(dsv_tokenizer_eos(tok), 1);
    CHECK(dsv_tokenizer_add_bos(tok));
    CHECK(dsv_token_id(tok, "<｜User｜>") >= 300);
    CHECK(dsv_token_id(tok, "<｜Assistant｜>") >= 300);
    CHECK(dsv_token_id(tok, "</think>") >= 300);
    CHECK(dsv_token_is_special(tok, 0) && !dsv_token_is_special(tok, dsv_token_id(tok, "<think>")));
    CHECK(dsv_token_id(tok, " God") >= 259); /* a frequent word became one token */
    const char *samples[] = {verses, "Let there be light: and there was light.", "caf\xc3\xa9 \xe2\x82\xac 123456 \xff\xfe",
                             "<｜User｜>hello<｜Assistant｜></think>"};
    for (size_t s = 0; s < sizeof samples / sizeof *samples; s++) {
        size_t len = strlen(samples[s]), n_ids, out_len;
        int32_t *ids = malloc(sizeof(int32_t) * (len + 1));
        char *back = malloc(len + 1);
        REQUIRE(dsv_tokenize(tok, samples[s], len, ids, len + 1, &n_ids) == DSV_OK);
        REQUIRE(dsv_detokenize(tok, ids, n_ids, 0, back, len + 1, &out_len) == DSV_OK);
        CHECK(out_len == len && !memcmp(back, samples[s], len));
        if (s == 0) CHECKF(n_ids < len / 2, "%zu ids for %zu bytes", n_ids, len);
        free(ids);
        free(back);
    }
    dsv_tokenizer_close(tok);
    CHECK(dsv_bpe_train(dir, verses, strlen(verses), 100, NULL) == DSV_ERR_ARG);
}

TEST(cli_ppl_train_export_bpe) {
    const char *rel = test_bin();
    char bin[4096];
    REQUIRE(realpath(rel, bin)); /* the commands below run in the test's directory */
    const char *dir = test_tmpdir();
    char cmd[32768], path[1024], *out = NULL;
    snprintf(path, sizeof path, "%s/text.txt", dir);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    for (int i = 0; i < 4; i++) fputs(verses, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "wb");
    REQUIRE(f);
    fputs(tiny_config, f);
    fclose(f);
    /* bpe -> train 3 steps -> export -> ppl, dense and sparse, and recall. */
    snprintf(cmd, sizeof cmd,
             "cd %s && %s bpe -f text.txt -o tok --vocab 280 2>/dev/null && "
             "%s train --config config.json -f text.txt -t tok -o a.ckpt --steps 3 --batch 2 --ctx 24 "
             "--warmup 1 --valid text.txt --eval-every 3 --threads 2 2>/dev/null && "
             "%s export -i a.ckpt -o m -t tok && %s ppl -m m -f text.txt --ctx 24 --quiet -t 1 && "
             "%s ppl -m m -f text.txt --ctx 24 --dense --recall 2>/dev/null",
             dir, bin, bin, bin, bin, bin);
    int rc = test_run(cmd, &out);
    CHECKF(rc == 0, "exit %d: %s", rc, out ? out : "");
    double p1 = 0, p2 = 0;
    CHECKF(out && sscanf(out, "%lf\nppl %lf", &p1, &p2) == 2, "output: %s", out ? out : "");
    CHECK(p1 > 1 && p1 < 400 && p2 > 1 && p2 < 400);
    CHECK(out && strstr(out, "indexer recall (top-5"));
    free(out);
    /* Errors: one line, non-zero exit. */
    snprintf(cmd, sizeof cmd, "%s ppl -m %s/m 2>&1; %s train --steps 1 2>&1; %s ppl -m %s/m -f %s/text.txt --dense --topk 3 2>&1",
             bin, dir, bin, bin, dir, dir);
    rc = test_run(cmd, &out);
    CHECK(out && strstr(out, "dsv32 ppl: missing -f TEXT"));
    CHECK(out && strstr(out, "dsv32 train: give exactly one of"));
    CHECK(out && strstr(out, "--dense and --topk exclude each other"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate -m %s/m -p 'And God said' -n 6 --temp 0 -t 1 2>/dev/null", bin, dir);
    rc = test_run(cmd, &out);
    CHECKF(rc == 0 && out && strlen(out) > 4, "generate: %d %s", rc, out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s ppl --help && %s train --help && %s export --help && %s bpe --help && %s generate --help",
             bin, bin, bin, bin, bin);
    rc = test_run(cmd, &out);
    CHECK(rc == 0 && out && strstr(out, "--recall") && strstr(out, "--bias-rate") && strstr(out, "--fp8") &&
          strstr(out, "--vocab"));
    free(out);
}

/* The shipped model (models/tiny): loads, fits the budget, and knows its
 * Genesis; sparse attention stays close to dense. */
TEST(tiny_model_ships_and_runs) {
    const char *dir = "models/tiny";
    struct stat sb;
    REQUIREF(!stat("models/tiny/model.safetensors", &sb), "models/tiny/model.safetensors is missing");
    CHECK(sb.st_size <= 40L * 1000 * 1000);
    dsv_tokenizer *tok;
    REQUIREF(dsv_tokenizer_open(&tok, dir) == DSV_OK, "%s", dsv_errmsg());
    const char *text =
        "In the beginning God created the heaven and the earth.\n"
        "And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of "
        "God moved upon the face of the waters.\n"
        "And God said, Let there be light: and there was light.\n"
        "And God saw the light, that it was good: and God divided the light from the darkness.\n"
        "And God called the light Day, and the darkness he called Night. And the evening and the morning were the "
        "first day.\n"
        "And God said, Let there be a firmament in the midst of the waters, and let it divide the waters from the "
        "waters.\n"
        "And God made the firmament, and divided the waters which were under the firmament from the waters which "
        "were above the firmament: and it was so.\n";
    size_t len = strlen(text), n;
    int32_t *ids = malloc(sizeof(int32_t) * (len + 2));
    ids[0] = dsv_tokenizer_bos(tok);
    REQUIRE(dsv_tokenize(tok, text, len, ids + 1, len + 1, &n) == DSV_OK);
    dsv_tokenizer_close(tok);
    REQUIRE(n > 140);
    int T = (int)n; /* predicts ids[1..n] */
    double sparse = engine_loss(dir, ids, T, 0, 64), dense = engine_loss(dir, ids, T, 1, 0);
    CHECKF(exp(dense) < 40, "Genesis 1 perplexity %.2f", exp(dense)); /* an untrained model: ~4000 */
    CHECKF(fabs(sparse - dense) < 0.05 * dense, "sparse (top-64) %.4f vs dense %.4f", sparse, dense);
    free(ids);
}
