/* test_bench_sh.c: the llama.cpp comparison of tools/bench.sh (`make bench
 * LLAMA_BENCH=...`), end to end on the embedded model written as a Q4_K_M
 * GGUF, with a stand-in for llama-bench that prints JSON lines in its format
 * (fixed figures, different per round): the report pairs both engines per
 * test and depth, averages the rounds with their range, names the llama.cpp
 * commit and the commands without this machine's folders, and keeps the
 * report's other section. Bad settings stop it with one line. The real
 * llama-bench is not needed; no speed is asserted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

/* Prints, per depth of -d, a prefill line (n_prompt = -p) and a decode line
 * (n_gen = -n), llama-bench's "key": value spacing, a string with a comma;
 * round 1 reports 100 and 30 tok/s, round 2 300 and 50 (a counter file). */
static const char *fake =
    "#!/usr/bin/env bash\n"
    "p=0 n=0 d=0\n"
    "while [ $# -gt 0 ]; do case $1 in -p) p=$2; shift;; -n) n=$2; shift;; -d) d=$2; shift;; esac; shift; done\n"
    "c=$(cat \"$0.count\" 2>/dev/null || echo 0); c=$((c + 1)); echo $c > \"$0.count\"\n"
    "pp=$((c == 1 ? 100 : 300)) tg=$((c == 1 ? 30 : 50))\n"
    "echo 'loading model' >&2\n"
    "for dd in ${d//,/ }; do\n"
    "  echo \"{\\\"build_commit\\\": \\\"abc1234\\\", \\\"cpu_info\\\": \\\"Some CPU, 2 cores\\\", \\\"n_prompt\\\": $p, "
    "\\\"n_gen\\\": 0, \\\"n_depth\\\": $dd, \\\"avg_ts\\\": $pp.000000, \\\"samples_ts\\\": [ $pp.0 ]}\"\n"
    "  echo \"{\\\"build_commit\\\": \\\"abc1234\\\", \\\"cpu_info\\\": \\\"Some CPU, 2 cores\\\", \\\"n_prompt\\\": 0, "
    "\\\"n_gen\\\": $n, \\\"n_depth\\\": $dd, \\\"avg_ts\\\": $tg.000000, \\\"samples_ts\\\": [ $tg.0 ]}\"\n"
    "done\n";

TEST(bench_sh_llama_comparison) {
    const char *dir = test_tmpdir();
    char gguf[1024], llama[1024], doc[1024], cmd[8192], env[4096], *out = NULL;
    snprintf(gguf, sizeof gguf, "%s/tiny-q4.gguf", dir);
    snprintf(llama, sizeof llama, "%s/llama-bench", dir);
    snprintf(doc, sizeof doc, "%s/bench.md", dir);
    snprintf(cmd, sizeof cmd, "%s quantize -m models/tiny -o %s --type Q4_K_M 2>&1", test_bin(), gguf);
    REQUIRE(test_run(cmd, &out) == 0);
    free(out);
    FILE *f = fopen(llama, "w");
    REQUIRE(f && fputs(fake, f) >= 0 && fclose(f) == 0);
    snprintf(cmd, sizeof cmd, "chmod +x %s", llama);
    REQUIRE(system(cmd) == 0);
    /* A report from before: its standard section stays, its comparison goes. */
    f = fopen(doc, "w");
    REQUIRE(f && fputs("# Benchmark results\n\nOLD STANDARD SECTION\n\n## Against llama.cpp\n\nOLD COMPARISON\n", f) >= 0 &&
            fclose(f) == 0);

    snprintf(env, sizeof env, "BUILD=%s DSV32_BIN=%s BENCH_OUT=%s/out BENCH_DOC=%s BENCH_STANDARD=0 BENCH_THREADS=1 "
             "LLAMA_BENCH=%s LLAMA_DEPTHS=0,8 LLAMA_PREFILL=4 LLAMA_DECODE=2 LLAMA_REPS=2",
             dir, test_bin(), dir, doc, llama);
    snprintf(cmd, sizeof cmd, "%s LLAMA_GGUF_Q4_K_M=%s tools/bench.sh > %s/log 2>&1", env, gguf, dir);
    int rc = system(cmd);
    size_t len = 0;
    char *md = (char *)test_read_file(doc, &len);
    CHECKF(rc == 0 && md, "bench.sh exited %d (log in %s/log)", rc, dir);
    if (md) {
        CHECK(strstr(md, "OLD STANDARD SECTION") && !strstr(md, "OLD COMPARISON"));
        CHECK(strstr(md, "## Against llama.cpp") && strstr(md, "abc1234") && strstr(md, "dsv32 kernels"));
        /* Rounds averaged with their range, per test and depth. */
        const char *rows[] = {"| Q4_K_M | decode 2 | 0 | 40.00 (30.00–50.00) | ", "| Q4_K_M | decode 2 | 8 | 40.00 (30.00–50.00) | ",
                              "| Q4_K_M | prefill 4 | 0 | 200.00 (100.00–300.00) | ",
                              "| Q4_K_M | prefill 4 | 8 | 200.00 (100.00–300.00) | "};
        for (int i = 0; i < 4; i++) {
            const char *r = strstr(md, rows[i]);
            CHECKF(r, "no row '%s' in:\n%s", rows[i], md);
            if (!r) continue;
            /* dsv32's figure on the same file, then the ratio (no safetensors for Q4_K_M). */
            double v = 0, lo = 0, hi = 0, ratio = 0;
            CHECKF(sscanf(r + strlen(rows[i]), "%lf (%lf–%lf) | %lfx | — | — |", &v, &lo, &hi, &ratio) == 4 && v > 0 &&
                   lo <= v && v <= hi && ratio > 0, "%.120s", r);
        }
        CHECK(strstr(md, "llama-bench -m tiny-q4.gguf -t 1 -r 1 -p 4 -n 2 -d 0,8 -o jsonl\n") &&
              strstr(md, "dsv32 bench -m tiny-q4.gguf --json"));
        CHECKF(!strstr(md, dir), "the report names the folder %s", dir);
    }
    free(md);

    /* Bad settings: one line naming the variable, nothing run. */
    const char *bad[][2] = {{"", "no GGUF"}, {"LLAMA_GGUF_Q8_0=/nonexistent.gguf", "LLAMA_GGUF_Q8_0"},
                            {"LLAMA_GGUF_Q4_K_M=x LLAMA_DEPTHS=1,x", "LLAMA_DEPTHS"},
                            {"LLAMA_GGUF_Q4_K_M=x LLAMA_REPS=0", "LLAMA_REPS"}};
    for (int i = 0; i < 4; i++) {
        snprintf(cmd, sizeof cmd, "%s %s tools/bench.sh 2>&1", env, bad[i][0]);
        CHECKF(test_run(cmd, &out) != 0 && out && strstr(out, "bench.sh: ") && strstr(out, bad[i][1]) &&
               strchr(out, '\n') == out + strlen(out) - 1, "'%s': %s", bad[i][0], out ? out : "");
        free(out);
    }
}
