/* test_shard.c: which part of a model each rank holds (shard.c), without
 * MPI: the reference's split for the real model, whole fp8 blocks and
 * complete coverage for any shape and rank count, whole blocks of a GGUF
 * file's quantized types (and the refusal of a cut inside one), shard file
 * lookup. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fixture.h"
#include "format/shard.h"
#include "kernels/quant.h"
#include "model/model.h"
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

/* A GGUF file's plan (dsv_shard_plan_blocks): every column cut of o_proj
 * and of the down projections on a block of the given size (or at the end),
 * besides tiling each dimension; with fp8 also the fp8 cuts. */
static void check_block_plans(const dsv_config *c, const char *name, const dsv_shard_blocks *b) {
    const int V = c->v_head_dim, S = c->n_shared_experts * c->moe_inter_dim;
    for (int n = 1; n <= 20; n++) {
        int next[5] = {0};
        for (int r = 0; r < n; r++) {
            dsv_shard s;
            dsv_shard_plan_blocks(&s, c, r, n, b);
            const int lo[5] = {s.head0, s.inter0, s.shared0, s.expert0, s.vocab0};
            const int hi[5] = {s.head1, s.inter1, s.shared1, s.expert1, s.vocab1};
            for (int d = 0; d < 5; d++) {
                CHECKF(lo[d] == next[d] && lo[d] <= hi[d], "%s, %d ranks, rank %d, dimension %d: [%d, %d)", name, n,
                       r, d, lo[d], hi[d]);
                next[d] = hi[d];
            }
            /* Column cuts: o_proj's, the dense down_proj's, the shared one's. */
            const int cut[3][2] = {{s.head0 * V, s.head1 * V}, {s.inter0, s.inter1}, {s.shared0, s.shared1}};
            const int blk[3] = {b->o, b->inter, b->shared}, end[3] = {c->n_heads * V, c->inter_dim, S};
            for (int k = 0; k < 3; k++)
                for (int e = 0; e < 2; e++)
                    CHECKF(cut[k][e] % blk[k] == 0 || cut[k][e] == end[k], "%s, %d ranks, rank %d: cut %d at %d, "
                           "blocks of %d", name, n, r, k, cut[k][e], blk[k]);
            if (b->fp8)
                CHECKF(s.head0 * (c->qk_nope_head_dim + c->qk_rope_head_dim) % 128 == 0 && s.inter0 % 128 == 0 &&
                       s.shared0 % 128 == 0, "%s, %d ranks, rank %d: an fp8 cut inside a block", name, n, r);
        }
        const int full[5] = {c->n_heads, c->inter_dim, S, c->n_routed_experts, c->vocab_size};
        for (int d = 0; d < 5; d++) CHECKF(next[d] == full[d], "%s, %d ranks: dimension %d ends at %d", name, n, d, next[d]);
    }
}

TEST(shard_plan_keeps_quantized_blocks_whole) {
    dsv_config c;
    REQUIRE(dsv_config_parse(&c, fixture_full_config, "671B") == DSV_OK);
    static const dsv_shard_blocks bs[] = {{1, 1, 1, 0}, {32, 32, 32, 0}, {256, 256, 256, 0}, {32, 256, 256, 0},
                                          {256, 256, 32, 1}};
    for (size_t i = 0; i < sizeof bs / sizeof *bs; i++) check_block_plans(&c, "671B", &bs[i]);
    /* The 671B model as Q4_K_M (Q6_K down projections, blocks of 256) at
     * 16 ranks: 8 heads each (1024 o_proj columns), the dense MLP's 18432
     * units in 72 blocks (4 or 5 per rank), the shared expert's 2048 in 8. */
    dsv_shard s;
    dsv_shard_plan_blocks(&s, &c, 3, 16, &bs[2]);
    CHECK(s.head0 == 24 && s.head1 == 32 && s.inter0 == 3 * 72 / 16 * 256 && s.inter1 == 4 * 72 / 16 * 256);
    CHECK(s.expert0 == 48 && s.expert1 == 64 && s.shared0 == 256 && s.shared1 == 512);
    /* With no blocks it is the plain plan. */
    dsv_shard a;
    dsv_shard_plan_blocks(&s, &c, 5, 8, &bs[0]);
    dsv_shard_plan(&a, &c, 5, 8);
    CHECK(!memcmp(&s, &a, sizeof s));
    REQUIREF(dsv_config_load(&c, "models/tiny") == DSV_OK, "%s", dsv_errmsg());
    c.fp8 = 0; /* as from a GGUF file: its weights are not fp8 (bs[4] asks for fp8 cuts) */
    for (size_t i = 0; i < sizeof bs / sizeof *bs; i++) check_block_plans(&c, "tiny", &bs[i]);
    /* tiny's 4 heads of 64 values: o_proj blocks of 256 hold all 4 heads,
     * so one rank holds them (the last: granules are dealt as r*G/N);
     * blocks of 32 split them 2 and 2. */
    dsv_shard_plan_blocks(&s, &c, 0, 2, &bs[2]);
    CHECK(s.head0 == 0 && s.head1 == 0);
    dsv_shard_plan_blocks(&s, &c, 1, 2, &bs[2]);
    CHECK(s.head0 == 0 && s.head1 == 4);
    dsv_shard_plan_blocks(&s, &c, 1, 2, &bs[3]);
    CHECK(s.head0 == 2 && s.head1 == 4 && s.inter0 == 256 && s.shared0 == 0 && s.shared1 == 256);
}

TEST(gguf_column_cut_inside_a_block_is_refused) {
    CHECK(dsv_model_gguf_check_cut("m.gguf", "blk.0.attn_output.weight", DSV_GGML_Q4_K, 512, 256, 512, 1, 2) == DSV_OK);
    CHECK(dsv_model_gguf_check_cut("m.gguf", "blk.0.attn_output.weight", DSV_GGML_Q8_0, 512, 96, 160, 1, 3) == DSV_OK);
    CHECK(dsv_model_gguf_check_cut("m.gguf", "x", DSV_GGML_BF16, 512, 1, 3, 1, 3) == DSV_OK);
    /* The end of a row is a cut whatever the block. */
    CHECK(dsv_model_gguf_check_cut("m.gguf", "x", DSV_GGML_Q8_0, 96, 64, 96, 1, 2) == DSV_OK);
    CHECK(dsv_model_gguf_check_cut("m.gguf", "blk.3.ffn_down.weight", DSV_GGML_Q6_K, 768, 128, 768, 1, 2) ==
          DSV_ERR_UNSUPPORTED);
    const char *e = dsv_errmsg();
    CHECKF(strstr(e, "m.gguf") && strstr(e, "'blk.3.ffn_down.weight'") && strstr(e, "Q6_K") && strstr(e, "256") &&
           strstr(e, "[128, 768)") && strstr(e, "rank 1 of 2") && !strchr(e, '\n'), "%s", e);
    CHECK(dsv_model_gguf_check_cut("m.gguf", "x", DSV_GGML_Q4_0, 128, 0, 48, 0, 2) == DSV_ERR_UNSUPPORTED);
}
