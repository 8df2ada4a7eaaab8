/* test_gguf_fp8.c: GGUF files written by `dsv32 quantize` from the FP8
 * conformance checkpoint (tests/data/conformance/public_sparse_fp8).
 *
 * The reference quantizes the input of every fp8 linear to e4m3 per 128
 * values (act_quant) before fp8_gemm; a BF16 or F32 weight does not say so,
 * so quantize records it (dsv32.act_quant) and the engine does it again for
 * those linears (dsv_linear.act_fp8, linear_fp8x):
 *  - the conformance rule holds for the BF16, F32 and F16 files, every
 *    case, at every kernel level;
 *  - with BF16 weights (exactly e4m3 * a power-of-two scale) the logits are
 *    the safetensors model's bit for bit at every level, prefill and decode;
 *  - the metadata round-trips, and `--act-quant none` (the model without
 *    the mode) fails the rule: the tests above would catch the mode being
 *    switched off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"
#include "dsv32.h"
#include "format/gguf.h"
#include "server_util.h"
#include "test.h"

#define FP8_CONFIG "public_sparse_fp8"
#define FP8_CKPT "conformance/public_sparse_fp8/hf"

/* The checkpoint written as a GGUF of `type` into this test's directory. */
static const char *gguf(const char *type) {
    static char path[1024];
    char cmd[4096];
    snprintf(path, sizeof path, "%s/fp8-%s.gguf", test_tmpdir(), type);
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --type %s 2>&1", test_bin(), test_shared(FP8_CKPT), path, type);
    test_run_ok(cmd, NULL);
    return path;
}

static const char *const cases[] = {"b1", "b2", "long"};

/* Every case of the file judged by the rule (failures reported). */
static void judge_file(const char *model, const char *type) {
    const conf_limits lim = conf_limits_for(FP8_CONFIG);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        conf_metrics rows[4];
        int n = conf_run_model(FP8_CONFIG, model, -1, cases[c], 2, rows, 4);
        REQUIREF(n > 0, "%s: case %s did not run", model, cases[c]);
        for (int r = 0; r < n; r++) {
            char label[128];
            snprintf(label, sizeof label, "%s %s GGUF %s row %d", test_level(), type, cases[c], r);
            conf_judge(label, &rows[r], &lim);
        }
    }
}

TEST_LEVELS(gguf_fp8_bf16_conformance) { judge_file(gguf("BF16"), "BF16"); }
TEST_LEVELS(gguf_fp8_f32_conformance) { judge_file(gguf("F32"), "F32"); }
TEST_LEVELS(gguf_fp8_f16_conformance) { judge_file(gguf("F16"), "F16"); }

/* Logits of a prefill of 40 ids and 6 decoded ones at the runner's level. */
static float *logits(const char *model, const char *tag, const char *extra, size_t *n) {
    static const char ids[] = "1,5,77,300,12,9,400,3,2,100,640,7,7,55,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,"
                              "24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39";
    char cmd[4096], out[1024];
    snprintf(out, sizeof out, "%s/%s.f32", test_tmpdir(), tag);
    snprintf(cmd, sizeof cmd, "DSV32_ISA=%s %s logits -m %s --ids %s --prefill 40 -o %s -t 2 %s 2>&1", test_level(),
             test_bin(), model, ids, out, extra);
    test_run_ok(cmd, NULL);
    float *d = test_read_file(out, n);
    REQUIRE(d && *n > 0);
    return d;
}

TEST_LEVELS(gguf_fp8_bf16_logits_equal_safetensors) {
    const char *g = gguf("BF16");
    size_t na, nb, nc;
    float *a = logits(test_shared(FP8_CKPT), "st", "", &na);
    float *b = logits(g, "gguf", "", &nb);
    CHECK(na == nb && memcmp(a, b, na) == 0);
    /* --act-quant fp8 on the file that already says so changes nothing. */
    float *c = logits(g, "gguf-fp8", "--act-quant fp8", &nc);
    CHECK(na == nc && memcmp(a, c, na) == 0);
    free(a);
    free(b);
    free(c);
}

static int passes(const conf_metrics *m, const conf_limits *l) {
    return m->l0a <= l->l0a && m->kd <= l->kd && m->dr >= l->dr && m->iw <= l->iw && m->gw <= l->gw &&
           m->gwset <= l->gwset && m->med <= l->med && (m->arg_steps < 3 || m->arg >= l->arg);
}

TEST(gguf_fp8_act_quant_metadata_and_off) {
    const char *g = gguf("BF16");
    dsv_gguf *f;
    const char *s;
    size_t len;
    REQUIREF(dsv_gguf_open(&f, g) == DSV_OK, "%s", dsv_errmsg());
    CHECK(dsv_gguf_get_str(f, "dsv32.act_quant", &s, &len) == DSV_OK && len == 8 && !memcmp(s, "fp8_e4m3", 8));
    CHECK(dsv_gguf_get_str(f, "dsv32.scale_fmt", &s, &len) == DSV_OK && len == 5 && !memcmp(s, "ue8m0", 5));
    dsv_gguf_close(f);
    /* A BF16 checkpoint's file says none. */
    char cmd[4096], b16[1024];
    snprintf(b16, sizeof b16, "%s/bf16.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s --type BF16 2>&1", test_bin(),
             test_shared("conformance/public_sparse_bf16/hf"), b16);
    test_run_ok(cmd, NULL);
    REQUIREF(dsv_gguf_open(&f, b16) == DSV_OK, "%s", dsv_errmsg());
    CHECK(dsv_gguf_get_str(f, "dsv32.act_quant", &s, &len) == DSV_OK && len == 4 && !memcmp(s, "none", 4));
    dsv_gguf_close(f);

    /* The mode off: at least one case row breaks a limit. */
    const conf_limits lim = conf_limits_for(FP8_CONFIG);
    int failed = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        conf_metrics rows[4];
        int n = conf_run_model(FP8_CONFIG, g, DSV_ACT_QUANT_NONE, cases[c], 2, rows, 4);
        REQUIREF(n > 0, "case %s did not run", cases[c]);
        for (int r = 0; r < n; r++) {
            fprintf(stderr, "    act-quant none %-5s row %d: L0A %.4f KD %.3f DR %.2f IW %.1e GW %.4f GWSET %.3f MED %.3f\n",
                    cases[c], r, rows[r].l0a, rows[r].kd, rows[r].dr, rows[r].iw, rows[r].gw, rows[r].gwset, rows[r].med);
            failed += !passes(&rows[r], &lim);
        }
    }
    CHECKF(failed > 0, "every case passes with --act-quant none: the rule cannot tell the mode is off");

    /* The option's value is checked. */
    char *o = NULL;
    snprintf(cmd, sizeof cmd, "%s logits -m %s --ids 1,2 --act-quant fp16 -o %s/x.f32 2>&1", test_bin(), g, test_tmpdir());
    CHECK(test_run(cmd, &o) != 0 && o && strstr(o, "--act-quant: expected fp8 or none, got 'fp16'"));
    free(o);

    /* And an unknown value of the key is a clear error. */
    size_t n;
    unsigned char *d = test_read_file(g, &n);
    REQUIRE(d);
    unsigned char *p = memmem(d, n, "fp8_e4m3", 8);
    REQUIRE(p);
    memcpy(p, "fp8_e5m2", 8);
    char bad[1024];
    snprintf(bad, sizeof bad, "%s/bad.gguf", test_tmpdir());
    test_write_file(bad, d, n);
    free(d);
    dsv_model *m = NULL;
    CHECK(dsv_model_open(&m, bad, NULL) != DSV_OK);
    CHECKF(strstr(dsv_errmsg(), "dsv32.act_quant") != NULL, "error: %s", dsv_errmsg());
    dsv_model_close(m);
}

/* serve takes --act-quant too: the embedded model (FP8) as a BF16 GGUF
 * answers with the file's mode by default, the same with --act-quant fp8,
 * and otherwise with --act-quant none (the logprobs of a greedy completion
 * tell the modes apart). */
static char *serve_logprobs(const char *model, const char *args) {
    server s;
    server_start(&s, model, args);
    http_resp r;
    const int st = post(s.port, "/v1/completions",
                        "{\"prompt\":\"In the beginning\",\"max_tokens\":8,\"temperature\":0,\"logprobs\":1}", &r);
    whole_result w;
    CHECKF(st == 200 && !whole_parse(r.body, &w), "status %d: %s", st, r.body ? r.body : "");
    char *lp = st == 200 && w.logprobs ? strdup(w.logprobs) : NULL;
    if (st == 200) whole_free(&w);
    http_free(&r);
    CHECK(server_stop(&s) == 0);
    REQUIRE(lp && *lp);
    return lp;
}

TEST(gguf_fp8_serve_act_quant) {
    char path[1024], cmd[4096];
    snprintf(path, sizeof path, "%s/tiny-bf16.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s quantize -m models/tiny -o %s --type BF16 2>&1", test_bin(), path);
    test_run_ok(cmd, NULL);
    char *dflt = serve_logprobs(path, "");
    char *fp8 = serve_logprobs(path, "--act-quant fp8");
    char *none = serve_logprobs(path, "--act-quant none");
    CHECKF(!strcmp(dflt, fp8), "default and --act-quant fp8 differ:\n  %s\n  %s", dflt, fp8);
    CHECKF(strcmp(none, fp8), "--act-quant none answers as fp8 does: %s", none);
    free(dflt); free(fp8); free(none);
}
