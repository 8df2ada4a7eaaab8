/* test_dsml.c: the DeepSeek-V3.2 chat format (DSML) and the format table.
 * Rendering against DeepSeek's encoder (shared/tokenizer/v32/chat-golden.jsonl,
 * DeepSeek's own test pair included), parsing against parse-golden.jsonl, the
 * OpenAI request mapping (request-level tools), round trips, malformed
 * markup, the stream parser at every cut, a random fuzz of the stream parser,
 * and detection of the format from a model directory. */
#include <cjson/cJSON.h>
#include <stdint.h>

#include "chat_util.h"
#include "dsv32_chat.h"
#include "test.h"

static const dsv_chat_format *v32(void) {
    const dsv_chat_format *f = dsv_chat_format_find("deepseek-v3.2");
    REQUIREF(f, "%s", dsv_errmsg());
    return f;
}

static int is_thinking(const cJSON *c) {
    const char *m = jstr(c, "thinking_mode");
    return m && !strcmp(m, "thinking");
}

/* Renders a request (a cJSON tree) in the V3.2 format. */
static char *render(const cJSON *req, int thinking) {
    char *json = cJSON_PrintUnformatted(req), *text = NULL;
    REQUIRE(json);
    int rc = dsv_chat_format_render_json(v32(), json, strlen(json), thinking, 1, &text);
    REQUIREF(rc == DSV_OK, "%s", dsv_errmsg());
    free(json);
    return text;
}

/* ---- Rendering ------------------------------------------------------------ */

static void render_golden(const cJSON *c, const char *json, void *u) {
    (void)json;
    (void)u;
    /* The golden line itself is a request: messages + thinking_mode. */
    char *text = render(c, 0);
    check_text(jstr(c, "name"), text, jstr(c, "text"));
    free(text);
}

TEST(dsml_render_golden) {
    int n = for_each_golden(test_shared("tokenizer/v32/chat-golden.jsonl"), render_golden, NULL);
    CHECK_EQ_INT(n, 10);
}

/* Request-level tools (the OpenAI form) attach to the first system message:
 * moving them there from the message gives the same prompt. When the system
 * message is empty, dropping it gives the same prompt too (a new empty one
 * is made at index 0). */
static void render_moved_tools(const cJSON *c, const char *json, void *u) {
    (void)json;
    int *moved = u;
    cJSON *req = cJSON_Duplicate(c, 1);
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    cJSON *first = cJSON_GetArrayItem(msgs, 0);
    const char *role = jstr(first, "role");
    if (!role || strcmp(role, "system") || !cJSON_GetObjectItemCaseSensitive(first, "tools")) {
        cJSON_Delete(req);
        return;
    }
    cJSON_AddItemToObject(req, "tools", cJSON_DetachItemFromObject(first, "tools"));
    char *text = render(req, 0);
    check_text(jstr(c, "name"), text, jstr(c, "text"));
    free(text);
    const char *content = jstr(first, "content");
    if (content && !*content) {
        cJSON_DeleteItemFromArray(msgs, 0);
        text = render(req, 0);
        check_text(jstr(c, "name"), text, jstr(c, "text"));
        free(text);
        (*moved)++;
    }
    (*moved)++;
    cJSON_Delete(req);
}

TEST(dsml_render_request_tools) {
    int moved = 0;
    for_each_golden(test_shared("tokenizer/v32/chat-golden.jsonl"), render_moved_tools, &moved);
    CHECK_EQ_INT(moved, 5); /* four cases with system tools, one with an empty system */
}

TEST(dsml_render_mapping) {
    /* "reasoning" is taken like "reasoning_content"; thinking comes from
     * chat_template_kwargs, and a developer turn before the last user turn
     * is dropped in thinking mode, as the encoder's drop_thinking does. */
    const char *req =
        "{\"chat_template_kwargs\":{\"thinking\":true},\"messages\":["
        "{\"role\":\"developer\",\"content\":\"old\"},"
        "{\"role\":\"user\",\"content\":\"q\"},"
        "{\"role\":\"assistant\",\"reasoning\":\"r\",\"content\":\"a\"}]}";
    char *t = NULL;
    REQUIREF(dsv_chat_format_render_json(v32(), req, strlen(req), 0, 1, &t) == DSV_OK, "%s", dsv_errmsg());
    CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>r</think>a<｜end▁of▁sentence｜>");
    free(t);
    /* response_format at the request level goes to the system message. */
    const char *rf = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}}";
    REQUIRE(dsv_chat_format_render_json(v32(), rf, strlen(rf), 0, 1, &t) == DSV_OK);
    CHECK_STR(t, "<｜begin▁of▁sentence｜>\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to "
                 "reply:\n{\"type\": \"json_object\"}<｜User｜>x<｜Assistant｜></think>");
    free(t);
    /* Errors name the field. */
    static const struct { const char *json, *msg; } bad[] = {
        {"{\"messages\":[{\"role\":\"tool\",\"content\":\"r\"}]}", "messages[0]: a tool result must follow"},
        {"{\"messages\":[{\"role\":\"bot\",\"content\":\"r\"}]}", "messages[0].role: unknown role \"bot\""},
        {"{\"messages\":[{\"role\":\"developer\",\"content\":\"\"}]}", "messages[0].content: a developer message"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}",
         "messages[0].tool_calls[0].function.arguments: expected a JSON object"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}]}",
         "messages[0].tool_calls[0].function.arguments: not valid JSON"},
        {"{\"messages\":[],\"tools\":[{\"type\":\"function\"}]}", "tools[0].function: expected an object"},
        {"{\"messages\":[],\"thinking_mode\":\"deep\"}", "thinking_mode: expected"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}", "messages[0].content[0]: expected an object, got a string"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
         "messages[0].content[0].text: expected a string, got a number"},
        {"{\"messages\":[],\"thinking\":\"on\"}", "thinking: expected a boolean, got a string"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\","
         "\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{}}}]},{\"role\":\"tool\",\"content\":\"1\"},"
         "{\"role\":\"tool\",\"content\":\"2\"}]}", "messages[3]: more tool results than the 1 tool call(s)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        t = NULL;
        int rc = dsv_chat_format_render_json(v32(), bad[i].json, strlen(bad[i].json), 0, 1, &t);
        CHECKF(rc == DSV_ERR_ARG && t == NULL, "case %zu: rc %d", i, rc);
        CHECKF(strstr(dsv_errmsg(), bad[i].msg), "case %zu: \"%s\" lacks \"%s\"", i, dsv_errmsg(), bad[i].msg);
    }
}

/* ---- Parsing -------------------------------------------------------------- */

static const char *or_null(const char *s) { return s && *s ? s : NULL; }

/* r against an expected message {reasoning_content, content, tool_calls:
 * [{name, arguments: object}]}. */
static void check_message(const char *name, const dsv_chat_result *r, const cJSON *want) {
    CHECKF(same_opt(r->reasoning, or_null(jstr(want, "reasoning_content"))), "%s: reasoning \"%s\"", name,
           r->reasoning ? r->reasoning : "(null)");
    CHECKF(same_opt(r->content, or_null(jstr(want, "content"))), "%s: content \"%s\"", name,
           r->content ? r->content : "(null)");
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(want, "tool_calls");
    REQUIREF(r->n_tool_calls == cJSON_GetArraySize(calls), "%s: %d calls, want %d", name, r->n_tool_calls,
             cJSON_GetArraySize(calls));
    int i = 0;
    for (const cJSON *c = calls ? calls->child : NULL; c; c = c->next, i++) {
        CHECK_STR(r->tool_calls[i].name, jstr(c, "name"));
        CHECK_EQ_INT(r->tool_calls[i].complete, 1);
        cJSON *args = cJSON_Parse(r->tool_calls[i].arguments);
        CHECKF(args && cJSON_Compare(args, cJSON_GetObjectItemCaseSensitive(c, "arguments"), 1),
               "%s: call %d arguments %s", name, i, r->tool_calls[i].arguments);
        cJSON_Delete(args);
    }
}

static void parse_golden(const cJSON *c, const char *json, void *u) {
    (void)json;
    (*(int *)u)++;
    const char *text = jstr(c, "completion");
    dsv_chat_result r;
    REQUIRE(dsv_chat_format_parse(v32(), text, strlen(text), is_thinking(c), &r) == DSV_OK);
    check_message(jstr(c, "name"), &r, cJSON_GetObjectItemCaseSensitive(c, "expected"));
    dsv_chat_result_free(&r);
}

TEST(dsml_parse_golden) {
    int n = 0;
    for_each_golden(test_shared("tokenizer/v32/parse-golden.jsonl"), parse_golden, &n);
    CHECK_EQ_INT(n, 14);
    /* The arguments text is json.dumps(ensure_ascii=False), keys in order. */
    const char *p = "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n"
                    "<｜DSML｜parameter name=\"城\" string=\"true\">杭\"州</｜DSML｜parameter>\n"
                    "<｜DSML｜parameter name=\"n\" string=\"false\"> [1,2.5, {\"a\":null}] </｜DSML｜parameter>\n"
                    "</｜DSML｜invoke>\n</｜DSML｜function_calls><｜end▁of▁sentence｜>";
    dsv_chat_result r;
    REQUIRE(dsv_chat_format_parse(v32(), p, strlen(p), 0, &r) == DSV_OK);
    REQUIRE(r.n_tool_calls == 1);
    CHECK_STR(r.tool_calls[0].arguments, "{\"城\": \"杭\\\"州\", \"n\": [1, 2.5, {\"a\": null}]}");
    CHECK(r.content == NULL);
    dsv_chat_result_free(&r);
}

/* parse(render(assistant message)) gives the message back, for every
 * assistant message of the goldens, in both modes. */
static void round_trip(const cJSON *c, const char *json, void *u) {
    (void)json;
    int *n = u;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c, "messages");
    for (const cJSON *m = msgs->child; m; m = m->next) {
        if (strcmp(jstr(m, "role"), "assistant")) continue;
        for (int thinking = 0; thinking <= 1; thinking++) {
            cJSON *req = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(req, "messages");
            cJSON *user = cJSON_CreateObject();
            cJSON_AddStringToObject(user, "role", "user");
            cJSON_AddStringToObject(user, "content", "q");
            cJSON_AddItemToArray(list, user);
            char *prompt = render(req, thinking);
            cJSON_AddItemToArray(list, cJSON_Duplicate(m, 1));
            char *full = render(req, thinking);
            cJSON_Delete(req);
            REQUIRE(!strncmp(full, prompt, strlen(prompt)));
            const char *gen = full + strlen(prompt);
            dsv_chat_result r;
            REQUIRE(dsv_chat_format_parse(v32(), gen, strlen(gen), thinking, &r) == DSV_OK);
            /* The expected message: arguments as objects, reasoning only
             * where it is rendered. */
            cJSON *want = cJSON_CreateObject(), *calls = cJSON_AddArrayToObject(want, "tool_calls");
            cJSON_AddStringToObject(want, "content", jstr(m, "content") ? jstr(m, "content") : "");
            const char *rs = jstr(m, "reasoning_content");
            cJSON_AddStringToObject(want, "reasoning_content", thinking && rs ? rs : "");
            const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
            for (const cJSON *t = tc ? tc->child : NULL; t; t = t->next) {
                const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
                cJSON *call = cJSON_CreateObject();
                cJSON_AddStringToObject(call, "name", jstr(fn, "name"));
                cJSON_AddItemToObject(call, "arguments", cJSON_Parse(jstr(fn, "arguments")));
                cJSON_AddItemToArray(calls, call);
            }
            check_message(jstr(c, "name"), &r, want);
            /* The arguments come back as the OpenAI text they were. */
            int i = 0;
            for (const cJSON *t = tc ? tc->child : NULL; t && i < r.n_tool_calls; t = t->next, i++)
                CHECK_STR(r.tool_calls[i].arguments, jstr(cJSON_GetObjectItemCaseSensitive(t, "function"), "arguments"));
            cJSON_Delete(want);
            dsv_chat_result_free(&r);
            free(prompt);
            free(full);
            (*n)++;
        }
    }
}

TEST(dsml_round_trip) {
    int n = 0;
    for_each_golden(test_shared("tokenizer/v32/chat-golden.jsonl"), round_trip, &n);
    CHECK_EQ_INT(n, 2 * 10);
}

#define OPEN "\n\n<｜DSML｜function_calls>\n"
#define INV(name) "<｜DSML｜invoke name=\"" name "\">\n"
#define PAR(k, s, v) "<｜DSML｜parameter name=\"" k "\" string=\"" s "\">" v "</｜DSML｜parameter>"
#define INV_END "\n</｜DSML｜invoke>"
#define CLOSE "\n</｜DSML｜function_calls>"
#define EOS "<｜end▁of▁sentence｜>"

TEST(dsml_parse_malformed) {
    /* What does not parse is content, byte for byte; the request still
     * parses (never an error). */
    static const struct {
        const char *text;
        int thinking;
        const char *reasoning, *content;
        int n_calls;
    } cases[] = {
        /* A half-written invoke (the output was cut). */
        {"A" OPEN INV("f") "<｜DSML｜parameter name=\"x\" string=\"true\">1", 0, NULL,
         "A" OPEN INV("f") "<｜DSML｜parameter name=\"x\" string=\"true\">1", 0},
        /* A bad attribute. */
        {"A" OPEN INV("f") PAR("x", "maybe", "1") INV_END CLOSE EOS, 0, NULL,
         "A" OPEN INV("f") PAR("x", "maybe", "1") INV_END CLOSE, 0},
        /* A parameter that is not JSON. */
        {"A" OPEN INV("f") PAR("x", "false", "{oops") INV_END CLOSE EOS, 0, NULL,
         "A" OPEN INV("f") PAR("x", "false", "{oops") INV_END CLOSE, 0},
        /* A duplicate parameter. */
        {OPEN INV("f") PAR("x", "true", "1") "\n" PAR("x", "true", "2") INV_END CLOSE, 0, NULL,
         OPEN INV("f") PAR("x", "true", "1") "\n" PAR("x", "true", "2") INV_END CLOSE, 0},
        /* A good call, then a broken one: the first stays a call. */
        {"A" OPEN INV("f") PAR("x", "true", "1") INV_END "\n" INV("g") PAR("y", "false", "[") INV_END CLOSE EOS, 0, NULL,
         "A\n" INV("g") PAR("y", "false", "[") INV_END CLOSE, 1},
        /* A block without calls. */
        {"A" OPEN "</｜DSML｜function_calls>" EOS, 0, NULL, "A" OPEN "</｜DSML｜function_calls>", 0},
        /* A marker inside a value. */
        {OPEN INV("f") "<｜DSML｜parameter name=\"x\" string=\"true\">a</｜DSML｜invoke>" CLOSE, 0, NULL,
         OPEN INV("f") "<｜DSML｜parameter name=\"x\" string=\"true\">a</｜DSML｜invoke>" CLOSE, 0},
        /* Text after EOS is kept. */
        {"hi" EOS "more", 0, NULL, "himore", 0},
        /* Reasoning cut short: all reasoning. */
        {"thinking about" OPEN INV("f"), 1, "thinking about" OPEN INV("f"), NULL, 0},
        /* A call after the content, then text: both kept. */
        {"A" OPEN INV("f") INV_END CLOSE "B" EOS, 0, NULL, "AB", 1},
        /* Whitespace around the markup is tolerated. */
        {"A\n\n<｜DSML｜function_calls>  <｜DSML｜invoke  name=\"f\" >" PAR("k", "true", "v") "</｜DSML｜invoke>\n\n"
         "</｜DSML｜function_calls>", 0, NULL, "A", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dsv_chat_result r;
        REQUIRE(dsv_chat_format_parse(v32(), cases[i].text, strlen(cases[i].text), cases[i].thinking, &r) == DSV_OK);
        CHECKF(same_opt(r.reasoning, cases[i].reasoning), "case %zu: reasoning \"%s\"", i, r.reasoning ? r.reasoning : "(null)");
        CHECKF(same_opt(r.content, cases[i].content), "case %zu: content \"%s\"", i, r.content ? r.content : "(null)");
        CHECKF(r.n_tool_calls == cases[i].n_calls, "case %zu: %d calls", i, r.n_tool_calls);
        dsv_chat_result_free(&r);
    }
}

/* ---- Streaming ------------------------------------------------------------ */

static void stream_every_cut(const cJSON *c, const char *json, void *u) {
    (void)json;
    (*(int *)u)++;
    const char *text = jstr(c, "completion");
    size_t len = strlen(text);
    const stream_check o = {.fmt = v32(), .thinking = is_thinking(c), .check_utf8 = 1, .calls_complete = 1};
    dsv_chat_result want;
    REQUIRE(dsv_chat_format_parse(v32(), text, len, o.thinking, &want) == DSV_OK);
    check_message(jstr(c, "name"), &want, cJSON_GetObjectItemCaseSensitive(c, "expected"));
    stream_check_every_cut(&o, text, len, &want, 0);
    dsv_chat_result_free(&want);
}

TEST(dsml_stream_every_cut) {
    int n = 0;
    for_each_golden(test_shared("tokenizer/v32/parse-golden.jsonl"), stream_every_cut, &n);
    CHECK_EQ_INT(n, 14);
}

/* ---- Fuzz ----------------------------------------------------------------- */

static uint64_t rng_state;
static uint32_t rnd(uint32_t n) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33) % n;
}

/* A random completion from pieces of the format: markers whole and cut,
 * valid and broken parameters, plain and random bytes. */
static size_t random_text(char *buf, size_t cap) {
    static const char *const pieces[] = {
        OPEN, INV("f"), INV("get_weather"), PAR("a", "true", "x y"), PAR("b", "false", "[1, 2]"),
        PAR("c", "false", "{\"k\": \"v\"}"), PAR("d", "false", "nope"), PAR("e", "maybe", "1"), INV_END, CLOSE,
        EOS, "</think>", "<think>", "\n", "\n\n", " ", "hello", "你好", "\"", "<", ">", "=", "name=\"",
        "<｜DSML｜", "</｜DSML｜", "｜DSML｜", "<｜DSML｜parameter", "</｜DSML｜parameter>", "string=\"true\">",
        "<｜DSML｜invoke", "</｜DSML｜invoke>", "<｜DSML｜function_calls>", "</｜DSML｜function_calls>",
    };
    size_t n = 0;
    if (rnd(2)) {
        /* A well-formed answer with calls, then maybe one mutation. */
        static const char *const params[] = {PAR("a", "true", "x y"), PAR("b", "false", "[1, 2]"),
                                             PAR("c", "false", "{\"k\": \"v\"}"), PAR("d", "true", "你好")};
        char *p = buf;
        p += sprintf(p, "%s", rnd(2) ? "hello" : "");
        p += sprintf(p, OPEN);
        for (int i = 0, ni = 1 + (int)rnd(3); i < ni; i++) {
            p += sprintf(p, "%s" INV("f"), i ? "\n" : "");
            for (int j = 0, np = (int)rnd(4); j < np; j++) p += sprintf(p, "%s%s", j ? "\n" : "", params[j]);
            p += sprintf(p, INV_END);
        }
        p += sprintf(p, CLOSE "%s", rnd(2) ? EOS : "");
        n = (size_t)(p - buf);
        switch (rnd(4)) {
        case 0: n = rnd((uint32_t)n + 1); break;                         /* cut */
        case 1: buf[rnd((uint32_t)n)] = (char)(1 + rnd(255)); break;     /* a random byte */
        case 2: {                                                          /* a piece inserted */
            const char *q = pieces[rnd(sizeof pieces / sizeof pieces[0])];
            size_t at = rnd((uint32_t)n + 1), l = strlen(q);
            memmove(buf + at + l, buf + at, n - at);
            memcpy(buf + at, q, l);
            n += l;
            break;
        }
        default: break;
        }
        buf[n] = 0;
        return n;
    }
    int k = 1 + (int)rnd(24);
    for (int i = 0; i < k; i++) {
        uint32_t what = rnd(10);
        if (what < 7) {
            const char *p = pieces[rnd(sizeof pieces / sizeof pieces[0])];
            size_t l = strlen(p);
            if (what == 6) l = rnd((uint32_t)l + 1); /* a truncated piece */
            if (n + l >= cap) break;
            memcpy(buf + n, p, l);
            n += l;
        } else {
            for (uint32_t j = rnd(4) + 1; j && n + 1 < cap; j--) buf[n++] = (char)(1 + rnd(255));
        }
    }
    buf[n] = 0;
    return n;
}

/* The input with the first EOS string removed: what must come back as
 * content when no call was found (nothing lost, nothing added). */
static void strip_first_eos(const char *in, size_t n, struct str *out) {
    const char *e = strstr(in, EOS);
    if (!e) { str_add(out, in, n); return; }
    str_add(out, in, (size_t)(e - in));
    str_add(out, e + strlen(EOS), n - (size_t)(e - in) - strlen(EOS));
}

TEST(dsml_stream_fuzz) {
    char buf[2048];
    rng_state = 12345;
    int with_calls = 0, checked_lossless = 0;
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = random_text(buf, sizeof buf);
        int thinking = (int)rnd(2);
        dsv_chat_result want;
        REQUIRE(dsv_chat_format_parse(v32(), buf, len, thinking, &want) == DSV_OK);
        with_calls += want.n_tool_calls > 0;
        size_t out = (want.content ? strlen(want.content) : 0) + (want.reasoning ? strlen(want.reasoning) : 0);
        CHECKF(out <= len, "iteration %d: more text out than in", iter);
        if (!thinking && !want.n_tool_calls) {
            struct str exp = {0};
            strip_first_eos(buf, len, &exp);
            CHECKF(same_opt(want.content, exp.n ? exp.p : NULL), "iteration %d: content lost bytes", iter);
            free(exp.p);
            checked_lossless++;
        }
        /* Three random splittings, random bytes may cut UTF-8 on purpose. */
        const stream_check o = {.fmt = v32(), .thinking = thinking, .calls_complete = 1};
        for (int s = 0; s < 3; s++) {
            size_t cuts[16];
            int nc = (int)rnd(16);
            for (int i = 0; i < nc; i++) cuts[i] = len ? rnd((uint32_t)len + 1) : 0;
            for (int i = 1; i < nc; i++)
                for (int j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) { size_t t = cuts[j]; cuts[j] = cuts[j - 1]; cuts[j - 1] = t; }
            stream_check_cuts(&o, buf, len, cuts, nc, &want);
        }
        dsv_chat_result_free(&want);
    }
    /* The generator reaches both sides. */
    CHECKF(with_calls > 50, "only %d inputs with calls", with_calls);
    CHECKF(checked_lossless > 500, "only %d lossless checks", checked_lossless);
}

/* ---- The format table ----------------------------------------------------- */

static void write_file(const char *dir, const char *name, const char *data) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    REQUIRE(f && fputs(data, f) >= 0);
    fclose(f);
}

TEST(chat_format_table) {
    CHECK_STR(dsv_chat_format_name(dsv_chat_format_find("deepseek-v3.2-exp")), "deepseek-v3.2-exp");
    CHECK_STR(dsv_chat_format_name(v32()), "deepseek-v3.2");
    CHECK_STR(dsv_chat_format_name(NULL), "deepseek-v3.2-exp");
    CHECK(dsv_chat_format_find("chatml") == NULL);
    CHECK_STR(dsv_errmsg(), "unknown chat format \"chatml\" (known: deepseek-v3.2-exp, deepseek-v3.2, deepseek-v3.1)");

    const dsv_chat_format *f = NULL;
    const char *dir = test_tmpdir();
    /* Nothing there: today's format. */
    REQUIRE(dsv_chat_format_detect(dir, &f) == DSV_OK);
    CHECK_STR(dsv_chat_format_name(f), "deepseek-v3.2-exp");
    /* model_type deepseek_v32 without a template: V3.2. */
    write_file(dir, "config.json", "{\"model_type\": \"deepseek_v32\"}");
    write_file(dir, "tokenizer_config.json", "{\"bos_token\": \"x\"}");
    REQUIRE(dsv_chat_format_detect(dir, &f) == DSV_OK);
    CHECK_STR(dsv_chat_format_name(f), "deepseek-v3.2");
    /* A tokenizer.json path: its directory decides. */
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_file(dir, "tokenizer.json", "{}");
    REQUIRE(dsv_chat_format_detect(path, &f) == DSV_OK);
    CHECK_STR(dsv_chat_format_name(f), "deepseek-v3.2");
    /* A chat template: Exp. */
    write_file(dir, "tokenizer_config.json", "{\"chat_template\": \"{{ x }}\"}");
    REQUIRE(dsv_chat_format_detect(dir, &f) == DSV_OK);
    CHECK_STR(dsv_chat_format_name(f), "deepseek-v3.2-exp");
    /* The embedded tiny model ships the Exp template. */
    REQUIRE(dsv_chat_format_detect("models/tiny", &f) == DSV_OK);
    CHECK_STR(dsv_chat_format_name(f), "deepseek-v3.2-exp");
    /* Broken JSON is an error naming the file. */
    write_file(dir, "tokenizer_config.json", "{\"chat_template\":");
    CHECK_EQ_INT(dsv_chat_format_detect(dir, &f), DSV_ERR_FORMAT);
    CHECK(strstr(dsv_errmsg(), "tokenizer_config.json: not valid JSON") != NULL);
}

/* ---- The commands --------------------------------------------------------- */

/* Output lines of a command as parsed JSON, in an array. */
static cJSON *run_lines(const char *cmd) {
    char *out = NULL;
    int rc = test_run(cmd, &out);
    REQUIREF(rc == 0 && out, "failed (%d): %s", rc, cmd);
    cJSON *arr = cJSON_CreateArray();
    for (char *line = out, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        REQUIRE(nl);
        *nl = 0;
        cJSON *v = cJSON_Parse(line);
        REQUIREF(v, "bad output line: %s", line);
        cJSON_AddItemToArray(arr, v);
    }
    free(out);
    return arr;
}

/* `tokenize --chat` renders every golden exactly, in a directory that the
 * format is detected from (config.json model_type deepseek_v32, no template)
 * and with --chat-format; the ids are the real tokenizer's encoding of the
 * text, chat markers as their own tokens. */
TEST(dsml_cmd_tokenize_chat) {
    const char *b = test_bin(), *dir = test_tokenizer_dir(0);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "echo '{\"model_type\": \"deepseek_v32\"}' > %s/config.json", dir);
    REQUIREF(system(cmd) == 0, "cannot write %s/config.json", dir);
    const char *golden = test_shared("tokenizer/v32/chat-golden.jsonl");
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s --chat < %s", b, dir, golden);
    cJSON *detected = run_lines(cmd);
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s/tokenizer.json --chat --chat-format deepseek-v3.2 < %s", b, dir, golden);
    cJSON *named = run_lines(cmd);
    CHECK(cJSON_Compare(detected, named, 1));
    /* The same texts through plain --jsonl give the same ids. */
    char *data = test_read_file(golden, NULL);
    REQUIRE(data);
    char path[4096];
    snprintf(path, sizeof path, "%s/texts.jsonl", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    int n = 0, exact = 0;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n"), n++) {
        cJSON *c = cJSON_Parse(line), *o = cJSON_GetArrayItem(named, n);
        REQUIRE(c && o);
        exact += jstr(o, "text") && !strcmp(jstr(o, "text"), jstr(c, "text"));
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "text", jstr(c, "text"));
        char *s = cJSON_PrintUnformatted(t);
        fprintf(f, "%s\n", s);
        free(s);
        cJSON_Delete(t);
        cJSON_Delete(c);
    }
    fclose(f);
    free(data);
    CHECK_EQ_INT(n, 10);
    CHECK_EQ_INT(exact, 10);
    CHECK_EQ_INT(cJSON_GetArraySize(named), 10);
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s --jsonl < %s", b, dir, path);
    cJSON *plain = run_lines(cmd);
    for (int i = 0; i < n; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(named, i), "ids");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(plain, i), "ids");
        CHECKF(cJSON_Compare(a, p, 1), "line %d: ids differ from the text's encoding", i + 1);
        CHECK_EQ_INT(cJSON_GetArrayItem(a, 0)->valueint, 0); /* BOS */
        int user = 0;
        for (const cJSON *id = a->child; id; id = id->next) user += id->valueint == 128803;
        CHECKF(user >= 1, "line %d: no <｜User｜> token", i + 1);
    }
    cJSON_Delete(plain);
    cJSON_Delete(detected);
    cJSON_Delete(named);
    /* An unknown format is a one-line error listing the known ones. */
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s --chat --chat-format chatml 2>&1 </dev/null", b, dir);
    CHECK(test_run(cmd, &out) == 2);
    CHECK_STR(out, "dsv32 tokenize: unknown chat format \"chatml\" (known: deepseek-v3.2-exp, deepseek-v3.2, deepseek-v3.1)\n");
    free(out);
}

TEST(dsml_cmd_parse) {
    const char *b = test_bin(), *golden = test_shared("tokenizer/v32/parse-golden.jsonl");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s parse --chat-format deepseek-v3.2 < %s", b, golden);
    cJSON *got = run_lines(cmd);
    char *data = test_read_file(golden, NULL);
    REQUIRE(data);
    int n = 0;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n"), n++) {
        cJSON *c = cJSON_Parse(line);
        REQUIRE(c);
        CHECKF(cJSON_Compare(cJSON_GetArrayItem(got, n), cJSON_GetObjectItemCaseSensitive(c, "expected"), 1),
               "%s: parse output differs", jstr(c, "name"));
        cJSON_Delete(c);
    }
    CHECK_EQ_INT(n, 14);
    CHECK_EQ_INT(cJSON_GetArraySize(got), 14);
    free(data);
    cJSON_Delete(got);
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "printf '{\"completion\": 1}\\n' | %s parse --chat-format deepseek-v3.2 2>&1", b);
    CHECK(test_run(cmd, &out) == 1);
    CHECK_STR(out, "dsv32 parse: stdin line 1: completion: expected a string\n");
    free(out);
}
