/* test_server_exposed.c: `dsv32 serve` as something put on a network: each
 * finding of the hardening review (issue 12) as a regression test, against
 * the real binary on loopback. Numbers out of range, strings that are not
 * UTF-8 or hold NUL, clients that half-close, sit idle, trickle, send too
 * much or post from a web page: each gets its status (never a crash, a reset
 * or an answer that is not valid UTF-8 JSON), and the server stays up for
 * everyone else. Fixture tokenizer: byte b is token 3 + b. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/utf8.h"
#include "base/util.h"
#include "dsv32_chat.h"
#include "text/text.h"
#include "server_util.h"
#include "test.h"

/* ---- Helpers -------------------------------------------------------------- */

/* A connection to 127.0.0.1:port from source address `from` (127.0.0.x, a
 * client of its own as far as the server can tell); -1 on failure. */
static int dial_from(const char *from, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, from, &a.sin_addr);
    struct sockaddr_in b = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    b.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 120};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || connect(fd, (struct sockaddr *)&b, sizeof b)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* 1 when the server has closed fd (EOF or reset) within `seconds`. */
static int closed_within(int fd, double seconds) {
    double end = test_now() + seconds;
    while (test_now() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        char c[256];
        ssize_t n = recv(fd, c, sizeof c, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return 1;
    }
    return 0;
}

static int utf8_ok(const char *s, size_t n) { return dsv_utf8_valid_prefix(s, n) == n; }

/* A request's answer: status, a body that is valid UTF-8 JSON, and the
 * error message (when it is an error) copied into msg. */
static int ask(int port, const char *method, const char *path, const char *headers, const char *body, char *msg,
               size_t cap) {
    http_resp r;
    http(port, method, path, headers, body, &r);
    int status = r.status;
    CHECKF(r.body && utf8_ok(r.body, r.len), "%s %s: the answer is not valid UTF-8", method, path);
    cJSON *j = cJSON_ParseWithLength(r.body ? r.body : "", r.len);
    CHECKF(j, "%s %s -> %d: the answer is not JSON: %s", method, path, status, r.body ? r.body : "");
    const cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message");
    if (msg) snprintf(msg, cap, "%s", cJSON_IsString(m) ? m->valuestring : "");
    cJSON_Delete(j);
    http_free(&r);
    return status;
}

static int health(int port) {
    http_resp r;
    int ok = http(port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200;
    http_free(&r);
    return ok;
}

/* ---- The library pieces --------------------------------------------------- */

struct found {
    char paths[4][64];
    int names[4], n;
};

static int collect(void *user, const char *path, int is_name) {
    struct found *f = user;
    if (f->n < 4) {
        snprintf(f->paths[f->n], sizeof f->paths[f->n], "%s", path);
        f->names[f->n++] = is_name;
    }
    return 0;
}

TEST(json_writer_and_checked_numbers) {
    /* Every byte sequence comes out as valid UTF-8 JSON. */
    static const struct { const char *in; size_t n; const char *out; } cases[] = {
        {"caf\xc3\xa9", 5, "\"caf\xc3\xa9\""},
        {"\xc3", 1, "\"\xef\xbf\xbd\""},                       /* cut character */
        {"a\xff" "b", 3, "\"a\xef\xbf\xbd" "b\""},                /* never a lead byte */
        {"\xed\xa0\x80", 3, "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""}, /* a surrogate */
        {"\xc0\xaf", 2, "\"\xef\xbf\xbd\xef\xbf\xbd\""},            /* overlong '/' */
        {"q\"\\\n\x01\0z", 7, "\"q\\\"\\\\\\n\\u0001\\u0000z\""},
        {"\xf0\x9f\x98\x80", 4, "\"\xf0\x9f\x98\x80\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dsv_buf b = {0};
        dsv_json_str(&b, cases[i].in, cases[i].n);
        CHECKF(b.data && !strcmp(b.data, cases[i].out), "case %zu: %s", i, b.data ? b.data : "(null)");
        CHECK(b.data && utf8_ok(b.data, b.len));
        dsv_buf_free(&b);
    }
    /* Cuts fall between characters. */
    CHECK_EQ_INT(dsv_utf8_cut("\xc3\xa9\xc3\xa9", 4, 3), 2);
    CHECK_EQ_INT(dsv_utf8_cut("\xc3\xa9\xc3\xa9", 4, 2), 2);
    CHECK_EQ_INT(dsv_utf8_cut("a\xf0\x9f\x98\x80", 5, 4), 1);
    CHECK_EQ_INT(dsv_utf8_cut("abc", 3, 5), 3);
    /* Whole numbers in range, checked on the double. */
    int64_t v = 7;
    CHECK(dsv_whole_in_range(2147483647.0, 0, INT32_MAX, &v) && v == INT32_MAX);
    CHECK(!dsv_whole_in_range(2147483648.0, 0, INT32_MAX, &v));
    CHECK(!dsv_whole_in_range(-1.0, 0, INT32_MAX, &v));
    CHECK(!dsv_whole_in_range(1e20, INT32_MIN, INT32_MAX, &v));
    CHECK(!dsv_whole_in_range(INFINITY, INT32_MIN, INT32_MAX, &v));
    CHECK(!dsv_whole_in_range(NAN, INT32_MIN, INT32_MAX, &v));
    CHECK(!dsv_whole_in_range(1.5, 0, 10, &v));
    CHECK(dsv_whole_in_range(-0.0, 0, 10, &v) && v == 0);
    /* Strings holding NUL, found with their paths. */
    static const char json[] = "{\"a\":[\"x\",{\"b\\u0000\":\"y\\u0000\"}],\"c\":\"\\\\u0000\"}";
    struct found f = {0};
    CHECK_EQ_INT(dsv_json_nul_strings(json, sizeof json - 1, collect, &f), 0);
    CHECK_EQ_INT(f.n, 2);
    CHECK_STR(f.paths[0], "a[1].b"); /* the name itself stops at its NUL */
    CHECK_STR(f.paths[1], "a[1].b");
    CHECK(f.names[0] == 1 && f.names[1] == 0);
    static const char nested[] = "[[{\"x\":\"[[[[\\\"\"}]]";
    CHECK_EQ_INT(dsv_json_depth(nested, sizeof nested - 1), 3);
}

/* ---- Numbers -------------------------------------------------------------- */

TEST(server_numbers_range_checked) {
    /* Each of these was a float-to-int cast before the range check. */
    server s;
    server_start(&s, fixture_random(), "-t 1");
    static const char *const ids[] = {"1e20", "2147483648", "-2147483649", "1e400", "-1e400", "4294967296", "1.5",
                                      "-1"};
    char body[128];
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        snprintf(body, sizeof body, "{\"tokens\":[%s]}", ids[i]);
        CHECKF(ask(s.port, "POST", "/detokenize", NULL, body, NULL, 0) == 400, "/detokenize %s", body);
        snprintf(body, sizeof body, "{\"prompt\":[5,%s],\"max_tokens\":2}", ids[i]);
        CHECKF(ask(s.port, "POST", "/v1/completions", NULL, body, NULL, 0) == 400, "/v1/completions %s", body);
    }
    static const char *const fields[] = {"\"max_tokens\":1e400", "\"max_tokens\":2147483648", "\"seed\":1e300",
                                         "\"top_k\":-1e20", "\"n\":1e20", "\"logprobs\":1e400",
                                         "\"logit_bias\":{\"5\":1e400}", "\"temperature\":1e400"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        snprintf(body, sizeof body, "{\"prompt\":\"Hi\",%s}", fields[i]);
        CHECKF(ask(s.port, "POST", "/v1/completions", NULL, body, NULL, 0) == 400, "%s", body);
    }
    /* Streams without logprobs (no token list behind them) end properly.
     * With no seed the sampler drew one from the clock, and about 1 seed in
     * 130 samples EOS within 4 tokens of this model (the answer then ends
     * with "stop": the test failed now and then). Seed 36 is one of those:
     * EOS is banned, so the stream must run to its length, every time. */
    http_resp r;
    CHECK(post(s.port, "/v1/completions",
               "{\"prompt\":\"Hi\",\"max_tokens\":4,\"stream\":true,\"seed\":36,\"logit_bias\":{\"1\":-100}}",
               &r) == 200);
    CHECK(r.body && strstr(r.body, "\"finish_reason\":\"length\"") && strstr(r.body, "data: [DONE]"));
    http_free(&r);
    CHECK(health(s.port));
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* ---- UTF-8 ---------------------------------------------------------------- */

TEST(server_answers_are_utf8) {
    server s;
    server_start(&s, fixture_random(), "-t 1");
    char msg[1024];
    http_resp r;
    /* Pieces of partial characters, and ids that are one byte of one. */
    CHECK(ask(s.port, "POST", "/tokenize", NULL, "{\"content\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\",\"with_pieces\":true}",
              NULL, 0) == 200);
    CHECK(ask(s.port, "POST", "/detokenize", NULL, "{\"tokens\":[379,154]}", NULL, 0) == 200);
    CHECK(ask(s.port, "POST", "/detokenize", NULL, "{\"tokens\":[198]}", NULL, 0) == 200); /* 0xC3 alone */
    CHECK(post(s.port, "/detokenize", "{\"tokens\":[198,172]}", &r) == 200);             /* C3 A9: é */
    CHECKF(r.body && strstr(r.body, "\"\xc3\xa9\""), "é comes back whole: %s", r.body ? r.body : "");
    http_free(&r);
    /* Error messages that echo client bytes. */
    CHECK(ask(s.port, "GET", "/%FF%FE", NULL, NULL, msg, sizeof msg) == 404);
    CHECK(ask(s.port, "GET", "/v1/models/%C3", NULL, NULL, msg, sizeof msg) == 404);
    CHECK(ask(s.port, "POST", "/v1/chat/completions", NULL,
              "{\"model\":\"\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", msg, sizeof msg) == 400);
    CHECK(ask(s.port, "POST", "/v1/chat/completions", NULL, "{\"messages\":[{\"role\":\"\xff\xfe\",\"content\":\"x\"}]}",
              msg, sizeof msg) == 400);
    CHECK(ask(s.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"x\",\"logit_bias\":{\"\xc3\":1}}", msg,
              sizeof msg) == 400);
    /* A model name of 300 "é" (600 bytes): the message is cut, but between
     * characters (no U+FFFD where an é was split). */
    char body[2048];
    int o = snprintf(body, sizeof body, "{\"model\":\"");
    for (int i = 0; i < 300; i++) o += snprintf(body + o, sizeof body - (size_t)o, "\xc3\xa9");
    snprintf(body + o, sizeof body - (size_t)o, "\",\"prompt\":\"x\"}");
    CHECK(ask(s.port, "POST", "/v1/completions", NULL, body, msg, sizeof msg) == 400);
    CHECKF(strstr(msg, "\xc3\xa9\xc3\xa9") && !strstr(msg, "\xef\xbf\xbd"), "%s", msg);
    CHECK(health(s.port));
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(tokenize_chat_output_is_utf8) {
    /* `tokenize --chat` echoes the rendered text: invalid input bytes come
     * out as U+FFFD, the line stays JSON. */
    const char *bin = test_bin();
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd,
             "printf '{\"messages\":[{\"role\":\"user\",\"content\":\"a\\377b\\303\"}]}\\n' | %s tokenize -m '%s' --chat",
             bin, fixture_random());
    CHECK_EQ_INT(test_run(cmd, &out), 0);
    REQUIRE(out);
    CHECKF(utf8_ok(out, strlen(out)), "not UTF-8: %s", out);
    cJSON *j = cJSON_Parse(out);
    const cJSON *text = cJSON_GetObjectItem(j, "text");
    CHECKF(cJSON_IsString(text) && strstr(text->valuestring, "a\xef\xbf\xbd" "b\xef\xbf\xbd"), "%s", out);
    cJSON_Delete(j);
    free(out);
}

TEST(chat_render_infinite_arguments) {
    /* 1e400 reads as inf; Python's json.dumps writes Infinity (the printer
     * used to write "i.nf", reading past its digits). */
    static const char req[] =
        "{\"messages\":[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1e400,\"y\":-1e400,\"z\":2.5}}}]}]}";
    char *text = NULL;
    REQUIRE(dsv_chat_render_json(req, sizeof req - 1, 0, 1, &text) == DSV_OK);
    CHECKF(strstr(text, "\"x\": Infinity") && strstr(text, "\"y\": -Infinity") && strstr(text, "\"z\": 2.5"), "%s",
           text);
    CHECK(!strstr(text, "i.nf"));
    free(text);
}

/* ---- NUL and names ------------------------------------------------------- */

TEST(server_nul_in_names_refused) {
    server s;
    server_start(&s, fixture_random(), "-t 1");
    static const char *const bad[][2] = {
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\\u0000x\",\"content\":\"hi\"}]}"},
        {"/v1/chat/completions", "{\"model\":\"random\\u0000x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"},
        {"/v1/completions", "{\"prompt\":\"hi\",\"logit_bias\":{\"5\\u0000x\":1}}"},
        {"/v1/completions", "{\"prompt\":\"hi\",\"logit_bias\":{\" 5\":1}}"},
        {"/v1/completions", "{\"prompt\":\"hi\",\"logit_bias\":{\"+5\":1}}"},
        {"/v1/completions", "{\"prompt\":\"hi\",\"logit_bias\":{\"5 \":1}}"},
        {"/v1/completions", "{\"prompt\":\"hi\",\"logit_bias\":{\"0x5\":1}}"},
        {"/v1/completions", "{\"prompt\":\"hi\",\"stop\":[\"a\\u0000b\"]}"},
        {"/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\\u0000\":2}"},
        {"/tokenize", "{\"content\\u0000x\":\"hi\"}"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECKF(ask(s.port, "POST", bad[i][0], NULL, bad[i][1], NULL, 0) == 400, "%s %s", bad[i][0], bad[i][1]);
    /* Where text may hold NUL, all of it counts: a completion prompt is the
     * tokens /tokenize gives for the same string. */
    http_resp r;
    CHECK(post(s.port, "/tokenize", "{\"content\":\"Hello\\u0000world\",\"add_special\":true}", &r) == 200);
    cJSON *j = cJSON_Parse(r.body ? r.body : "");
    int n_tok = cJSON_GetArraySize(cJSON_GetObjectItem(j, "tokens"));
    cJSON_Delete(j);
    http_free(&r);
    CHECK(post(s.port, "/v1/completions", "{\"prompt\":\"Hello\\u0000world\",\"max_tokens\":1}", &r) == 200);
    j = cJSON_Parse(r.body ? r.body : "");
    const cJSON *pt = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens");
    CHECKF(n_tok > 2 && cJSON_IsNumber(pt) && pt->valueint == n_tok, "prompt %d tokens, /tokenize %d",
           cJSON_IsNumber(pt) ? pt->valueint : -1, n_tok);
    cJSON_Delete(j);
    http_free(&r);
    /* Nesting beyond the bound is refused before any parser recurses. */
    char deep[400];
    int o = snprintf(deep, sizeof deep, "{\"prompt\":\"x\",\"a\":");
    for (int i = 0; i < 100; i++) deep[o++] = '[';
    for (int i = 0; i < 100; i++) deep[o++] = ']';
    snprintf(deep + o, sizeof deep - (size_t)o, "}");
    CHECK(ask(s.port, "POST", "/v1/completions", NULL, deep, NULL, 0) == 400);
    CHECK(health(s.port));
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* ---- Access --------------------------------------------------------------- */

TEST(server_api_key_on_every_endpoint) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --api-key sesame");
    const char *key = "Authorization: Bearer sesame\r\n";
    static const char *const routes[][3] = {
        {"GET", "/v1/models", NULL},
        {"GET", "/v1/models/random", NULL},
        {"GET", "/metrics", NULL},
        {"POST", "/tokenize", "{\"content\":\"hi\"}"},
        {"POST", "/detokenize", "{\"tokens\":[5]}"},
        {"POST", "/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":1}"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}"},
    };
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        http_resp r;
        http(s.port, routes[i][0], routes[i][1], NULL, routes[i][2], &r);
        CHECKF(r.status == 401, "%s %s without the key -> %d", routes[i][0], routes[i][1], r.status);
        http_free(&r);
        http(s.port, routes[i][0], routes[i][1], key, routes[i][2], &r);
        CHECKF(r.status == 200, "%s %s with the key -> %d %s", routes[i][0], routes[i][1], r.status,
               r.body ? r.body : "");
        http_free(&r);
    }
    /* /health and the page need none. */
    http_resp r;
    CHECK(http(s.port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK(http(s.port, "GET", "/", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_post_must_be_json) {
    /* text/plain (and form types) can be posted by any web page without a
     * preflight: refused. */
    server s;
    server_start(&s, fixture_random(), "-t 1");
    static const char *const types[] = {"Content-Type: text/plain\r\n",
                                        "Content-Type: application/x-www-form-urlencoded\r\n",
                                        "Content-Type: multipart/form-data; boundary=x\r\n",
                                        "Content-Type: application/jsonx\r\n", ""};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        char req[512];
        int n = snprintf(req, sizeof req,
                         "POST /tokenize HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: 15\r\n\r\n"
                         "{\"content\":\"a\"}",
                         types[i]);
        http_resp r;
        CHECK(http_raw(s.port, req, (size_t)n, &r) == 0);
        CHECKF(r.status == 415, "%s-> %d", types[i], r.status);
        CHECK(r.body && strstr(r.body, "application/json"));
        http_free(&r);
    }
    const char *ok = "POST /tokenize HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Type: Application/JSON; charset=utf-8\r\nContent-Length: 15\r\n\r\n{\"content\":\"a\"}";
    http_resp r;
    CHECK(http_raw(s.port, ok, strlen(ok), &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* ---- Connections ---------------------------------------------------------- */

TEST(server_half_close_gets_answer) {
    /* The client sends its request, shuts its sending side and waits. */
    server s;
    server_start(&s, fixture_random(), "-t 1");
    static const char *const bodies[] = {
        "{\"prompt\":\"Hello\",\"max_tokens\":24,\"temperature\":0,\"logit_bias\":{\"1\":-100}}",
        "{\"prompt\":\"Hello\",\"max_tokens\":24,\"temperature\":0,\"stream\":true,\"logit_bias\":{\"1\":-100}}"};
    for (int i = 0; i < 2; i++) {
        int fd = dial_from("127.0.0.1", s.port);
        REQUIRE(fd >= 0);
        char req[512];
        int n = snprintf(req, sizeof req,
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         strlen(bodies[i]), bodies[i]);
        REQUIRE(http_send_all(fd, req, (size_t)n) == 0);
        shutdown(fd, SHUT_WR);
        char *got = http_read_all(fd, NULL);
        close(fd);
        /* A 1xx may come first (HTTP/1.1 clients skip it); then the answer. */
        const char *final = got;
        while (!strncmp(final, "HTTP/1.1 1", 10) && strstr(final, "\r\n\r\n")) final = strstr(final, "\r\n\r\n") + 4;
        CHECKF(!strncmp(final, "HTTP/1.1 200", 12), "half-closed client %d got: %.200s", i, got);
        CHECKF(strstr(final, "\"finish_reason\":\"length\""), "no complete answer: %.300s", final);
        if (i) CHECK(strstr(final, "data: [DONE]"));
        free(got);
    }
    /* The two half-closed ones ran to the end: nothing was cancelled as a
     * hang-up. */
    CHECK_EQ_INT(metric(s.port, "dsv32_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 2);
    CHECK_EQ_INT(metric(s.port, "dsv32_generation_tokens_total"), 48);
    /* A client that closes (not half-closes) while its non-streamed answer
     * is generated is told apart (the 102 meets a reset): cancelled long
     * before its 1000 tokens (seconds of work on the embedded model). */
    CHECK_EQ_INT(server_stop(&s), 0);
    server_start(&s, "models/tiny", "-t 1");
    int fd = http_open(s.port, "/v1/completions",
                       "{\"prompt\":\"Tell me a long story\",\"max_tokens\":1000,\"logit_bias\":{\"1\":-100}}");
    REQUIRE(fd >= 0);
    for (int i = 0; i < 600 && metric(s.port, "dsv32_requests_running") != 1; i++) usleep(50000);
    close(fd);
    for (int i = 0; i < 600 && metric(s.port, "dsv32_requests_running") != 0; i++) usleep(50000);
    CHECK_EQ_INT(metric(s.port, "dsv32_requests_running"), 0);
    double cut = metric(s.port, "dsv32_generation_tokens_total");
    CHECKF(cut < 1000, "a closed client's request ran on: %g tokens", cut);
    CHECK_EQ_INT(metric(s.port, "dsv32_requests_total{endpoint=\"/v1/completions\",status=\"499\"}"), 1);
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_idle_and_trickling_connections) {
    /* 200 idle connections (unfinished headers) from one client, and one
     * that sends its headers a byte at a time: /health stays answerable for
     * others, the idle ones are cut at the header deadline, the trickle too
     * (each byte would restart an idle timeout; the deadline is fixed). */
    server s;
    server_start(&s, fixture_random(), "-t 1 --max-conns-per-client 16 --header-timeout 2");
    int idle[200], n_idle = 0;
    for (int i = 0; i < 200; i++) {
        int fd = dial_from("127.0.0.2", s.port);
        if (fd < 0) continue;
        http_send_all(fd, "GET /hea", 8);
        idle[n_idle++] = fd;
    }
    CHECK(n_idle > 16);
    int trickle = dial_from("127.0.0.3", s.port);
    REQUIRE(trickle >= 0);
    CHECK(health(s.port));
    const char *head = "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    int cut = 0;
    for (size_t i = 0; head[i] && !cut; i++) {
        if (send(trickle, head + i, 1, MSG_NOSIGNAL) != 1) cut = 1;
        else cut = closed_within(trickle, 0.25);
        if (i % 20 == 0) CHECK(health(s.port));
    }
    CHECKF(cut, "a connection trickling its headers was never cut");
    close(trickle);
    int open_left = 0;
    for (int i = 0; i < n_idle; i++) {
        open_left += !closed_within(idle[i], i == 0 ? 30 : 0.5);
        close(idle[i]);
    }
    CHECKF(open_left == 0, "%d idle connections were left open past the header deadline", open_left);
    CHECK(health(s.port));
    CHECK(metric(s.port, "dsv32_connections_cut_total") >= 17); /* 16 idle + the trickle */
    /* Closed connections leave the count once their threads wind up. The
     * count is checked as read in the loop: reading it again opens another
     * connection while the previous reader's thread may still be winding up,
     * so a second read can see 2 with nothing leaked. */
    double open_now = -1;
    for (int i = 0; i < 600 && (open_now = metric(s.port, "dsv32_connections_open")) != 1; i++) usleep(50000);
    CHECK_EQ_INT(open_now, 1); /* this request's */
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_413_reaches_a_client_still_sending) {
    /* A body over the limit, announced with Content-Length and sent whole:
     * the client sees the 413 (not a reset while it sends). */
    server s;
    server_start(&s, fixture_random(), "-t 1 --max-body 64K");
    size_t len = 20u << 20;
    char *body = malloc(len);
    memset(body, ' ', len);
    for (int i = 0; i < 3; i++) {
        int fd = dial_from("127.0.0.1", s.port);
        REQUIRE(fd >= 0);
        char head[256];
        int n = snprintf(head, sizeof head,
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                         len);
        CHECK(http_send_all(fd, head, (size_t)n) == 0);
        CHECKF(http_send_all(fd, body, len) == 0, "the server stopped reading: %s", strerror(errno));
        char *got = http_read_all(fd, NULL);
        CHECKF(!strncmp(got, "HTTP/1.1 413", 12) && strstr(got, "request_too_large"), "%.200s", got);
        free(got);
        close(fd);
    }
    free(body);
    /* With "Expect: 100-continue" the client sends nothing more: answered
     * at once. Past --discard-max the connection is closed. */
    const char *expect = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n";
    http_resp r;
    CHECK(http_raw(s.port, expect, strlen(expect), &r) == 0 && r.status == 413);
    http_free(&r);
    CHECK(health(s.port));

    /* node's fetch (undici), which reported "fetch failed, EPIPE". */
    if (test_run("command -v node", NULL) == 0) {
        char cmd[512], *out = NULL;
        snprintf(cmd, sizeof cmd, "node tests/server/big_body.js http://127.0.0.1:%d 2>&1", s.port);
        int rc = test_run(cmd, &out);
        CHECKF(rc == 0 && out && strstr(out, "big body: 5 x 413"), "exit %d: %s", rc, out ? out : "");
        free(out);
    } else if (getenv("DSV32_REQUIRE_NODE")) {
        CHECKF(0, "node is not installed and DSV32_REQUIRE_NODE is set");
    }
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_body_budget_and_admission) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --max-body 64K --body-budget 64K --parallel 1 --queue 0");
    /* One client holds the budget with a body it is still sending... */
    int slow = dial_from("127.0.0.1", s.port);
    REQUIRE(slow >= 0);
    const char *head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Content-Length: 60000\r\n\r\n{\"prompt\":\"";
    REQUIRE(http_send_all(slow, head, strlen(head)) == 0);
    /* Once the server holds those bytes (it read the headers)... */
    for (int i = 0; i < 600 && metric(s.port, "dsv32_request_body_bytes") != 60000; i++) usleep(50000);
    CHECK_EQ_INT(metric(s.port, "dsv32_request_body_bytes"), 60000);
    /* ...another body does not fit: 503 with Retry-After. */
    char body[8192];
    snprintf(body, sizeof body, "{\"prompt\":\"Hi\",\"max_tokens\":1,\"pad\":\"%7000s\"}", "x");
    http_resp r;
    char retry[16];
    CHECK_EQ_INT(post(s.port, "/v1/completions", body, &r), 503);
    CHECK(http_header(&r, "Retry-After", retry, sizeof retry) && atoi(retry) >= 1);
    CHECK(r.body && strstr(r.body, "server_busy"));
    http_free(&r);
    close(slow);
    /* Once it is gone the budget is back. */
    for (int i = 0; i < 600 && metric(s.port, "dsv32_request_body_bytes") != 0; i++) usleep(50000);
    CHECK_EQ_INT(post(s.port, "/v1/completions", body, &r), 200);
    http_free(&r);
    CHECK_EQ_INT(metric(s.port, "dsv32_request_body_bytes"), 0);

    /* A full queue is 429 before the body is even parsed: invalid JSON gets
     * 429, not 400, while the one slot is busy. */
    int fd = http_open(s.port, "/v1/completions",
                       "{\"prompt\":\"Tell me a long story\",\"max_tokens\":700,\"stream\":true,"
                       "\"logit_bias\":{\"1\":-100}}");
    REQUIRE(fd >= 0);
    REQUIRE(http_read_until(fd, "\"text\""));
    CHECK_EQ_INT(post(s.port, "/v1/completions", "{not json", &r), 429);
    http_free(&r);
    close(fd);
    CHECK(health(s.port));
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_body_deadline_and_discard_bound) {
    /* A body that trickles a byte at a time is cut at --body-timeout; a
     * body announced beyond --discard-max is not worth reading: its 413
     * goes out at once and the connection closes. */
    server s;
    server_start(&s, fixture_random(), "-t 1 --max-body 64K --discard-max 1M --body-timeout 2");
    int fd = dial_from("127.0.0.4", s.port);
    REQUIRE(fd >= 0);
    const char *head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Content-Length: 1000\r\n\r\n";
    REQUIRE(http_send_all(fd, head, strlen(head)) == 0);
    int cut = 0;
    for (int i = 0; i < 1000 && !cut; i++) {
        if (send(fd, " ", 1, MSG_NOSIGNAL) != 1) cut = 1;
        else cut = closed_within(fd, 0.25);
        if (i % 20 == 0) CHECK(health(s.port));
    }
    CHECKF(cut, "a body trickling a byte at a time was never cut");
    close(fd);
    const char *big = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 4000000\r\n\r\n";
    http_resp r;
    CHECK(http_raw(s.port, big, strlen(big), &r) == 0 && r.status == 413);
    char conn[32];
    CHECK(http_header(&r, "Connection", conn, sizeof conn) && !strcmp(conn, "close"));
    http_free(&r);
    CHECK(health(s.port));
    CHECK_EQ_INT(server_stop(&s), 0);
}
