/* dsv32_server.h: an OpenAI-compatible HTTP server over one model.
 *
 * dsv_server_open loads the model and tokenizer, opens one context with a
 * slot per parallel request, starts the scheduler thread (continuous
 * batching, chunked prefill, paged KV cache with prefix caching) and starts
 * listening. Endpoints: POST /v1/chat/completions, POST /v1/completions,
 * GET /v1/models, GET /health, GET /metrics, POST /tokenize,
 * POST /detokenize, and GET / (a chat page). The contract of each lives in
 * src/server/http.c; the README lists them with examples, and its Security
 * section what is exposed and which limits hold.
 *
 * The server never exits or aborts on a request: every failure is an HTTP
 * error with an OpenAI-style error object. dsv_server_close ends in-flight
 * requests (streams get an error event and [DONE]), waits for their
 * connections and frees everything. Conventions of dsv32.h apply. */
#ifndef DSV32_SERVER_H
#define DSV32_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsv_server_params {
    const char *model_dir;  /* required: a model directory (config.json, weights,
                               tokenizer.json) or a .gguf file (dsv_model_open) */
    const char *alias;      /* model id in the API (NULL: the directory's name) */
    const char *host;       /* address or host name to bind (NULL: "127.0.0.1") */
    int port;               /* TCP port (0: any free port; see dsv_server_port) */
    int n_parallel;         /* requests generating at once: context slots */
    int n_ctx;              /* tokens per request, prompt and answer (0: the model's, at most 4096) */
    int64_t kv_bytes;       /* KV cache budget in bytes (0: n_parallel full contexts) */
    int n_batch;            /* tokens per forward step, decode and prefill together */
    int n_threads;          /* compute threads (0: every core) */
    int max_queue;          /* requests waiting for a slot before 429 */
    size_t max_body;        /* largest request body before 413 */
    size_t body_budget;     /* bytes of request bodies held at once before 503 (0: 8 x max_body) */
    size_t discard_max;     /* body bytes read and dropped so that an early error (413, 401, ...)
                               reaches a client still sending; past it the connection is closed */
    int discard_timeout;    /* seconds spent reading a body to drop it */
    int conn_limit;         /* open connections (each holds a thread) */
    int conn_per_client;    /* open connections from one address */
    int idle_timeout;       /* seconds a connection may stay silent (or not read its answer) */
    int header_timeout;     /* seconds from connecting, or the end of the last answer, to the
                               end of the request's headers */
    int body_timeout;       /* seconds from the headers to the end of the body */
    const char *api_key;    /* NULL: no authentication; else every endpoint but /health and the
                               chat page needs "Authorization: Bearer KEY" */
    int verbose;            /* log the set-up and each request on stderr */
    /* The chat format (a name from dsv_chat_format_list()); NULL: detected
     * from the model directory or GGUF file (dsv_chat_format_detect). */
    const char *chat_format;
    /* The thinking mode of a chat request that does not choose one (with
     * "thinking" or chat_template_kwargs.thinking); 1 for V3.2-Speciale,
     * which only thinks. Default 0 */
    int thinking_default;
    /* A top-k per layer (dsv_context_params.layer_topk; all 0: the model's,
     * its config's dsa_topk_per_layer included). */
    int layer_topk[DSV_MAX_TOPK_LAYERS];
    /* dsv_model_params.scale_fmt and .act_quant of the model the server
     * loads (-1: as the checkpoint or file says, the defaults). */
    int scale_fmt, act_quant;
} dsv_server_params;

/* The defaults: 127.0.0.1:8080, 4 parallel, n_batch 512, queue 64, body
 * limit 8 MiB, bodies in flight 64 MiB, 256 MiB or 30 s dropped for an
 * early error, 1024 connections, 64 per client address, 30 s idle, 10 s for
 * headers, 60 s for a body. */
DSV_API dsv_server_params dsv_server_default_params(void);

typedef struct dsv_server dsv_server;

/* Loads, binds and starts serving in background threads. Errors:
 * DSV_ERR_ARG (bad parameter), the model's and tokenizer's load errors,
 * DSV_ERR_IO (cannot bind), DSV_ERR_NOMEM. */
DSV_API int dsv_server_open(dsv_server **out, const dsv_server_params *p);
/* The port it listens on (the one chosen when params.port was 0). */
DSV_API int dsv_server_port(const dsv_server *s);
/* Stops accepting, ends in-flight requests, waits for their connections,
 * frees everything. NULL is a no-op. */
DSV_API void dsv_server_close(dsv_server *s);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_SERVER_H */
