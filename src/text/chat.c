/* chat.c: the DeepSeek-V3.2-Exp chat format (see include/dsv32_chat.h).
 *
 * Three parts, in the order data flows:
 *  1. render: messages -> prompt text. render() mirrors the Jinja template of
 *     tokenizer_config.json statement by statement, with the same state flags
 *     (is_tool, is_last_user, is_only_sys, is_prefix; the template's is_first
 *     only marks the first call, which a loop index does here), so that every
 *     quirk of the template comes out the same. The tool block that the
 *     template leaves to the caller is built by tools_block(), a port of
 *     render_chat.py's tool_block(), with dsv_pyjson_*() (pyjson.c) standing
 *     in for Python's json.dumps.
 *  2. JSON front end: an OpenAI request -> dsv_chat_msg[] -> render().
 *  3. parse: generated text -> reasoning, content, tool calls; one-shot
 *     (dsv_chat_parse, a direct walk) and streaming (dsv_chat_stream_*, a
 *     state machine), written independently so the tests can hold one
 *     against the other.
 * No tokenizer here: the module speaks text only. */
#include "dsv32_chat.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"
#include "chat_json.h"
#include "dsml.h"
#include "pyjson.h"
#include "base/util.h"

/* The marker strings (spec §1). Fullwidth bar U+FF5C and U+2581 '▁'. */
#define BOS_S        "<｜begin▁of▁sentence｜>"
#define EOS_S        "<｜end▁of▁sentence｜>"
#define USER_S       "<｜User｜>"
#define ASSISTANT_S  "<｜Assistant｜>"
#define THINK_S      "<think>"
#define END_THINK_S  "</think>"
#define CALLS_BEGIN_S "<｜tool▁calls▁begin｜>"
#define CALLS_END_S  "<｜tool▁calls▁end｜>"
#define CALL_BEGIN_S "<｜tool▁call▁begin｜>"
#define CALL_END_S   "<｜tool▁call▁end｜>"
#define TOOL_SEP_S   "<｜tool▁sep｜>"
#define OUTPUT_BEGIN_S "<｜tool▁output▁begin｜>"
#define OUTPUT_END_S "<｜tool▁output▁end｜>"

#define SLEN(lit) (sizeof(lit) - 1)

/* ==== 1. Rendering ======================================================== */

/* --- The tool block (spec §2.3, render_chat.py's tool_block()). */

static const char tools_head[] = "## Tools\nYou have access to the following tools:\n\n";
static const char tools_tail[] =
    "IMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
    CALLS_BEGIN_S CALL_BEGIN_S "tool_call_name" TOOL_SEP_S "tool_call_arguments"
    CALL_END_S "{{additional_tool_calls}}" CALLS_END_S "\n\n"
    "Where:\n"
    "- `tool_call_name` must be an exact match to one of the available tools\n"
    "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
    "- For multiple tool calls, chain them directly without separators or spaces\n";

/* One "### name" entry; params NULL means {}. */
static void tool_entry(dsv_buf *b, const char *name, const char *desc, const cJSON *params) {
    dsv_buf_adds(b, "### ");
    dsv_buf_adds(b, name);
    dsv_buf_adds(b, "\nDescription: ");
    dsv_buf_adds(b, desc);
    dsv_buf_adds(b, "\n\nParameters: ");
    if (params) dsv_pyjson_dump(b, params, 1);
    else dsv_buf_adds(b, "{}");
    dsv_buf_adds(b, "\n\n");
}

static int tools_block(const dsv_chat_tool *tools, int n, dsv_buf *b) {
    dsv_buf_adds(b, tools_head);
    for (int i = 0; i < n; i++) {
        const dsv_chat_tool *t = &tools[i];
        if (!t->name) return dsv_error(DSV_ERR_ARG, "tools[%d].name: missing", i);
        cJSON *params = NULL;
        if (t->parameters && !(params = cJSON_Parse(t->parameters)))
            return dsv_error(DSV_ERR_ARG, "tools[%d].parameters: invalid JSON", i);
        tool_entry(b, t->name, t->description, params);
        cJSON_Delete(params);
    }
    dsv_buf_adds(b, tools_tail);
    return DSV_OK;
}

/* --- The template. Comments quote the Jinja statement each block mirrors. */

static int check_msgs(const dsv_chat_msg *m, int n) {
    if (n < 0 || (n > 0 && !m)) return dsv_error(DSV_ERR_ARG, "msgs: bad array (n_msgs = %d)", n);
    for (int i = 0; i < n; i++) {
        if ((int)m[i].role < DSV_CHAT_SYSTEM || m[i].role > DSV_CHAT_TOOL)
            return dsv_error(DSV_ERR_ARG, "msgs[%d].role: unknown role %d", i, (int)m[i].role);
        if (m[i].n_tool_calls < 0 || (m[i].n_tool_calls > 0 && !m[i].tool_calls))
            return dsv_error(DSV_ERR_ARG, "msgs[%d].tool_calls: bad array (n_tool_calls = %d)",
                             i, m[i].n_tool_calls);
        if (m[i].n_tool_calls > 0 && m[i].role != DSV_CHAT_ASSISTANT)
            return dsv_error(DSV_ERR_ARG, "msgs[%d].tool_calls: only assistant messages have tool calls", i);
        for (int k = 0; k < m[i].n_tool_calls; k++)
            if (!m[i].tool_calls[k].name)
                return dsv_error(DSV_ERR_ARG, "msgs[%d].tool_calls[%d].name: missing", i, k);
    }
    return DSV_OK;
}

static void render_call(dsv_buf *b, const dsv_chat_tool_call *c) {
    dsv_buf_adds(b, CALL_BEGIN_S);
    dsv_buf_adds(b, c->name);
    dsv_buf_adds(b, TOOL_SEP_S);
    dsv_buf_adds(b, c->arguments ? c->arguments : "{}");
    dsv_buf_adds(b, CALL_END_S);
}

/* block: the tool block or "" (len 0). */
static int render(const dsv_chat_msg *msgs, int n, int thinking, int add_gen,
                  const char *block, size_t block_len, dsv_buf *b) {
    int is_tool = 0, is_last_user = 0, is_only_sys = 0, is_prefix = 0;

    /* {% for message in messages %}{% if role == 'system' %} ... join with
     * '\n\n' ... {% set ns.is_only_sys = true %}. The tool block goes at the
     * end of the first system message, as render_chat.py puts it there. */
    dsv_buf_adds(b, BOS_S);
    int first_sp = 1;
    for (int i = 0; i < n; i++) {
        if (msgs[i].role != DSV_CHAT_SYSTEM) continue;
        if (!first_sp) dsv_buf_adds(b, "\n\n");
        dsv_buf_adds(b, msgs[i].content);
        if (first_sp && block_len) {
            dsv_buf_adds(b, "\n\n");
            dsv_buf_add(b, block, block_len);
        }
        first_sp = 0;
        is_only_sys = 1;
    }
    if (first_sp && block_len) {
        /* No system message: the block is the system prompt. */
        dsv_buf_add(b, block, block_len);
        is_only_sys = 1;
    }

    for (int i = 0; i < n; i++) {
        const dsv_chat_msg *m = &msgs[i];
        const char *content = m->content ? m->content : "";
        switch (m->role) {
        case DSV_CHAT_SYSTEM:
            break;
        case DSV_CHAT_USER:
            is_tool = 0;
            is_last_user = 1;
            dsv_buf_adds(b, USER_S);
            dsv_buf_adds(b, content);
            break;
        case DSV_CHAT_ASSISTANT:
            if (m->n_tool_calls > 0) {
                /* {% if ns.is_last_user or ns.is_only_sys %}: note only_sys
                 * opens a tool-call turn; a plain answer needs a user before. */
                if (is_last_user || is_only_sys) dsv_buf_adds(b, ASSISTANT_S END_THINK_S);
                is_last_user = 0;
                is_tool = 0;
                /* Content goes verbatim before the first call: no </think>
                 * stripping in this branch. */
                dsv_buf_adds(b, content);
                dsv_buf_adds(b, CALLS_BEGIN_S);
                for (int k = 0; k < m->n_tool_calls; k++) render_call(b, &m->tool_calls[k]);
                dsv_buf_adds(b, CALLS_END_S EOS_S);
            } else {
                if (is_last_user)
                    dsv_buf_adds(b, m->prefix && thinking ? ASSISTANT_S THINK_S : ASSISTANT_S END_THINK_S);
                if (m->prefix) is_prefix = 1;
                is_last_user = 0;
                if (is_tool) {
                    /* An answer right after tool results: no marker, and the
                     * content is NOT cut at </think> (template quirk). */
                    dsv_buf_adds(b, content);
                    is_tool = 0;
                } else {
                    /* content.split('</think>', 1)[1]: earlier reasoning is
                     * dropped by keeping what follows the first </think>. */
                    const char *cut = strstr(content, END_THINK_S);
                    dsv_buf_adds(b, cut ? cut + SLEN(END_THINK_S) : content);
                }
                dsv_buf_adds(b, EOS_S);
            }
            break;
        case DSV_CHAT_TOOL:
            is_last_user = 0;
            is_tool = 1;
            dsv_buf_adds(b, OUTPUT_BEGIN_S);
            dsv_buf_adds(b, content);
            dsv_buf_adds(b, OUTPUT_END_S);
            break;
        }
        if (m->role != DSV_CHAT_SYSTEM) is_only_sys = 0;
    }

    /* {% if add_generation_prompt and not ns.is_tool %}{% if ns.is_last_user
     * or ns.is_only_sys or not ns.is_prefix %}: after a prefix turn the model
     * continues it; after tool results it answers without a marker. */
    if (add_gen && !is_tool && (is_last_user || is_only_sys || !is_prefix))
        dsv_buf_adds(b, thinking ? ASSISTANT_S THINK_S : ASSISTANT_S END_THINK_S);
    return DSV_OK;
}

/* Hands b to *out on success; frees it otherwise. */
static int finish_text(int rc, dsv_buf *b, char **out) {
    if (!rc && b->failed) rc = dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    if (rc) { dsv_buf_free(b); return rc; }
    *out = dsv_buf_take(b);
    return DSV_OK;
}

int dsv_chat_render(const dsv_chat_msg *msgs, int n_msgs, const dsv_chat_opts *opts,
                    char **out_text) {
    static const dsv_chat_opts none = {0};
    if (!out_text) return dsv_error(DSV_ERR_ARG, "dsv_chat_render: out_text is NULL");
    if (!opts) opts = &none;
    if (opts->n_tools < 0 || (opts->n_tools > 0 && !opts->tools))
        return dsv_error(DSV_ERR_ARG, "tools: bad array (n_tools = %d)", opts->n_tools);
    int rc = check_msgs(msgs, n_msgs);
    if (rc) return rc;
    dsv_buf block = {0}, b = {0};
    if (opts->n_tools > 0 && (rc = tools_block(opts->tools, opts->n_tools, &block))) {
        dsv_buf_free(&block);
        return rc;
    }
    rc = render(msgs, n_msgs, opts->thinking, opts->add_generation_prompt, block.data, block.len, &b);
    dsv_buf_free(&block);
    return finish_text(rc, &b, out_text);
}

/* ==== 2. JSON front end =================================================== */

/* The dsv_chat_msg[] built from a request, pointing into the cJSON tree and
 * into `owned` (joined content parts, serialized arguments). */
struct jconv {
    dsv_chat_msg *msgs;
    dsv_chat_tool_call *calls;
    char **owned;
    int n_owned;
};

static const char *own(struct jconv *cv, dsv_buf *b) {
    char *s = dsv_buf_take(b);
    if (s) cv->owned[cv->n_owned++] = s;
    return s;
}

/* An own() for dsv_chat_json_content. */
static const char *own_cb(void *cv, dsv_buf *b) { return own(cv, b); }

static int json_tool_calls(const cJSON *tc, int i, struct jconv *cv, dsv_chat_msg *m) {
    if (!tc || cJSON_IsNull(tc)) return DSV_OK;
    if (!cJSON_IsArray(tc))
        return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls: expected an array, got %s", i, dsv_json_type_name(tc));
    m->tool_calls = cv->calls;
    int k = 0;
    for (const cJSON *call = tc->child; call; call = call->next, k++) {
        dsv_chat_tool_call *c = &cv->calls[k];
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
        if (!cJSON_IsObject(call))
            return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls[%d]: expected an object, got %s",
                             i, k, dsv_json_type_name(call));
        if (!cJSON_IsObject(fn))
            return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls[%d].function: expected an object, got %s",
                             i, k, dsv_json_type_name(fn));
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        if (!cJSON_IsString(name))
            return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls[%d].function.name: expected a string, got %s",
                             i, k, dsv_json_type_name(name));
        c->name = name->valuestring;
        c->id = cJSON_IsString(id) ? id->valuestring : NULL;
        if (cJSON_IsString(args)) {
            c->arguments = args->valuestring;
        } else if (args) {
            /* A JSON value instead of the JSON text: serialize it like the
             * json.dumps output the model was trained on. */
            dsv_buf b = {0};
            dsv_pyjson_dump(&b, args, 1);
            if (!(c->arguments = own(cv, &b))) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
        } else {
            c->arguments = NULL;
        }
    }
    m->n_tool_calls = k;
    cv->calls += k;
    return DSV_OK;
}

static int json_message(const cJSON *msg, int i, struct jconv *cv, dsv_chat_msg *m) {
    static const struct { const char *name; dsv_chat_role role; } roles[] = {
        {"system", DSV_CHAT_SYSTEM}, {"user", DSV_CHAT_USER},
        {"assistant", DSV_CHAT_ASSISTANT}, {"tool", DSV_CHAT_TOOL},
    };
    if (!cJSON_IsObject(msg))
        return dsv_error(DSV_ERR_ARG, "messages[%d]: expected an object, got %s", i, dsv_json_type_name(msg));
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
    if (!cJSON_IsString(role))
        return dsv_error(DSV_ERR_ARG, "messages[%d].role: expected a string, got %s", i, dsv_json_type_name(role));
    size_t r = 0;
    while (r < sizeof roles / sizeof roles[0] && strcmp(role->valuestring, roles[r].name)) r++;
    if (r == sizeof roles / sizeof roles[0])
        return dsv_error(DSV_ERR_ARG, "messages[%d].role: unknown role \"%s\" (expected system, user, assistant or tool)",
                         i, role->valuestring);
    m->role = roles[r].role;
    int rc = dsv_chat_json_content(msg, i, m->role == DSV_CHAT_ASSISTANT, own_cb, cv, &m->content);
    if (rc) return rc;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(msg, "reasoning_content");
    if (rs && !cJSON_IsNull(rs) && !cJSON_IsString(rs))
        return dsv_error(DSV_ERR_ARG, "messages[%d].reasoning_content: expected a string, got %s",
                         i, dsv_json_type_name(rs));
    m->reasoning_content = cJSON_IsString(rs) ? rs->valuestring : NULL;
    const cJSON *tid = cJSON_GetObjectItemCaseSensitive(msg, "tool_call_id");
    m->tool_call_id = cJSON_IsString(tid) ? tid->valuestring : NULL;
    char path[48];
    snprintf(path, sizeof path, "messages[%d].", i);
    if ((rc = dsv_json_opt_bool(msg, "prefix", path, &m->prefix))) return rc;
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
    if (m->role != DSV_CHAT_ASSISTANT) {
        if (cJSON_GetArraySize(tc) > 0)
            return dsv_error(DSV_ERR_ARG, "messages[%d].tool_calls: only assistant messages have tool calls", i);
        return DSV_OK;
    }
    return json_tool_calls(tc, i, cv, m);
}

/* tools[]: the OpenAI form {"type": "function", "function": {name,
 * description, parameters}}; builds the tool block directly from the tree. */
static int json_tools(const cJSON *tools, dsv_buf *block) {
    if (!tools || cJSON_IsNull(tools)) return DSV_OK;
    if (!cJSON_IsArray(tools)) return dsv_error(DSV_ERR_ARG, "tools: expected an array, got %s",
                                                dsv_json_type_name(tools));
    if (!tools->child) return DSV_OK; /* [] renders no block, like render_chat.py */
    dsv_buf_adds(block, tools_head);
    int k = 0;
    for (const cJSON *t = tools->child; t; t = t->next, k++) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!cJSON_IsObject(fn))
            return dsv_error(DSV_ERR_ARG, "tools[%d].function: expected an object, got %s", k, dsv_json_type_name(fn));
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *desc = cJSON_GetObjectItemCaseSensitive(fn, "description");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
        if (!cJSON_IsString(name))
            return dsv_error(DSV_ERR_ARG, "tools[%d].function.name: expected a string, got %s",
                             k, dsv_json_type_name(name));
        if (desc && !cJSON_IsNull(desc) && !cJSON_IsString(desc))
            return dsv_error(DSV_ERR_ARG, "tools[%d].function.description: expected a string, got %s",
                             k, dsv_json_type_name(desc));
        /* Like f.get("parameters", {}): absent is {}, anything given
         * (null included) is dumped as it is. */
        tool_entry(block, name->valuestring, cJSON_IsString(desc) ? desc->valuestring : "", params);
    }
    dsv_buf_adds(block, tools_tail);
    return DSV_OK;
}

static int render_request(const cJSON *root, int thinking, int add_gen, dsv_buf *out) {
    const cJSON *messages = root, *tools = NULL;
    int rc;
    if (cJSON_IsObject(root)) {
        messages = cJSON_GetObjectItemCaseSensitive(root, "messages");
        tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
        const cJSON *kw = cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs");
        if ((rc = dsv_json_opt_bool(root, "thinking", "", &thinking))) return rc;
        if ((rc = dsv_json_opt_bool(root, "add_generation_prompt", "", &add_gen))) return rc;
        if (kw && !cJSON_IsNull(kw) && !cJSON_IsObject(kw))
            return dsv_error(DSV_ERR_ARG, "chat_template_kwargs: expected an object, got %s", dsv_json_type_name(kw));
        if (kw && (rc = dsv_json_opt_bool(kw, "thinking", "chat_template_kwargs.", &thinking))) return rc;
    } else if (!cJSON_IsArray(root)) {
        return dsv_error(DSV_ERR_ARG, "request: expected an object or a messages array, got %s",
                         dsv_json_type_name(root));
    }
    if (!cJSON_IsArray(messages))
        return dsv_error(DSV_ERR_ARG, "messages: expected an array, got %s", dsv_json_type_name(messages));

    int n = cJSON_GetArraySize(messages), n_calls = 0;
    for (const cJSON *m = messages->child; m; m = m->next)
        n_calls += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(m, "tool_calls"));
    struct jconv cv = {
        .msgs = calloc((size_t)n + 1, sizeof *cv.msgs),
        .calls = calloc((size_t)n_calls + 1, sizeof *cv.calls),
        .owned = calloc((size_t)(n + n_calls) + 1, sizeof *cv.owned),
    };
    dsv_chat_tool_call *calls = cv.calls;
    dsv_buf block = {0};
    if (!cv.msgs || !cv.calls || !cv.owned) {
        rc = dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    } else {
        int i = 0;
        rc = DSV_OK;
        for (const cJSON *m = messages->child; m && !rc; m = m->next, i++) rc = json_message(m, i, &cv, &cv.msgs[i]);
        if (!rc) rc = json_tools(tools, &block);
        if (!rc) rc = render(cv.msgs, n, thinking, add_gen, block.data, block.len, out);
    }
    for (int i = 0; i < cv.n_owned; i++) free(cv.owned[i]);
    free(cv.owned);
    free(calls);
    free(cv.msgs);
    dsv_buf_free(&block);
    return rc;
}

int dsv_chat_render_json(const char *json, size_t len, int thinking, int add_generation_prompt,
                         char **out_text) {
    if (!json || !out_text) return dsv_error(DSV_ERR_ARG, "dsv_chat_render_json: NULL argument");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root)
        return dsv_error(DSV_ERR_ARG, "request: invalid JSON near byte %zu",
                         end ? (size_t)(end - json) : (size_t)0);
    dsv_buf b = {0};
    int rc = render_request(root, thinking, add_generation_prompt, &b);
    cJSON_Delete(root);
    return finish_text(rc, &b, out_text);
}

/* ==== 3. Parsing model output ============================================= */

/* The result as it grows; both parsers fill one. */
struct acc {
    dsv_buf reasoning, content;
    dsv_chat_call *calls;
    int n_calls, cap_calls;
    int failed;
};

static void acc_call(struct acc *a, const char *name, size_t nlen, const char *args, size_t alen, int complete) {
    if (a->failed) return;
    if (a->n_calls == a->cap_calls) {
        int cap = a->cap_calls ? 2 * a->cap_calls : 4;
        dsv_chat_call *p = realloc(a->calls, (size_t)cap * sizeof *p);
        if (!p) { a->failed = 1; return; }
        a->calls = p;
        a->cap_calls = cap;
    }
    dsv_chat_call *c = &a->calls[a->n_calls];
    c->name = strndup(name, nlen);
    c->arguments = strndup(args, alen);
    c->complete = complete;
    if (!c->name || !c->arguments) { free(c->name); free(c->arguments); a->failed = 1; return; }
    a->n_calls++;
}

static char *take_or_null(dsv_buf *b) {
    if (!b->len) { dsv_buf_free(b); return NULL; }
    return dsv_buf_take(b);
}

/* Moves a into *out (or frees it and fails). */
static int acc_finish(struct acc *a, dsv_chat_result *out) {
    if (a->failed || a->reasoning.failed || a->content.failed) {
        dsv_chat_result r = {NULL, NULL, a->calls, a->n_calls};
        dsv_chat_result_free(&r);
        dsv_buf_free(&a->reasoning);
        dsv_buf_free(&a->content);
        *a = (struct acc){0};
        return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    }
    out->reasoning = take_or_null(&a->reasoning);
    out->content = take_or_null(&a->content);
    out->tool_calls = a->calls;
    out->n_tool_calls = a->n_calls;
    *a = (struct acc){0};
    return DSV_OK;
}


/* The markers each parser state looks for. */
enum { M_END_THINK, M_CALLS_BEGIN, M_CALLS_END, M_CALL_BEGIN, M_CALL_END, M_SEP, M_COUNT };
static const char *const marker_str[M_COUNT] = {
    END_THINK_S, CALLS_BEGIN_S, CALLS_END_S, CALL_BEGIN_S, CALL_END_S, TOOL_SEP_S,
};
static const size_t marker_len[M_COUNT] = {
    SLEN(END_THINK_S), SLEN(CALLS_BEGIN_S), SLEN(CALLS_END_S), SLEN(CALL_BEGIN_S), SLEN(CALL_END_S), SLEN(TOOL_SEP_S),
};

/* Earliest of the markers ms[0..n) in s[0..len): its id and offset, or -1.
 * No marker is a prefix of another, so "earliest" has a single winner. */
static int find_marker(const char *s, size_t len, const int *ms, int n, size_t *at) {
    int best = -1;
    size_t best_at = len;
    for (int i = 0; i < n; i++) {
        const char *p = dsv_memfind(s, DSV_MIN(len, best_at + marker_len[ms[i]]), marker_str[ms[i]], marker_len[ms[i]]);
        if (p && (size_t)(p - s) < best_at) { best = ms[i]; best_at = (size_t)(p - s); }
    }
    *at = best_at;
    return best;
}

static const int in_reasoning[] = {M_END_THINK};
static const int in_content[] = {M_CALLS_BEGIN};
static const int in_calls[] = {M_CALL_BEGIN, M_CALLS_END};
static const int in_name[] = {M_SEP, M_CALL_END, M_CALL_BEGIN, M_CALLS_END};
static const int in_args[] = {M_CALL_END, M_CALLS_END, M_CALL_BEGIN};
#define NM(a) (int)(sizeof(a) / sizeof(a[0]))

/* --- One-shot: a direct walk over the whole text. */

static void parse_answer(struct acc *a, const char *s, size_t n) {
    size_t pos = 0, at;
    int k;
    while (pos < n) {
        /* Content up to a block of calls. */
        if (find_marker(s + pos, n - pos, in_content, 1, &at) < 0) { dsv_buf_add(&a->content, s + pos, n - pos); return; }
        dsv_buf_add(&a->content, s + pos, at);
        pos += at + marker_len[M_CALLS_BEGIN];
        /* Inside the block: calls, until its end marker. */
        for (;;) {
            k = find_marker(s + pos, n - pos, in_calls, NM(in_calls), &at);
            dsv_buf_add(&a->content, s + pos, k < 0 ? n - pos : at);
            if (k < 0) return;
            pos += at + marker_len[k];
            if (k == M_CALLS_END) break;
            size_t call = pos - marker_len[M_CALL_BEGIN];
            k = find_marker(s + pos, n - pos, in_name, NM(in_name), &at);
            if (k != M_SEP) {
                /* Malformed or cut-off name: verbatim to content; a marker
                 * that interrupted it is read again as block text. */
                size_t end = k < 0 ? n : pos + at;
                dsv_buf_add(&a->content, s + call, end - call);
                pos = end;
                if (k < 0) return;
                continue;
            }
            const char *name = s + pos;
            size_t nlen = at;
            pos += at + marker_len[M_SEP];
            k = find_marker(s + pos, n - pos, in_args, NM(in_args), &at);
            acc_call(a, name, nlen, s + pos, k < 0 ? n - pos : at, k >= 0);
            if (k < 0) return;
            /* A following call's begin marker is read again by the loop. */
            pos += at + (k == M_CALL_BEGIN ? 0 : marker_len[k]);
            if (k == M_CALLS_END) break;
        }
    }
}

int dsv_chat_parse(const char *text, size_t len, int thinking, dsv_chat_result *out) {
    if (!text || !out) return dsv_error(DSV_ERR_ARG, "dsv_chat_parse: NULL argument");
    struct acc a = {0};
    if (thinking) {
        size_t pos = len >= SLEN(THINK_S) && !memcmp(text, THINK_S, SLEN(THINK_S)) ? SLEN(THINK_S) : 0, at;
        if (find_marker(text + pos, len - pos, in_reasoning, 1, &at) < 0) {
            dsv_buf_add(&a.reasoning, text + pos, len - pos);
        } else {
            dsv_buf_add(&a.reasoning, text + pos, at);
            pos += at + marker_len[M_END_THINK];
            parse_answer(&a, text + pos, len - pos);
        }
    } else {
        parse_answer(&a, text, len);
    }
    return acc_finish(&a, out);
}

/* --- Streaming: the same rules as a state machine over held-back input. */

enum { ST_START, ST_REASONING, ST_CONTENT, ST_CALLS, ST_NAME, ST_ARGS };

struct dsv_chat_stream {
    int state;
    int finished;
    dsv_buf pend;   /* input not yet classified */
    dsv_buf name;   /* ST_NAME: the call's name so far */
    dsv_buf args;   /* ST_ARGS: its arguments so far */
    struct acc acc;
    dsv_chat_result result; /* filled by finish */
    dsv_chat_event_fn fn;   /* the callback of the current feed/finish */
    void *user;
    dsv_dsml_stream *dsml;  /* set: a V3.2 (DSML) stream, which does all the work */
};

static void emit(dsv_chat_stream *s, dsv_chat_event_kind kind, const char *p, size_t n) {
    dsv_buf *dst = kind == DSV_CHAT_EV_REASONING ? &s->acc.reasoning
                 : kind == DSV_CHAT_EV_CONTENT ? &s->acc.content : &s->args;
    if (!n) return;
    dsv_buf_add(dst, p, n);
    if (s->fn) {
        dsv_chat_event ev = {.kind = kind, .text = p, .len = n, .index = s->acc.n_calls};
        s->fn(s->user, &ev);
    }
}

/* Text of the current state, known not to be part of a marker. */
static void state_text(dsv_chat_stream *s, const char *p, size_t n) {
    switch (s->state) {
    case ST_REASONING: emit(s, DSV_CHAT_EV_REASONING, p, n); break;
    case ST_NAME: dsv_buf_add(&s->name, p, n); break;
    case ST_ARGS: emit(s, DSV_CHAT_EV_TOOL_ARGS, p, n); break;
    default: emit(s, DSV_CHAT_EV_CONTENT, p, n); break;
    }
}

/* A name that never reached its separator: back to content, verbatim. */
static void abandon_call(dsv_chat_stream *s) {
    s->state = ST_CALLS;
    emit(s, DSV_CHAT_EV_CONTENT, CALL_BEGIN_S, SLEN(CALL_BEGIN_S));
    emit(s, DSV_CHAT_EV_CONTENT, s->name.data, s->name.len);
    dsv_buf_clear(&s->name);
}

static void end_call(dsv_chat_stream *s, int complete) {
    const char *args = s->args.data ? s->args.data : "";
    if (s->fn) {
        dsv_chat_event ev = {.kind = DSV_CHAT_EV_TOOL_END, .text = args, .len = s->args.len,
                             .index = s->acc.n_calls, .name = s->name.data, .complete = complete};
        s->fn(s->user, &ev);
    }
    acc_call(&s->acc, s->name.data, s->name.len, args, s->args.len, complete);
    dsv_buf_clear(&s->name);
    dsv_buf_clear(&s->args);
    s->state = ST_CALLS;
}

/* Classifies as much of pend as is certain; with `final`, all of it. */
static void process(dsv_chat_stream *s, int final) {
    for (;;) {
        const char *p = s->pend.data ? s->pend.data : "";
        size_t n = s->pend.len, at;
        if (s->state == ST_START) {
            /* Drop one leading <think>; wait while the input could still be it. */
            size_t m = DSV_MIN(n, SLEN(THINK_S));
            if (!final && n < SLEN(THINK_S) && !memcmp(p, THINK_S, m)) return;
            if (n >= SLEN(THINK_S) && !memcmp(p, THINK_S, SLEN(THINK_S))) dsv_buf_consume(&s->pend, SLEN(THINK_S));
            s->state = ST_REASONING;
            continue;
        }
        const int *ms;
        int nm;
        switch (s->state) {
        case ST_REASONING: ms = in_reasoning; nm = NM(in_reasoning); break;
        case ST_CONTENT: ms = in_content; nm = NM(in_content); break;
        case ST_CALLS: ms = in_calls; nm = NM(in_calls); break;
        case ST_NAME: ms = in_name; nm = NM(in_name); break;
        default: ms = in_args; nm = NM(in_args); break;
        }
        int k = find_marker(p, n, ms, nm, &at);
        if (k < 0) {
            /* Keep what could still become a marker, and a cut UTF-8 tail. */
            size_t safe = n;
            if (!final) {
                const char *pats[4];
                for (int i = 0; i < nm; i++) pats[i] = marker_str[ms[i]];
                safe = dsv_utf8_complete(p, n - dsv_partial_suffix(p, n, pats, nm));
            }
            state_text(s, p, safe);
            dsv_buf_consume(&s->pend, safe);
            return;
        }
        state_text(s, p, at);
        int eat = 1; /* consume the marker (else it is read again) */
        switch (s->state) {
        case ST_REASONING: s->state = ST_CONTENT; break;
        case ST_CONTENT: s->state = ST_CALLS; break;
        case ST_CALLS: s->state = k == M_CALL_BEGIN ? ST_NAME : ST_CONTENT; break;
        case ST_NAME:
            if (k == M_SEP) {
                dsv_buf_add(&s->name, "", 0); /* a NUL-terminated name, even if empty */
                if (s->fn) {
                    dsv_chat_event ev = {.kind = DSV_CHAT_EV_TOOL_BEGIN, .index = s->acc.n_calls,
                                         .name = s->name.data ? s->name.data : ""};
                    s->fn(s->user, &ev);
                }
                s->state = ST_ARGS;
            } else {
                abandon_call(s);
                eat = 0;
            }
            break;
        case ST_ARGS:
            end_call(s, 1);
            if (k == M_CALLS_END) s->state = ST_CONTENT;
            eat = k != M_CALL_BEGIN;
            break;
        }
        dsv_buf_consume(&s->pend, at + (eat ? marker_len[k] : 0));
    }
}

int dsv_chat_stream_init(dsv_chat_stream **out, int thinking) {
    if (!out) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_init: out is NULL");
    dsv_chat_stream *s = calloc(1, sizeof *s);
    if (!s) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    s->state = thinking ? ST_START : ST_CONTENT;
    *out = s;
    return DSV_OK;
}

/* The DSML stream behind the same handle (chat_format.c's table calls it). */
int dsv_chat_stream_init_dsml(dsv_chat_stream **out, int thinking);
int dsv_chat_stream_init_dsml(dsv_chat_stream **out, int thinking) {
    if (!out) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_init: out is NULL");
    dsv_chat_stream *s = calloc(1, sizeof *s);
    if (!s) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    int rc = dsv_dsml_stream_new(&s->dsml, thinking);
    if (rc) { free(s); return rc; }
    *out = s;
    return DSV_OK;
}

void dsv_chat_stream_free(dsv_chat_stream *s) {
    if (!s) return;
    dsv_dsml_stream_free(s->dsml);
    dsv_buf_free(&s->pend);
    dsv_buf_free(&s->name);
    dsv_buf_free(&s->args);
    struct acc *a = &s->acc;
    dsv_chat_result r = {NULL, NULL, a->calls, a->n_calls};
    dsv_chat_result_free(&r);
    dsv_buf_free(&a->reasoning);
    dsv_buf_free(&a->content);
    dsv_chat_result_free(&s->result);
    free(s);
}

static int stream_failed(const dsv_chat_stream *s) {
    return s->pend.failed || s->name.failed || s->args.failed || s->acc.failed ||
           s->acc.reasoning.failed || s->acc.content.failed;
}

int dsv_chat_stream_feed(dsv_chat_stream *s, const char *text, size_t len,
                         dsv_chat_event_fn fn, void *user) {
    if (!s || (!text && len)) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_feed: NULL argument");
    if (s->dsml) return dsv_dsml_stream_feed(s->dsml, text, len, fn, user);
    if (s->finished) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_feed: the stream is finished");
    s->fn = fn;
    s->user = user;
    if (len) dsv_buf_add(&s->pend, text, len);
    process(s, 0);
    return stream_failed(s) ? dsv_error(DSV_ERR_NOMEM, "chat: out of memory") : DSV_OK;
}

int dsv_chat_stream_finish(dsv_chat_stream *s, dsv_chat_event_fn fn, void *user) {
    if (!s) return dsv_error(DSV_ERR_ARG, "dsv_chat_stream_finish: NULL stream");
    if (s->dsml) return dsv_dsml_stream_finish(s->dsml, fn, user);
    if (s->finished) return DSV_OK;
    s->fn = fn;
    s->user = user;
    process(s, 1);
    if (s->state == ST_NAME) abandon_call(s);
    else if (s->state == ST_ARGS) end_call(s, 0);
    s->finished = 1;
    if (stream_failed(s)) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    return acc_finish(&s->acc, &s->result);
}

const dsv_chat_result *dsv_chat_stream_result(const dsv_chat_stream *s) {
    if (s && s->dsml) return dsv_dsml_stream_result(s->dsml);
    return s && s->finished ? &s->result : NULL;
}
