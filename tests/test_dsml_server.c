/* test_dsml_server.c: `dsv32 serve` in the DeepSeek-V3.2 (DSML) chat format
 * with the official `openai` npm client (tests/server/dsml_client.js): tool
 * calls streamed and not, malformed markup, structured output; and
 * structured output in the V3.2-Exp format over plain HTTP. Runs the
 * test build (DSV32_TEST_BIN, build/dsv32-test), whose hook lets a request
 * choose the model's answer; skipped, saying why, without node and npm or
 * the openai package (installed as tests/test_server_clients.c does). */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server_util.h"
#include "test.h"

static const char *node_modules(void) {
    static char mods[1100];
    if (test_run("command -v node && command -v npm", NULL) != 0)
        SKIP("node and npm are not installed (tools/install-deps.sh installs them)");
    const char *cache = getenv("DSV32_NODE_CACHE"), *home = getenv("HOME");
    char dir[1024];
    if (cache && *cache) snprintf(dir, sizeof dir, "%s", cache);
    else snprintf(dir, sizeof dir, "%s/.cache/dsv32-test-node", home && *home ? home : "/tmp");
    snprintf(mods, sizeof mods, "%s/node_modules", dir);
    char path[1200], cmd[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/openai/package.json", mods);
    if (stat(path, &st) != 0) {
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cd '%s' && timeout 600 npm install --prefix . --no-audit --no-fund "
                 "--loglevel=error openai@4.104.0 2>&1 | tail -5", dir, dir);
        test_run(cmd, NULL);
        if (stat(path, &st) != 0) SKIP("npm could not install openai@4.104.0 into %s", dir);
    }
    return mods;
}

TEST(dsml_server_openai_client) {
    const char *mods = node_modules();
    const char *tb = getenv("DSV32_TEST_BIN");
    if (!tb || !*tb) SKIP("DSV32_TEST_BIN is not set (run through make test)");
    setenv("DSV32_BIN", tb, 1); /* this test's server is the test build */
    server s;
    /* The V3.2 tools block alone is some 800 tokens of the tiny model's
     * vocabulary: a longer context than its 1024 leaves room for answers. */
    server_start(&s, "models/tiny", "-t 1 --chat-format deepseek-v3.2 --parallel 2 --ctx 2048");
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "NODE_PATH='%s' timeout 600 node tests/server/dsml_client.js http://127.0.0.1:%d tiny 2>&1",
             mods, s.port);
    int rc = test_run(cmd, &out);
    CHECKF(rc == 0 && out && strstr(out, "dsml client: ok"), "exit %d:\n%s", rc, out ? out : "");
    free(out);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* The shipped binary has no hook: the field is ignored like any unknown
 * one, and the model answers on its own. */
TEST(dsml_server_no_hook_in_shipped_binary) {
    server s;
    server_start(&s, "models/tiny", "-t 1 --chat-format deepseek-v3.2");
    http_resp r;
    const char *body = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":8,"
                       "\"temperature\":0,\"dsv32_test_completion\":\"FORCED-TEXT\"}";
    CHECK_EQ_INT(post(s.port, "/v1/chat/completions", body, &r), 200);
    CHECK(r.body && !strstr(r.body, "FORCED-TEXT"));
    http_free(&r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* Structured output in the V3.2-Exp format too (models/tiny ships its
 * template, so it is detected): json_schema answers parse and end with
 * "stop"; tool_choice "required" gives a call in the Exp markup whose
 * arguments parse. No hook needed: the model answers under the constraint. */
TEST(dsml_server_structured_exp_format) {
    server s;
    server_start(&s, "models/tiny", "-t 1 --ctx 2048");
    char body[2048];
    http_resp r;
    for (int seed = 1; seed <= 5; seed++) {
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"A person.\"}],\"seed\":%d,\"max_tokens\":300,"
                 "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":{\"type\":\"object\","
                 "\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":8},\"n\":{\"type\":\"integer\",\"minimum\":1,"
                 "\"maximum\":9}},\"required\":[\"name\",\"n\"]}}}}", seed);
        REQUIRE(post(s.port, "/v1/chat/completions", body, &r) == 200);
        whole_result w;
        REQUIRE(whole_parse(r.body, &w) == 0);
        CHECKF(!strcmp(w.finish, "stop"), "seed %d: finish %s", seed, w.finish);
        cJSON *v = w.content ? cJSON_Parse(w.content) : NULL;
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(v, "n");
        CHECKF(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(v, "name")) && cJSON_IsNumber(n) && n->valuedouble >= 1 &&
                   n->valuedouble <= 9, "seed %d: %s", seed, w.content ? w.content : "(null)");
        cJSON_Delete(v);
        whole_free(&w);
        http_free(&r);
    }
    for (int seed = 1; seed <= 3; seed++) {
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],\"seed\":%d,\"max_tokens\":300,"
                 "\"tool_choice\":\"required\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"weather\","
                 "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":10}},"
                 "\"required\":[\"city\"]}}}]}", seed);
        REQUIRE(post(s.port, "/v1/chat/completions", body, &r) == 200);
        whole_result w;
        REQUIRE(whole_parse(r.body, &w) == 0);
        CHECKF(!strcmp(w.finish, "tool_calls"), "seed %d: finish %s", seed, w.finish);
        CHECK(w.tool_name && !strcmp(w.tool_name, "weather"));
        cJSON *v = w.tool_args ? cJSON_Parse(w.tool_args) : NULL;
        CHECKF(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(v, "city")), "seed %d: %s", seed, w.tool_args ? w.tool_args : "");
        cJSON_Delete(v);
        whole_free(&w);
        http_free(&r);
    }
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* serve --think (V3.2-Speciale): a request that does not choose is in
 * thinking mode (its answer's reasoning comes apart); one that says
 * thinking false is not. */
TEST(dsml_server_think_default) {
    const char *tb = getenv("DSV32_TEST_BIN");
    if (!tb || !*tb) SKIP("DSV32_TEST_BIN is not set (run through make test)");
    setenv("DSV32_BIN", tb, 1);
    server s;
    server_start(&s, "models/tiny", "-t 1 --chat-format deepseek-v3.2 --think");
    static const struct { const char *extra, *reasoning, *content; } cases[] = {
        {"", "R.", "A."},
        {",\"chat_template_kwargs\":{\"thinking\":false}", NULL, "R.</think>A."},
    };
    for (int i = 0; i < 2; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":50,"
                 "\"dsv32_test_completion\":\"R.</think>A.\"%s}", cases[i].extra);
        http_resp r;
        REQUIRE(post(s.port, "/v1/chat/completions", body, &r) == 200);
        whole_result w;
        REQUIRE(whole_parse(r.body, &w) == 0);
        CHECKF(cases[i].reasoning ? w.reasoning && !strcmp(w.reasoning, cases[i].reasoning) : !w.reasoning || !*w.reasoning,
               "case %d: reasoning %s", i, w.reasoning ? w.reasoning : "(null)");
        CHECKF(w.content && !strcmp(w.content, cases[i].content), "case %d: content %s", i, w.content ? w.content : "(null)");
        whole_free(&w);
        http_free(&r);
    }
    CHECK_EQ_INT(server_stop(&s), 0);
}
