/* server_util.h: what the black-box server tests share: the
 * real dsv32 binary started as a server on 127.0.0.1, and a small blocking
 * HTTP/1.1 client (one request per connection, chunked bodies decoded). */
#ifndef DSV_TEST_SERVER_UTIL_H
#define DSV_TEST_SERVER_UTIL_H

#include <stddef.h>
#include <sys/types.h>

#include "fixture.h"

/* A running `dsv32 serve`. */
typedef struct server {
    pid_t pid;
    int port;
    char log[512];   /* its stderr */
} server;

/* Starts DSV32_BIN serve -m model --port 0 ARGS and waits for it to listen
 * (fails the test if it does not). */
void server_start(server *s, const char *model, const char *args);
/* The same, started through a launcher ("mpirun -np 2"; NULL: none). */
void server_start_with(server *s, const char *launcher, const char *model, const char *args);
/* SIGTERM and wait; returns its exit status (128 + signal if killed). */
int server_stop(server *s);

typedef struct http_resp {
    int status;
    char *head;       /* status line and headers */
    char *body;       /* NUL-terminated */
    size_t len;
} http_resp;

/* One request on a new connection; body may be NULL. Returns 0, or -1 when
 * the connection failed (then status is 0). */
int http(int port, const char *method, const char *path, const char *headers, const char *body, http_resp *r);
/* Sends a raw request (anything at all) and reads the answer to EOF. */
int http_raw(int port, const char *request, size_t len, http_resp *r);
void http_free(http_resp *r);
/* The value of a response header (case-insensitive), copied into buf. */
const char *http_header(const http_resp *r, const char *name, char *buf, size_t cap);

/* Sends a POST of JSON on a new connection and returns the socket, to read
 * (part of) the answer by hand; -1 on failure. */
int http_open(int port, const char *path, const char *json);
/* Reads from fd until `needle` has arrived (or EOF / 60 s); 1 if it did. */
int http_read_until(int fd, const char *needle);
/* Writes all n bytes to the socket fd (no SIGPIPE); -1 if it fails. */
int http_send_all(int fd, const char *p, size_t n);
/* Reads fd to EOF (or reset); returns a NUL-terminated buffer (caller
 * frees), its length in *len unless len is NULL. */
char *http_read_all(int fd, size_t *len);

/* A POST of JSON; returns the status (0 when the connection failed). */
int post(int port, const char *path, const char *json, http_resp *r);

/* A streamed answer, SSE events parsed: the concatenated content (or
 * completion text), reasoning and tool-call arguments, the finish reason and
 * usage, and whether [DONE] came last. */
typedef struct sse_result {
    char *content, *reasoning, *tool_args, *tool_name;
    char *logprobs;   /* the generated tokens' logprobs, "%.9g" joined by ',' */
    char finish[32];
    int prompt_tokens, completion_tokens, cached_tokens;
    int events, done, error;
} sse_result;
void sse_parse(const char *body, sse_result *out);
void sse_free(sse_result *r);

/* A whole answer's fields: content (or completion text), reasoning, finish
 * reason and usage. */
typedef struct whole_result {
    char *content, *reasoning, *tool_args, *tool_name;
    char *logprobs;
    char finish[32];
    int prompt_tokens, completion_tokens, cached_tokens;
} whole_result;
int whole_parse(const char *body, whole_result *out);
void whole_free(whole_result *r);

/* The value of a Prometheus sample ("name" or "name{labels}"), -1 when absent. */
double metric(int port, const char *sample);

#endif
