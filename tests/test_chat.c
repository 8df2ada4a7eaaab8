/* test_chat.c: the chat format. Rendering against the golden prompts made by
 * the Jinja template (tests/data/tokenizer/chat-golden.jsonl, chat-cases.json and
 * tests/data/chat-extra.jsonl), the JSON front end's error paths, and the
 * output parser: fixed cases plus one-shot == streaming over every split. */
#include <cjson/cJSON.h>

#include "chat_util.h"
#include "dsv32_chat.h"
#include "test.h"

static void render_golden_line(const cJSON *c, const char *json, void *u) {
    (void)u;
    char *text = NULL;
    int rc = dsv_chat_render_json(json, strlen(json), 0, 0, &text);
    CHECKF(rc == DSV_OK, "%s: %s", jstr(c, "name"), dsv_errmsg());
    check_text(jstr(c, "name"), text, jstr(c, "text"));
    free(text);
}

TEST(chat_render_golden) {
    int n = for_each_golden(test_shared("tokenizer/chat-golden.jsonl"), render_golden_line, NULL);
    CHECK_EQ_INT(n, 16);
}

static void collect_line(const cJSON *c, const char *json, void *u) {
    (void)json;
    cJSON_AddItemToArray((cJSON *)u, cJSON_Duplicate(c, 1));
}

/* The golden text of the case with this name, or NULL. */
static const char *golden_text(const cJSON *golden, const char *name) {
    for (const cJSON *g = golden->child; g; g = g->next)
        if (!strcmp(jstr(g, "name"), name)) return jstr(g, "text");
    return NULL;
}

/* Renders every case of cases_path (an array; tool cases carry a "tools"
 * array, so the renderer builds the tool block) and compares with the golden
 * text of the same name. Returns the number of cases and of tool cases. */
static int check_cases(const char *cases_path, const char *golden_path, int *n_tools) {
    cJSON *golden = cJSON_CreateArray();
    for_each_golden(golden_path, collect_line, golden);
    char *cases = test_read_file(cases_path, NULL);
    REQUIREF(cases, "missing fixture %s", cases_path);
    cJSON *arr = cJSON_Parse(cases);
    REQUIRE(cJSON_IsArray(arr));
    int n = 0;
    *n_tools = 0;
    for (const cJSON *c = arr->child; c; c = c->next, n++) {
        const char *name = jstr(c, "name");
        REQUIRE(name);
        const char *want = golden_text(golden, name);
        REQUIREF(want, "no golden named %s", name);
        char *json = cJSON_PrintUnformatted(c);
        char *text = NULL;
        int rc = dsv_chat_render_json(json, strlen(json), 0, 0, &text);
        CHECKF(rc == DSV_OK, "%s: %s", name, dsv_errmsg());
        check_text(name, text, want);
        *n_tools += cJSON_GetObjectItemCaseSensitive(c, "tools") != NULL;
        free(text);
        free(json);
    }
    cJSON_Delete(arr);
    cJSON_Delete(golden);
    free(cases);
    return n;
}

/* chat-cases.json: the golden conversations before the tool block was added. */
TEST(chat_render_cases_with_tools_array) {
    int n_tools;
    CHECK_EQ_INT(check_cases(test_shared("tokenizer/chat-cases.json"), test_shared("tokenizer/chat-golden.jsonl"),
                             &n_tools), 16);
    CHECK_EQ_INT(n_tools, 4);
}

/* More template quirks, rendered by the same template (tests/data/README.md). */
TEST(chat_render_extra_quirks) {
    int n_tools;
    CHECK_EQ_INT(for_each_golden("tests/data/chat-extra.jsonl", render_golden_line, NULL), 16);
    CHECK_EQ_INT(check_cases("tests/data/chat-extra-cases.json", "tests/data/chat-extra.jsonl", &n_tools), 16);
    CHECK_EQ_INT(n_tools, 1);
}

/* ---- Rendering: the C struct form ---------------------------------------- */

/* tool_full_round_parallel_calls, built from structs instead of JSON. */
TEST(chat_render_structs_match_golden) {
    cJSON *golden = cJSON_CreateArray();
    for_each_golden(test_shared("tokenizer/chat-golden.jsonl"), collect_line, golden);
    const char *want = golden_text(golden, "tool_full_round_parallel_calls");
    REQUIRE(want);
    const dsv_chat_tool tools[] = {
        {"get_weather", "Get the current weather for a city.",
         "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": "
         "\"City name, e.g. Hangzhou\"}, \"unit\": {\"type\": \"string\", \"enum\": [\"celsius\", "
         "\"fahrenheit\"]}}, \"required\": [\"city\"]}"},
        /* Compact JSON on input: the block re-serializes it json.dumps style. */
        {"web_search", "Search the web and return the top results.",
         "{\"type\":\"object\",\"properties\":{\"query\":{\"type\":\"string\"},\"top_k\":{\"type\":\"integer\"}},"
         "\"required\":[\"query\"]}"},
    };
    const dsv_chat_tool_call calls[] = {
        {"call_1", "get_weather", "{\"city\": \"Paris\"}"},
        {"call_2", "get_weather", "{\"city\": \"Tokyo\"}"},
    };
    const dsv_chat_msg msgs[] = {
        {.role = DSV_CHAT_SYSTEM, .content = "You are a helpful assistant."},
        {.role = DSV_CHAT_USER, .content = "Compare the weather in Paris and Tokyo."},
        {.role = DSV_CHAT_ASSISTANT, .content = NULL, .tool_calls = calls, .n_tool_calls = 2},
        {.role = DSV_CHAT_TOOL, .content = "{\"temperature\": 18, \"condition\": \"rain\"}", .tool_call_id = "call_1"},
        {.role = DSV_CHAT_TOOL, .content = "{\"temperature\": 27, \"condition\": \"sunny\"}", .tool_call_id = "call_2"},
        {.role = DSV_CHAT_ASSISTANT, .content = "Paris is 18°C and rainy; Tokyo is 27°C and sunny.",
         .reasoning_content = "not rendered"},
        {.role = DSV_CHAT_USER, .content = "Thanks! Now search for flights from Paris to Tokyo."},
    };
    dsv_chat_opts o = {.thinking = 0, .add_generation_prompt = 1, .tools = tools, .n_tools = 2};
    char *text = NULL;
    REQUIREF(dsv_chat_render(msgs, 7, &o, &text) == DSV_OK, "%s", dsv_errmsg());
    check_text("structs", text, want);
    free(text);
    cJSON_Delete(golden);
}

TEST(chat_render_structs_edge_cases) {
    char *t = NULL;
    /* No messages, no opts: BOS only. */
    REQUIRE(dsv_chat_render(NULL, 0, NULL, &t) == DSV_OK);
    CHECK_STR(t, "<｜begin▁of▁sentence｜>");
    free(t);
    /* Tools without a system message: the block alone is the system prompt. */
    const dsv_chat_tool tool = {"f", NULL, NULL};
    const dsv_chat_msg user = {.role = DSV_CHAT_USER, .content = "q"};
    dsv_chat_opts o = {.add_generation_prompt = 1, .thinking = 1, .tools = &tool, .n_tools = 1};
    REQUIRE(dsv_chat_render(&user, 1, &o, &t) == DSV_OK);
    CHECK(!strncmp(t, "<｜begin▁of▁sentence｜>## Tools\n", strlen("<｜begin▁of▁sentence｜>## Tools\n")));
    CHECK(strstr(t, "### f\nDescription: \n\nParameters: {}\n\nIMPORTANT:") != NULL);
    CHECK(strstr(t, "spaces\n<｜User｜>q<｜Assistant｜><think>") != NULL);
    free(t);
    /* Bad input names the field and leaves *out alone. */
    t = (char *)"untouched";
    const dsv_chat_tool_call nameless = {NULL, NULL, "{}"};
    dsv_chat_msg bad[2] = {{.role = DSV_CHAT_USER}, {.role = DSV_CHAT_ASSISTANT, .tool_calls = &nameless, .n_tool_calls = 1}};
    CHECK_EQ_INT(dsv_chat_render(bad, 2, NULL, &t), DSV_ERR_ARG);
    CHECK_STR(dsv_errmsg(), "msgs[1].tool_calls[0].name: missing");
    bad[1] = (dsv_chat_msg){.role = (dsv_chat_role)7};
    CHECK_EQ_INT(dsv_chat_render(bad, 2, NULL, &t), DSV_ERR_ARG);
    CHECK_STR(dsv_errmsg(), "msgs[1].role: unknown role 7");
    bad[1] = (dsv_chat_msg){.role = DSV_CHAT_USER, .tool_calls = &nameless, .n_tool_calls = 1};
    CHECK_EQ_INT(dsv_chat_render(bad, 2, NULL, &t), DSV_ERR_ARG);
    const dsv_chat_tool badtool = {"f", "d", "{not json"};
    o.tools = &badtool;
    CHECK_EQ_INT(dsv_chat_render(&user, 1, &o, &t), DSV_ERR_ARG);
    CHECK_STR(dsv_errmsg(), "tools[0].parameters: invalid JSON");
    CHECK_EQ_INT(dsv_chat_render(&user, -1, NULL, &t), DSV_ERR_ARG);
    CHECK_STR(t, "untouched");
}

/* ---- Rendering: the JSON front end --------------------------------------- */

static char *render_json(const char *json, int thinking, int agp) {
    char *t = NULL;
    int rc = dsv_chat_render_json(json, strlen(json), thinking, agp, &t);
    CHECKF(rc == DSV_OK, "%s: %s", json, dsv_errmsg());
    return t;
}

TEST(chat_render_json_forms) {
    /* A bare array, defaults from the arguments. */
    char *t = render_json("[{\"role\":\"user\",\"content\":\"hi\"}]", 1, 1);
    CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>");
    free(t);
    /* Request fields override the defaults; chat_template_kwargs wins. */
    t = render_json("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"thinking\":false,"
                    "\"chat_template_kwargs\":{\"thinking\":true},\"add_generation_prompt\":true}", 0, 0);
    CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>");
    free(t);
    t = render_json("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"thinking\":true}", 0, 0);
    CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>hi");
    free(t);
    /* Text parts joined with "\n"; object arguments serialized like
     * json.dumps; assistant content null; empty tool_calls means none. */
    t = render_json("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                    "{\"type\":\"text\",\"text\":\"b\"}]},"
                    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"x\",\"type\":\"function\","
                    "\"function\":{\"name\":\"f\",\"arguments\":{\"q\":\"é\",\"n\":[1,2.5,true,null]}}}]},"
                    "{\"role\":\"tool\",\"tool_call_id\":\"x\",\"content\":\"r\"},"
                    "{\"role\":\"assistant\",\"content\":\"done\",\"tool_calls\":[]}]}", 0, 1);
    CHECK_STR(t, "<｜begin▁of▁sentence｜><｜User｜>a\nb<｜Assistant｜></think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f"
                 "<｜tool▁sep｜>{\"q\": \"\\u00e9\", \"n\": [1, 2.5, true, null]}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
                 "<｜end▁of▁sentence｜><｜tool▁output▁begin｜>r<｜tool▁output▁end｜>done<｜end▁of▁sentence｜>"
                 "<｜Assistant｜></think>");
    free(t);
}

TEST(chat_render_json_errors) {
    static const struct { const char *json; int rc; const char *msg; } cases[] = {
        {"{\"messages\": [", DSV_ERR_ARG, "request: invalid JSON near byte"},
        {"42", DSV_ERR_ARG, "request: expected an object or a messages array, got a number"},
        {"{}", DSV_ERR_ARG, "messages: expected an array, got missing"},
        {"{\"messages\":{}}", DSV_ERR_ARG, "messages: expected an array, got an object"},
        {"[1]", DSV_ERR_ARG, "messages[0]: expected an object, got a number"},
        {"[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},{\"content\":\"c\"}]",
         DSV_ERR_ARG, "messages[2].role: expected a string, got missing"},
        {"[{\"role\":3,\"content\":\"c\"}]", DSV_ERR_ARG, "messages[0].role: expected a string, got a number"},
        {"[{\"role\":\"robot\",\"content\":\"c\"}]", DSV_ERR_ARG,
         "messages[0].role: unknown role \"robot\" (expected system, user, assistant or tool)"},
        {"[{\"role\":\"user\"}]", DSV_ERR_ARG,
         "messages[0].content: expected a string or an array of text parts, got missing"},
        {"[{\"role\":\"system\",\"content\":null}]", DSV_ERR_ARG,
         "messages[0].content: expected a string or an array of text parts, got null"},
        {"[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]", DSV_ERR_ARG,
         "messages[0].content[0].text: expected a string, got a number"},
        {"[{\"role\":\"user\",\"content\":[\"x\"]}]", DSV_ERR_ARG,
         "messages[0].content[0]: expected an object, got a string"},
        {"[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]", DSV_ERR_UNSUPPORTED,
         "messages[0].content[0].type: \"image_url\" parts are not supported (text only)"},
        {"[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":{}}]", DSV_ERR_ARG,
         "messages[0].tool_calls: expected an array, got an object"},
        {"[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"arguments\":\"{}\"}}]}]",
         DSV_ERR_ARG, "messages[0].tool_calls[0].function.name: expected a string, got missing"},
        {"[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"name\":\"f\"}]}]", DSV_ERR_ARG,
         "messages[0].tool_calls[0].function: expected an object, got missing"},
        {"[{\"role\":\"user\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"f\"}}]}]", DSV_ERR_ARG,
         "messages[0].tool_calls: only assistant messages have tool calls"},
        {"[{\"role\":\"assistant\",\"content\":\"\",\"prefix\":\"yes\"}]", DSV_ERR_ARG,
         "messages[0].prefix: expected a boolean, got a string"},
        {"[{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":5}]", DSV_ERR_ARG,
         "messages[0].reasoning_content: expected a string, got a number"},
        {"{\"messages\":[],\"thinking\":\"on\"}", DSV_ERR_ARG, "thinking: expected a boolean, got a string"},
        {"{\"messages\":[],\"chat_template_kwargs\":{\"thinking\":1}}", DSV_ERR_ARG,
         "chat_template_kwargs.thinking: expected a boolean, got a number"},
        {"{\"messages\":[],\"tools\":{}}", DSV_ERR_ARG, "tools: expected an array, got an object"},
        {"{\"messages\":[],\"tools\":[{\"type\":\"function\"}]}", DSV_ERR_ARG,
         "tools[0].function: expected an object, got missing"},
        {"{\"messages\":[],\"tools\":[{\"function\":{\"description\":\"d\"}}]}", DSV_ERR_ARG,
         "tools[0].function.name: expected a string, got missing"},
        {"{\"messages\":[],\"tools\":[{\"function\":{\"name\":\"f\",\"description\":[]}}]}", DSV_ERR_ARG,
         "tools[0].function.description: expected a string, got an array"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *t = (char *)"untouched";
        int rc = dsv_chat_render_json(cases[i].json, strlen(cases[i].json), 0, 1, &t);
        CHECKF(rc == cases[i].rc, "%s: rc %d, want %d", cases[i].json, rc, cases[i].rc);
        /* want is a prefix: cJSON versions differ on error offsets. */
        CHECKF(!strncmp(dsv_errmsg(), cases[i].msg, strlen(cases[i].msg)), "%s:\n      got  %s\n      want %s", cases[i].json,
               dsv_errmsg(), cases[i].msg);
        CHECK_STR(t, "untouched");
    }
    /* The length bounds the input: a valid prefix parses, garbage after it is not read. */
    char *t = NULL;
    const char *json = "[]trailing";
    CHECK_EQ_INT(dsv_chat_render_json(json, 2, 0, 1, &t), DSV_OK);
    CHECK_STR(t, "<｜begin▁of▁sentence｜><｜Assistant｜></think>");
    free(t);
}

/* ---- Parsing -------------------------------------------------------------- */

#define CB "<｜tool▁calls▁begin｜>"
#define CE "<｜tool▁calls▁end｜>"
#define B "<｜tool▁call▁begin｜>"
#define E "<｜tool▁call▁end｜>"
#define S "<｜tool▁sep｜>"

static void check_opt_str(const char *what, const char *got, const char *want) {
    if ((!got && !want) || (got && want && !strcmp(got, want))) return;
    test_fail(__FILE__, __LINE__, "%s: got %s%s%s, want %s%s%s", what, got ? "\"" : "", got ? got : "NULL",
              got ? "\"" : "", want ? "\"" : "", want ? want : "NULL", want ? "\"" : "");
}

TEST(chat_parse_cases) {
    static const struct {
        const char *out;
        int thinking;
        const char *reasoning, *content;
        int n_calls;
        const char *calls[3][2];
        int complete[3];
    } cases[] = {
        {"Hello!", 0, NULL, "Hello!", 0, {{0}}, {0}},
        {"", 0, NULL, NULL, 0, {{0}}, {0}},
        {"", 1, NULL, NULL, 0, {{0}}, {0}},
        /* Thinking: reasoning up to the first </think>. */
        {"Let me think.</think>The answer is 42.", 1, "Let me think.", "The answer is 42.", 0, {{0}}, {0}},
        {"<think>a</think>b</think>c", 1, "a", "b</think>c", 0, {{0}}, {0}},
        {"cut off mid-thought", 1, "cut off mid-thought", NULL, 0, {{0}}, {0}},
        {"</think>", 1, NULL, NULL, 0, {{0}}, {0}},
        {"x<think>y</think>z", 1, "x<think>y", "z", 0, {{0}}, {0}},
        /* Non-thinking: all content, think markers are plain text. */
        {"a</think>b", 0, NULL, "a</think>b", 0, {{0}}, {0}},
        /* Tool calls. */
        {CB B "get_weather" S "{\"city\": \"Paris\"}" E CE, 0, NULL, NULL, 1,
         {{"get_weather", "{\"city\": \"Paris\"}"}}, {1}},
        {"Let me check." CB B "f" S "{}" E B "g" S "{\"a\": [1]}" E CE, 0, NULL, "Let me check.", 2,
         {{"f", "{}"}, {"g", "{\"a\": [1]}"}}, {1, 1}},
        {"r</think>c" CB B "f" S "{\n  \"k\": \"v\"\n}" E CE "after", 1, "r", "cafter", 1,
         {{"f", "{\n  \"k\": \"v\"\n}"}}, {1}},
        /* Tool markup inside reasoning is reasoning. */
        {"a" CB B "f" S "{}" E CE "</think>b", 1, "a" CB B "f" S "{}" E CE, "b", 0, {{0}}, {0}},
        /* Cut off inside the arguments: returned, marked incomplete. */
        {CB B "f" S "{\"city\": \"Pa", 0, NULL, NULL, 1, {{"f", "{\"city\": \"Pa"}}, {0}},
        /* Cut off inside the name: verbatim to content. */
        {"x" CB B "get_wea", 0, NULL, "x" B "get_wea", 0, {{0}}, {0}},
        {"x" CB, 0, NULL, "x", 0, {{0}}, {0}},
        /* A name closed without a separator: verbatim to content. */
        {CB B "f" E B "g" S "1" E CE, 0, NULL, B "f" E, 1, {{"g", "1"}}, {1}},
        {CB B "f" CE "tail", 0, NULL, B "f" "tail", 0, {{0}}, {0}},
        /* Missing call end markers. */
        {CB B "f" S "1" B "g" S "2" CE, 0, NULL, NULL, 2, {{"f", "1"}, {"g", "2"}}, {1, 1}},
        /* Text between calls is content; stray markers in it too. */
        {CB " " B "f" S "1" E "\n" S CE, 0, NULL, " \n" S, 1, {{"f", "1"}}, {1}},
        /* A call marker without the block marker is just text. */
        {B "f" S "1" E, 0, NULL, B "f" S "1" E, 0, {{0}}, {0}},
        /* Empty name and arguments are still a call. */
        {CB B S E CE, 0, NULL, NULL, 1, {{"", ""}}, {1}},
        /* Two blocks. */
        {CB B "f" S "1" E CE "mid" CB B "g" S "2" E CE, 0, NULL, "mid", 2, {{"f", "1"}, {"g", "2"}}, {1, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dsv_chat_result r;
        REQUIRE(dsv_chat_parse(cases[i].out, strlen(cases[i].out), cases[i].thinking, &r) == DSV_OK);
        char what[64];
        snprintf(what, sizeof what, "case %zu reasoning", i);
        check_opt_str(what, r.reasoning, cases[i].reasoning);
        snprintf(what, sizeof what, "case %zu content", i);
        check_opt_str(what, r.content, cases[i].content);
        CHECKF(r.n_tool_calls == cases[i].n_calls, "case %zu: %d calls, want %d", i, r.n_tool_calls, cases[i].n_calls);
        for (int k = 0; k < r.n_tool_calls && k < cases[i].n_calls; k++) {
            snprintf(what, sizeof what, "case %zu call %d name", i, k);
            check_opt_str(what, r.tool_calls[k].name, cases[i].calls[k][0]);
            snprintf(what, sizeof what, "case %zu call %d arguments", i, k);
            check_opt_str(what, r.tool_calls[k].arguments, cases[i].calls[k][1]);
            CHECKF(r.tool_calls[k].complete == cases[i].complete[k], "case %zu call %d complete", i, k);
        }
        dsv_chat_result_free(&r);
    }
    dsv_chat_result_free(NULL);
}

/* ---- Streaming == one-shot -------------------------------------------- */

/* Every cut of text against the one-shot parse, and 4 random many-way
 * splits (chat_stream.h). */
static void check_all_splits(const char *text, int thinking) {
    size_t len = strlen(text);
    dsv_chat_result want;
    REQUIRE(dsv_chat_parse(text, len, thinking, &want) == DSV_OK);
    const stream_check o = {.thinking = thinking, .check_utf8 = 1};
    stream_check_every_cut(&o, text, len, &want, 4);
    dsv_chat_result_free(&want);
}

TEST(chat_stream_equals_oneshot_every_split) {
    static const char *fixed[] = {
        "Hello!",
        "Let me think.</think>The answer is 42.",
        "<think>a</think>b",
        "<thin",
        "<think",
        "</thin",
        "a</thi</think>b",
        "r</think>Let me check." CB B "get_weather" S "{\"city\": \"日本\"}" E B "g" S "{}" E CE,
        CB B "f" S "{\"city\": \"Pa",
        "x" CB B "get_wea",
        CB B "f" E B "g" S "1" E CE,
        CB B "f" S "1" B "g" S "2" CE "after",
        "<｜tool▁calls▁begi" "n",
        "<｜tool▁call▁begin｜>x",
        "🙏 é 日本語 <｜" "tool▁",
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        check_all_splits(fixed[i], 0);
        check_all_splits(fixed[i], 1);
    }
    /* Random outputs stitched from fragments that stress the markers. */
    static const char *frag[] = {
        "Hello", " ", "\n", "日本語", "🙏", "é", "<", "｜", "▁", "\xff", "</thin", "<think>", "</think>",
        "<thi", CB, CE, B, E, S, "<｜tool▁call", "<｜tool▁calls", "<｜tool", "{\"a\": 1}", "get_weather",
    };
    uint32_t rng = 12345;
    char text[1024];
    for (int c = 0; c < 400; c++) {
        size_t n = 0;
        rng = rng * 1664525u + 1013904223u;
        int k = (int)(rng >> 28);
        for (int j = 0; j < k; j++) {
            rng = rng * 1664525u + 1013904223u;
            const char *f = frag[(rng >> 16) % (sizeof frag / sizeof frag[0])];
            size_t fl = strlen(f);
            if (n + fl >= sizeof text) break;
            memcpy(text + n, f, fl);
            n += fl;
        }
        text[n] = 0;
        check_all_splits(text, c & 1);
    }
}

TEST(chat_stream_events) {
    dsv_chat_stream *st = NULL;
    REQUIRE(dsv_chat_stream_init(&st, 1) == DSV_OK);
    const stream_check o = {.thinking = 1, .check_utf8 = 1};
    stream_seen seen = {.o = &o};
    /* "日" arrives one byte at a time: nothing until it is whole. */
    REQUIRE(dsv_chat_stream_feed(st, "\xe6", 1, stream_on_event, &seen) == DSV_OK);
    REQUIRE(dsv_chat_stream_feed(st, "\x97", 1, stream_on_event, &seen) == DSV_OK);
    CHECK_EQ_INT(seen.reasoning.n, 0);
    REQUIRE(dsv_chat_stream_feed(st, "\xa5</th", 5, stream_on_event, &seen) == DSV_OK);
    CHECK_STR(seen.reasoning.p, "日");
    /* A partial marker is held, then resolved. */
    REQUIRE(dsv_chat_stream_feed(st, "ink>ok<｜tool▁", strlen("ink>ok<｜tool▁"), stream_on_event, &seen) == DSV_OK);
    CHECK_STR(seen.content.p, "ok");
    REQUIRE(dsv_chat_stream_feed(st, "calls▁begin｜>" B "f" S "{\"a\":", strlen("calls▁begin｜>" B "f" S "{\"a\":"),
                                 stream_on_event, &seen) == DSV_OK);
    CHECK_EQ_INT(seen.n_begin, 1);
    CHECK_EQ_INT(seen.n_end, 0);
    CHECK_STR(seen.names[0].p, "f");
    CHECK_STR(seen.args[0].p, "{\"a\":");
    REQUIRE(dsv_chat_stream_feed(st, " 1}" E, strlen(" 1}" E), stream_on_event, &seen) == DSV_OK);
    CHECK_EQ_INT(seen.n_end, 1);
    CHECK_EQ_INT(seen.complete[0], 1);
    REQUIRE(dsv_chat_stream_finish(st, stream_on_event, &seen) == DSV_OK);
    REQUIRE(dsv_chat_stream_finish(st, stream_on_event, &seen) == DSV_OK);
    CHECK_EQ_INT(dsv_chat_stream_feed(st, "x", 1, NULL, NULL), DSV_ERR_ARG);
    const dsv_chat_result *r = dsv_chat_stream_result(st);
    REQUIRE(r && r->n_tool_calls == 1);
    CHECK_STR(r->reasoning, "日");
    CHECK_STR(r->content, "ok");
    CHECK_STR(r->tool_calls[0].arguments, "{\"a\": 1}");
    stream_seen_free(&seen);
    dsv_chat_stream_free(st);
    dsv_chat_stream_free(NULL);
}
