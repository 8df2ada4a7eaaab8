/* test_tokenizer.c: the byte-level BPE tokenizer.
 *
 * Against the real DeepSeek-V3.2-Exp tokenizer (decompressed from
 * tests/data/tokenizer at test time): every golden encoding and decoding, the
 * chat goldens, round trips over varied and broken text, streaming decoding,
 * special tokens and near misses. Against small generated tokenizer.json
 * files: BPE merge order, ignore_merges, and a clear error for each kind of
 * unsupported or broken file. The dsv32 tokenize/detokenize commands are in
 * test_cmd_tokenize.c. */
#include <cjson/cJSON.h>

#include "dsv32_tokenizer.h"
#include "dsv32_util.h"
#include "test.h"
#include "base/utf8.h"
#include "base/util.h"

/* ---- helpers ------------------------------------------------------------- */

static dsv_tokenizer *open_real(void) {
    dsv_tokenizer *t = NULL;
    int rc = dsv_tokenizer_open(&t, test_tokenizer_dir(1));
    REQUIREF(rc == DSV_OK, "dsv_tokenizer_open: %s", dsv_errmsg());
    return t;
}

/* Encodes into a malloc'd array (caller frees); *n gets the count. */
static int32_t *encode(const dsv_tokenizer *t, const char *s, size_t len, size_t *n) {
    int32_t *ids = malloc((len + 1) * sizeof *ids);
    REQUIRE(ids);
    int rc = dsv_tokenize(t, s, len, ids, len + 1, n);
    REQUIREF(rc == DSV_OK, "dsv_tokenize: %s", dsv_errmsg());
    return ids;
}

/* Decodes into a malloc'd, NUL-terminated buffer; *len gets the length. */
static char *decode(const dsv_tokenizer *t, const int32_t *ids, size_t n, int skip, size_t *len) {
    size_t need = 0;
    int rc = dsv_detokenize(t, ids, n, skip, NULL, 0, &need);
    REQUIREF(rc == DSV_OK || rc == DSV_ERR_FULL, "dsv_detokenize: %s", dsv_errmsg());
    char *out = malloc(need + 1);
    REQUIRE(out);
    rc = dsv_detokenize(t, ids, n, skip, out, need, len);
    REQUIREF(rc == DSV_OK && *len == need, "dsv_detokenize: %s", dsv_errmsg());
    out[need] = 0;
    return out;
}

static int32_t *json_ids(const cJSON *arr, size_t *n) {
    REQUIRE(cJSON_IsArray(arr));
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    REQUIRE(ids);
    size_t i = 0;
    for (const cJSON *c = arr->child; c; c = c->next) ids[i++] = (int32_t)c->valuedouble;
    return ids;
}

static void print_ids(char *buf, size_t cap, const int32_t *ids, size_t n) {
    size_t k = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && k + 16 < cap; i++) k += (size_t)snprintf(buf + k, cap - k, "%s%d", i ? "," : "", ids[i]);
}

/* Checks that encoding text gives want[0..n_want); line names the case. */
static void check_encoding(const dsv_tokenizer *t, const char *text, size_t len, const int32_t *want, size_t n_want,
                           const char *what, int line) {
    size_t n;
    int32_t *got = encode(t, text, len, &n);
    size_t i = 0;
    while (i < n && i < n_want && got[i] == want[i]) i++;
    if (i < n || i < n_want) {
        char g[256], w[256];
        print_ids(g, sizeof g, got + i, DSV_MIN(n - i, 8));
        print_ids(w, sizeof w, want + i, DSV_MIN(n_want - i, 8));
        test_fail(__FILE__, __LINE__, "%s line %d (\"%.40s\"): ids differ at %zu: got [%s] want [%s]", what, line,
                  text, i, g, w);
    }
    free(got);
}

/* A JSONL line as the callbacks see it: the raw line, parsed, and its "text". */
struct line {
    int no;
    const char *raw;
    size_t raw_len;
    const cJSON *json;
    const char *text;
    size_t text_len;
};

/* Calls fn per line of a JSONL file; returns the number of lines. */
static int for_each_line(const char *path, void (*fn)(const struct line *, void *), void *ctx) {
    size_t len;
    char *buf = test_read_file(path, &len);
    REQUIREF(buf, "cannot read %s", path);
    int lines = 0;
    for (char *p = buf, *nl; p < buf + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(buf + len - p));
        if (!nl) nl = buf + len;
        if (nl == p) continue;
        lines++;
        cJSON *j = cJSON_ParseWithLength(p, (size_t)(nl - p));
        char *text;
        size_t tlen;
        REQUIREF(j, "%s:%d: bad JSON", path, lines);
        REQUIREF(dsv_json_get_string(p, (size_t)(nl - p), "text", &text, &tlen) == DSV_OK, "%s:%d: %s", path,
                 lines, dsv_errmsg());
        struct line l = {lines, p, (size_t)(nl - p), j, text, tlen};
        fn(&l, ctx);
        free(text);
        cJSON_Delete(j);
    }
    free(buf);
    return lines;
}

static int valid_utf8(const char *s, size_t n) { return dsv_utf8_valid_prefix(s, n) == n; }

/* Pushes ids one at a time; checks every chunk is well-formed on its own and
 * returns the whole streamed text (malloc'd). */
static char *stream_decode(const dsv_tokenizer *t, const int32_t *ids, size_t n, int skip, size_t *len) {
    size_t bound = dsv_detok_bound(t), cap = bound * (n + 1) + 1, k = 0, l;
    char *out = malloc(cap);
    REQUIRE(out);
    dsv_detok d;
    dsv_detok_init(&d, t, skip);
    for (size_t i = 0; i < n; i++) {
        REQUIREF(dsv_detok_push(&d, ids[i], out + k, bound, &l) == DSV_OK, "push: %s", dsv_errmsg());
        CHECKF(valid_utf8(out + k, l), "chunk %zu (id %d) is not well-formed UTF-8", i, ids[i]);
        k += l;
    }
    REQUIRE(dsv_detok_flush(&d, out + k, bound, &l) == DSV_OK);
    CHECK(valid_utf8(out + k, l));
    k += l;
    out[k] = 0;
    *len = k;
    return out;
}

/* ---- goldens ------------------------------------------------------------- */

struct golden_ctx { const dsv_tokenizer *t; int streamed; };

static void golden_case(const struct line *l, void *ctx) {
    const dsv_tokenizer *t = ((struct golden_ctx *)ctx)->t;
    size_t n, dlen, slen, glen;
    int32_t *want = json_ids(cJSON_GetObjectItem(l->json, "ids"), &n);
    check_encoding(t, l->text, l->text_len, want, n, "golden.jsonl", l->no);
    char *dec = decode(t, want, n, 0, &dlen);
    char *golden;
    REQUIRE(dsv_json_get_string(l->raw, l->raw_len, "decoded", &golden, &glen) == DSV_OK);
    CHECKF(dlen == glen && !memcmp(dec, golden, glen), "golden.jsonl line %d: decoded text differs", l->no);
    char *streamed = stream_decode(t, want, n, 0, &slen);
    CHECKF(slen == dlen && !memcmp(streamed, dec, dlen), "golden.jsonl line %d: streamed text differs", l->no);
    ((struct golden_ctx *)ctx)->streamed++;
    free(golden);
    free(streamed);
    free(dec);
    free(want);
}

TEST(tokenizer_golden_encodings) {
    dsv_tokenizer *t = open_real();
    struct golden_ctx ctx = {t, 0};
    int lines = for_each_line(test_shared("tokenizer/golden.jsonl"), golden_case, &ctx);
    CHECK_EQ_INT(lines, 329);
    CHECK_EQ_INT(ctx.streamed, 329);
    dsv_tokenizer_close(t);
}

static void chat_case(const struct line *l, void *ctx) {
    size_t n, dlen;
    int32_t *want = json_ids(cJSON_GetObjectItem(l->json, "ids"), &n);
    check_encoding(ctx, l->text, l->text_len, want, n, "chat-golden.jsonl", l->no);
    CHECK_EQ_INT(want[0], 0);
    char *dec = decode(ctx, want, n, 0, &dlen);
    CHECKF(dlen == l->text_len && !memcmp(dec, l->text, dlen), "chat-golden.jsonl line %d: decode differs", l->no);
    free(dec);
    free(want);
}

TEST(tokenizer_chat_goldens) {
    dsv_tokenizer *t = open_real();
    CHECK_EQ_INT(for_each_line(test_shared("tokenizer/chat-golden.jsonl"), chat_case, t), 16);
    dsv_tokenizer_close(t);
}

/* DeepSeek's own example from the V3.2 model card. */
TEST(tokenizer_model_card_example) {
    dsv_tokenizer *t = open_real();
    const char *text = "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek."
                       "<｜end▁of▁sentence｜><｜User｜>1+1=?<｜Assistant｜><think>";
    static const int32_t want[] = {0,  128803, 33310, 128804, 128799, 19923, 3,      342,    1030,  22651, 4374,
                                   1465, 16,   1,     128803, 19,     13,    19,     127252, 128804, 128798};
    check_encoding(t, text, strlen(text), want, sizeof want / sizeof *want, "model card", 0);
    dsv_tokenizer_close(t);
}

/* ---- special tokens and configuration ------------------------------------ */

TEST(tokenizer_special_tokens) {
    dsv_tokenizer *t = open_real();
    CHECK_EQ_INT(dsv_tokenizer_n_vocab(t), 128815);
    CHECK_EQ_INT(dsv_tokenizer_bos(t), 0);
    CHECK_EQ_INT(dsv_tokenizer_eos(t), 1);
    CHECK_EQ_INT(dsv_tokenizer_add_bos(t), 1);
    static const struct { const char *s; int32_t id; int special; } cases[] = {
        {"<｜begin▁of▁sentence｜>", 0, 1}, {"<｜end▁of▁sentence｜>", 1, 1}, {"<｜▁pad▁｜>", 2, 1},
        {"<｜search▁begin｜>", 128796, 0},  {"<think>", 128798, 0},          {"</think>", 128799, 0},
        {"<｜User｜>", 128803, 0},          {"<｜Assistant｜>", 128804, 0},  {"<|EOT|>", 128805, 1},
        {"<｜tool▁sep｜>", 128814, 0},      {"<｜place▁holder▁no▁0｜>", 128000, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n, len;
        CHECK_EQ_INT(dsv_token_id(t, cases[i].s), cases[i].id);
        CHECK_EQ_INT(dsv_token_is_special(t, cases[i].id), cases[i].special);
        const char *p = dsv_token_piece(t, cases[i].id, &len);
        CHECKF(p && len == strlen(cases[i].s) && !memcmp(p, cases[i].s, len), "piece of %d", cases[i].id);
        int32_t *ids = encode(t, cases[i].s, strlen(cases[i].s), &n);
        CHECKF(n == 1 && ids[0] == cases[i].id, "\"%s\" encodes to %zu ids", cases[i].s, n);
        free(ids);
    }
    /* BPE tokens look up by their bytes. */
    CHECK_EQ_INT(dsv_token_id(t, "!"), 3);
    CHECK(dsv_token_id(t, " the") > 0);
    CHECK_EQ_INT(dsv_token_id(t, "no such token, surely"), -1);
    CHECK_EQ_INT(dsv_token_id(t, ""), -1);
    CHECK(dsv_token_piece(t, -1, NULL) == NULL);
    CHECK(dsv_token_piece(t, 128815, NULL) == NULL);
    CHECK_EQ_INT(dsv_token_is_special(t, 128815), 0);

    /* skip_special drops BOS/EOS but keeps the chat markers and <think>. */
    const char *text = "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>ok</think><｜end▁of▁sentence｜>";
    size_t n, len;
    int32_t *ids = encode(t, text, strlen(text), &n);
    char *s = decode(t, ids, n, 1, &len);
    CHECK_STR(s, "<｜User｜>hi<｜Assistant｜><think>ok</think>");
    free(s);
    s = decode(t, ids, n, 0, &len);
    CHECK_STR(s, text);
    free(s);
    free(ids);
    dsv_tokenizer_close(t);
}

/* Strings that resemble added tokens but are not them go through BPE. */
TEST(tokenizer_near_misses) {
    dsv_tokenizer *t = open_real();
    static const char *const texts[] = {"<think", "think>", "<｜User", "<|User|>", "<｜user｜>", "</think >",
                                        "< think>", "<<think>>", "<｜User｜"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        size_t n, len;
        int32_t *ids = encode(t, texts[i], strlen(texts[i]), &n);
        int added = 0;
        for (size_t k = 0; k < n; k++) added |= ids[k] >= 128000;
        int whole = strcmp(texts[i], "<<think>>") == 0;
        CHECKF(whole ? (n == 3 && ids[1] == 128798) : !added, "\"%s\"", texts[i]);
        char *s = decode(t, ids, n, 0, &len);
        CHECK_STR(s, texts[i]);
        free(s);
        free(ids);
    }
    /* Leftmost match wins, then the longest one starting there. */
    size_t n;
    int32_t *ids = encode(t, "<think></think>", 15, &n);
    CHECK(n == 2 && ids[0] == 128798 && ids[1] == 128799);
    free(ids);
    dsv_tokenizer_close(t);
}

TEST(tokenizer_empty_input_and_capacity) {
    dsv_tokenizer *t = open_real();
    size_t n = 99;
    CHECK_EQ_INT(dsv_tokenize(t, "", 0, NULL, 0, &n), DSV_OK);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(dsv_tokenize(t, NULL, 0, NULL, 0, &n), DSV_OK);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(dsv_detokenize(t, NULL, 0, 0, NULL, 0, &n), DSV_OK);
    CHECK_EQ_INT(n, 0);

    /* Too small: the count needed comes back, and the first ids are there. */
    const char *text = "Hello world, this is a test.";
    size_t full;
    int32_t *all = encode(t, text, strlen(text), &full);
    int32_t few[3];
    CHECK_EQ_INT(dsv_tokenize(t, text, strlen(text), NULL, 0, &n), DSV_ERR_FULL);
    CHECK_EQ_INT(n, full);
    CHECK_EQ_INT(dsv_tokenize(t, text, strlen(text), few, 3, &n), DSV_ERR_FULL);
    CHECK_EQ_INT(n, full);
    CHECK(!memcmp(few, all, sizeof few));
    char out[4];
    CHECK_EQ_INT(dsv_detokenize(t, all, full, 0, out, sizeof out, &n), DSV_ERR_FULL);
    CHECK_EQ_INT(n, strlen(text));

    /* Bad arguments are errors, not crashes. */
    CHECK_EQ_INT(dsv_tokenize(t, NULL, 3, few, 3, &n), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_tokenize(t, text, 3, NULL, 3, &n), DSV_ERR_ARG);
    int32_t bad[2] = {19923, 128815};
    CHECK_EQ_INT(dsv_detokenize(t, bad, 2, 0, out, sizeof out, &n), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "128815") != NULL);
    bad[1] = -5;
    CHECK_EQ_INT(dsv_detokenize(t, bad, 2, 0, out, sizeof out, &n), DSV_ERR_ARG);
    free(all);
    dsv_tokenizer_close(t);
}

/* ---- round trips and broken UTF-8 ---------------------------------------- */

static void check_round_trip(const dsv_tokenizer *t, const char *s, size_t len, const char *what) {
    size_t n, dlen;
    int32_t *ids = encode(t, s, len, &n);
    CHECKF(n <= len, "%s: %zu ids for %zu bytes", what, n, len);
    char *d = decode(t, ids, n, 0, &dlen);
    CHECKF(dlen == len && !memcmp(d, s, len), "%s: decode(encode(x)) != x", what);
    free(d);
    free(ids);
}

TEST(tokenizer_round_trip) {
    dsv_tokenizer *t = open_real();
    static const char *const texts[] = {
        "The quick brown fox jumps over the lazy dog.\n\n\tIndented\r\nCRLF   trailing   ",
        "稀疏注意力机制（DSA）在长上下文中显著降低了计算成本。日本語のテキストも。한국어 문장.",
        "def f(x):\n    return {'a': [1, 2.5e-3, 0x1F]}  # комментарий\n",
        "👨‍👩‍👧‍👦 🇯🇵 1️⃣ 👍🏽 e\xcc\x81 \xe2\x80\x8b \xc2\xa0 \xe3\x80\x80",
        "<｜User｜>hi<think>x</think><|User|><｜Assistant｜>",
        "1234567890123456789012345678901234 3.14159 1,000,000",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) check_round_trip(t, texts[i], strlen(texts[i]), "text");
    /* Ill-formed UTF-8: lone continuation bytes, truncated sequences, overlong
     * forms, surrogates, bytes that never occur, and a sequence cut by an
     * added token. */
    static const char *const broken[] = {
        "\x80", "abc\xff", "\xc3", "\xe4\xb8", "\xe4\xb8 x", "\xf0\x9f\x98", "\xc0\xaf", "\xed\xa0\x80",
        "\xf8\x88\x80\x80\x80", "a\xfe\xfe\x62", "\xe4<think>\xb8\xad", "\xf4\x90\x80\x80", "\x80\x81\x82 \xbf",
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++)
        check_round_trip(t, broken[i], strlen(broken[i]), "broken UTF-8");
    /* Random bytes, random ASCII and random code points, in many lengths. */
    uint64_t x = 0x9E3779B97F4A7C15ull;
    char buf[600];
    for (int round = 0; round < 150; round++) {
        size_t len = (size_t)(round * 4 % 590);
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[i] = round % 3 == 0 ? (char)x : round % 3 == 1 ? (char)(32 + x % 95) : (char)(0xE0 + x % 4);
        }
        if (round % 3 == 2) {   /* well-formed: runs of 3-byte characters */
            size_t k = 0;
            while (k + 3 <= len) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                k += dsv_utf8_encode((uint32_t)(0x20 + x % 0x2FF0), buf + k);
            }
            len = k;
        }
        check_round_trip(t, buf, len, "random");
    }
    dsv_tokenizer_close(t);
}

/* Each byte that begins no well-formed character is a piece by itself; the
 * well-formed text around it is pre-tokenized as if it were apart. */
TEST(tokenizer_broken_utf8_pieces) {
    dsv_tokenizer *t = open_real();
    static const struct { const char *s; size_t ends[8]; size_t n; } cases[] = {
        {"ab\xff" "cd", {2, 3, 5}, 3},
        {"\xe4\xb8", {1, 2}, 2},                        /* truncated at the end */
        {"\xe4\xb8 x", {1, 2, 4}, 3},                   /* truncated inside */
        {"\xe4\xb8\xad", {3}, 1},                       /* 中, whole */
        {"\xc0\xaf" "a", {1, 2, 3}, 3},                 /* overlong '/' */
        {"\xed\xa0\x80", {1, 2, 3}, 3},                 /* a surrogate */
        {"x\x80<think>\x80", {1, 2, 9, 10}, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t ends[16], n;
        REQUIRE(dsv_pretokenize(t, cases[i].s, strlen(cases[i].s), ends, 16, &n) == DSV_OK);
        CHECKF(n == cases[i].n && !memcmp(ends, cases[i].ends, n * sizeof *ends), "case %zu: %zu pieces", i, n);
        /* The encoding is that of the pieces one by one. */
        size_t nid, k = 0, start = 0;
        int32_t *ids = encode(t, cases[i].s, strlen(cases[i].s), &nid);
        for (size_t j = 0; j < n; start = ends[j++]) {
            size_t np;
            int32_t *part = encode(t, cases[i].s + start, ends[j] - start, &np);
            CHECKF(k + np <= nid && !memcmp(ids + k, part, np * sizeof *part), "case %zu piece %zu", i, j);
            k += np;
            free(part);
        }
        CHECK_EQ_INT(k, nid);
        free(ids);
    }
    size_t n, len;
    int32_t *ids = encode(t, "\xff", 1, &n);
    const char *p = dsv_token_piece(t, ids[0], &len);
    CHECK(n == 1 && len == 1 && p && (unsigned char)p[0] == 0xFF);
    free(ids);
    dsv_tokenizer_close(t);
}

/* PCRE2's \s (with UCP) is pinned here for the three code points where
 * regex engines disagree (see tests/data/tokenizer/README.md). The pre-tokenizer's
 * last alternatives, \s+(?!\S)|\s+, keep a whitespace run together, and
 * `\s*[\r\n]+` joins it to a following newline. */
TEST(tokenizer_whitespace_pcre2) {
    dsv_tokenizer *t = open_real();
    static const struct { const char *cp, *name; int is_space; } cases[] = {
        {"\xc2\x85", "U+0085 NEXT LINE", 1},            /* as Oniguruma; JavaScript: not space */
        {"\xe1\xa0\x8e", "U+180E MONGOLIAN VOWEL SEPARATOR", 1},  /* PCRE2 only */
        {"\xef\xbb\xbf", "U+FEFF ZERO WIDTH NO-BREAK SPACE", 0},  /* as Oniguruma; JavaScript: space */
        {"\xc2\xa0", "U+00A0 NO-BREAK SPACE", 1},
        {"\xe2\x80\x8b", "U+200B ZERO WIDTH SPACE", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char text[16];
        size_t cl = strlen(cases[i].cp), ends[8], n;
        /* "x" + cp + "\n": a space joins the newline's piece, else it stands alone. */
        snprintf(text, sizeof text, "x%s\n", cases[i].cp);
        REQUIRE(dsv_pretokenize(t, text, strlen(text), ends, 8, &n) == DSV_OK);
        if (cases[i].is_space)
            CHECKF(n == 2 && ends[0] == 1 && ends[1] == 2 + cl, "%s should be \\s: %zu pieces", cases[i].name, n);
        else
            CHECKF(n == 3 && ends[0] == 1 && ends[1] == 1 + cl, "%s should not be \\s: %zu pieces", cases[i].name, n);
    }
    dsv_tokenizer_close(t);
}

/* Long inputs: one huge piece of one byte, of spaces, of letters, of digits,
 * and random bytes, all round trip (BPE is O(n log n), regexes stay linear). */
TEST(tokenizer_long_inputs) {
    dsv_tokenizer *t = open_real();
    size_t len = 1 << 20;
    char *buf = malloc(len);
    REQUIRE(buf);
    static const char fill[] = {' ', 'a', '7', '\n', '\xff'};
    for (size_t f = 0; f < sizeof fill; f++) {
        memset(buf, fill[f], len);
        check_round_trip(t, buf, len, "long run");
    }
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (char)x;
    }
    check_round_trip(t, buf, len, "random megabyte");
    free(buf);
    dsv_tokenizer_close(t);
}

/* ---- streaming decoding -------------------------------------------------- */

TEST(tokenizer_streaming_utf8) {
    dsv_tokenizer *t = open_real();
    /* A character split across tokens comes out whole, once complete. */
    const char *text = "稀疏注意力 🇯🇵👨‍👩‍👧 naïve";
    size_t n, len, slen;
    int32_t *ids = encode(t, text, strlen(text), &n);
    char *s = stream_decode(t, ids, n, 0, &slen);
    CHECK_STR(s, text);
    free(s);
    free(ids);

    /* Ill-formed sequences: one U+FFFD per maximal ill-formed subsequence, as
     * soon as known; an incomplete tail at flush. */
    static const struct { const char *in, *out; } cases[] = {
        {"\xe4\xb8" "A", "\xef\xbf\xbd" "A"},
        {"\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf0\x9f\x98", "\xef\xbf\xbd"},
        {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},   /* E0 80 is not a prefix */
        {"\xed\xa0\x80z", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz"},
        {"\xc3<think>", "\xef\xbf\xbd<think>"},
        {"ok\xff", "ok\xef\xbf\xbd"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        /* Byte by byte: each byte's own token. */
        size_t m = strlen(cases[i].in);
        int32_t byte_ids[32];
        size_t k = 0;
        for (size_t b = 0; b < m; b++) {
            if (cases[i].in[b] == '<') {
                byte_ids[k++] = 128798;
                b += 6;
                continue;
            }
            size_t one;
            int32_t *id = encode(t, cases[i].in + b, 1, &one);
            byte_ids[k++] = id[0];
            free(id);
        }
        s = stream_decode(t, byte_ids, k, 0, &slen);
        CHECKF(slen == strlen(cases[i].out) && !memcmp(s, cases[i].out, slen), "case %zu", i);
        free(s);
        /* And the same bytes as BPE groups them. */
        ids = encode(t, cases[i].in, m, &n);
        s = stream_decode(t, ids, n, 0, &slen);
        CHECKF(slen == strlen(cases[i].out) && !memcmp(s, cases[i].out, slen), "case %zu (BPE)", i);
        free(s);
        free(ids);
    }

    /* A full buffer leaves the stream as it was. */
    dsv_detok d;
    char out[64];
    int32_t id = dsv_token_id(t, "<｜User｜>");
    dsv_detok_init(&d, t, 0);
    CHECK_EQ_INT(dsv_detok_push(&d, id, out, 4, &len), DSV_ERR_FULL);
    CHECK_EQ_INT(len, strlen("<｜User｜>"));
    CHECK_EQ_INT(dsv_detok_push(&d, id, out, sizeof out, &len), DSV_OK);
    CHECK_EQ_INT(len, strlen("<｜User｜>"));
    CHECK_EQ_INT(dsv_detok_push(&d, 999999, out, sizeof out, &len), DSV_ERR_ARG);
    /* skip_special drops special tokens only. */
    dsv_detok_init(&d, t, 1);
    CHECK_EQ_INT(dsv_detok_push(&d, 0, out, sizeof out, &len), DSV_OK);
    CHECK_EQ_INT(len, 0);
    CHECK_EQ_INT(dsv_detok_push(&d, 128798, out, sizeof out, &len), DSV_OK);
    CHECK_EQ_INT(len, 7);
    CHECK_EQ_INT(dsv_detok_flush(&d, out, sizeof out, &len), DSV_OK);
    CHECK_EQ_INT(len, 0);
    dsv_tokenizer_close(t);
}

/* ---- small generated tokenizers ------------------------------------------ */

/* Writes c's JSON string form (quotes escaped) and returns its length. */
static size_t spell_byte(int b, char *out) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    uint32_t cp = (uint32_t)b;
    if (!printable) {
        cp = 256;
        for (int c = 0; c < b; c++)
            if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) cp++;
    }
    if (cp == '"' || cp == '\\') {
        out[0] = '\\';
        out[1] = (char)cp;
        return 2;
    }
    return dsv_utf8_encode(cp, out);
}

struct tiny {
    const char *top;            /* extra top-level members, each followed by a comma */
    const char *normalizer, *pre_tokenizer, *decoder, *model;  /* NULL: the defaults below */
    const char *model_extra;    /* extra members of the default model, each followed by a comma */
    const char *vocab;          /* extra vocabulary entries, each preceded by a comma */
    const char *merges;         /* merges array contents */
    const char *added;          /* added_tokens array contents */
};

/* Writes a byte-level tokenizer.json (ids 0-255: the bytes in order) into the
 * test directory and returns its path. */
static const char *tiny_json(const struct tiny *c) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/tiny.json", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "{%s\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[%s],", c->top ? c->top : "",
            c->added ? c->added : "");
    fprintf(f, "\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":null,\"decoder\":%s,",
            c->normalizer ? c->normalizer : "null",
            c->pre_tokenizer ? c->pre_tokenizer
                             : "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}",
            c->decoder ? c->decoder : "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true}");
    if (c->model) {
        fprintf(f, "\"model\":%s}", c->model);
    } else {
        fprintf(f, "\"model\":{%s\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,"
                   "\"byte_fallback\":false,\"vocab\":{", c->model_extra ? c->model_extra : "");
        for (int b = 0; b < 256; b++) {
            char s[4];
            size_t l = spell_byte(b, s);
            fprintf(f, "%s\"%.*s\":%d", b ? "," : "", (int)l, s, b);
        }
        fprintf(f, "%s},\"merges\":[%s]}}", c->vocab ? c->vocab : "", c->merges ? c->merges : "");
    }
    fclose(f);
    return path;
}

static dsv_tokenizer *open_tiny(const struct tiny *c) {
    dsv_tokenizer *t = NULL;
    REQUIREF(dsv_tokenizer_open(&t, tiny_json(c)) == DSV_OK, "open: %s", dsv_errmsg());
    return t;
}

static void check_ids(const dsv_tokenizer *t, const char *text, const int32_t *want, size_t n_want) {
    check_encoding(t, text, strlen(text), want, n_want, "tiny", 0);
}

TEST(tokenizer_bpe_merge_order) {
    /* The lowest rank merges first. */
    struct tiny c = {.vocab = ",\"ab\":256,\"bc\":257,\"aa\":258,\"aaaa\":259",
                     .merges = "\"a b\",\"b c\",\"a a\",\"aa aa\""};
    dsv_tokenizer *t = open_tiny(&c);
    check_ids(t, "abc", (int32_t[]){256, 'c'}, 2);
    /* Ties go to the leftmost pair; merged pairs then merge again. */
    check_ids(t, "aaa", (int32_t[]){258, 'a'}, 2);
    check_ids(t, "aaaa", (int32_t[]){259}, 1);
    check_ids(t, "aaaaa", (int32_t[]){259, 'a'}, 2);
    check_ids(t, "bcab", (int32_t[]){257, 256}, 2);
    /* GPT-2's regex from ByteLevel (use_regex) splits words: no merge across. */
    check_ids(t, "a a", (int32_t[]){'a', ' ', 'a'}, 3);
    dsv_tokenizer_close(t);

    /* Reversed ranks, and merges written as arrays. */
    c.merges = "[\"b\",\"c\"],[\"a\",\"b\"]";
    t = open_tiny(&c);
    check_ids(t, "abc", (int32_t[]){'a', 257}, 2);
    CHECK_EQ_INT(dsv_tokenizer_bos(t), -1);
    CHECK_EQ_INT(dsv_tokenizer_add_bos(t), 0);
    dsv_tokenizer_close(t);
}

TEST(tokenizer_ignore_merges_and_string_split) {
    /* "abc" is in the vocabulary but no merge builds it: only ignore_merges
     * finds it whole. */
    struct tiny c = {.vocab = ",\"abc\":256,\"ab\":257", .merges = "\"a b\""};
    dsv_tokenizer *t = open_tiny(&c);
    check_ids(t, "abc", (int32_t[]){257, 'c'}, 2);
    dsv_tokenizer_close(t);
    c.model_extra = "\"ignore_merges\":true,";
    t = open_tiny(&c);
    check_ids(t, "abc", (int32_t[]){256}, 1);
    check_ids(t, "abcab", (int32_t[]){257, 'c', 257}, 3);   /* not whole: merges as usual */
    dsv_tokenizer_close(t);

    /* A Split with a String pattern, before a ByteLevel without regex. */
    c = (struct tiny){.vocab = ",\"ab\":256", .merges = "\"a b\"",
                      .pre_tokenizer = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                                       "\"pattern\":{\"String\":\"b\"},\"behavior\":\"Isolated\",\"invert\":false},"
                                       "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}"};
    t = open_tiny(&c);
    check_ids(t, "ab a", (int32_t[]){'a', 'b', ' ', 'a'}, 4);
    size_t ends[8], n;
    REQUIRE(dsv_pretokenize(t, "xabb", 4, ends, 8, &n) == DSV_OK);
    CHECK(n == 3 && ends[0] == 2 && ends[1] == 3 && ends[2] == 4);
    dsv_tokenizer_close(t);
}

/* Opening c must fail with status and a message naming the file and
 * containing needle. */
static void check_open_error(const struct tiny *c, int status, const char *needle) {
    dsv_tokenizer *t = NULL;
    int rc = dsv_tokenizer_open(&t, tiny_json(c));
    CHECKF(rc == status, "want %s, got %s (%s)", dsv_status_str(status), dsv_status_str(rc), dsv_errmsg());
    CHECKF(strstr(dsv_errmsg(), needle) && strstr(dsv_errmsg(), "tiny.json"), "message \"%s\" lacks \"%s\"",
           dsv_errmsg(), needle);
    CHECK(t == NULL);
    dsv_tokenizer_close(t);
}

TEST(tokenizer_bad_files) {
    struct tiny cases[] = {
        {.model = "{\"type\":\"WordPiece\",\"vocab\":{}}"},
        {.model = "{\"vocab\":{},\"merges\":[]}"},
        {.model = "{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{},\"merges\":[]}"},
        {.model = "{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{},\"merges\":[]}"},
        {.model = "{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}"},
        {.model = "{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\",\"vocab\":{},\"merges\":[]}"},
        {.model = "{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}"},
        {.model = "{\"type\":\"BPE\",\"vocab\":{},\"merges\":[],\"novel\":1}"},
        {.model = "{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}"},
        {.normalizer = "{\"type\":\"NFKC\"}"},
        {.normalizer = "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Lowercase\"}]}"},
        {.pre_tokenizer = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\",\"add_prefix_space\":"
                          "false},{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Isolated\"}]}"},
        {.pre_tokenizer = "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Isolated\"}"},
        {.pre_tokenizer = "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Removed\"}"},
        {.pre_tokenizer = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
                          "\"(a\"},\"behavior\":\"Isolated\"}, {\"type\":\"ByteLevel\",\"add_prefix_space\":false}]}"},
        {.pre_tokenizer = "{\"type\":\"ByteLevel\",\"add_prefix_space\":true}"},
        {.pre_tokenizer = "{\"type\":\"Metaspace\"}"},
        {.pre_tokenizer = "null"},
        {.decoder = "{\"type\":\"WordPiece\"}"},
        {.added = "{\"id\":300,\"content\":\"<x>\",\"lstrip\":true}"},
        {.added = "{\"id\":300,\"content\":\"\"}"},
        {.added = "{\"id\":120,\"content\":\"<x>\"}"},
        {.merges = "\"a zz\""},
        {.merges = "\"a b c\""},
        {.merges = "\"a b\""},
        {.top = "\"truncation\":{\"max_length\":5},"},
    };
    static const struct { int status; const char *needle; } want[] = {
        {DSV_ERR_UNSUPPORTED, "model.type: 'WordPiece'"},
        {DSV_ERR_FORMAT, "model.type"},
        {DSV_ERR_UNSUPPORTED, "model.byte_fallback"},
        {DSV_ERR_UNSUPPORTED, "model.dropout"},
        {DSV_ERR_UNSUPPORTED, "no token for byte 0x00"},
        {DSV_ERR_UNSUPPORTED, "model.continuing_subword_prefix"},
        {DSV_ERR_FORMAT, "model.vocab[\"a\"]"},
        {DSV_ERR_UNSUPPORTED, "model.novel"},
        {DSV_ERR_FORMAT, "model.vocab: empty"},
        {DSV_ERR_UNSUPPORTED, "normalizer: type 'NFKC'"},
        {DSV_ERR_UNSUPPORTED, "normalizer.normalizers[0]: type 'Lowercase'"},
        {DSV_ERR_UNSUPPORTED, "pre_tokenizer.pretokenizers[1]: Split after ByteLevel"},
        {DSV_ERR_UNSUPPORTED, "no ByteLevel"},
        {DSV_ERR_UNSUPPORTED, "behavior: 'Removed'"},
        {DSV_ERR_FORMAT, "pre_tokenizer.pretokenizers[0].pattern: regex error"},
        {DSV_ERR_UNSUPPORTED, "add_prefix_space"},
        {DSV_ERR_UNSUPPORTED, "'Metaspace'"},
        {DSV_ERR_UNSUPPORTED, "pre_tokenizer: null"},
        {DSV_ERR_UNSUPPORTED, "decoder: type 'WordPiece'"},
        {DSV_ERR_UNSUPPORTED, "added_tokens[0] (<x>).lstrip"},
        {DSV_ERR_FORMAT, "added_tokens[0].content"},
        {DSV_ERR_FORMAT, "added_tokens[0]: id 120 is '<x>' here but 'x' in model.vocab"},
        {DSV_ERR_FORMAT, "model.merges[0]: 'zz' is not in model.vocab"},
        {DSV_ERR_FORMAT, "model.merges[0]"},
        {DSV_ERR_FORMAT, "model.merges[0]: 'ab' is not in model.vocab"},
        {DSV_ERR_UNSUPPORTED, "truncation"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_open_error(&cases[i], want[i].status, want[i].needle);

    /* Not JSON, not there, a directory without tokenizer.json. */
    dsv_tokenizer *t = NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("{\"model\": {\"type\": \"BPE\",", f);
    fclose(f);
    CHECK_EQ_INT(dsv_tokenizer_open(&t, path), DSV_ERR_FORMAT);
    CHECKF(strstr(dsv_errmsg(), "invalid JSON") && strstr(dsv_errmsg(), "tokenizer.json"), "%s", dsv_errmsg());
    static const struct { const char *json, *needle; } whole[] = {
        {"{\"version\":\"1.0\",\"added_tokens\":[]}", "model: missing"},
        {"[]", "expected a JSON object"},
        {"", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof whole / sizeof *whole; i++) {
        f = fopen(path, "w");
        REQUIRE(f);
        fputs(whole[i].json, f);
        fclose(f);
        CHECK_EQ_INT(dsv_tokenizer_open(&t, path), DSV_ERR_FORMAT);
        CHECKF(strstr(dsv_errmsg(), whole[i].needle) && strstr(dsv_errmsg(), "tokenizer.json"), "%s", dsv_errmsg());
    }
    CHECK_EQ_INT(dsv_tokenizer_open(&t, "/nonexistent/tokenizer.json"), DSV_ERR_IO);
    CHECK(strstr(dsv_errmsg(), "/nonexistent/tokenizer.json") != NULL);
    snprintf(path, sizeof path, "%s/empty", test_tmpdir());
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    REQUIRE(system(cmd) == 0);
    CHECK_EQ_INT(dsv_tokenizer_open(&t, path), DSV_ERR_IO);
    CHECK(strstr(dsv_errmsg(), "empty/tokenizer.json") != NULL);
    CHECK(t == NULL);
}

TEST(tokenizer_config_file) {
    struct tiny c = {.added = "{\"id\":256,\"content\":\"<s>\",\"special\":true},{\"id\":257,\"content\":\"</s>\","
                              "\"special\":true}"};
    const char *path = tiny_json(&c);
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", test_tmpdir());
    static const struct { const char *json; int status; int32_t bos, eos; int add_bos; } cases[] = {
        {"{\"add_bos_token\":true,\"bos_token\":\"<s>\",\"eos_token\":{\"content\":\"</s>\"}}", DSV_OK, 256, 257, 1},
        {"{\"bos_token\":null}", DSV_OK, -1, -1, 0},
        {"{\"bos_token\":\"<nope>\"}", DSV_ERR_CONFIG, 0, 0, 0},
        {"{\"add_bos_token\":\"yes\"}", DSV_ERR_FORMAT, 0, 0, 0},
        {"[1,", DSV_ERR_FORMAT, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        FILE *f = fopen(cfg, "w");
        REQUIRE(f);
        fputs(cases[i].json, f);
        fclose(f);
        dsv_tokenizer *t = NULL;
        int rc = dsv_tokenizer_open(&t, path);
        CHECKF(rc == cases[i].status, "case %zu: %s", i, dsv_errmsg());
        if (rc) {
            CHECKF(strstr(dsv_errmsg(), "tokenizer_config.json") != NULL, "case %zu: %s", i, dsv_errmsg());
            continue;
        }
        CHECK_EQ_INT(dsv_tokenizer_bos(t), cases[i].bos);
        CHECK_EQ_INT(dsv_tokenizer_eos(t), cases[i].eos);
        CHECK_EQ_INT(dsv_tokenizer_add_bos(t), cases[i].add_bos);
        dsv_tokenizer_close(t);
    }
}

TEST(json_quote_escapes_and_round_trips) {
    /* Quote, backslash, the short escapes, other control bytes (NUL among
     * them) as \u00XX, UTF-8 as it is. */
    static const char in[] = "a\"b\\c\nd\re\tf\x01g\x1f\0h\xc3\xa9";
    const size_t n = sizeof in - 1;
    size_t len = 0;
    char *q = dsv_json_quote(in, n, &len);
    REQUIRE(q != NULL);
    static const char want[] = "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001f\\u0000h\xc3\xa9\"";
    CHECK(len == strlen(want));
    CHECK_STR(q, want);
    /* Read back through the exact reader, embedded NUL and all. */
    char obj[256], *back = NULL;
    size_t back_len = 0;
    snprintf(obj, sizeof obj, "{\"k\":%s}", q);
    CHECK_EQ_INT(dsv_json_get_string(obj, strlen(obj), "k", &back, &back_len), DSV_OK);
    CHECK(back && back_len == n && memcmp(back, in, n) == 0);
    free(back);
    free(q);
    q = dsv_json_quote("", 0, NULL);
    CHECK(q && !strcmp(q, "\"\""));
    free(q);
}
