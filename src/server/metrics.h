/* metrics.h: the server's counters and histograms, rendered as Prometheus
 * text for GET /metrics. Any thread may update them (one mutex); gauges that
 * describe the scheduler's state are passed in at render time. */
#ifndef DSV_SERVER_METRICS_H
#define DSV_SERVER_METRICS_H

#include <stdint.h>

#include "text/text.h"

typedef struct srv_metrics srv_metrics;

/* A snapshot of the scheduler, published by it after every step. */
typedef struct srv_gauges {
    int64_t running, waiting;   /* requests generating / queued for a slot */
    int64_t kv_used;            /* KV pages held by running requests */
    int64_t kv_cached;          /* pages held only by the prefix cache (evictable) */
    int64_t kv_free, kv_total;
    int64_t prefix_entries;
    /* The HTTP side's, filled in by it: */
    int64_t connections;        /* open connections */
    int64_t body_bytes;         /* request body bytes held (the body budget's use) */
} srv_gauges;

int srv_metrics_init(srv_metrics **out);
void srv_metrics_free(srv_metrics *m);

/* One answered HTTP request: the route's name and the status code sent. */
void srv_metrics_request(srv_metrics *m, const char *endpoint, int status);
/* Tokens: prompt tokens of an admitted request (cached = those the prefix
 * cache supplied), or generated tokens. */
void srv_metrics_prompt(srv_metrics *m, int64_t tokens, int64_t cached);
void srv_metrics_generated(srv_metrics *m, int64_t tokens);
/* A connection closed by the watchdog for missing its header or body
 * deadline. */
void srv_metrics_cut(srv_metrics *m);
/* Latencies in seconds: time to first token, time between two tokens. */
void srv_metrics_ttft(srv_metrics *m, double s);
void srv_metrics_itl(srv_metrics *m, double s);

/* Appends the Prometheus text exposition (format 0.0.4). */
void srv_metrics_render(srv_metrics *m, const srv_gauges *g, dsv_buf *out);

#endif
