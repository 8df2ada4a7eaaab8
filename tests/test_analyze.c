/* test_analyze.c: the indexer analysis (dsv32_analyze.h, `dsv32 analyze`)
 * and per-layer top-k.
 *
 * - a top-k that covers the context keeps all the dense mass (exactly 1),
 *   and attaching an analysis leaves the logits bit for bit unchanged;
 * - with the test hook that scores positions by the attention logits summed
 *   over heads, on a one-head model (where that order is the weights'
 *   order), recall is 1 and the mass kept is the best possible at every k;
 * - per-layer top-k from the context and from config.json selects that
 *   many positions in each layer;
 * - the command: JSON lines, the plot, --suggest within its bound (checked
 *   by measuring the written list again), and one-line errors. */
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"
#include "dsv32_analyze.h"
#include "fixture.h"
#include "dsv32_synth.h"
#include "test.h"
#include "tiny_model.h"

static void tokens(int32_t *t, int n, uint32_t seed) {
    for (int i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; t[i] = (int32_t)((seed >> 8) % 500u); }
}

static dsv_context *open_ctx(dsv_model *m, int n_ctx, int attn, int mha_max_keys) {
    dsv_context_params p = dsv_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = 32;
    p.n_threads = 2;
    p.attn = attn;
    p.mha_max_keys = mha_max_keys;
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
    return ctx;
}

/* n tokens in chunks of 32, logits of every position into lg [n][vocab]. */
static void run(dsv_context *ctx, const int32_t *t, int n, float *lg, int V) {
    for (int p = 0; p < n; p += 32) {
        const int c = n - p < 32 ? n - p : 32;
        dsv_batch_entry e = {0, c, t + p, DSV_LOGITS_ALL};
        REQUIREF(dsv_forward(ctx, &e, 1, lg + (size_t)p * V) == DSV_OK, "%s", dsv_errmsg());
    }
}

TEST(analysis_keeps_all_mass_when_k_covers_the_context) {
    const char *dir = tiny_synth("m", tiny_write("config.json", tiny_config), DSV_SYNTH_FP8, 5, 0);
    dsv_model *m;
    REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
    const int n = 60, V = dsv_model_config(m)->vocab_size, L = dsv_model_config(m)->n_layers;
    int32_t t[60];
    tokens(t, n, 11);
    float *a = malloc((size_t)n * V * sizeof *a), *b = malloc((size_t)n * V * sizeof *b);
    REQUIRE(a && b);
    dsv_context *plain = open_ctx(m, 64, DSV_ATTN_DENSE, 1), *cx = open_ctx(m, 64, DSV_ATTN_DENSE, 0);
    run(plain, t, n, a, V);
    const int ks[] = {64, 100, 8};
    dsv_analysis *an;
    REQUIREF(dsv_analysis_open(&an, cx, ks, 3, 0) == DSV_OK, "%s", dsv_errmsg());
    /* A second analysis, or one on a sparse context, is refused. */
    dsv_analysis *an2 = NULL;
    CHECK(dsv_analysis_open(&an2, cx, ks, 3, 0) == DSV_ERR_ARG && !an2);
    dsv_context *sp = open_ctx(m, 64, DSV_ATTN_SPARSE, 0);
    CHECK(dsv_analysis_open(&an2, sp, ks, 3, 0) == DSV_ERR_ARG && !an2);
    dsv_context_close(sp);
    run(cx, t, n, b, V);
    /* The analysed context computes what a plain one on the absorbed path does. */
    CHECK(memcmp(a, b, (size_t)n * V * sizeof *a) == 0);
    for (int l = 0; l < L; l++) {
        dsv_analysis_stats s;
        for (int i = 0; i < 2; i++) {
            REQUIRE(dsv_analysis_get(an, l, i, &s) == DSV_OK);
            CHECK_EQ_INT(s.n_queries, n);
            CHECK_EQ_INT(s.n_past, 0);
            CHECKF(s.mass == 1.0 && s.best == 1.0 && s.recall == 1.0, "layer %d k %d: mass %.17g best %.17g recall %.17g",
                   l, ks[i], s.mass, s.best, s.recall);
            CHECK_NEAR(s.bucket_mass[0], n, 1e-9);
            CHECK_NEAR(s.bucket_kept[0], n, 1e-9);
            CHECK(s.bucket_mass[1] == 0 && s.bucket_kept[1] == 0);
        }
        /* k = 8 drops mass on random weights, never more than the best set would. */
        REQUIRE(dsv_analysis_get(an, l, 2, &s) == DSV_OK);
        CHECK_EQ_INT(s.n_past, n - 8);
        CHECKF(s.mass < 1 && s.mass <= s.best + 1e-12 && s.recall < 1 && s.recall > 0, "layer %d: mass %g best %g recall %g",
               l, s.mass, s.best, s.recall);
        CHECK_NEAR(s.bucket_kept[0] / s.bucket_mass[0], s.mass, 1e-9); /* every key within 128 */
    }
    dsv_analysis_stats s;
    CHECK(dsv_analysis_get(an, L, 0, &s) == DSV_ERR_ARG);
    dsv_analysis_reset(an);
    REQUIRE(dsv_analysis_get(an, 0, 0, &s) == DSV_OK);
    CHECK_EQ_INT(s.n_queries, 0);
    dsv_analysis_close(an);
    /* Detached: the context runs on without it. */
    dsv_seq_reset(cx, 0);
    run(cx, t, 8, b, V);
    dsv_context_close(cx);
    dsv_context_close(plain);
    dsv_model_close(m);
    free(a);
    free(b);
}

/* One attention head: the summed logits order positions as the weights do. */
static const char *one_head_config(void) {
    static char cfg[4096];
    const char *at = strstr(tiny_config, "\"num_attention_heads\": 2");
    REQUIRE(at);
    snprintf(cfg, sizeof cfg, "%.*s\"num_attention_heads\": 1%s", (int)(at - tiny_config), tiny_config,
             at + strlen("\"num_attention_heads\": 2"));
    return cfg;
}

TEST(analysis_oracle_scores_give_recall_one_and_the_best_mass) {
    const char *dir = tiny_synth("h1", tiny_write("config.json", one_head_config()), DSV_SYNTH_BF16, 9, 0);
    dsv_model *m;
    REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
    const int n = 200, V = dsv_model_config(m)->vocab_size, L = dsv_model_config(m)->n_layers;
    int32_t t[200];
    tokens(t, n, 3);
    float *lg = malloc((size_t)n * V * sizeof *lg);
    REQUIRE(lg);
    const int ks[] = {1, 4, 16, 50, 130};
    for (int oracle = 0; oracle < 2; oracle++) {
        dsv_context *cx = open_ctx(m, 256, DSV_ATTN_DENSE, 0);
        dsv_analysis *an;
        REQUIREF(dsv_analysis_open(&an, cx, ks, 5, oracle ? DSV_ANALYZE_ORACLE : 0) == DSV_OK, "%s", dsv_errmsg());
        run(cx, t, n, lg, V);
        double worst = 1;
        for (int l = 0; l < L; l++)
            for (int i = 0; i < 5; i++) {
                dsv_analysis_stats s;
                REQUIRE(dsv_analysis_get(an, l, i, &s) == DSV_OK);
                CHECK_EQ_INT(s.n_past, n - ks[i]);
                CHECKF(s.mass <= s.best + 1e-12, "layer %d k %d: mass %.17g > best %.17g", l, ks[i], s.mass, s.best);
                /* The indexer's loss: the oracle's scores are the logits whose
                 * softmax (rounded to bf16) is the target, so KL is ~0. */
                CHECKF(oracle ? s.indexer_kl >= 0 && s.indexer_kl < 1e-3 : s.indexer_kl > 0.01, "layer %d: KL %g",
                       l, s.indexer_kl);
                if (oracle) {
                    CHECKF(s.recall == 1.0, "layer %d k %d: recall %.17g", l, ks[i], s.recall);
                    CHECK_NEAR(s.mass, s.best, 1e-12);
                    /* The distance split sums to the whole. */
                    CHECK_NEAR((s.bucket_kept[0] + s.bucket_kept[1]) / n, s.mass, 1e-9);
                }
                if (s.recall < worst) worst = s.recall;
            }
        /* The random indexer is far from the oracle: the check above can fail. */
        if (!oracle) CHECKF(worst < 0.9, "random indexer recall %g", worst);
        dsv_analysis_close(an);
        dsv_context_close(cx);
    }
    dsv_model_close(m);
    free(lg);
}

/* Counts the positions each token selected, per layer, from the "topk" dump. */
struct sel_count { int n_sel[2][64]; };
static void count_dump(const char *name, int layer, int dtype, int rows, int cols, const void *data, void *user) {
    struct sel_count *c = user;
    if (strcmp(name, "topk") || dtype != DSV_DUMP_I32 || layer > 1) return;
    const int32_t *d = data;
    for (int r = 0; r < rows && r < 64; r++) {
        int k = 0;
        for (int j = 0; j < cols; j++) k += d[(size_t)r * cols + j] >= 0;
        c->n_sel[layer][r] = k;
    }
}

static void check_layer_k(dsv_model *m, const dsv_context_params *p, int k0, int k1) {
    dsv_context *cx;
    REQUIREF(dsv_context_open(&cx, m, p) == DSV_OK, "%s", dsv_errmsg());
    struct sel_count c;
    memset(&c, 0, sizeof c);
    dsv_context_set_dump(cx, count_dump, &c);
    int32_t t[40];
    tokens(t, 40, 5);
    dsv_batch_entry e = {0, 40, t, DSV_LOGITS_NONE};
    REQUIREF(dsv_forward(cx, &e, 1, NULL) == DSV_OK, "%s", dsv_errmsg());
    for (int i = 0; i < 40; i++) {
        CHECK_EQ_INT(c.n_sel[0][i], i + 1 < k0 ? i + 1 : k0);
        CHECK_EQ_INT(c.n_sel[1][i], i + 1 < k1 ? i + 1 : k1);
    }
    dsv_context_close(cx);
}

TEST(per_layer_topk_from_the_context_and_the_config) {
    const char *dir = tiny_synth("m", tiny_write("config.json", tiny_config), DSV_SYNTH_BF16, 2, 0);
    dsv_model *m;
    REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
    dsv_context_params p = dsv_context_default_params();
    p.n_ctx = 64;
    p.n_threads = 2;
    check_layer_k(m, &p, 16, 16); /* index_topk */
    p.layer_topk[0] = 5;
    p.layer_topk[1] = 30;
    check_layer_k(m, &p, 5, 30);
    p.topk = 9; /* the uniform override fills the layers the list leaves at 0 */
    p.layer_topk[1] = 0;
    check_layer_k(m, &p, 5, 9);
    /* Entries past the model's layers, or negative, are refused. */
    dsv_context *cx = NULL;
    p.layer_topk[2] = 4;
    CHECK(dsv_context_open(&cx, m, &p) == DSV_ERR_ARG && !cx);
    p.layer_topk[2] = 0;
    p.layer_topk[0] = -1;
    CHECK(dsv_context_open(&cx, m, &p) == DSV_ERR_ARG && !cx);
    dsv_model_close(m);

    /* dsa_topk_per_layer in config.json, below the context's overrides. */
    char cfg[4096];
    const char *end = strrchr(tiny_config, '}');
    snprintf(cfg, sizeof cfg, "%.*s, \"dsa_topk_per_layer\": [3, 7]}\n", (int)(end - tiny_config), tiny_config);
    dir = tiny_synth("c", tiny_write("config.json", cfg), DSV_SYNTH_BF16, 2, 0);
    REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
    p = dsv_context_default_params();
    p.n_ctx = 64;
    p.n_threads = 2;
    check_layer_k(m, &p, 3, 7);
    p.layer_topk[1] = 12;
    check_layer_k(m, &p, 3, 12);
    p.topk = 20;
    check_layer_k(m, &p, 20, 12);
    dsv_model_close(m);

    /* A list of the wrong length or with a bad value names the field. */
    const char *bad[] = {"[3]", "[3, 0]", "[3, 2.5]", "7"};
    for (int i = 0; i < 4; i++) {
        snprintf(cfg, sizeof cfg, "%.*s, \"dsa_topk_per_layer\": %s}\n", (int)(end - tiny_config), tiny_config, bad[i]);
        dsv_config c;
        CHECKF(dsv_config_parse(&c, cfg, "config.json") == DSV_ERR_CONFIG && strstr(dsv_errmsg(), "dsa_topk_per_layer"),
               "%s: %s", bad[i], dsv_errmsg());
    }
}

static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, needle)); p++) n++;
    return n;
}

static const char *text_file(void) {
    return tiny_write("text.txt",
                      "Permission is hereby granted, free of charge, to any person obtaining a copy of this software "
                      "and associated documentation files, to deal in the Software without restriction, including "
                      "without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, "
                      "and/or sell copies of the Software, and to permit persons to whom the Software is furnished "
                      "to do so, subject to the following conditions.\n");
}

TEST(cli_analyze_json_plot_and_errors) {
    const char *m = fixture_random(), *txt = text_file();
    char cmd[8192], svg[1024], *out = NULL;
    snprintf(svg, sizeof svg, "%s/mass.svg", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s analyze -m %s -f %s --ctx 64 --topk 64,24,4 --json --plot %s -t 2 2>&1", test_bin(), m,
             txt, svg);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    /* 2 layers x 3 k, then 3 k and dense: one object per line, nothing else. */
    CHECKF(count(out, "\n") == 10 && count(out, "{\"layer\": ") == 6 && count(out, "\"mass_by_distance\": [") == 6, "%s", out);
    CHECKF(count(out, "\"kl\": ") == 3 && count(out, "{\"k\": \"dense\", \"ppl\": ") == 1, "%s", out);
    /* k = 64 covers every 64-token window: all the mass, and sparse is dense. */
    CHECKF(count(out, "\"k\": 64, \"mass\": 1.000000, \"recall\": 1.000000, \"mass_by_distance\": [1.000000]") == 2, "%s", out);
    CHECKF(strstr(out, "{\"k\": 64, \"kl\": 0, \"ppl\": "), "%s", out);
    free(out);
    size_t len;
    char *plot = test_read_file(svg, &len);
    REQUIRE(plot);
    CHECK(!strncmp(plot, "<svg", 4) && count(plot, "<polyline") == 2 && strstr(plot, "</svg>"));
    free(plot);

    /* The table. */
    snprintf(cmd, sizeof cmd, "%s analyze -m %s -f %s --ctx 64 --topk 8 -t 2 2>&1", test_bin(), m, txt);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    CHECKF(strstr(out, "layer") && strstr(out, "recall") && strstr(out, "KL(dense||k)") && strstr(out, "dense "), "%s", out);
    free(out);

    /* A model without an indexer (a V3 config) and bad options: one line each. */
    char v3[1024];
    snprintf(v3, sizeof v3, "%s/v3", test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && sed 's/DeepseekV32ForCausalLM/DeepseekV3ForCausalLM/; s/deepseek_v32/deepseek_v3/' "
             "%s/config.json > %s/config.json && ln -s %s/model.safetensors %s/ && ln -s %s/tokenizer.json %s/",
             v3, m, v3, m, v3, m, v3);
    REQUIRE(system(cmd) == 0);
    const char *bad[] = {"-m V3 -f TXT", "-m M -f TXT --topk 0", "-m M -f TXT --topk 4,4", "-m M -f TXT --suggest -1",
                         "-m M -f TXT -o x", "-m M -f TXT --topk-file /nonexistent", "-m M -f /nonexistent", "-m M",
                         "-m M -f TXT --bogus"};
    for (int i = 0; i < 9; i++) {
        char args[2048] = "";
        for (const char *p = bad[i]; *p; p++) {
            if (!strncmp(p, "V3", 2)) { strcat(args, v3); p++; }
            else if (!strncmp(p, "TXT", 3)) { strcat(args, txt); p += 2; }
            else if (*p == 'M' && (p[1] == ' ' || !p[1])) strcat(args, m);
            else strncat(args, p, 1);
        }
        snprintf(cmd, sizeof cmd, "%s analyze %s 2>&1", test_bin(), args);
        CHECKF(test_run(cmd, &out) != 0 && out && count(out, "\n") == 1 && !strncmp(out, "dsv32 analyze: ", 15),
               "%s: %s", bad[i], out);
        if (i == 0) CHECKF(out && strstr(out, "no lightning indexer"), "%s", out);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s analyze --help", test_bin());
    CHECK(test_run(cmd, &out) == 0 && out && strstr(out, "--suggest KL") && strstr(out, "--topk-file"));
    free(out);
}

TEST(cli_analyze_suggest_keeps_its_bound) {
    const char *m = fixture_random(), *txt = text_file();
    char cmd[4096], list[1024], *out = NULL;
    snprintf(list, sizeof list, "%s/topk.txt", test_tmpdir());
    const double bound = 0.02;
    snprintf(cmd, sizeof cmd, "%s analyze -m %s -f %s --ctx 64 --topk 64,16,4 --json --suggest %g -o %s -t 2 2>&1",
             test_bin(), m, txt, bound, list);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    const char *sg = strstr(out, "{\"suggest\": [");
    REQUIREF(sg, "%s", out);
    int k0, k1;
    double kl;
    REQUIREF(sscanf(sg, "{\"suggest\": [%d, %d], \"bound\": %*g, \"kl\": %lg", &k0, &k1, &kl) == 3, "%s", sg);
    CHECKF(kl <= bound, "%s", sg);
    CHECK((k0 == 64 || k0 == 16 || k0 == 4) && (k1 == 64 || k1 == 16 || k1 == 4));
    free(out);
    /* The written list, measured again on the same text, keeps the bound
     * and gives the same KL. */
    snprintf(cmd, sizeof cmd, "%s analyze -m %s -f %s --ctx 64 --topk 64 --topk-file %s --json -t 2 2>&1", test_bin(), m, txt,
             list);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    const char *f = strstr(out, "{\"k\": \"file\", \"topk\": [");
    double kl2;
    int a, b;
    REQUIREF(f && sscanf(f, "{\"k\": \"file\", \"topk\": [%d, %d], \"kl\": %lg", &a, &b, &kl2) == 3, "%s", out);
    CHECK(a == k0 && b == k1);
    CHECK_NEAR(kl2, kl, 1e-6 * (kl > 1e-3 ? kl : 1e-3));
    CHECK(kl2 <= bound);
    free(out);
    /* A bound nothing reaches is an error, not a list. */
    snprintf(cmd, sizeof cmd, "%s analyze -m %s -f %s --ctx 64 --topk 16,4 --suggest 0 -t 2 2>&1 >/dev/null", test_bin(), m,
             txt);
    CHECK(test_run(cmd, &out) != 0 && out && strstr(out, "--suggest: even top-16"));
    free(out);
}

TEST(cli_topk_file_on_the_commands) {
    const char *m = fixture_random(), *txt = text_file();
    const char *same = tiny_write("same.txt", "# as --topk 4\n4, 4\n"), *mixed = tiny_write("mixed.txt", "24 4");
    const char *bad[] = {tiny_write("short.txt", "4\n"), tiny_write("zero.txt", "4 0\n"), tiny_write("junk.txt", "4 x\n")};
    char cmd[4096], *a = NULL, *b = NULL, *c = NULL;
    /* A list of one k for every layer is --topk k; a mixed one differs. */
    snprintf(cmd, sizeof cmd, "%s ppl -m %s -f %s --ctx 64 --topk 4 --quiet -t 2", test_bin(), m, txt);
    REQUIRE(test_run(cmd, &a) == 0 && a);
    snprintf(cmd, sizeof cmd, "%s ppl -m %s -f %s --ctx 64 --topk-file %s --quiet -t 2", test_bin(), m, txt, same);
    REQUIRE(test_run(cmd, &b) == 0 && b);
    snprintf(cmd, sizeof cmd, "%s ppl -m %s -f %s --ctx 64 --topk-file %s --quiet -t 2", test_bin(), m, txt, mixed);
    REQUIRE(test_run(cmd, &c) == 0 && c);
    CHECKF(!strcmp(a, b) && strcmp(a, c), "%s %s %s", a, b, c);
    free(a); free(b); free(c);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --ids 1,2,3,4,5,6,7,8,9,10 --prefill 4 --topk 4 -t 2 -o /dev/stdout | md5sum", test_bin(), m);
    REQUIRE(test_run(cmd, &a) == 0 && a);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --ids 1,2,3,4,5,6,7,8,9,10 --prefill 4 --topk-file %s -t 2 -o /dev/stdout | md5sum", test_bin(), m, same);
    REQUIRE(test_run(cmd, &b) == 0 && b);
    CHECKF(!strcmp(a, b), "%s vs %s", a, b);
    free(a); free(b);
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'It is' -n 3 --temp 0 --topk-file %s -t 2 2>/dev/null", test_bin(), m, mixed);
    CHECK(test_run(cmd, &a) == 0);
    free(a);
    snprintf(cmd, sizeof cmd, "%s bench -m %s --depth 30 --prefill 4 --decode 2 --json --bw-mib 16 --topk-file %s -t 2 "
             "2>/dev/null", test_bin(), m, mixed);
    CHECKF(test_run(cmd, &a) == 0 && a && strstr(a, "\"topk\":24,"), "%s", a);
    free(a);
    /* A wrong file is one line naming it, on every command. */
    const char *cmds[] = {"ppl -m M -f T --ctx 64", "logits -m M --ids 1,2,3 --prefill 3 -o /dev/null", "generate -m M -p x -n 1", "bench -m M --depth 8",
                          "serve -m M --port 0", "chat -m M"};
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 3; j++) {
            char args[1024] = "";
            for (const char *p = cmds[i]; *p; p++) {
                if (*p == 'M' && (p[1] == ' ' || !p[1])) strcat(args, m);
                else if (*p == 'T' && (p[1] == ' ' || !p[1])) strcat(args, txt);
                else strncat(args, p, 1);
            }
            snprintf(cmd, sizeof cmd, "%s %s --topk-file %s </dev/null 2>&1", test_bin(), args, bad[j]);
            CHECKF(test_run(cmd, &a) != 0 && a && strstr(a, bad[j]) && strstr(a, "--topk-file"), "%s: %s", cmd, a);
            free(a);
        }
}
