/* test_forward.c: invariants of the forward pass on a conformance model, at
 * every kernel level (one runner entry per level; those the CPU lacks skip). Each holds bit for bit, because no
 * row's arithmetic depends on the other rows of a call, on how the work is
 * split across threads, or on the order in which selected positions were
 * ranked. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"
#include "dsv32.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "model/model.h"
#include "test.h"

static dsv_model *open_model(const char *config) {
    char rel[256];
    snprintf(rel, sizeof rel, "conformance/%s/hf", config);
    dsv_model *m = NULL;
    REQUIREF(dsv_model_open(&m, test_shared(rel), NULL) == DSV_OK, "%s", dsv_errmsg());
    return m;
}

static dsv_context *open_ctx(dsv_model *m, int n_seq, int n_ctx, int attn, int topk, int mha_max, int threads) {
    dsv_context_params p = dsv_context_default_params();
    p.n_seq = n_seq;
    p.n_ctx = n_ctx;
    p.n_batch = n_ctx * n_seq;
    p.attn = attn;
    p.topk = topk;
    p.mha_max_keys = mha_max;
    p.n_threads = threads;
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
    return ctx;
}

/* Test tokens: a deterministic pseudo-random sequence. */
static void make_tokens(int32_t *t, int n, int vocab, uint32_t seed) {
    for (int i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; t[i] = (int32_t)((seed >> 8) % (uint32_t)vocab); }
}

/* Feeds tokens in chunks (sizes cycling through `chunks`), logits of every position. */
static void run_chunked(dsv_context *ctx, int seq, const int32_t *t, int n, const int *chunks, int n_chunks,
                        float *logits, int vocab) {
    for (int pos = 0, c = 0; pos < n; c++) {
        int len = chunks[c % n_chunks];
        if (len > n - pos) len = n - pos;
        dsv_batch_entry e = {.seq = seq, .n_tokens = len, .tokens = t + pos, .logits = DSV_LOGITS_ALL};
        REQUIREF(dsv_forward(ctx, &e, 1, logits + (size_t)pos * vocab) == DSV_OK, "%s", dsv_errmsg());
        pos += len;
    }
}

static int same(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

enum { N = 160 };

static void topk_covering_context_equals_dense_at(const char *level) {
    (void)level;
    dsv_model *m = open_model("public_sparse_fp8");
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N];
    make_tokens(t, N, V, 1);
    float *a = malloc(sizeof(float) * N * V), *b = malloc(sizeof(float) * N * V);
    const int one[] = {N}, mixed[] = {40, 1, 1, 7, 1};
    for (int mha = 0; mha < 2; mha++) {
        /* mha == 0 forces the absorbed path everywhere (mha_max_keys 1). */
        dsv_context *sparse = open_ctx(m, 1, N, DSV_ATTN_SPARSE, N, mha ? 0 : 1, 2);
        dsv_context *dense = open_ctx(m, 1, N, DSV_ATTN_DENSE, 0, mha ? 0 : 1, 2);
        run_chunked(sparse, 0, t, N, mha ? one : mixed, mha ? 1 : 5, a, V);
        run_chunked(dense, 0, t, N, mha ? one : mixed, mha ? 1 : 5, b, V);
        CHECKF(same(a, b, (size_t)N * V), "top-k >= context differs from dense (mha %d)", mha);
        dsv_context_close(sparse);
        dsv_context_close(dense);
    }
    /* And the model's own top-k (32) really is different from dense here. */
    dsv_context *sparse = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 0, 2);
    run_chunked(sparse, 0, t, N, one, 1, a, V);
    CHECK(!same(a, b, (size_t)N * V));
    dsv_context_close(sparse);
    free(a);
    free(b);
    dsv_model_close(m);
}
TEST_LEVELS(topk_covering_context_equals_dense) { topk_covering_context_equals_dense_at(test_level()); }

static void chunked_prefill_equals_one_call_on(dsv_model *m) {
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N];
    make_tokens(t, N, V, 2);
    float *a = malloc(sizeof(float) * N * V), *b = malloc(sizeof(float) * N * V);
    const int one[] = {N}, chunks[] = {37, 64, 5, 2, 52};
    dsv_context *x = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 0, 2);
    dsv_context *y = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 0, 1);
    run_chunked(x, 0, t, N, one, 1, a, V);
    run_chunked(y, 0, t, N, chunks, 5, b, V);
    CHECKF(same(a, b, (size_t)N * V), "chunked prefill differs from one call");
    dsv_context_close(x);
    dsv_context_close(y);
    /* Absorbed path (long contexts): a chunk equals its tokens fed one by one. */
    const int single[] = {1}, big[] = {30, 9, 64};
    x = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 1, 2);
    y = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 1, 2);
    run_chunked(x, 0, t, N, single, 1, a, V);
    run_chunked(y, 0, t, N, big, 3, b, V);
    CHECKF(same(a, b, (size_t)N * V), "absorbed-path chunks differ from single tokens");
    /* The two paths are different arithmetic (as in the reference): the
     * non-absorbed one call does not equal the absorbed single tokens. */
    dsv_context_close(y);
    y = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 0, 2);
    run_chunked(y, 0, t, N, one, 1, b, V);
    CHECK(!same(a, b, (size_t)N * V));
    dsv_context_close(x);
    dsv_context_close(y);
    free(a);
    free(b);
    dsv_model_close(m);
}
TEST_LEVELS(chunked_prefill_equals_one_call) { chunked_prefill_equals_one_call_on(open_model("public_sparse_fp8")); }

/* The FP8 checkpoint as a block-quantized GGUF (Q4_K_M: attn_v_b's rows of
 * 256 as a K-quant; attn_k_b's rows of 64 made Q5_0, as llama.cpp's
 * fallback for short rows), whose absorbed path multiplies the file's
 * attn_k_b / attn_v_b blocks with float activations (mla.c, dsv_q_absorb)
 * while the MHA path reads the bf16 wkv_b built from them: the same
 * invariants. Written once per run. */
static dsv_model *open_gguf_q4(void) {
    char path[1024], cmd[4096];
    snprintf(path, sizeof path, "%s/fwd-q4km.gguf", test_tmpdir());
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    else {
        snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --type Q4_K_M --tensor-type 'attn_k_b=Q5_0' 2>&1",
                 test_bin(), test_shared("conformance/public_sparse_fp8/hf"), path);
        test_run_ok(cmd, NULL);
    }
    dsv_model *m = NULL;
    REQUIREF(dsv_model_open(&m, path, NULL) == DSV_OK, "%s", dsv_errmsg());
    return m;
}
TEST_LEVELS(chunked_prefill_equals_one_call_gguf_q4) { chunked_prefill_equals_one_call_on(open_gguf_q4()); }

static void batch_equals_each_sequence_alone_on(dsv_model *m) {
    const int V = dsv_model_config(m)->vocab_size;
    enum { A = 70, B = 45, STEPS = 6 };
    int32_t ta[A + STEPS], tb[B + STEPS];
    make_tokens(ta, A + STEPS, V, 3);
    make_tokens(tb, B + STEPS, V, 4);
    float *solo = malloc(sizeof(float) * 2 * (STEPS + 1) * V), *both = malloc(sizeof(float) * 2 * (STEPS + 1) * V);
    for (int s = 0; s < 2; s++) {
        dsv_context *ctx = open_ctx(m, 1, A + STEPS, DSV_ATTN_SPARSE, 0, 0, 2);
        const int32_t *t = s ? tb : ta;
        int n0 = s ? B : A;
        for (int k = 0; k <= STEPS; k++) {
            dsv_batch_entry e = {0, k ? 1 : n0, k ? t + n0 + k - 1 : t, DSV_LOGITS_LAST};
            REQUIRE(dsv_forward(ctx, &e, 1, solo + ((size_t)k * 2 + s) * V) == DSV_OK);
        }
        dsv_context_close(ctx);
    }
    dsv_context *ctx = open_ctx(m, 2, A + STEPS, DSV_ATTN_SPARSE, 0, 0, 2);
    for (int k = 0; k <= STEPS; k++) {
        dsv_batch_entry e[2] = {{0, k ? 1 : A, k ? ta + A + k - 1 : ta, DSV_LOGITS_LAST},
                                {1, k ? 1 : B, k ? tb + B + k - 1 : tb, DSV_LOGITS_LAST}};
        REQUIRE(dsv_forward(ctx, e, 2, both + (size_t)k * 2 * V) == DSV_OK);
    }
    CHECKF(same(solo, both, (size_t)2 * (STEPS + 1) * V), "a batch of two differs from each alone");
    /* A reversed entry order changes only where the rows land. */
    dsv_seq_reset(ctx, 0);
    dsv_seq_reset(ctx, 1);
    dsv_batch_entry e[2] = {{1, B, tb, DSV_LOGITS_LAST}, {0, A, ta, DSV_LOGITS_LAST}};
    REQUIRE(dsv_forward(ctx, e, 2, both) == DSV_OK);
    CHECK(same(both, solo + V, V) && same(both + V, solo, V));
    dsv_context_close(ctx);
    free(solo);
    free(both);
    dsv_model_close(m);
}
TEST_LEVELS(batch_equals_each_sequence_alone) { batch_equals_each_sequence_alone_on(open_model("public_sparse_bf16")); }

/* The same for a BF16 GGUF of the FP8 checkpoint, whose fp8-born linears
 * quantize their inputs (linear_fp8x). */
TEST_LEVELS(batch_equals_each_sequence_alone_gguf_fp8) {
    char path[1024], cmd[4096], *out = NULL;
    const char *bin = getenv("DSV32_BIN") ? getenv("DSV32_BIN") : "build/dsv32";
    snprintf(path, sizeof path, "%s/fp8.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --type BF16 2>&1", bin,
             test_shared("conformance/public_sparse_fp8/hf"), path);
    int rc = test_run(cmd, &out);
    REQUIREF(rc == 0, "%s: %s", cmd, out ? out : "");
    free(out);
    dsv_model *m = NULL;
    REQUIREF(dsv_model_open(&m, path, NULL) == DSV_OK, "%s", dsv_errmsg());
    batch_equals_each_sequence_alone_on(m);
}

TEST_LEVELS(batch_equals_each_sequence_alone_gguf_q4) { batch_equals_each_sequence_alone_on(open_gguf_q4()); }

/* The per-head row mapping of the quantized absorbs (model_gguf.c,
 * kv_b_quant): every layer's q_abs and o of every head from the file's
 * attn_k_b / attn_v_b blocks (dsv_q_absorb) against the kernel set's
 * absorb_q / absorb_o on the bf16 wkv_b, which build_kv_b assembled from the
 * same tensors by its own indexing (the key half transposed). They differ
 * only by wkv_b's bf16 rounding of each weight (2^-8 relative), the sums'
 * order (2*γ_K, quant.h) and the two bf16 results' rounding: a head or row
 * taken from the wrong place is off by the size of the outputs. */
static void absorb_rows_match_wkv_b_at(const char *level_name) {
    dsv_model *m = open_gguf_q4();
    const int level = dsv_kernels_level_parse(level_name);
    const dsv_kernels *k = dsv_kernels_at(level);
    const dsv_config *c = dsv_model_config(m);
    const int H = m->n_local_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim, V = c->v_head_dim;
    const int C = c->kv_lora_rank;
    dsv_bf16 *q = malloc(sizeof(dsv_bf16) * H * (N + R)), *lat = malloc(sizeof(dsv_bf16) * H * C);
    dsv_bf16 *y1 = malloc(sizeof(dsv_bf16) * H * C), *y2 = malloc(sizeof(dsv_bf16) * H * C);
    float *acc = malloc(sizeof(float) * C);
    uint32_t st = 99;
    for (int i = 0; i < H * (N + R); i++) {
        st = st * 1103515245u + 12345u;
        q[i] = dsv_f32_to_bf16((float)((int)(st >> 8) % 2001 - 1000) / 500.0f);
    }
    for (int i = 0; i < H * C; i++) {
        st = st * 1103515245u + 12345u;
        lat[i] = dsv_f32_to_bf16((float)((int)(st >> 8) % 2001 - 1000) / 700.0f);
    }
    const double u = 1.0 / 16777216.0;
    double worst = 0;
    for (int il = 0; il < c->n_layers; il++) {
        const dsv_layer *ly = &m->layers[il];
        REQUIREF(ly->k_b.gtype && ly->v_b.gtype, "layer %d: attn_k_b / attn_v_b not taken as blocks", il);
        const dsv_linear *wb = &ly->wkv_b;
        for (int pass = 0; pass < 2; pass++) {
            const dsv_linear *w = pass ? &ly->v_b : &ly->k_b;
            const int rows = pass ? V : C, K = pass ? C : N;
            dsv_q_absorb_for(level, w->gtype)(w->gtype, w->w, dsv_ggml_row_size(w->gtype, K), rows, K,
                                              pass ? lat : q, pass ? (size_t)C : (size_t)(N + R), y1, 0, H);
            for (int h = 0; h < H; h++) {
                if (pass) k->absorb_o(y2 + h * V, lat + h * C, wb, h * (N + V) + N, V);
                else k->absorb_q(y2 + h * C, q + h * (N + R), wb, h * (N + V), N, acc);
            }
            const double g = 2 * K * u / (1 - K * u);
            for (int h = 0; h < H; h++)
                for (int r = 0; r < rows; r++) {
                    double mag = 0;
                    for (int kk = 0; kk < K; kk++)
                        mag += pass ? fabs(dsv_wkvb_at(wb, h * (N + V) + N + r, kk) * dsv_bf16_to_f32(lat[h * C + kk]))
                                    : fabs(dsv_wkvb_at(wb, h * (N + V) + kk, r) * dsv_bf16_to_f32(q[h * (N + R) + kk]));
                    const double a = dsv_bf16_to_f32(y1[h * rows + r]), b = dsv_bf16_to_f32(y2[h * rows + r]);
                    const double bound = (0x1p-8 + g) * mag * 1.01 + 0x1p-8 * (fabs(a) + fabs(b)) * 1.001;
                    CHECKF(fabs(a - b) <= bound, "%s layer %d %s head %d row %d: %.6g vs wkv_b's %.6g (bound %.3g)",
                           level_name, il, pass ? "o" : "q_abs", h, r, a, b, bound);
                    if (fabs(a - b) / bound > worst) worst = fabs(a - b) / bound;
                }
        }
    }
    fprintf(stderr, "    %s: largest difference %.3g of the bound\n", level_name, worst);
    free(q);
    free(lat);
    free(y1);
    free(y2);
    free(acc);
    dsv_model_close(m);
}
TEST_LEVELS(absorb_rows_match_wkv_b_gguf_q4) { absorb_rows_match_wkv_b_at(test_level()); }

static void threads_do_not_change_results_at(const char *level) {
    (void)level;
    dsv_model *m = open_model("public_sparse_fp8");
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N];
    make_tokens(t, N, V, 5);
    float *a = malloc(sizeof(float) * N * V), *b = malloc(sizeof(float) * N * V);
    const int chunks[] = {50, 1, 1, 108};
    dsv_context *x = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 0, 1);
    dsv_context *y = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 0, 3);
    run_chunked(x, 0, t, N, chunks, 4, a, V);
    run_chunked(y, 0, t, N, chunks, 4, b, V);
    CHECK(same(a, b, (size_t)N * V));
    dsv_context_close(x);
    dsv_context_close(y);
    free(a);
    free(b);
    dsv_model_close(m);
}
TEST_LEVELS(threads_do_not_change_results) { threads_do_not_change_results_at(test_level()); }

static void truncate_and_refeed_at(const char *level) {
    (void)level;
    dsv_model *m = open_model("public_sparse_fp8");
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N];
    make_tokens(t, N, V, 6);
    float *a = malloc(sizeof(float) * N * V), *b = malloc(sizeof(float) * N * V);
    const int one[] = {N};
    dsv_context *x = open_ctx(m, 1, N, DSV_ATTN_SPARSE, 0, 0, 2);
    run_chunked(x, 0, t, N, one, 1, a, V);
    REQUIRE(dsv_seq_truncate(x, 0, 100) == DSV_OK);
    CHECK_EQ_INT(dsv_seq_len(x, 0), 100);
    dsv_batch_entry e = {0, N - 100, t + 100, DSV_LOGITS_ALL};
    REQUIRE(dsv_forward(x, &e, 1, b) == DSV_OK);
    /* Positions 100.. recomputed as a chunk at 100 (MHA over cached rows). */
    CHECK(same(a + (size_t)100 * V, b, (size_t)(N - 100) * V));
    dsv_context_close(x);
    free(a);
    free(b);
    dsv_model_close(m);
}
TEST_LEVELS(truncate_and_refeed) { truncate_and_refeed_at(test_level()); }

TEST(forward_rejects_bad_calls_without_side_effects) {
    dsv_model *m = open_model("public_sparse_bf16");
    const int V = dsv_model_config(m)->vocab_size;
    dsv_context *x = open_ctx(m, 2, 64, DSV_ATTN_SPARSE, 0, 0, 2);
    int32_t t[70];
    make_tokens(t, 70, V, 7);
    float *lg = malloc(sizeof(float) * 70 * V);
    dsv_batch_entry ok = {0, 10, t, DSV_LOGITS_LAST};
    REQUIRE(dsv_forward(x, &ok, 1, lg) == DSV_OK);
    int32_t bad_tok[2] = {5, V};
    dsv_batch_entry e1[2] = {{0, 5, t, DSV_LOGITS_LAST}, {1, 2, bad_tok, DSV_LOGITS_LAST}};
    CHECK_EQ_INT(dsv_forward(x, e1, 2, lg), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "out of range") != NULL);
    CHECK_EQ_INT(dsv_seq_len(x, 0), 10);
    CHECK_EQ_INT(dsv_seq_len(x, 1), 0);
    dsv_batch_entry e2 = {0, 60, t, DSV_LOGITS_LAST}; /* 10 + 60 > 64 */
    CHECK_EQ_INT(dsv_forward(x, &e2, 1, lg), DSV_ERR_FULL);
    CHECK_EQ_INT(dsv_seq_len(x, 0), 10);
    dsv_batch_entry e3[2] = {{0, 1, t, DSV_LOGITS_LAST}, {0, 1, t, DSV_LOGITS_LAST}};
    CHECK_EQ_INT(dsv_forward(x, e3, 2, lg), DSV_ERR_ARG);
    dsv_batch_entry e4 = {2, 1, t, DSV_LOGITS_LAST};
    CHECK_EQ_INT(dsv_forward(x, &e4, 1, lg), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_seq_truncate(x, 0, 11), DSV_ERR_ARG);
    /* The sequence still works after the failures. */
    dsv_batch_entry e5 = {0, 1, t + 10, DSV_LOGITS_LAST};
    CHECK_EQ_INT(dsv_forward(x, &e5, 1, lg), DSV_OK);
    CHECK_EQ_INT(dsv_seq_len(x, 0), 11);
    dsv_context_close(x);
    free(lg);
    dsv_model_close(m);
}

/* Two contexts of different kernel levels on one model, run at once from
 * two threads: each keeps its own level (no process-wide kernel choice)
 * and gives the logits of a context of that level run alone. */
struct level_run {
    dsv_context *ctx;
    const int32_t *t;
    float *logits;
    int vocab;
    int status;
};
static void *level_run(void *arg) {
    struct level_run *r = arg;
    /* Several calls, so that the two threads' forward passes overlap. */
    const int chunk = N / 4;
    for (int pos = 0; pos < N && !r->status; pos += chunk) {
        dsv_batch_entry e = {.seq = 0, .n_tokens = chunk, .tokens = r->t + pos, .logits = DSV_LOGITS_ALL};
        r->status = dsv_forward(r->ctx, &e, 1, r->logits + (size_t)pos * r->vocab);
    }
    return NULL;
}
static dsv_context *open_level(dsv_model *m, const char *level) {
    dsv_context_params p = dsv_context_default_params();
    p.n_ctx = N;
    p.n_batch = N;
    p.n_threads = 2;
    snprintf(p.kernels, sizeof p.kernels, "%s", level);
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
    return ctx;
}
TEST(contexts_of_two_levels_run_at_once) {
    /* generic and the best level this machine has, whatever DSV32_ISA says. */
    const char *lv[2] = {dsv_kernels_level_name(DSV_KLEVEL_GENERIC), dsv_kernels_level_name(dsv_kernels_top())};
    if (dsv_kernels_top() == DSV_KLEVEL_GENERIC) SKIP("this machine has only the generic kernels");
    dsv_model *m = open_model("public_sparse_fp8");
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N];
    make_tokens(t, N, V, 11);
    float *alone[2], *together[2];
    for (int k = 0; k < 2; k++) {
        alone[k] = malloc(sizeof(float) * N * V);
        together[k] = malloc(sizeof(float) * N * V);
        REQUIRE(alone[k] && together[k]);
        dsv_context *ctx = open_level(m, lv[k]);
        CHECK_STR(dsv_context_kernels(ctx), lv[k]);
        struct level_run r = {.ctx = ctx, .t = t, .logits = alone[k], .vocab = V};
        level_run(&r);
        CHECK_EQ_INT(r.status, DSV_OK);
        dsv_context_close(ctx);
    }
    /* The levels really compute differently here, so a context that ran the
     * other's kernels would be seen. */
    CHECK(!same(alone[0], alone[1], (size_t)N * V));

    dsv_context *ctx[2] = {open_level(m, lv[0]), open_level(m, lv[1])};
    struct level_run r[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        r[k] = (struct level_run){.ctx = ctx[k], .t = t, .logits = together[k], .vocab = V};
        REQUIRE(pthread_create(&th[k], NULL, level_run, &r[k]) == 0);
    }
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++) {
        CHECKF(r[k].status == DSV_OK, "%s: %s", lv[k], dsv_errmsg());
        CHECK_STR(dsv_context_kernels(ctx[k]), lv[k]);
        CHECKF(same(alone[k], together[k], (size_t)N * V), "level %s: logits differ when run beside the other",
               lv[k]);
        dsv_context_close(ctx[k]);
        free(alone[k]);
        free(together[k]);
    }
    dsv_model_close(m);
}
