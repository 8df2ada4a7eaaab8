/* test_kvshare.c: the prefix-sharing API (dsv_seq_attach, page references,
 * copy-on-write truncation) on a conformance model. The central property is
 * bit-exactness: a sequence started on another sequence's pages computes
 * exactly what it computes when it builds the same prefix itself with the
 * same chunks, so a prefix cache can never change an answer. */
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"
#include "test.h"

static dsv_model *open_model(void) {
    dsv_model *m = NULL;
    REQUIREF(dsv_model_open(&m, test_shared("conformance/public_sparse_bf16/hf"), NULL) == DSV_OK, "%s",
             dsv_errmsg());
    return m;
}

static dsv_context *open_ctx(dsv_model *m, int n_seq, int n_ctx, int64_t n_pages) {
    dsv_context_params p = dsv_context_default_params();
    p.n_seq = n_seq;
    p.n_ctx = n_ctx;
    p.n_batch = n_ctx;
    p.n_pages = n_pages;
    p.n_threads = 1;
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
    return ctx;
}

static void make_tokens(int32_t *t, int n, int vocab, uint32_t seed) {
    for (int i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; t[i] = (int32_t)((seed >> 8) % (uint32_t)vocab); }
}

/* Appends t[0..n) to seq in one call; logits of every position. */
static void feed(dsv_context *ctx, int seq, const int32_t *t, int n, float *logits) {
    dsv_batch_entry e = {.seq = seq, .n_tokens = n, .tokens = t, .logits = DSV_LOGITS_ALL};
    REQUIREF(dsv_forward(ctx, &e, 1, logits) == DSV_OK, "%s", dsv_errmsg());
}

static int same(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

static int64_t used_pages(const dsv_context *ctx) {
    int64_t used = -1;
    dsv_kv_stats(ctx, &used, NULL);
    return used;
}

enum { N = 200, STEPS = 5 };

TEST(kvshare_attached_prefix_equals_scratch) {
    dsv_model *m = open_model();
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N + STEPS];
    make_tokens(t, N + STEPS, V, 11);
    float *a = malloc(sizeof(float) * (N + STEPS) * V), *b = malloc(sizeof(float) * (N + STEPS) * V);
    dsv_context *ctx = open_ctx(m, 2, 256, 0);
    /* Sequence 0 from scratch: two pages, the rest of the prompt, then
     * single-token decoding. */
    feed(ctx, 0, t, 128, a);
    feed(ctx, 0, t + 128, N - 128, a + (size_t)128 * V);
    for (int k = 0; k < STEPS; k++) feed(ctx, 0, t + N + k, 1, a + (size_t)(N + k) * V);
    /* Sequence 1 on sequence 0's first two pages, then the same calls. */
    const int32_t *pages;
    int n_pages;
    REQUIRE(dsv_seq_pages(ctx, 0, &pages, &n_pages) == DSV_OK);
    CHECK_EQ_INT(n_pages, 4); /* 205 tokens */
    int32_t shared[2] = {pages[0], pages[1]};
    int64_t before = used_pages(ctx);
    REQUIRE(dsv_seq_attach(ctx, 1, shared, 2) == DSV_OK);
    CHECK_EQ_INT(dsv_seq_len(ctx, 1), 128);
    CHECK_EQ_INT(used_pages(ctx), before); /* attaching takes no page */
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, shared[0]), 2);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, shared[1]), 2);
    feed(ctx, 1, t + 128, N - 128, b + (size_t)128 * V);
    for (int k = 0; k < STEPS; k++) feed(ctx, 1, t + N + k, 1, b + (size_t)(N + k) * V);
    CHECKF(same(a + (size_t)128 * V, b + (size_t)128 * V, (size_t)(N + STEPS - 128) * V),
           "a sequence on shared pages differs from one computed from scratch");
    /* Its own pages are new; the shared ones are still shared. */
    REQUIRE(dsv_seq_pages(ctx, 1, &pages, &n_pages) == DSV_OK);
    CHECK(n_pages == 4 && pages[0] == shared[0] && pages[1] == shared[1]);
    /* Forgetting sequence 0 leaves the shared pages to sequence 1. */
    REQUIRE(dsv_seq_reset(ctx, 0) == DSV_OK);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, shared[0]), 1);
    CHECK_EQ_INT(used_pages(ctx), 4);
    REQUIRE(dsv_seq_reset(ctx, 1) == DSV_OK);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, shared[0]), 0);
    CHECK_EQ_INT(used_pages(ctx), 0);
    dsv_context_close(ctx);
    free(a);
    free(b);
    dsv_model_close(m);
}

TEST(kvshare_references_keep_pages_alive) {
    dsv_model *m = open_model();
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N];
    make_tokens(t, N, V, 12);
    float *a = malloc(sizeof(float) * N * V), *b = malloc(sizeof(float) * N * V);
    dsv_context *ctx = open_ctx(m, 1, 256, 0);
    feed(ctx, 0, t, 64, a);
    feed(ctx, 0, t + 64, N - 64, a + (size_t)64 * V);
    const int32_t *pages;
    int n_pages;
    REQUIRE(dsv_seq_pages(ctx, 0, &pages, &n_pages) == DSV_OK);
    int32_t kept = pages[0];
    /* A reference held outside any sequence (as a prefix cache holds one)
     * outlives the sequence. */
    REQUIRE(dsv_kv_page_ref(ctx, kept) == DSV_OK);
    REQUIRE(dsv_seq_reset(ctx, 0) == DSV_OK);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, kept), 1);
    CHECK_EQ_INT(used_pages(ctx), 1);
    /* Other work reuses the freed pages without touching the kept one. */
    int32_t other[130];
    make_tokens(other, 130, V, 13);
    feed(ctx, 0, other, 130, b);
    REQUIRE(dsv_seq_reset(ctx, 0) == DSV_OK);
    REQUIRE(dsv_seq_attach(ctx, 0, &kept, 1) == DSV_OK);
    feed(ctx, 0, t + 64, N - 64, b + (size_t)64 * V);
    CHECK(same(a + (size_t)64 * V, b + (size_t)64 * V, (size_t)(N - 64) * V));
    REQUIRE(dsv_seq_reset(ctx, 0) == DSV_OK);
    REQUIRE(dsv_kv_page_unref(ctx, kept) == DSV_OK);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, kept), 0);
    CHECK_EQ_INT(used_pages(ctx), 0);
    dsv_context_close(ctx);
    free(a);
    free(b);
    dsv_model_close(m);
}

TEST(kvshare_truncate_copies_a_shared_page) {
    dsv_model *m = open_model();
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[N], u[N];
    make_tokens(t, N, V, 14);
    make_tokens(u, N, V, 15);
    float *a = malloc(sizeof(float) * N * V), *b = malloc(sizeof(float) * N * V);
    dsv_context *ctx = open_ctx(m, 2, 256, 0);
    feed(ctx, 0, t, 128, a);
    const int32_t *pages;
    int n_pages;
    REQUIRE(dsv_seq_pages(ctx, 0, &pages, &n_pages) == DSV_OK);
    int32_t shared[2] = {pages[0], pages[1]};
    REQUIRE(dsv_seq_attach(ctx, 1, shared, 2) == DSV_OK);
    /* Sequence 1 goes back into the second page and writes other tokens
     * there: it must get its own copy, or sequence 0 would see them. */
    REQUIRE(dsv_seq_truncate(ctx, 1, 100) == DSV_OK);
    REQUIRE(dsv_seq_pages(ctx, 1, &pages, &n_pages) == DSV_OK);
    CHECK(n_pages == 2 && pages[0] == shared[0] && pages[1] != shared[1]);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, shared[1]), 1);
    feed(ctx, 1, u + 100, N - 100, b);
    /* Sequence 0 continues exactly as a fresh computation of t does. */
    feed(ctx, 0, t + 128, N - 128, a + (size_t)128 * V);
    dsv_context *ref = open_ctx(m, 1, 256, 0);
    feed(ref, 0, t, 128, b);
    feed(ref, 0, t + 128, N - 128, b + (size_t)128 * V);
    CHECKF(same(a, b, (size_t)N * V), "a copy-on-write truncation disturbed the sharing sequence");
    dsv_context_close(ref);
    /* Truncating to a page boundary needs no copy. */
    REQUIRE(dsv_seq_reset(ctx, 1) == DSV_OK);
    REQUIRE(dsv_seq_attach(ctx, 1, shared, 2) == DSV_OK);
    REQUIRE(dsv_seq_truncate(ctx, 1, 64) == DSV_OK);
    REQUIRE(dsv_seq_pages(ctx, 1, &pages, &n_pages) == DSV_OK);
    CHECK(n_pages == 1 && pages[0] == shared[0]);
    dsv_context_close(ctx);
    free(a);
    free(b);
    dsv_model_close(m);
}

TEST(kvshare_rejects_bad_calls) {
    dsv_model *m = open_model();
    const int V = dsv_model_config(m)->vocab_size;
    int32_t t[128];
    make_tokens(t, 128, V, 16);
    float *lg = malloc(sizeof(float) * 128 * V);
    /* Three pages in all: sequence 0 takes two. */
    dsv_context *ctx = open_ctx(m, 2, 128, 3);
    feed(ctx, 0, t, 100, lg);
    const int32_t *pages;
    int n_pages;
    REQUIRE(dsv_seq_pages(ctx, 0, &pages, &n_pages) == DSV_OK);
    int32_t p0 = pages[0], p1 = pages[1];
    CHECK_EQ_INT(dsv_seq_attach(ctx, 0, &p0, 1), DSV_ERR_ARG); /* not empty */
    int32_t free_page = 0;
    while (free_page == p0 || free_page == p1) free_page++;
    CHECK_EQ_INT(dsv_seq_attach(ctx, 1, &free_page, 1), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "free") != NULL);
    int32_t out_of_range = 3;
    CHECK_EQ_INT(dsv_seq_attach(ctx, 1, &out_of_range, 1), DSV_ERR_ARG);
    int32_t three[3] = {p0, p1, p0};
    CHECK_EQ_INT(dsv_seq_attach(ctx, 1, three, 3), DSV_ERR_ARG); /* more than the context */
    CHECK_EQ_INT(dsv_seq_len(ctx, 1), 0);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, p0), 1); /* failed calls took nothing */
    CHECK_EQ_INT(dsv_kv_page_ref(ctx, free_page), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_kv_page_unref(ctx, free_page), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, -1), -1);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, 3), -1);
    /* A copy-on-write truncation with no page to copy into fails cleanly. */
    REQUIRE(dsv_seq_attach(ctx, 1, &p0, 1) == DSV_OK);
    feed(ctx, 1, t + 64, 2, lg); /* takes the last free page */
    int64_t used, nfree;
    dsv_kv_stats(ctx, &used, &nfree);
    CHECK(used == 3 && nfree == 0);
    CHECK_EQ_INT(dsv_seq_truncate(ctx, 1, 10), DSV_ERR_FULL);
    CHECK_EQ_INT(dsv_seq_len(ctx, 1), 66);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, p0), 2);
    dsv_context_close(ctx);
    free(lg);
    dsv_model_close(m);
}
