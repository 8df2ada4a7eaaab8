/* server.h: the state of a dsv_server (internal), shared by the HTTP layer
 * (http.c), the OpenAI request and response formats (api.c) and the page. */
#ifndef DSV_SERVER_SERVER_H
#define DSV_SERVER_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "dsv32.h"
#include "dsv32_chat.h"
#include "dsv32_server.h"
#include "dsv32_tokenizer.h"
#include "metrics.h"
#include "sched.h"
#include "text/grammar.h"
#include "text/text.h"

struct dsv_server {
    dsv_server_params p;
    char *model_id;              /* the name clients use */
    dsv_model *model;
    const dsv_config *cfg;
    dsv_context *ctx;
    dsv_tokenizer *tok;
    const dsv_chat_format *fmt;  /* the chat format: prompts and answers */
    dsv_vocab_index *vi;  /* the vocabulary for constrained decoding */
    srv_metrics *metrics;
    srv_sched *sched;
    struct MHD_Daemon *daemon;
    int port;
    int n_ctx;                   /* tokens per request */
    int max_total;               /* prompt + answer a request can ever get */
    int32_t bos;
    time_t created;
    atomic_uint_fast64_t next_id;
    atomic_int stopping;
    atomic_int active;           /* generation requests being answered */
    atomic_size_t body_bytes;    /* request body bytes held (p.body_budget) */
    /* Open connections, for the watchdog that enforces the header and body
     * deadlines (libmicrohttpd's own timeout restarts at every byte). */
    pthread_mutex_t conn_mu;
    pthread_cond_t conn_cv;
    struct srv_sock *socks;
    int64_t n_socks;
    pthread_t watchdog;
    int watchdog_started, watchdog_stop;
};

/* An error answer: HTTP status and the OpenAI error object's fields. */
typedef struct srv_error {
    int status;
    const char *type;            /* "invalid_request_error", ... */
    const char *code;            /* NULL or e.g. "model_not_found" */
    char param[64];              /* "" for none */
    char message[512];
} srv_error;

/* Fills e and returns -1 (so callers can `return srv_fail(...)`). */
int srv_fail(srv_error *e, int status, const char *type, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* {"error": {...}} */
void srv_error_json(const srv_error *e, dsv_buf *out);

/* A parsed generation request. */
typedef struct srv_gen {
    int chat;                    /* /v1/chat/completions (else /v1/completions) */
    int stream, include_usage;
    int thinking;                /* chat: the answer starts with reasoning */
    int logprobs;                /* -1, or the alternatives per token to report */
    uint64_t id;
    srv_req *req;                /* prompt, sampling, stop, max_tokens */
} srv_gen;

/* Bounds on request JSON: nesting depth, and entries of logit_bias. */
enum { SRV_MAX_DEPTH = 64, SRV_MAX_BIAS = 1024, SRV_MAX_IDS = 1 << 20 };

/* A JSON number that is a whole number in [lo, hi] (checked on the double,
 * before any conversion): 1 and *out set, else 0. Every integer of a
 * request is read through this. */
struct cJSON;
int srv_json_int(const struct cJSON *v, int64_t lo, int64_t hi, int64_t *out);

/* Checks a request body before it is parsed: nesting no deeper than
 * SRV_MAX_DEPTH, and no string holding NUL (cJSON would cut it there)
 * except the one at path `allowed` (NULL: none). 0, or -1 with e filled. */
int srv_check_json(const char *body, size_t len, const char *allowed, srv_error *e);

/* Parses and tokenizes a generation request body. On success g->req is a
 * new request ready to submit; on failure e says why. */
int srv_api_parse(dsv_server *S, int chat, const char *body, size_t len, srv_gen *g, srv_error *e);

/* The body of POST /tokenize: {"content": str, "add_special": bool,
 * "with_pieces": bool}. content is read exactly (NUL included); text is
 * malloc'd, NUL-terminated. */
typedef struct srv_tokenize_req {
    char *text;
    size_t len;
    int add_special, with_pieces;
} srv_tokenize_req;

/* Parses a /tokenize body (no I/O). 0 and *r filled (free it with
 * srv_tokenize_req_free), or -1 with e filled and *r empty. */
int srv_tokenize_parse(const char *body, size_t len, srv_tokenize_req *r, srv_error *e);
void srv_tokenize_req_free(srv_tokenize_req *r);

/* The body of POST /detokenize: {"tokens": [ids]}, at most SRV_MAX_IDS ids,
 * each one that tok has a piece for. */
typedef struct srv_detokenize_req {
    int32_t *ids;
    size_t n;
} srv_detokenize_req;

/* Parses a /detokenize body (no I/O). 0 and *r filled (free it with
 * srv_detokenize_req_free), or -1 with e filled and *r empty. */
int srv_detokenize_parse(const dsv_tokenizer *tok, const char *body, size_t len, srv_detokenize_req *r,
                         srv_error *e);
void srv_detokenize_req_free(srv_detokenize_req *r);

/* The whole answer of a non-streamed request (toks: its tokens, for
 * logprobs). */
void srv_api_response(dsv_server *S, const srv_gen *g, const char *text, size_t len, const srv_toks *toks,
                      const srv_status *st, int n_prompt, dsv_buf *out);

/* A streamed answer: SSE events appended to out as text arrives. */
typedef struct srv_sse srv_sse;
int srv_sse_init(srv_sse **out, dsv_server *S, const srv_gen *g);
void srv_sse_free(srv_sse *x);
/* The first event (the assistant role, for chat). */
void srv_sse_begin(srv_sse *x, dsv_buf *out);
/* New generated text. */
void srv_sse_text(srv_sse *x, const char *text, size_t len, dsv_buf *out);
/* Log-probabilities of new tokens (a chunk of their own; nothing unless
 * the request asked for logprobs). */
void srv_sse_tokens(srv_sse *x, const srv_tok *t, int n, dsv_buf *out);
/* The end: final chunk with finish_reason (or an error event), usage when
 * asked for, then [DONE]. */
void srv_sse_end(srv_sse *x, const srv_status *st, int n_prompt, dsv_buf *out);

/* printf into a buffer. (JSON string literals: dsv_json_str, text/text.h.) */
void srv_addf(dsv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The chat page (page.c). */
extern const char srv_page_html[];
extern const size_t srv_page_html_len;

#endif
