/* test_server.c: black-box tests of `dsv32 serve`: the real binary on
 * 127.0.0.1, a small model (server_util.h's fixtures), plain HTTP.
 *
 * They check invariants rather than golden answers: a streamed answer is the
 * non-streamed one; the same seed gives the same answer; a request alone
 * gives what it gives among others, and a prefix-cache hit what a miss
 * gives (greedy decoding, where any numerical difference would show); under
 * load every token is delivered and the metrics add up; bad input gets its
 * status and the server stays up; a client that leaves frees its pages; and
 * SIGTERM ends in-flight streams and exits cleanly (under `make asan` that
 * includes the leak check at exit). Servers run with one compute thread:
 * the machines this runs on have two cores, shared with the clients. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "server_util.h"
#include "test.h"

/* ---- Helpers -------------------------------------------------------------- */

/* A completion request for prompt ids (n of them, pseudo-random from seed). */
static char *ids_request(int n, unsigned seed, int max_tokens, const char *extra) {
    size_t cap = (size_t)n * 8 + 512;
    char *s = malloc(cap);
    int o = snprintf(s, cap, "{\"prompt\":[");
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        o += snprintf(s + o, cap - (size_t)o, "%s%u", i ? "," : "", 3 + (seed >> 8) % 700);
    }
    snprintf(s + o, cap - (size_t)o, "],\"max_tokens\":%d,\"temperature\":0%s%s}", max_tokens, extra ? "," : "",
             extra ? extra : "");
    return s;
}

static char *chat_request(const char *user, int max_tokens, const char *extra) {
    char *s = malloc(strlen(user) + 512 + (extra ? strlen(extra) : 0));
    sprintf(s, "{\"model\":\"random\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":%d%s%s}",
            user, max_tokens, extra ? "," : "", extra ? extra : "");
    return s;
}

/* Adds "stream":true (and usage) to a request object. */
static char *streamed(const char *req) {
    char *s = malloc(strlen(req) + 80);
    sprintf(s, "{\"stream\":true,\"stream_options\":{\"include_usage\":true},%s", req + 1);
    return s;
}

static whole_result run_whole(int port, const char *path, const char *req) {
    http_resp r;
    whole_result w;
    CHECKF(post(port, path, req, &r) == 200, "%s -> %d %s", path, r.status, r.body ? r.body : "");
    if (whole_parse(r.body ? r.body : "", &w)) memset(&w, 0, sizeof w);
    http_free(&r);
    return w;
}

static sse_result run_stream(int port, const char *path, const char *req) {
    http_resp r;
    sse_result x;
    char *s = streamed(req);
    CHECKF(post(port, path, s, &r) == 200, "%s (stream) -> %d %s", path, r.status, r.body ? r.body : "");
    sse_parse(r.body ? r.body : "", &x);
    CHECK(x.done && !x.error);
    http_free(&r);
    free(s);
    return x;
}

static int str_eq(const char *a, const char *b) { return !strcmp(a ? a : "", b ? b : ""); }

static void check_same(const whole_result *w, const sse_result *x, const char *what) {
    CHECKF(str_eq(w->content, x->content), "%s: content differs: \"%s\" vs \"%s\"", what, w->content, x->content);
    CHECKF(str_eq(w->logprobs, x->logprobs), "%s: logprobs differ:\n  %s\n  %s", what, w->logprobs, x->logprobs);
    CHECKF(str_eq(w->reasoning, x->reasoning), "%s: reasoning differs", what);
    CHECKF(str_eq(w->tool_name, x->tool_name) && str_eq(w->tool_args, x->tool_args), "%s: tool calls differ", what);
    CHECKF(!strcmp(w->finish, x->finish), "%s: finish %s vs %s", what, w->finish, x->finish);
    CHECK_EQ_INT(w->prompt_tokens, x->prompt_tokens);
    CHECK_EQ_INT(w->completion_tokens, x->completion_tokens);
}

/* Waits (bounded) until a metric reaches a value. */
static int metric_becomes(int port, const char *sample, double want, double seconds) {
    for (int i = 0; i < (int)(seconds * 20); i++) {
        if (metric(port, sample) == want) return 1;
        usleep(50000);
    }
    return 0;
}

/* ---- Endpoints ------------------------------------------------------------ */

TEST(server_endpoints) {
    server s;
    server_start(&s, fixture_random(), "-t 1");
    http_resp r;
    CHECK(http(s.port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200);
    CHECK(r.body && strstr(r.body, "\"ok\""));
    http_free(&r);

    CHECK(http(s.port, "GET", "/v1/models", NULL, NULL, &r) == 0 && r.status == 200);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    CHECK(m && !strcmp(cJSON_GetObjectItem(m, "id")->valuestring, "random"));
    CHECK(m && cJSON_GetObjectItem(m, "max_model_len")->valueint == 768);
    cJSON_Delete(j);
    http_free(&r);
    CHECK(http(s.port, "GET", "/v1/models/random", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK(http(s.port, "GET", "/v1/models/other", NULL, NULL, &r) == 0 && r.status == 404);
    http_free(&r);

    /* Tokenize and back, a NUL included. */
    CHECK(post(s.port, "/tokenize", "{\"content\":\"Hello world\\u0000!\"}", &r) == 200);
    CHECKF(r.body && strstr(r.body, "{\"tokens\":[262,267,3,36]}"), "%s", r.body);
    http_free(&r);
    CHECK(post(s.port, "/tokenize", "{\"content\":\"Hi\",\"add_special\":true,\"with_pieces\":true}", &r) == 200);
    CHECKF(r.body && strstr(r.body, "{\"id\":0,\"piece\":\"<｜begin▁of▁sentence｜>\"}"), "%s", r.body);
    http_free(&r);
    CHECK(post(s.port, "/detokenize", "{\"tokens\":[262,267,3,36]}", &r) == 200);
    CHECKF(r.body && !strcmp(r.body, "{\"content\":\"Hello world\\u0000!\"}"), "%s", r.body);
    http_free(&r);

    char type[128];
    CHECK(http(s.port, "GET", "/", NULL, NULL, &r) == 0 && r.status == 200);
    CHECK(http_header(&r, "Content-Type", type, sizeof type) && strstr(type, "text/html"));
    CHECK(r.body && strstr(r.body, "<title>dsv32 chat</title>") && strstr(r.body, "</html>"));
    http_free(&r);

    CHECK(metric(s.port, "dsv32_kv_pages_total") == 48); /* 4 slots x 768 / 64 */
    CHECK(metric(s.port, "dsv32_kv_pages_used") == 0);
    CHECK(metric(s.port, "dsv32_requests_running") == 0);
    CHECK(metric(s.port, "dsv32_requests_total{endpoint=\"/health\",status=\"200\"}") == 1);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* ---- Invariants ----------------------------------------------------------- */

TEST(server_stream_equals_whole) {
    server s;
    server_start(&s, fixture_random(), "-t 1");
    struct { const char *path; char *req; } cases[] = {
        {"/v1/chat/completions", chat_request("Tell me a story", 40, "\"temperature\":0,\"logprobs\":true")},
        {"/v1/chat/completions",
         chat_request("Tell me a story", 40, "\"temperature\":0,\"chat_template_kwargs\":{\"thinking\":true}")},
        {"/v1/completions",
         strdup("{\"prompt\":\"What is sparse attention\",\"max_tokens\":40,\"temperature\":0,\"logprobs\":3}")},
        {"/v1/completions", ids_request(90, 1, 40, "\"stop\":[\"the\",\"a\"]")},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        whole_result w = run_whole(s.port, cases[i].path, cases[i].req);
        sse_result x = run_stream(s.port, cases[i].path, cases[i].req);
        char what[32];
        snprintf(what, sizeof what, "case %zu", i);
        check_same(&w, &x, what);
        CHECK(w.completion_tokens > 0 && w.prompt_tokens > 0);
        whole_free(&w);
        sse_free(&x);
        free(cases[i].req);
    }
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_same_seed_same_output) {
    server s;
    server_start(&s, fixture_random(), "-t 1");
    char *a = chat_request("Tell me a story", 48, "\"temperature\":1,\"seed\":1234");
    char *b = chat_request("Tell me a story", 48, "\"temperature\":1,\"seed\":1235");
    whole_result x = run_whole(s.port, "/v1/chat/completions", a);
    whole_result y = run_whole(s.port, "/v1/chat/completions", a);
    whole_result z = run_whole(s.port, "/v1/chat/completions", b);
    CHECK(str_eq(x.content, y.content) && str_eq(x.reasoning, y.reasoning));
    CHECK_EQ_INT(x.completion_tokens, y.completion_tokens);
    CHECKF(!str_eq(x.content, z.content), "seeds 1234 and 1235 gave the same 48 tokens");
    /* The stream of the same seed too. */
    sse_result w = run_stream(s.port, "/v1/chat/completions", a);
    CHECK(str_eq(x.content, w.content));
    whole_free(&x);
    whole_free(&y);
    whole_free(&z);
    sse_free(&w);
    free(a);
    free(b);
    CHECK_EQ_INT(server_stop(&s), 0);
}

struct job {
    int port;
    const char *path;
    char *req;
    int stream;
    whole_result whole;
    sse_result sse;
};

static void *job_run(void *p) {
    struct job *j = p;
    if (j->stream) j->sse = run_stream(j->port, j->path, j->req);
    else j->whole = run_whole(j->port, j->path, j->req);
    return NULL;
}

static void run_jobs(struct job *jobs, int n) {
    pthread_t t[64];
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, job_run, &jobs[i]);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
}

TEST(server_alone_equals_among_eight) {
    /* Prompt lengths around page and chunk boundaries. Alone, a prompt is
     * one call; among others it is cut into chunks of what the step has
     * left (97 tokens in a step of 96 must not leave a single token). The
     * logprobs compare the logits bit for bit. */
    static const int len[8] = {3, 17, 64, 65, 97, 130, 200, 250};
    struct job alone[8], together[8];
    server a, b;
    server_start(&a, fixture_random(), "-t 1 --parallel 8");
    server_start(&b, fixture_random(), "-t 1 --parallel 8 --batch 96");
    for (int i = 0; i < 8; i++) {
        char *req = ids_request(len[i], 100 + (unsigned)i, 24, "\"logprobs\":1");
        alone[i] = (struct job){.port = a.port, .path = "/v1/completions", .req = req};
        together[i] = (struct job){.port = b.port, .path = "/v1/completions", .req = req, .stream = i % 2};
        job_run(&alone[i]);
    }
    run_jobs(together, 8);
    for (int i = 0; i < 8; i++) {
        const char *got = together[i].stream ? together[i].sse.content : together[i].whole.content;
        const char *lp = together[i].stream ? together[i].sse.logprobs : together[i].whole.logprobs;
        int n = together[i].stream ? together[i].sse.completion_tokens : together[i].whole.completion_tokens;
        CHECKF(str_eq(alone[i].whole.content, got), "prompt of %d tokens: alone \"%s\", among 8 \"%s\"", len[i],
               alone[i].whole.content, got);
        CHECKF(str_eq(alone[i].whole.logprobs, lp) && *lp, "prompt of %d tokens: logprobs alone %s, among 8 %s",
               len[i], alone[i].whole.logprobs, lp);
        CHECK_EQ_INT(alone[i].whole.completion_tokens, n);
        whole_free(&alone[i].whole);
        whole_free(&together[i].whole);
        sse_free(&together[i].sse);
        free(alone[i].req);
    }
    /* Alone in steps of 96: 97 and 193 tokens would end on a one-token
     * chunk (decoding maths) if the scheduler did not cut them 95 + 2 and
     * 96 + 95 + 2. */
    for (int n = 97; n <= 193; n += 96) {
        char *req = ids_request(n, 300 + (unsigned)n, 8, "\"logprobs\":0");
        whole_result x = run_whole(a.port, "/v1/completions", req), y = run_whole(b.port, "/v1/completions", req);
        CHECKF(str_eq(x.logprobs, y.logprobs) && *x.logprobs, "%d tokens in one call: %s, in steps of 96: %s", n,
               x.logprobs, y.logprobs);
        whole_free(&x);
        whole_free(&y);
        free(req);
    }
    CHECK_EQ_INT(server_stop(&a), 0);
    CHECK_EQ_INT(server_stop(&b), 0);
}

TEST(server_prefix_cache_hit_equals_miss) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --parallel 2");
    /* Lengths: whole pages reused leave at least two prompt tokens. */
    static const struct { int len, cached; } cases[] = {{300, 256}, {130, 128}, {129, 64}, {128, 64}, {66, 64},
                                                       {65, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *req = ids_request(cases[i].len, 7 + (unsigned)i, 24, "\"logprobs\":0");
        whole_result miss = run_whole(s.port, "/v1/completions", req);
        whole_result hit = run_whole(s.port, "/v1/completions", req);
        CHECK_EQ_INT(miss.cached_tokens, 0);
        CHECKF(hit.cached_tokens == cases[i].cached, "prompt of %d: %d tokens cached, expected %d", cases[i].len,
               hit.cached_tokens, cases[i].cached);
        CHECKF(str_eq(miss.content, hit.content), "prompt of %d: miss \"%s\", hit \"%s\"", cases[i].len, miss.content,
               hit.content);
        CHECKF(str_eq(miss.logprobs, hit.logprobs) && *miss.logprobs, "prompt of %d: logprobs miss %s, hit %s",
               cases[i].len, miss.logprobs, hit.logprobs);
        CHECK_EQ_INT(miss.completion_tokens, hit.completion_tokens);
        whole_free(&miss);
        whole_free(&hit);
        free(req);
    }
    /* A shared beginning with another ending: the first 200 tokens of the
     * 300-token prompt give three cached pages; the answer is the one a
     * server that never saw the first prompt gives. */
    char *b = ids_request(300, 7, 24, "\"logprobs\":0");
    char *cut = b;
    for (int commas = 0; commas < 200; cut++) commas += *cut == ',';
    char *other = ids_request(80, 99, 24, "\"logprobs\":0");
    sprintf(cut, "%s", strchr(other, '[') + 1);
    whole_result hit = run_whole(s.port, "/v1/completions", b);
    CHECK_EQ_INT(hit.cached_tokens, 192);
    server fresh;
    server_start(&fresh, fixture_random(), "-t 1");
    whole_result miss = run_whole(fresh.port, "/v1/completions", b);
    CHECK_EQ_INT(miss.cached_tokens, 0);
    CHECK(str_eq(miss.content, hit.content) && str_eq(miss.logprobs, hit.logprobs));
    CHECK_EQ_INT(server_stop(&fresh), 0);
    /* Chat: the rendered prompt is cached like any other. */
    char *chat = chat_request("Tell me a long story about sparse attention and the cache of the model please "
                              "Tell me a long story about sparse attention and the cache of the model please "
                              "Tell me a long story about sparse attention and the cache of the model please "
                              "Tell me a long story about sparse attention and the cache of the model please",
                              24, "\"temperature\":0,\"logprobs\":true");
    whole_result c1 = run_whole(s.port, "/v1/chat/completions", chat);
    sse_result c2 = run_stream(s.port, "/v1/chat/completions", chat);
    CHECK(c2.cached_tokens > 0 && str_eq(c1.content, c2.content) && str_eq(c1.reasoning, c2.reasoning));
    CHECK(str_eq(c1.logprobs, c2.logprobs) && *c1.logprobs);
    CHECK(metric(s.port, "dsv32_prefix_cache_hits_total") >= 7);
    whole_free(&hit);
    whole_free(&miss);
    whole_free(&c1);
    sse_free(&c2);
    free(b);
    free(other);
    free(chat);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* ---- Load ----------------------------------------------------------------- */

TEST(server_sixteen_streams) {
    enum { N = 16, ROUNDS = 3 };
    server s;
    server_start(&s, fixture_random(), "-t 1 --parallel 16 --batch 64");
    struct job expect[N], jobs[N];
    long prompt = 0, generated = 0;
    for (int i = 0; i < N; i++) {
        char user[128];
        snprintf(user, sizeof user, "Tell me a story about page %d of the cache", i);
        expect[i] = (struct job){.port = s.port, .path = "/v1/chat/completions",
                                 .req = chat_request(user, 20 + i % 5, "\"temperature\":0")};
        job_run(&expect[i]);
        prompt += expect[i].whole.prompt_tokens;
        generated += expect[i].whole.completion_tokens;
    }
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < N; i++) jobs[i] = (struct job){.port = s.port, .path = expect[i].path, .req = expect[i].req,
                                                           .stream = 1};
        run_jobs(jobs, N);
        for (int i = 0; i < N; i++) {
            char what[48];
            snprintf(what, sizeof what, "round %d, client %d", round, i);
            check_same(&expect[i].whole, &jobs[i].sse, what);
            prompt += jobs[i].sse.prompt_tokens;
            generated += jobs[i].sse.completion_tokens;
            sse_free(&jobs[i].sse);
        }
    }
    /* The metrics add up, and every page went back. */
    CHECK_EQ_INT(metric(s.port, "dsv32_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"),
                 N * (ROUNDS + 1));
    CHECK_EQ_INT(metric(s.port, "dsv32_generation_tokens_total"), generated);
    CHECK_EQ_INT(metric(s.port, "dsv32_prompt_tokens_total"), prompt);
    CHECK_EQ_INT(metric(s.port, "dsv32_time_to_first_token_seconds_count"), N * (ROUNDS + 1));
    CHECK_EQ_INT(metric(s.port, "dsv32_time_per_output_token_seconds_count"), generated - N * (ROUNDS + 1));
    CHECK(metric_becomes(s.port, "dsv32_kv_pages_used", 0, 5));
    CHECK_EQ_INT(metric(s.port, "dsv32_requests_running"), 0);
    CHECK_EQ_INT(metric(s.port, "dsv32_requests_waiting"), 0);
    CHECK_EQ_INT(metric(s.port, "dsv32_kv_pages_free") + metric(s.port, "dsv32_kv_pages_cached"),
                 metric(s.port, "dsv32_kv_pages_total"));
    for (int i = 0; i < N; i++) {
        whole_free(&expect[i].whole);
        free(expect[i].req);
    }
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_kv_budget_makes_requests_wait) {
    /* Three pages of 64 tokens (41984 bytes each for this model): one
     * request of up to 192 tokens at a time, however many slots. */
    server s;
    server_start(&s, fixture_random(), "-t 1 --parallel 4 --kv-memory 126000");
    CHECK_EQ_INT(metric(s.port, "dsv32_kv_pages_total"), 3);
    struct job alone[4], together[4];
    for (int i = 0; i < 4; i++) {
        char *req = ids_request(60, 40 + (unsigned)i, 100, "\"logit_bias\":{\"1\":-100}");
        alone[i] = (struct job){.port = s.port, .path = "/v1/completions", .req = req};
        together[i] = alone[i];
        job_run(&alone[i]);
    }
    run_jobs(together, 4);
    for (int i = 0; i < 4; i++) {
        CHECK(str_eq(alone[i].whole.content, together[i].whole.content));
        CHECK_EQ_INT(together[i].whole.completion_tokens, 100);
        whole_free(&alone[i].whole);
        whole_free(&together[i].whole);
        free(alone[i].req);
    }
    /* max_tokens is cut to what the pool can ever hold; a prompt that
     * cannot fit at all is refused. */
    char *req = ids_request(60, 50, 1000, "\"logit_bias\":{\"1\":-100}");
    whole_result w = run_whole(s.port, "/v1/completions", req);
    CHECK_EQ_INT(w.completion_tokens, 192 - 60);
    CHECK(!strcmp(w.finish, "length"));
    whole_free(&w);
    free(req);
    req = ids_request(192, 51, 10, NULL);
    http_resp r;
    CHECK_EQ_INT(post(s.port, "/v1/completions", req, &r), 400);
    CHECK(r.body && strstr(r.body, "context_length_exceeded"));
    http_free(&r);
    free(req);
    CHECK(metric_becomes(s.port, "dsv32_kv_pages_used", 0, 5));
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* ---- Bad input ------------------------------------------------------------ */

/* Checks that an answer is an OpenAI error object with this status. */
static void check_error(int port, const char *method, const char *path, const char *body, int status,
                        const char *needle) {
    http_resp r;
    http(port, method, path, NULL, body, &r);
    CHECKF(r.status == status, "%s %s %s -> %d (expected %d): %s", method, path, body ? body : "", r.status, status,
           r.body ? r.body : "");
    cJSON *j = cJSON_Parse(r.body ? r.body : "");
    const cJSON *e = cJSON_GetObjectItem(j, "error");
    CHECKF(cJSON_IsString(cJSON_GetObjectItem(e, "message")) && cJSON_IsString(cJSON_GetObjectItem(e, "type")),
           "not an error object: %s", r.body ? r.body : "");
    if (needle) CHECKF(r.body && strstr(r.body, needle), "%s: no \"%s\" in %s", body, needle, r.body);
    cJSON_Delete(j);
    http_free(&r);
}

TEST(server_bad_input) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --max-body 65536");
    const char *chat = "/v1/chat/completions", *cmpl = "/v1/completions";
    static const struct { int chat; const char *body, *needle; } bad[] = {
        {1, "{", "not valid JSON"},
        {1, "[]", "JSON object"},
        {1, "{\"messages\":\"hi\"}", "\"param\":\"messages\""},
        {1, "{\"messages\":[]}", "must not be empty"},
        {1, "{}", "\"param\":\"messages\""},
        {1, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "unknown role"},
        {1, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "content"},
        {1, "{\"model\":\"gpt-4\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model_not_found"},
        {1, "{\"model\":7,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"model\""},
        {1, "{\"n\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"n\""},
        {1, "{\"temperature\":\"hot\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"temperature\""},
        {1, "{\"temperature\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"temperature\""},
        {1, "{\"top_p\":-1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"top_p\""},
        {1, "{\"max_tokens\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"max_tokens\""},
        {1, "{\"max_tokens\":1.5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"max_tokens\""},
        {1, "{\"seed\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"seed\""},
        {1, "{\"stop\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"stop\""},
        {1, "{\"stream\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"stream\""},
        {1, "{\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "\"param\":\"stream_options\""},
        {1, "{\"logit_bias\":{\"abc\":1},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "logit_bias"},
        {1, "{\"logit_bias\":{\"5\":1000},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "logit_bias"},
        {1, "{\"logit_bias\":{\"777\":1},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "logit_bias"},
        {1, "{\"logprobs\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"logprobs\""},
        {1, "{\"top_logprobs\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"top_logprobs\""},
        {1, "{\"logprobs\":true,\"top_logprobs\":21,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "\"param\":\"top_logprobs\""},
        {0, "{\"prompt\":\"x\",\"logprobs\":6}", "\"param\":\"logprobs\""},
        {1, "{\"tool_choice\":\"required\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "tool_choice"},
        {1, "{\"tools\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "tools"},
        {1, "{\"chat_template_kwargs\":{\"thinking\":\"yes\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "chat_template_kwargs"},
        {0, "{\"prompt\":5}", "\"param\":\"prompt\""},
        {0, "{\"prompt\":[]}", "empty"},
        {0, "{\"prompt\":[[1,2],[3]]}", "\"param\":\"prompt\""},
        {0, "{\"prompt\":[99999]}", "\"param\":\"prompt\""},
        {0, "{\"prompt\":[1.5]}", "\"param\":\"prompt\""},
        {0, "{\"prompt\":\"x\",\"echo\":true}", "\"param\":\"echo\""},
        {0, "{\"prompt\":\"x\",\"best_of\":3}", "\"param\":\"best_of\""},
        {0, "{\"prompt\":\"x\",\"n\":3}", "\"param\":\"n\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        check_error(s.port, "POST", bad[i].chat ? chat : cmpl, bad[i].body, 400, bad[i].needle);

    /* Prompts longer than the context (768). */
    char *long_ids = ids_request(768, 3, 5, NULL);
    check_error(s.port, "POST", cmpl, long_ids, 400, "context_length_exceeded");
    free(long_ids);
    char *words = malloc(20000);
    strcpy(words, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    for (int i = 0; i < 800; i++) strcat(words, " page");
    strcat(words, "\"}]}");
    check_error(s.port, "POST", chat, words, 400, "context_length_exceeded");
    free(words);

    /* Routes and methods. */
    check_error(s.port, "GET", "/v1/nothing", NULL, 404, NULL);
    check_error(s.port, "POST", "/nothing", "{}", 404, NULL);
    check_error(s.port, "GET", chat, NULL, 405, NULL);
    check_error(s.port, "DELETE", "/health", NULL, 405, NULL);
    http_resp r;
    char allow[64];
    http(s.port, "GET", cmpl, NULL, NULL, &r);
    CHECK(http_header(&r, "Allow", allow, sizeof allow) && !strcmp(allow, "POST"));
    http_free(&r);
    check_error(s.port, "POST", "/tokenize", "{\"content\":5}", 400, "content");
    check_error(s.port, "POST", "/tokenize", "nope", 400, NULL);
    check_error(s.port, "POST", "/detokenize", "{\"tokens\":[99999]}", 400, "tokens");
    check_error(s.port, "POST", "/detokenize", "{\"tokens\":\"1\"}", 400, "tokens");

    /* Bodies over the limit: announced to a client that waits for "100
     * Continue" (refused before the body is sent), and chunked (read,
     * dropped, refused; test_server_exposed.c sends announced ones whole). */
    const char *big = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Expect: 100-continue\r\nContent-Length: 100000000\r\n\r\n";
    CHECK(http_raw(s.port, big, strlen(big), &r) == 0 && r.status == 413);
    CHECK(r.body && strstr(r.body, "request_too_large"));
    http_free(&r);
    size_t cap = 200000, n = 0;
    char *chunked = malloc(cap);
    n += (size_t)sprintf(chunked, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 20; i++) {
        n += (size_t)sprintf(chunked + n, "1000\r\n");
        memset(chunked + n, ' ', 4096);
        n += 4096;
        n += (size_t)sprintf(chunked + n, "\r\n");
    }
    n += (size_t)sprintf(chunked + n, "0\r\n\r\n");
    CHECK(http_raw(s.port, chunked, n, &r) == 0 && r.status == 413);
    http_free(&r);
    free(chunked);

    /* Garbage that is not HTTP at all. */
    CHECK(http_raw(s.port, "\x01\x02 nonsense\r\n\r\n", 15, &r) != 0 || r.status == 400);
    http_free(&r);

    CHECK(http(s.port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    /* A good request still works, and every error was counted. */
    whole_result w = run_whole(s.port, cmpl, "{\"prompt\":\"Hi\",\"max_tokens\":3}");
    CHECK(w.completion_tokens > 0);
    whole_free(&w);
    CHECK(metric(s.port, "dsv32_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}") >= 27);
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_api_key) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --api-key sesame");
    http_resp r;
    char www[64];
    CHECK(http(s.port, "GET", "/v1/models", NULL, NULL, &r) == 0 && r.status == 401);
    CHECK(http_header(&r, "WWW-Authenticate", www, sizeof www));
    CHECK(r.body && strstr(r.body, "authentication_error"));
    http_free(&r);
    CHECK(http(s.port, "GET", "/v1/models", "Authorization: Bearer sesam\r\n", NULL, &r) == 0 && r.status == 401);
    http_free(&r);
    CHECK(http(s.port, "POST", "/v1/completions", "Authorization: Bearer nope\r\n", "{\"prompt\":\"x\"}", &r) == 0 &&
          r.status == 401);
    http_free(&r);
    CHECK(http(s.port, "GET", "/v1/models", "Authorization: Bearer sesame\r\n", NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK(http(s.port, "POST", "/v1/completions", "Authorization: Bearer sesame\r\n",
               "{\"prompt\":\"x\",\"max_tokens\":2}", &r) == 0 && r.status == 200);
    http_free(&r);
    /* Outside /v1 no key is needed. */
    CHECK(http(s.port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* A long answer: EOS banned, so it runs until max_tokens. */
#define LONG_STREAM "{\"prompt\":\"Tell me a long story\",\"max_tokens\":700,\"stream\":true,\"logit_bias\":{\"1\":-100}}"
#define LONG_WHOLE "{\"prompt\":\"Tell me a long story\",\"max_tokens\":700,\"logit_bias\":{\"1\":-100}}"

TEST(server_queue_full_is_429) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --parallel 1 --queue 0");
    int fd = http_open(s.port, "/v1/completions", LONG_STREAM);
    REQUIRE(fd >= 0);
    REQUIRE(http_read_until(fd, "\"text\""));
    http_resp r;
    char retry[16];
    CHECK_EQ_INT(post(s.port, "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":2}", &r), 429);
    CHECK(http_header(&r, "Retry-After", retry, sizeof retry) && atoi(retry) >= 1);
    CHECK(r.body && strstr(r.body, "\"error\""));
    http_free(&r);
    close(fd);
    CHECK(metric_becomes(s.port, "dsv32_requests_running", 0, 10));
    CHECK_EQ_INT(post(s.port, "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":2}", &r), 200);
    http_free(&r);
    CHECK(http(s.port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_disconnect_frees_pages) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --parallel 2");
    /* A stream whose client leaves after the first tokens. */
    int fd = http_open(s.port, "/v1/completions", LONG_STREAM);
    REQUIRE(fd >= 0);
    REQUIRE(http_read_until(fd, "\"text\""));
    CHECK_EQ_INT(metric(s.port, "dsv32_requests_running"), 1);
    CHECK(metric(s.port, "dsv32_kv_pages_used") > 0);
    close(fd);
    CHECK(metric_becomes(s.port, "dsv32_requests_running", 0, 10));
    CHECK(metric_becomes(s.port, "dsv32_kv_pages_used", 0, 1));
    /* A non-streamed request whose client leaves while it runs. */
    fd = http_open(s.port, "/v1/completions", LONG_WHOLE);
    REQUIRE(fd >= 0);
    CHECK(metric_becomes(s.port, "dsv32_requests_running", 1, 10));
    close(fd);
    CHECK(metric_becomes(s.port, "dsv32_requests_running", 0, 10));
    CHECK(metric_becomes(s.port, "dsv32_kv_pages_used", 0, 1));
    /* Both were cut short, long before their 700 tokens. */
    CHECKF(metric(s.port, "dsv32_generation_tokens_total") < 1400, "%g tokens generated",
           metric(s.port, "dsv32_generation_tokens_total"));
    http_resp r;
    CHECK(http(s.port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK_EQ_INT(server_stop(&s), 0);
}

TEST(server_sigterm_ends_streams) {
    server s;
    server_start(&s, fixture_random(), "-t 1 --parallel 2");
    int fd = http_open(s.port, "/v1/completions", LONG_STREAM);
    REQUIRE(fd >= 0);
    REQUIRE(http_read_until(fd, "\"text\""));
    /* Stopping ends the stream with an error event and [DONE], then exits 0. */
    kill(s.pid, SIGTERM);
    CHECK(http_read_until(fd, "data: [DONE]"));
    close(fd);
    CHECK_EQ_INT(server_stop(&s), 0);
    /* SIGINT (Ctrl-C) takes the same path. */
    server_start(&s, fixture_random(), "-t 1");
    kill(s.pid, SIGINT);
    int st = 0;
    CHECK(waitpid(s.pid, &st, 0) == s.pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- The command ---------------------------------------------------------- */

TEST(server_command_line) {
    const char *bin = test_bin();
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s serve --help", bin);
    CHECK_EQ_INT(test_run(cmd, &out), 0);
    static const char *const opts[] = {"--model", "--host", "--port", "--parallel", "--ctx", "--kv-memory", "--batch",
                                       "--queue", "--max-body", "--api-key", "--alias", "--threads", "--verbose",
                                       "--body-budget", "--discard-max", "--discard-timeout", "--max-conns",
                                       "--max-conns-per-client", "--idle-timeout", "--header-timeout",
                                       "--body-timeout"};
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) CHECKF(out && strstr(out, opts[i]), "--help lacks %s", opts[i]);
    CHECK(out && strstr(out, "(default: 127.0.0.1)") && strstr(out, "(default: 8080)"));
    free(out);
    static const struct { const char *args, *needle; int status; } bad[] = {
        {"", "usage:", 2},
        {"-m x --port 70000", "--port", 2},
        {"-m x --kv-memory lots", "--kv-memory", 2},
        {"-m x --wat", "unknown option", 2},
        {"-m /nonexistent --port 0", "/nonexistent", 1},
        {"-m x --parallel", "needs a value", 2},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s serve %s 2>&1", bin, bad[i].args);
        int rc = test_run(cmd, &out);
        CHECKF(rc == bad[i].status && out && strstr(out, bad[i].needle), "serve %s -> %d: %s", bad[i].args, rc,
               out ? out : "");
        free(out);
    }
    /* A port in use is an error, not a hang. */
    server s;
    server_start(&s, fixture_random(), "-t 1");
    snprintf(cmd, sizeof cmd, "timeout 60 %s serve -m '%s' -t 1 --port %d 2>&1", bin, fixture_random(), s.port);
    CHECK_EQ_INT(test_run(cmd, &out), 1);
    CHECKF(out && strstr(out, "cannot listen"), "%s", out ? out : "");
    free(out);
    CHECK_EQ_INT(server_stop(&s), 0);
}

/* The engine options of serve go through the parser generate uses: a bad
 * value gets a message of the same form (after "dsv32 <command>: "; only
 * the lowest --ctx differs, 16 for generate), and serve keeps its
 * usage-error status 2 where generate has 1. The long names --model and
 * --threads reach the engine in both. */
static int message_is(const char *out, const char *cmd, const char *want) {
    char line[512];
    snprintf(line, sizeof line, "dsv32 %s: %s\n", cmd, want);
    return out && !strcmp(out, line);
}

TEST(server_engine_options_as_generate) {
    const char *bin = test_bin();
    static const struct { const char *args, *serve, *generate; } bad[] = {
        {"--ctx 0", "--ctx: '0' is not an integer in [1, 16777216]", "--ctx: '0' is not an integer in [16, 16777216]"},
        {"--ctx 12x", "--ctx: '12x' is not an integer in [1, 16777216]",
         "--ctx: '12x' is not an integer in [16, 16777216]"},
        {"--ctx 16777217", "--ctx: '16777217' is not an integer in [1, 16777216]",
         "--ctx: '16777217' is not an integer in [16, 16777216]"},
        {"--batch 2", "--batch: '2' is not an integer in [3, 1048576]", NULL},
        {"--batch 1048577", "--batch: '1048577' is not an integer in [3, 1048576]", NULL},
        {"--batch -5", "--batch: '-5' is not an integer in [3, 1048576]", NULL},
        {"--threads 0", "--threads: '0' is not an integer in [1, 1024]", NULL},
        {"--batch", "option --batch needs a value", NULL},
    };
    char cmd[2048], *out = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s serve -m x %s 2>&1", bin, bad[i].args);
        int rc = test_run(cmd, &out);
        CHECKF(rc == 2 && message_is(out, "serve", bad[i].serve), "serve %s -> %d: '%s'", bad[i].args, rc,
               out ? out : "");
        free(out);
        snprintf(cmd, sizeof cmd, "%s generate -m x -p hi %s 2>&1", bin, bad[i].args);
        rc = test_run(cmd, &out);
        const char *want = bad[i].generate ? bad[i].generate : bad[i].serve;
        CHECKF(rc == 1 && message_is(out, "generate", want), "generate %s -> %d: '%s'", bad[i].args, rc,
               out ? out : "");
        free(out);
    }
    /* The long names: the model directory is what fails, after the options. */
    snprintf(cmd, sizeof cmd, "%s serve --model /nonexistent --threads 1 --ctx 64 --batch 8 --port 0 2>&1", bin);
    CHECKF(test_run(cmd, &out) == 1 && out && strstr(out, "/nonexistent"), "%s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --model /nonexistent --threads 1 -p hi 2>&1", bin);
    CHECKF(test_run(cmd, &out) == 1 && out && strstr(out, "/nonexistent"), "%s", out ? out : "");
    free(out);
}

TEST(server_survives_mutated_requests) {
    /* Valid requests with bytes changed, dropped, doubled or cut: every one
     * gets an answer (never a dropped connection or a 5xx), and the server
     * is still up and exits cleanly afterwards. max_tokens comes first so
     * that cJSON, which takes the first of repeated keys, keeps it small. */
    static const char *const bodies[][2] = {
        {"/v1/chat/completions",
         "{\"max_tokens\":2,\"messages\":[{\"role\":\"system\",\"content\":\"Be brief\"},{\"role\":\"user\","
         "\"content\":\"What is the weather in Paris?\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
         "\"weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}],"
         "\"temperature\":0.5,\"top_p\":0.9,\"stop\":[\"x\"],\"logit_bias\":{\"5\":1},\"seed\":3}"},
        {"/v1/completions", "{\"max_tokens\":2,\"prompt\":[1,2,3,4,5],\"logprobs\":2,\"stream\":true,"
                            "\"stream_options\":{\"include_usage\":true}}"},
        {"/v1/completions", "{\"max_tokens\":2,\"prompt\":\"Hello world\",\"top_k\":5,\"min_p\":0.1}"},
        {"/tokenize", "{\"content\":\"Hello world\",\"with_pieces\":true}"},
        {"/detokenize", "{\"tokens\":[262,267,36]}"},
    };
    static const char alphabet[] = "{}[]\",:.-0123456789eEtrufalsn \\u\x01\x7f\xc3\xff";
    server s;
    server_start(&s, fixture_random(), "-t 1 --ctx 128");
    unsigned seed = 2024;
#define RND() (seed = seed * 1103515245u + 12345u, (seed >> 8) & 0xffffff)
    char body[2048];
    for (int i = 0; i < 150; i++) {
        const char *path = bodies[i % 5][0], *base = bodies[i % 5][1];
        size_t n = strlen(base), keep = 16; /* the max_tokens key stays */
        memcpy(body, base, n + 1);
        for (int k = 0, edits = 1 + (int)(RND() % 2); k < edits && n > keep; k++) {
            size_t at = keep + RND() % (n - keep);
            switch (RND() % 4) {
            case 0: body[at] = alphabet[RND() % (sizeof alphabet - 1)]; break;     /* change */
            case 1: memmove(body + at, body + at + 1, n - at); n--; break;         /* drop */
            case 2: if (n + 1 < sizeof body) {                                     /* insert */
                        memmove(body + at + 1, body + at, n - at + 1);
                        body[at] = alphabet[RND() % (sizeof alphabet - 1)];
                        n++;
                    }
                    break;
            case 3: body[n = at] = 0; break;                                       /* cut */
            }
        }
        http_resp r;
        int rc = http(s.port, "POST", path, NULL, body, &r);
        CHECKF(rc == 0 && r.status > 0 && r.status < 500, "%s %s -> %d %s", path, body, r.status, r.body ? r.body : "");
        http_free(&r);
    }
#undef RND
    http_resp r;
    CHECK(http(s.port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200);
    http_free(&r);
    CHECK(metric_becomes(s.port, "dsv32_kv_pages_used", 0, 5));
    CHECK_EQ_INT(server_stop(&s), 0);
}
