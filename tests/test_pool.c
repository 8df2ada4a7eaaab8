/* test_pool.c: how decoding shares its work between threads: the chunk
 * plan of a group of linear layers (linear.c), and a block-quantized model
 * (whose inputs are quantized once per layer for all its chunks, and whose
 * MoE runs the router's gate with the shared expert's up projections)
 * giving the same logits bit for bit at every thread count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"
#include "model/context.h"
#include "test.h"

/* Every row of every job in exactly one chunk, chunks in job order, and
 * the planned sizes: whole passes of 64 rows outside the tail, 16-row tiles
 * inside it, a tail of at least nth * 256 KB (or the whole group) for
 * several threads and none for one. */
static void check_plan(const size_t *rb, const int *n_out, int n, int nth) {
    dsv_lin_chunks pl;
    dsv_lin_plan(&pl, rb, n_out, n, nth);
    size_t total = 0, tail = 0;
    for (int j = 0; j < n; j++) total += (size_t)n_out[j] * rb[j];
    CHECK_EQ_INT(pl.first[0], 0);
    for (int j = 0; j < n; j++) {
        int next = 0;
        CHECKF(pl.split[j] >= 0 && pl.split[j] <= n_out[j] && (pl.split[j] % 16 == 0 || pl.split[j] == n_out[j]),
               "job %d: split %d of %d rows", j, pl.split[j], n_out[j]);
        for (int c = pl.first[j]; c < pl.first[j + 1]; c++) {
            int r0, r1;
            dsv_lin_chunk(&pl, n_out, j, c, &r0, &r1);
            CHECKF(r0 == next && r1 > r0 && r1 <= n_out[j], "job %d chunk %d: rows [%d, %d) after %d", j, c, r0, r1, next);
            const int big = r0 < pl.split[j];
            CHECKF(big ? r1 <= pl.split[j] : r0 >= pl.split[j], "job %d chunk %d straddles the split", j, c);
            CHECKF(r1 == n_out[j] || r1 == pl.split[j] || (r1 - r0) % (big ? 64 : 16) == 0, "job %d chunk %d: %d rows",
                   j, c, r1 - r0);
            next = r1;
        }
        CHECKF(next == n_out[j], "job %d: rows up to %d of %d", j, next, n_out[j]);
        tail += (size_t)(n_out[j] - pl.split[j]) * rb[j];
    }
    if (nth == 1) CHECKF(tail == 0, "one thread: tail of %zu bytes", tail);
    else CHECKF(tail >= ((size_t)nth << 18 < total ? (size_t)nth << 18 : total), "%d threads: tail %zu of %zu bytes", nth,
                tail, total);
}

TEST(pool_lin_plan_covers_every_row_once) {
    /* A decode group of MLA (Q4_K rows of 2048, bf16, fp32), a MoE wave,
     * a job smaller than a chunk, one larger than the tail, odd counts. */
    const size_t rb1[] = {1152, 1152, 4096, 8192}, rb2[] = {1152, 1152, 1152, 1152, 288, 288};
    const int n1[] = {768, 576, 128, 64}, n2[] = {512, 512, 512, 512, 2048, 2048};
    const size_t rb3[] = {8192, 100}, rb4[] = {1};
    const int n3[] = {32000, 37}, n4[] = {1};
    for (int nth = 1; nth <= 4; nth++) {
        check_plan(rb1, n1, 4, nth);
        check_plan(rb2, n2, 6, nth);
        check_plan(rb3, n3, 2, nth);
        check_plan(rb4, n4, 1, nth);
    }
    /* One thread keeps the 512 KB chunks everywhere. */
    dsv_lin_chunks pl;
    dsv_lin_plan(&pl, rb1, n1, 4, 1);
    CHECK_EQ_INT(pl.rows[0], 448);
    CHECK_EQ_INT(pl.first[1], 2);
}

/* A Q4_K_M GGUF of the conformance checkpoint: decoding steps, small
 * batches and a prefill give the same logits at 1, 2 and 3 threads. */
TEST(pool_quantized_threads_do_not_change_results) {
    char path[1024], cmd[4096];
    snprintf(path, sizeof path, "%s/pool-q4km.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --type Q4_K_M 2>&1", test_bin(),
             test_shared("conformance/public_sparse_bf16/hf"), path);
    test_run_ok(cmd, NULL);
    dsv_model *m = NULL;
    REQUIREF(dsv_model_open(&m, path, NULL) == DSV_OK, "%s", dsv_errmsg());
    const int V = dsv_model_config(m)->vocab_size;
    enum { NT = 60 };
    static const int calls[] = {20, 1, 1, 3, 16, 1, 17, 1};
    int32_t t[NT];
    uint32_t seed = 9;
    for (int i = 0; i < NT; i++) { seed = seed * 1664525u + 1013904223u; t[i] = (int32_t)((seed >> 8) % (uint32_t)V); }
    float *ref = malloc(sizeof(float) * NT * V), *got = malloc(sizeof(float) * NT * V);
    REQUIRE(ref && got);
    for (int threads = 1; threads <= 3; threads++) {
        dsv_context_params p = dsv_context_default_params();
        p.n_ctx = 128;
        p.n_batch = 64;
        p.n_threads = threads;
        dsv_context *ctx = NULL;
        REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
        float *out = threads == 1 ? ref : got;
        int pos = 0;
        for (size_t i = 0; i < sizeof calls / sizeof *calls; i++) {
            dsv_batch_entry e = {0, calls[i], t + pos, DSV_LOGITS_ALL};
            REQUIREF(dsv_forward(ctx, &e, 1, out + (size_t)pos * V) == DSV_OK, "%s", dsv_errmsg());
            pos += calls[i];
        }
        REQUIRE(pos == NT);
        if (threads > 1) CHECKF(!memcmp(ref, got, sizeof(float) * NT * V), "%d threads differ from one", threads);
        dsv_context_close(ctx);
    }
    free(ref);
    free(got);
    dsv_model_close(m);
}
