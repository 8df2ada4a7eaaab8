/* dsml.c: the DeepSeek-V3.2 chat format, DSML (see dsml.h).
 *
 * Two parts:
 *  1. render: an OpenAI-style request (JSON tree) -> prompt text, statement
 *     by statement as DeepSeek's encode_messages(messages, thinking_mode)
 *     with drop_thinking on: the same template strings, the same "last user
 *     index" rule, the same json.dumps(ensure_ascii=False) for tool schemas
 *     and non-string arguments.
 *  2. parse: a completion -> reasoning, content, tool calls. DeepSeek's
 *     parser asserts on anything unexpected; ours never fails on the model's
 *     text. The unit of commitment is one invoke: it becomes a call only when
 *     it parsed up to its closing </｜DSML｜invoke>; anything else is content,
 *     byte for byte. The parser is incremental (a pure function of the bytes
 *     held, answering "need more" until they decide), and the one-shot parse
 *     is the stream fed once, so any cut of the input gives the same result.
 * No tokenizer here: the module speaks text only. */
#include "dsml.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_json.h"
#include "pyjson.h"
#include "text.h"
#include "base/util.h"

#define BOS_S       "<｜begin▁of▁sentence｜>"
#define EOS_S       "<｜end▁of▁sentence｜>"
#define USER_S      "<｜User｜>"
#define ASSISTANT_S "<｜Assistant｜>"
#define THINK_S     "<think>"
#define END_THINK_S "</think>"
#define DSML_S      "｜DSML｜"
#define BLOCK_OPEN_S   "\n\n<" DSML_S "function_calls>"
#define BLOCK_CLOSE_S  "</" DSML_S "function_calls>"
#define INVOKE_OPEN_S  "<" DSML_S "invoke"
#define INVOKE_CLOSE_S "</" DSML_S "invoke>"
#define PARAM_OPEN_S   "<" DSML_S "parameter"
#define PARAM_CLOSE_S  "</" DSML_S "parameter>"

#define SLEN(lit) (sizeof(lit) - 1)

/* ==== 1. Rendering ======================================================== */

/* The encoder's TOOLS_SYSTEM_TEMPLATE around "\n".join(tool schemas). */
static const char tools_head[] =
    "## Tools\n\n"
    "You have access to a set of tools you can use to answer the user's question.\n"
    "You can invoke functions by writing a \"<" DSML_S "function_calls>\" block like the following as part of your reply to the user:\n"
    "<" DSML_S "function_calls>\n"
    "<" DSML_S "invoke name=\"$FUNCTION_NAME\">\n"
    "<" DSML_S "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML_S "parameter>\n"
    "...\n"
    "</" DSML_S "invoke>\n"
    "<" DSML_S "invoke name=\"$FUNCTION_NAME2\">\n"
    "...\n"
    "</" DSML_S "invoke>\n"
    "</" DSML_S "function_calls>\n"
    "\n"
    "String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects "
    "should use JSON format. The \"string\" attribute should be set to \"true\" for string type parameters and "
    "\"false\" for other types (numbers, booleans, arrays, objects).\n"
    "\n"
    "If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking "
    "block. Here is an example:\n"
    "\n"
    "<" DSML_S "function_calls>\n"
    "...\n"
    "</" DSML_S "function_calls>\n"
    "\n"
    "<function_results>\n"
    "...\n"
    "</function_results>\n"
    "\n"
    "<think>...thinking about results</think>\n"
    "\n"
    "Here are the functions available in JSONSchema format:\n"
    "<functions>\n";
static const char tools_tail[] = "\n</functions>\n";
static const char rf_head[] =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

enum { R_SYSTEM, R_USER, R_DEVELOPER, R_ASSISTANT, R_TOOL };

/* One message, pointing into the request tree (or into `owned`). */
struct dmsg {
    int role;
    int src;                 /* index in the request, for error messages; -1 if added */
    const char *content;     /* NULL: null or absent */
    const cJSON *tools[2];   /* the message's own tools, then the request's */
    const cJSON *rf;         /* response_format */
    const char *reasoning;   /* reasoning_content or reasoning */
    const cJSON *calls;      /* tool_calls (non-empty array) or NULL */
};

struct render_ctx {
    struct dmsg *m;
    int n;
    char **owned;
    int n_owned, cap_owned;
};

static const char *own(struct render_ctx *c, dsv_buf *b) {
    if (c->n_owned == c->cap_owned) {
        int cap = c->cap_owned ? 2 * c->cap_owned : 8;
        char **p = realloc(c->owned, (size_t)cap * sizeof *p);
        if (!p) { dsv_buf_free(b); return NULL; }
        c->owned = p;
        c->cap_owned = cap;
    }
    char *s = dsv_buf_take(b);
    if (s) c->owned[c->n_owned++] = s;
    return s;
}

/* An own() for dsv_chat_json_content. */
static const char *own_cb(void *c, dsv_buf *b) { return own(c, b); }

static int check_tools(const cJSON *tools, const char *path) {
    if (!tools || cJSON_IsNull(tools)) return DSV_OK;
    if (!cJSON_IsArray(tools)) return dsv_error(DSV_ERR_ARG, "%stools: expected an array, got %s",
                                                path, dsv_json_type_name(tools));
    int k = 0;
    for (const cJSON *t = tools->child; t; t = t->next, k++) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!cJSON_IsObject(fn))
            return dsv_error(DSV_ERR_ARG, "%stools[%d].function: expected an object, got %s",
                             path, k, dsv_json_type_name(fn));
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsString(name))
            return dsv_error(DSV_ERR_ARG, "%stools[%d].function.name: expected a string, got %s",
                             path, k, dsv_json_type_name(name));
    }
    return DSV_OK;
}

static int convert_message(struct render_ctx *c, const cJSON *msg, int i, struct dmsg *m) {
    static const struct { const char *name; int role; } roles[] = {
        {"system", R_SYSTEM}, {"user", R_USER}, {"developer", R_DEVELOPER},
        {"assistant", R_ASSISTANT}, {"tool", R_TOOL},
    };
    if (!cJSON_IsObject(msg))
        return dsv_error(DSV_ERR_ARG, "messages[%d]: expected an object, got %s", i, dsv_json_type_name(msg));
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
    if (!cJSON_IsString(role))
        return dsv_error(DSV_ERR_ARG, "messages[%d].role: expected a string, got %s", i, dsv_json_type_name(role));
    size_t r = 0;
    while (r < sizeof roles / sizeof roles[0] && strcmp(role->valuestring, roles[r].name)) r++;
    if (r == sizeof roles / sizeof roles[0])
        return dsv_error(DSV_ERR_ARG,
                         "messages[%d].role: unknown role \"%s\" (expected system, user, developer, assistant or tool)",
                         i, role->valuestring);
    *m = (struct dmsg){.role = roles[r].role, .src = i};
    /* The encoder writes `content or ""` for system and assistant turns. */
    int rc = dsv_chat_json_content(msg, i, m->role == R_SYSTEM || m->role == R_ASSISTANT, own_cb, c, &m->content);
    if (rc) return rc;
    char path[48];
    snprintf(path, sizeof path, "messages[%d].", i);
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(msg, "tools");
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(msg, "response_format");
    if (m->role == R_SYSTEM || m->role == R_DEVELOPER) {
        if ((rc = check_tools(tools, path))) return rc;
        m->tools[0] = cJSON_IsArray(tools) ? tools : NULL;
        m->rf = rf && !cJSON_IsNull(rf) ? rf : NULL;
    }
    if (m->role == R_DEVELOPER && (!m->content || !*m->content))
        return dsv_error(DSV_ERR_ARG, "messages[%d].content: a developer message needs content", i);
    if (m->role != R_ASSISTANT) return DSV_OK;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(msg, "reasoning_content");
    if (!rs || cJSON_IsNull(rs)) rs = cJSON_GetObjectItemCaseSensitive(msg, "reasoning");
    if (rs && !cJSON_IsNull(rs) && !cJSON_IsString(rs))
        return dsv_error(DSV_ERR_ARG, "messages[%d].reasoning_content: expected a string, got %s",
                         i, dsv_json_type_name(rs));
    m->reasoning = cJSON_IsString(rs) ? rs->valuestring : NULL;
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
    if (!tc || cJSON_IsNull(tc)) return DSV_OK;
    if (!cJSON_IsArray(tc))
        return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls: expected an array, got %s", i, dsv_json_type_name(tc));
    m->calls = tc->child ? tc : NULL;
    return DSV_OK;
}

/* tools block: the template with one json.dumps(function) a line. */
static void render_tools(dsv_buf *b, const cJSON *const tools[2]) {
    dsv_buf_adds(b, tools_head);
    int first = 1;
    for (int k = 0; k < 2; k++) {
        if (!tools[k]) continue;
        for (const cJSON *t = tools[k]->child; t; t = t->next) {
            if (!first) dsv_buf_add(b, "\n", 1);
            first = 0;
            dsv_pyjson_dump(b, cJSON_GetObjectItemCaseSensitive(t, "function"), 0);
        }
    }
    dsv_buf_adds(b, tools_tail);
}

static int has_tools(const struct dmsg *m) {
    return (m->tools[0] && m->tools[0]->child) || (m->tools[1] && m->tools[1]->child);
}

/* "\n\n" + tools block, "\n\n" + response format: what system and developer
 * messages add. */
static void render_extras(dsv_buf *b, const struct dmsg *m) {
    if (has_tools(m)) {
        dsv_buf_adds(b, "\n\n");
        render_tools(b, m->tools);
    }
    if (m->rf) {
        dsv_buf_adds(b, "\n\n");
        dsv_buf_adds(b, rf_head);
        dsv_pyjson_dump(b, m->rf, 0);
    }
}

/* One parameter a line: strings raw, everything else json.dumps'ed. */
static int render_call(dsv_buf *b, const cJSON *call, int i, int k) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
    if (!cJSON_IsObject(fn))
        return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls[%d].function: expected an object, got %s",
                         i, k, dsv_json_type_name(fn));
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
    if (!cJSON_IsString(name))
        return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls[%d].function.name: expected a string, got %s",
                         i, k, dsv_json_type_name(name));
    cJSON *parsed = NULL;
    if (cJSON_IsString(args)) {
        /* The OpenAI form: a JSON text. The encoder json.loads it. */
        parsed = cJSON_Parse(args->valuestring);
        args = parsed;
        if (!parsed)
            return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls[%d].function.arguments: not valid JSON", i, k);
    }
    if (!cJSON_IsObject(args)) {
        cJSON_Delete(parsed);
        return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls[%d].function.arguments: expected a JSON object, got %s",
                         i, k, dsv_json_type_name(args));
    }
    dsv_buf_adds(b, "<" DSML_S "invoke name=\"");
    dsv_buf_adds(b, name->valuestring);
    dsv_buf_adds(b, "\">\n");
    for (const cJSON *p = args->child; p; p = p->next) {
        int str = cJSON_IsString(p);
        dsv_buf_adds(b, "<" DSML_S "parameter name=\"");
        dsv_buf_adds(b, p->string);
        dsv_buf_adds(b, str ? "\" string=\"true\">" : "\" string=\"false\">");
        if (str) dsv_buf_adds(b, p->valuestring);
        else dsv_pyjson_dump(b, p, 0);
        dsv_buf_adds(b, "</" DSML_S "parameter>");
        if (p->next) dsv_buf_add(b, "\n", 1);
    }
    dsv_buf_adds(b, "\n</" DSML_S "invoke>");
    cJSON_Delete(parsed);
    return DSV_OK;
}

static int render_message(dsv_buf *b, const struct dmsg *ms, int n, int idx, int last_user, int thinking) {
    const struct dmsg *m = &ms[idx];
    int i = m->src;
    switch (m->role) {
    case R_SYSTEM:
        dsv_buf_adds(b, m->content);
        render_extras(b, m);
        break;
    case R_DEVELOPER:
    case R_USER:
        dsv_buf_adds(b, USER_S);
        if (m->role == R_DEVELOPER) {
            render_extras(b, m);
            dsv_buf_adds(b, "\n\n# The user's message is: ");
        }
        dsv_buf_adds(b, m->content);
        dsv_buf_adds(b, ASSISTANT_S);
        dsv_buf_adds(b, idx == last_user && thinking ? THINK_S : END_THINK_S);
        break;
    case R_TOOL: {
        /* Results pair with the calls of the assistant turn before them, by
         * order: the first opens the block, the last closes it. */
        int a = idx - 1;
        while (a >= 0 && ms[a].role == R_TOOL) a--;
        if (a < 0 || ms[a].role != R_ASSISTANT || !ms[a].calls)
            return dsv_error(DSV_ERR_ARG, "messages[%d]: a tool result must follow an assistant message with tool_calls", i);
        int order = idx - a, n_calls = cJSON_GetArraySize(ms[a].calls);
        if (order > n_calls)
            return dsv_error(DSV_ERR_ARG, "messages[%d]: more tool results than the %d tool call(s) before them",
                             i, n_calls);
        if (order == 1) dsv_buf_adds(b, "\n\n<function_results>");
        dsv_buf_adds(b, "\n<result>");
        dsv_buf_adds(b, m->content);
        dsv_buf_adds(b, "</result>");
        if (order == n_calls) {
            dsv_buf_adds(b, "\n</function_results>");
            dsv_buf_adds(b, idx >= last_user && thinking ? "\n\n" THINK_S : "\n\n" END_THINK_S);
        }
        break;
    }
    case R_ASSISTANT:
        if (thinking && idx > last_user) {
            dsv_buf_adds(b, m->reasoning);
            dsv_buf_adds(b, END_THINK_S);
        }
        dsv_buf_adds(b, m->content);
        if (m->calls) {
            dsv_buf_adds(b, "\n\n<" DSML_S "function_calls>\n");
            int k = 0;
            for (const cJSON *call = m->calls->child; call; call = call->next, k++) {
                if (k) dsv_buf_add(b, "\n", 1);
                int rc = render_call(b, call, i, k);
                if (rc) return rc;
            }
            dsv_buf_adds(b, "\n</" DSML_S "function_calls>");
        }
        dsv_buf_adds(b, EOS_S);
        break;
    }
    (void)n;
    return DSV_OK;
}

static int last_user_index(const struct dmsg *ms, int n) {
    for (int i = n - 1; i >= 0; i--)
        if (ms[i].role == R_USER || ms[i].role == R_DEVELOPER) return i;
    return -1;
}

static int render_request(const cJSON *root, int thinking, dsv_buf *out) {
    const cJSON *messages = root, *tools = NULL, *rf = NULL;
    int rc;
    if (cJSON_IsObject(root)) {
        messages = cJSON_GetObjectItemCaseSensitive(root, "messages");
        tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
        rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
        if (rf && cJSON_IsNull(rf)) rf = NULL;
        if ((rc = check_tools(tools, ""))) return rc;
        if ((rc = dsv_json_opt_bool(root, "thinking", "", &thinking))) return rc;
        const cJSON *mode = cJSON_GetObjectItemCaseSensitive(root, "thinking_mode");
        if (mode && !cJSON_IsNull(mode)) {
            if (!cJSON_IsString(mode) || (strcmp(mode->valuestring, "chat") && strcmp(mode->valuestring, "thinking")))
                return dsv_error(DSV_ERR_ARG, "thinking_mode: expected \"chat\" or \"thinking\"");
            thinking = !strcmp(mode->valuestring, "thinking");
        }
        const cJSON *kw = cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs");
        if (kw && !cJSON_IsNull(kw) && !cJSON_IsObject(kw))
            return dsv_error(DSV_ERR_ARG, "chat_template_kwargs: expected an object, got %s", dsv_json_type_name(kw));
        if (kw && (rc = dsv_json_opt_bool(kw, "thinking", "chat_template_kwargs.", &thinking))) return rc;
    } else if (!cJSON_IsArray(root)) {
        return dsv_error(DSV_ERR_ARG, "request: expected an object or a messages array, got %s",
                         dsv_json_type_name(root));
    }
    if (!cJSON_IsArray(messages))
        return dsv_error(DSV_ERR_ARG, "messages: expected an array, got %s", dsv_json_type_name(messages));
    int n = cJSON_GetArraySize(messages);
    struct render_ctx c = {.m = calloc((size_t)n + 1, sizeof *c.m)};
    if (!c.m) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    int k = 0;
    rc = DSV_OK;
    for (const cJSON *m = messages->child; m && !rc; m = m->next, k++) rc = convert_message(&c, m, k, &c.m[k]);
    if (!rc && ((tools && tools->child) || rf)) {
        /* Request-level tools and response_format attach to the first system
         * message, or to a new empty one at the start. */
        int s = 0;
        while (s < n && c.m[s].role != R_SYSTEM) s++;
        if (s == n) {
            memmove(c.m + 1, c.m, (size_t)n * sizeof *c.m);
            c.m[0] = (struct dmsg){.role = R_SYSTEM, .src = -1, .content = ""};
            s = 0;
            n++;
        }
        if (tools && tools->child) c.m[s].tools[1] = tools;
        if (!c.m[s].rf) c.m[s].rf = rf;
    }
    if (!rc && thinking) {
        /* drop_thinking_messages: before the last user message only user,
         * system, tool and assistant turns stay (developer turns go), and
         * their reasoning is never rendered there anyway. */
        int last = last_user_index(c.m, n), w = 0;
        for (int i = 0; i < n; i++)
            if (i >= last || c.m[i].role != R_DEVELOPER) c.m[w++] = c.m[i];
        n = w;
    }
    if (!rc) {
        int last = last_user_index(c.m, n);
        dsv_buf_adds(out, BOS_S);
        for (int i = 0; i < n && !rc; i++) rc = render_message(out, c.m, n, i, last, thinking);
    }
    for (int i = 0; i < c.n_owned; i++) free(c.owned[i]);
    free(c.owned);
    free(c.m);
    return rc;
}

int dsv_dsml_render_json(const char *json, size_t len, int thinking, char **out_text) {
    if (!json || !out_text) return dsv_error(DSV_ERR_ARG, "dsv_dsml_render_json: NULL argument");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root)
        return dsv_error(DSV_ERR_ARG, "request: invalid JSON near byte %zu", end ? (size_t)(end - json) : (size_t)0);
    dsv_buf b = {0};
    int rc = render_request(root, thinking, &b);
    cJSON_Delete(root);
    if (!rc && b.failed) rc = dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    if (rc) { dsv_buf_free(&b); return rc; }
    *out_text = dsv_buf_take(&b);
    return *out_text ? DSV_OK : dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
}

/* ==== 2. Parsing ========================================================== */

/* A verdict on the bytes held: decided either way, or undecided until more
 * arrive (never undecided once the input is final). */
enum { P_OK, P_MORE, P_BAD };

/* A cursor over the held bytes. */
struct cur {
    const char *p;
    size_t n, i;
    int final;
};

/* Limits that keep a runaway name from being held forever. */
#define NAME_MAX_BYTES 256

static int is_ws(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

static int more(const struct cur *c) { return c->final ? P_BAD : P_MORE; }

/* The literal s next: consumed, or undecided while the bytes are a prefix. */
static int lit(struct cur *c, const char *s, size_t len) {
    size_t have = c->n - c->i;
    if (have >= len) {
        if (memcmp(c->p + c->i, s, len)) return P_BAD;
        c->i += len;
        return P_OK;
    }
    return memcmp(c->p + c->i, s, have) ? P_BAD : more(c);
}
#define LIT(c, s) lit(c, s, SLEN(s))

/* Whitespace, at least min bytes. */
static int ws(struct cur *c, size_t min) {
    size_t k = 0;
    while (c->i < c->n && is_ws(c->p[c->i])) c->i++, k++;
    if (k >= min) return P_OK;
    return c->i == c->n ? more(c) : P_BAD;
}

/* name="VALUE": the value up to the closing quote, without '<', '>' or a
 * newline (those mean the markup is broken). */
static int attr(struct cur *c, const char *key, size_t klen, size_t *at, size_t *len) {
    int r = lit(c, key, klen);
    if (r != P_OK) return r;
    if ((r = LIT(c, "=\"")) != P_OK) return r;
    *at = c->i;
    for (;;) {
        if (c->i == c->n) return more(c);
        char ch = c->p[c->i];
        if (ch == '"') break;
        if (ch == '<' || ch == '>' || ch == '\n' || c->i - *at >= NAME_MAX_BYTES) return P_BAD;
        c->i++;
    }
    *len = c->i - *at;
    c->i++;
    return P_OK;
}

/* Which of two literals comes next: 0 or 1 (consumed), else P_MORE/P_BAD
 * as a negative number. */
static int alt(struct cur *c, const char *a, size_t alen, const char *b, size_t blen) {
    size_t save = c->i;
    int ra = lit(c, a, alen);
    if (ra == P_OK) return 0;
    c->i = save;
    int rb = lit(c, b, blen);
    if (rb == P_OK) return 1;
    c->i = save;
    return ra == P_MORE || rb == P_MORE ? -P_MORE : -P_BAD;
}

/* A parsed invoke: its name and its arguments as a JSON object text. */
struct invoke {
    size_t name_at, name_len;
    dsv_buf args;
    size_t keys[64][2]; /* parameter names seen, to refuse duplicates */
    size_t cut[64];     /* where each parameter starts in args (the stream's pieces) */
    int n_keys;
};

/* One invoke from its "<｜DSML｜invoke" to its "</｜DSML｜invoke>". */
static int parse_invoke(struct cur *c, struct invoke *iv) {
    int r;
    if ((r = LIT(c, INVOKE_OPEN_S)) != P_OK) return r;
    if ((r = ws(c, 1)) != P_OK) return r;
    if ((r = attr(c, "name", 4, &iv->name_at, &iv->name_len)) != P_OK) return r;
    if (!iv->name_len) return P_BAD;
    if ((r = ws(c, 0)) != P_OK) return r;
    if ((r = LIT(c, ">")) != P_OK) return r;
    dsv_buf_clear(&iv->args);
    dsv_buf_add(&iv->args, "{", 1);
    iv->n_keys = 0;
    for (;;) {
        if ((r = ws(c, 0)) != P_OK) return r;
        int k = alt(c, INVOKE_CLOSE_S, SLEN(INVOKE_CLOSE_S), PARAM_OPEN_S, SLEN(PARAM_OPEN_S));
        if (k < 0) return -k;
        if (k == 0) break;
        size_t key_at, key_len, s_at, s_len;
        if ((r = ws(c, 1)) != P_OK) return r;
        if ((r = attr(c, "name", 4, &key_at, &key_len)) != P_OK) return r;
        if ((r = ws(c, 1)) != P_OK) return r;
        if ((r = attr(c, "string", 6, &s_at, &s_len)) != P_OK) return r;
        int is_str;
        if (s_len == 4 && !memcmp(c->p + s_at, "true", 4)) is_str = 1;
        else if (s_len == 5 && !memcmp(c->p + s_at, "false", 5)) is_str = 0;
        else return P_BAD;
        if ((r = ws(c, 0)) != P_OK) return r;
        if ((r = LIT(c, ">")) != P_OK) return r;
        /* The value runs to the first "</｜DSML｜parameter>"; any other DSML
         * marker before it means the markup is broken. */
        size_t v_at = c->i;
        const char *dsml = dsv_memfind(c->p + v_at, c->n - v_at, DSML_S, SLEN(DSML_S));
        if (!dsml) {
            /* Undecided while the tail could start the closing marker. */
            return more(c);
        }
        size_t d = (size_t)(dsml - c->p);
        if (d < v_at + 2 || memcmp(c->p + d - 2, "</", 2)) return P_BAD;
        c->i = d - 2;
        if ((r = LIT(c, PARAM_CLOSE_S)) != P_OK) return r;
        size_t v_len = d - 2 - v_at;
        for (int j = 0; j < iv->n_keys; j++)
            if (iv->keys[j][1] == key_len && !memcmp(c->p + iv->keys[j][0], c->p + key_at, key_len)) return P_BAD;
        if (iv->n_keys == (int)(sizeof iv->keys / sizeof iv->keys[0])) return P_BAD;
        iv->keys[iv->n_keys][0] = key_at;
        iv->keys[iv->n_keys][1] = key_len;
        iv->cut[iv->n_keys] = iv->args.len;
        if (iv->n_keys++) dsv_buf_add(&iv->args, ", ", 2);
        dsv_pyjson_string(&iv->args, c->p + key_at, key_len, 0);
        dsv_buf_add(&iv->args, ": ", 2);
        if (is_str) {
            dsv_pyjson_string(&iv->args, c->p + v_at, v_len, 0);
        } else {
            const char *end = NULL;
            cJSON *v = cJSON_ParseWithLengthOpts(c->p + v_at, v_len, &end, 0);
            size_t used = v && end ? (size_t)(end - (c->p + v_at)) : 0;
            while (v && used < v_len && is_ws(c->p[v_at + used])) used++;
            if (!v || used != v_len) { cJSON_Delete(v); return P_BAD; }
            dsv_pyjson_dump(&iv->args, v, 0);
            cJSON_Delete(v);
        }
    }
    dsv_buf_add(&iv->args, "}", 1);
    return P_OK;
}

enum { ST_START, ST_REASONING, ST_CONTENT, ST_BLOCK, ST_TAIL };

struct dsv_dsml_stream {
    int state;
    int block_first; /* ST_BLOCK: no call committed yet; pend starts with the opener */
    int finished;
    dsv_buf pend;    /* input not yet classified */
    dsv_buf reasoning, content;
    dsv_chat_call *calls;
    int n_calls, cap_calls;
    int failed;
    struct invoke iv;
    dsv_chat_result result;
    dsv_chat_event_fn fn;
    void *user;
};

static void emit(dsv_dsml_stream *s, dsv_chat_event_kind kind, const char *p, size_t n) {
    if (!n) return;
    dsv_buf_add(kind == DSV_CHAT_EV_REASONING ? &s->reasoning : &s->content, p, n);
    if (s->fn) {
        dsv_chat_event ev = {.kind = kind, .text = p, .len = n, .index = s->n_calls};
        s->fn(s->user, &ev);
    }
}

static void commit_call(dsv_dsml_stream *s, const char *name, size_t nlen) {
    const dsv_buf *a = &s->iv.args;
    if (s->n_calls == s->cap_calls) {
        int cap = s->cap_calls ? 2 * s->cap_calls : 4;
        dsv_chat_call *p = realloc(s->calls, (size_t)cap * sizeof *p);
        if (!p) { s->failed = 1; return; }
        s->calls = p;
        s->cap_calls = cap;
    }
    dsv_chat_call *c = &s->calls[s->n_calls];
    c->name = strndup(name, nlen);
    c->arguments = strndup(a->data ? a->data : "", a->len);
    c->complete = 1;
    if (!c->name || !c->arguments) { free(c->name); free(c->arguments); s->failed = 1; return; }
    if (s->fn) {
        dsv_chat_event ev = {.kind = DSV_CHAT_EV_TOOL_BEGIN, .index = s->n_calls, .name = c->name};
        s->fn(s->user, &ev);
        /* The arguments in pieces, one a parameter (the last with the
         * closing brace), as other servers stream them. */
        ev.kind = DSV_CHAT_EV_TOOL_ARGS;
        for (int k = 0; k < s->iv.n_keys || k == 0; k++) {
            size_t from = k ? s->iv.cut[k] : 0, to = k + 1 < s->iv.n_keys ? s->iv.cut[k + 1] : a->len;
            ev.text = c->arguments + from;
            ev.len = to - from;
            s->fn(s->user, &ev);
        }
        ev.kind = DSV_CHAT_EV_TOOL_END;
        ev.text = c->arguments;
        ev.len = a->len;
        ev.complete = 1;
        s->fn(s->user, &ev);
    }
    s->n_calls++;
}

/* Earliest of two markers in p[0..n); returns 0 or 1 and its offset, or -1. */
static int find2(const char *p, size_t n, const char *a, size_t alen, const char *b, size_t blen, size_t *at) {
    const char *x = dsv_memfind(p, n, a, alen), *y = dsv_memfind(p, n, b, blen);
    if (!x && !y) return -1;
    if (x && (!y || x <= y)) { *at = (size_t)(x - p); return 0; }
    *at = (size_t)(y - p);
    return 1;
}

/* Emits the text of the current state that can no longer become a marker. */
static void emit_safe(dsv_dsml_stream *s, dsv_chat_event_kind kind, const char *a, const char *b, int final) {
    const char *p = s->pend.data ? s->pend.data : "";
    size_t n = s->pend.len;
    if (!final) {
        const char *pats[2] = {a, b};
        n = dsv_utf8_complete(p, n - dsv_partial_suffix(p, n, pats, 2));
    }
    emit(s, kind, p, n);
    dsv_buf_consume(&s->pend, n);
}

/* One step of the block: a call, the block's end, or a verdict of broken. */
static int block_step(dsv_dsml_stream *s, int final, size_t *used, int *closed) {
    struct cur c = {s->pend.data ? s->pend.data : "", s->pend.len, 0, final};
    if (s->block_first) c.i = SLEN(BLOCK_OPEN_S);
    int r = ws(&c, 0);
    if (r != P_OK) return r;
    int k = alt(&c, BLOCK_CLOSE_S, SLEN(BLOCK_CLOSE_S), INVOKE_OPEN_S, SLEN(INVOKE_OPEN_S));
    if (k < 0) return -k;
    /* A block without a call is not a tool call: all of it is content. */
    if (k == 0 && s->block_first) return P_BAD;
    if (k == 0) { *closed = 1; *used = c.i; return P_OK; }
    c.i -= SLEN(INVOKE_OPEN_S);
    r = parse_invoke(&c, &s->iv);
    if (r != P_OK) return r;
    *closed = 0;
    *used = c.i;
    return P_OK;
}

/* Classifies as much of pend as is certain; with `final`, all of it. */
static void process(dsv_dsml_stream *s, int final) {
    for (;;) {
        const char *p = s->pend.data ? s->pend.data : "";
        size_t n = s->pend.len, at;
        int k;
        switch (s->state) {
        case ST_START: {
            /* One leading <think> is dropped; wait while it could be one. */
            size_t m = DSV_MIN(n, SLEN(THINK_S));
            if (!final && n < SLEN(THINK_S) && !memcmp(p, THINK_S, m)) return;
            if (n >= SLEN(THINK_S) && !memcmp(p, THINK_S, SLEN(THINK_S))) dsv_buf_consume(&s->pend, SLEN(THINK_S));
            s->state = ST_REASONING;
            break;
        }
        case ST_REASONING:
            k = find2(p, n, END_THINK_S, SLEN(END_THINK_S), EOS_S, SLEN(EOS_S), &at);
            if (k < 0) { emit_safe(s, DSV_CHAT_EV_REASONING, END_THINK_S, EOS_S, final); return; }
            emit(s, DSV_CHAT_EV_REASONING, p, at);
            dsv_buf_consume(&s->pend, at + (k == 0 ? SLEN(END_THINK_S) : SLEN(EOS_S)));
            s->state = k == 0 ? ST_CONTENT : ST_TAIL;
            break;
        case ST_CONTENT:
            k = find2(p, n, BLOCK_OPEN_S, SLEN(BLOCK_OPEN_S), EOS_S, SLEN(EOS_S), &at);
            if (k < 0) { emit_safe(s, DSV_CHAT_EV_CONTENT, BLOCK_OPEN_S, EOS_S, final); return; }
            emit(s, DSV_CHAT_EV_CONTENT, p, at);
            if (k == 0) {
                dsv_buf_consume(&s->pend, at);
                s->state = ST_BLOCK;
                s->block_first = 1;
            } else {
                dsv_buf_consume(&s->pend, at + SLEN(EOS_S));
                s->state = ST_TAIL;
            }
            break;
        case ST_BLOCK: {
            size_t used = 0;
            int closed = 0;
            int r = block_step(s, final, &used, &closed);
            if (r == P_MORE) return;
            if (r == P_OK) {
                if (!closed) commit_call(s, p + s->iv.name_at, s->iv.name_len);
                dsv_buf_consume(&s->pend, used);
                s->block_first = 0;
                if (closed) s->state = ST_CONTENT;
                break;
            }
            /* Broken markup: what is held goes back to content. The opener
             * itself is content now, so the rescan cannot enter the same
             * block again. */
            if (s->block_first) {
                emit(s, DSV_CHAT_EV_CONTENT, p, SLEN(BLOCK_OPEN_S));
                dsv_buf_consume(&s->pend, SLEN(BLOCK_OPEN_S));
            }
            s->block_first = 0;
            s->state = ST_CONTENT;
            break;
        }
        default: { /* ST_TAIL: whatever follows EOS is content. */
            size_t m = final ? n : dsv_utf8_complete(p, n);
            emit(s, DSV_CHAT_EV_CONTENT, p, m);
            dsv_buf_consume(&s->pend, m);
            return;
        }
        }
    }
}

int dsv_dsml_stream_new(dsv_dsml_stream **out, int thinking) {
    if (!out) return dsv_error(DSV_ERR_ARG, "dsv_dsml_stream_new: out is NULL");
    dsv_dsml_stream *s = calloc(1, sizeof *s);
    if (!s) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    s->state = thinking ? ST_START : ST_CONTENT;
    *out = s;
    return DSV_OK;
}

void dsv_dsml_stream_free(dsv_dsml_stream *s) {
    if (!s) return;
    dsv_buf_free(&s->pend);
    dsv_buf_free(&s->reasoning);
    dsv_buf_free(&s->content);
    dsv_buf_free(&s->iv.args);
    dsv_chat_result r = {NULL, NULL, s->calls, s->n_calls};
    dsv_chat_result_free(&r);
    dsv_chat_result_free(&s->result);
    free(s);
}

static int stream_failed(const dsv_dsml_stream *s) {
    return s->failed || s->pend.failed || s->reasoning.failed || s->content.failed || s->iv.args.failed;
}

int dsv_dsml_stream_feed(dsv_dsml_stream *s, const char *text, size_t len, dsv_chat_event_fn fn, void *user) {
    if (!s || (!text && len)) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_feed: NULL argument");
    if (s->finished) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_feed: the stream is finished");
    s->fn = fn;
    s->user = user;
    if (len) dsv_buf_add(&s->pend, text, len);
    process(s, 0);
    return stream_failed(s) ? dsv_error(DSV_ERR_NOMEM, "chat: out of memory") : DSV_OK;
}

static char *take_or_null(dsv_buf *b) {
    if (!b->len) { dsv_buf_free(b); return NULL; }
    return dsv_buf_take(b);
}

int dsv_dsml_stream_finish(dsv_dsml_stream *s, dsv_chat_event_fn fn, void *user) {
    if (!s) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_finish: NULL stream");
    if (s->finished) return DSV_OK;
    s->fn = fn;
    s->user = user;
    process(s, 1);
    s->finished = 1;
    if (stream_failed(s)) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    s->result.reasoning = take_or_null(&s->reasoning);
    s->result.content = take_or_null(&s->content);
    s->result.tool_calls = s->calls;
    s->result.n_tool_calls = s->n_calls;
    s->calls = NULL;
    s->n_calls = s->cap_calls = 0;
    return DSV_OK;
}

const dsv_chat_result *dsv_dsml_stream_result(const dsv_dsml_stream *s) {
    return s && s->finished ? &s->result : NULL;
}

int dsv_dsml_parse(const char *text, size_t len, int thinking, dsv_chat_result *out) {
    if (!text || !out) return dsv_error(DSV_ERR_ARG, "dsv_chat_parse: NULL argument");
    dsv_dsml_stream *s = NULL;
    int rc = dsv_dsml_stream_new(&s, thinking);
    if (!rc) rc = dsv_dsml_stream_feed(s, text, len, NULL, NULL);
    if (!rc) rc = dsv_dsml_stream_finish(s, NULL, NULL);
    if (!rc) {
        *out = s->result;
        s->result = (dsv_chat_result){0};
    }
    dsv_dsml_stream_free(s);
    return rc;
}
