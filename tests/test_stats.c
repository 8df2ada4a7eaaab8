/* test_stats.c: the context statistics (where time goes, what is read) and
 * random cache contents (dsv_seq_fill_random), on a tiny synthesized model.
 * Byte, flop and key counts are exact; times are only checked for
 * consistency, never against a speed. */
#include <stdlib.h>
#include <string.h>

#include "model/context.h"
#include "dsv32.h"
#include "format/safetensors.h"
#include "dsv32_synth.h"
#include "test.h"
#include "tiny_model.h"
#include "base/util.h"

static dsv_context *open_ctx(dsv_model *m, int n_ctx, int attn, int threads) {
    dsv_context_params p = dsv_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = 64;
    p.n_threads = threads;
    p.attn = attn;
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
    return ctx;
}

static void tokens(int32_t *t, int n, uint32_t seed) {
    for (int i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; t[i] = (int32_t)((seed >> 8) % 500u); }
}

static void forward(dsv_context *ctx, const int32_t *t, int n, float *logits) {
    dsv_batch_entry e = {0, n, t, DSV_LOGITS_LAST};
    REQUIREF(dsv_forward(ctx, &e, 1, logits) == DSV_OK, "%s", dsv_errmsg());
}

/* A linear's bytes (weight and block scales) and its n_out * n_in. */
static uint64_t lin_bytes(dsv_st *st, const char *prefix, uint64_t *macs) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", prefix);
    const dsv_st_tensor *w = dsv_st_find(st, n);
    REQUIREF(w, "%s missing", n);
    if (macs) *macs += (uint64_t)(w->shape[0] * w->shape[1]);
    snprintf(n, sizeof n, "%s.weight_scale_inv", prefix);
    const dsv_st_tensor *s = dsv_st_find(st, n);
    return w->nbytes + (s ? s->nbytes : 0);
}

/* What one decoded token must read, from the file itself: every attention
 * and indexer matrix, wkv_b once (the absorbed path), the dense MLP, the
 * router, num_experts_per_tok experts and the shared one, one embedding row
 * and the head. */
static void expected_decode(const char *dir, uint64_t *bytes, uint64_t *lin_macs, uint64_t *moe_macs) {
    char path[1200], p[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    dsv_st *st;
    REQUIRE(dsv_st_open(&st, path) == DSV_OK);
    static const char *attn[] = {"self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa",
                                 "self_attn.o_proj", "self_attn.indexer.wq_b", "self_attn.indexer.wk",
                                 "self_attn.indexer.weights_proj"};
    uint64_t b = 0;
    *lin_macs = *moe_macs = 0;
    for (int l = 0; l < 2; l++) {
        for (int i = 0; i < 7; i++) {
            snprintf(p, sizeof p, "model.layers.%d.%s", l, attn[i]);
            b += lin_bytes(st, p, lin_macs);
        }
        snprintf(p, sizeof p, "model.layers.%d.self_attn.kv_b_proj", l);
        b += lin_bytes(st, p, NULL);
        static const char *mlp[] = {"gate_proj", "up_proj", "down_proj"};
        for (int i = 0; i < 3; i++) {
            if (l == 0) snprintf(p, sizeof p, "model.layers.0.mlp.%s", mlp[i]);
            else snprintf(p, sizeof p, "model.layers.1.mlp.experts.0.%s", mlp[i]);
            b += (l ? 2 : 1) * lin_bytes(st, p, l ? NULL : lin_macs);
            if (l) {
                uint64_t e = 0;
                lin_bytes(st, p, &e);
                *moe_macs += 2 * e;
                snprintf(p, sizeof p, "model.layers.1.mlp.shared_experts.%s", mlp[i]);
                b += lin_bytes(st, p, moe_macs);
            }
        }
    }
    b += lin_bytes(st, "model.layers.1.mlp.gate", moe_macs);
    b += lin_bytes(st, "lm_head", lin_macs);
    b += 256 * 2; /* an embedding row */
    *bytes = b;
    dsv_st_close(st);
}

static uint64_t phase_sum(const dsv_context_stats *s) {
    uint64_t t = 0;
    for (int i = 0; i < DSV_PHASE_COUNT; i++) t += s->ns[i];
    return t;
}

TEST(stats_count_what_decoding_reads) {
    const char *cfg = tiny_write("config.json", tiny_config);
    for (int dt = DSV_SYNTH_FP8; dt <= DSV_SYNTH_BF16; dt++) {
        const char *dir = tiny_synth(dt == DSV_SYNTH_FP8 ? "fp8" : "bf16", cfg, dt, 1, 0);
        uint64_t want, lin_macs, moe_macs;
        expected_decode(dir, &want, &lin_macs, &moe_macs);
        dsv_model *m;
        REQUIRE(dsv_model_open(&m, dir, NULL) == DSV_OK);
        for (int attn = DSV_ATTN_SPARSE; attn <= DSV_ATTN_DENSE; attn++) {
            dsv_context *ctx = open_ctx(m, 128, attn, 2);
            int32_t t[48];
            float lg[500];
            tokens(t, 48, 9);
            forward(ctx, t, 40, lg);
            dsv_context_stats s;
            dsv_context_get_stats(ctx, &s);
            CHECK_EQ_INT(s.n_calls, 1);
            CHECK_EQ_INT(s.n_tokens, 40);
            CHECK_EQ_INT(s.kv_token_bytes, 2 * ((128 + 4 + 64) + (128 + 4)));
            dsv_context_reset_stats(ctx);
            dsv_context_get_stats(ctx, &s);
            CHECK(s.n_calls == 0 && s.weight_bytes == 0 && phase_sum(&s) == 0);

            double t0 = dsv_time();
            for (int k = 0; k < 3; k++) forward(ctx, t + 40 + k, 1, lg);
            double wall = dsv_time() - t0;
            dsv_context_get_stats(ctx, &s);
            CHECK_EQ_INT(s.n_tokens, 3);
            CHECK_EQ_INT(s.weight_bytes, 3 * want);
            CHECK_EQ_INT(s.linear_flops, 3 * 2 * lin_macs);
            CHECK_EQ_INT(s.moe_flops, 3 * 2 * moe_macs);
            /* Positions 40, 41, 42 in two layers: top-16 of 41..43, or all. */
            CHECK_EQ_INT(s.n_keys, attn == DSV_ATTN_DENSE ? 2 * (41 + 42 + 43) : 2 * 3 * 16);
            CHECK_EQ_INT(s.n_index_keys, attn == DSV_ATTN_DENSE ? 0 : 2 * (41 + 42 + 43));
            CHECK_EQ_INT(s.kv_read_bytes, s.n_keys * 196 + s.n_index_keys * 132);
            /* Every phase did work (a single process does not communicate),
             * and the phases cover dsv_forward's time. */
            for (int i = 0; i < DSV_PHASE_COUNT; i++)
                CHECKF(i == DSV_PHASE_COMM ? s.ns[i] == 0 : s.ns[i] > 0, "phase %d: %llu ns", i,
                       (unsigned long long)s.ns[i]);
            CHECK(s.comm_sum_bytes == 0 && s.comm_gather_bytes == 0 && s.n_comm == 0);
            CHECKF((double)phase_sum(&s) <= wall * 1e9, "phases %llu ns > wall %.0f ns",
                   (unsigned long long)phase_sum(&s), wall * 1e9);
            dsv_context_close(ctx);
        }
        dsv_model_close(m);
    }
}

TEST(fill_random_decodes_like_a_cache) {
    const char *cfg = tiny_write("config.json", tiny_config);
    const char *dir = tiny_synth("fp8", cfg, DSV_SYNTH_FP8, 2, 0);
    dsv_model *m;
    REQUIRE(dsv_model_open(&m, dir, NULL) == DSV_OK);
    enum { DEPTH = 300, STEPS = 3 };
    int32_t t[STEPS + 10];
    tokens(t, STEPS + 10, 4);
    float a[STEPS * 500], b[STEPS * 500];
    dsv_context *x = open_ctx(m, 400, DSV_ATTN_SPARSE, 1), *y = open_ctx(m, 400, DSV_ATTN_SPARSE, 3);
    /* The same seed gives the same cache, whatever the thread count; a fill
     * may start mid-page after real tokens. */
    forward(x, t, 10, a);
    forward(y, t, 10, b);
    REQUIRE(dsv_seq_fill_random(x, 0, DEPTH, 77) == DSV_OK);
    REQUIRE(dsv_seq_fill_random(y, 0, DEPTH, 77) == DSV_OK);
    CHECK_EQ_INT(dsv_seq_len(x, 0), 10 + DEPTH);
    for (int k = 0; k < STEPS; k++) {
        forward(x, t + 10 + k, 1, a + k * 500);
        forward(y, t + 10 + k, 1, b + k * 500);
    }
    CHECK(!memcmp(a, b, sizeof a));
    for (int i = 0; i < STEPS * 500; i++) CHECKF(isfinite(a[i]), "logit %d", i);

    /* Every record is one a prefill could write: no NaN codes, power-of-two
     * (ue8m0) scales, unit-size values. */
    const dsv_seq *s = &x->seqs[0];
    double sq = 0;
    for (int l = 0; l < 2; l++)
        for (int pos = 10; pos < 10 + DEPTH; pos++) {
            const uint8_t *rec = dsv_kv_latent(&x->kv, s, l, pos), *k8 = dsv_kv_index_keys(&x->kv, s, l, pos);
            float sc, ks = *dsv_kv_index_scales(&x->kv, s, l, pos);
            memcpy(&sc, rec + 128, 4);
            int e;
            CHECK(frexpf(sc, &e) == 0.5f && frexpf(ks, &e) == 0.5f);
            for (int i = 0; i < 128; i++) {
                CHECK((rec[i] & 0x7f) != 0x7f && (k8[i] & 0x7f) != 0x7f);
                double v = dsv_e4m3_to_f32(rec[i]) * sc;
                sq += v * v;
            }
        }
    CHECK_NEAR(sqrt(sq / (2.0 * DEPTH * 128)), 1.0, 0.05);

    /* Another seed, another cache. */
    REQUIRE(dsv_seq_truncate(y, 0, 10) == DSV_OK);
    REQUIRE(dsv_seq_fill_random(y, 0, DEPTH, 78) == DSV_OK);
    forward(y, t + 10, 1, b);
    CHECK(memcmp(a, b, 500 * sizeof(float)) != 0);

    /* All or nothing. */
    CHECK_EQ_INT(dsv_seq_fill_random(x, 0, 200, 1), DSV_ERR_FULL);
    CHECK_EQ_INT(dsv_seq_len(x, 0), 10 + DEPTH + STEPS);
    CHECK_EQ_INT(dsv_seq_fill_random(x, 1, 1, 1), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_seq_fill_random(x, 0, -1, 1), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_seq_fill_random(x, 0, 0, 1), DSV_OK);
    CHECK_EQ_INT(dsv_seq_len(x, 0), 10 + DEPTH + STEPS);
    dsv_context_close(x);
    dsv_context_close(y);
    dsv_model_close(m);
}
