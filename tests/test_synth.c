/* test_synth.c: random-weight models (src/synth.c, `dsv32 synth`): they open,
 * run with finite, varied logits in both dtypes, are reproducible from the
 * seed, shard like the real checkpoints, and bad input gives a clear error. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dsv32.h"
#include "fixture.h"
#include "base/numeric.h"
#include "format/safetensors.h"
#include "dsv32_synth.h"
#include "test.h"
#include "tiny_model.h"

/* Prefill then decode; returns the logits of every call (caller frees). */
static float *run(const char *dir, int n_prefill, int n_decode) {
    dsv_model *m;
    REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
    const int V = dsv_model_config(m)->vocab_size;
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = n_prefill + n_decode;
    cp.n_batch = n_prefill;
    cp.n_threads = 2;
    dsv_context *ctx;
    REQUIREF(dsv_context_open(&ctx, m, &cp) == DSV_OK, "%s", dsv_errmsg());
    float *lg = malloc(sizeof(float) * (size_t)V * (1 + n_decode));
    int32_t t[64];
    for (int i = 0; i < n_prefill + n_decode; i++) t[i] = (int32_t)((i * 7919 + 13) % V);
    for (int k = 0; k <= n_decode; k++) {
        dsv_batch_entry e = {0, k ? 1 : n_prefill, k ? t + n_prefill + k - 1 : t, DSV_LOGITS_LAST};
        REQUIREF(dsv_forward(ctx, &e, 1, lg + (size_t)k * V) == DSV_OK, "%s", dsv_errmsg());
    }
    dsv_context_close(ctx);
    dsv_model_close(m);
    return lg;
}

static void check_logits(const float *lg, int rows, int V) {
    for (int r = 0; r < rows; r++) {
        const float *x = lg + (size_t)r * V;
        double sum = 0, sq = 0;
        int finite = 1;
        for (int i = 0; i < V; i++) { finite &= isfinite(x[i]) != 0; sum += x[i]; sq += (double)x[i] * x[i]; }
        double sd = sqrt(sq / V - (sum / V) * (sum / V));
        CHECKF(finite, "row %d: non-finite logits", r);
        /* Unit-size final hidden state through a 1/sqrt(dim) head: std ~1. */
        CHECKF(sd > 0.3 && sd < 3, "row %d: logit std %g", r, sd);
    }
}

TEST(synth_models_run_in_both_dtypes) {
    const char *cfg = tiny_write("config.json", tiny_config);
    const int V = 500;
    for (int dt = DSV_SYNTH_FP8; dt <= DSV_SYNTH_BF16; dt++) {
        const char *dir = tiny_synth(dt == DSV_SYNTH_FP8 ? "fp8" : "bf16", cfg, dt, 7, 0);
        dsv_model *m;
        REQUIREF(dsv_model_open(&m, dir, NULL) == DSV_OK, "%s", dsv_errmsg());
        const dsv_config *c = dsv_model_config(m);
        CHECK_EQ_INT(c->fp8, dt == DSV_SYNTH_FP8);
        CHECK_EQ_INT(c->scale_fmt, dt == DSV_SYNTH_FP8 ? DSV_SCALE_FMT_UE8M0 : DSV_SCALE_FMT_NONE);
        CHECK_EQ_INT(c->n_mtp_layers, 0);
        dsv_model_close(m);
        float *lg = run(dir, 40, 4);
        check_logits(lg, 5, V);
        /* Different steps give different logits: the model is not degenerate. */
        CHECK(memcmp(lg, lg + V, sizeof(float) * V) != 0);
        free(lg);
    }
}

/* The bytes of one tensor of a model directory (single file). */
static const dsv_st_tensor *tensor(dsv_st *st, const char *name) {
    const dsv_st_tensor *t = dsv_st_find(st, name);
    REQUIREF(t, "tensor %s missing", name);
    return t;
}

TEST(synth_is_reproducible_and_fp8_quantizes_bf16) {
    const char *cfg = tiny_write("config.json", tiny_config);
    const char *a = tiny_synth("a", cfg, DSV_SYNTH_FP8, 42, 0), *b = tiny_synth("b", cfg, DSV_SYNTH_FP8, 42, 0);
    const char *c = tiny_synth("c", cfg, DSV_SYNTH_FP8, 43, 0), *h = tiny_synth("h", cfg, DSV_SYNTH_BF16, 42, 0);
    char pa[1200], pb[1200], pc[1200], ph[1200];
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    snprintf(pc, sizeof pc, "%s/model.safetensors", c);
    snprintf(ph, sizeof ph, "%s/model.safetensors", h);
    size_t na, nb, nc;
    char *da = test_read_file(pa, &na), *db = test_read_file(pb, &nb), *dc = test_read_file(pc, &nc);
    REQUIRE(da && db && dc);
    CHECK(na == nb && !memcmp(da, db, na));
    CHECK(na == nc && memcmp(da, dc, na) != 0);
    free(da);
    free(db);
    free(dc);

    /* fp8 = bf16 of the same seed, quantized with power-of-two block scales. */
    dsv_st *s8, *s16;
    REQUIRE(dsv_st_open(&s8, pa) == DSV_OK && dsv_st_open(&s16, ph) == DSV_OK);
    const char *names[] = {"model.layers.1.mlp.experts.3.down_proj", "model.layers.0.self_attn.kv_a_proj_with_mqa"};
    for (int k = 0; k < 2; k++) {
        char n[256];
        snprintf(n, sizeof n, "%s.weight", names[k]);
        const dsv_st_tensor *w8 = tensor(s8, n), *w16 = tensor(s16, n);
        snprintf(n, sizeof n, "%s.weight_scale_inv", names[k]);
        const dsv_st_tensor *sc = tensor(s8, n);
        CHECK_EQ_INT(w8->dtype, DSV_DT_F8_E4M3);
        CHECK_EQ_INT(w16->dtype, DSV_DT_BF16);
        CHECK_EQ_INT(sc->dtype, DSV_DT_F32);
        const int64_t R = w8->shape[0], C = w8->shape[1], ld = sc->shape[1];
        CHECK_EQ_INT(sc->shape[0], (R + 127) / 128);
        CHECK_EQ_INT(ld, (C + 127) / 128);
        const uint8_t *q = w8->data;
        const float *s = sc->data;
        for (int64_t i = 0; i < sc->shape[0] * ld; i++) {
            int e;
            CHECKF(frexpf(s[i], &e) == 0.5f, "scale %g is not a power of two", s[i]);
        }
        double err = 0, ref = 0;
        for (int64_t r = 0; r < R; r++)
            for (int64_t cc = 0; cc < C; cc++) {
                dsv_bf16 hv;
                memcpy(&hv, (const char *)w16->data + 2 * (r * C + cc), 2);
                float x = dsv_bf16_to_f32(hv), y = dsv_e4m3_to_f32(q[r * C + cc]) * s[(r / 128) * ld + cc / 128];
                err += (double)(x - y) * (x - y);
                ref += (double)x * x;
            }
        /* e4m3 keeps 3 mantissa bits: relative RMS error about 2^-5. */
        CHECKF(sqrt(err / ref) < 0.05, "%s: fp8 vs bf16 relative error %g", names[k], sqrt(err / ref));
        /* Std 1/sqrt(fan_in) (uniform), so a layer keeps its input's size. */
        CHECK_NEAR(sqrt(ref / (double)(R * C)) * sqrt((double)C), 1.0, 0.05);
    }
    dsv_st_close(s8);
    dsv_st_close(s16);
}

TEST(synth_shards_with_an_index) {
    const char *cfg = tiny_write("config.json", tiny_config);
    const char *one = tiny_synth("one", cfg, DSV_SYNTH_BF16, 3, 0);
    const char *many = tiny_synth("many", cfg, DSV_SYNTH_BF16, 3, 1000000);
    dsv_synth_params p = dsv_synth_default_params();
    p.dtype = DSV_SYNTH_BF16;
    p.shard_bytes = 1000000;
    dsv_synth_info info;
    REQUIRE(dsv_synth_plan(cfg, &p, &info) == DSV_OK);
    CHECK(info.n_files > 2);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", many);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", many, info.n_files, info.n_files);
    CHECK(stat(path, &sb) == 0 && (uint64_t)sb.st_size < 1000000 + 65536);
    snprintf(path, sizeof path, "%s/model.safetensors", many);
    CHECK(stat(path, &sb) != 0);
    float *a = run(one, 20, 2), *b = run(many, 20, 2);
    CHECK(!memcmp(a, b, sizeof(float) * 500 * 3));
    free(a);
    free(b);
    /* Writing a single-file model over the sharded one leaves no stale index. */
    tiny_synth("many", cfg, DSV_SYNTH_BF16, 3, 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", many);
    CHECK(stat(path, &sb) != 0);
    b = run(many, 20, 2);
    a = run(one, 20, 2);
    CHECK(!memcmp(a, b, sizeof(float) * 500 * 3));
    free(a);
    free(b);
}

TEST(synth_plans_the_full_model) {
    const char *cfg = tiny_write("config.json", fixture_full_config);
    dsv_synth_info info;
    REQUIREF(dsv_synth_plan(cfg, NULL, &info) == DSV_OK, "%s", dsv_errmsg());
    CHECK(info.fp8);
    /* 671B parameters without the MTP layer; the published checkpoint, MTP
     * layer (about 15 GB) included, is about 689 GB. */
    CHECKF(info.n_params > 665e9 && info.n_params < 680e9, "%.1f G parameters", info.n_params / 1e9);
    CHECKF(info.total_bytes > 665e9 && info.total_bytes < 685e9, "%.1f GB", info.total_bytes / 1e9);
    CHECK(info.n_files >= 165 && info.n_files <= 175);
}

TEST(synth_rejects_bad_input) {
    dsv_synth_params p = dsv_synth_default_params();
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/out", test_tmpdir());
    CHECK_EQ_INT(dsv_synth("/nonexistent/config.json", dir, &p, NULL), DSV_ERR_IO);
    CHECK(strstr(dsv_errmsg(), "/nonexistent/config.json") != NULL);

    const char *bad = tiny_write("bad.json", "{\"architectures\": [\"DeepseekV32ForCausalLM\"], \"vocab_size\": 10}");
    CHECK_EQ_INT(dsv_synth(bad, dir, &p, NULL), DSV_ERR_CONFIG);
    CHECK(strstr(dsv_errmsg(), "hidden_size") != NULL);

    /* hidden_size 200 is fine in bf16 but cannot be fp8. */
    char *odd = strdup(tiny_config);
    memcpy(strstr(odd, "\"hidden_size\": 256") + 15, "200", 3);
    const char *oddp = tiny_write("odd.json", odd);
    free(odd);
    p.dtype = DSV_SYNTH_FP8;
    CHECK_EQ_INT(dsv_synth(oddp, dir, &p, NULL), DSV_ERR_CONFIG);
    CHECK(strstr(dsv_errmsg(), "hidden_size = 200 is not a multiple of 128") != NULL);
    struct stat sb;
    CHECK(stat(dir, &sb) != 0); /* nothing written */
    p.dtype = DSV_SYNTH_BF16;
    CHECK_EQ_INT(dsv_synth(oddp, dir, &p, NULL), DSV_OK);

    /* An output path below a regular file. */
    const char *cfg = tiny_write("config.json", tiny_config);
    snprintf(dir, sizeof dir, "%s/config.json/sub", test_tmpdir());
    CHECK_EQ_INT(dsv_synth(cfg, dir, &p, NULL), DSV_ERR_IO);
    CHECK(strstr(dsv_errmsg(), "config.json") != NULL);
}

TEST(cli_synth) {
    char cmd[4096];
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s synth --help", test_bin());
    CHECK_EQ_INT(test_run(cmd, &out), 0);
    const char *opts[] = {"-c FILE", "-o DIR", "--dtype", "--seed", "--shard-mb", "--dry-run", "default"};
    for (int i = 0; i < 7; i++) CHECKF(out && strstr(out, opts[i]), "help lacks %s", opts[i]);
    free(out);

    const char *cfg = tiny_write("config.json", tiny_config);
    snprintf(cmd, sizeof cmd, "%s synth -c %s -o %s/m --dtype bf16 --seed 5 2>&1", test_bin(), cfg, test_tmpdir());
    CHECK_EQ_INT(test_run(cmd, &out), 0);
    CHECKF(out && strstr(out, "1 file (bf16"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s synth -c %s --dry-run --shard-mb 1 --dtype fp8 2>&1", test_bin(), cfg);
    CHECK_EQ_INT(test_run(cmd, &out), 0);
    CHECKF(out && strstr(out, "files + index (fp8"), "%s", out);
    free(out);

    /* Errors: one line, non-zero exit. */
    const char *bad[] = {"-c /nonexistent.json -o x", "-c x.json", "-o x", "-c x.json -o x --dtype fp16",
                         "--bogus"};
    for (int i = 0; i < 5; i++) {
        snprintf(cmd, sizeof cmd, "%s synth %s 2>&1", test_bin(), bad[i]);
        CHECKF(test_run(cmd, &out) != 0, "'%s' succeeded", bad[i]);
        CHECKF(out && !strncmp(out, "dsv32 synth: ", 13) && strchr(out, '\n') == out + strlen(out) - 1,
               "'%s': %s", bad[i], out);
        free(out);
    }
}
