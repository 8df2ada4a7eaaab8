/* api.c: the OpenAI request and response formats.
 *
 * Requests are parsed with cJSON and checked field by field: a field of the
 * wrong type or out of range is a 400 naming the field (OpenAI's "param"),
 * never silently ignored; fields this server does not know are ignored, as
 * OpenAI-compatible servers do, but known features it cannot honour
 * (n > 1, logprobs, echo, forced tool choice, JSON mode) are refused.
 *
 * Chat prompts are rendered by dsv_chat_render_json from a request object
 * this file assembles (messages, tools unless tool_choice is "none", the
 * thinking flag), then tokenized without BOS (the rendered text begins with
 * the BOS string). Completion prompts are a string (BOS added when the
 * tokenizer asks for it) or token ids, taken as they are.
 *
 * Responses are written by hand rather than through cJSON: generated text
 * may hold any character, NUL included, and cJSON strings end at NUL. Chat
 * answers are split into reasoning, content and tool calls by the chat
 * parser's streaming form, fed piece by piece for a stream and all at once
 * for a whole answer: its pieces concatenate to the same result however the
 * text is cut, so a stream and a non-streamed answer agree. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dsv32_chat.h"
#include "server.h"
#include "dsv32_util.h"
#include "base/utf8.h"
#include "base/util.h"

/* ---- Small writers -------------------------------------------------------- */

void srv_addf(dsv_buf *b, const char *fmt, ...) {
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        dsv_buf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) { b->failed = 1; return; }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    dsv_buf_add(b, big, (size_t)n);
    free(big);
}

static void json_cstr(dsv_buf *b, const char *s) {
    if (s) dsv_json_str(b, s, strlen(s));
    else dsv_buf_adds(b, "null");
}

int srv_fail(srv_error *e, int status, const char *type, const char *code, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->code = code;
    size_t pn = param ? strlen(param) : 0;
    pn = dsv_utf8_cut(param ? param : "", pn, sizeof e->param - 1);
    memcpy(e->param, param ? param : "", pn);
    e->param[pn] = 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    /* A message echoing client bytes may be cut: never inside a character. */
    if (n >= (int)sizeof e->message) e->message[dsv_utf8_cut(e->message, (size_t)n, sizeof e->message - 1)] = 0;
    return -1;
}

void srv_error_json(const srv_error *e, dsv_buf *out) {
    dsv_buf_adds(out, "{\"error\":{\"message\":");
    json_cstr(out, e->message);
    dsv_buf_adds(out, ",\"type\":");
    json_cstr(out, e->type);
    dsv_buf_adds(out, ",\"param\":");
    json_cstr(out, e->param[0] ? e->param : NULL);
    dsv_buf_adds(out, ",\"code\":");
    json_cstr(out, e->code);
    dsv_buf_adds(out, "}}");
}

/* ---- Request fields ------------------------------------------------------- */

#define BAD(e, param, ...) srv_fail(e, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

static int absent(const cJSON *v) { return !v || cJSON_IsNull(v); }

static const char *kind(const cJSON *v) {
    return cJSON_IsBool(v) ? "a boolean" : cJSON_IsNumber(v) ? "a number" : cJSON_IsString(v) ? "a string"
         : cJSON_IsArray(v) ? "an array" : cJSON_IsObject(v) ? "an object" : "null";
}

/* An optional number in [lo, hi]; *out is left alone when absent. */
static int get_num(const cJSON *root, const char *key, double lo, double hi, double *out, srv_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (absent(v)) return 0;
    if (!cJSON_IsNumber(v)) return BAD(e, key, "'%s' must be a number, not %s", key, kind(v));
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(e, key, "'%s' must be between %g and %g (got %g)", key, lo, hi, v->valuedouble);
    *out = v->valuedouble;
    return 0;
}

int srv_json_int(const cJSON *v, int64_t lo, int64_t hi, int64_t *out) {
    return cJSON_IsNumber(v) && dsv_whole_in_range(v->valuedouble, lo, hi, out);
}

/* An optional whole number in [lo, hi]; *out is left alone when absent. */
static int get_int(const cJSON *root, const char *key, int64_t lo, int64_t hi, int64_t *out, srv_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (absent(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return BAD(e, key, "'%s' must be an integer", key);
    if (!srv_json_int(v, lo, hi, out))
        return BAD(e, key, "'%s' must be between %lld and %lld (got %g)", key, (long long)lo, (long long)hi,
                   v->valuedouble);
    return 0;
}

static int get_bool(const cJSON *root, const char *key, int *out, srv_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (absent(v)) return 0;
    if (!cJSON_IsBool(v)) return BAD(e, key, "'%s' must be a boolean, not %s", key, kind(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

static int parse_stop(const cJSON *root, srv_req *r, srv_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (absent(v)) return 0;
    int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0) return BAD(e, "stop", "'stop' must be a string or an array of strings");
    if (n > 16) return BAD(e, "stop", "'stop' holds at most 16 strings");
    r->stop = calloc((size_t)n + 1, sizeof *r->stop);
    if (!r->stop) return srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    const cJSON *item = cJSON_IsString(v) ? v : v->child;
    for (int i = 0; i < n; i++, item = item->next) {
        if (!cJSON_IsString(item)) return BAD(e, "stop", "'stop[%d]' must be a string", i);
        if (!item->valuestring[0]) continue; /* an empty stop string stops nothing */
        if (!(r->stop[r->n_stop++] = strdup(item->valuestring)))
            return srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    return 0;
}

static int parse_logit_bias(const cJSON *root, srv_req *r, int vocab, srv_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (absent(v)) return 0;
    if (!cJSON_IsObject(v)) return BAD(e, "logit_bias", "'logit_bias' must be an object of token id -> bias");
    int n = cJSON_GetArraySize(v);
    if (n > SRV_MAX_BIAS) return BAD(e, "logit_bias", "'logit_bias' holds at most %d tokens", SRV_MAX_BIAS);
    r->bias = calloc((size_t)n + 1, sizeof *r->bias);
    if (!r->bias) return srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    for (const cJSON *it = v->child; it; it = it->next) {
        /* Strictly decimal digits: no sign, space or anything after (strtol
         * would take " 5" and "+5"; a NUL never reaches here). */
        size_t nd = strspn(it->string, "0123456789");
        long id = nd && nd <= 9 && !it->string[nd] ? strtol(it->string, NULL, 10) : -1;
        if (id < 0 || id >= vocab)
            return BAD(e, "logit_bias", "logit_bias: '%s' is not a token id in [0, %d)", it->string, vocab);
        if (!cJSON_IsNumber(it) || !(it->valuedouble >= -100 && it->valuedouble <= 100))
            return BAD(e, "logit_bias", "logit_bias[%s] must be a number between -100 and 100", it->string);
        r->bias[r->sampling.n_logit_bias++] = (dsv_logit_bias){(int32_t)id, (float)it->valuedouble};
    }
    r->sampling.logit_bias = r->bias;
    return 0;
}

/* Sampling, stopping and length fields shared by both endpoints. */
static int parse_sampling(dsv_server *S, const cJSON *root, srv_req *r, int *max_tokens, srv_error *e) {
    dsv_sampler_params *sp = &r->sampling;
    double t = sp->temperature, top_p = sp->top_p, min_p = sp->min_p, pres = 0, freq = 0, rep = 1;
    int64_t top_k = 0, mt = -1, mct = -1, seed = 0;
    const int64_t seed_max = (int64_t)1 << 53; /* what a double holds exactly */
    if (get_num(root, "temperature", 0, 2, &t, e) || get_num(root, "top_p", 0, 1, &top_p, e) ||
        get_num(root, "min_p", 0, 1, &min_p, e) || get_int(root, "top_k", -1, 1000000000, &top_k, e) ||
        get_num(root, "presence_penalty", -2, 2, &pres, e) || get_num(root, "frequency_penalty", -2, 2, &freq, e) ||
        get_num(root, "repetition_penalty", 1e-3, 1e3, &rep, e) ||
        get_int(root, "seed", -seed_max, seed_max, &seed, e) ||
        get_int(root, "max_tokens", 1, 1000000000, &mt, e) ||
        get_int(root, "max_completion_tokens", 1, 1000000000, &mct, e))
        return -1;
    sp->temperature = (float)t;
    sp->top_p = (float)top_p;
    sp->min_p = (float)min_p;
    sp->top_k = top_k > 0 ? (int32_t)top_k : 0;
    sp->presence_penalty = (float)pres;
    sp->frequency_penalty = (float)freq;
    sp->repetition_penalty = (float)rep;
    if (!absent(cJSON_GetObjectItemCaseSensitive(root, "seed")))
        sp->seed = (uint64_t)seed; /* absent: a fresh random seed */
    *max_tokens = mct > 0 ? (int)mct : mt > 0 ? (int)mt : -1;
    if (parse_stop(root, r, e) || parse_logit_bias(root, r, S->cfg->vocab_size, e)) return -1;
    /* Known features this server does not offer are refused, not ignored. */
    int64_t n = 1;
    if (get_int(root, "n", 1, 1000000000, &n, e)) return -1;
    if (n != 1) return BAD(e, "n", "only n = 1 is supported");
    return 0;
}

/* Chat: "logprobs": bool and "top_logprobs": 0-20. Completions: "logprobs":
 * 0-5 alternatives. */
static int parse_logprobs(const cJSON *root, int chat, srv_req *r, srv_error *e) {
    r->logprobs = -1;
    if (chat) {
        int on = 0;
        int64_t top = 0;
        if (get_bool(root, "logprobs", &on, e) || get_int(root, "top_logprobs", 0, SRV_TOP_MAX, &top, e)) return -1;
        if (top > 0 && !on) return BAD(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        if (on) r->logprobs = (int)top;
        return 0;
    }
    int64_t n = -1;
    if (get_int(root, "logprobs", 0, 5, &n, e)) return -1;
    r->logprobs = (int)n;
    return 0;
}

static int parse_stream(const cJSON *root, srv_gen *g, srv_error *e) {
    if (get_bool(root, "stream", &g->stream, e)) return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (absent(so)) return 0;
    if (!cJSON_IsObject(so)) return BAD(e, "stream_options", "'stream_options' must be an object");
    if (!g->stream) return BAD(e, "stream_options", "'stream_options' is only allowed when 'stream' is true");
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
    if (!absent(iu) && !cJSON_IsBool(iu)) return BAD(e, "stream_options", "'stream_options.include_usage' must be a boolean");
    g->include_usage = cJSON_IsTrue(iu);
    return 0;
}

static int tokenize(dsv_server *S, const char *text, size_t len, int add_bos, srv_req *r, srv_error *e) {
    size_t n = 0;
    r->prompt = malloc((len + 2) * sizeof *r->prompt);
    if (!r->prompt) return srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    int32_t *ids = r->prompt;
    if (add_bos) *ids++ = S->bos;
    if (dsv_tokenize(S->tok, text, len, ids, len + 1, &n))
        return srv_fail(e, 500, "server_error", NULL, NULL, "tokenizer: %s", dsv_errmsg());
    r->n_prompt = (int)n + (add_bos != 0);
    return 0;
}

/* Chat: messages (+ tools) rendered to the prompt text, then tokenized. */
static int chat_prompt(dsv_server *S, const cJSON *root, srv_gen *g, srv_error *e) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsArray(msgs)) return BAD(e, "messages", "'messages' must be an array of messages");
    if (!msgs->child) return BAD(e, "messages", "'messages' must not be empty");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    if (!absent(choice)) {
        if (!cJSON_IsString(choice) && !cJSON_IsObject(choice))
            return BAD(e, "tool_choice", "'tool_choice' must be a string or an object");
        if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "none")) tools = NULL;
        else if (!cJSON_IsString(choice) || strcmp(choice->valuestring, "auto"))
            return BAD(e, "tool_choice", "only tool_choice \"auto\" and \"none\" are supported "
                                         "(decoding is not constrained to force a call)");
    }
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    if (!absent(rf)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsObject(rf) || !cJSON_IsString(type) || strcmp(type->valuestring, "text"))
            return BAD(e, "response_format", "only response_format {\"type\": \"text\"} is supported");
    }
    int thinking = 0;
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs");
    if (get_bool(root, "thinking", &thinking, e)) return -1;
    if (!absent(kw)) {
        if (!cJSON_IsObject(kw)) return BAD(e, "chat_template_kwargs", "'chat_template_kwargs' must be an object");
        const cJSON *th = cJSON_GetObjectItemCaseSensitive(kw, "thinking");
        if (!absent(th) && !cJSON_IsBool(th))
            return BAD(e, "chat_template_kwargs", "'chat_template_kwargs.thinking' must be a boolean");
        if (cJSON_IsBool(th)) thinking = cJSON_IsTrue(th);
    }
    g->thinking = thinking;

    /* The renderer's input: only what the prompt depends on. */
    cJSON *req = cJSON_CreateObject();
    char *json = NULL, *text = NULL;
    int rc = -1;
    if (req && cJSON_AddItemReferenceToObject(req, "messages", (cJSON *)msgs) &&
        (!tools || cJSON_AddItemReferenceToObject(req, "tools", (cJSON *)tools)))
        json = cJSON_PrintUnformatted(req);
    if (!json) {
        rc = srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    } else if (dsv_chat_render_json(json, strlen(json), thinking, 1, &text)) {
        const char *msg = dsv_errmsg();
        char param[64];
        size_t k = strcspn(msg, ":[. ");
        snprintf(param, sizeof param, "%.*s", (int)k, msg);
        rc = BAD(e, param, "%s", msg);
    } else {
        rc = tokenize(S, text, strlen(text), 0, g->req, e);
    }
    free(text);
    free(json);
    cJSON_Delete(req);
    return rc;
}

/* Completions: a string, or token ids; one prompt only. */
static int completion_prompt(dsv_server *S, const cJSON *root, const char *body, size_t len, srv_gen *g,
                             srv_error *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && (cJSON_IsString(p->child) || cJSON_IsArray(p->child)))
        p = p->child; /* ["text"] or [[ids]]: a batch of one */
    int echo = 0;
    int64_t best_of = 1;
    if (get_bool(root, "echo", &echo, e) || get_int(root, "best_of", 1, 1000000000, &best_of, e)) return -1;
    if (echo) return BAD(e, "echo", "'echo' is not supported");
    if (best_of != 1) return BAD(e, "best_of", "only best_of = 1 is supported");
    if (!absent(cJSON_GetObjectItemCaseSensitive(root, "suffix"))) return BAD(e, "suffix", "'suffix' is not supported");
    if (cJSON_IsString(p) && p == cJSON_GetObjectItemCaseSensitive(root, "prompt")) {
        /* The exact string: cJSON's ends at an escaped NUL. */
        char *text = NULL;
        size_t n = 0;
        if (dsv_json_get_string(body, len, "prompt", &text, &n))
            return BAD(e, "prompt", "'prompt': %s", dsv_errmsg());
        int rc = tokenize(S, text, n, dsv_tokenizer_add_bos(S->tok) && S->bos >= 0, g->req, e);
        free(text);
        return rc;
    }
    if (cJSON_IsString(p))
        return tokenize(S, p->valuestring, strlen(p->valuestring), dsv_tokenizer_add_bos(S->tok) && S->bos >= 0,
                        g->req, e);
    if (!cJSON_IsArray(p))
        return BAD(e, "prompt", "'prompt' must be a string or an array of token ids (one prompt per request)");
    int n = cJSON_GetArraySize(p), i = 0;
    srv_req *r = g->req;
    /* Counted before anything is allocated for them. */
    if (n >= S->max_total)
        return srv_fail(e, 400, "invalid_request_error", "context_length_exceeded", "prompt",
                        "This model's maximum context length is %d tokens, but the prompt has %d tokens", S->max_total,
                        n);
    if (!(r->prompt = malloc(((size_t)n + 1) * sizeof *r->prompt)))
        return srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    for (const cJSON *t = p->child; t; t = t->next, i++) {
        int64_t id;
        if (!srv_json_int(t, 0, S->cfg->vocab_size - 1, &id))
            return BAD(e, "prompt", "prompt[%d] is not a token id in [0, %d)", i, S->cfg->vocab_size);
        r->prompt[i] = (int32_t)id;
    }
    r->n_prompt = n;
    return 0;
}

struct nul_check {
    const char *allowed; /* the one path whose string may hold NUL, or NULL */
    srv_error *e;
};

static int refuse_nul(void *user, const char *path, int is_name) {
    struct nul_check *c = user;
    if (!is_name && c->allowed && !strcmp(path, c->allowed)) return 0;
    char param[64];
    snprintf(param, sizeof param, "%.*s", (int)strcspn(path, ".["), path);
    BAD(c->e, param, "%s'%s' holds a NUL character (\\u0000), which it cannot", is_name ? "the name " : "", path);
    return 1;
}

int srv_check_json(const char *body, size_t len, const char *allowed, srv_error *e) {
    size_t depth = dsv_json_depth(body, len);
    if (depth > SRV_MAX_DEPTH)
        return BAD(e, NULL, "the body is nested %zu levels deep; the limit is %d", depth, SRV_MAX_DEPTH);
    struct nul_check c = {allowed, e};
    int rc = dsv_json_nul_strings(body, len, refuse_nul, &c);
    if (rc == 1) return -1;
    if (rc == DSV_ERR_NOMEM) return srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    return 0; /* malformed JSON: cJSON says so next */
}

int srv_api_parse(dsv_server *S, int chat, const char *body, size_t len, srv_gen *g, srv_error *e) {
    memset(g, 0, sizeof *g);
    g->chat = chat;
    g->id = atomic_fetch_add(&S->next_id, 1);
    /* Strings end at NUL in cJSON: where that would change what the request
     * says, it is refused; a completion prompt is read exactly. */
    if (srv_check_json(body, len, chat ? NULL : "prompt", e)) return -1;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return BAD(e, NULL, "the body is not valid JSON");
    int rc = -1, max_tokens = -1;
    if (!(g->req = srv_req_new())) {
        rc = srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        rc = BAD(e, NULL, "the body must be a JSON object");
        goto done;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!absent(model) && !cJSON_IsString(model)) {
        rc = BAD(e, "model", "'model' must be a string");
        goto done;
    }
    if (cJSON_IsString(model) && strcmp(model->valuestring, S->model_id)) {
        rc = srv_fail(e, 400, "invalid_request_error", "model_not_found", "model",
                      "The model '%s' does not exist (this server serves '%s')", model->valuestring, S->model_id);
        goto done;
    }
    if (parse_stream(root, g, e) || parse_sampling(S, root, g->req, &max_tokens, e) ||
        parse_logprobs(root, chat, g->req, e))
        goto done;
    g->logprobs = g->req->logprobs;
    if (chat ? chat_prompt(S, root, g, e) : completion_prompt(S, root, body, len, g, e)) goto done;
    srv_req *r = g->req;
    if (r->n_prompt == 0) {
        rc = BAD(e, chat ? "messages" : "prompt", "the prompt is empty");
        goto done;
    }
    /* Room for the prompt and at least one generated token. */
    if (r->n_prompt >= S->max_total) {
        rc = srv_fail(e, 400, "invalid_request_error", "context_length_exceeded", chat ? "messages" : "prompt",
                      "This model's maximum context length is %d tokens, but the prompt has %d tokens "
                      "(and at least one must be generated)", S->max_total, r->n_prompt);
        goto done;
    }
    int room = S->max_total - r->n_prompt;
    r->max_tokens = max_tokens > 0 && max_tokens < room ? max_tokens : room;
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) {
        srv_req_free(g->req);
        g->req = NULL;
    }
    return rc;
}

/* ---- Responses ------------------------------------------------------------ */

static const char *finish_reason(const srv_status *st, int tool_calls) {
    if (st->finish == SRV_FIN_LENGTH) return "length";
    return tool_calls ? "tool_calls" : "stop";
}

static void usage(dsv_buf *out, int n_prompt, const srv_status *st) {
    srv_addf(out, "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
                  "\"prompt_tokens_details\":{\"cached_tokens\":%d}}",
             n_prompt, st->n_gen, n_prompt + st->n_gen, st->n_cached);
}

static void head(dsv_server *S, const srv_gen *g, const char *object, dsv_buf *out) {
    srv_addf(out, "{\"id\":\"%s-%llu\",\"object\":\"%s\",\"created\":%lld,\"model\":", g->chat ? "chatcmpl" : "cmpl",
             (unsigned long long)g->id, object, (long long)S->created);
    json_cstr(out, S->model_id);
}

static void tool_call_head(dsv_buf *out, const srv_gen *g, int index, const char *name) {
    srv_addf(out, "{\"index\":%d,\"id\":\"call_%llu_%d\",\"type\":\"function\",\"function\":{\"name\":", index,
             (unsigned long long)g->id, index);
    json_cstr(out, name);
}

/* A token's text as a JSON string: a token may hold part of a character,
 * which the writer shows as U+FFFD; the exact bytes go in "bytes". */
static void token_text(dsv_server *S, int32_t id, dsv_buf *out) {
    size_t n = 0;
    const char *p = dsv_token_piece(S->tok, id, &n);
    dsv_json_str(out, p ? p : "", p ? n : 0);
}

static void token_bytes(dsv_server *S, int32_t id, dsv_buf *out) {
    size_t n = 0;
    const unsigned char *p = (const unsigned char *)dsv_token_piece(S->tok, id, &n);
    dsv_buf_adds(out, "[");
    for (size_t i = 0; i < n; i++) srv_addf(out, "%s%u", i ? "," : "", p[i]);
    dsv_buf_adds(out, "]");
}

/* "logprobs": {...} for tokens t[0..n), in the endpoint's format. The
 * values are float32 printed with 9 significant digits, which round-trip. */
static void logprobs_json(dsv_server *S, const srv_gen *g, const srv_tok *t, int n, dsv_buf *out) {
    if (g->chat) {
        dsv_buf_adds(out, "\"logprobs\":{\"content\":[");
        for (int i = 0; i < n; i++) {
            dsv_buf_adds(out, i ? ",{\"token\":" : "{\"token\":");
            token_text(S, t[i].id, out);
            srv_addf(out, ",\"logprob\":%.9g,\"bytes\":", (double)t[i].logprob);
            token_bytes(S, t[i].id, out);
            dsv_buf_adds(out, ",\"top_logprobs\":[");
            for (int j = 0; j < t[i].n_top; j++) {
                dsv_buf_adds(out, j ? ",{\"token\":" : "{\"token\":");
                token_text(S, t[i].top_id[j], out);
                srv_addf(out, ",\"logprob\":%.9g,\"bytes\":", (double)t[i].top_logprob[j]);
                token_bytes(S, t[i].top_id[j], out);
                dsv_buf_adds(out, "}");
            }
            dsv_buf_adds(out, "]}");
        }
        dsv_buf_adds(out, "]}");
        return;
    }
    dsv_buf_adds(out, "\"logprobs\":{\"tokens\":[");
    for (int i = 0; i < n; i++) {
        if (i) dsv_buf_adds(out, ",");
        token_text(S, t[i].id, out);
    }
    dsv_buf_adds(out, "],\"token_logprobs\":[");
    for (int i = 0; i < n; i++) srv_addf(out, "%s%.9g", i ? "," : "", (double)t[i].logprob);
    dsv_buf_adds(out, "],\"top_logprobs\":[");
    for (int i = 0; i < n; i++) {
        dsv_buf_adds(out, i ? ",{" : "{");
        for (int j = 0; j < t[i].n_top; j++) {
            if (j) dsv_buf_adds(out, ",");
            token_text(S, t[i].top_id[j], out);
            srv_addf(out, ":%.9g", (double)t[i].top_logprob[j]);
        }
        dsv_buf_adds(out, "}");
    }
    dsv_buf_adds(out, "]}");
}

/* ",logprobs":... or ","logprobs":null" for a choice. */
static void choice_logprobs(dsv_server *S, const srv_gen *g, const srv_toks *toks, dsv_buf *out) {
    if (g->logprobs < 0 || !toks) {
        dsv_buf_adds(out, ",\"logprobs\":null");
        return;
    }
    dsv_buf_adds(out, ",");
    logprobs_json(S, g, toks->v, toks->n, out);
}

/* A whole chat answer gathered from the streaming parser's events: its
 * pieces carry lengths, so text with NUL in it survives (the one-shot
 * parser's result is NUL-terminated strings). */
struct gathered {
    dsv_buf reasoning, content;
    struct call { char *name; dsv_buf args; } *calls;
    int n_calls, failed;
};

static void gather(void *user, const dsv_chat_event *ev) {
    struct gathered *g = user;
    switch (ev->kind) {
    case DSV_CHAT_EV_REASONING: dsv_buf_add(&g->reasoning, ev->text, ev->len); break;
    case DSV_CHAT_EV_CONTENT: dsv_buf_add(&g->content, ev->text, ev->len); break;
    case DSV_CHAT_EV_TOOL_BEGIN: {
        struct call *c = realloc(g->calls, ((size_t)g->n_calls + 1) * sizeof *c);
        if (!c) { g->failed = 1; return; }
        g->calls = c;
        c[g->n_calls] = (struct call){.name = strdup(ev->name)};
        g->failed |= !c[g->n_calls++].name;
        break;
    }
    case DSV_CHAT_EV_TOOL_ARGS:
        if (g->n_calls) dsv_buf_add(&g->calls[g->n_calls - 1].args, ev->text, ev->len);
        break;
    case DSV_CHAT_EV_TOOL_END: break;
    }
}

static void json_buf_or_null(dsv_buf *out, const dsv_buf *b) {
    if (b->len) dsv_json_str(out, b->data, b->len);
    else dsv_buf_adds(out, "null");
}

void srv_api_response(dsv_server *S, const srv_gen *g, const char *text, size_t len, const srv_toks *toks,
                      const srv_status *st, int n_prompt, dsv_buf *out) {
    if (!g->chat) {
        head(S, g, "text_completion", out);
        dsv_buf_adds(out, ",\"choices\":[{\"index\":0,\"text\":");
        dsv_json_str(out, text, len);
        choice_logprobs(S, g, toks, out);
        srv_addf(out, ",\"finish_reason\":\"%s\"}],\"usage\":", finish_reason(st, 0));
        usage(out, n_prompt, st);
        dsv_buf_adds(out, "}");
        return;
    }
    struct gathered r = {0};
    dsv_chat_stream *parser = NULL;
    if (dsv_chat_stream_init(&parser, g->thinking) || dsv_chat_stream_feed(parser, text, len, gather, &r) ||
        dsv_chat_stream_finish(parser, gather, &r))
        r.failed = 1;
    dsv_chat_stream_free(parser);
    head(S, g, "chat.completion", out);
    dsv_buf_adds(out, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    json_buf_or_null(out, &r.content);
    dsv_buf_adds(out, ",\"reasoning_content\":");
    json_buf_or_null(out, &r.reasoning);
    if (r.n_calls) {
        dsv_buf_adds(out, ",\"tool_calls\":[");
        for (int i = 0; i < r.n_calls; i++) {
            if (i) dsv_buf_adds(out, ",");
            tool_call_head(out, g, i, r.calls[i].name);
            dsv_buf_adds(out, ",\"arguments\":");
            dsv_json_str(out, r.calls[i].args.data ? r.calls[i].args.data : "", r.calls[i].args.len);
            dsv_buf_adds(out, "}}");
        }
        dsv_buf_adds(out, "]");
    }
    dsv_buf_adds(out, "}");
    choice_logprobs(S, g, toks, out);
    srv_addf(out, ",\"finish_reason\":\"%s\"}],\"usage\":", finish_reason(st, r.n_calls > 0));
    usage(out, n_prompt, st);
    dsv_buf_adds(out, "}");
    if (r.failed || r.reasoning.failed || r.content.failed) out->failed = 1;
    dsv_buf_free(&r.reasoning);
    dsv_buf_free(&r.content);
    for (int i = 0; i < r.n_calls; i++) {
        free(r.calls[i].name);
        if (r.calls[i].args.failed) out->failed = 1;
        dsv_buf_free(&r.calls[i].args);
    }
    free(r.calls);
}

/* ---- Streams -------------------------------------------------------------- */

struct srv_sse {
    dsv_server *S;
    const srv_gen *g;
    dsv_chat_stream *parser;   /* chat only */
    dsv_buf *out;              /* where events go during a feed */
    int n_tool_calls;
};

int srv_sse_init(srv_sse **out, dsv_server *S, const srv_gen *g) {
    srv_sse *x = calloc(1, sizeof *x);
    if (!x) return DSV_ERR_NOMEM;
    x->S = S;
    x->g = g;
    if (g->chat && dsv_chat_stream_init(&x->parser, g->thinking)) {
        free(x);
        return DSV_ERR_NOMEM;
    }
    *out = x;
    return DSV_OK;
}

void srv_sse_free(srv_sse *x) {
    if (!x) return;
    dsv_chat_stream_free(x->parser);
    free(x);
}

/* "data: {chunk head,"choices":[{"index":0," */
static void chunk_open(srv_sse *x, dsv_buf *out) {
    dsv_buf_adds(out, "data: ");
    head(x->S, x->g, x->g->chat ? "chat.completion.chunk" : "text_completion", out);
    dsv_buf_adds(out, ",\"choices\":[{\"index\":0,");
}

static void chunk_close(dsv_buf *out, const char *finish) {
    srv_addf(out, ",\"logprobs\":null,\"finish_reason\":%s%s%s}]}\n\n", finish ? "\"" : "", finish ? finish : "null",
             finish ? "\"" : "");
}

static void delta_text(srv_sse *x, const char *field, const char *text, size_t len) {
    if (!len) return;
    chunk_open(x, x->out);
    srv_addf(x->out, "\"delta\":{\"%s\":", field);
    dsv_json_str(x->out, text, len);
    dsv_buf_adds(x->out, "}");
    chunk_close(x->out, NULL);
}

static void on_event(void *user, const dsv_chat_event *ev) {
    srv_sse *x = user;
    switch (ev->kind) {
    case DSV_CHAT_EV_REASONING: delta_text(x, "reasoning_content", ev->text, ev->len); break;
    case DSV_CHAT_EV_CONTENT: delta_text(x, "content", ev->text, ev->len); break;
    case DSV_CHAT_EV_TOOL_BEGIN:
        chunk_open(x, x->out);
        dsv_buf_adds(x->out, "\"delta\":{\"tool_calls\":[");
        tool_call_head(x->out, x->g, ev->index, ev->name);
        dsv_buf_adds(x->out, ",\"arguments\":\"\"}}]}");
        chunk_close(x->out, NULL);
        x->n_tool_calls = ev->index + 1;
        break;
    case DSV_CHAT_EV_TOOL_ARGS:
        if (!ev->len) break;
        chunk_open(x, x->out);
        srv_addf(x->out, "\"delta\":{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":", ev->index);
        dsv_json_str(x->out, ev->text, ev->len);
        dsv_buf_adds(x->out, "}}]}");
        chunk_close(x->out, NULL);
        break;
    case DSV_CHAT_EV_TOOL_END: break; /* the arguments went out piece by piece */
    }
}

void srv_sse_begin(srv_sse *x, dsv_buf *out) {
    if (!x->g->chat) return;
    chunk_open(x, out);
    dsv_buf_adds(out, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}");
    chunk_close(out, NULL);
}

void srv_sse_text(srv_sse *x, const char *text, size_t len, dsv_buf *out) {
    if (!len) return;
    if (!x->g->chat) {
        chunk_open(x, out);
        dsv_buf_adds(out, "\"text\":");
        dsv_json_str(out, text, len);
        chunk_close(out, NULL);
        return;
    }
    x->out = out;
    if (dsv_chat_stream_feed(x->parser, text, len, on_event, x)) out->failed = 1;
}

void srv_sse_tokens(srv_sse *x, const srv_tok *t, int n, dsv_buf *out) {
    if (!n || x->g->logprobs < 0) return;
    chunk_open(x, out);
    dsv_buf_adds(out, x->g->chat ? "\"delta\":{}," : "\"text\":\"\",");
    logprobs_json(x->S, x->g, t, n, out);
    dsv_buf_adds(out, ",\"finish_reason\":null}]}\n\n");
}

void srv_sse_end(srv_sse *x, const srv_status *st, int n_prompt, dsv_buf *out) {
    if (st->finish == SRV_FIN_ABORT || st->finish == SRV_FIN_ERROR) {
        srv_error e;
        srv_fail(&e, st->finish == SRV_FIN_ABORT ? 503 : 500, "server_error", NULL, NULL, "%s", st->error);
        dsv_buf_adds(out, "data: ");
        srv_error_json(&e, out);
        dsv_buf_adds(out, "\n\ndata: [DONE]\n\n");
        return;
    }
    if (x->g->chat) {
        x->out = out;
        if (dsv_chat_stream_finish(x->parser, on_event, x)) out->failed = 1;
    }
    chunk_open(x, out);
    dsv_buf_adds(out, x->g->chat ? "\"delta\":{}" : "\"text\":\"\"");
    chunk_close(out, finish_reason(st, x->n_tool_calls > 0));
    if (x->g->include_usage) {
        dsv_buf_adds(out, "data: ");
        head(x->S, x->g, x->g->chat ? "chat.completion.chunk" : "text_completion", out);
        dsv_buf_adds(out, ",\"choices\":[],\"usage\":");
        usage(out, n_prompt, st);
        dsv_buf_adds(out, "}\n\n");
    }
    dsv_buf_adds(out, "data: [DONE]\n\n");
}
