/* test_serve_bench.c: tools/serve_bench.mjs run briefly against `dsv32
 * serve` on the embedded model (models/tiny): its --json lines carry every
 * documented figure per concurrency, with values that make sense (counts as
 * asked, times positive, p99 not below p50), and bad options give one line.
 * Nothing here asserts on a speed. Needs node (skipped without it, unless
 * DSV32_REQUIRE_NODE makes that a failure). */
#include <stdlib.h>
#include <string.h>

#include "server_util.h"
#include "test.h"

/* The number after "key": in a JSON line (a bare number or null), or -1e300
 * when the key is missing or null. */
static double field(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p || !strncmp(p + strlen(pat), "null", 4)) return -1e300;
    return strtod(p + strlen(pat), NULL);
}

TEST(serve_bench_itl_json) {
    if (test_run("command -v node", NULL) != 0)
        SKIP_UNLESS_REQUIRED("DSV32_REQUIRE_NODE", "node is not installed (tools/install-deps.sh installs it)");
    server s;
    /* The scalar kernels make a token take milliseconds (the tiny model's
     * are well under one with SIMD): a client that falls behind reads
     * several chunks at once, and with sub-millisecond tokens on a busy
     * machine every gap of a level can come out 0. */
    server_start_with(&s, "env DSV32_ISA=generic", "models/tiny", "-t 1 --parallel 2");
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "timeout 300 node tools/serve_bench.mjs http://127.0.0.1:%d --clients 1,2 --requests 2 "
             "--prompt-tokens 12 --max-tokens 10 --json 2>/dev/null", s.port);
    int rc = test_run(cmd, &out);
    CHECKF(rc == 0 && out, "exit %d: %s", rc, out ? out : "");
    const int want_clients[2] = {1, 2};
    const char *line = out;
    for (int i = 0; i < 2 && line && *line; i++) {
        const char *end = strchr(line, '\n');
        CHECKF(end && line[0] == '{', "line %d: %s", i, line);
        if (!end) break;
        CHECK_EQ_INT((int)field(line, "clients"), want_clients[i]);
        CHECK_EQ_INT((int)field(line, "requests"), 2 * want_clients[i]);
        /* EOS is banned: every request generates all of its tokens. */
        CHECK_EQ_INT((int)field(line, "tokens"), 10 * 2 * want_clients[i]);
        CHECK(field(line, "seconds") > 0 && field(line, "gen_tok_s") > 0);
        const double t50 = field(line, "ttft_p50_ms"), t99 = field(line, "ttft_p99_ms");
        CHECKF(t50 > 0 && t99 >= t50, "TTFT p50 %g p99 %g", t50, t99);
        /* At least one gap per request (10 tokens come in 2 or more chunks),
         * at most 9. Chunks read from the socket at once share a timestamp,
         * so a gap may be 0; p99 covers the slowest and is positive. */
        const double gaps = field(line, "itl_gaps");
        CHECKF(gaps >= 2 * want_clients[i] && gaps <= 9 * 2 * want_clients[i], "%g gaps", gaps);
        const double i50 = field(line, "itl_p50_ms"), i99 = field(line, "itl_p99_ms");
        CHECKF(i50 >= 0 && i99 > 0 && i99 >= i50, "ITL p50 %g p99 %g", i50, i99);
        line = end + 1;
    }
    CHECKF(line && !*line, "more than 2 lines: %s", out ? out : "");
    free(out);

    /* The table names the new columns; bad options are one line and exit 1. */
    snprintf(cmd, sizeof cmd, "node tools/serve_bench.mjs http://127.0.0.1:%d --clients 1 --requests 1 "
             "--prompt-tokens 4 --max-tokens 3 2>&1", s.port);
    CHECK(test_run(cmd, &out) == 0 && out && strstr(out, "ITL p50 ms") && strstr(out, "ITL p99 ms"));
    free(out);
    const char *bad[] = {"--clients 0", "--requests x", "--max-tokens", "--bogus 1"};
    for (int i = 0; i < 4; i++) {
        snprintf(cmd, sizeof cmd, "node tools/serve_bench.mjs http://127.0.0.1:%d %s 2>&1", s.port, bad[i]);
        CHECKF(test_run(cmd, &out) != 0 && out && !strncmp(out, "serve_bench: ", 13) &&
               strchr(out, '\n') == out + strlen(out) - 1, "'%s': %s", bad[i], out ? out : "");
        free(out);
    }
    CHECK_EQ_INT(server_stop(&s), 0);
    CHECK(test_run("node tools/serve_bench.mjs --help", &out) == 0 && out && strstr(out, "--json") &&
          strstr(out, "inter-token latency"));
    free(out);
}
