/* test_cmd_tokenize.c: `dsv32 tokenize` and `dsv32 detokenize`, driven as a
 * user would, through pipes (the binary is $DSV32_BIN, set by `make test`). */
#include <cjson/cJSON.h>
#include <stdarg.h>

#include "test.h"

/* Runs a shell command line built from fmt; returns its exit status and its
 * stdout in *out (caller frees). */
static int run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(char **out, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = test_run(cmd, out);
    REQUIREF(*out, "cannot run %s", cmd);
    return rc;
}

TEST(cmd_tokenize_text) {
    const char *b = test_bin(), *dir = test_tokenizer_dir(1);
    char *out;
    CHECK_EQ_INT(run(&out, "printf 'Hello! I am DeepSeek.' | %s tokenize -m %s", b, dir), 0);
    CHECK_STR(out, "19923,3,342,1030,22651,4374,1465,16\n");
    free(out);
    /* A tokenizer.json path works as well as the directory. */
    CHECK_EQ_INT(run(&out, "printf '<think>' | %s tokenize --model %s/tokenizer.json", b, dir), 0);
    CHECK_STR(out, "128798\n");
    free(out);
    CHECK_EQ_INT(run(&out, "%s tokenize -m %s </dev/null", b, dir), 0);
    CHECK_STR(out, "\n");
    free(out);
}

/* golden.jsonl's lines carry "text", so it is valid --jsonl input as is. */
TEST(cmd_tokenize_jsonl) {
    const char *b = test_bin(), *dir = test_tokenizer_dir(1);
    char *out;
    CHECK_EQ_INT(run(&out, "%s tokenize -m %s --jsonl < %s", b, dir, test_shared("tokenizer/golden.jsonl")), 0);
    size_t len;
    char *golden = test_read_file(test_shared("tokenizer/golden.jsonl"), &len);
    REQUIRE(golden);
    int lines = 0;
    char *g = golden, *o = out;
    for (char *gn, *on; (gn = strchr(g, '\n')) && (on = strchr(o, '\n')); g = gn + 1, o = on + 1) {
        lines++;
        cJSON *gj = cJSON_ParseWithLength(g, (size_t)(gn - g)), *oj = cJSON_ParseWithLength(o, (size_t)(on - o));
        REQUIREF(gj && oj, "line %d: bad JSON", lines);
        char *want = cJSON_PrintUnformatted(cJSON_GetObjectItem(gj, "ids"));
        char *got = cJSON_PrintUnformatted(cJSON_GetObjectItem(oj, "ids"));
        CHECKF(want && got && !strcmp(want, got), "line %d: %s != %s", lines, got, want);
        free(want);
        free(got);
        cJSON_Delete(gj);
        cJSON_Delete(oj);
    }
    CHECK_EQ_INT(lines, 329);
    free(golden);
    free(out);

    /* Blank lines are skipped; escapes, NUL included, are decoded exactly. */
    char path[1024];
    snprintf(path, sizeof path, "%s/in.jsonl", test_tmpdir());
    const char *in = "{\"id\": 7, \"text\": \"a\\u0000b\"}\n\n{\"text\":\"<think>\\ud83d\\ude00\"}\n";
    test_write_file(path, in, strlen(in));
    CHECK_EQ_INT(run(&out, "%s tokenize -m %s --jsonl < %s", b, dir, path), 0);
    CHECK_STR(out, "{\"ids\":[67,191,68]}\n{\"ids\":[128798,28927,225]}\n");
    free(out);
}

/* Any bytes survive tokenize | detokenize. */
TEST(cmd_detokenize_round_trip) {
    const char *b = test_bin(), *dir = test_tokenizer_dir(1);
    char in[1024], back[1024], *out;
    snprintf(in, sizeof in, "%s/in.txt", test_tmpdir());
    snprintf(back, sizeof back, "%s/back.txt", test_tmpdir());
    static const char text[] = "<｜begin▁of▁sentence｜>稀疏注意力 \xe4\xb8 ok\xff\n\ttabs <think>\x00 end\n";
    test_write_file(in, text, sizeof text - 1);
    CHECK_EQ_INT(run(&out, "%s tokenize -m %s < %s | %s detokenize -m %s > %s", b, dir, in, b, dir, back), 0);
    free(out);
    size_t len;
    char *got = test_read_file(back, &len);
    CHECK(got && len == sizeof text - 1 && !memcmp(got, text, len));
    free(got);

    /* Separators: commas, spaces, newlines, brackets. */
    CHECK_EQ_INT(run(&out, "printf '[0, 19923,3\\n342]' | %s detokenize -m %s", b, dir), 0);
    CHECK_STR(out, "<｜begin▁of▁sentence｜>Hello! I");
    free(out);
    CHECK_EQ_INT(run(&out, "echo 0 128803 33310 128804 1 | %s detokenize -m %s --skip-special", b, dir), 0);
    CHECK_STR(out, "<｜User｜>hello<｜Assistant｜>");
    free(out);
}

TEST(cmd_tokenize_help) {
    const char *b = test_bin();
    char *out;
    CHECK_EQ_INT(run(&out, "%s tokenize --help", b), 0);
    static const char *const opts[] = {"-m, --model", "--jsonl", "--bench FILE", "--bench-time", "--help", "default"};
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) CHECKF(strstr(out, opts[i]), "no %s in help", opts[i]);
    free(out);
    CHECK_EQ_INT(run(&out, "%s detokenize -h", b), 0);
    CHECK(strstr(out, "--model") && strstr(out, "--skip-special") && strstr(out, "default"));
    free(out);
    CHECK_EQ_INT(run(&out, "%s --help", b), 0);
    CHECK(strstr(out, "tokenize") && strstr(out, "detokenize"));
    free(out);
}

/* Each error is one line on stderr naming the command, and a non-zero exit. */
TEST(cmd_tokenize_errors) {
    const char *b = test_bin(), *dir = test_tokenizer_dir(1);
    char bad[1024], *out;
    snprintf(bad, sizeof bad, "%s/bad", test_tmpdir());
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "mkdir -p %s && printf '{\"model\": 1' > %s/tokenizer.json", bad, bad);
    REQUIRE(system(cmd) == 0);
    static const struct { const char *args, *input; int status; const char *msg; } cases[] = {
        {"tokenize", "x", 2, "dsv32 tokenize: -m MODEL is required"},
        {"tokenize -m", "x", 2, "dsv32 tokenize: unknown or incomplete option '-m'"},
        {"tokenize --frobnicate", "x", 2, "dsv32 tokenize: unknown or incomplete option '--frobnicate'"},
        {"tokenize -m /nonexistent", "x", 1, "dsv32 tokenize: /nonexistent: No such file"},
        {"tokenize -m BAD", "x", 1, "dsv32 tokenize: BAD/tokenizer.json: invalid JSON"},
        {"tokenize -m DIR --jsonl", "{\"text\":\"a\"}\n{\"txt\":1}\n", 1, "dsv32 tokenize: stdin line 2: no member"},
        {"tokenize -m DIR --jsonl", "not json\n", 1, "dsv32 tokenize: stdin line 1: expected a JSON object"},
        {"tokenize -m DIR --bench /nonexistent", "", 1, "dsv32 tokenize: /nonexistent: cannot open (No such file"},
        {"detokenize", "1", 2, "dsv32 detokenize: -m MODEL is required"},
        {"detokenize -m DIR", "1, two", 1, "dsv32 detokenize: stdin: 'two' is not a token id"},
        {"detokenize -m DIR", "1 -3", 1, "dsv32 detokenize: stdin: '-3' is not a token id"},
        {"detokenize -m DIR", "1 128815", 1, "dsv32 detokenize: ids[1]: 128815 is not a token id"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[2048], in[1024];
        snprintf(in, sizeof in, "%s/stdin", test_tmpdir());
        test_write_file(in, cases[i].input, strlen(cases[i].input));
        /* Substitute the model directories into the arguments. */
        const char *a = cases[i].args, *p;
        size_t k = 0;
        while ((p = strstr(a, "DIR")) || (p = strstr(a, "BAD"))) {
            k += (size_t)snprintf(args + k, sizeof args - k, "%.*s%s", (int)(p - a), a, p[0] == 'D' ? dir : bad);
            a = p + 3;
        }
        snprintf(args + k, sizeof args - k, "%s", a);
        /* stderr to stdout, stdout away. */
        int rc = run(&out, "%s %s < %s 2>&1 >/dev/null", b, args, in);
        CHECKF(rc == cases[i].status, "%s: exit %d, want %d", cases[i].args, rc, cases[i].status);
        char want[2048];
        snprintf(want, sizeof want, "%s", cases[i].msg);
        if (strstr(cases[i].msg, "BAD"))
            snprintf(want, sizeof want, "dsv32 tokenize: %s/tokenizer.json: invalid JSON", bad);
        CHECKF(strstr(out, want) != NULL, "%s: stderr \"%s\" lacks \"%s\"", cases[i].args, out, want);
        char *nl = strchr(out, '\n');
        CHECKF(nl && nl[1] == 0, "%s: stderr is not one line: \"%s\"", cases[i].args, out);
        free(out);
    }
}

TEST(cmd_tokenize_bench) {
    const char *b = test_bin(), *dir = test_tokenizer_dir(1);
    char path[1024], *out;
    snprintf(path, sizeof path, "%s/bench.txt", test_tmpdir());
    const char *text = "Sparse attention keeps long contexts cheap. 稀疏注意力降低了长上下文的计算成本。\n";
    test_write_file(path, text, strlen(text));
    CHECK_EQ_INT(run(&out, "%s tokenize -m %s --bench %s --bench-time 0", b, dir, path), 0);
    CHECKF(strstr(out, "MB/s") && strstr(out, "tokens/s") && strstr(out, "bytes"), "%s", out);
    free(out);
}
