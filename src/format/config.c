/* config.c: Hugging Face config.json -> dsv_config.
 *
 * Field names are those of the Hugging Face DeepSeek-V3.2 config (spec 2.2);
 * the reference's ModelArgs names are in include/dsv32.h. A field the model
 * needs is required (no silent defaults for shapes); optional fields take the
 * reference's defaults. Every error names the field. */
#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "base/util.h"

typedef struct {
    const cJSON *root;
    const char *name;
    int status;
} cfg_reader;

/* Reads an integer field in [0, max]; required fields missing give an error.
 * The range is checked on the double, before the conversion, and the upper
 * bounds (far above any DeepSeek model, below where a product of two fields
 * could leave an int) keep the size arithmetic of model.c and shard.c exact. */
static int get_int(cfg_reader *r, const char *key, int *out, int required, int def, int max) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            r->status = dsv_error(DSV_ERR_CONFIG, "%s: missing field '%s'", r->name, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        fabs(v->valuedouble) > 2147483647.0) {
        r->status = dsv_error(DSV_ERR_CONFIG, "%s: field '%s' must be an integer", r->name, key);
        return -1;
    }
    if (v->valuedouble < 0 || v->valuedouble > max) {
        r->status = dsv_error(DSV_ERR_CONFIG, "%s: field '%s' = %.0f is out of the supported range [0, %d]",
                              r->name, key, v->valuedouble, max);
        return -1;
    }
    *out = (int)v->valuedouble;
    return 0;
}

/* Reads a number field (a float; |x| <= FLT_MAX, so the conversion is
 * defined). */
static int get_num(cfg_reader *r, const cJSON *obj, const char *key, float *out, int required,
                   float def, const char *ctx) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            r->status = dsv_error(DSV_ERR_CONFIG, "%s: missing field '%s%s'", r->name, ctx, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) {
        r->status = dsv_error(DSV_ERR_CONFIG, "%s: field '%s%s' must be a number", r->name, ctx, key);
        return -1;
    }
    if (!(fabs(v->valuedouble) <= FLT_MAX)) {
        r->status = dsv_error(DSV_ERR_CONFIG, "%s: field '%s%s' = %g is out of range", r->name, ctx, key,
                              v->valuedouble);
        return -1;
    }
    *out = (float)v->valuedouble;
    return 0;
}

static const char *get_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The architecture must say DeepSeek-V3.2 (DSA): V3/V3.1 have no indexer and
 * other families have other maths, so guessing would give garbage. */
static int check_arch(cfg_reader *r) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(r->root, "architectures");
    const char *mt = get_str(r->root, "model_type");
    int ok = 0;
    if (cJSON_IsArray(a)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, a) if (cJSON_IsString(e) && !strcmp(e->valuestring, "DeepseekV32ForCausalLM")) ok = 1;
    }
    if (mt && !strcmp(mt, "deepseek_v32")) ok = 1;
    if (!ok) {
        const char *got = mt ? mt : "(none)";
        if (cJSON_IsArray(a) && cJSON_GetArraySize(a) > 0 && cJSON_IsString(cJSON_GetArrayItem(a, 0)))
            got = cJSON_GetArrayItem(a, 0)->valuestring;
        return r->status = dsv_error(DSV_ERR_CONFIG,
                                     "%s: unsupported architecture '%s' (expected architectures "
                                     "[\"DeepseekV32ForCausalLM\"] or model_type \"deepseek_v32\")",
                                     r->name, got);
    }
    return 0;
}

#define REQ(key, field, max) if (get_int(&r, key, &c.field, 1, 0, max)) goto fail
#define OPT(key, field, def, max) if (get_int(&r, key, &c.field, 0, def, max)) goto fail
#define CHECK(cond, ...) do { if (!(cond)) { r.status = dsv_error(DSV_ERR_CONFIG, __VA_ARGS__); goto fail; } } while (0)

int dsv_config_parse(dsv_config *cfg, const char *json, const char *name) {
    dsv_config c;
    memset(&c, 0, sizeof c);
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        int line = 1;
        if (!root && at)
            for (const char *p = json; p < at && *p; p++) line += *p == '\n';
        cJSON_Delete(root);
        if (!root) return dsv_error(DSV_ERR_FORMAT, "%s: invalid JSON near line %d", name, line);
        return dsv_error(DSV_ERR_FORMAT, "%s: expected a JSON object", name);
    }
    cfg_reader r = {root, name, 0};
    if (check_arch(&r)) goto fail;

    /* Upper bounds: DeepSeek-V3.2 has vocab 129280, hidden 7168, dense MLP
     * 18432, expert 2048, 61 layers, 128 heads, 256 experts (8 active, 1
     * shared), q/kv LoRA 1536/512, head dims 128/64/128, indexer 64 x 128,
     * top-2048, 163840 positions. The products model.c and shard.c form in
     * int (heads x head dim, shared experts x expert width, indexer heads x
     * 128) stay below 2^31 with these. */
    REQ("vocab_size", vocab_size, 1 << 24);
    REQ("hidden_size", dim, 1 << 16);
    REQ("intermediate_size", inter_dim, 1 << 20);
    REQ("moe_intermediate_size", moe_inter_dim, 1 << 20);
    REQ("num_hidden_layers", n_layers, 1 << 12);
    REQ("first_k_dense_replace", n_dense_layers, 1 << 12);
    REQ("num_attention_heads", n_heads, 1 << 12);
    REQ("n_routed_experts", n_routed_experts, 1 << 16);
    REQ("n_shared_experts", n_shared_experts, 1 << 8);
    REQ("num_experts_per_tok", n_activated_experts, 1 << 16);
    OPT("n_group", n_expert_groups, 1, 1 << 16);
    OPT("topk_group", n_limited_groups, 1, 1 << 16);
    REQ("q_lora_rank", q_lora_rank, 1 << 16);
    REQ("kv_lora_rank", kv_lora_rank, 1 << 16);
    REQ("qk_nope_head_dim", qk_nope_head_dim, 1 << 12);
    REQ("qk_rope_head_dim", qk_rope_head_dim, 1 << 12);
    REQ("v_head_dim", v_head_dim, 1 << 12);
    REQ("index_n_heads", index_n_heads, 1 << 12);
    REQ("index_head_dim", index_head_dim, 1 << 12);
    REQ("index_topk", index_topk, 1 << 24);
    {
        /* A top-k per layer (written by `dsv32 analyze --suggest`). */
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "dsa_topk_per_layer");
        if (e && !cJSON_IsNull(e)) {
            CHECK(cJSON_IsArray(e), "%s: field 'dsa_topk_per_layer' must be a list of integers", name);
            const int n = cJSON_GetArraySize(e);
            CHECK(n == c.n_layers && n <= DSV_MAX_TOPK_LAYERS,
                  "%s: field 'dsa_topk_per_layer' has %d values for %d layers (at most %d supported)", name, n,
                  c.n_layers, DSV_MAX_TOPK_LAYERS);
            for (int i = 0; i < n; i++) {
                const cJSON *v = cJSON_GetArrayItem(e, i);
                CHECK(cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= 1 &&
                          v->valuedouble <= (double)(1 << 30),
                      "%s: field 'dsa_topk_per_layer' value %d must be an integer in [1, 2^30]", name, i);
                c.index_topk_layer[i] = (int)v->valuedouble;
            }
        }
    }
    OPT("max_position_embeddings", max_position_embeddings, 0, 1 << 24);
    OPT("num_nextn_predict_layers", n_mtp_layers, 0, 1 << 12);
    OPT("bos_token_id", bos_id, 0, 1 << 24);
    {
        /* eos_token_id may be a list; the first entry is the end of turn. */
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
        if (cJSON_IsArray(e) && cJSON_GetArraySize(e) > 0) e = cJSON_GetArrayItem(e, 0);
        c.eos_id = 1;
        if (e && !cJSON_IsNull(e)) {
            /* Range first: converting 1e20 to int is undefined. */
            CHECK(cJSON_IsNumber(e) && e->valuedouble == floor(e->valuedouble) && e->valuedouble >= 0 &&
                      e->valuedouble < (1 << 24),
                  "%s: field 'eos_token_id' must be an integer in [0, %d)", name, 1 << 24);
            c.eos_id = (int)e->valuedouble;
        }
    }
    int moe_freq;
    if (get_int(&r, "moe_layer_freq", &moe_freq, 0, 1, 1 << 12)) goto fail;
    CHECK(moe_freq == 1, "%s: field 'moe_layer_freq' = %d is not supported (every layer after "
          "first_k_dense_replace is MoE in DeepSeek-V3.2)", name, moe_freq);
    if (get_num(&r, root, "rms_norm_eps", &c.rms_norm_eps, 0, 1e-6f, "")) goto fail;
    if (get_num(&r, root, "rope_theta", &c.rope_theta, 0, 10000.0f, "")) goto fail;
    if (get_num(&r, root, "routed_scaling_factor", &c.route_scale, 0, 1.0f, "")) goto fail;

    const char *sf = get_str(root, "scoring_func");
    if (!sf || !strcmp(sf, "sigmoid")) c.score_func = DSV_SCORE_SIGMOID;
    else if (!strcmp(sf, "softmax")) c.score_func = DSV_SCORE_SOFTMAX;
    else CHECK(0, "%s: field 'scoring_func' = \"%s\" (expected \"sigmoid\" or \"softmax\")", name, sf);
    {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "norm_topk_prob");
        c.norm_topk_prob = n ? cJSON_IsTrue(n) : 1;
    }
    const char *tm = get_str(root, "topk_method");
    CHECK(!tm || !strcmp(tm, "noaux_tc") || !strcmp(tm, "greedy") || !strcmp(tm, "group_limited_greedy"),
          "%s: field 'topk_method' = \"%s\" is not supported", name, tm);

    /* RoPE scaling: YaRN as the reference applies it (spec section 6). */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    c.rope_factor = 1;
    c.original_seq_len = c.max_position_embeddings;
    c.beta_fast = 32;
    c.beta_slow = 1;
    c.mscale = 1;
    if (rs && !cJSON_IsNull(rs)) {
        CHECK(cJSON_IsObject(rs), "%s: field 'rope_scaling' must be an object", name);
        const char *type = get_str(rs, "type");
        if (!type) type = get_str(rs, "rope_type");
        CHECK(type && !strcmp(type, "yarn"), "%s: field 'rope_scaling.type' = \"%s\" is not supported "
              "(expected \"yarn\")", name, type ? type : "(missing)");
        if (get_num(&r, rs, "factor", &c.rope_factor, 1, 0, "rope_scaling.")) goto fail;
        float orig;
        if (get_num(&r, rs, "original_max_position_embeddings", &orig, 1, 0, "rope_scaling.")) goto fail;
        CHECK(orig >= 0 && orig <= (1 << 24) && orig == floorf(orig), "%s: field "
              "'rope_scaling.original_max_position_embeddings' must be an integer in [0, %d]", name, 1 << 24);
        c.original_seq_len = (int)orig;
        if (get_num(&r, rs, "beta_fast", &c.beta_fast, 0, 32, "rope_scaling.")) goto fail;
        if (get_num(&r, rs, "beta_slow", &c.beta_slow, 0, 1, "rope_scaling.")) goto fail;
        float ms, msall;
        if (get_num(&r, rs, "mscale", &ms, 0, 1, "rope_scaling.")) goto fail;
        if (get_num(&r, rs, "mscale_all_dim", &msall, 0, ms, "rope_scaling.")) goto fail;
        /* The reference has one mscale (squared into the softmax scale, cos and
         * sin unscaled); Hugging Face's YaRN would scale cos/sin by the ratio
         * of the two, which the reference never does. */
        CHECK(ms == msall, "%s: rope_scaling.mscale (%g) != rope_scaling.mscale_all_dim (%g) is not "
              "supported", name, ms, msall);
        c.mscale = ms;
        CHECK(c.max_position_embeddings > 0, "%s: missing field 'max_position_embeddings'", name);
        CHECK(c.rope_factor >= 1, "%s: field 'rope_scaling.factor' must be >= 1", name);
        CHECK(c.original_seq_len > 0, "%s: field 'rope_scaling.original_max_position_embeddings' must be > 0",
              name);
        /* model.py turns YaRN on when max_seq_len > original_seq_len. */
        c.yarn = c.max_position_embeddings > c.original_seq_len;
    }

    /* Quantization: fp8 e4m3 weights with 128x128 blocks; the activation scale
     * format applies to the indexer and the latent-KV round trip even without
     * fp8 weights (spec 4.1b). */
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    c.scale_fmt = DSV_SCALE_FMT_NONE;
    if (q && !cJSON_IsNull(q)) {
        CHECK(cJSON_IsObject(q), "%s: field 'quantization_config' must be an object", name);
        const char *qm = get_str(q, "quant_method");
        CHECK(qm && !strcmp(qm, "fp8"), "%s: quantization_config.quant_method = \"%s\" is not supported "
              "(expected \"fp8\")", name, qm ? qm : "(missing)");
        const char *fmt = get_str(q, "fmt");
        CHECK(!fmt || !strcmp(fmt, "e4m3"), "%s: quantization_config.fmt = \"%s\" is not supported "
              "(expected \"e4m3\")", name, fmt);
        const cJSON *wb = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
        CHECK(!wb || (cJSON_IsArray(wb) && cJSON_GetArraySize(wb) == 2 &&
                      cJSON_GetArrayItem(wb, 0)->valuedouble == 128 &&
                      cJSON_GetArrayItem(wb, 1)->valuedouble == 128),
              "%s: quantization_config.weight_block_size must be [128, 128]", name);
        const cJSON *sfv = cJSON_GetObjectItemCaseSensitive(q, "scale_fmt");
        if (sfv && !cJSON_IsNull(sfv)) {
            CHECK(cJSON_IsString(sfv) && !strcmp(sfv->valuestring, "ue8m0"),
                  "%s: quantization_config.scale_fmt must be \"ue8m0\" or null", name);
            c.scale_fmt = DSV_SCALE_FMT_UE8M0;
        }
        c.fp8 = 1;
    }

    /* Consistency. */
    CHECK(c.vocab_size > 0 && c.dim > 0 && c.n_layers > 0 && c.n_heads > 0,
          "%s: vocab_size, hidden_size, num_hidden_layers and num_attention_heads must be > 0", name);
    CHECK(c.n_dense_layers >= 0 && c.n_dense_layers <= c.n_layers,
          "%s: first_k_dense_replace (%d) must be in [0, num_hidden_layers]", name, c.n_dense_layers);
    CHECK(c.n_dense_layers == 0 || c.inter_dim > 0, "%s: intermediate_size must be > 0", name);
    if (c.n_dense_layers < c.n_layers) {
        CHECK(c.n_routed_experts > 0 && c.moe_inter_dim > 0, "%s: n_routed_experts and "
              "moe_intermediate_size must be > 0", name);
        CHECK(c.n_activated_experts > 0 && c.n_activated_experts <= c.n_routed_experts,
              "%s: num_experts_per_tok (%d) must be in [1, n_routed_experts]", name, c.n_activated_experts);
        CHECK(c.n_expert_groups > 0 && c.n_routed_experts % c.n_expert_groups == 0,
              "%s: n_routed_experts (%d) must be a multiple of n_group (%d)", name, c.n_routed_experts,
              c.n_expert_groups);
        CHECK(c.n_limited_groups > 0 && c.n_limited_groups <= c.n_expert_groups,
              "%s: topk_group (%d) must be in [1, n_group]", name, c.n_limited_groups);
        CHECK(c.n_activated_experts <= c.n_limited_groups * (c.n_routed_experts / c.n_expert_groups),
              "%s: num_experts_per_tok exceeds the experts in topk_group groups", name);
        CHECK(c.n_expert_groups == 1 || c.n_routed_experts / c.n_expert_groups >= 2,
              "%s: group-limited routing needs at least 2 experts per group", name);
        CHECK(c.n_shared_experts >= 0, "%s: n_shared_experts must be >= 0", name);
    }
    CHECK(c.q_lora_rank > 0, "%s: q_lora_rank must be > 0 (the indexer reads the q LoRA output)", name);
    CHECK(c.kv_lora_rank > 0 && c.kv_lora_rank % 128 == 0,
          "%s: kv_lora_rank (%d) must be a positive multiple of 128 (the latent is fp8-quantized "
          "in 128-wide groups)", name, c.kv_lora_rank);
    CHECK(c.qk_nope_head_dim > 0 && c.v_head_dim > 0, "%s: qk_nope_head_dim and v_head_dim must be > 0", name);
    CHECK(c.qk_rope_head_dim > 0 && c.qk_rope_head_dim % 2 == 0,
          "%s: qk_rope_head_dim (%d) must be positive and even", name, c.qk_rope_head_dim);
    CHECK(c.index_head_dim == 128, "%s: index_head_dim = %d is not supported (the indexer's Hadamard "
          "transform and fp8 keys are 128 wide)", name, c.index_head_dim);
    CHECK(c.qk_rope_head_dim <= c.index_head_dim, "%s: qk_rope_head_dim exceeds index_head_dim", name);
    CHECK(c.index_n_heads > 0 && c.index_topk > 0, "%s: index_n_heads and index_topk must be > 0", name);
    CHECK(c.rms_norm_eps > 0, "%s: rms_norm_eps must be > 0", name);
    CHECK(c.rope_theta > 1, "%s: rope_theta must be > 1", name);
    CHECK(c.n_mtp_layers >= 0, "%s: num_nextn_predict_layers must be >= 0", name);
    CHECK(c.bos_id >= 0 && c.bos_id < c.vocab_size && c.eos_id >= 0 && c.eos_id < c.vocab_size,
          "%s: bos_token_id/eos_token_id out of the vocabulary", name);

    /* model.py: softmax_scale = qk_head_dim^-0.5, times mscale^2 under YaRN,
     * with mscale = 0.1 * mscale * ln(rope_factor) + 1 (computed in double,
     * used as a float scalar). */
    double scale = 1.0 / sqrt((double)(c.qk_nope_head_dim + c.qk_rope_head_dim));
    if (c.yarn) {
        double m = 0.1 * c.mscale * log((double)c.rope_factor) + 1.0;
        scale *= m * m;
    }
    c.softmax_scale = (float)scale;

    cJSON_Delete(root);
    *cfg = c;
    return DSV_OK;
fail:
    cJSON_Delete(root);
    return r.status ? r.status : DSV_ERR_CONFIG;
}

/* A config.json is a few KB; a file far past that is not one. */
#define CONFIG_MAX_BYTES ((size_t)64 << 20)

int dsv_config_load(dsv_config *cfg, const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    int st = dsv_path_join(buf, sizeof buf, path, n >= 5 && !strcmp(path + n - 5, ".json") ? NULL : "config.json");
    if (st) return st;
    char *text;
    st = dsv_read_file(buf, CONFIG_MAX_BYTES, &text, NULL);
    if (st) return st;
    st = dsv_config_parse(cfg, text, buf);
    free(text);
    return st;
}
