/* test_moe_group.c: the MoE's grouped expert work when decoding, on tiny
 * synthesized models with 8 routed experts per token and a shared one (the
 * DeepSeek-V3.2 shape): every thread count gives the same logits bit for
 * bit, in decoding steps, small batches and prefill alike, and the pool runs
 * per decoded token do not grow with the number of experts a token uses. */
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"
#include "dsv32_synth.h"
#include "test.h"
#include "tiny_model.h"

/* tiny_config's shape with 16 routed experts, 8 per token. */
static const char moe8_config[] =
    "{\"architectures\": [\"DeepseekV32ForCausalLM\"], \"model_type\": \"deepseek_v32\",\n"
    " \"vocab_size\": 500, \"hidden_size\": 256, \"intermediate_size\": 384, \"moe_intermediate_size\": 128,\n"
    " \"num_hidden_layers\": 2, \"first_k_dense_replace\": 1, \"num_attention_heads\": 2,\n"
    " \"n_routed_experts\": 16, \"n_shared_experts\": 1, \"num_experts_per_tok\": 8, \"n_group\": 4, \"topk_group\": 3,\n"
    " \"routed_scaling_factor\": 2.5, \"scoring_func\": \"sigmoid\", \"topk_method\": \"noaux_tc\",\n"
    " \"q_lora_rank\": 128, \"kv_lora_rank\": 128, \"qk_nope_head_dim\": 64, \"qk_rope_head_dim\": 32,\n"
    " \"v_head_dim\": 64, \"index_n_heads\": 4, \"index_head_dim\": 128, \"index_topk\": 16,\n"
    " \"max_position_embeddings\": 1024, \"rope_theta\": 10000.0,\n"
    " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": 256,\n"
    "   \"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": 1.0, \"mscale_all_dim\": 1.0}}\n";

enum { V = 500, NTOK = 60 };

static dsv_context *open_ctx(dsv_model *m, int threads) {
    dsv_context_params p = dsv_context_default_params();
    p.n_ctx = 128;
    p.n_batch = 64;
    p.n_threads = threads;
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
    return ctx;
}

static void tokens(int32_t *t, int n, uint32_t seed) {
    for (int i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; t[i] = (int32_t)((seed >> 8) % (uint32_t)V); }
}

/* Calls of 20 tokens (the general MoE path), single tokens, 3, 16 (the
 * largest small call) and 17; logits of every position. */
static void run(dsv_context *ctx, const int32_t *t, float *logits) {
    static const int calls[] = {20, 1, 1, 1, 3, 16, 1, 17};
    int pos = 0;
    for (size_t i = 0; i < sizeof calls / sizeof *calls; i++) {
        dsv_batch_entry e = {0, calls[i], t + pos, DSV_LOGITS_ALL};
        REQUIREF(dsv_forward(ctx, &e, 1, logits + (size_t)pos * V) == DSV_OK, "%s", dsv_errmsg());
        pos += calls[i];
    }
    REQUIRE(pos == NTOK);
}

TEST_LEVELS(moe_group_threads_do_not_change_results) {
    const char *cfg = tiny_write("moe8.json", moe8_config);
    int32_t t[NTOK];
    tokens(t, NTOK, 11);
    float *ref = malloc(sizeof(float) * NTOK * V), *got = malloc(sizeof(float) * NTOK * V);
    REQUIRE(ref && got);
    for (int dt = DSV_SYNTH_FP8; dt <= DSV_SYNTH_BF16; dt++) {
        dsv_model *m;
        const char *dir = tiny_synth(dt == DSV_SYNTH_FP8 ? "moe8-fp8" : "moe8-bf16", cfg, dt, 3, 0);
        REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
        for (int threads = 1; threads <= 3; threads++) {
            dsv_context *ctx = open_ctx(m, threads);
            run(ctx, t, threads == 1 ? ref : got);
            if (threads > 1) CHECKF(!memcmp(ref, got, sizeof(float) * NTOK * V), "%s, %d threads",
                                    dt == DSV_SYNTH_FP8 ? "fp8" : "bf16", threads);
            dsv_context_close(ctx);
        }
        dsv_model_close(m);
    }
    free(ref);
    free(got);
}

/* Pool runs of one decoded token after a prompt. */
static uint64_t decode_runs(const char *dir, int threads) {
    dsv_model *m;
    REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
    dsv_context *ctx = open_ctx(m, threads);
    int32_t t[21];
    float lg[V];
    tokens(t, 21, 5);
    dsv_batch_entry e = {0, 20, t, DSV_LOGITS_LAST};
    REQUIREF(dsv_forward(ctx, &e, 1, lg) == DSV_OK, "%s", dsv_errmsg());
    dsv_context_reset_stats(ctx);
    e = (dsv_batch_entry){0, 1, t + 20, DSV_LOGITS_LAST};
    REQUIREF(dsv_forward(ctx, &e, 1, lg) == DSV_OK, "%s", dsv_errmsg());
    dsv_context_stats s;
    dsv_context_get_stats(ctx, &s);
    dsv_context_close(ctx);
    dsv_model_close(m);
    return s.n_pool_runs;
}

/* All of a token's experts (8 routed and the shared one) share the pool runs
 * of its MoE: the same count as with 2 experts per token, the attention
 * being the same; one thread runs no pool at all. */
TEST(moe_group_runs_do_not_grow_with_experts) {
    const char *two = tiny_synth("moe2", tiny_write("moe2.json", tiny_config), DSV_SYNTH_BF16, 3, 0);
    const char *eight = tiny_synth("moe8", tiny_write("moe8.json", moe8_config), DSV_SYNTH_BF16, 3, 0);
    const uint64_t r2 = decode_runs(two, 2), r8 = decode_runs(eight, 2);
    CHECKF(r2 > 0 && r8 == r2, "pool runs per decoded token: %llu with 2 experts, %llu with 8",
           (unsigned long long)r2, (unsigned long long)r8);
    CHECK_EQ_INT(decode_runs(eight, 1), 0);
}
