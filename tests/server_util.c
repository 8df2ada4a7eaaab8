/* server_util.c: fixtures, server process and HTTP client for the server
 * tests (see server_util.h). */
#include "server_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "format/safetensors.h"
#include "test.h"

/* ---- Server process ------------------------------------------------------- */

void server_start(server *s, const char *model, const char *args) { server_start_with(s, NULL, model, args); }

void server_start_with(server *s, const char *launcher, const char *model, const char *args) {
    const char *bin = test_bin();
    static int n;
    snprintf(s->log, sizeof s->log, "%s/server%d.log", test_tmpdir(), n++);
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t parent = getpid();
    s->pid = fork();
    REQUIRE(s->pid >= 0);
    if (s->pid == 0) {
        /* Never outlive the test, whatever happens to it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        int log = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (log >= 0) dup2(log, 2);
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "exec %s '%s' serve -m '%s' --port 0 %s", launcher ? launcher : "", bin, model,
                 args ? args : "");
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[512];
    size_t len = 0;
    double deadline = test_now() + 120;
    s->port = 0;
    while (!s->port && test_now() < deadline) {
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(fds[0], line + len, sizeof line - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
        line[len] = 0;
        const char *at = strstr(line, "127.0.0.1:");
        if (at && strchr(at, '\n')) s->port = atoi(at + 10);
    }
    close(fds[0]);
    if (!s->port) {
        char *log = test_read_file(s->log, NULL);
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        REQUIREF(0, "the server did not start: %s", log ? log : "(no log)");
    }
}

int server_stop(server *s) {
    kill(s->pid, SIGTERM);
    int st = 0;
    double deadline = test_now() + 60;
    for (;;) {
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) break;
        if (test_now() > deadline) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            fprintf(stderr, "    the server did not stop within 60 s\n");
            break;
        }
        usleep(10000);
    }
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    if (code) {
        char *log = test_read_file(s->log, NULL);
        fprintf(stderr, "    server log:\n%s\n", log ? log : "(none)");
        free(log);
    }
    return code;
}

/* ---- HTTP client ---------------------------------------------------------- */

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 300};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

int http_send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Decodes a chunked body in place; returns its length. */
static size_t dechunk(char *b, size_t n) {
    size_t in = 0, out = 0;
    while (in < n) {
        char *end;
        unsigned long len = strtoul(b + in, &end, 16);
        char *crlf = strstr(end, "\r\n");
        if (!crlf || len == 0) break;
        in = (size_t)(crlf + 2 - b);
        if (in + len > n) len = n - in;
        memmove(b + out, b + in, len);
        out += len;
        in += len + 2;
    }
    b[out] = 0;
    return out;
}

char *http_read_all(int fd, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (cap - n < 4096) buf = realloc(buf, cap *= 2);
        ssize_t got = recv(fd, buf + n, cap - n - 1, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        n += (size_t)got;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int http_raw(int port, const char *request, size_t len, http_resp *r) {
    memset(r, 0, sizeof *r);
    int fd = dial(port);
    if (fd < 0) return -1;
    if (http_send_all(fd, request, len)) {
        close(fd);
        return -1;
    }
    size_t n;
    char *buf = http_read_all(fd, &n);
    close(fd);
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &r->status) != 1) {
        free(buf);
        r->status = 0;
        return -1;
    }
    size_t hl = (size_t)(sep - buf);
    r->head = strndup(buf, hl);
    r->len = n - hl - 4;
    r->body = malloc(r->len + 1);
    memcpy(r->body, sep + 4, r->len);
    r->body[r->len] = 0;
    free(buf);
    char te[64];
    if (http_header(r, "Transfer-Encoding", te, sizeof te) && strstr(te, "chunked")) r->len = dechunk(r->body, r->len);
    return 0;
}

int http(int port, const char *method, const char *path, const char *headers, const char *body, http_resp *r) {
    size_t blen = body ? strlen(body) : 0;
    size_t cap = blen + 4096;
    char *req = malloc(cap);
    int hn = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method, path,
                      headers ? headers : "");
    if (body) hn += snprintf(req + hn, cap - (size_t)hn, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                             blen);
    hn += snprintf(req + hn, cap - (size_t)hn, "\r\n");
    if (blen) memcpy(req + hn, body, blen);
    int rc = http_raw(port, req, (size_t)hn + blen, r);
    free(req);
    return rc;
}

int http_open(int port, const char *path, const char *json) {
    int fd = dial(port);
    if (fd < 0) return -1;
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n", path, strlen(json));
    if (http_send_all(fd, head, (size_t)hn) || http_send_all(fd, json, strlen(json))) {
        close(fd);
        return -1;
    }
    return fd;
}

int http_read_until(int fd, const char *needle) {
    static char buf[1 << 16];
    size_t n = 0;
    double deadline = test_now() + 60;
    while (test_now() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        if (n == sizeof buf - 1) n = 0;
        ssize_t got = recv(fd, buf + n, sizeof buf - 1 - n, 0);
        if (got <= 0) return 0;
        n += (size_t)got;
        buf[n] = 0;
        if (strstr(buf, needle)) return 1;
    }
    return 0;
}

void http_free(http_resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

const char *http_header(const http_resp *r, const char *name, char *buf, size_t cap) {
    size_t n = strlen(name);
    for (const char *l = r->head ? strstr(r->head, "\r\n") : NULL; l; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (!strncasecmp(h, name, n) && h[n] == ':') {
            h += n + 1;
            while (*h == ' ') h++;
            size_t len = strcspn(h, "\r\n");
            snprintf(buf, cap, "%.*s", (int)len, h);
            return buf;
        }
    }
    return NULL;
}

int post(int port, const char *path, const char *json, http_resp *r) {
    http(port, "POST", path, NULL, json, r);
    return r->status;
}

/* ---- Answers -------------------------------------------------------------- */

static void append(char **dst, const char *s) {
    if (!s) return;
    size_t a = *dst ? strlen(*dst) : 0, b = strlen(s);
    *dst = realloc(*dst, a + b + 1);
    memcpy(*dst + a, s, b + 1);
}

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* cJSON strings end at NUL, so before parsing an answer every escaped NUL
 * (\u0000) becomes U+2400 (\u2400, the same length): texts then compare
 * exactly, NULs included. */
static char *nul_safe(const char *json) {
    char *s = strdup(json);
    for (char *p = s; *p; p++) {
        if (*p != '\\' || !p[1]) continue;
        if (!strncmp(p + 1, "u0000", 5)) memcpy(p + 2, "2400", 4);
        p++; /* skip the escaped character */
    }
    return s;
}

/* Appends the chosen tokens' logprobs of a choice (chat or completion). */
static void logprobs_of(const cJSON *choice, char **dst) {
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(choice, "logprobs");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(lp, "content");
    int chat = list != NULL;
    if (!chat) list = cJSON_GetObjectItemCaseSensitive(lp, "token_logprobs");
    for (const cJSON *t = list ? list->child : NULL; t; t = t->next) {
        const cJSON *v = chat ? cJSON_GetObjectItemCaseSensitive(t, "logprob") : t;
        char num[40];
        snprintf(num, sizeof num, "%s%.9g", *dst && **dst ? "," : "", cJSON_IsNumber(v) ? v->valuedouble : NAN);
        append(dst, num);
    }
}

static void usage_of(const cJSON *u, int *p, int *c, int *cached) {
    if (!cJSON_IsObject(u)) return;
    *p = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")->valueint;
    *c = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valueint;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens_details");
    if (d) *cached = cJSON_GetObjectItemCaseSensitive(d, "cached_tokens")->valueint;
}

void sse_parse(const char *body, sse_result *r) {
    memset(r, 0, sizeof *r);
    r->prompt_tokens = r->completion_tokens = r->cached_tokens = -1;
    for (const char *p = body; p && *p;) {
        const char *end = strstr(p, "\n\n");
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (!strncmp(p, "data: ", 6)) {
            char *raw = strndup(p + 6, n - 6), *data = nul_safe(raw);
            free(raw);
            r->events++;
            if (!strcmp(data, "[DONE]")) {
                r->done = 1;
            } else {
                r->done = 0; /* [DONE] must come last */
                cJSON *j = cJSON_Parse(data);
                if (!j || cJSON_GetObjectItemCaseSensitive(j, "error")) r->error = 1;
                const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
                const cJSON *d = cJSON_GetObjectItemCaseSensitive(ch, "delta");
                append(&r->content, d ? str(d, "content") : str(ch, "text"));
                append(&r->reasoning, str(d, "reasoning_content"));
                const cJSON *tc = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(d, "tool_calls"), 0);
                const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
                append(&r->tool_name, str(fn, "name"));
                append(&r->tool_args, str(fn, "arguments"));
                logprobs_of(ch, &r->logprobs);
                if (str(ch, "finish_reason")) snprintf(r->finish, sizeof r->finish, "%s", str(ch, "finish_reason"));
                usage_of(cJSON_GetObjectItemCaseSensitive(j, "usage"), &r->prompt_tokens, &r->completion_tokens,
                         &r->cached_tokens);
                cJSON_Delete(j);
            }
            free(data);
        }
        p = end ? end + 2 : NULL;
    }
    if (!r->content) append(&r->content, "");
    if (!r->reasoning) append(&r->reasoning, "");
    if (!r->logprobs) append(&r->logprobs, "");
}

void sse_free(sse_result *r) {
    free(r->logprobs);
    free(r->content);
    free(r->reasoning);
    free(r->tool_args);
    free(r->tool_name);
}

int whole_parse(const char *body, whole_result *r) {
    memset(r, 0, sizeof *r);
    r->prompt_tokens = r->completion_tokens = r->cached_tokens = -1;
    char *safe = nul_safe(body);
    cJSON *j = cJSON_Parse(safe);
    free(safe);
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    if (!ch) {
        cJSON_Delete(j);
        return -1;
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, "message");
    append(&r->content, m ? str(m, "content") : str(ch, "text"));
    append(&r->reasoning, str(m, "reasoning_content"));
    const cJSON *tc = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), 0);
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
    append(&r->tool_name, str(fn, "name"));
    append(&r->tool_args, str(fn, "arguments"));
    logprobs_of(ch, &r->logprobs);
    if (!r->content) append(&r->content, "");
    if (!r->reasoning) append(&r->reasoning, "");
    if (!r->logprobs) append(&r->logprobs, "");
    snprintf(r->finish, sizeof r->finish, "%s", str(ch, "finish_reason") ? str(ch, "finish_reason") : "");
    usage_of(cJSON_GetObjectItemCaseSensitive(j, "usage"), &r->prompt_tokens, &r->completion_tokens,
             &r->cached_tokens);
    cJSON_Delete(j);
    return 0;
}

void whole_free(whole_result *r) {
    free(r->logprobs);
    free(r->content);
    free(r->reasoning);
    free(r->tool_args);
    free(r->tool_name);
}

double metric(int port, const char *sample) {
    http_resp r;
    double v = -1;
    if (http(port, "GET", "/metrics", NULL, NULL, &r) == 0 && r.status == 200) {
        size_t n = strlen(sample);
        for (const char *l = r.body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
            if (!strncmp(l, sample, n) && l[n] == ' ') {
                v = strtod(l + n + 1, NULL);
                break;
            }
    }
    http_free(&r);
    return v;
}
