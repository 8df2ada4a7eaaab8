/* test_cli_bench.c: `dsv32 bench` driven as a user would, on a tiny
 * synthesized model: every measurement comes out as one JSON line with the
 * documented fields, both ways of reaching a depth work, and bad options
 * give one clear line. Nothing here asserts on a speed. */
#include <stdlib.h>
#include <string.h>

#include "dsv32_synth.h"
#include "test.h"
#include "tiny_model.h"

static int count_lines(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, needle)); p++) n++;
    return n;
}

TEST(cli_bench_json_lines) {
    const char *dir = tiny_synth("m", tiny_write("config.json", tiny_config), DSV_SYNTH_FP8, 1, 0);
    char cmd[4096];
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s bench -m %s --depth 0,100 --prefill 6 --decode 5 --fill random --attn both "
             "--json --bw-mib 16 -t 2 2>/dev/null", test_bin(), dir);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    /* 2 depths x 2 modes x (prefill, decode), and nothing else on stdout. */
    CHECK_EQ_INT(count_lines(out, "\n"), 8);
    CHECK_EQ_INT(count_lines(out, "{\"model\":\"m\""), 8);
    CHECK_EQ_INT(count_lines(out, "\"phase\":\"decode\""), 4);
    CHECK_EQ_INT(count_lines(out, "\"mode\":\"dense\""), 4);
    CHECK_EQ_INT(count_lines(out, "\"depth\":100,"), 4);
    const char *keys[] = {"\"tok_s\":", "\"ms_per_tok\":", "\"attn_ms\":", "\"weight_bytes_per_tok\":", "\"gbs\":",
                          "\"mem_gbs\":", "\"kv_bytes_per_tok\":656,", "\"peak_rss_mb\":", "\"amx_tflops\":",
                          "\"linear_tflops\":", "\"fill\":\"random\""};
    for (int i = 0; i < 11; i++) CHECKF(count_lines(out, keys[i]) == 8, "%s: %d lines", keys[i], count_lines(out, keys[i]));
    /* Latency percentiles on the decode lines only, in order p50 <= p90 <= p99 <= max. */
    const char *pk[] = {"\"p50_ms\":", "\"p90_ms\":", "\"p99_ms\":", "\"max_ms\":"};
    for (int i = 0; i < 4; i++) CHECKF(count_lines(out, pk[i]) == 4, "%s: %d lines", pk[i], count_lines(out, pk[i]));
    for (const char *l = strstr(out, "\"p50_ms\":"); l; l = strstr(l + 1, "\"p50_ms\":")) {
        double p[4];
        CHECK(sscanf(l, "\"p50_ms\":%lf,\"p90_ms\":%lf,\"p99_ms\":%lf,\"max_ms\":%lf", &p[0], &p[1], &p[2], &p[3]) == 4);
        CHECKF(p[0] > 0 && p[0] <= p[1] && p[1] <= p[2] && p[2] <= p[3], "%g %g %g %g", p[0], p[1], p[2], p[3]);
    }
    /* The compute peak of the context's kernel level: a positive number
     * wherever the level runs on a vector or tile unit (every level but
     * generic), and each unit's own peak, null where the CPU lacks it. */
    for (const char *l = strstr(out, "\"kernels\":\""); l; l = strstr(l + 1, "\"kernels\":\"")) {
        const char *pk = strstr(l, "\"peak_tflops\":"), *all = strstr(l, "\"peaks\":{\"avx2_fma\":");
        REQUIRE(pk && all);
        double v = 0;
        if (strncmp(l, "\"kernels\":\"generic\"", 19))
            CHECKF(sscanf(pk, "\"peak_tflops\":%lf", &v) == 1 && v > 0, "%.80s", pk);
    }
    free(out);

    /* Real fill in small chunks, dense attention; the table on stdout. */
    snprintf(cmd, sizeof cmd, "%s bench -m %s --depth 40 --fill real --batch 16 --prefill 4 --decode 1 --dense "
             "--bw-mib 16 2>&1", test_bin(), dir);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    CHECKF(strstr(out, "read bandwidth") && strstr(out, "AMX BF16") && strstr(out, "compute peaks") && strstr(out, "prefill dense") && strstr(out, "decode  dense"),
           "%s", out);
    free(out);
}

TEST(cli_bench_help_and_errors) {
    char cmd[4096];
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s bench --help", test_bin());
    CHECK_EQ_INT(test_run(cmd, &out), 0);
    const char *opts[] = {"-m, --model DIR", "--depth", "--prefill", "--decode", "--fill", "--dense", "--topk", "--attn",
                          "-t, --threads N", "--batch N", "--seed", "--bw-mib", "--json", "--warmup"};
    for (int i = 0; i < 14; i++) CHECKF(out && strstr(out, opts[i]), "help lacks %s", opts[i]);
    free(out);
    const char *dir = tiny_synth("m", tiny_write("config.json", tiny_config), DSV_SYNTH_BF16, 1, 0);
    const char *bad[] = {"--fill bogus", "--depth 1,x", "--depth -4", "--dense --topk 4", "--attn both --dense",
                         "--prefill 0 --decode 0", "--bogus", "-t 0", "--warmup -1"};
    for (int i = 0; i < 9; i++) {
        snprintf(cmd, sizeof cmd, "%s bench -m %s --bw-mib 16 %s 2>&1", test_bin(), dir, bad[i]);
        CHECKF(test_run(cmd, &out) != 0, "'%s' succeeded", bad[i]);
        CHECKF(out && strstr(out, "dsv32 bench: ") && strchr(out, '\n') == out + strlen(out) - 1, "'%s': %s", bad[i],
               out);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s bench 2>&1", test_bin());
    CHECK(test_run(cmd, &out) != 0 && out && strstr(out, "missing -m"));
    free(out);
}
