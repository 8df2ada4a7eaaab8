/* metrics.c: counters and fixed-bucket histograms behind one mutex (see
 * metrics.h). Requests are counted by (endpoint, status) pairs in a small
 * table: the endpoints are the server's routes and the statuses the few it
 * sends, so the table never grows past a few dozen rows. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_PAIRS = 128, MAX_BUCKETS = 16 };

typedef struct histogram {
    const char *name, *help;
    const double *le;          /* upper bounds, ascending; +Inf is implicit */
    int n_le;
    uint64_t count[MAX_BUCKETS + 1];
    uint64_t total;
    double sum;
} histogram;

static const double ttft_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double itl_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

struct srv_metrics {
    pthread_mutex_t mu;
    struct { const char *endpoint; int status; uint64_t n; } req[MAX_PAIRS];
    int n_req;
    uint64_t prompt_tokens, prompt_cached, prefix_queries, prefix_hits, generated;
    uint64_t cut;
    histogram ttft, itl;
};

int srv_metrics_init(srv_metrics **out) {
    srv_metrics *m = calloc(1, sizeof *m);
    if (!m) return -1;
    pthread_mutex_init(&m->mu, NULL);
    m->ttft = (histogram){.name = "dsv32_time_to_first_token_seconds",
                          .help = "Time from a request's arrival to its first generated token.",
                          .le = ttft_le, .n_le = (int)(sizeof ttft_le / sizeof *ttft_le)};
    m->itl = (histogram){.name = "dsv32_time_per_output_token_seconds",
                         .help = "Time between two consecutive generated tokens of a request.",
                         .le = itl_le, .n_le = (int)(sizeof itl_le / sizeof *itl_le)};
    *out = m;
    return 0;
}

void srv_metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void srv_metrics_request(srv_metrics *m, const char *endpoint, int status) {
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < m->n_req && (m->req[i].status != status || strcmp(m->req[i].endpoint, endpoint))) i++;
    if (i == m->n_req && i < MAX_PAIRS) {
        m->req[i].endpoint = endpoint;
        m->req[i].status = status;
        m->req[i].n = 0;
        m->n_req++;
    }
    if (i < MAX_PAIRS) m->req[i].n++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_prompt(srv_metrics *m, int64_t tokens, int64_t cached) {
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += (uint64_t)tokens;
    m->prompt_cached += (uint64_t)cached;
    m->prefix_queries++;
    m->prefix_hits += cached > 0;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_cut(srv_metrics *m) {
    pthread_mutex_lock(&m->mu);
    m->cut++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_generated(srv_metrics *m, int64_t tokens) {
    pthread_mutex_lock(&m->mu);
    m->generated += (uint64_t)tokens;
    pthread_mutex_unlock(&m->mu);
}

static void observe(srv_metrics *m, histogram *h, double s) {
    pthread_mutex_lock(&m->mu);
    int b = 0;
    while (b < h->n_le && s > h->le[b]) b++;
    h->count[b]++;
    h->total++;
    h->sum += s;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_ttft(srv_metrics *m, double s) { observe(m, &m->ttft, s); }
void srv_metrics_itl(srv_metrics *m, double s) { observe(m, &m->itl, s); }

static void addf(dsv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(dsv_buf *b, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) dsv_buf_add(b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void head(dsv_buf *b, const char *name, const char *type, const char *help) {
    addf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void scalar(dsv_buf *b, const char *name, const char *type, const char *help, double v) {
    head(b, name, type, help);
    addf(b, "%s %.17g\n", name, v);
}

static void render_histogram(dsv_buf *b, const histogram *h) {
    head(b, h->name, "histogram", h->help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_le; i++) {
        cum += h->count[i];
        addf(b, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->le[i], (unsigned long long)cum);
    }
    addf(b, "%s_bucket{le=\"+Inf\"} %llu\n", h->name, (unsigned long long)h->total);
    addf(b, "%s_sum %.17g\n%s_count %llu\n", h->name, h->sum, h->name, (unsigned long long)h->total);
}

void srv_metrics_render(srv_metrics *m, const srv_gauges *g, dsv_buf *out) {
    pthread_mutex_lock(&m->mu);
    head(out, "dsv32_requests_total", "counter", "HTTP requests answered, by endpoint and status code.");
    for (int i = 0; i < m->n_req; i++)
        addf(out, "dsv32_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", m->req[i].endpoint,
             m->req[i].status, (unsigned long long)m->req[i].n);
    scalar(out, "dsv32_prompt_tokens_total", "counter", "Prompt tokens of admitted requests, cached ones included.",
           (double)m->prompt_tokens);
    scalar(out, "dsv32_generation_tokens_total", "counter", "Tokens generated.", (double)m->generated);
    scalar(out, "dsv32_prefix_cache_queries_total", "counter", "Admitted requests that looked up the prefix cache.",
           (double)m->prefix_queries);
    scalar(out, "dsv32_prefix_cache_hits_total", "counter", "Admitted requests that reused cached KV pages.",
           (double)m->prefix_hits);
    scalar(out, "dsv32_prefix_cache_hit_tokens_total", "counter", "Prompt tokens taken from the prefix cache.",
           (double)m->prompt_cached);
    scalar(out, "dsv32_connections_cut_total", "counter",
           "Connections closed for missing the header or body deadline (--header-timeout, --body-timeout).",
           (double)m->cut);
    render_histogram(out, &m->ttft);
    render_histogram(out, &m->itl);
    pthread_mutex_unlock(&m->mu);
    scalar(out, "dsv32_requests_running", "gauge", "Requests holding a slot (prefilling or generating).",
           (double)g->running);
    scalar(out, "dsv32_requests_waiting", "gauge", "Requests queued for a slot or KV pages.", (double)g->waiting);
    scalar(out, "dsv32_kv_pages_used", "gauge", "KV pages held by running requests.", (double)g->kv_used);
    scalar(out, "dsv32_kv_pages_cached", "gauge", "KV pages held only by the prefix cache (evictable).",
           (double)g->kv_cached);
    scalar(out, "dsv32_kv_pages_free", "gauge", "KV pages free.", (double)g->kv_free);
    scalar(out, "dsv32_kv_pages_total", "gauge", "KV pages in the pool (--kv-memory).", (double)g->kv_total);
    scalar(out, "dsv32_prefix_cache_entries", "gauge", "Pages the prefix cache indexes.", (double)g->prefix_entries);
    scalar(out, "dsv32_connections_open", "gauge", "Open HTTP connections (--max-conns).", (double)g->connections);
    scalar(out, "dsv32_request_body_bytes", "gauge", "Bytes of request bodies held (--body-budget).",
           (double)g->body_bytes);
}
