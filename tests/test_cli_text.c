/* test_cli_text.c: generate, chat and tokenize --chat driven as a user would:
 * pipes for generate and tokenize, a pseudo-terminal for chat. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"
#include "test.h"

TEST(cli_generate_streams_and_reports) {
    const char *m = fixture_random();
    char cmd[2048], *out = NULL, *all = NULL;
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'In the beginning' -n 12 --temp 0 -t 2 2>/dev/null", test_bin(), m);
    CHECKF(test_run(cmd, &out) == 0, "%s", out);
    /* The stats go to stderr only; stdout holds the completion. */
    CHECK(out && !strstr(out, "tok/s"));
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'In the beginning' -n 12 --temp 0 -t 1 2>&1", test_bin(), m);
    CHECK(test_run(cmd, &all) == 0);
    /* The prompt is BOS (add_bos_token) plus the text's tokens. */
    char *ids = NULL, want[64];
    snprintf(cmd, sizeof cmd, "printf 'In the beginning' | %s tokenize -m %s", test_bin(), m);
    REQUIRE(test_run(cmd, &ids) == 0 && ids);
    int n_ids = 1;
    for (char *p = ids; *p; p++) n_ids += *p == ',';
    snprintf(want, sizeof want, "prompt tokens: %d,", n_ids + 1);
    free(ids);
    CHECKF(all && strstr(all, want) && strstr(all, "decode:") && strstr(all, "peak memory:"), "%s (want %s)", all, want);
    /* Greedy is deterministic and independent of the thread count. */
    CHECKF(all && out && !strncmp(all, out, strlen(out)), "'%s' vs '%s'", out, all);
    free(out);
    free(all);
    /* Same seed, same text; sampling works at all. */
    char *a = NULL, *b = NULL;
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'x' -n 16 --temp 1 --top-p 0.9 --seed 7 2>/dev/null", test_bin(), m);
    CHECK(test_run(cmd, &a) == 0);
    CHECK(test_run(cmd, &b) == 0);
    CHECK(a && b && !strcmp(a, b));
    free(a);
    free(b);
}

TEST(cli_generate_input_file_batch) {
    const char *m = fixture_random();
    char path[1200], cmd[4096], *out = NULL, *one = NULL;
    snprintf(path, sizeof path, "%s/prompts.txt", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("first prompt\n\nsecond\nprompt, two lines\n\n\nthird\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s generate -m %s --input-file %s -n 8 --temp 0 2>/dev/null", test_bin(), m, path);
    CHECK(test_run(cmd, &out) == 0);
    REQUIRE(out);
    char *p1 = strstr(out, "Prompt: first prompt\nCompletion: "), *p2 = strstr(out, "Prompt: second\nprompt, two lines\n");
    char *p3 = strstr(out, "Prompt: third\n");
    CHECKF(p1 && p2 && p3 && p1 < p2 && p2 < p3, "%s", out);
    /* In a batch each prompt gets what it gets alone (greedy). */
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'third' -n 8 --temp 0 2>/dev/null", test_bin(), m);
    CHECK(test_run(cmd, &one) == 0);
    REQUIRE(one);
    one[strlen(one) - 1] = 0; /* the final newline */
    char want[1024];
    snprintf(want, sizeof want, "Prompt: third\nCompletion: %s\n", one);
    CHECKF(p3 && !strncmp(p3, want, strlen(want)), "batch '%s' vs alone '%s'", p3, one);
    free(out);
    free(one);
}

TEST(cli_generate_errors) {
    const char *m = fixture_random();
    char cmd[2048], *out = NULL;
    struct { const char *args, *msg; } cases[] = {
        {"-p hi --temp -1", "--temp: '-1' is not a number"},
        {"-p hi -n 5000 --ctx 64", "exceeds the context"},
        {"", "give exactly one of -p TEXT or --input-file F"},
        {"-p hi --input-file /nonexistent", "give exactly one of"},
        {"--input-file /nonexistent/prompts", "/nonexistent/prompts: cannot open"},
        {"-p hi --frobnicate", "unknown option '--frobnicate'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s generate -m %s %s 2>&1", test_bin(), m, cases[i].args);
        CHECKF(test_run(cmd, &out) != 0, "%s succeeded", cases[i].args);
        CHECKF(out && strstr(out, cases[i].msg), "%s: '%s'", cases[i].args, out);
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s generate -p hi -m /nonexistent 2>&1", test_bin());
    CHECK(test_run(cmd, &out) != 0 && strstr(out, "/nonexistent/config.json: cannot open"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --help", test_bin());
    CHECK(test_run(cmd, &out) == 0 && strstr(out, "--temp T") && strstr(out, "(default 0.6)"));
    free(out);
}

/* Reads from the pty until `needle` has appeared after `from`, or 20 s pass. */
static int read_until(int fd, char *buf, size_t cap, size_t *len, size_t from, const char *needle) {
    for (int waited = 0; waited < 20000;) {
        buf[*len] = 0;
        if (strstr(buf + from, needle)) return 1;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, 100);
        if (r <= 0) { waited += 100; continue; }
        ssize_t n = read(fd, buf + *len, cap - *len - 1);
        if (n <= 0) return 0;
        *len += (size_t)n;
    }
    return 0;
}

TEST(cli_chat_terminal_with_clear) {
    const char *m = fixture_random();
    int fd;
    pid_t pid = forkpty(&fd, NULL, NULL, NULL);
    REQUIRE(pid >= 0);
    if (pid == 0) {
        execl(test_bin(), test_bin(), "chat", "-m", m, "-n", "6", "--temp", "0", "--think", "-t", "1", (char *)NULL);
        _exit(127);
    }
    static char buf[1 << 16];
    size_t len = 0;
    CHECK(read_until(fd, buf, sizeof buf, &len, 0, "> "));
    size_t mark = len;
    REQUIRE(write(fd, "Hello there\n", 12) == 12);
    CHECKF(read_until(fd, buf, sizeof buf, &len, mark + 12, "> "), "no second prompt: '%s'", buf);
    /* Thinking mode: the answer starts as reasoning, dimmed on a terminal. */
    CHECKF(strstr(buf + mark, "\033[2m") != NULL, "no dimmed reasoning in '%s'", buf + mark);
    mark = len;
    REQUIRE(write(fd, "/clear\n", 7) == 7);
    CHECK(read_until(fd, buf, sizeof buf, &len, mark, "(conversation cleared)"));
    mark = len;
    REQUIRE(write(fd, "Again\n", 6) == 6);
    CHECK(read_until(fd, buf, sizeof buf, &len, mark + 6, "> "));
    REQUIRE(write(fd, "/exit\n", 6) == 6);
    int st = 0;
    for (int i = 0; i < 200 && waitpid(pid, &st, WNOHANG) == 0; i++) usleep(50000);
    if (waitpid(pid, &st, WNOHANG) == 0) { kill(pid, SIGKILL); waitpid(pid, &st, 0); CHECKF(0, "chat did not exit"); }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(fd);
}

TEST(cli_chat_pipe_and_batch) {
    const char *m = fixture_random();
    char cmd[2048], path[1200], *out = NULL;
    snprintf(cmd, sizeof cmd, "printf 'hi\\nsecond turn\\n' | %s chat -m %s -n 5 --temp 0 --system 'Be brief.' 2>&1", test_bin(), m);
    CHECKF(test_run(cmd, &out) == 0, "%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/p.txt", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("one\n\ntwo\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s chat -m %s --input-file %s -n 5 --temp 0 2>/dev/null", test_bin(), m, path);
    CHECK(test_run(cmd, &out) == 0);
    CHECKF(out && strstr(out, "Prompt: one\n") && strstr(out, "Prompt: two\n") && strstr(out, "Answer: "), "%s", out);
    free(out);
}

TEST(cli_tokenize_chat_matches_goldens) {
    /* The real tokenizer, decompressed, on the goldens' conversations. */
    char cmd[8192], zst[PATH_MAX], cfg[PATH_MAX], *out = NULL;
    REQUIRE(realpath(test_shared("tokenizer/tokenizer.json.zst"), zst));
    REQUIRE(realpath(test_shared("tokenizer/tokenizer_config.json"), cfg));
    char *golden = test_read_file(test_shared("tokenizer/chat-golden.jsonl"), NULL);
    REQUIRE(golden);
    char in[1200];
    snprintf(in, sizeof in, "%s/in.jsonl", test_tmpdir());
    FILE *f = fopen(in, "w");
    REQUIRE(f);
    int n = 0;
    cJSON *want[64];
    for (char *line = strtok(golden, "\n"); line && n < 64; line = strtok(NULL, "\n")) {
        cJSON *g = cJSON_Parse(line), *req = cJSON_CreateObject();
        REQUIRE(g);
        cJSON_AddItemToObject(req, "messages", cJSON_Duplicate(cJSON_GetObjectItem(g, "messages"), 1));
        cJSON_AddItemToObject(req, "thinking", cJSON_Duplicate(cJSON_GetObjectItem(g, "thinking"), 1));
        cJSON_AddItemToObject(req, "add_generation_prompt", cJSON_Duplicate(cJSON_GetObjectItem(g, "add_generation_prompt"), 1));
        char *s = cJSON_PrintUnformatted(req);
        fprintf(f, "%s\n", s);
        free(s);
        cJSON_Delete(req);
        want[n++] = g;
    }
    fclose(f);
    free(golden);
    char b[PATH_MAX];
    REQUIRE(realpath(test_bin(), b));
    snprintf(cmd, sizeof cmd, "cd %.1000s && zstd -dcq %.1000s > tokenizer.json && cp %.1000s . && %.1000s tokenize -m . --chat < in.jsonl",
             test_tmpdir(), zst, cfg, b);
    REQUIREF(test_run(cmd, &out) == 0, "%s", out);
    int i = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"), i++) {
        REQUIRE(i < n);
        cJSON *got = cJSON_Parse(line);
        REQUIREF(got, "bad JSON line: %s", line);
        CHECKF(!strcmp(cJSON_GetObjectItem(got, "text")->valuestring, cJSON_GetObjectItem(want[i], "text")->valuestring),
               "case %d text", i);
        CHECKF(cJSON_Compare(cJSON_GetObjectItem(got, "ids"), cJSON_GetObjectItem(want[i], "ids"), 1), "case %d ids", i);
        cJSON_Delete(got);
    }
    CHECK_EQ_INT(i, n);
    for (int k = 0; k < n; k++) cJSON_Delete(want[k]);
    free(out);
}
