/* test_grammar.c: token constraints for structured output (src/text/grammar.c).
 * The mask (trie walk plus bitsets) against the one-token-at-a-time
 * reference at every step of random walks; random walks end with EOS and
 * give JSON that validates against its schema; refused keywords name
 * themselves; the sampler hook bans what the constraint does not allow; and
 * the per-token mask cost with the real DeepSeek vocabulary (printed). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <time.h>

#include "dsv32_chat.h"
#include "dsv32_sampler.h"
#include "dsv32_tokenizer.h"
#include "test.h"
#include "text/grammar.h"

static dsv_tokenizer *open_tiny(void) {
    dsv_tokenizer *tok = NULL;
    REQUIREF(dsv_tokenizer_open(&tok, "models/tiny") == DSV_OK, "%s", dsv_errmsg());
    return tok;
}

static uint64_t rng = 1;
static uint32_t rnd(uint32_t n) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng >> 33) % n;
}

/* A uniformly random id among the set bits. */
static int32_t pick(const uint32_t *m, int32_t n_vocab) {
    int32_t count = 0;
    for (int32_t i = 0; i < n_vocab; i++) count += m[i / 32] >> (i % 32) & 1;
    REQUIRE(count > 0);
    int32_t k = (int32_t)rnd((uint32_t)count);
    for (int32_t i = 0; i < n_vocab; i++)
        if ((m[i / 32] >> (i % 32) & 1) && k-- == 0) return i;
    return -1;
}

/* ---- A validator for the schema subset ------------------------------------- */

static int validate(const cJSON *v, const cJSON *s);

static int is_type(const cJSON *v, const char *t) {
    if (!strcmp(t, "object")) return cJSON_IsObject(v);
    if (!strcmp(t, "array")) return cJSON_IsArray(v);
    if (!strcmp(t, "string")) return cJSON_IsString(v);
    if (!strcmp(t, "number")) return cJSON_IsNumber(v);
    if (!strcmp(t, "integer")) return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble);
    if (!strcmp(t, "boolean")) return cJSON_IsBool(v);
    if (!strcmp(t, "null")) return cJSON_IsNull(v);
    return 0;
}

static size_t utf8_chars(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int validate(const cJSON *v, const cJSON *s) {
    if (!s) return 1;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (cJSON_IsString(t) && !is_type(v, t->valuestring)) return 0;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(s, "const");
    if (c && !cJSON_Compare(v, c, 1)) return 0;
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (en) {
        int ok = 0;
        for (const cJSON *e = en->child; e; e = e->next) ok |= cJSON_Compare(v, e, 1);
        if (!ok) return 0;
    }
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    if (any) {
        int ok = 0;
        for (const cJSON *a = any->child; a; a = a->next) ok |= validate(v, a);
        if (!ok) return 0;
    }
    if (cJSON_IsObject(v)) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
            if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring)) return 0;
        const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        for (const cJSON *k = v->child; k; k = k->next) {
            const cJSON *ps = cJSON_GetObjectItemCaseSensitive(props, k->string);
            if (!ps && cJSON_IsFalse(addl)) return 0;
            if (ps && !validate(k, ps)) return 0;
        }
    }
    if (cJSON_IsArray(v)) {
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minItems"), *mx = cJSON_GetObjectItemCaseSensitive(s, "maxItems");
        int n = cJSON_GetArraySize(v);
        if ((mn && n < mn->valueint) || (mx && n > mx->valueint)) return 0;
        for (const cJSON *e = v->child; e; e = e->next)
            if (!validate(e, cJSON_GetObjectItemCaseSensitive(s, "items"))) return 0;
    }
    if (cJSON_IsString(v)) {
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minLength"), *mx = cJSON_GetObjectItemCaseSensitive(s, "maxLength");
        size_t n = utf8_chars(v->valuestring);
        if ((mn && n < (size_t)mn->valueint) || (mx && n > (size_t)mx->valueint)) return 0;
    }
    if (cJSON_IsNumber(v)) {
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minimum"), *mx = cJSON_GetObjectItemCaseSensitive(s, "maximum");
        if ((mn && v->valuedouble < mn->valuedouble) || (mx && v->valuedouble > mx->valuedouble)) return 0;
    }
    return 1;
}

static const char *const schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
    "\"age\":{\"type\":\"integer\",\"minimum\":18,\"maximum\":120},\"ok\":{\"type\":\"boolean\"}},"
    "\"required\":[\"name\",\"age\"],\"additionalProperties\":false}",
    "{\"type\":\"object\",\"properties\":{\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"bb\",\"c\"]},"
    "\"minItems\":1,\"maxItems\":3},\"score\":{\"type\":\"number\",\"minimum\":-1.5,\"maximum\":2.25},"
    "\"kind\":{\"const\":\"x\"},\"v\":{\"anyOf\":[{\"type\":\"null\"},{\"type\":\"string\",\"minLength\":2,\"maxLength\":4}]}},"
    "\"required\":[\"tags\",\"score\",\"kind\",\"v\"]}",
    "{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\",\"minimum\":-5,\"maximum\":5},"
    "\"y\":{\"type\":[\"string\",\"null\"],\"maxLength\":3}},\"required\":[\"x\"]},\"maxItems\":3}",
    NULL, /* json_object: any object */
};

/* Random walks: at every step the fast mask equals the reference; each
 * walk ends with EOS within its bound and validates. */
static void random_walks(const dsv_tokenizer *tok, int n_walks, int check_slow, const char *until) {
    dsv_vocab_index *vi = NULL;
    REQUIREF(dsv_vocab_index_build(&vi, tok) == DSV_OK, "%s", dsv_errmsg());
    int32_t V = dsv_tokenizer_n_vocab(tok), eos = dsv_tokenizer_eos(tok), until_id = -1;
    size_t words = ((size_t)V + 31) / 32;
    if (until) {
        size_t n_ids = 0;
        REQUIRE(dsv_tokenize(tok, until, strlen(until), &until_id, 1, &n_ids) == DSV_OK && n_ids == 1);
    }
    uint32_t *fast = calloc(words, 4), *slow = calloc(words, 4);
    REQUIRE(fast && slow);
    for (size_t k = 0; k < sizeof schemas / sizeof schemas[0]; k++) {
        cJSON *schema = schemas[k] ? cJSON_Parse(schemas[k]) : NULL;
        REQUIRE(!schemas[k] || schema);
        for (int w = 0; w < n_walks; w++) {
            dsv_grammar *g = NULL;
            dsv_grammar_branch br = {.schema = schema};
            dsv_grammar_json_opts o = {.branches = &br, .n_branches = 1, .eos = eos, .until = until};
            REQUIREF(dsv_grammar_json(&g, vi, &o) == DSV_OK, "%s", dsv_errmsg());
            const dsv_token_constraint *c = dsv_grammar_constraint(g);
            char text[16384];
            size_t n = 0;
            int steps = 0, ended = 0;
            for (; steps < 3000 && !ended; steps++) {
                memset(fast, 0, words * 4);
                REQUIRE(c->allowed(c->user, fast) == DSV_OK);
                if (check_slow) {
                    memset(slow, 0, words * 4);
                    REQUIRE(dsv_grammar_allowed_slow(g, slow) == DSV_OK);
                    for (size_t i = 0; i < words; i++)
                        REQUIREF(fast[i] == slow[i], "schema %zu walk %d step %d: the mask differs from the reference "
                                 "at word %zu (%08x vs %08x) after \"%.*s\"", k, w, steps, i, fast[i], slow[i], (int)n, text);
                }
                int32_t id = pick(fast, V);
                /* Free text ends when the marker comes: bring it after a while. */
                if (until_id >= 0 && steps >= 12 && (fast[until_id / 32] >> (until_id % 32) & 1)) id = until_id;
                REQUIRE(c->accept(c->user, id) == DSV_OK);
                if (id == eos) { ended = 1; break; }
                size_t len;
                const char *p = dsv_token_piece(tok, id, &len);
                REQUIRE(n + len < sizeof text);
                memcpy(text + n, p, len);
                n += len;
            }
            text[n] = 0;
            CHECKF(ended, "schema %zu walk %d: no EOS after %d steps: %.300s", k, w, steps, text);
            const char *json = text;
            if (until) {
                const char *e = strstr(text, until);
                REQUIREF(e, "no %s in %s", until, text);
                json = e + strlen(until);
            }
            cJSON *v = cJSON_Parse(json);
            CHECKF(v, "schema %zu walk %d: not JSON: %s", k, w, json);
            CHECKF(!v || (schema ? validate(v, schema) : cJSON_IsObject(v)), "schema %zu walk %d: invalid: %s", k, w, json);
            cJSON_Delete(v);
            dsv_grammar_free(g);
        }
        cJSON_Delete(schema);
    }
    free(fast);
    free(slow);
    dsv_vocab_index_free(vi);
}

TEST(grammar_mask_matches_reference) {
    dsv_tokenizer *tok = open_tiny();
    rng = 7;
    random_walks(tok, 6, 1, NULL);
    rng = 8;
    random_walks(tok, 2, 1, "</think>");
    dsv_tokenizer_close(tok);
}

TEST(grammar_walks_end_and_validate) {
    dsv_tokenizer *tok = open_tiny();
    rng = 99;
    random_walks(tok, 40, 0, NULL);
    dsv_tokenizer_close(tok);
}

TEST(grammar_refused_keywords) {
    static const struct { const char *schema, *msg; } cases[] = {
        {"{\"type\":\"string\",\"pattern\":\"^a\"}", "schema: keyword \"pattern\" is not supported"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"format\":\"date\"}}}",
         "schema.properties.a: keyword \"format\" is not supported"},
        {"{\"$ref\":\"#/definitions/x\"}", "schema: keyword \"$ref\" is not supported"},
        {"{\"oneOf\":[{\"type\":\"null\"}]}", "schema: keyword \"oneOf\" is not supported"},
        {"{\"allOf\":[{\"type\":\"null\"}]}", "schema: keyword \"allOf\" is not supported"},
        {"{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"multipleOf\":2}}", "schema.items: keyword \"multipleOf\""},
        {"{\"type\":\"number\",\"exclusiveMinimum\":0}", "keyword \"exclusiveMinimum\""},
        {"{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}", "additionalProperties: only true or false"},
        {"{\"type\":\"date\"}", "schema.type: \"date\" is not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *s = cJSON_Parse(cases[i].schema);
        REQUIRE(s);
        CHECKF(dsv_grammar_check_schema(s) == DSV_ERR_UNSUPPORTED, "case %zu accepted", i);
        CHECKF(strstr(dsv_errmsg(), cases[i].msg), "case %zu: \"%s\"", i, dsv_errmsg());
        cJSON_Delete(s);
    }
    for (size_t i = 0; i < 3; i++) {
        cJSON *s = cJSON_Parse(schemas[i]);
        CHECKF(dsv_grammar_check_schema(s) == DSV_OK, "schema %zu: %s", i, dsv_errmsg());
        cJSON_Delete(s);
    }
}

/* The sampler applies a constraint: a forced sequence comes out whatever
 * the logits say, then EOS; a token the constraint refuses is an error. */
TEST(grammar_sampler_hook) {
    const int32_t V = 50, ids[3] = {7, 3, 41};
    dsv_grammar *g = NULL;
    REQUIRE(dsv_grammar_forced(&g, ids, 3, 1) == DSV_OK);
    dsv_sampler_params p = dsv_sampler_default_params();
    p.seed = 5;
    p.constraint = dsv_grammar_constraint(g);
    dsv_sampler *s = NULL;
    REQUIRE(dsv_sampler_init(&s, V, &p) == DSV_OK);
    float logits[50];
    for (int i = 0; i < V; i++) logits[i] = i == 3 ? 100.0f : 0.0f;
    for (int k = 0; k < 4; k++) {
        int32_t id = -1;
        REQUIRE(dsv_sampler_sample(s, logits, &id) == DSV_OK);
        CHECK_EQ_INT(id, k < 3 ? ids[k] : 1);
        REQUIRE(dsv_sampler_accept(s, id) == DSV_OK);
    }
    CHECK(dsv_grammar_done(g));
    dsv_sampler_free(s);
    dsv_grammar_free(g);
    REQUIRE(dsv_grammar_forced(&g, ids, 3, 1) == DSV_OK);
    p.constraint = dsv_grammar_constraint(g);
    REQUIRE(dsv_sampler_init(&s, V, &p) == DSV_OK);
    CHECK_EQ_INT(dsv_sampler_accept(s, 9), DSV_ERR_ARG);
    dsv_sampler_free(s);
    dsv_grammar_free(g);
}

/* The per-step mask cost on DeepSeek's own 129K vocabulary, over random
 * walks through the schemas (printed, not asserted: tests never assert on
 * time). The masks are also held against the reference at a few steps. */
TEST(grammar_mask_cost_real_vocab) {
    const char *dir = test_tokenizer_dir(0);
    dsv_tokenizer *tok = NULL;
    REQUIREF(dsv_tokenizer_open(&tok, dir) == DSV_OK, "%s", dsv_errmsg());
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dsv_vocab_index *vi = NULL;
    REQUIRE(dsv_vocab_index_build(&vi, tok) == DSV_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double build_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    int32_t V = dsv_tokenizer_n_vocab(tok), eos = 1; /* <｜end▁of▁sentence｜> (no tokenizer_config.json here) */
    size_t words = ((size_t)V + 31) / 32;
    uint32_t *m = calloc(words, 4), *slow = calloc(words, 4);
    REQUIRE(m && slow);
    double total = 0, worst = 0;
    long masks = 0;
    rng = 3;
    /* The JSON schemas, then the first as a V3.2 tool call (DSML, its
     * string parameter written raw). */
    for (size_t k = 0; k <= sizeof schemas / sizeof schemas[0]; k++) {
        int dsml = k == sizeof schemas / sizeof schemas[0];
        cJSON *schema = dsml ? cJSON_Parse(schemas[0]) : schemas[k] ? cJSON_Parse(schemas[k]) : NULL;
        for (int w = 0; w < 3; w++) {
            dsv_grammar *g = NULL;
            dsv_grammar_branch br = {.schema = schema, .dsml = dsml,
                                     .prefix = dsml ? "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n" : NULL,
                                     .suffix = dsml ? "\n</｜DSML｜invoke>\n</｜DSML｜function_calls>" : NULL};
            dsv_grammar_json_opts o = {.branches = &br, .n_branches = 1, .eos = eos};
            REQUIRE(dsv_grammar_json(&g, vi, &o) == DSV_OK);
            const dsv_token_constraint *c = dsv_grammar_constraint(g);
            for (int step = 0; step < 400; step++) {
                memset(m, 0, words * 4);
                /* CPU time of this thread: a busy machine's waits do not count. */
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
                REQUIRE(c->allowed(c->user, m) == DSV_OK);
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
                double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
                total += ms;
                worst = ms > worst ? ms : worst;
                masks++;
                if (step % 25 == 0) {
                    memset(slow, 0, words * 4);
                    REQUIRE(dsv_grammar_allowed_slow(g, slow) == DSV_OK);
                    REQUIREF(!memcmp(m, slow, words * 4), "schema %zu step %d: mask differs from the reference", k, step);
                }
                int32_t id = pick(m, V);
                REQUIRE(c->accept(c->user, id) == DSV_OK);
                if (id == eos) break;
            }
            dsv_grammar_free(g);
        }
        cJSON_Delete(schema);
    }
    printf("    vocabulary %d tokens: index built in %.0f ms; mask %.3f ms mean, %.3f ms worst over %ld steps\n",
           (int)V, build_ms, total / (double)masks, worst, masks);
    free(m);
    free(slow);
    dsv_vocab_index_free(vi);
    dsv_tokenizer_close(tok);
}

/* Forced tool calls: one branch a tool, in both formats' markup. Random
 * walks end with EOS; the text parses, with that format's parser, into one
 * call to one of the tools whose arguments validate; the mask equals the
 * reference all along. */
TEST(grammar_tool_call_walks) {
    dsv_tokenizer *tok = open_tiny();
    dsv_vocab_index *vi = NULL;
    REQUIRE(dsv_vocab_index_build(&vi, tok) == DSV_OK);
    int32_t V = dsv_tokenizer_n_vocab(tok), eos = dsv_tokenizer_eos(tok);
    size_t words = ((size_t)V + 31) / 32;
    uint32_t *fast = calloc(words, 4), *slow = calloc(words, 4);
    cJSON *s0 = cJSON_Parse(schemas[0]);
    cJSON *s1 = cJSON_Parse("{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":8},"
                            "\"days\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":7}},\"required\":[\"city\"]}");
    REQUIRE(fast && slow && s0 && s1);
    const char *names[2] = {"person", "weather"};
    const cJSON *sch[2] = {s0, s1};
    rng = 11;
    for (int dsml = 0; dsml <= 1; dsml++) {
        const dsv_chat_format *f = dsv_chat_format_find(dsml ? "deepseek-v3.2" : "deepseek-v3.2-exp");
        char pre[2][256], suf[256];
        dsv_grammar_branch br[2];
        for (int b = 0; b < 2; b++) {
            if (dsml)
                snprintf(pre[b], sizeof pre[b], "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"%s\">\n", names[b]);
            else
                snprintf(pre[b], sizeof pre[b], "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>%s<｜tool▁sep｜>", names[b]);
            snprintf(suf, sizeof suf, "%s", dsml ? "\n</｜DSML｜invoke>\n</｜DSML｜function_calls>"
                                                 : "<｜tool▁call▁end｜><｜tool▁calls▁end｜>");
            br[b] = (dsv_grammar_branch){.prefix = pre[b], .suffix = suf, .schema = sch[b], .dsml = dsml};
        }
        for (int w = 0; w < 12; w++) {
            dsv_grammar *g = NULL;
            dsv_grammar_json_opts o = {.branches = br, .n_branches = 2, .eos = eos};
            REQUIREF(dsv_grammar_json(&g, vi, &o) == DSV_OK, "%s", dsv_errmsg());
            const dsv_token_constraint *c = dsv_grammar_constraint(g);
            char text[8192];
            size_t n = 0;
            int ended = 0;
            for (int steps = 0; steps < 2000 && !ended; steps++) {
                memset(fast, 0, words * 4);
                memset(slow, 0, words * 4);
                REQUIRE(c->allowed(c->user, fast) == DSV_OK);
                if (w < 3) {
                    REQUIRE(dsv_grammar_allowed_slow(g, slow) == DSV_OK);
                    REQUIREF(!memcmp(fast, slow, words * 4), "dsml %d walk %d step %d: mask differs after \"%.*s\"",
                             dsml, w, steps, (int)n, text);
                }
                int32_t id = pick(fast, V);
                REQUIRE(c->accept(c->user, id) == DSV_OK);
                if (id == eos) { ended = 1; break; }
                size_t len;
                const char *p = dsv_token_piece(tok, id, &len);
                REQUIRE(n + len < sizeof text);
                memcpy(text + n, p, len);
                n += len;
            }
            text[n] = 0;
            REQUIREF(ended, "dsml %d walk %d: no EOS: %.300s", dsml, w, text);
            dsv_chat_result r;
            REQUIRE(dsv_chat_format_parse(f, text, n, 0, &r) == DSV_OK);
            REQUIREF(r.n_tool_calls == 1 && !r.content, "dsml %d walk %d: %d calls, content \"%s\" from %s", dsml, w,
                     r.n_tool_calls, r.content ? r.content : "", text);
            int b = !strcmp(r.tool_calls[0].name, names[1]);
            CHECK(b || !strcmp(r.tool_calls[0].name, names[0]));
            cJSON *args = cJSON_Parse(r.tool_calls[0].arguments);
            CHECKF(args && validate(args, sch[b]), "dsml %d walk %d: arguments %s", dsml, w, r.tool_calls[0].arguments);
            cJSON_Delete(args);
            dsv_chat_result_free(&r);
            dsv_grammar_free(g);
        }
    }
    cJSON_Delete(s0);
    cJSON_Delete(s1);
    free(fast);
    free(slow);
    dsv_vocab_index_free(vi);
    dsv_tokenizer_close(tok);
}
