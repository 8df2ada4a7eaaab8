/* sched.c: the scheduler thread (see sched.h).
 *
 * A step: reap cancelled requests, admit queued ones, build one batch
 * (a token for each generating request, then prompt chunks), run
 * dsv_forward without holding the lock, hand each request's generation slot
 * its logits (include/dsv32_gen.h: sampling, EOS, stop strings and text are
 * the generation module's, the same as the CLI's), then publish the new
 * text under the lock.
 *
 * KV pages. A request is admitted only when the pool can cover its worst
 * case, ceil((prompt + max_tokens - 1) / 64) pages less those it reuses
 * from the prefix cache, on top of what running requests may still take
 * (their reservations); cached pages nobody uses are evicted to make room.
 * So a running request never runs out of pages and never needs to be
 * preempted, and one that cannot get them waits in the queue.
 *
 * Exactness of the prefix cache. The generation module's chunking rule
 * makes a prompt token's numbers a function of its position alone (see
 * include/dsv32_gen.h); and a cache hit reuses at most the pages that leave
 * two prompt tokens to compute. Then every cached page holds what a miss
 * would compute, and an answer with a hit is bit for bit the answer without. Only pages
 * made entirely of prompt tokens are cached: generated tokens are decoded
 * one at a time, with the other maths. */
#include "sched.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prefix.h"
#include "base/util.h"

struct slot {
    srv_req *r;             /* NULL when free */
    dsv_gen_slot *gen;      /* sampler, stop strings, text, position */
    int n_attached;         /* pages from the prefix cache */
    int need_pages;         /* pages it may take from the pool in all */
    int n_inserted;         /* prompt pages given to the prefix cache */
    int finish;
    char error[256];
    dsv_buf out;            /* text of this step, published under the lock */
    srv_toks toks;          /* tokens of this step (logprobs), likewise */
    double t_last;
};

struct srv_sched {
    dsv_context *ctx;
    const dsv_tokenizer *tok;
    srv_metrics *metrics;
    srv_prefix *prefix;
    dsv_gen *gen;           /* the rules of generation */
    int n_slots, n_batch, n_ctx, vocab, max_queue;
    int64_t n_pages;
    struct slot *slots;
    int *run;               /* running slots, in admission order */
    int n_run;
    dsv_batch_entry *ent;   /* [n_slots] */
    int *ent_slot;          /* [n_slots]: the slot of each entry */
    dsv_gen_slot **order;   /* [n_slots]: running slots' generation, in admission order */
    float *logits;          /* [n_slots][vocab] */
    int32_t *attach;        /* [pages per sequence] */

    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    srv_req *q_head, *q_tail;
    int n_queued;
    int n_reserved;         /* places promised by srv_sched_reserve, not yet submitted */
    int stopping;
    srv_gauges gauges;
};

srv_req *srv_req_new(void) {
    srv_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &a);
    pthread_condattr_destroy(&a);
    r->sampling = dsv_sampler_default_params();
    return r;
}

void srv_req_free(srv_req *r) {
    if (!r) return;
    free(r->prompt);
    free(r->bias);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    dsv_buf_free(&r->text);
    free(r->toks.v);
    pthread_cond_destroy(&r->cv);
    free(r);
}

int srv_toks_add(srv_toks *a, const srv_tok *t, int n) {
    if (a->n + n > a->cap) {
        int cap = a->cap ? a->cap : 16;
        while (cap < a->n + n) cap *= 2;
        srv_tok *v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    memcpy(a->v + a->n, t, (size_t)n * sizeof *t);
    a->n += n;
    return 0;
}

/* Drops one share; the caller holds the lock. */
static void req_drop(srv_req *r) {
    DSV_ASSERT(r->owners > 0);
    if (--r->owners == 0) srv_req_free(r);
}

/* ---- Pages ---------------------------------------------------------------- */

/* Pages the running requests may still take from the free list. */
static int64_t reserved(srv_sched *s) {
    int64_t sum = 0;
    for (int i = 0; i < s->n_run; i++) {
        const struct slot *sl = &s->slots[s->run[i]];
        const int32_t *pages;
        int n;
        dsv_seq_pages(s->ctx, s->run[i], &pages, &n);
        sum += sl->need_pages - (n - sl->n_attached);
    }
    return sum;
}

static int64_t available(srv_sched *s) {
    int64_t nfree;
    dsv_kv_stats(s->ctx, NULL, &nfree);
    return nfree - reserved(s);
}

static void publish_gauges(srv_sched *s) {
    int64_t used, nfree;
    dsv_kv_stats(s->ctx, &used, &nfree);
    int64_t cached = srv_prefix_idle_pages(s->prefix);
    s->gauges = (srv_gauges){
        .running = s->n_run, .waiting = s->n_queued, .kv_used = used - cached, .kv_cached = cached,
        .kv_free = nfree, .kv_total = s->n_pages, .prefix_entries = srv_prefix_entries(s->prefix),
    };
}

/* ---- Slots ---------------------------------------------------------------- */

static void slot_fail(struct slot *sl, const char *what) {
    sl->finish = SRV_FIN_ERROR;
    snprintf(sl->error, sizeof sl->error, "%s: %s", what, dsv_errmsg());
}

/* Starts r in slot i on the k cached pages already attached to it. */
static void slot_start(srv_sched *s, int i, srv_req *r, int k, int need) {
    struct slot *sl = &s->slots[i];
    *sl = (struct slot){.r = r, .n_attached = k, .need_pages = need, .t_last = r->t_submit};
    r->queued = 0;
    r->n_cached = k * DSV_PAGE;
    s->run[s->n_run++] = i;
    dsv_gen_slot_params p = dsv_gen_slot_default_params();
    p.sampling = r->sampling;
    p.stop = (const char *const *)r->stop;
    p.n_stop = r->n_stop;
    p.max_tokens = r->max_tokens;
    if (dsv_gen_slot_init(&sl->gen, s->gen, i, r->prompt, r->n_prompt, k * DSV_PAGE, &p)) slot_fail(sl, "generation");
    srv_metrics_prompt(s->metrics, r->n_prompt, r->n_cached);
}

/* Ends the request in slot i: sequence and pages back, its share dropped.
 * The caller holds the lock. */
static void slot_end(srv_sched *s, int i) {
    struct slot *sl = &s->slots[i];
    dsv_seq_reset(s->ctx, i);
    dsv_gen_slot_free(sl->gen);
    sl->gen = NULL;
    dsv_buf_free(&sl->out);
    free(sl->toks.v);
    req_drop(sl->r);
    sl->r = NULL;
    int j = 0;
    while (s->run[j] != i) j++;
    memmove(s->run + j, s->run + j + 1, (size_t)(s->n_run - j - 1) * sizeof *s->run);
    s->n_run--;
}

/* Admits queued requests, oldest first, while a slot and pages are there. */
static void admit(srv_sched *s) {
    while (s->q_head && s->n_run < s->n_slots) {
        srv_req *r = s->q_head;
        int i = 0;
        while (s->slots[i].r) i++;
        /* Reuse leaves >= 2 prompt tokens to compute (see the file comment). */
        int max_reuse = r->n_prompt >= 2 ? (r->n_prompt - 2) / DSV_PAGE : 0;
        int k = srv_prefix_lookup(s->prefix, r->prompt, max_reuse, s->attach);
        if (k && dsv_seq_attach(s->ctx, i, s->attach, k)) k = 0;
        int need = (r->n_prompt + r->max_tokens - 1 + DSV_PAGE - 1) / DSV_PAGE - k;
        int64_t avail = available(s);
        if (need > avail) avail += srv_prefix_evict(s->prefix, need - avail);
        if (need > avail) {
            dsv_seq_reset(s->ctx, i);
            return; /* wait for running requests to give pages back */
        }
        s->q_head = r->next;
        if (!s->q_head) s->q_tail = NULL;
        s->n_queued--;
        slot_start(s, i, r, k, need);
    }
}

/* Requests whose client left: their slots and pages go back now. */
static void reap(srv_sched *s) {
    for (int j = s->n_run - 1; j >= 0; j--) {
        struct slot *sl = &s->slots[s->run[j]];
        if (sl->r->cancel) slot_end(s, s->run[j]);
    }
}

/* ---- A step --------------------------------------------------------------- */

/* One batch: a token for each generating request, then prompt chunks,
 * oldest request first (the generation module's rule). */
static int build_batch(srv_sched *s) {
    for (int j = 0; j < s->n_run; j++) {
        struct slot *sl = &s->slots[s->run[j]];
        s->order[j] = sl->finish ? NULL : sl->gen;
    }
    int n = dsv_gen_batch(s->order, s->n_run, s->n_batch, s->ent, s->ent_slot);
    for (int e = 0; e < n; e++) s->ent_slot[e] = s->run[s->ent_slot[e]];
    return n;
}

/* The model's log-probabilities (log-softmax of the raw logits, before any
 * sampling setting) of token x and of the k likeliest tokens that have
 * text, ties to the lower id. */
static void logprobs(const srv_sched *s, const float *logits, int32_t x, int k, srv_tok *t) {
    float mx = logits[0];
    for (int i = 1; i < s->vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < s->vocab; i++) sum += exp((double)logits[i] - mx);
    const double lse = mx + log(sum);
    *t = (srv_tok){.id = x, .logprob = (float)(logits[x] - lse)};
    for (int i = 0; i < s->vocab; i++) {
        if (!dsv_token_piece(s->tok, i, NULL)) continue;
        int j = t->n_top;
        while (j > 0 && logits[t->top_id[j - 1]] < logits[i]) j--;
        if (j >= k) continue;
        int last = t->n_top < k ? t->n_top++ : k - 1;
        memmove(t->top_id + j + 1, t->top_id + j, (size_t)(last - j) * sizeof *t->top_id);
        t->top_id[j] = i;
    }
    for (int j = 0; j < t->n_top; j++) t->top_logprob[j] = (float)(logits[t->top_id[j]] - lse);
}

static void accept_token(srv_sched *s, struct slot *sl, const float *logits) {
    dsv_gen_token t;
    if (dsv_gen_slot_accept(sl->gen, logits, &t)) {
        slot_fail(sl, "generation");
        return;
    }
    if (sl->r->logprobs >= 0) {
        srv_tok lp;
        logprobs(s, logits, t.id, sl->r->logprobs, &lp);
        if (srv_toks_add(&sl->toks, &lp, 1)) {
            sl->finish = SRV_FIN_ERROR;
            snprintf(sl->error, sizeof sl->error, "out of memory");
            return;
        }
    }
    double now = dsv_time();
    if (dsv_gen_slot_n_gen(sl->gen) == 1) srv_metrics_ttft(s->metrics, now - sl->r->t_submit);
    else srv_metrics_itl(s->metrics, now - sl->t_last);
    sl->t_last = now;
    if (dsv_buf_add(&sl->out, t.text, t.len)) {
        sl->finish = SRV_FIN_ERROR;
        snprintf(sl->error, sizeof sl->error, "out of memory");
        return;
    }
    if (t.finish == DSV_GEN_EOS || t.finish == DSV_GEN_STOP) sl->finish = SRV_FIN_STOP;
    else if (t.finish == DSV_GEN_LENGTH) sl->finish = SRV_FIN_LENGTH;
}

/* Runs one batch and turns its logits into tokens and text. */
static void step(srv_sched *s, int n) {
    int st = dsv_forward(s->ctx, s->ent, n, s->logits);
    int row = 0, generated = 0;
    for (int e = 0; e < n; e++) {
        struct slot *sl = &s->slots[s->ent_slot[e]];
        if (st) { slot_fail(sl, "forward"); continue; }
        if (dsv_gen_slot_fed(sl->gen, s->ent[e].n_tokens)) { slot_fail(sl, "generation"); continue; }
        /* Prompt pages now complete go to the prefix cache. */
        int full = DSV_MIN(dsv_gen_slot_n_past(sl->gen), sl->r->n_prompt) / DSV_PAGE;
        if (full > sl->n_inserted) {
            const int32_t *pages;
            int np;
            dsv_seq_pages(s->ctx, s->ent_slot[e], &pages, &np);
            srv_prefix_insert(s->prefix, sl->r->prompt, pages, full);
            sl->n_inserted = full;
        }
        if (s->ent[e].logits == DSV_LOGITS_NONE) continue;
        accept_token(s, sl, s->logits + (size_t)row++ * s->vocab);
        generated++;
    }
    if (generated) srv_metrics_generated(s->metrics, generated);
}

/* Moves each slot's new text and state into its request; ends finished
 * ones. The caller holds the lock. */
static void publish(srv_sched *s) {
    for (int j = s->n_run - 1; j >= 0; j--) {
        int i = s->run[j];
        struct slot *sl = &s->slots[i];
        srv_req *r = sl->r;
        int n_gen = sl->gen ? dsv_gen_slot_n_gen(sl->gen) : 0;
        if (!sl->out.len && !sl->finish && r->n_gen == n_gen) continue;
        dsv_buf_add(&r->text, sl->out.data ? sl->out.data : "", sl->out.len);
        dsv_buf_clear(&sl->out);
        if (sl->toks.n && srv_toks_add(&r->toks, sl->toks.v, sl->toks.n)) {
            sl->finish = SRV_FIN_ERROR;
            snprintf(sl->error, sizeof sl->error, "out of memory");
        }
        sl->toks.n = 0;
        r->n_gen = n_gen;
        if (sl->finish) {
            r->finish = sl->finish;
            memcpy(r->error, sl->error, sizeof r->error);
        }
        pthread_cond_broadcast(&r->cv);
        if (sl->finish) slot_end(s, i);
    }
}

static void finish_all(srv_sched *s, int finish, const char *why) {
    while (s->n_run) {
        struct slot *sl = &s->slots[s->run[0]];
        sl->r->finish = finish;
        snprintf(sl->r->error, sizeof sl->r->error, "%s", why);
        pthread_cond_broadcast(&sl->r->cv);
        slot_end(s, s->run[0]);
    }
    while (s->q_head) {
        srv_req *r = s->q_head;
        s->q_head = r->next;
        r->queued = 0;
        r->finish = finish;
        snprintf(r->error, sizeof r->error, "%s", why);
        pthread_cond_broadcast(&r->cv);
        req_drop(r);
    }
    s->q_tail = NULL;
    s->n_queued = 0;
}

static void *sched_main(void *arg) {
    srv_sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        reap(s);
        admit(s);
        publish(s); /* requests that failed to start end here */
        publish_gauges(s);
        if (!s->n_run) {
            pthread_cond_wait(&s->wake, &s->mu);
            continue;
        }
        int n = build_batch(s);
        pthread_mutex_unlock(&s->mu);
        /* Every running request either decodes or has a prompt chunk: the
         * batch holds at least the oldest prompt's next chunk. */
        DSV_ASSERT(n > 0);
        step(s, n);
        pthread_mutex_lock(&s->mu);
        publish(s);
    }
    finish_all(s, SRV_FIN_ABORT, "the server is shutting down");
    publish_gauges(s);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- Public --------------------------------------------------------------- */

int srv_sched_init(srv_sched **out, dsv_context *ctx, const dsv_config *cfg, const dsv_tokenizer *tok,
                   srv_metrics *metrics, const srv_sched_params *p) {
    const dsv_context_params *cp = dsv_context_get_params(ctx);
    srv_sched *s = calloc(1, sizeof *s);
    if (!s) return dsv_error(DSV_ERR_NOMEM, "scheduler: out of memory");
    s->ctx = ctx;
    s->tok = tok;
    s->metrics = metrics;
    s->n_slots = cp->n_seq;
    s->n_ctx = cp->n_ctx;
    s->n_batch = DSV_MIN(p->n_batch, cp->n_batch);
    s->max_queue = p->max_queue;
    s->vocab = cfg->vocab_size;
    int64_t used, nfree;
    dsv_kv_stats(ctx, &used, &nfree);
    s->n_pages = used + nfree;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    int st = DSV_OK;
    if (s->n_batch < s->n_slots + 2)
        st = dsv_error(DSV_ERR_ARG, "scheduler: a step of %d tokens cannot serve %d slots (needs %d)", s->n_batch,
                       s->n_slots, s->n_slots + 2);
    if (!st) {
        s->slots = calloc((size_t)s->n_slots, sizeof *s->slots);
        s->run = calloc((size_t)s->n_slots, sizeof *s->run);
        s->ent = calloc((size_t)s->n_slots, sizeof *s->ent);
        s->ent_slot = calloc((size_t)s->n_slots, sizeof *s->ent_slot);
        s->order = calloc((size_t)s->n_slots, sizeof *s->order);
        s->logits = malloc((size_t)s->n_slots * (size_t)s->vocab * sizeof *s->logits);
        s->attach = malloc((size_t)(s->n_ctx / DSV_PAGE + 1) * sizeof *s->attach);
        if (!s->slots || !s->run || !s->ent || !s->ent_slot || !s->order || !s->logits || !s->attach)
            st = dsv_error(DSV_ERR_NOMEM, "scheduler: out of memory");
    }
    if (!st) st = srv_prefix_init(&s->prefix, ctx);
    if (!st) st = dsv_gen_open(&s->gen, ctx, cfg, tok);
    if (!st) {
        publish_gauges(s);
        if (pthread_create(&s->thread, NULL, sched_main, s))
            st = dsv_error(DSV_ERR_NOMEM, "scheduler: cannot start its thread");
        else
            s->started = 1;
    }
    if (st) {
        srv_sched_free(s);
        return st;
    }
    *out = s;
    return DSV_OK;
}

void srv_sched_stop(srv_sched *s) {
    if (!s || !s->started) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    s->started = 0;
}

void srv_sched_free(srv_sched *s) {
    if (!s) return;
    srv_sched_stop(s);
    srv_prefix_free(s->prefix);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    free(s->slots);
    free(s->run);
    free(s->ent);
    free(s->ent_slot);
    free(s->order);
    free(s->logits);
    free(s->attach);
    dsv_gen_close(s->gen);
    free(s);
}

/* max_queue counts requests waiting beyond the free slots; places reserved
 * for requests being parsed count as waiting. Under s->mu. */
static int queue_full(const srv_sched *s) {
    return s->n_queued + s->n_reserved >= s->max_queue + (s->n_slots - s->n_run);
}

int srv_sched_submit(srv_sched *s, srv_req *r) {
    pthread_mutex_lock(&s->mu);
    int st = DSV_OK, had_place = r->reserved;
    if (r->reserved) {
        s->n_reserved--;
        r->reserved = 0;
    }
    if (s->stopping) st = DSV_ERR_UNSUPPORTED;
    else if (!had_place && queue_full(s)) st = DSV_ERR_FULL;
    if (!st) {
        r->owners = 2;
        r->queued = 1;
        r->next = NULL;
        if (s->q_tail) s->q_tail->next = r; else s->q_head = r;
        s->q_tail = r;
        s->n_queued++;
        s->gauges.waiting = s->n_queued;
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

void srv_req_poll(srv_sched *s, srv_req *r, size_t *seen, dsv_buf *out, srv_toks *toks, double timeout,
                  srv_status *st) {
    pthread_mutex_lock(&s->mu);
    if (r->text.len == *seen && !r->finish && timeout > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long ns = ts.tv_nsec + (long)((timeout - (long)timeout) * 1e9);
        ts.tv_sec += (time_t)timeout + ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        while (r->text.len == *seen && !r->finish && pthread_cond_timedwait(&r->cv, &s->mu, &ts) != ETIMEDOUT) {}
    }
    if (r->text.len > *seen) {
        dsv_buf_add(out, r->text.data + *seen, r->text.len - *seen);
        *seen = r->text.len;
    }
    if (toks && r->toks.n > toks->n && srv_toks_add(toks, r->toks.v + toks->n, r->toks.n - toks->n))
        out->failed = 1;
    st->finish = r->finish;
    st->n_gen = r->n_gen;
    st->n_cached = r->n_cached;
    memcpy(st->error, r->error, sizeof st->error);
    pthread_mutex_unlock(&s->mu);
}

void srv_req_release(srv_sched *s, srv_req *r) {
    pthread_mutex_lock(&s->mu);
    if (r->queued) {
        /* Never reached the engine: take it out of the queue now. */
        srv_req **link = &s->q_head, *prev = NULL;
        while (*link != r) { prev = *link; link = &(*link)->next; }
        *link = r->next;
        if (s->q_tail == r) s->q_tail = prev;
        s->n_queued--;
        r->queued = 0;
        req_drop(r);
    } else if (!r->finish) {
        r->cancel = 1;
        pthread_cond_signal(&s->wake);
    }
    req_drop(r);
    pthread_mutex_unlock(&s->mu);
}

void srv_sched_gauges(srv_sched *s, srv_gauges *g) {
    pthread_mutex_lock(&s->mu);
    *g = s->gauges;
    pthread_mutex_unlock(&s->mu);
}

int srv_sched_max_tokens(const srv_sched *s) {
    int64_t pool = s->n_pages * DSV_PAGE;
    return pool < s->n_ctx ? (int)pool : s->n_ctx;
}

int srv_sched_reserve(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    int st = s->stopping ? DSV_ERR_UNSUPPORTED : queue_full(s) ? DSV_ERR_FULL : DSV_OK;
    if (!st) s->n_reserved++;
    pthread_mutex_unlock(&s->mu);
    return st;
}

void srv_sched_unreserve(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->n_reserved--;
    pthread_mutex_unlock(&s->mu);
}
