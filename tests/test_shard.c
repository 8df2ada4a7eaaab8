/* test_shard.c: which part of a model each rank holds (shard.c), without
 * MPI: the reference's split for the real model, whole fp8 blocks and
 * complete coverage for any shape and rank count, shard file lookup. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fixture.h"
#include "format/shard.h"
#include "test.h"

TEST(shard_plan_is_the_references_for_the_real_model) {
    dsv_config c;
    REQUIREF(dsv_config_parse(&c, fixture_full_config, "671B") == DSV_OK, "%s", dsv_errmsg());
    for (int n = 2; n <= 16; n *= 2)
        for (int r = 0; r < n; r++) {
            dsv_shard s;
            dsv_shard_plan(&s, &c, r, n);
            /* convert.py: every split dimension cut into n equal slices. */
            CHECK(s.head0 == r * 128 / n && s.head1 == (r + 1) * 128 / n);
            CHECK(s.expert0 == r * 256 / n && s.expert1 == (r + 1) * 256 / n);
            CHECK(s.inter0 == r * 18432 / n && s.inter1 == (r + 1) * 18432 / n);
            CHECK(s.shared0 == r * 2048 / n && s.shared1 == (r + 1) * 2048 / n);
            CHECK(s.vocab0 == r * 129280 / n && s.vocab1 == (r + 1) * 129280 / n);
        }
}

/* Every rank's ranges tile each dimension in rank order; fp8 cuts fall on
 * 128-row and 128-column blocks of every split matrix. */
static void check_plans(const dsv_config *c, const char *name) {
    const int QH = c->qk_nope_head_dim + c->qk_rope_head_dim, KVH = c->qk_nope_head_dim + c->v_head_dim;
    for (int n = 1; n <= 20; n++) {
        dsv_shard prev = {0};
        for (int r = 0; r < n; r++) {
            dsv_shard s;
            dsv_shard_plan(&s, c, r, n);
            CHECK(s.rank == r && s.size == n);
            const int lo[5] = {s.head0, s.inter0, s.shared0, s.expert0, s.vocab0};
            const int hi[5] = {s.head1, s.inter1, s.shared1, s.expert1, s.vocab1};
            const int plo[5] = {prev.head1, prev.inter1, prev.shared1, prev.expert1, prev.vocab1};
            const int full[5] = {c->n_heads, c->inter_dim, c->n_shared_experts * c->moe_inter_dim,
                                 c->n_routed_experts, c->vocab_size};
            for (int d = 0; d < 5; d++) {
                CHECKF(lo[d] == (r ? plo[d] : 0) && lo[d] <= hi[d], "%s, %d ranks, rank %d, dimension %d: [%d, %d)",
                       name, n, r, d, lo[d], hi[d]);
                if (r == n - 1) CHECKF(hi[d] == full[d], "%s, %d ranks: dimension %d ends at %d", name, n, d, hi[d]);
            }
            if (c->fp8) {
                const int cuts[5] = {s.head0 * QH, s.head0 * KVH, s.head0 * c->v_head_dim, s.inter0, s.shared0};
                for (int k = 0; k < 5; k++)
                    CHECKF(cuts[k] % 128 == 0, "%s, %d ranks, rank %d: fp8 cut %d at %d", name, n, r, k, cuts[k]);
            }
            prev = s;
        }
    }
}

TEST(shard_plan_covers_every_shape) {
    static const char *dirs[] = {"conformance/public_sparse_fp8/hf", "conformance/public_sparse_bf16/hf"};
    dsv_config c;
    REQUIRE(dsv_config_parse(&c, fixture_full_config, "671B") == DSV_OK);
    check_plans(&c, "671B");
    REQUIREF(dsv_config_load(&c, "models/tiny") == DSV_OK, "%s", dsv_errmsg());
    check_plans(&c, "tiny");
    for (int i = 0; i < 2; i++) {
        REQUIREF(dsv_config_load(&c, test_shared(dirs[i])) == DSV_OK, "%s", dsv_errmsg());
        check_plans(&c, dirs[i]);
    }
    /* The fp8 conformance model (6 heads of 96 q rows): heads go in groups
     * of 4, so 2 ranks hold 4 and 2 heads and a third rank none. */
    REQUIRE(dsv_config_load(&c, test_shared(dirs[0])) == DSV_OK);
    dsv_shard s;
    dsv_shard_plan(&s, &c, 1, 2);
    CHECK(s.head0 == 4 && s.head1 == 6);
    dsv_shard_plan(&s, &c, 0, 3);
    CHECK(s.head0 == 0 && s.head1 == 0);
}

TEST(shard_files_are_found_by_rank_and_size) {
    char dir[1100], path[1200];
    int found = -1;
    snprintf(dir, sizeof dir, "%s/m", test_tmpdir());
    REQUIRE(mkdir(dir, 0700) == 0);
    dsv_shard_file_name(path, sizeof path, 3, 8);
    CHECK_STR(path, "model3-mp8.safetensors");
    /* A plain checkpoint: no shards. */
    CHECK(dsv_shard_find(dir, 0, 2, path, sizeof path, &found) == DSV_OK && found == 0);
    CHECK(dsv_shard_split(dir, 2) == 0);
    snprintf(path, sizeof path, "%s/model1-mp2.safetensors", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fclose(f);
    CHECK(dsv_shard_split(dir, 4) == 2);
    CHECK(dsv_shard_find(dir, 1, 2, path, sizeof path, &found) == DSV_OK && found == 1);
    CHECK(strstr(path, "/model1-mp2.safetensors") != NULL);
    /* Rank 0's file missing; another split. */
    CHECK(dsv_shard_find(dir, 0, 2, path, sizeof path, &found) == DSV_ERR_IO && found == 0);
    CHECK(strstr(dsv_errmsg(), "model0-mp2.safetensors") != NULL);
    CHECK(dsv_shard_find(dir, 0, 4, path, sizeof path, &found) == DSV_ERR_MODEL);
    CHECK(strstr(dsv_errmsg(), "written for 2 ranks") != NULL);
}
