/* sched.h: the scheduler. One thread owns the dsv_context and is the only
 * caller of dsv_forward; HTTP threads hand it requests through a bounded
 * queue and read back text as it is generated.
 *
 * Continuous batching: between two forward steps requests join (a free
 * slot, KV pages for their worst case) and leave (finished, cancelled).
 * Each step decodes one token for every generating request and spends the
 * rest of the batch on prompt chunks, oldest request first, so a long prompt
 * never stalls the streams of others for more than one chunk.
 *
 * Requests are shared between their HTTP thread and the scheduler; each side
 * drops its share when done (srv_req_release, or the request's end) and the
 * last one frees it. */
#ifndef DSV_SERVER_SCHED_H
#define DSV_SERVER_SCHED_H

#include <pthread.h>
#include <stdint.h>

#include "dsv32.h"
#include "dsv32_gen.h"
#include "dsv32_sampler.h"
#include "dsv32_tokenizer.h"
#include "metrics.h"
#include "text/text.h"

typedef struct srv_sched srv_sched;

/* A generated token with its log-probability under the model (log-softmax
 * of the raw logits) and the most likely alternatives, for `logprobs`. */
enum { SRV_TOP_MAX = 20 };
typedef struct srv_tok {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_id[SRV_TOP_MAX];
    float top_logprob[SRV_TOP_MAX];
} srv_tok;

/* A growable array of them. */
typedef struct srv_toks {
    srv_tok *v;
    int n, cap;
} srv_toks;

enum srv_finish {
    SRV_RUNNING = 0,   /* queued or generating */
    SRV_FIN_STOP,      /* EOS or a stop string */
    SRV_FIN_LENGTH,    /* max_tokens (or the context) reached */
    SRV_FIN_ABORT,     /* the server is shutting down */
    SRV_FIN_ERROR,     /* the engine failed; error says why */
};

typedef struct srv_req {
    /* Input: set before srv_sched_submit, read-only afterwards. Owned by the
     * request (freed with it). */
    int32_t *prompt;
    int n_prompt;
    int max_tokens;                 /* >= 1; n_prompt + max_tokens <= context */
    dsv_sampler_params sampling;    /* logit_bias points at bias */
    dsv_logit_bias *bias;
    char **stop;                    /* stop strings */
    int n_stop;
    int logprobs;                   /* -1: none; else alternatives per token (<= SRV_TOP_MAX) */
    double t_submit;                /* dsv_time() when it arrived */
    int reserved;                   /* holds a place from srv_sched_reserve */

    /* Output: written by the scheduler under its lock; read it with
     * srv_req_poll. */
    dsv_buf text;                   /* generated text, stop strings removed */
    srv_toks toks;                  /* generated tokens, when logprobs >= 0 */
    int n_gen;                      /* tokens generated (a final EOS counts) */
    int n_cached;                   /* prompt tokens taken from the prefix cache */
    int finish;                     /* enum srv_finish */
    char error[256];

    /* Scheduler's bookkeeping. */
    int cancel;                     /* the client is gone */
    int owners;                     /* 2 while both sides hold it */
    int queued;
    pthread_cond_t cv;
    struct srv_req *next;           /* queue link */
} srv_req;

/* A new, zeroed request (NULL when out of memory). */
srv_req *srv_req_new(void);
/* Frees a request that was never submitted (a submitted one is freed by
 * srv_req_release). NULL is a no-op. */
void srv_req_free(srv_req *r);

typedef struct srv_sched_params {
    int n_batch;      /* tokens per step (<= the context's n_batch) */
    int max_queue;    /* requests waiting for a slot before 429 */
} srv_sched_params;

/* Starts the scheduler thread over ctx (its n_seq slots and page pool) for
 * a model of configuration cfg; generation follows include/dsv32_gen.h
 * (EOS, banned ids, prompt chunks), as in the CLI. */
int srv_sched_init(srv_sched **out, dsv_context *ctx, const dsv_config *cfg, const dsv_tokenizer *tok,
                   srv_metrics *metrics, const srv_sched_params *p);
/* Ends every queued and running request (SRV_FIN_ABORT), refuses new ones
 * and joins the thread. Requests stay readable until released. */
void srv_sched_stop(srv_sched *s);
/* Frees the scheduler; every request must have been released. */
void srv_sched_free(srv_sched *s);

/* Queues r; the caller keeps a share. DSV_ERR_FULL when the queue is full,
 * DSV_ERR_UNSUPPORTED when the server is stopping (r is then not taken). */
int srv_sched_submit(srv_sched *s, srv_req *r);

/* Admission before any parsing: promises a place in the queue to a request
 * not yet parsed, so that a full server spends nothing on it. DSV_OK,
 * DSV_ERR_FULL or DSV_ERR_UNSUPPORTED (stopping). The place is taken by
 * srv_sched_submit of a request with `reserved` set, or handed back with
 * srv_sched_unreserve. */
int srv_sched_reserve(srv_sched *s);
void srv_sched_unreserve(srv_sched *s);

/* The state of a request as the HTTP side sees it. */
typedef struct srv_status {
    int finish, n_gen, n_cached;
    char error[256];
} srv_status;

/* Waits up to `timeout` seconds for r to have text past *seen or to finish,
 * then appends the new text to out, advances *seen and fills *st. When toks
 * is not NULL, the tokens past toks->n are appended to it too. */
void srv_req_poll(srv_sched *s, srv_req *r, size_t *seen, dsv_buf *out, srv_toks *toks, double timeout,
                  srv_status *st);

/* Appends n tokens to a; returns 0, or -1 when out of memory. */
int srv_toks_add(srv_toks *a, const srv_tok *t, int n);

/* The HTTP side is done with r: a request still queued or running is
 * cancelled at once (its slot and pages are freed before the next step). */
void srv_req_release(srv_sched *s, srv_req *r);

/* The latest snapshot of slots, queue and KV pool. */
void srv_sched_gauges(srv_sched *s, srv_gauges *g);

/* Largest prompt + generation a request can ever get pages for. */
int srv_sched_max_tokens(const srv_sched *s);

#endif
