/* test_gen.c: the generation module (include/dsv32_gen.h).
 *
 * The slot is driven with logits written by the test (no forward pass), so
 * each rule is checked on its own: the chunking rule over every prompt
 * length, start and budget; stop strings that span tokens; banned ids never
 * sampled, even when they have the highest logit; EOS and max_tokens ending
 * a sequence with the held-back text handed out; the batch order. Then the
 * end-to-end promise: `dsv32 generate` and `dsv32 serve` give the same text
 * for the same request and seed, including a prompt longer than --batch. */
#include <stdlib.h>
#include <string.h>

#include "dsv32_gen.h"
#include "server_util.h"
#include "test.h"

/* The fixture model's tokenizer and a context on it. */
typedef struct env {
    dsv_model *m;
    dsv_tokenizer *tok;
    dsv_context *ctx;
    dsv_gen *g;
    int V;
} env;

static void env_open(env *e, int n_ctx, int mha_max_keys) {
    memset(e, 0, sizeof *e);
    REQUIREF(dsv_model_open(&e->m, fixture_random(), NULL) == DSV_OK, "%s", dsv_errmsg());
    REQUIREF(dsv_tokenizer_open(&e->tok, fixture_random()) == DSV_OK, "%s", dsv_errmsg());
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_seq = 2;
    cp.n_threads = 1;
    cp.mha_max_keys = mha_max_keys;
    REQUIREF(dsv_context_open(&e->ctx, e->m, &cp) == DSV_OK, "%s", dsv_errmsg());
    REQUIREF(dsv_gen_open(&e->g, e->ctx, dsv_model_config(e->m), e->tok) == DSV_OK, "%s", dsv_errmsg());
    e->V = dsv_model_config(e->m)->vocab_size;
}

static void env_close(env *e) {
    dsv_gen_close(e->g);
    dsv_context_close(e->ctx);
    dsv_tokenizer_close(e->tok);
    dsv_model_close(e->m);
}

/* The one token of a single character. */
static int32_t char_id(env *e, char c) {
    int32_t id[4];
    size_t n = 0;
    REQUIRE(dsv_tokenize(e->tok, &c, 1, id, 4, &n) == DSV_OK && n == 1);
    return id[0];
}

/* Runs the slot's prompt through next/fed (no forward pass). */
static void feed_prompt(dsv_gen_slot *s, int budget) {
    dsv_batch_entry en;
    int n;
    while (!dsv_gen_slot_decoding(s) && !dsv_gen_slot_finish(s) && (n = dsv_gen_slot_next(s, budget, &en)) > 0)
        REQUIRE(dsv_gen_slot_fed(s, n) == DSV_OK);
}

/* One decoding step with logits that make `want` the greedy choice (every
 * other id at 0, want at 10, boost at 20). */
static dsv_gen_token step(env *e, dsv_gen_slot *s, float *logits, int32_t want, int32_t boost) {
    dsv_batch_entry en;
    if (dsv_gen_slot_decoding(s)) {
        REQUIRE(dsv_gen_slot_next(s, 8, &en) == 1 && en.logits == DSV_LOGITS_LAST);
        REQUIRE(dsv_gen_slot_fed(s, 1) == DSV_OK);
    }
    for (int i = 0; i < e->V; i++) logits[i] = 0;
    logits[want] = 10;
    if (boost >= 0) logits[boost] = 20;
    dsv_gen_token t;
    REQUIREF(dsv_gen_slot_accept(s, logits, &t) == DSV_OK, "%s", dsv_errmsg());
    return t;
}

static dsv_gen_slot_params greedy(int max_tokens) {
    dsv_gen_slot_params p = dsv_gen_slot_default_params();
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    return p;
}

TEST(gen_chunk_rule) {
    /* M = 40 inside a context of 128: prompts end before, at and after M. */
    env e;
    env_open(&e, 128, 40);
    const int M = 40;
    unsigned seed = 7;
    for (int n_prompt = 1; n_prompt <= 100; n_prompt++)
        for (int p0 = 0; p0 < n_prompt; p0 += 1 + p0 / 8)
            for (int budget = 3; budget <= 70; budget += budget < 12 ? 1 : 9)
                for (int vary = 0; vary < 2; vary++) {
                    int pos = p0, b = budget, first = 1;
                    while (pos < n_prompt) {
                        if (vary) b = 3 + (int)((seed = seed * 1103515245u + 12345u) >> 8) % budget;
                        int len = dsv_gen_chunk_len(e.g, pos, n_prompt, b);
                        /* Budget >= 3: never stuck; within the budget. */
                        REQUIREF(len >= 1 && len <= b && pos + len <= n_prompt, "n %d pos %d budget %d: %d", n_prompt,
                                 pos, b, len);
                        /* Below M: never across it, never a single token
                         * unless that token is all there is to compute. */
                        if (pos < M) {
                            CHECKF(pos + len <= M, "n %d pos %d budget %d: %d crosses M", n_prompt, pos, b, len);
                            int alone = first && (n_prompt < M ? n_prompt : M) - pos == 1;
                            CHECKF(len >= 2 || alone, "n %d pos %d budget %d: one token below M", n_prompt, pos, b);
                        }
                        pos += len;
                        first = 0;
                    }
                }
    /* Too small a budget waits instead of leaving one token before M. */
    CHECK_EQ_INT(dsv_gen_chunk_len(e.g, 0, 60, 1), 0);
    CHECK_EQ_INT(dsv_gen_chunk_len(e.g, 37, 60, 2), 0);
    CHECK_EQ_INT(dsv_gen_chunk_len(e.g, 0, 60, 39), 38);
    CHECK_EQ_INT(dsv_gen_chunk_len(e.g, 38, 60, 39), 2);
    CHECK_EQ_INT(dsv_gen_chunk_len(e.g, 40, 60, 1), 1);

    /* A slot cuts its prompt by the rule and asks for logits on the last
     * chunk only; dsv_gen_batch puts decoders first and keeps prompt order. */
    int32_t prompt[60];
    for (int i = 0; i < 60; i++) prompt[i] = 3 + i;
    dsv_gen_slot_params p = greedy(4);
    dsv_gen_slot *a, *b;
    REQUIRE(dsv_gen_slot_init(&a, e.g, 0, prompt, 60, 0, &p) == DSV_OK);
    REQUIRE(dsv_gen_slot_init(&b, e.g, 1, prompt, 5, 2, &p) == DSV_OK);
    dsv_batch_entry en[2];
    int who[2];
    dsv_gen_slot *slots[2] = {a, b};
    CHECK_EQ_INT(dsv_gen_batch(slots, 2, 39, en, who), 1); /* 38 for a; b's 3 would not fit in 1 */
    CHECK(en[0].seq == 0 && en[0].n_tokens == 38 && en[0].logits == DSV_LOGITS_NONE && who[0] == 0);
    CHECK(dsv_gen_slot_fed(a, 37) == DSV_ERR_ARG);
    REQUIRE(dsv_gen_slot_fed(a, 38) == DSV_OK);
    CHECK_EQ_INT(dsv_gen_batch(slots, 2, 30, en, who), 2);
    CHECK(en[0].n_tokens == 2 && en[1].seq == 1 && en[1].n_tokens == 3 && en[1].logits == DSV_LOGITS_LAST);
    REQUIRE(dsv_gen_slot_fed(a, 2) == DSV_OK && dsv_gen_slot_fed(b, 3) == DSV_OK);
    float *logits = malloc((size_t)e.V * sizeof *logits);
    step(&e, b, logits, char_id(&e, 'a'), -1);
    CHECK(dsv_gen_slot_decoding(b) && dsv_gen_slot_n_past(b) == 5);
    CHECK_EQ_INT(dsv_gen_batch(slots, 2, 30, en, who), 2);
    CHECK(who[0] == 1 && en[0].n_tokens == 1 && who[1] == 0 && en[1].n_tokens == 20 && en[1].logits == DSV_LOGITS_LAST);
    dsv_gen_slot_free(a);
    dsv_gen_slot_free(b);
    free(logits);
    env_close(&e);
}

TEST(gen_stop_strings_across_tokens) {
    env e;
    env_open(&e, 128, 0);
    float *logits = malloc((size_t)e.V * sizeof *logits);
    const char *stop[] = {"lo wo", "zzz"};
    dsv_gen_slot_params p = greedy(100);
    p.stop = stop;
    p.n_stop = 2;
    int32_t prompt[2] = {0, char_id(&e, 'x')};
    dsv_gen_slot *s;
    REQUIRE(dsv_gen_slot_init(&s, e.g, 0, prompt, 2, 0, &p) == DSV_OK);
    feed_prompt(s, 64);
    const char *text = "Hello world";
    char got[64] = "";
    int i = 0;
    for (; text[i]; i++) {
        dsv_gen_token t = step(&e, s, logits, char_id(&e, text[i]), -1);
        CHECK_EQ_INT(t.id, char_id(&e, text[i]));
        strncat(got, t.text, t.len);
        /* "l" could begin the stop string: it is held back. */
        if (i == 3) CHECK_STR(got, "Hel");
        if (t.finish) {
            CHECK_EQ_INT(t.finish, DSV_GEN_STOP);
            break;
        }
    }
    CHECK_EQ_INT(i, 7); /* ended on the 'o' that completes "lo wo" */
    CHECK_STR(got, "Hel");
    CHECK_EQ_INT(dsv_gen_slot_n_gen(s), 8);
    /* Ended: no entry, no more tokens. */
    dsv_batch_entry en;
    dsv_gen_token t;
    CHECK_EQ_INT(dsv_gen_slot_next(s, 8, &en), 0);
    CHECK(dsv_gen_slot_accept(s, logits, &t) == DSV_ERR_ARG);
    dsv_gen_slot_free(s);

    /* EOS ends it: the text held back for "zzz" comes out, EOS has none. */
    REQUIRE(dsv_gen_slot_init(&s, e.g, 0, prompt, 2, 0, &p) == DSV_OK);
    feed_prompt(s, 64);
    got[0] = 0;
    t = step(&e, s, logits, char_id(&e, 'a'), -1);
    strncat(got, t.text, t.len);
    t = step(&e, s, logits, char_id(&e, 'z'), -1);
    strncat(got, t.text, t.len);
    CHECK_STR(got, "a");
    t = step(&e, s, logits, dsv_gen_eos(e.g), -1);
    strncat(got, t.text, t.len);
    CHECK(t.id == dsv_gen_eos(e.g) && t.finish == DSV_GEN_EOS && dsv_gen_slot_finish(s) == DSV_GEN_EOS);
    CHECK_STR(got, "az");
    CHECK_EQ_INT(dsv_gen_slot_n_gen(s), 3);
    dsv_gen_slot_free(s);
    free(logits);
    env_close(&e);
}

TEST(gen_banned_ids_never_sampled) {
    env e;
    env_open(&e, 128, 0);
    int n_banned;
    const int32_t *banned = dsv_gen_banned(e.g, &n_banned);
    /* The fixture's tokenizer leaves ids without text below its markers. */
    REQUIRE(n_banned > 0);
    for (int i = 0; i < n_banned; i++) {
        CHECK(banned[i] >= 0 && banned[i] < e.V && !dsv_token_piece(e.tok, banned[i], NULL));
        CHECK(i == 0 || banned[i] > banned[i - 1]);
    }
    int n_text = 0;
    for (int32_t id = 0; id < e.V; id++) n_text += dsv_token_piece(e.tok, id, NULL) != NULL;
    CHECK_EQ_INT(n_text + n_banned, e.V);
    float *logits = malloc((size_t)e.V * sizeof *logits);
    int32_t prompt[1] = {0};
    for (int temp = 0; temp < 2; temp++) {
        dsv_gen_slot_params p = greedy(400);
        p.sampling.temperature = temp ? 2.0f : 0;
        p.sampling.seed = 5;
        dsv_gen_slot *s;
        REQUIRE(dsv_gen_slot_init(&s, e.g, 0, prompt, 1, 0, &p) == DSV_OK);
        feed_prompt(s, 8);
        int32_t want = char_id(&e, 'q');
        for (int k = 0; k < 400 && !dsv_gen_slot_finish(s); k++) {
            /* A banned id gets the highest logit; EOS is out of the way. */
            int32_t boost = banned[k % n_banned];
            if (temp) {
                dsv_batch_entry en;
                if (dsv_gen_slot_decoding(s)) {
                    REQUIRE(dsv_gen_slot_next(s, 8, &en) == 1);
                    REQUIRE(dsv_gen_slot_fed(s, 1) == DSV_OK);
                }
                for (int i = 0; i < e.V; i++) logits[i] = (float)((i * 37 + k * 11) % 13) * 0.2f;
                logits[boost] = 30;
                logits[dsv_gen_eos(e.g)] = -INFINITY;
                dsv_gen_token t;
                REQUIRE(dsv_gen_slot_accept(s, logits, &t) == DSV_OK);
                CHECKF(dsv_token_piece(e.tok, t.id, NULL), "sampled %d, which has no text", t.id);
            } else {
                dsv_gen_token t = step(&e, s, logits, want, boost);
                CHECK_EQ_INT(t.id, want);
            }
        }
        CHECK_EQ_INT(dsv_gen_slot_finish(s), DSV_GEN_LENGTH);
        CHECK_EQ_INT(dsv_gen_slot_n_gen(s), 400);
        dsv_gen_slot_free(s);
    }
    free(logits);
    env_close(&e);
}

TEST(gen_length_and_errors) {
    env e;
    env_open(&e, 128, 0);
    float *logits = malloc((size_t)e.V * sizeof *logits);
    int32_t prompt[3] = {0, 40, 41};
    dsv_gen_slot_params p = greedy(2);
    dsv_gen_slot *s;
    /* max_tokens: the last token ends it and holds no entry to feed. */
    REQUIRE(dsv_gen_slot_init(&s, e.g, 1, prompt, 3, 1, &p) == DSV_OK);
    dsv_batch_entry en;
    CHECK_EQ_INT(dsv_gen_slot_next(s, 64, &en), 2);
    CHECK(en.seq == 1 && en.tokens[0] == 40 && en.logits == DSV_LOGITS_LAST);
    dsv_gen_token t;
    CHECK(dsv_gen_slot_accept(s, logits, &t) == DSV_ERR_ARG); /* not fed yet */
    dsv_gen_slot_free(s);
    REQUIRE(dsv_gen_slot_init(&s, e.g, 1, prompt, 3, 1, &p) == DSV_OK);
    feed_prompt(s, 64);
    t = step(&e, s, logits, char_id(&e, 'o'), -1);
    CHECK(t.finish == DSV_GEN_RUNNING && t.len == 1 && t.text[0] == 'o');
    t = step(&e, s, logits, char_id(&e, 'k'), -1);
    CHECK(t.finish == DSV_GEN_LENGTH && t.len == 1 && t.text[0] == 'k');
    CHECK_EQ_INT(dsv_gen_slot_next(s, 64, &en), 0);
    CHECK_EQ_INT(dsv_gen_slot_n_past(s), 4);
    dsv_gen_slot_free(s);
    /* max_tokens 0: the prompt is computed without logits, then it ends. */
    p.max_tokens = 0;
    REQUIRE(dsv_gen_slot_init(&s, e.g, 0, prompt, 3, 0, &p) == DSV_OK);
    CHECK_EQ_INT(dsv_gen_slot_next(s, 64, &en), 3);
    CHECK(en.logits == DSV_LOGITS_NONE);
    REQUIRE(dsv_gen_slot_fed(s, 3) == DSV_OK);
    CHECK_EQ_INT(dsv_gen_slot_finish(s), DSV_GEN_LENGTH);
    dsv_gen_slot_free(s);
    /* Bad arguments name what is wrong. */
    p.max_tokens = 4;
    CHECK(dsv_gen_slot_init(&s, e.g, 0, prompt, 3, 3, &p) == DSV_ERR_ARG && !s);
    CHECK(dsv_gen_slot_init(&s, e.g, 0, prompt, 0, 0, &p) == DSV_ERR_ARG);
    int32_t bad[2] = {0, e.V};
    CHECK(dsv_gen_slot_init(&s, e.g, 0, bad, 2, 0, &p) == DSV_ERR_ARG && strstr(dsv_errmsg(), "prompt[1]"));
    const char *empty[] = {""};
    p.stop = empty;
    p.n_stop = 1;
    CHECK(dsv_gen_slot_init(&s, e.g, 0, prompt, 3, 0, &p) == DSV_ERR_ARG && !s);
    p.n_stop = 0;
    p.sampling.top_p = 2;
    CHECK(dsv_gen_slot_init(&s, e.g, 0, prompt, 3, 0, &p) == DSV_ERR_ARG && !s);
    dsv_gen_slot_free(NULL);
    free(logits);
    env_close(&e);
}

/* ---- CLI and server -------------------------------------------------------- */

/* The completion text of one request, from the server. */
static char *server_text(int port, const char *prompt, int n, double temp, int seed) {
    char body[2048];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":%g,\"seed\":%d}", prompt, n,
             temp, seed);
    http_resp r;
    REQUIREF(post(port, "/v1/completions", body, &r) == 200, "%d %s", r.status, r.body ? r.body : "");
    whole_result w;
    REQUIRE(whole_parse(r.body, &w) == 0);
    char *text = strdup(w.content ? w.content : "");
    whole_free(&w);
    http_free(&r);
    return text;
}

TEST(gen_cli_matches_server) {
    const char *bin = test_bin();
    /* One slot on the server so that --batch 16 is the whole step, as for
     * the CLI; the second prompt is longer than that. */
    server s;
    server_start(&s, fixture_random(), "-t 1 --parallel 1 --batch 16 --ctx 256");
    static const struct { const char *prompt; double temp; int seed; } cases[] = {
        {"Hello world", 0.9, 11},
        {"What is the weather in Paris? Hello there, what a fine day for a walk in the park", 1.0, 3},
        {"What is the weather in Paris? Hello there, what a fine day for a walk in the park", 0, 0},
        {"x", 1.5, 42},
    };
    int texts = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *want = server_text(s.port, cases[i].prompt, 24, cases[i].temp, cases[i].seed), cmd[2048], *out = NULL;
        snprintf(cmd, sizeof cmd,
                 "%s generate -m %s -p '%s' -n 24 --temp %g --seed %d --batch 16 --ctx 256 -t 1 2>/dev/null", bin,
                 fixture_random(), cases[i].prompt, cases[i].temp, cases[i].seed);
        REQUIRE(test_run(cmd, &out) == 0 && out);
        size_t n = strlen(out);
        CHECKF(n && out[n - 1] == '\n', "no final newline: '%s'", out);
        if (n) out[n - 1] = 0;
        CHECKF(!strcmp(out, want), "case %zu: CLI '%s' vs server '%s'", i, out, want);
        texts += want[0] != 0;
        free(out);
        free(want);
    }
    /* The cases generate text at all (the comparison is not of nothing). */
    CHECK(texts >= 3);
    CHECK_EQ_INT(server_stop(&s), 0);
}
