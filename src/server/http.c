/* http.c: the HTTP side of the server, on libmicrohttpd, and the public
 * dsv_server API.
 *
 * Threads: libmicrohttpd runs one thread per connection (polling mode, so
 * no FD_SETSIZE limit). A generation request is parsed and tokenized on its
 * connection's thread, queued for the scheduler, and answered from there:
 * a non-streamed one waits in the access handler for the whole answer, a
 * streamed one is a chunked response whose reader blocks until the
 * scheduler publishes more text. Both wake every 100 ms to look at the
 * client's socket: a client that hung up is noticed within that time even
 * when no byte is due, and its request is cancelled (slot and pages freed
 * before the next step).
 *
 * Routes (anything else is 404; a known path with another method is 405):
 *   POST /v1/chat/completions   OpenAI chat (api.c), streaming with SSE
 *   POST /v1/completions        OpenAI completions
 *   GET  /v1/models[/ID]        the one model
 *   GET  /health                {"status":"ok"} (503 while stopping)
 *   GET  /metrics               Prometheus text
 *   POST /tokenize              {"content": str, "add_special": bool, "with_pieces": bool}
 *                               -> {"tokens": [ids or {"id", "piece"}]} (bodies: tokapi.c)
 *   POST /detokenize            {"tokens": [ids]} -> {"content": str}
 *   GET  /                      the chat page
 * With an API key, every route but /health and the page needs
 * "Authorization: Bearer KEY" (401). POST bodies must be application/json
 * (415): a web page cannot send that cross-origin without a preflight, which
 * this server never grants. Every error body is an OpenAI error object.
 *
 * Exposure (dsv_server_params has the numbers):
 * - An error known from the headers (401, 404, 413, 415, ...) is answered
 *   after the body has been read and dropped, so that a client still
 *   sending sees it (one that gets a reset while sending reports a broken
 *   pipe instead); past discard_max bytes or discard_timeout seconds the
 *   connection is closed. A client that asked "Expect: 100-continue" is
 *   answered at once (it sends nothing more).
 * - Bodies in flight hold at most body_budget bytes together: past it, 503
 *   with Retry-After. A body is freed once parsed.
 * - A generation request takes its place in the queue (429 when full)
 *   before its JSON is parsed, rendered or tokenized.
 * - Connections: at most conn_limit, conn_per_client from one address; a
 *   watchdog cuts those whose headers are not in within header_timeout or
 *   whose body is not in within body_timeout (a byte at a time does not
 *   extend them); libmicrohttpd closes those silent for idle_timeout.
 * - A read EOF is not taken for a hang-up: a client may half-close
 *   (shutdown(SHUT_WR)) after its request and wait for the answer. While a
 *   non-streamed answer is being generated, an EOF is answered with
 *   "HTTP/1.1 102 Processing" (HTTP/1.1 clients skip 1xx responses), which a
 *   closed socket answers with a reset: that, and a reset on a stream's
 *   writes, is a client gone, and its request is cancelled.
 *
 * Shutdown (dsv_server_close): stop accepting, abort every request in the
 * scheduler (streams end with an error event and [DONE], waiting requests
 * get 503), wait for those answers to go out, then stop the daemon and free
 * everything. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "dsv32_util.h"
#include "server.h"
#include "base/util.h"

enum route_id { R_CHAT, R_COMPLETIONS, R_MODELS, R_MODEL, R_HEALTH, R_METRICS, R_TOKENIZE, R_DETOKENIZE, R_PAGE };

static const struct route {
    const char *path;    /* exact, or a prefix when it ends with '/' */
    const char *method;
    enum route_id id;
} routes[] = {
    {"/v1/chat/completions", "POST", R_CHAT},
    {"/v1/completions", "POST", R_COMPLETIONS},
    {"/v1/models", "GET", R_MODELS},
    {"/v1/models/", "GET", R_MODEL},
    {"/health", "GET", R_HEALTH},
    {"/metrics", "GET", R_METRICS},
    {"/tokenize", "POST", R_TOKENIZE},
    {"/detokenize", "POST", R_DETOKENIZE},
    {"/", "GET", R_PAGE},
};

static const struct route *find_route(const char *url) {
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        const char *p = routes[i].path;
        size_t n = strlen(p);
        if (routes[i].id == R_MODEL ? !strncmp(url, p, n) && url[n] : !strcmp(url, p)) return &routes[i];
    }
    return NULL;
}

/* An open connection (MHD's socket context), for the watchdog. The phase
 * says which deadline applies: from `since`, `limit` seconds (0: none). */
struct srv_sock {
    int fd;
    double since, limit;
    int cut;                 /* shut down by the watchdog */
    struct srv_sock *prev, *next;
};

/* One request on a connection (MHD's con_cls). */
struct conn {
    const struct route *route;
    const char *endpoint;    /* metrics label */
    srv_error err;           /* decided before the body: err.status != 0 */
    dsv_buf body;
    size_t held;             /* bytes of S->body_bytes this body holds */
    size_t dropped;          /* body bytes read and dropped */
    int too_large;
    int status;              /* the status sent (for the log) */
    int counted;             /* holds one of S->active */
    int http11;              /* may be sent a 1xx answer */
    int early;               /* answered before the body was read */
    int eof;                 /* the client sent EOF (a half-close, or gone) */
    struct srv_sock *sock;
    size_t length;           /* Content-Length (0: none) */
    double t0;
};

/* A streamed answer (the response's reader state). */
struct stream {
    dsv_server *S;
    srv_gen gen;
    srv_sse *sse;
    int fd;                  /* the client's socket */
    dsv_buf out;             /* SSE bytes not yet handed to MHD */
    size_t off;
    dsv_buf text;
    size_t seen;
    srv_toks toks;           /* tokens so far (logprobs) */
    int ended;
    int eof;                 /* the client sent EOF (maybe a half-close) */
};

/* ---- Helpers -------------------------------------------------------------- */

/* 1 when the client is gone: its socket was reset or shut both ways. An
 * EOF alone (*eof set) may be a half-close; with probe, the first one is
 * answered with a 102, which a closed socket answers with a reset (see the
 * top of the file). */
static int client_gone(int fd, int *eof, int probe) {
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (fd < 0 || poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) return 1;
    if (*eof) return 0;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    if (n > 0) return 0;
    *eof = 1;
    if (probe) {
        static const char processing[] = "HTTP/1.1 102 Processing\r\n\r\n";
        if (send(fd, processing, sizeof processing - 1, MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof processing - 1)
            return 1;
    }
    return 0;
}

static int connection_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static void log_request(dsv_server *S, const struct conn *k, const char *method, const char *url) {
    if (S->p.verbose)
        fprintf(stderr, "dsv32 serve: %s %s -> %d (%.1f ms)\n", method, url, k->status, (dsv_time() - k->t0) * 1e3);
}

/* Queues a response with a copy of body; counts it in the metrics. */
static enum MHD_Result reply(dsv_server *S, struct MHD_Connection *c, struct conn *k, int status, const char *type,
                             const char *body, size_t len) {
    struct MHD_Response *res = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!res) return MHD_NO;
    MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 429 || status == 503) MHD_add_response_header(res, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401) MHD_add_response_header(res, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 405) MHD_add_response_header(res, MHD_HTTP_HEADER_ALLOW, k->route->method);
    /* Answered before its body: the connection cannot carry another request. */
    if (k->early) MHD_add_response_header(res, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, res);
    MHD_destroy_response(res);
    k->status = status;
    srv_metrics_request(S->metrics, k->endpoint, status);
    return rc;
}

static enum MHD_Result reply_json(dsv_server *S, struct MHD_Connection *c, struct conn *k, int status, dsv_buf *b) {
    if (b->failed) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                                  "\"param\":null,\"code\":null}}";
        dsv_buf_free(b);
        return reply(S, c, k, 500, "application/json", oom, sizeof oom - 1);
    }
    enum MHD_Result rc = reply(S, c, k, status, "application/json", b->data ? b->data : "", b->len);
    dsv_buf_free(b);
    return rc;
}

static enum MHD_Result reply_error(dsv_server *S, struct MHD_Connection *c, struct conn *k, const srv_error *e) {
    dsv_buf b = {0};
    srv_error_json(e, &b);
    return reply_json(S, c, k, e->status, &b);
}

/* Constant-time comparison of the bearer token with the key. */
static int authorized(dsv_server *S, struct MHD_Connection *c) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    const char *tok = h + 7, *key = S->p.api_key;
    size_t n = strlen(tok), m = strlen(key);
    unsigned diff = (unsigned)(n != m);
    for (size_t i = 0; i < m; i++) diff |= (unsigned)(unsigned char)key[i] ^ (unsigned char)(i < n ? tok[i] : 0);
    return diff == 0;
}

/* ---- Simple routes -------------------------------------------------------- */

static void model_object(dsv_server *S, dsv_buf *b) {
    dsv_buf_adds(b, "{\"id\":");
    dsv_json_str(b, S->model_id, strlen(S->model_id));
    srv_addf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"dsv32\",\"max_model_len\":%d}",
             (long long)S->created, S->n_ctx);
}

static enum MHD_Result route_models(dsv_server *S, struct MHD_Connection *c, struct conn *k, const char *url) {
    dsv_buf b = {0};
    if (k->route->id == R_MODEL) {
        const char *id = url + strlen(k->route->path);
        if (strcmp(id, S->model_id)) {
            srv_error e;
            srv_fail(&e, 404, "invalid_request_error", "model_not_found", "model", "The model '%s' does not exist", id);
            return reply_error(S, c, k, &e);
        }
        model_object(S, &b);
    } else {
        dsv_buf_adds(&b, "{\"object\":\"list\",\"data\":[");
        model_object(S, &b);
        dsv_buf_adds(&b, "]}");
    }
    return reply_json(S, c, k, 200, &b);
}

static enum MHD_Result route_metrics(dsv_server *S, struct MHD_Connection *c, struct conn *k) {
    srv_gauges g;
    srv_sched_gauges(S->sched, &g);
    pthread_mutex_lock(&S->conn_mu);
    g.connections = S->n_socks;
    pthread_mutex_unlock(&S->conn_mu);
    g.body_bytes = (int64_t)atomic_load(&S->body_bytes);
    dsv_buf b = {0};
    srv_metrics_render(S->metrics, &g, &b);
    enum MHD_Result rc = reply(S, c, k, b.failed ? 500 : 200, "text/plain; version=0.0.4", b.data ? b.data : "",
                               b.failed ? 0 : b.len);
    dsv_buf_free(&b);
    return rc;
}

static enum MHD_Result route_tokenize(dsv_server *S, struct MHD_Connection *c, struct conn *k) {
    srv_error e = {0};
    srv_tokenize_req q;
    if (srv_tokenize_parse(k->body.data, k->body.len, &q, &e)) return reply_error(S, c, k, &e);
    int bos = q.add_special && dsv_tokenizer_add_bos(S->tok) && S->bos >= 0;
    size_t len = q.len;
    int32_t *ids = malloc((len + 2) * sizeof *ids);
    size_t n = 0;
    dsv_buf b = {0};
    if (!ids || dsv_tokenize(S->tok, q.text, len, ids + bos, len + 1, &n)) {
        b.failed = 1;
    } else {
        if (bos) ids[0] = S->bos;
        n += (size_t)bos;
        dsv_buf_adds(&b, "{\"tokens\":[");
        for (size_t i = 0; i < n; i++) {
            if (i) dsv_buf_adds(&b, ",");
            if (!q.with_pieces) {
                srv_addf(&b, "%d", (int)ids[i]);
                continue;
            }
            size_t pl = 0;
            const char *p = dsv_token_piece(S->tok, ids[i], &pl);
            srv_addf(&b, "{\"id\":%d,\"piece\":", (int)ids[i]);
            dsv_json_str(&b, p ? p : "", pl);
            dsv_buf_adds(&b, "}");
        }
        dsv_buf_adds(&b, "]}");
    }
    free(ids);
    srv_tokenize_req_free(&q);
    return reply_json(S, c, k, 200, &b);
}

static enum MHD_Result route_detokenize(dsv_server *S, struct MHD_Connection *c, struct conn *k) {
    srv_error e = {0};
    srv_detokenize_req q;
    if (srv_detokenize_parse(S->tok, k->body.data, k->body.len, &q, &e)) return reply_error(S, c, k, &e);
    dsv_buf b = {0};
    size_t len = 0;
    if (dsv_detokenize(S->tok, q.ids, q.n, 0, NULL, 0, &len) == DSV_ERR_FULL) {
        char *text = malloc(len + 1);
        if (text && dsv_detokenize(S->tok, q.ids, q.n, 0, text, len + 1, &len) == DSV_OK) {
            dsv_buf_adds(&b, "{\"content\":");
            dsv_json_str(&b, text, len);
            dsv_buf_adds(&b, "}");
        } else {
            b.failed = 1;
        }
        free(text);
    } else {
        dsv_buf_adds(&b, "{\"content\":\"\"}");
    }
    srv_detokenize_req_free(&q);
    return reply_json(S, c, k, 200, &b);
}

/* ---- Generation ----------------------------------------------------------- */

/* Frees the body and its share of the budget (once parsed it is not needed). */
static void body_release(dsv_server *S, struct conn *k) {
    dsv_buf_free(&k->body);
    atomic_fetch_sub(&S->body_bytes, k->held);
    k->held = 0;
}

/* Submits g's request; on failure answers the client and returns 0. */
static int submit(dsv_server *S, struct MHD_Connection *c, struct conn *k, srv_gen *g, enum MHD_Result *rc) {
    g->req->t_submit = k->t0;
    int st = srv_sched_submit(S->sched, g->req);
    if (st == DSV_OK) {
        k->counted = 1;
        atomic_fetch_add(&S->active, 1);
        return 1;
    }
    srv_req_free(g->req);
    g->req = NULL;
    srv_error e;
    if (st == DSV_ERR_FULL)
        srv_fail(&e, 429, "rate_limit_error", "queue_full", NULL, "the server is busy: %d requests are waiting",
                 S->p.max_queue);
    else
        srv_fail(&e, 503, "server_error", NULL, NULL, "the server is shutting down");
    *rc = reply_error(S, c, k, &e);
    return 0;
}

static enum MHD_Result generate_whole(dsv_server *S, struct MHD_Connection *c, struct conn *k, srv_gen *g) {
    enum MHD_Result rc = MHD_NO;
    if (!submit(S, c, k, g, &rc)) return rc;
    int fd = connection_fd(c), n_prompt = g->req->n_prompt;
    body_release(S, k);
    dsv_buf text = {0};
    srv_toks toks = {0};
    size_t seen = 0;
    srv_status st;
    for (;;) {
        srv_req_poll(S->sched, g->req, &seen, &text, &toks, 0.1, &st);
        if (st.finish) break;
        if (client_gone(fd, &k->eof, k->http11)) {
            /* Nobody to answer: cancel, and let MHD close the connection. */
            srv_req_release(S->sched, g->req);
            dsv_buf_free(&text);
            free(toks.v);
            k->status = 499; /* nginx's "client closed request" */
            srv_metrics_request(S->metrics, k->endpoint, 499);
            return MHD_NO;
        }
    }
    srv_req_release(S->sched, g->req);
    g->req = NULL;
    if (st.finish == SRV_FIN_ABORT || st.finish == SRV_FIN_ERROR) {
        srv_error e;
        srv_fail(&e, st.finish == SRV_FIN_ABORT ? 503 : 500, "server_error", NULL, NULL, "%s", st.error);
        dsv_buf_free(&text);
        free(toks.v);
        return reply_error(S, c, k, &e);
    }
    dsv_buf b = {0};
    srv_api_response(S, g, text.data ? text.data : "", text.len, &toks, &st, n_prompt, &b);
    dsv_buf_free(&text);
    free(toks.v);
    return reply_json(S, c, k, 200, &b);
}

static void stream_free(void *cls) {
    struct stream *x = cls;
    if (x->gen.req) srv_req_release(x->S->sched, x->gen.req);
    srv_sse_free(x->sse);
    dsv_buf_free(&x->out);
    dsv_buf_free(&x->text);
    free(x->toks.v);
    free(x);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct stream *x = cls;
    for (;;) {
        if (x->out.failed) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (x->out.len > x->off) {
            size_t n = DSV_MIN(max, x->out.len - x->off);
            memcpy(buf, x->out.data + x->off, n);
            x->off += n;
            if (x->off == x->out.len) {
                dsv_buf_clear(&x->out);
                x->off = 0;
            }
            return (ssize_t)n;
        }
        if (x->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        srv_status st;
        int n_prompt = x->gen.req->n_prompt;
        int sent = x->toks.n;
        srv_req_poll(x->S->sched, x->gen.req, &x->seen, &x->text, x->gen.logprobs >= 0 ? &x->toks : NULL, 0.1, &st);
        if (x->text.len) {
            srv_sse_text(x->sse, x->text.data, x->text.len, &x->out);
            dsv_buf_clear(&x->text);
        }
        /* Without logprobs no tokens are gathered (toks.v stays NULL). */
        if (x->toks.n > sent) srv_sse_tokens(x->sse, x->toks.v + sent, x->toks.n - sent, &x->out);
        if (st.finish) {
            srv_sse_end(x->sse, &st, n_prompt, &x->out);
            srv_req_release(x->S->sched, x->gen.req);
            x->gen.req = NULL;
            x->ended = 1;
        } else if (!x->out.len && client_gone(x->fd, &x->eof, 0)) {
            return MHD_CONTENT_READER_END_WITH_ERROR; /* stream_free cancels the request */
        }
    }
}

static enum MHD_Result generate_stream(dsv_server *S, struct MHD_Connection *c, struct conn *k, srv_gen *g) {
    enum MHD_Result rc = MHD_NO;
    struct stream *x = calloc(1, sizeof *x);
    if (x) {
        x->S = S;
        x->gen = *g;
        x->fd = connection_fd(c);
    }
    if (!x || srv_sse_init(&x->sse, S, &x->gen)) {
        free(x);
        if (g->req->reserved) srv_sched_unreserve(S->sched);
        srv_req_free(g->req);
        srv_error e;
        srv_fail(&e, 500, "server_error", NULL, NULL, "out of memory");
        return reply_error(S, c, k, &e);
    }
    if (!submit(S, c, k, &x->gen, &rc)) {
        srv_sse_free(x->sse);
        free(x);
        return rc;
    }
    body_release(S, k);
    srv_sse_begin(x->sse, &x->out);
    struct MHD_Response *res = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, x,
                                                                 stream_free);
    if (!res) {
        stream_free(x);
        return MHD_NO;
    }
    MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(res, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    rc = MHD_queue_response(c, MHD_HTTP_OK, res);
    MHD_destroy_response(res);
    k->status = 200;
    srv_metrics_request(S->metrics, k->endpoint, 200);
    return rc;
}

static enum MHD_Result route_generate(dsv_server *S, struct MHD_Connection *c, struct conn *k) {
    srv_gen g;
    srv_error e;
    /* A place in the queue first: a full server parses nothing. */
    int st = srv_sched_reserve(S->sched);
    if (st == DSV_ERR_FULL)
        srv_fail(&e, 429, "rate_limit_error", "queue_full", NULL, "the server is busy: %d requests are waiting",
                 S->p.max_queue);
    else if (st)
        srv_fail(&e, 503, "server_error", NULL, NULL, "the server is shutting down");
    if (st) return reply_error(S, c, k, &e);
    if (srv_api_parse(S, k->route->id == R_CHAT, k->body.data ? k->body.data : "", k->body.len, &g, &e)) {
        srv_sched_unreserve(S->sched);
        return reply_error(S, c, k, &e);
    }
    g.req->reserved = 1;
    return g.stream ? generate_stream(S, c, k, &g) : generate_whole(S, c, k, &g);
}

/* ---- The access handler --------------------------------------------------- */

/* "application/json", any case, parameters allowed. */
static int is_json(const char *type) {
    static const char json[] = "application/json";
    if (!type) return 0;
    type += strspn(type, " \t");
    if (strncasecmp(type, json, sizeof json - 1)) return 0;
    type += sizeof json - 1;
    type += strspn(type, " \t");
    return !*type || *type == ';';
}

/* Takes n more bytes from the body budget; 0 when it has not that many. */
static int hold(dsv_server *S, struct conn *k, size_t n) {
    size_t before = atomic_fetch_add(&S->body_bytes, n);
    if (before + n > S->p.body_budget || before + n < before) {
        atomic_fetch_sub(&S->body_bytes, n);
        return 0;
    }
    k->held += n;
    return 1;
}

/* Sets the connection's deadline: `limit` seconds from now (0: none). */
static void sock_deadline(dsv_server *S, struct srv_sock *x, double limit) {
    if (!x) return;
    pthread_mutex_lock(&S->conn_mu);
    x->since = dsv_time();
    x->limit = limit;
    pthread_mutex_unlock(&S->conn_mu);
}

/* Decides the errors known from the request line and headers alone. */
static void check_headers(dsv_server *S, struct MHD_Connection *c, struct conn *k, const char *url,
                          const char *method) {
    k->route = find_route(url);
    const char *m = !strcmp(method, "HEAD") ? "GET" : method;
    if (!k->route) {
        k->endpoint = "other";
        srv_fail(&k->err, 404, "invalid_request_error", "not_found", NULL, "no route for %s %s", method, url);
        return;
    }
    k->endpoint = k->route->path;
    if (k->route->id == R_MODEL) k->endpoint = "/v1/models/{id}";
    if (strcmp(m, k->route->method)) {
        srv_fail(&k->err, 405, "invalid_request_error", "method_not_allowed", NULL, "%s %s: use %s", method, url,
                 k->route->method);
        return;
    }
    /* The page holds no data (its API calls carry the key); a health check
     * must work without one. */
    if (S->p.api_key && k->route->id != R_HEALTH && k->route->id != R_PAGE && !authorized(S, c)) {
        srv_fail(&k->err, 401, "authentication_error", "invalid_api_key", NULL,
                 "a valid API key is needed: send \"Authorization: Bearer KEY\"");
        return;
    }
    if (!strcmp(m, "POST") &&
        !is_json(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE))) {
        srv_fail(&k->err, 415, "invalid_request_error", "unsupported_media_type", NULL,
                 "the body must be JSON, sent with \"Content-Type: application/json\"");
        return;
    }
    if (k->length > S->p.max_body) {
        srv_fail(&k->err, 413, "invalid_request_error", "request_too_large", NULL,
                 "the body is larger than the limit of %zu bytes", S->p.max_body);
        return;
    }
    /* The body's bytes, from the budget, while it is read and parsed. */
    if (k->length && !hold(S, k, k->length))
        srv_fail(&k->err, 503, "server_error", "server_busy", NULL,
                 "the server holds too many request bodies; retry shortly");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    dsv_server *S = cls;
    struct conn *k = *con_cls;
    if (!k) {
        if (!(k = calloc(1, sizeof *k))) return MHD_NO;
        *con_cls = k;
        k->t0 = dsv_time();
        k->http11 = version && !strcmp(version, MHD_HTTP_VERSION_1_1);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        k->sock = ci ? ci->socket_context : NULL;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        k->length = cl ? strtoull(cl, NULL, 10) : 0;
        check_headers(S, c, k, url, method);
        /* The body is dropped to deliver an early error, unless the client
         * waits for "100 Continue" (it sends nothing more) or announces more
         * than is worth reading. */
        const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
        if (k->err.status && ((expect && !strcasecmp(expect, "100-continue")) || k->length > S->p.discard_max)) {
            k->early = 1;
            enum MHD_Result rc = reply_error(S, c, k, &k->err);
            log_request(S, k, method, url);
            return rc;
        }
        sock_deadline(S, k->sock, k->err.status ? S->p.discard_timeout : S->p.body_timeout);
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (k->err.status || k->too_large) {
            /* Read and dropped, so the answer reaches a client that is
             * still sending; bounded. */
            k->dropped += n;
            if (k->dropped > S->p.discard_max || dsv_time() - k->t0 > S->p.discard_timeout) return MHD_NO;
            return MHD_YES;
        }
        if (k->body.len + n > S->p.max_body) {
            k->too_large = 1;
            body_release(S, k);
            sock_deadline(S, k->sock, S->p.discard_timeout);
            return MHD_YES;
        }
        /* A body without Content-Length takes from the budget as it comes. */
        if (k->body.len + n > k->held && !hold(S, k, k->body.len + n - k->held)) {
            srv_fail(&k->err, 503, "server_error", "server_busy", NULL,
                     "the server holds too many request bodies; retry shortly");
            body_release(S, k);
            sock_deadline(S, k->sock, S->p.discard_timeout);
            return MHD_YES;
        }
        dsv_buf_add(&k->body, upload, n);
        return MHD_YES;
    }
    sock_deadline(S, k->sock, 0); /* the request is in: answering has no deadline */
    if (!k->err.status && k->too_large)
        srv_fail(&k->err, 413, "invalid_request_error", "request_too_large", NULL,
                 "the body is larger than the limit of %zu bytes", S->p.max_body);
    if (!k->err.status && k->body.failed) srv_fail(&k->err, 500, "server_error", NULL, NULL, "out of memory");
    enum MHD_Result rc;
    if (k->err.status) {
        rc = reply_error(S, c, k, &k->err);
        log_request(S, k, method, url);
        return rc;
    }
    switch (k->route->id) {
    case R_CHAT:
    case R_COMPLETIONS: rc = route_generate(S, c, k); break;
    case R_MODELS:
    case R_MODEL: rc = route_models(S, c, k, url); break;
    case R_HEALTH:
        rc = atomic_load(&S->stopping)
                 ? reply(S, c, k, 503, "application/json", "{\"status\":\"stopping\"}", 21)
                 : reply(S, c, k, 200, "application/json", "{\"status\":\"ok\"}", 15);
        break;
    case R_METRICS: rc = route_metrics(S, c, k); break;
    case R_TOKENIZE: rc = route_tokenize(S, c, k); break;
    case R_DETOKENIZE: rc = route_detokenize(S, c, k); break;
    case R_PAGE: rc = reply(S, c, k, 200, "text/html; charset=utf-8", srv_page_html, srv_page_html_len); break;
    default: rc = MHD_NO;
    }
    log_request(S, k, method, url);
    return rc;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    (void)c;
    (void)why;
    dsv_server *S = cls;
    struct conn *k = *con_cls;
    if (!k) return;
    if (k->counted) atomic_fetch_sub(&S->active, 1);
    body_release(S, k);
    sock_deadline(S, k->sock, S->p.header_timeout); /* for the next request on it */
    free(k);
    *con_cls = NULL;
}

/* Connections come and go in the watchdog's list. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    dsv_server *S = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        struct srv_sock *x = calloc(1, sizeof *x);
        *socket_context = x;
        if (!x) return; /* no deadline for it; the idle timeout still holds */
        x->fd = connection_fd(c);
        x->since = dsv_time();
        x->limit = S->p.header_timeout;
        pthread_mutex_lock(&S->conn_mu);
        x->next = S->socks;
        if (S->socks) S->socks->prev = x;
        S->socks = x;
        S->n_socks++;
        pthread_mutex_unlock(&S->conn_mu);
    } else if (*socket_context) {
        /* Under the lock, and libmicrohttpd notifies before it closes the
         * socket: the watchdog never shuts down a descriptor reused since. */
        struct srv_sock *x = *socket_context;
        pthread_mutex_lock(&S->conn_mu);
        if (x->prev) x->prev->next = x->next;
        else S->socks = x->next;
        if (x->next) x->next->prev = x->prev;
        S->n_socks--;
        pthread_mutex_unlock(&S->conn_mu);
        free(x);
        *socket_context = NULL;
    }
}

/* Cuts connections past their deadline: shutting the socket down makes
 * libmicrohttpd's own thread see the end and close it. */
static void *watchdog_main(void *arg) {
    dsv_server *S = arg;
    pthread_mutex_lock(&S->conn_mu);
    while (!S->watchdog_stop) {
        double now = dsv_time();
        for (struct srv_sock *x = S->socks; x; x = x->next) {
            if (x->cut || x->limit <= 0 || now - x->since <= x->limit || x->fd < 0) continue;
            shutdown(x->fd, SHUT_RDWR);
            x->cut = 1;
            srv_metrics_cut(S->metrics);
            if (S->p.verbose) fprintf(stderr, "dsv32 serve: a connection missed its deadline; closed\n");
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 250000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&S->conn_cv, &S->conn_mu, &ts);
    }
    pthread_mutex_unlock(&S->conn_mu);
    return NULL;
}

/* ---- Public --------------------------------------------------------------- */

dsv_server_params dsv_server_default_params(void) {
    return (dsv_server_params){
        .host = "127.0.0.1", .port = 8080, .n_parallel = 4, .n_batch = 512,
        .max_queue = 64, .max_body = 8u << 20, .body_budget = 64u << 20,
        .discard_max = 256u << 20, .discard_timeout = 30,
        .conn_limit = 1024, .conn_per_client = 64,
        .idle_timeout = 30, .header_timeout = 10, .body_timeout = 60,
        .scale_fmt = -1, .act_quant = -1,
    };
}

static char *model_name(const char *dir) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    char *s = malloc(n - b + 1);
    if (s) {
        memcpy(s, dir + b, n - b);
        s[n - b] = 0;
    }
    return s;
}

static int start_daemon(dsv_server *S) {
    char port[16];
    snprintf(port, sizeof port, "%d", S->p.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(S->p.host, port, &hints, &ai);
    if (gai || !ai) return dsv_error(DSV_ERR_ARG, "--host %s: %s", S->p.host, gai_strerror(gai));
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    S->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, S,
                                 MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, S,
                                 MHD_OPTION_NOTIFY_CONNECTION, on_connection, S,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)S->p.idle_timeout,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)S->p.conn_limit,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)S->p.conn_per_client,
                                 MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!S->daemon) return dsv_error(DSV_ERR_IO, "cannot listen on %s port %d", S->p.host, S->p.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(S->daemon, MHD_DAEMON_INFO_BIND_PORT);
    S->port = di ? di->port : S->p.port;
    return DSV_OK;
}

int dsv_server_open(dsv_server **out, const dsv_server_params *params) {
    if (!out || !params || !params->model_dir) return dsv_error(DSV_ERR_ARG, "dsv_server_open: no model directory");
    dsv_server_params p = *params;
    if (!p.host) p.host = "127.0.0.1";
    if (p.n_parallel < 1 || p.n_parallel > 1024) return dsv_error(DSV_ERR_ARG, "--parallel must be in [1, 1024]");
    if (p.port < 0 || p.port > 65535) return dsv_error(DSV_ERR_ARG, "--port must be in [0, 65535]");
    if (p.n_ctx < 0 || p.kv_bytes < 0 || p.n_threads < 0) return dsv_error(DSV_ERR_ARG, "negative size");
    if (p.max_queue < 0 || p.max_body < 1) return dsv_error(DSV_ERR_ARG, "bad queue or body limit");
    if (p.n_batch < p.n_parallel + 2)
        return dsv_error(DSV_ERR_ARG, "--batch %d is too small for --parallel %d (at least %d)", p.n_batch,
                         p.n_parallel, p.n_parallel + 2);
    if (p.api_key && !p.api_key[0]) return dsv_error(DSV_ERR_ARG, "--api-key must not be empty");
    if (!p.body_budget) p.body_budget = p.max_body <= SIZE_MAX / 8 ? 8 * p.max_body : SIZE_MAX;
    if (p.body_budget < p.max_body)
        return dsv_error(DSV_ERR_ARG, "--body-budget %zu is less than --max-body %zu", p.body_budget, p.max_body);
    if (p.conn_limit < 1 || p.conn_limit > 65536 || p.conn_per_client < 1)
        return dsv_error(DSV_ERR_ARG, "--max-conns must be in [1, 65536] and --max-conns-per-client at least 1");
    if (p.idle_timeout < 1 || p.header_timeout < 1 || p.body_timeout < 1 || p.discard_timeout < 1)
        return dsv_error(DSV_ERR_ARG, "timeouts must be at least 1 second");

    dsv_server *S = calloc(1, sizeof *S);
    if (!S) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    S->p = p;
    S->created = time(NULL);
    pthread_mutex_init(&S->conn_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&S->conn_cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&S->next_id, 1);
    int st = DSV_OK;
    if (!(S->model_id = p.alias ? strdup(p.alias) : model_name(p.model_dir))) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    if (!st) {
        dsv_model_params mp = dsv_model_default_params();
        mp.scale_fmt = p.scale_fmt;
        mp.act_quant = p.act_quant;
        st = dsv_model_open(&S->model, p.model_dir, &mp);
    }
    if (!st) st = dsv_tokenizer_open(&S->tok, p.model_dir);
    if (!st && p.chat_format && !(S->fmt = dsv_chat_format_find(p.chat_format))) st = DSV_ERR_ARG;
    if (!st && !p.chat_format) st = dsv_chat_format_detect(p.model_dir, &S->fmt);
    if (!st) st = dsv_vocab_index_build(&S->vi, S->tok);
    if (!st) {
        S->cfg = dsv_model_config(S->model);
        if (dsv_tokenizer_n_vocab(S->tok) > S->cfg->vocab_size)
            st = dsv_error(DSV_ERR_CONFIG, "%s: the tokenizer has %d tokens, the model %d", p.model_dir,
                           (int)dsv_tokenizer_n_vocab(S->tok), S->cfg->vocab_size);
    }
    if (!st) {
        dsv_context_params cp = dsv_context_default_params();
        cp.n_ctx = p.n_ctx;
        cp.n_seq = p.n_parallel;
        cp.n_batch = p.n_batch;
        cp.n_threads = p.n_threads;
        memcpy(cp.layer_topk, p.layer_topk, sizeof cp.layer_topk);
        if (p.kv_bytes) {
            cp.n_pages = p.kv_bytes / (int64_t)dsv_kv_page_bytes(S->cfg);
            if (cp.n_pages < 1)
                st = dsv_error(DSV_ERR_ARG, "--kv-memory %lld bytes is less than one KV page (%llu bytes)",
                               (long long)p.kv_bytes, (unsigned long long)dsv_kv_page_bytes(S->cfg));
        }
        if (!st) st = dsv_context_open(&S->ctx, S->model, &cp);
    }
    if (!st) {
        const dsv_context_params *cp = dsv_context_get_params(S->ctx);
        S->n_ctx = cp->n_ctx;
        S->bos = dsv_tokenizer_bos(S->tok) >= 0 ? dsv_tokenizer_bos(S->tok) : S->cfg->bos_id;
        if (srv_metrics_init(&S->metrics)) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    }
    if (!st) {
        srv_sched_params sp = {.n_batch = p.n_batch, .max_queue = p.max_queue};
        st = srv_sched_init(&S->sched, S->ctx, S->cfg, S->tok, S->metrics, &sp);
    }
    if (!st) {
        S->max_total = srv_sched_max_tokens(S->sched);
        st = start_daemon(S);
    }
    if (!st) {
        if (pthread_create(&S->watchdog, NULL, watchdog_main, S))
            st = dsv_error(DSV_ERR_NOMEM, "cannot start the connection watchdog thread");
        else
            S->watchdog_started = 1;
    }
    if (st) {
        dsv_server_close(S);
        return st;
    }
    if (p.verbose) {
        srv_gauges g;
        srv_sched_gauges(S->sched, &g);
        const dsv_context_params *cp = dsv_context_get_params(S->ctx);
        fprintf(stderr, "dsv32 serve: model %s: %d slots of %d tokens, %lld KV pages (%.1f MiB), batch %d, %d threads\n",
                S->model_id, cp->n_seq, S->n_ctx, (long long)g.kv_total,
                (double)g.kv_total * (double)dsv_kv_page_bytes(S->cfg) / 1048576.0, cp->n_batch, cp->n_threads);
    }
    *out = S;
    return DSV_OK;
}

int dsv_server_port(const dsv_server *s) { return s->port; }

void dsv_server_close(dsv_server *S) {
    if (!S) return;
    atomic_store(&S->stopping, 1);
    if (S->daemon) {
        MHD_socket ls = MHD_quiesce_daemon(S->daemon);
        if (ls != MHD_INVALID_SOCKET) close(ls);
    }
    srv_sched_stop(S->sched);
    /* Let the aborted answers reach their clients (bounded: a client that
     * does not read is cut off by the daemon's stop). */
    for (int i = 0; i < 500 && atomic_load(&S->active) > 0; i++) usleep(10000);
    if (S->daemon) MHD_stop_daemon(S->daemon);
    if (S->watchdog_started) {
        pthread_mutex_lock(&S->conn_mu);
        S->watchdog_stop = 1;
        pthread_cond_signal(&S->conn_cv);
        pthread_mutex_unlock(&S->conn_mu);
        pthread_join(S->watchdog, NULL);
    }
    pthread_mutex_destroy(&S->conn_mu);
    pthread_cond_destroy(&S->conn_cv);
    srv_sched_free(S->sched);
    srv_metrics_free(S->metrics);
    dsv_context_close(S->ctx);
    dsv_tokenizer_close(S->tok);
    dsv_vocab_index_free(S->vi);
    dsv_model_close(S->model);
    free(S->model_id);
    free(S);
}
