/* tokenizer.c: Hugging Face byte-level BPE tokenizer (see dsv32_tokenizer.h).
 *
 * Loading turns tokenizer.json into flat tables:
 * - every token's raw bytes (its "piece"), for decoding;
 * - a hash of the BPE vocabulary by its tokenizer.json spelling (the
 *   byte-level alphabet: byte 0x20 is spelled "Ġ", and so on), used while
 *   loading merges and for whole-word lookups;
 * - a hash of merges keyed by the pair of token ids, giving rank and result;
 * - a byte trie of the added tokens;
 * - the pre-tokenizer as a list of compiled PCRE2 regexes, one per Split.
 *
 * Encoding works on raw bytes throughout. The byte-level step of Hugging Face
 * (map each byte to a printable character, run BPE on those characters, look
 * the result up by spelling) is a bijection, so BPE runs directly on token ids:
 * each byte starts as the id of its one-byte token and merges combine ids.
 * Text flows: added-token split -> UTF-8 validity split -> Split regexes,
 * depth first (one piece is fully encoded before the next is cut, so scratch
 * memory grows with the longest piece, not with the input) -> BPE per piece.
 *
 * Not here: normalizers other than empty ones, other models (WordPiece,
 * Unigram), byte fallback, offsets, truncation and padding, the chat template.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <pcre2.h>
#include <string.h>
#include <sys/stat.h>

#include "dsv32_tokenizer.h"
#include "base/utf8.h"
#include "base/util.h"
#include "format/gguf.h"

/* Token flags. */
enum { TF_PRESENT = 1, TF_ADDED = 2, TF_SPECIAL = 4 };

/* The highest token id accepted, far above any real vocabulary; it keeps id
 * arithmetic in int32_t and table sizes sane for a corrupt file. */
#define MAX_TOKEN_ID (1 << 26)

/* ByteLevel's pre-tokenizer regex when use_regex is true (GPT-2's pattern,
 * as the Rust library spells it). */
#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

#define MERGE_EMPTY UINT64_MAX

struct merge_slot {
    uint64_t key;               /* (left id << 32) | right id, MERGE_EMPTY if free */
    int32_t rank;               /* position in model.merges: lower merges first */
    int32_t id;                 /* the merged token */
};

struct trie_node {
    int32_t child, sibling;     /* first child, next sibling (-1: none) */
    int32_t id;                 /* the added token ending here, or -1 */
    unsigned char byte;
};

struct dsv_tokenizer {
    int32_t n_vocab;            /* 1 + highest id */
    uint8_t *flags;             /* [n_vocab] TF_* */
    uint32_t *piece_off;        /* [n_vocab + 1] token id's bytes are pieces[off[id]..off[id+1]) */
    char *pieces;
    size_t max_piece;

    /* BPE vocabulary by spelling; ids not in model.vocab have empty spellings */
    uint32_t *spell_off;        /* [n_vocab + 1] into spells */
    char *spells;
    int32_t *vocab_slots;       /* open addressing, -1 if free */
    size_t vocab_mask;

    struct merge_slot *merges;  /* open addressing */
    size_t merge_mask;
    int merge_shift;            /* 64 - log2(number of slots) */

    int32_t byte_id[256];       /* the token of each single byte */
    char byte_spell[256][2];    /* each byte's character in the byte-level alphabet */
    uint8_t byte_spell_len[256];
    int ignore_merges;

    int32_t trie_root[256];     /* node of each first byte, -1 if no added token starts so */
    struct trie_node *trie;
    size_t n_trie, trie_cap;

    pcre2_code **steps;         /* Split regexes in order, ByteLevel's last if use_regex */
    int n_steps;
    uint32_t ovector_pairs;
    pcre2_match_context *mctx;  /* read-only once set up, so shared by all threads */

    int32_t bos, eos;
    int add_bos;
};

/* ---- byte-level alphabet ------------------------------------------------ */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
 * other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) map in byte order to
 * U+0100 onwards, so every byte is a visible character (0x20 -> U+0120 'Ġ'). */
#define N_ALPHABET (256 + 68)

static void byte_alphabet(uint32_t byte_cp[256], int16_t cp_byte[N_ALPHABET]) {
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_cp[b] = printable ? (uint32_t)b : next++;
    }
    for (int c = 0; c < N_ALPHABET; c++) cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) cp_byte[byte_cp[b]] = (int16_t)b;
}

/* ---- hash tables --------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;     /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static size_t spell_len(const dsv_tokenizer *t, int32_t id) {
    return t->spell_off[id + 1] - t->spell_off[id];
}

static int32_t vocab_find(const dsv_tokenizer *t, const char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_slots[i];
        if (id < 0) return -1;
        if (spell_len(t, id) == n && !memcmp(t->spells + t->spell_off[id], s, n)) return id;
    }
}

static size_t merge_index(const dsv_tokenizer *t, uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> t->merge_shift);   /* Fibonacci hashing */
}

static inline const struct merge_slot *merge_get(const dsv_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = merge_index(t, key);; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *s = &t->merges[i];
        if (s->key == key) return s;
        if (s->key == MERGE_EMPTY) return NULL;
    }
}

/* A pair listed twice keeps its last rank: the Rust and JavaScript libraries
 * both collect the list into a map, where later entries overwrite. */
static void merge_put(dsv_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = merge_index(t, key);
    while (t->merges[i].key != MERGE_EMPTY && t->merges[i].key != key) i = (i + 1) & t->merge_mask;
    t->merges[i] = (struct merge_slot){key, rank, id};
}

/* ---- added-token trie ---------------------------------------------------- */

static int32_t trie_child(const dsv_tokenizer *t, int32_t node, unsigned char b) {
    for (int32_t c = t->trie[node].child; c >= 0; c = t->trie[c].sibling)
        if (t->trie[c].byte == b) return c;
    return -1;
}

static int32_t trie_new(dsv_tokenizer *t, unsigned char b) {
    if (t->n_trie == t->trie_cap) {
        size_t cap = t->trie_cap ? 2 * t->trie_cap : 1024;
        struct trie_node *n = realloc(t->trie, cap * sizeof *n);
        if (!n) return -1;
        t->trie = n;
        t->trie_cap = cap;
    }
    t->trie[t->n_trie] = (struct trie_node){-1, -1, -1, b};
    return (int32_t)t->n_trie++;
}

/* Adds an added token's content; when two share a content the first (lower
 * position in added_tokens) keeps it. */
static int trie_add(dsv_tokenizer *t, const unsigned char *s, size_t n, int32_t id) {
    int32_t node = t->trie_root[s[0]];
    if (node < 0) {
        if ((node = trie_new(t, s[0])) < 0) return DSV_ERR_NOMEM;
        t->trie_root[s[0]] = node;
    }
    for (size_t i = 1; i < n; i++) {
        int32_t c = trie_child(t, node, s[i]);
        if (c < 0) {
            if ((c = trie_new(t, s[i])) < 0) return DSV_ERR_NOMEM;
            t->trie[c].sibling = t->trie[node].child;
            t->trie[node].child = c;
        }
        node = c;
    }
    if (t->trie[node].id < 0) t->trie[node].id = id;
    return DSV_OK;
}

/* The longest added token that starts exactly at s[0], or -1; *len its size. */
static int32_t added_at(const dsv_tokenizer *t, const unsigned char *s, size_t n, size_t *len) {
    int32_t best = -1;
    int32_t node = t->trie_root[s[0]];
    for (size_t j = 1; node >= 0; j++) {
        if (t->trie[node].id >= 0) {
            best = t->trie[node].id;
            *len = j;
        }
        if (j == n) break;
        node = trie_child(t, node, s[j]);
    }
    return best;
}

/* Leftmost, then longest, added token in s[0..n): returns its id and sets
 * *at and *len, or returns -1. The JavaScript library tries one alternation
 * of all contents sorted longest first, which picks the same match. Rust
 * matches leftmost-longest too, but in two passes (tokens with normalized =
 * false first, then the others in the gaps); that can differ only when two
 * contents overlap in the text, and DeepSeek's cannot: each is "<...>" with
 * no '<' or '>' inside. */
static int32_t added_find(const dsv_tokenizer *t, const unsigned char *s, size_t n, size_t *at, size_t *len) {
    if (!t->n_trie) return -1;
    for (size_t i = 0; i < n; i++) {
        if (t->trie_root[s[i]] < 0) continue;
        int32_t id = added_at(t, s + i, n - i, len);
        if (id >= 0) {
            *at = i;
            return id;
        }
    }
    return -1;
}

/* ---- loading: JSON checks ------------------------------------------------ */

/* tokenizer.json of DeepSeek-V3.2 is about 8 MB; anything far past that is
 * not a tokenizer. */
#define TOKENIZER_MAX_BYTES ((size_t)256 << 20)

static int parse_json(const char *buf, size_t len, cJSON **out) {
    const char *end = buf;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!j) return dsv_error(DSV_ERR_FORMAT, "invalid JSON near byte %zu", (size_t)(end - buf));
    *out = j;
    return DSV_OK;
}

/* Refuses members not in allowed[] (NULL-terminated): a field this code does
 * not know might change the encoding, so it must not pass unnoticed. */
static int check_keys(const cJSON *obj, const char *where, const char *const *allowed) {
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, c->string)) a++;
        if (!*a) return dsv_error(DSV_ERR_UNSUPPORTED, "%s.%s: unknown field", where, c->string);
    }
    return DSV_OK;
}

/* A boolean member: def when absent or null. */
static int get_bool(const cJSON *obj, const char *key, int def, const char *where, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) *out = def;
    else if (cJSON_IsBool(v)) *out = cJSON_IsTrue(v);
    else return dsv_error(DSV_ERR_FORMAT, "%s.%s: expected true or false", where, key);
    return DSV_OK;
}

/* The "type" member of a component object. */
static int get_type(const cJSON *obj, const char *where, const char **type) {
    if (!cJSON_IsObject(obj)) return dsv_error(DSV_ERR_FORMAT, "%s: expected an object", where);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "type");
    if (!cJSON_IsString(v)) return dsv_error(DSV_ERR_FORMAT, "%s.type: missing or not a string", where);
    *type = v->valuestring;
    return DSV_OK;
}

/* A token id: an integral JSON number in [0, MAX_TOKEN_ID]. */
static int get_id(const cJSON *v, const char *where, int32_t *id) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > MAX_TOKEN_ID ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return dsv_error(DSV_ERR_FORMAT, "%s: expected a token id (an integer from 0 to %d)", where,
                         MAX_TOKEN_ID);
    *id = (int32_t)v->valuedouble;
    return DSV_OK;
}

/* The normalizer must leave text unchanged: null, or Sequences of nothing. */
static int check_normalizer(const cJSON *n, const char *where) {
    const char *type;
    if (!n || cJSON_IsNull(n)) return DSV_OK;
    int rc = get_type(n, where, &type);
    if (rc) return rc;
    if (strcmp(type, "Sequence"))
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: type '%s' is not supported (only an empty normalizer is)",
                         where, type);
    static const char *const keys[] = {"type", "normalizers", NULL};
    if ((rc = check_keys(n, where, keys))) return rc;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    if (!cJSON_IsArray(list)) return dsv_error(DSV_ERR_FORMAT, "%s.normalizers: expected an array", where);
    int i = 0;
    for (const cJSON *c = list->child; c; c = c->next, i++) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s.normalizers[%d]", where, i);
        if ((rc = check_normalizer(c, sub))) return rc;
    }
    return DSV_OK;
}

static int add_step(dsv_tokenizer *t, const char *pattern, int literal, const char *where) {
    int err;
    PCRE2_SIZE at;
    /* A literal has no classes, and PCRE2_LITERAL refuses PCRE2_UCP. */
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &err, &at, NULL);
    if (!re) {
        char msg[256];
        pcre2_get_error_message(err, (PCRE2_UCHAR *)msg, sizeof msg);
        return dsv_error(DSV_ERR_FORMAT, "%s: regex error at offset %zu: %s", where, (size_t)at, msg);
    }
    /* JIT is several times faster; without it (unsupported CPU) the
     * interpreter gives the same matches. */
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    uint32_t ncap = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ncap);
    pcre2_code **s = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *s);
    if (!s) {
        pcre2_code_free(re);
        return dsv_error(DSV_ERR_NOMEM, "out of memory");
    }
    t->steps = s;
    t->steps[t->n_steps++] = re;
    if (ncap + 1 > t->ovector_pairs) t->ovector_pairs = ncap + 1;
    return DSV_OK;
}

/* Appends the regex steps of pre-tokenizer p. ByteLevel must come last:
 * after it, a Split would see byte-level characters rather than the text. */
static int parse_pretok(dsv_tokenizer *t, const cJSON *p, const char *where, int *seen_bytelevel) {
    const char *type;
    int rc = get_type(p, where, &type);
    if (rc) return rc;
    if (*seen_bytelevel)
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: %s after ByteLevel is not supported", where, type);
    if (!strcmp(type, "Sequence")) {
        static const char *const keys[] = {"type", "pretokenizers", NULL};
        if ((rc = check_keys(p, where, keys))) return rc;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return dsv_error(DSV_ERR_FORMAT, "%s.pretokenizers: expected an array", where);
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", where, i);
            if ((rc = parse_pretok(t, c, sub, seen_bytelevel))) return rc;
        }
        return DSV_OK;
    }
    if (!strcmp(type, "Split")) {
        static const char *const keys[] = {"type", "pattern", "behavior", "invert", NULL};
        if ((rc = check_keys(p, where, keys))) return rc;
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        if (!cJSON_IsString(beh)) return dsv_error(DSV_ERR_FORMAT, "%s.behavior: missing or not a string", where);
        if (strcmp(beh->valuestring, "Isolated"))
            return dsv_error(DSV_ERR_UNSUPPORTED, "%s.behavior: '%s' is not supported (only Isolated is)", where,
                             beh->valuestring);
        int invert;
        if ((rc = get_bool(p, "invert", 0, where, &invert))) return rc;
        if (invert) return dsv_error(DSV_ERR_UNSUPPORTED, "%s.invert: true is not supported", where);
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        char sub[256];
        snprintf(sub, sizeof sub, "%s.pattern", where);
        if (cJSON_IsString(re)) return add_step(t, re->valuestring, 0, sub);
        if (cJSON_IsString(str)) return add_step(t, str->valuestring, 1, sub);
        return dsv_error(DSV_ERR_FORMAT, "%s: expected {\"Regex\": ...} or {\"String\": ...}", sub);
    }
    if (!strcmp(type, "ByteLevel")) {
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
        if ((rc = check_keys(p, where, keys))) return rc;
        int prefix, use_regex, trim;
        /* The defaults are the Rust library's. trim_offsets only moves offsets. */
        if ((rc = get_bool(p, "add_prefix_space", 1, where, &prefix)) ||
            (rc = get_bool(p, "use_regex", 1, where, &use_regex)) ||
            (rc = get_bool(p, "trim_offsets", 1, where, &trim)))
            return rc;
        if (prefix) return dsv_error(DSV_ERR_UNSUPPORTED, "%s.add_prefix_space: true is not supported", where);
        *seen_bytelevel = 1;
        return use_regex ? add_step(t, GPT2_PATTERN, 0, where) : DSV_OK;
    }
    return dsv_error(DSV_ERR_UNSUPPORTED, "%s: type '%s' is not supported", where, type);
}

static int check_decoder(const cJSON *d) {
    const char *type;
    if (!d || cJSON_IsNull(d))
        return dsv_error(DSV_ERR_UNSUPPORTED, "decoder: null is not supported (byte-level BPE needs ByteLevel)");
    int rc = get_type(d, "decoder", &type);
    if (rc) return rc;
    if (strcmp(type, "ByteLevel"))
        return dsv_error(DSV_ERR_UNSUPPORTED, "decoder: type '%s' is not supported (only ByteLevel is)", type);
    /* ByteLevel's decoder ignores its flags: they are shared with the
     * pre-tokenizer's configuration type. */
    static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
    return check_keys(d, "decoder", keys);
}

/* Checks the model fields that choose a behavior; vocab and merges come later. */
static int check_model(const cJSON *m, dsv_tokenizer *t) {
    const char *type;
    int rc = get_type(m, "model", &type);
    if (rc) return rc;
    if (strcmp(type, "BPE"))
        return dsv_error(DSV_ERR_UNSUPPORTED, "model.type: '%s' is not supported (only BPE is)", type);
    static const char *const keys[] = {"type", "dropout", "unk_token", "continuing_subword_prefix",
                                       "end_of_word_suffix", "fuse_unk", "byte_fallback",
                                       "ignore_merges", "vocab", "merges", NULL};
    if ((rc = check_keys(m, "model", keys))) return rc;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return dsv_error(DSV_ERR_UNSUPPORTED, "model.dropout: only null is supported");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(m, affixes[i]);
        if (v && !cJSON_IsNull(v) && !cJSON_IsString(v))
            return dsv_error(DSV_ERR_FORMAT, "model.%s: expected a string or null", affixes[i]);
        if (cJSON_IsString(v) && v->valuestring[0])
            return dsv_error(DSV_ERR_UNSUPPORTED, "model.%s: '%s' is not supported (only null or \"\")",
                             affixes[i], v->valuestring);
    }
    /* unk_token and fuse_unk only matter for a character missing from the
     * vocabulary; every byte is required to be there (see build_vocab). */
    v = cJSON_GetObjectItemCaseSensitive(m, "unk_token");
    if (v && !cJSON_IsNull(v) && !cJSON_IsString(v))
        return dsv_error(DSV_ERR_FORMAT, "model.unk_token: expected a string or null");
    int fuse, fallback;
    if ((rc = get_bool(m, "fuse_unk", 0, "model", &fuse)) ||
        (rc = get_bool(m, "byte_fallback", 0, "model", &fallback)) ||
        (rc = get_bool(m, "ignore_merges", 0, "model", &t->ignore_merges)))
        return rc;
    if (fallback) return dsv_error(DSV_ERR_UNSUPPORTED, "model.byte_fallback: true is not supported");
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m, "vocab")))
        return dsv_error(DSV_ERR_FORMAT, "model.vocab: missing or not an object");
    if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(m, "merges")))
        return dsv_error(DSV_ERR_FORMAT, "model.merges: missing or not an array");
    return DSV_OK;
}

static int check_added(const cJSON *a, int i) {
    char where[64];
    snprintf(where, sizeof where, "added_tokens[%d]", i);
    if (!cJSON_IsObject(a)) return dsv_error(DSV_ERR_FORMAT, "%s: expected an object", where);
    static const char *const keys[] = {"id", "content", "single_word", "lstrip", "rstrip",
                                       "normalized", "special", NULL};
    int rc = check_keys(a, where, keys), flag;
    if (rc) return rc;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
    if (!cJSON_IsString(c) || !c->valuestring[0])
        return dsv_error(DSV_ERR_FORMAT, "%s.content: missing or empty", where);
    static const char *const unsupported[] = {"single_word", "lstrip", "rstrip"};
    for (int k = 0; k < 3; k++) {
        if ((rc = get_bool(a, unsupported[k], 0, where, &flag))) return rc;
        if (flag)
            return dsv_error(DSV_ERR_UNSUPPORTED, "%s (%s).%s: true is not supported", where, c->valuestring,
                             unsupported[k]);
    }
    /* "normalized" selects which text a token is matched in; with an empty
     * normalizer both are the same. */
    if ((rc = get_bool(a, "normalized", 0, where, &flag)) || (rc = get_bool(a, "special", 0, where, &flag)))
        return rc;
    int32_t id;
    char sub[80];
    snprintf(sub, sizeof sub, "%s.id", where);
    return get_id(cJSON_GetObjectItemCaseSensitive(a, "id"), sub, &id);
}

/* ---- loading: tables ----------------------------------------------------- */

/* Decodes a vocabulary spelling to the bytes it stands for. A spelling with a
 * character outside the byte-level alphabet (such as "<｜begin▁of▁sentence｜>")
 * is taken as its own UTF-8 bytes, as the Rust ByteLevel decoder does. */
static size_t spelling_to_bytes(const int16_t cp_byte[N_ALPHABET], const char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = dsv_utf8_decode(s + i, n - i, &cp);
        if (!l || cp >= N_ALPHABET || cp_byte[cp] < 0) {
            memcpy(out, s, n);
            return n;
        }
        out[k++] = (char)cp_byte[cp];
        i += l;
    }
    return k;
}

/* Builds the id tables from model.vocab and added_tokens (both checked). */
static int build_vocab(dsv_tokenizer *t, const cJSON *vocab, const cJSON *added) {
    int32_t max_id = -1, id;
    int rc;
    char where[128];
    for (const cJSON *c = vocab->child; c; c = c->next) {
        snprintf(where, sizeof where, "model.vocab[\"%.64s\"]", c->string);
        if ((rc = get_id(c, where, &id))) return rc;
        if (id > max_id) max_id = id;
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        id = (int32_t)cJSON_GetObjectItemCaseSensitive(a, "id")->valuedouble;
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return dsv_error(DSV_ERR_FORMAT, "model.vocab: empty");
    size_t n = (size_t)max_id + 1;
    t->n_vocab = max_id + 1;
    const char **src = calloc(n, sizeof *src);          /* spelling, then piece source, of each id */
    t->flags = calloc(n, 1);
    t->spell_off = calloc(n + 1, sizeof *t->spell_off);
    t->piece_off = calloc(n + 1, sizeof *t->piece_off);
    if (!src || !t->flags || !t->spell_off || !t->piece_off) goto nomem;

    size_t total = 0;
    for (const cJSON *c = vocab->child; c; c = c->next) {
        id = (int32_t)c->valuedouble;
        if (src[id]) {
            rc = dsv_error(DSV_ERR_FORMAT, "model.vocab: id %d is given to both '%s' and '%s'", id, src[id],
                           c->string);
            free(src);
            return rc;
        }
        src[id] = c->string;
        total += strlen(c->string);
    }
    /* Offsets are 32-bit; a real vocabulary's text is about a megabyte. */
    if (total > UINT32_MAX / 2) {
        free(src);
        return dsv_error(DSV_ERR_FORMAT, "model.vocab: too large");
    }
    t->spells = malloc(total + 1);
    size_t slots = 16;
    while (slots < 2 * n) slots *= 2;
    t->vocab_slots = malloc(slots * sizeof *t->vocab_slots);
    if (!t->spells || !t->vocab_slots) goto nomem;
    memset(t->vocab_slots, 0xff, slots * sizeof *t->vocab_slots);
    t->vocab_mask = slots - 1;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        t->spell_off[i] = (uint32_t)off;
        if (!src[i]) continue;
        size_t l = strlen(src[i]);
        memcpy(t->spells + off, src[i], l);
        off += l;
        t->flags[i] = TF_PRESENT;
        size_t h = hash_bytes(src[i], l) & t->vocab_mask;
        while (t->vocab_slots[h] >= 0) h = (h + 1) & t->vocab_mask;
        t->vocab_slots[h] = (int32_t)i;
    }
    t->spell_off[n] = (uint32_t)off;

    /* Added tokens: their content is their piece. DeepSeek lists BOS, EOS and
     * pad in both tables under the same spelling; an id whose vocabulary entry
     * spells something else would encode one text and decode another, so such
     * a file is refused. */
    int i = 0;
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next, i++) {
        id = (int32_t)cJSON_GetObjectItemCaseSensitive(a, "id")->valuedouble;
        const char *content = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring;
        if (t->flags[id] & TF_ADDED) {
            rc = dsv_error(DSV_ERR_FORMAT, "added_tokens[%d]: id %d is already given to '%s'", i, id, src[id]);
            free(src);
            return rc;
        }
        if (src[id] && strcmp(src[id], content)) {
            rc = dsv_error(DSV_ERR_FORMAT, "added_tokens[%d]: id %d is '%.64s' here but '%.64s' in model.vocab", i, id,
                           content, src[id]);
            free(src);
            return rc;
        }
        src[id] = content;
        t->flags[id] |= TF_PRESENT | TF_ADDED;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special"))) t->flags[id] |= TF_SPECIAL;
        if (trie_add(t, (const unsigned char *)content, strlen(content), id)) goto nomem;
    }

    /* Pieces: a decoded spelling is never longer than the spelling. */
    total = 0;
    for (size_t k = 0; k < n; k++) total += src[k] ? strlen(src[k]) : 0;
    if (total > UINT32_MAX / 2) {
        free(src);
        return dsv_error(DSV_ERR_FORMAT, "added_tokens: too large");
    }
    t->pieces = malloc(total + 1);
    if (!t->pieces) goto nomem;
    uint32_t byte_cp[256];
    int16_t cp_byte[N_ALPHABET];
    byte_alphabet(byte_cp, cp_byte);
    off = 0;
    for (size_t k = 0; k < n; k++) {
        t->piece_off[k] = (uint32_t)off;
        if (!src[k]) continue;
        size_t l = strlen(src[k]);
        if (t->flags[k] & TF_ADDED) memcpy(t->pieces + off, src[k], l);
        else l = spelling_to_bytes(cp_byte, src[k], l, t->pieces + off);
        off += l;
        if (l > t->max_piece) t->max_piece = l;
    }
    t->piece_off[n] = (uint32_t)off;
    free(src);

    for (int b = 0; b < 256; b++) {
        t->byte_spell_len[b] = (uint8_t)dsv_utf8_encode(byte_cp[b], t->byte_spell[b]);
        t->byte_id[b] = vocab_find(t, t->byte_spell[b], t->byte_spell_len[b]);
        if (t->byte_id[b] < 0)
            return dsv_error(DSV_ERR_UNSUPPORTED, "model.vocab: no token for byte 0x%02x ('%.*s'); byte-level BPE "
                             "needs all 256", b, t->byte_spell_len[b], t->byte_spell[b]);
    }
    return DSV_OK;
nomem:
    free(src);
    return dsv_error(DSV_ERR_NOMEM, "out of memory");
}

/* A merge as "a b" (exactly one space, as the Rust library requires) or as
 * ["a", "b"]. */
static int merge_parts(const cJSON *m, int i, const char **a, size_t *na, const char **b, size_t *nb) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return dsv_error(DSV_ERR_FORMAT, "model.merges[%d]: '%s' is not two tokens separated by a space", i, s);
        *a = s;
        *na = (size_t)(sp - s);
        *b = sp + 1;
        *nb = strlen(sp + 1);
        return DSV_OK;
    }
    if (cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
        *a = m->child->valuestring;
        *na = strlen(*a);
        *b = m->child->next->valuestring;
        *nb = strlen(*b);
        return DSV_OK;
    }
    return dsv_error(DSV_ERR_FORMAT, "model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", i);
}

static int build_merges(dsv_tokenizer *t, const cJSON *merges) {
    int n = cJSON_GetArraySize(merges);
    size_t slots = 16;
    int bits = 4;
    while (slots < 2 * (size_t)n) {
        slots *= 2;
        bits++;
    }
    t->merges = malloc(slots * sizeof *t->merges);
    if (!t->merges) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < slots; i++) t->merges[i].key = MERGE_EMPTY;
    t->merge_mask = slots - 1;
    t->merge_shift = 64 - bits;
    char *cat = NULL;
    size_t cat_cap = 0;
    int i = 0;
    for (const cJSON *m = merges->child; m; m = m->next, i++) {
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        int rc = merge_parts(m, i, &a, &na, &b, &nb);
        if (rc) {
            free(cat);
            return rc;
        }
        if (na + nb > cat_cap) {
            cat_cap = 2 * (na + nb);
            char *c = realloc(cat, cat_cap);
            if (!c) {
                free(cat);
                return dsv_error(DSV_ERR_NOMEM, "out of memory");
            }
            cat = c;
        }
        memcpy(cat, a, na);
        memcpy(cat + na, b, nb);
        int32_t ia = vocab_find(t, a, na), ib = vocab_find(t, b, nb), im = vocab_find(t, cat, na + nb);
        if (ia < 0 || ib < 0 || im < 0) {
            const char *what = ia < 0 ? a : ib < 0 ? b : cat;
            int len = (int)(ia < 0 ? na : ib < 0 ? nb : na + nb);
            rc = dsv_error(DSV_ERR_FORMAT, "model.merges[%d]: '%.*s' is not in model.vocab", i, len, what);
            free(cat);
            return rc;
        }
        merge_put(t, ia, ib, i, im);
    }
    free(cat);
    return DSV_OK;
}

/* bos_token / eos_token: a string, an object with "content", or null. */
static int config_token(const dsv_tokenizer *t, const cJSON *cfg, const char *key, int32_t *id) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    *id = -1;
    if (!v || cJSON_IsNull(v)) return DSV_OK;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v)) return dsv_error(DSV_ERR_CONFIG, "%s: expected a string or {\"content\": ...}", key);
    *id = dsv_token_id(t, v->valuestring);
    if (*id < 0) return dsv_error(DSV_ERR_CONFIG, "%s: '%s' is not a token", key, v->valuestring);
    return DSV_OK;
}

static int load_config(dsv_tokenizer *t, const char *path) {
    char *buf;
    size_t len;
    cJSON *cfg = NULL;
    int rc = dsv_read_file(path, TOKENIZER_MAX_BYTES, &buf, &len);
    if (rc) return rc; /* the message names the path */
    rc = parse_json(buf, len, &cfg);
    free(buf);
    if (rc) return dsv_error_prefix(rc, "%s", path);
    if (!cJSON_IsObject(cfg)) rc = dsv_error(DSV_ERR_FORMAT, "expected a JSON object");
    if (!rc) rc = get_bool(cfg, "add_bos_token", 0, "tokenizer_config", &t->add_bos);
    if (!rc) rc = config_token(t, cfg, "bos_token", &t->bos);
    if (!rc) rc = config_token(t, cfg, "eos_token", &t->eos);
    cJSON_Delete(cfg);
    return rc ? dsv_error_prefix(rc, "%s", path) : DSV_OK;
}

/* Builds the tokenizer from a tokenizer.json document (consumed). */
static int load_tokenizer_doc(dsv_tokenizer *t, cJSON *j) {
    int rc = DSV_OK;
    static const char *const keys[] = {"version", "truncation", "padding", "added_tokens", "normalizer",
                                       "pre_tokenizer", "post_processor", "decoder", "model", NULL};
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer");
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(j, "truncation");
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(j, "padding");
    int seen_bytelevel = 0;
    if (!cJSON_IsObject(j)) rc = dsv_error(DSV_ERR_FORMAT, "expected a JSON object");
    if (!rc) rc = check_keys(j, "tokenizer", keys);
    if (!rc && !model) rc = dsv_error(DSV_ERR_FORMAT, "model: missing");
    if (!rc && tr && !cJSON_IsNull(tr)) rc = dsv_error(DSV_ERR_UNSUPPORTED, "truncation: only null is supported");
    if (!rc && pad && !cJSON_IsNull(pad)) rc = dsv_error(DSV_ERR_UNSUPPORTED, "padding: only null is supported");
    if (!rc && added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        rc = dsv_error(DSV_ERR_FORMAT, "added_tokens: expected an array");
    if (!rc) rc = check_model(model, t);
    if (!rc) rc = check_normalizer(cJSON_GetObjectItemCaseSensitive(j, "normalizer"), "normalizer");
    if (!rc && (!pre || cJSON_IsNull(pre)))
        rc = dsv_error(DSV_ERR_UNSUPPORTED, "pre_tokenizer: null is not supported (byte-level BPE needs ByteLevel)");
    if (!rc) rc = parse_pretok(t, pre, "pre_tokenizer", &seen_bytelevel);
    if (!rc && !seen_bytelevel)
        rc = dsv_error(DSV_ERR_UNSUPPORTED, "pre_tokenizer: no ByteLevel pre-tokenizer (byte-level BPE needs one)");
    if (!rc) rc = check_decoder(cJSON_GetObjectItemCaseSensitive(j, "decoder"));
    int i = 0;
    for (const cJSON *a = cJSON_IsArray(added) ? added->child : NULL; a && !rc; a = a->next) rc = check_added(a, i++);
    if (!rc) rc = build_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"), cJSON_IsArray(added) ? added : NULL);
    if (!rc) rc = build_merges(t, cJSON_GetObjectItemCaseSensitive(model, "merges"));
    cJSON_Delete(j);
    return rc;
}

static int load_tokenizer_json(dsv_tokenizer *t, const char *path) {
    char *buf;
    size_t len;
    cJSON *j = NULL;
    int rc = dsv_read_file(path, TOKENIZER_MAX_BYTES, &buf, &len);
    if (rc) return rc; /* the message names the path */
    rc = parse_json(buf, len, &j);
    free(buf);
    if (!rc) rc = load_tokenizer_doc(t, j);
    return rc ? dsv_error_prefix(rc, "%s", path) : DSV_OK;
}
/* ---- loading from GGUF metadata ------------------------------------------ */

/* A GGUF string as a C string (NULL for one holding a NUL byte). */
static char *gguf_cstr(const char *s, size_t n) {
    return memchr(s, 0, n) ? NULL : strndup(s, n);
}

/* The tokenizer.json document that llama.cpp's converter turned into
 * tokenizer.ggml.* (model gpt2, pre-tokenizer deepseek-v3): tokens of type
 * NORMAL (1), UNKNOWN (2) and BYTE (6) form model.vocab under their
 * byte-level spelling; CONTROL (3) and USER_DEFINED (4) tokens are the added
 * tokens, special when CONTROL; UNUSED (5) ones ([PAD<id>] fillers) are gaps,
 * as they were before conversion; merges are "a b" as in tokenizer.json. */
static int gguf_doc(const dsv_gguf *g, cJSON **out) {
    const char *s;
    size_t n;
    int rc = dsv_gguf_get_str(g, "tokenizer.ggml.model", &s, &n);
    if (rc) return rc;
    if (n != 4 || memcmp(s, "gpt2", 4))
        return dsv_error(DSV_ERR_UNSUPPORTED, "tokenizer.ggml.model '%.*s' is not supported (gpt2 is)", (int)DSV_MIN(n, 40), s);
    if ((rc = dsv_gguf_get_str(g, "tokenizer.ggml.pre", &s, &n))) return rc;
    if (n != 11 || memcmp(s, "deepseek-v3", 11))
        return dsv_error(DSV_ERR_UNSUPPORTED, "tokenizer.ggml.pre '%.*s' is not supported (deepseek-v3 is)", (int)DSV_MIN(n, 40), s);
    const int tk = dsv_gguf_kv_find(g, "tokenizer.ggml.tokens"), ty = dsv_gguf_kv_find(g, "tokenizer.ggml.token_type");
    const int mg = dsv_gguf_kv_find(g, "tokenizer.ggml.merges");
    if (tk < 0 || mg < 0 || dsv_gguf_kv_type(g, tk) != DSV_GGUF_ARRAY || dsv_gguf_arr_type(g, tk) != DSV_GGUF_STRING ||
        dsv_gguf_kv_type(g, mg) != DSV_GGUF_ARRAY || dsv_gguf_arr_type(g, mg) != DSV_GGUF_STRING)
        return dsv_error(DSV_ERR_FORMAT, "tokenizer.ggml.tokens and tokenizer.ggml.merges must be string arrays");
    const uint64_t n_tok = dsv_gguf_arr_n(g, tk);
    if (n_tok > MAX_TOKEN_ID) return dsv_error(DSV_ERR_FORMAT, "tokenizer.ggml.tokens: %llu tokens is too many", (unsigned long long)n_tok);
    if (ty >= 0 && (dsv_gguf_kv_type(g, ty) != DSV_GGUF_ARRAY || dsv_gguf_arr_n(g, ty) != n_tok ||
                    dsv_gguf_arr_type(g, ty) == DSV_GGUF_STRING))
        return dsv_error(DSV_ERR_FORMAT, "tokenizer.ggml.token_type must be a number per token");
    cJSON *j = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(j, "model");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab"), *merges = cJSON_AddArrayToObject(model, "merges");
    cJSON *added = cJSON_AddArrayToObject(j, "added_tokens");
    cJSON *pre = cJSON_AddObjectToObject(j, "pre_tokenizer"), *dec = cJSON_AddObjectToObject(j, "decoder");
    cJSON *list = pre ? cJSON_AddArrayToObject(pre, "pretokenizers") : NULL;
    rc = j && model && vocab && merges && added && dec && list && cJSON_AddStringToObject(model, "type", "BPE") &&
         cJSON_AddStringToObject(pre, "type", "Sequence") && cJSON_AddStringToObject(dec, "type", "ByteLevel")
         ? DSV_OK : DSV_ERR_NOMEM;
    for (int i = 0; !rc && i < 4; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddItemToArray(list, p);
        if (i == 3) {
            cJSON_AddStringToObject(p, "type", "ByteLevel");
            cJSON_AddBoolToObject(p, "add_prefix_space", 0);
            cJSON_AddBoolToObject(p, "use_regex", 0);
        } else {
            cJSON_AddStringToObject(p, "type", "Split");
            cJSON_AddStringToObject(cJSON_AddObjectToObject(p, "pattern"), "Regex", dsv_deepseek_v3_pretok[i]);
            cJSON_AddStringToObject(p, "behavior", "Isolated");
            cJSON_AddBoolToObject(p, "invert", 0);
        }
    }
    for (uint64_t i = 0; !rc && i < n_tok; i++) {
        const char *ts = dsv_gguf_arr_str(g, tk, i, &n);
        const double type = ty >= 0 ? dsv_gguf_arr_num(g, ty, i) : 1;
        char *c = gguf_cstr(ts, n);
        if (!c) { rc = dsv_error(DSV_ERR_FORMAT, "tokenizer.ggml.tokens[%llu] holds a NUL byte", (unsigned long long)i); break; }
        if (type == 3 || type == 4) {
            cJSON *a = cJSON_CreateObject();
            cJSON_AddItemToArray(added, a);
            cJSON_AddNumberToObject(a, "id", (double)i);
            cJSON_AddStringToObject(a, "content", c);
            cJSON_AddBoolToObject(a, "special", type == 3);
        } else if (type != 5) {
            cJSON_AddItemToObject(vocab, c, cJSON_CreateNumber((double)i));
        }
        free(c);
    }
    for (uint64_t i = 0; !rc && i < dsv_gguf_arr_n(g, mg); i++) {
        const char *ms = dsv_gguf_arr_str(g, mg, i, &n);
        char *c = gguf_cstr(ms, n);
        if (!c) { rc = dsv_error(DSV_ERR_FORMAT, "tokenizer.ggml.merges[%llu] holds a NUL byte", (unsigned long long)i); break; }
        cJSON_AddItemToArray(merges, cJSON_CreateString(c));
        free(c);
    }
    if (rc == DSV_ERR_NOMEM) rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
    if (rc) { cJSON_Delete(j); return rc; }
    *out = j;
    return DSV_OK;
}

/* BOS/EOS ids and add_bos from the metadata, each optional. */
static int gguf_specials(dsv_tokenizer *t, const dsv_gguf *g) {
    static const char *const keys[2] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
    int32_t *ids[2] = {&t->bos, &t->eos};
    for (int k = 0; k < 2; k++) {
        int64_t v;
        if (dsv_gguf_kv_find(g, keys[k]) < 0) continue;
        int rc = dsv_gguf_get_int(g, keys[k], 0, t->n_vocab - 1, &v);
        if (rc) return rc;
        *ids[k] = (int32_t)v;
    }
    if (dsv_gguf_kv_find(g, "tokenizer.ggml.add_bos_token") >= 0)
        return dsv_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos);
    return DSV_OK;
}

static int load_gguf(dsv_tokenizer *t, const char *path) {
    dsv_gguf *g;
    cJSON *j = NULL;
    int rc = dsv_gguf_open(&g, path);
    if (rc) return rc;
    if (!(rc = gguf_doc(g, &j)) && !(rc = load_tokenizer_doc(t, j))) rc = gguf_specials(t, g);
    dsv_gguf_close(g);
    /* Every message names the file (the metadata getters' already do). */
    if (rc && strncmp(dsv_errmsg(), path, strlen(path))) dsv_error_prefix(rc, "%s", path);
    return rc;
}

int dsv_tokenizer_open(dsv_tokenizer **out, const char *path) {
    if (!out || !path) return dsv_error(DSV_ERR_ARG, "dsv_tokenizer_open: NULL argument");
    struct stat st;
    if (stat(path, &st) != 0) return dsv_error(DSV_ERR_IO, "%s: %s", path, strerror(errno));
    size_t plen = strlen(path);
    char *json = malloc(plen + 32), *cfg = malloc(plen + 32);
    dsv_tokenizer *t = calloc(1, sizeof *t);
    if (!json || !cfg || !t) {
        free(json);
        free(cfg);
        free(t);
        return dsv_error(DSV_ERR_NOMEM, "out of memory");
    }
    t->bos = t->eos = -1;
    memset(t->trie_root, 0xff, sizeof t->trie_root);
    /* PCRE2's default match limit (10 million backtracking steps) is hit by
     * legitimate input: \s*[\r\n]+ walks a 32 MB run of spaces twice before
     * \s+ takes it. These patterns backtrack linearly, so lift the limit. */
    t->mctx = pcre2_match_context_create(NULL);
    if (t->mctx) pcre2_set_match_limit(t->mctx, UINT32_MAX);
    if (S_ISDIR(st.st_mode)) {
        snprintf(json, plen + 32, "%s/tokenizer.json", path);
        snprintf(cfg, plen + 32, "%s/tokenizer_config.json", path);
    } else {
        const char *slash = strrchr(path, '/');
        int dir = slash ? (int)(slash - path) + 1 : 0;
        snprintf(json, plen + 32, "%s", path);
        snprintf(cfg, plen + 32, "%.*stokenizer_config.json", dir, path);
    }
    /* Every error below names the file it is about. A GGUF file holds the
     * whole tokenizer in its metadata (no tokenizer_config.json beside it). */
    const int gguf = plen > 5 && !strcmp(path + plen - 5, ".gguf") && !S_ISDIR(st.st_mode);
    int rc = !t->mctx ? dsv_error(DSV_ERR_NOMEM, "%s: out of memory", json)
           : gguf ? load_gguf(t, path) : load_tokenizer_json(t, json);
    if (!rc && !gguf && (stat(cfg, &st) == 0 || errno != ENOENT)) rc = load_config(t, cfg);
    free(json);
    free(cfg);
    if (rc) {
        dsv_tokenizer_close(t);
        return rc;
    }
    *out = t;
    return DSV_OK;
}

void dsv_tokenizer_close(dsv_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i]);
    pcre2_match_context_free(t->mctx);
    free(t->steps);
    free(t->flags);
    free(t->piece_off);
    free(t->pieces);
    free(t->spell_off);
    free(t->spells);
    free(t->vocab_slots);
    free(t->merges);
    free(t->trie);
    free(t);
}

int32_t dsv_tokenizer_n_vocab(const dsv_tokenizer *t) { return t->n_vocab; }
int32_t dsv_tokenizer_bos(const dsv_tokenizer *t) { return t->bos; }
int32_t dsv_tokenizer_eos(const dsv_tokenizer *t) { return t->eos; }
int dsv_tokenizer_add_bos(const dsv_tokenizer *t) { return t->add_bos; }

/* ---- encoding ------------------------------------------------------------ */

struct sym {
    int32_t id;                 /* -1 once merged into its left neighbour */
    int32_t prev, next;         /* neighbours still alive, -1 at the ends */
};

enum { SMALL_WORD = 64 };

/* State of one dsv_tokenize / dsv_pretokenize call. */
struct enc {
    const dsv_tokenizer *t;
    const char *base;           /* the whole input: piece ends are offsets from it */
    pcre2_match_data *md;
    int32_t *ids;               /* output: token ids, */
    size_t *ends;               /* or where pieces end when want_ends */
    int want_ends;
    size_t cap, n;              /* n counts past cap, to report the size needed */
    int status;
    /* BPE scratch for pieces of up to scratch_cap bytes; grows, never shrinks */
    struct sym *sym;
    uint64_t *heap;             /* [3 * scratch_cap] (rank << 32 | position) */
    size_t scratch_cap;
    char *spell;                /* [2 * spell_cap] a piece in the byte-level alphabet */
    size_t spell_cap;
    struct sym sym_small[SMALL_WORD];
    uint64_t heap_small[3 * SMALL_WORD];
};

static inline void emit(struct enc *e, int32_t id) {
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static int grow_scratch(struct enc *e, size_t n) {
    size_t cap = DSV_MAX(n, 2 * e->scratch_cap);
    struct sym *s = malloc(cap * sizeof *s);
    uint64_t *h = malloc(3 * cap * sizeof *h);
    if (!s || !h) {
        free(s);
        free(h);
        e->status = dsv_error(DSV_ERR_NOMEM, "out of memory encoding a %zu-byte piece", n);
        return e->status;
    }
    if (e->sym != e->sym_small) {
        free(e->sym);
        free(e->heap);
    }
    e->sym = s;
    e->heap = h;
    e->scratch_cap = cap;
    return DSV_OK;
}

static inline void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static inline uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

/* ignore_merges: a piece that is itself in the vocabulary is one token. */
static int32_t whole_word(struct enc *e, const unsigned char *s, size_t n) {
    const dsv_tokenizer *t = e->t;
    if (n > e->spell_cap) {
        char *sp = realloc(e->spell, 2 * n);
        if (!sp) {
            e->status = dsv_error(DSV_ERR_NOMEM, "out of memory");
            return -1;
        }
        e->spell = sp;
        e->spell_cap = n;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(e->spell + k, t->byte_spell[s[i]], t->byte_spell_len[s[i]]);
        k += t->byte_spell_len[s[i]];
    }
    return vocab_find(t, e->spell, k);
}

/* BPE over one piece, as the Rust library's Word::merge_all: repeatedly merge
 * the adjacent pair with the lowest rank, the leftmost one on ties. A min-heap
 * of (rank, left position) holds candidate pairs; an entry is stale when its
 * left symbol has since been merged away or changed, and is then skipped. So a
 * piece of n bytes costs O(n log n), even a megabyte of one letter. */
static void bpe(struct enc *e, const unsigned char *s, size_t n) {
    const dsv_tokenizer *t = e->t;
    if (n == 1) {
        emit(e, t->byte_id[s[0]]);
        return;
    }
    if (t->ignore_merges) {
        int32_t id = whole_word(e, s, n);
        if (id >= 0) emit(e, id);
        if (id >= 0 || e->status) return;
    }
    if (n > e->scratch_cap && grow_scratch(e, n)) return;
    struct sym *sym = e->sym;
    uint64_t *heap = e->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++)
        sym[i] = (struct sym){t->byte_id[s[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    for (size_t i = 0; i + 1 < n; i++) {
        const struct merge_slot *m = merge_get(t, sym[i].id, sym[i + 1].id);
        if (m) heap_push(heap, &hn, (uint64_t)m->rank << 32 | i);
    }
    while (hn) {
        uint64_t top = heap_pop(heap, &hn);
        int32_t pos = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
        struct sym *a = &sym[pos];
        if (a->id < 0 || a->next < 0) continue;
        struct sym *b = &sym[a->next];
        const struct merge_slot *m = merge_get(t, a->id, b->id);
        /* Ranks are unique to a pair, so an equal rank means the same pair. */
        if (!m || m->rank != rank) continue;
        a->id = m->id;
        b->id = -1;
        a->next = b->next;
        if (a->next >= 0) sym[a->next].prev = pos;
        if (a->prev >= 0 && (m = merge_get(t, sym[a->prev].id, a->id)))
            heap_push(heap, &hn, (uint64_t)m->rank << 32 | (uint32_t)a->prev);
        if (a->next >= 0 && (m = merge_get(t, a->id, sym[a->next].id)))
            heap_push(heap, &hn, (uint64_t)m->rank << 32 | (uint32_t)pos);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) emit(e, sym[i].id);
}

/* A finished piece: encode it, or record where it ends. */
static void piece(struct enc *e, const char *s, size_t n) {
    if (e->want_ends) {
        if (e->n < e->cap) e->ends[e->n] = (size_t)(s + n - e->base);
        e->n++;
    } else {
        bpe(e, (const unsigned char *)s, n);
    }
}

/* Applies Split step k (behavior Isolated) to s[0..n), a well-formed UTF-8
 * piece, then the later steps to each part. Each part is matched on its own,
 * so a lookahead such as \s+(?!\S) cannot see past the part's end, as in the
 * libraries, where each split is a separate string. */
static void split(struct enc *e, int k, const char *s, size_t n) {
    if (k == e->t->n_steps) {
        piece(e, s, n);
        return;
    }
    const pcre2_code *re = e->t->steps[k];
    size_t pos = 0, from = 0;
    while (from < n && !e->status) {
        /* The input was validated once; without NO_UTF_CHECK, PCRE2 would
         * recheck the whole subject on every call, which is quadratic. */
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, e->md, e->t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            char msg[256];
            pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
            e->status = dsv_error(DSV_ERR_UNSUPPORTED, "pre-tokenizer regex %d failed: %s", k, msg);
            return;
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            /* An empty match makes no part; search again one character on,
             * as JavaScript's matchAll and Rust's find_iter do. */
            uint32_t cp;
            from = ms + dsv_utf8_decode(s + ms, n - ms, &cp);
            continue;
        }
        if (ms > pos) split(e, k + 1, s + pos, ms - pos);
        split(e, k + 1, s + ms, me - ms);
        pos = from = me;
    }
    if (pos < n && !e->status) split(e, k + 1, s + pos, n - pos);
}

/* Text between added tokens: well-formed runs go through the pre-tokenizer;
 * a byte that begins no well-formed character is a piece by itself, so it
 * becomes its own byte token and never merges with its neighbours. */
static void encode_plain(struct enc *e, const char *s, size_t n) {
    while (n > 0 && !e->status) {
        size_t v = dsv_utf8_valid_prefix(s, n);
        if (v) split(e, 0, s, v);
        if (v == n || e->status) return;
        piece(e, s + v, 1);
        s += v + 1;
        n -= v + 1;
    }
}

/* Runs e (ids or ends chosen by the caller) over text[0..len). */
static int encode(struct enc *e, const char *text, size_t len, size_t cap, size_t *n_out) {
    const dsv_tokenizer *t = e->t;
    if (len >= (size_t)INT32_MAX) return dsv_error(DSV_ERR_ARG, "text of %zu bytes is too long", len);
    e->base = text;
    e->cap = cap;
    e->sym = e->sym_small;
    e->heap = e->heap_small;
    e->scratch_cap = SMALL_WORD;
    e->md = pcre2_match_data_create(t->ovector_pairs, NULL);
    if (!e->md) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    const char *s = text;
    size_t n = len;
    while (n > 0 && !e->status) {
        size_t at = n, mlen = 0;
        int32_t id = added_find(t, (const unsigned char *)s, n, &at, &mlen);
        encode_plain(e, s, at);
        if (id < 0 || e->status) break;
        if (e->want_ends) piece(e, s + at, mlen);
        else emit(e, id);
        s += at + mlen;
        n -= at + mlen;
    }
    pcre2_match_data_free(e->md);
    if (e->sym != e->sym_small) {
        free(e->sym);
        free(e->heap);
    }
    free(e->spell);
    if (e->status) return e->status;
    *n_out = e->n;
    if (e->n > cap) return dsv_error(DSV_ERR_FULL, "%zu pieces do not fit in %zu", e->n, cap);
    return DSV_OK;
}

int dsv_tokenize(const dsv_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap, size_t *n_ids) {
    if (!t || !n_ids || (!text && len) || (!ids && cap)) return dsv_error(DSV_ERR_ARG, "dsv_tokenize: NULL argument");
    struct enc e = {.t = t, .ids = ids};
    return encode(&e, text, len, cap, n_ids);
}

int dsv_pretokenize(const dsv_tokenizer *t, const char *text, size_t len, size_t *ends, size_t cap,
                    size_t *n_pieces) {
    if (!t || !n_pieces || (!text && len) || (!ends && cap))
        return dsv_error(DSV_ERR_ARG, "dsv_pretokenize: NULL argument");
    struct enc e = {.t = t, .ends = ends, .want_ends = 1};
    return encode(&e, text, len, cap, n_pieces);
}

/* ---- lookups ------------------------------------------------------------- */

static int has_token(const dsv_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && (t->flags[id] & TF_PRESENT);
}

const char *dsv_token_piece(const dsv_tokenizer *t, int32_t id, size_t *len) {
    if (!has_token(t, id)) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->piece_off[id + 1] - t->piece_off[id];
    return t->pieces + t->piece_off[id];
}

int32_t dsv_token_id(const dsv_tokenizer *t, const char *str) {
    if (!t || !str || !str[0]) return -1;
    size_t n = strlen(str), len = 0;
    int32_t id = added_at(t, (const unsigned char *)str, n, &len);
    if (id >= 0 && len == n) return id;
    /* Spell the bytes in the byte-level alphabet to find the BPE token. */
    char buf[512];
    if (n > sizeof buf / 2) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)str[i];
        memcpy(buf + k, t->byte_spell[b], t->byte_spell_len[b]);
        k += t->byte_spell_len[b];
    }
    return vocab_find(t, buf, k);
}

int dsv_token_is_special(const dsv_tokenizer *t, int32_t id) {
    return has_token(t, id) && (t->flags[id] & TF_SPECIAL);
}

/* ---- decoding ------------------------------------------------------------ */

/* Appends p[0..n) to out when it fits; *k counts regardless. */
static void put(char *out, size_t cap, size_t *k, const void *p, size_t n) {
    if (n && *k + n <= cap) memcpy(out + *k, p, n);
    *k += n;
}

int dsv_detokenize(const dsv_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char *out, size_t cap,
                   size_t *len) {
    if (!t || !len || (!ids && n) || (!out && cap)) return dsv_error(DSV_ERR_ARG, "dsv_detokenize: NULL argument");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *p = dsv_token_piece(t, ids[i], &l);
        if (!p) return dsv_error(DSV_ERR_ARG, "ids[%zu]: %d is not a token id", i, (int)ids[i]);
        if (skip_special && (t->flags[ids[i]] & TF_SPECIAL)) continue;
        put(out, cap, &k, p, l);
    }
    *len = k;
    if (k > cap) return dsv_error(DSV_ERR_FULL, "%zu bytes of text do not fit in %zu", k, cap);
    return DSV_OK;
}

void dsv_detok_init(dsv_detok *d, const dsv_tokenizer *t, int skip_special) {
    *d = (dsv_detok){.tok = t, .skip_special = skip_special};
}

size_t dsv_detok_bound(const dsv_tokenizer *t) {
    /* Each byte in, the (at most 3) held-back ones included, yields at most 3
     * bytes out: itself, or a whole U+FFFD. */
    return 3 * (t->max_piece + 3);
}

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};   /* U+FFFD */

/* Feeds bytes through the stream's UTF-8 decoder, the WHATWG algorithm: a
 * byte that cannot continue the held-back prefix ends it as one U+FFFD and is
 * then read afresh. */
static void detok_feed(dsv_detok *d, const unsigned char *p, size_t n, char *out, size_t cap, size_t *k) {
    size_t i = 0;
    while (i < n) {
        unsigned char lo, hi;
        if (d->n_pend == 0) {
            size_t v = dsv_utf8_valid_prefix((const char *)p + i, n - i);
            put(out, cap, k, p + i, v);
            i += v;
            if (i == n) break;
            if (dsv_utf8_lead(p[i], &lo, &hi)) d->pend[d->n_pend++] = p[i];
            else put(out, cap, k, replacement, 3);
            i++;
            continue;
        }
        int len = dsv_utf8_lead(d->pend[0], &lo, &hi);
        if (d->n_pend > 1) lo = 0x80, hi = 0xBF;
        if (p[i] < lo || p[i] > hi) {
            put(out, cap, k, replacement, 3);
            d->n_pend = 0;
            continue;
        }
        if (d->n_pend + 1 == len) {
            put(out, cap, k, d->pend, (size_t)d->n_pend);
            put(out, cap, k, p + i, 1);
            d->n_pend = 0;
        } else {
            d->pend[d->n_pend++] = p[i];
        }
        i++;
    }
}

int dsv_detok_push(dsv_detok *d, int32_t id, char *out, size_t cap, size_t *len) {
    if (!d || !len || (!out && cap)) return dsv_error(DSV_ERR_ARG, "dsv_detok_push: NULL argument");
    size_t l;
    const char *p = dsv_token_piece(d->tok, id, &l);
    if (!p) return dsv_error(DSV_ERR_ARG, "%d is not a token id", (int)id);
    size_t k = 0;
    dsv_detok next = *d;
    if (!(d->skip_special && dsv_token_is_special(d->tok, id)))
        detok_feed(&next, (const unsigned char *)p, l, out, cap, &k);
    *len = k;
    if (k > cap) return dsv_error(DSV_ERR_FULL, "%zu bytes of text do not fit in %zu", k, cap);
    *d = next;
    return DSV_OK;
}

int dsv_detok_flush(dsv_detok *d, char *out, size_t cap, size_t *len) {
    if (!d || !len || (!out && cap)) return dsv_error(DSV_ERR_ARG, "dsv_detok_flush: NULL argument");
    size_t k = 0;
    if (d->n_pend) put(out, cap, &k, replacement, 3);
    *len = k;
    if (k > cap) return dsv_error(DSV_ERR_FULL, "%zu bytes of text do not fit in %zu", k, cap);
    d->n_pend = 0;
    return DSV_OK;
}
