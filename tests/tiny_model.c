/* tiny_model.c: see tiny_model.h. */
#include "tiny_model.h"

#include "dsv32.h"
#include "dsv32_synth.h"
#include "test.h"

const char *tiny_config =
    "{\"architectures\": [\"DeepseekV32ForCausalLM\"], \"model_type\": \"deepseek_v32\",\n"
    " \"vocab_size\": 500, \"hidden_size\": 256, \"intermediate_size\": 384, \"moe_intermediate_size\": 128,\n"
    " \"num_hidden_layers\": 2, \"first_k_dense_replace\": 1, \"num_attention_heads\": 2,\n"
    " \"n_routed_experts\": 8, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 4, \"topk_group\": 2,\n"
    " \"routed_scaling_factor\": 2.5, \"scoring_func\": \"sigmoid\", \"topk_method\": \"noaux_tc\",\n"
    " \"q_lora_rank\": 128, \"kv_lora_rank\": 128, \"qk_nope_head_dim\": 64, \"qk_rope_head_dim\": 32,\n"
    " \"v_head_dim\": 64, \"index_n_heads\": 4, \"index_head_dim\": 128, \"index_topk\": 16,\n"
    " \"num_nextn_predict_layers\": 1, \"max_position_embeddings\": 1024, \"rope_theta\": 10000.0,\n"
    " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": 256,\n"
    "   \"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": 1.0, \"mscale_all_dim\": 1.0}}\n";

const char *tiny_write(const char *name, const char *text) {
    static char path[8][1024];
    static int slot;
    char *p = path[slot++ & 7];
    snprintf(p, sizeof path[0], "%s/%s", test_tmpdir(), name);
    FILE *f = fopen(p, "w");
    REQUIRE(f);
    fputs(text, f);
    fclose(f);
    return p;
}

const char *tiny_synth(const char *sub, const char *config, int dtype, uint64_t seed, uint64_t shard_bytes) {
    static char dir[4][1024];
    static int slot;
    char *d = dir[slot++ & 3];
    snprintf(d, sizeof dir[0], "%s/%s", test_tmpdir(), sub);
    dsv_synth_params p = dsv_synth_default_params();
    p.dtype = dtype;
    p.seed = seed;
    if (shard_bytes) p.shard_bytes = shard_bytes;
    dsv_synth_info info;
    REQUIREF(dsv_synth(config, d, &p, &info) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(info.fp8, dtype == DSV_SYNTH_FP8);
    return d;
}
