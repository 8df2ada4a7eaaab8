/* test_chat.c: the chat format. Rendering against the golden prompts made by
 * the Jinja template (shared/tokenizer/chat-golden.jsonl, chat-cases.json and
 * tests/data/chat-extra.jsonl), the JSON front end's error paths, and the
 * output parser: fixed cases plus one-shot == streaming over every split. */
#include <cjson/cJSON.h>

#include "dsv32_chat.h"
#include "test.h"

/* Calls fn(case object, golden text) for each line of a JSONL golden file. */
static int for_each_golden(const char *path, void (*fn)(const cJSON *c, const char *json, void *u), void *u) {
    char *data = test_read_file(path, NULL);
    if (!data) SKIP("missing %s", path);
    int n = 0;
    for (char *line = data, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) nl = line + strlen(line) - 1;
        else *nl = 0;
        if (!*line) continue;
        cJSON *c = cJSON_Parse(line);
        REQUIREF(c, "bad JSON line in %s", path);
        fn(c, line, u);
        cJSON_Delete(c);
        n++;
    }
    free(data);
    return n;
}

static const char *jstr(const cJSON *c, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Prints where two strings first differ, to make a failed golden readable. */
static void check_text(const char *name, const char *got, const char *want) {
    if (got && want && !strcmp(got, want)) return;
    size_t i = 0;
    while (got && want && got[i] && got[i] == want[i]) i++;
    test_fail(__FILE__, __LINE__, "%s: rendered text differs at byte %zu:\n      got  ...%.60s\n      want ...%.60s",
              name, i, got ? got + (i > 20 ? i - 20 : 0) : "(null)", want ? want + (i > 20 ? i - 20 : 0) : "(null)");
}

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

/* chat-cases.json: the same conversations before the tool block was added;
 * the renderer builds the block from "tools" and must match the golden. */
TEST(chat_render_cases_with_tools_array) {
    cJSON *golden = cJSON_CreateArray();
    for_each_golden(test_shared("tokenizer/chat-golden.jsonl"), collect_line, golden);
    char *cases = test_read_file(test_shared("tokenizer/chat-cases.json"), NULL);
    if (!cases) SKIP("missing chat-cases.json");
    cJSON *arr = cJSON_Parse(cases);
    REQUIRE(cJSON_IsArray(arr));
    int n = 0, n_tools = 0;
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
        n_tools += cJSON_GetObjectItemCaseSensitive(c, "tools") != NULL;
        free(text);
        free(json);
    }
    CHECK_EQ_INT(n, 16);
    CHECK_EQ_INT(n_tools, 4);
    cJSON_Delete(arr);
    cJSON_Delete(golden);
    free(cases);
}
