/* test_server_prefix.c: the server's prefix cache (src/server/prefix.h) on
 * a real context: exact matching along the chain of pages, references, and
 * eviction of unused leaves only, least recently used first. */
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"
#include "server/prefix.h"
#include "test.h"

static int64_t used_pages(const dsv_context *ctx) {
    int64_t used;
    dsv_kv_stats(ctx, &used, NULL);
    return used;
}

/* A context of 8 pages and two sequences, with sequence 0 holding n tokens
 * of t (computed) and its pages in the cache. */
static dsv_context *setup(dsv_model **m, const int32_t *t, int n, srv_prefix **pc) {
    REQUIREF(dsv_model_open(m, test_shared("conformance/public_sparse_bf16/hf"), NULL) == DSV_OK, "%s", dsv_errmsg());
    dsv_context_params p = dsv_context_default_params();
    p.n_seq = 2;
    p.n_ctx = 256;
    p.n_batch = 256;
    p.n_pages = 8;
    p.n_threads = 1;
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, *m, &p) == DSV_OK, "%s", dsv_errmsg());
    REQUIRE(srv_prefix_init(pc, ctx) == DSV_OK);
    float *lg = malloc(sizeof(float) * (size_t)dsv_model_config(*m)->vocab_size);
    dsv_batch_entry e = {0, n, t, DSV_LOGITS_LAST};
    REQUIRE(dsv_forward(ctx, &e, 1, lg) == DSV_OK);
    free(lg);
    const int32_t *pages;
    int np;
    REQUIRE(dsv_seq_pages(ctx, 0, &pages, &np) == DSV_OK);
    srv_prefix_insert(*pc, t, pages, n / DSV_PAGE);
    return ctx;
}

TEST(prefix_cache_matches_whole_chains) {
    int32_t t[256], u[256];
    for (int i = 0; i < 256; i++) t[i] = u[i] = (int32_t)(7 + i % 500);
    dsv_model *m;
    srv_prefix *pc;
    dsv_context *ctx = setup(&m, t, 256, &pc);
    CHECK_EQ_INT(srv_prefix_entries(pc), 4);
    CHECK_EQ_INT(srv_prefix_idle_pages(pc), 0); /* sequence 0 still uses them */
    const int32_t *seq_pages;
    int np;
    dsv_seq_pages(ctx, 0, &seq_pages, &np);
    int32_t pages[4];
    CHECK_EQ_INT(srv_prefix_lookup(pc, t, 4, pages), 4);
    CHECK(!memcmp(pages, seq_pages, sizeof pages));
    CHECK_EQ_INT(srv_prefix_lookup(pc, t, 2, pages), 2); /* at most what is asked */
    /* A page matches only after the same pages: change one token of page 1
     * and pages 2 and 3 no longer match, though their own tokens do. */
    u[100]++;
    CHECK_EQ_INT(srv_prefix_lookup(pc, u, 4, pages), 1);
    u[100]--;
    u[0]++;
    CHECK_EQ_INT(srv_prefix_lookup(pc, u, 4, pages), 0);
    /* Inserting the same chain again adds nothing. */
    srv_prefix_insert(pc, t, seq_pages, 4);
    CHECK_EQ_INT(srv_prefix_entries(pc), 4);
    CHECK_EQ_INT(dsv_kv_page_refs(ctx, seq_pages[0]), 2);
    /* In use, nothing can go. */
    CHECK_EQ_INT(srv_prefix_evict(pc, 8), 0);
    dsv_seq_reset(ctx, 0);
    CHECK_EQ_INT(srv_prefix_idle_pages(pc), 4);
    CHECK_EQ_INT(used_pages(ctx), 4);
    srv_prefix_free(pc);
    CHECK_EQ_INT(used_pages(ctx), 0);
    dsv_context_close(ctx);
    dsv_model_close(m);
}

TEST(prefix_cache_evicts_unused_leaves_first) {
    int32_t t[256];
    for (int i = 0; i < 256; i++) t[i] = (int32_t)(11 + (i * 7) % 600);
    dsv_model *m;
    srv_prefix *pc;
    dsv_context *ctx = setup(&m, t, 256, &pc);
    dsv_seq_reset(ctx, 0);
    /* Sequence 1 starts on the first two pages: they are in use again. */
    int32_t pages[4];
    REQUIRE(srv_prefix_lookup(pc, t, 2, pages) == 2);
    REQUIRE(dsv_seq_attach(ctx, 1, pages, 2) == DSV_OK);
    /* Only pages 3 and 2 can go, the leaf first. */
    CHECK_EQ_INT(srv_prefix_evict(pc, 1), 1);
    CHECK_EQ_INT(srv_prefix_lookup(pc, t, 4, pages), 3);
    CHECK_EQ_INT(srv_prefix_evict(pc, 8), 1);
    CHECK_EQ_INT(srv_prefix_lookup(pc, t, 4, pages), 2);
    CHECK_EQ_INT(srv_prefix_entries(pc), 2);
    CHECK_EQ_INT(used_pages(ctx), 2);
    /* Once unused, the rest goes too, a whole chain in one call. */
    dsv_seq_reset(ctx, 1);
    CHECK_EQ_INT(srv_prefix_evict(pc, 8), 2);
    CHECK_EQ_INT(srv_prefix_entries(pc), 0);
    CHECK_EQ_INT(used_pages(ctx), 0);
    srv_prefix_free(pc);
    dsv_context_close(ctx);
    dsv_model_close(m);
}

TEST(prefix_cache_evicts_least_recently_used) {
    /* Two chains of two pages; the one looked up last survives. */
    int32_t a[128], b[128];
    for (int i = 0; i < 128; i++) {
        a[i] = (int32_t)(20 + i);
        b[i] = (int32_t)(400 + i);
    }
    dsv_model *m;
    srv_prefix *pc;
    dsv_context *ctx = setup(&m, a, 128, &pc);
    dsv_seq_reset(ctx, 0);
    float *lg = malloc(sizeof(float) * (size_t)dsv_model_config(m)->vocab_size);
    dsv_batch_entry e = {0, 128, b, DSV_LOGITS_LAST};
    REQUIRE(dsv_forward(ctx, &e, 1, lg) == DSV_OK);
    free(lg);
    const int32_t *seq_pages;
    int np;
    dsv_seq_pages(ctx, 0, &seq_pages, &np);
    srv_prefix_insert(pc, b, seq_pages, 2);
    dsv_seq_reset(ctx, 0);
    int32_t pages[2];
    CHECK_EQ_INT(srv_prefix_lookup(pc, a, 2, pages), 2); /* a is now the more recent */
    CHECK_EQ_INT(srv_prefix_evict(pc, 2), 2);
    CHECK_EQ_INT(srv_prefix_lookup(pc, a, 2, pages), 2);
    CHECK_EQ_INT(srv_prefix_lookup(pc, b, 2, pages), 0);
    srv_prefix_free(pc);
    dsv_context_close(ctx);
    dsv_model_close(m);
}
