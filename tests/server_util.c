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

#include "safetensors.h"
#include "test.h"

/* ---- Tokenizer ------------------------------------------------------------ */

/* GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves,
 * the others for U+0100 onwards, in order. */
static unsigned byte_char(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (unsigned)b;
    unsigned n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return 256 + n;
}

/* Appends the byte-level spelling of s[0..n), JSON-escaped. */
static void spell(char *out, size_t cap, const char *s, size_t n) {
    size_t o = strlen(out);
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        unsigned cp = byte_char((unsigned char)s[i]);
        if (cp == '"' || cp == '\\') { out[o++] = '\\'; out[o++] = (char)cp; }
        else if (cp < 0x80) out[o++] = (char)cp;
        else { out[o++] = (char)(0xC0 | (cp >> 6)); out[o++] = (char)(0x80 | (cp & 0x3F)); }
    }
    out[o] = 0;
}

/* Words that become single tokens (each prefix a token too). The scripted
 * model speaks in them. */
static const char *const words[] = {
    "Hello", " world", "Greeting", " detected", "Sunny", " and", " warm", "weather", "{\"", "city", "\":", " \"",
    "Paris", "\"}", " the", " is", " in", "What", " What", " weather", " hello", "Hi", " you", " are", " a", " of",
    " to", " it", " that", " for", " on", " with", " as", " be", " this", " at", " or", " from", " by", " not",
    " sparse", " attention", " model", " tokens", " story", " about", " cache", " page", " prefix", " test",
    "Tell", " me", " long", " please", " count", " one", " two", " three", " four", " five", " six",
};

/* Chat markers (ids from MARKER0), as the V3.2-Exp tokenizer has them. */
enum { MARKER0 = 758 };
static const char *const markers[] = {
    "<｜search▁begin｜>", "<｜search▁end｜>", "<think>", "</think>", "<｜fim▁hole｜>", "<｜fim▁begin｜>",
    "<｜fim▁end｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>",
};
enum { N_MARKERS = sizeof markers / sizeof *markers };

/* The BPE part: tokens of merged word prefixes, ids from 259. */
struct vocab {
    char tok[400][64];   /* byte-level spellings (JSON-escaped) */
    char merge[400][96];
    int n_tok, n_merge;
};

static int vocab_find(const struct vocab *v, const char *t) {
    for (int i = 0; i < v->n_tok; i++)
        if (!strcmp(v->tok[i], t)) return 259 + i;
    return -1;
}

static void build_vocab(struct vocab *v) {
    memset(v, 0, sizeof *v);
    for (size_t w = 0; w < sizeof words / sizeof *words; w++) {
        const char *s = words[w];
        for (size_t k = 2; k <= strlen(s); k++) {
            char whole[64] = "", left[64] = "", right[16] = "";
            spell(whole, sizeof whole, s, k);
            if (vocab_find(v, whole) >= 0) continue;
            spell(left, sizeof left, s, k - 1);
            spell(right, sizeof right, s + k - 1, 1);
            REQUIRE(v->n_tok < 400);
            snprintf(v->tok[v->n_tok++], 64, "%s", whole);
            snprintf(v->merge[v->n_merge++], 96, "%s %s", left, right);
        }
    }
    REQUIRE(259 + v->n_tok <= MARKER0);
}

/* The id of a token of the fixture: a marker, a word or a single byte. */
static const char *const specials[] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"};

static int fx_id(const struct vocab *v, const char *text) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(specials[i], text)) return i;
    for (int i = 0; i < N_MARKERS; i++)
        if (!strcmp(markers[i], text)) return MARKER0 + i;
    if (strlen(text) == 1) return 3 + (unsigned char)text[0];
    char sp[64] = "";
    spell(sp, sizeof sp, text, strlen(text));
    int id = vocab_find(v, sp);
    REQUIREF(id >= 0, "no fixture token for '%s'", text);
    return id;
}

static void write_tokenizer(const char *dir, const struct vocab *v) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[");
    for (int i = 0; i < 3; i++)
        fprintf(f, "%s{\"id\":%d,\"content\":\"%s\",\"special\":true}", i ? "," : "", i, specials[i]);
    for (int i = 0; i < N_MARKERS; i++)
        fprintf(f, ",{\"id\":%d,\"content\":\"%s\",\"special\":%s}", MARKER0 + i, markers[i],
                !strcmp(markers[i], "<|EOT|>") ? "true" : "false");
    fprintf(f, "],\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},"
               "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
               "\"use_regex\":true},\"post_processor\":null,"
               "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
               "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,"
               "\"byte_fallback\":false,\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char s[16] = "";
        char c = (char)b;
        spell(s, sizeof s, &c, 1);
        fprintf(f, "%s\"%s\":%d", b ? "," : "", s, 3 + b);
    }
    for (int i = 0; i < v->n_tok; i++) fprintf(f, ",\"%s\":%d", v->tok[i], 259 + i);
    fprintf(f, "},\"merges\":[");
    for (int i = 0; i < v->n_merge; i++) fprintf(f, "%s\"%s\"", i ? "," : "", v->merge[i]);
    fprintf(f, "]}}\n");
    REQUIRE(fclose(f) == 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "{\"add_bos_token\":true,\"bos_token\":\"%s\",\"eos_token\":\"%s\"}\n", specials[0], specials[1]);
    REQUIRE(fclose(f) == 0);
}

/* ---- Scripted weights ----------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

enum { BF16_ONE = 0x3F80, BF16_TWO = 0x4000 };

/* Token -> next token. Each "current" token gets an embedding dimension of
 * its own (1, 2, ...) beside dimension 0, which every token has; the head
 * row of `next` reads that dimension with weight 2, the row of `alt` with
 * weight 1, and the EOS row reads dimension 0 with weight 1. After the final
 * RMS norm that gives logits 22.6 (next), 11.3 (EOS, alt) and 0 (others)
 * for a scripted token, and 16 for EOS after any other token. */
static const struct { const char *cur, *next, *alt; } script[] = {
    {"<think>", "Greeting", NULL},
    {"Greeting", " detected", NULL},
    {" detected", "</think>", NULL},
    {"</think>", "Hello", "<｜tool▁calls▁begin｜>"},
    {"Hello", " world", NULL},
    {" world", "!", NULL},
    {"<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", NULL},
    {"<｜tool▁call▁begin｜>", "weather", NULL},
    {"weather", "<｜tool▁sep｜>", NULL},
    {"<｜tool▁sep｜>", "{\"", NULL},
    {"{\"", "city", NULL},
    {"city", "\":", NULL},
    {"\":", " \"", NULL},
    {" \"", "Paris", NULL},
    {"Paris", "\"}", NULL},
    {"\"}", "<｜tool▁call▁end｜>", NULL},
    {"<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", NULL},
    /* Explicit, so that a logit_bias towards a tool call cannot reopen one. */
    {"<｜tool▁calls▁end｜>", "<｜end▁of▁sentence｜>", NULL},
    {"<｜tool▁output▁end｜>", "Sunny", NULL},
    {"Sunny", " and", NULL},
    {" and", " warm", NULL},
    {" warm", ".", NULL},
};

static void write_scripted_weights(const char *dir, const struct vocab *v) {
    dsv_st *st = NULL;
    REQUIREF(dsv_st_open(&st, test_shared("conformance/public_sparse_bf16/hf/model.safetensors")) == DSV_OK, "%s",
             dsv_errmsg());
    dsv_st_writer *w = NULL;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    void *owned[64];
    int n_owned = 0;
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        const void *data = t->data;
        int zero = ends_with(t->name, "o_proj.weight") || ends_with(t->name, "down_proj.weight");
        int embed = !strcmp(t->name, "model.embed_tokens.weight"), head = !strcmp(t->name, "lm_head.weight");
        int norm = !strcmp(t->name, "model.norm.weight");
        if (zero || embed || head || norm) {
            REQUIRE(t->dtype == DSV_DT_BF16 && n_owned < 64);
            uint16_t *x = calloc(t->nbytes / 2, 2);
            REQUIRE(x);
            owned[n_owned++] = x;
            data = x;
            const int64_t dim = t->n_dims == 2 ? t->shape[1] : t->shape[0];
            if (norm)
                for (int64_t d = 0; d < dim; d++) x[d] = BF16_ONE;
            if (embed)
                for (int64_t r = 0; r < t->shape[0]; r++) x[r * dim] = BF16_ONE;
            if (head) x[(int64_t)FX_EOS * dim] = BF16_ONE;
            for (size_t k = 0; (embed || head) && k < sizeof script / sizeof *script; k++) {
                int64_t slot = 1 + (int64_t)k, cur = fx_id(v, script[k].cur);
                REQUIRE(slot < dim);
                if (embed) x[cur * dim + slot] = BF16_ONE;
                if (head) {
                    x[fx_id(v, script[k].next) * dim + slot] = BF16_TWO;
                    if (script[k].alt) x[fx_id(v, script[k].alt) * dim + slot] = BF16_ONE;
                }
            }
        }
        REQUIRE(dsv_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, data) == DSV_OK);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    REQUIREF(dsv_st_writer_write(w, path) == DSV_OK, "%s", dsv_errmsg());
    dsv_st_writer_free(w);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    dsv_st_close(st);
}

void fixture_write(const char *dir, int scripted) {
    static struct vocab v;
    build_vocab(&v);
    REQUIRE(fx_id(&v, "<｜tool▁calls▁begin｜>") == FX_TOOL_CALLS_BEGIN);
    char cmd[2048];
    const char *src = test_shared("conformance/public_sparse_bf16/hf");
    if (scripted)
        snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", src, dir);
    else
        snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/' && ln -sf \"$(realpath '%s/model.safetensors')\" '%s/'",
                 src, dir, src, dir);
    REQUIREF(system(cmd) == 0, "cannot copy the conformance model into %s", dir);
    if (scripted) write_scripted_weights(dir, &v);
    write_tokenizer(dir, &v);
}

static const char *fixture(const char *name, int scripted) {
    static char dir[2][1024];
    char *d = dir[scripted];
    if (!d[0]) {
        snprintf(d, sizeof dir[0], "%s/%s", test_tmpdir(), name);
        REQUIRE(mkdir(d, 0700) == 0);
        fixture_write(d, scripted);
    }
    return d;
}

const char *fixture_random(void) { return fixture("random", 0); }
const char *fixture_scripted(void) { return fixture("scripted", 1); }

/* ---- Server process ------------------------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

void server_start(server *s, const char *model, const char *args) {
    const char *bin = getenv("DSV32_BIN");
    REQUIREF(bin && *bin, "DSV32_BIN is not set (run through make test)");
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
        snprintf(cmd, sizeof cmd, "exec '%s' serve -m '%s' --port 0 %s", bin, model, args ? args : "");
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[512];
    size_t len = 0;
    double deadline = now() + 120;
    s->port = 0;
    while (!s->port && now() < deadline) {
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
    double deadline = now() + 60;
    for (;;) {
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) break;
        if (now() > deadline) {
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

static int send_all(int fd, const char *p, size_t n) {
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

int http_raw(int port, const char *request, size_t len, http_resp *r) {
    memset(r, 0, sizeof *r);
    int fd = dial(port);
    if (fd < 0) return -1;
    if (send_all(fd, request, len)) {
        close(fd);
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (cap - n < 4096) buf = realloc(buf, cap *= 2);
        ssize_t got = recv(fd, buf + n, cap - n - 1, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        n += (size_t)got;
    }
    close(fd);
    buf[n] = 0;
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
    if (send_all(fd, head, (size_t)hn) || send_all(fd, json, strlen(json))) {
        close(fd);
        return -1;
    }
    return fd;
}

int http_read_until(int fd, const char *needle) {
    static char buf[1 << 16];
    size_t n = 0;
    double deadline = now() + 60;
    while (now() < deadline) {
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
