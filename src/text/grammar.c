/* grammar.c: token constraints for structured output (see grammar.h).
 *
 * Three parts:
 *  1. the vocabulary index: every token's bytes in a trie (children of a
 *     node contiguous, sorted by byte), and the tokens that are plain inside
 *     a JSON string grouped by character count as cumulative bitsets;
 *  2. the matcher: a JSON Schema compiled to a node tree, and a byte-level
 *     pushdown automaton over it. anyOf, enum and the choice of the next
 *     property are nondeterministic, so the state is a small set of stacks
 *     ("alternatives"), each advanced on every byte, the dead ones dropped;
 *  3. the mask: the walk of the trie from the current state, a state copy
 *     per branching node, cut where a byte is refused. Inside a string the
 *     plain tokens are added as a bitset and only the others are walked.
 * Termination is by construction: whitespace runs, strings and numbers have
 * caps, numbers never leave a range they can no longer satisfy, and once the
 * value (and suffix) is complete only EOS is allowed. */
#include "grammar.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

/* ==== 1. Vocabulary index ================================================= */

#define MAX_PLAIN_CHARS 32 /* plain tokens longer than this are walked */

struct tnode {
    uint32_t child;   /* index of the first child */
    uint32_t tok;     /* index into ids[] of the first token ending here */
    uint16_t n_child;
    uint16_t n_tok;
    uint8_t byte;
};

struct trie {
    struct tnode *node;
    uint32_t n_node, cap_node;
    int32_t *ids; /* tokens, grouped by the node they end at */
};

struct dsv_vocab_index {
    int32_t n_vocab;
    size_t words;          /* bitset words */
    const char **piece;    /* [n_vocab] bytes of each token (the tokenizer's), NULL if none */
    size_t *len;
    struct trie all;       /* every token */
    struct trie special;   /* tokens that are not plain in a string */
    struct trie has_lt;    /* tokens with a '<' (the free-text walk) */
    struct trie raw_special; /* tokens that are not plain in a raw parameter */
    uint32_t *plain_upto;  /* [(MAX_PLAIN_CHARS + 1) * words]: plain tokens of 1..k characters */
    uint32_t *raw_upto;    /* the same for raw parameters */
    uint32_t *no_lt;       /* [words] tokens without '<' */
};

/* The number of characters if p[0..n) is plain content (whole, valid UTF-8
 * characters) of a JSON string (raw = 0: no quote, backslash or control
 * byte) or of a raw DSML string parameter (raw = 1: no '<', no control byte
 * but newline and tab), else -1. */
static int plain_chars(const unsigned char *p, size_t n, int raw) {
    int chars = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (raw ? c == '<' || (c < 0x20 && c != '\n' && c != '\t') : c == '"' || c == '\\' || c < 0x20) return -1;
        size_t k = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!k || i + k > n) return -1;
        for (size_t j = 1; j < k; j++)
            if ((p[i + j] & 0xC0) != 0x80) return -1;
        if ((c == 0xE0 && p[i + 1] < 0xA0) || (c == 0xED && p[i + 1] > 0x9F) || (c == 0xF0 && p[i + 1] < 0x90) ||
            (c == 0xF4 && p[i + 1] > 0x8F))
            return -1;
        i += k;
        chars++;
    }
    return chars;
}

static const dsv_vocab_index *sort_vi; /* for the qsort comparator only */
static int by_piece(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    size_t lx = sort_vi->len[x], ly = sort_vi->len[y];
    int c = memcmp(sort_vi->piece[x], sort_vi->piece[y], lx < ly ? lx : ly);
    if (c) return c;
    return lx < ly ? -1 : lx > ly ? 1 : (x > y) - (x < y);
}

/* Fills node `at` with the tokens ids[lo..hi) (sorted, sharing `depth`
 * bytes), recursively. Returns 0, or -1 when out of memory. */
static int trie_fill(const dsv_vocab_index *vi, struct trie *t, uint32_t at, const int32_t *ids, uint32_t lo,
                     uint32_t hi, size_t depth) {
    uint32_t i = lo;
    t->node[at].tok = lo;
    while (i < hi && vi->len[ids[i]] == depth) i++;
    t->node[at].n_tok = (uint16_t)(i - lo);
    /* Groups by the next byte. */
    uint32_t groups = 0;
    for (uint32_t j = i; j < hi;) {
        unsigned char b = (unsigned char)vi->piece[ids[j]][depth];
        while (j < hi && (unsigned char)vi->piece[ids[j]][depth] == b) j++;
        groups++;
    }
    if (t->n_node + groups > t->cap_node) {
        uint32_t cap = t->cap_node * 2 > t->n_node + groups ? t->cap_node * 2 : t->n_node + groups;
        struct tnode *p = realloc(t->node, (size_t)cap * sizeof *p);
        if (!p) return -1;
        t->node = p;
        t->cap_node = cap;
    }
    uint32_t first = t->n_node;
    t->n_node += groups;
    t->node[at].child = first;
    t->node[at].n_child = (uint16_t)groups;
    uint32_t g = 0;
    for (uint32_t j = i; j < hi; g++) {
        unsigned char b = (unsigned char)vi->piece[ids[j]][depth];
        uint32_t k = j;
        while (k < hi && (unsigned char)vi->piece[ids[k]][depth] == b) k++;
        t->node[first + g] = (struct tnode){.byte = b};
        if (trie_fill(vi, t, first + g, ids, j, k, depth + 1)) return -1;
        j = k;
    }
    return 0;
}

/* A trie of the tokens (with a piece) for which keep(vi, id) holds. */
static int trie_build(dsv_vocab_index *vi, struct trie *t, int (*keep)(const dsv_vocab_index *, int32_t)) {
    int32_t n = 0;
    t->ids = malloc((size_t)vi->n_vocab * sizeof *t->ids);
    if (!t->ids) return -1;
    for (int32_t id = 0; id < vi->n_vocab; id++)
        if (vi->piece[id] && vi->len[id] && keep(vi, id)) t->ids[n++] = id;
    sort_vi = vi;
    qsort(t->ids, (size_t)n, sizeof *t->ids, by_piece);
    t->cap_node = 1024;
    t->node = malloc(t->cap_node * sizeof *t->node);
    if (!t->node) return -1;
    t->n_node = 1;
    t->node[0] = (struct tnode){0};
    return trie_fill(vi, t, 0, t->ids, 0, (uint32_t)n, 0);
}

static int keep_all(const dsv_vocab_index *vi, int32_t id) { (void)vi; (void)id; return 1; }
static int keep_special(const dsv_vocab_index *vi, int32_t id) {
    int c = plain_chars((const unsigned char *)vi->piece[id], vi->len[id], 0);
    return c < 1 || c > MAX_PLAIN_CHARS;
}
static int keep_raw_special(const dsv_vocab_index *vi, int32_t id) {
    int c = plain_chars((const unsigned char *)vi->piece[id], vi->len[id], 1);
    return c < 1 || c > MAX_PLAIN_CHARS;
}
static int keep_lt(const dsv_vocab_index *vi, int32_t id) { return memchr(vi->piece[id], '<', vi->len[id]) != NULL; }

void dsv_vocab_index_free(dsv_vocab_index *vi) {
    if (!vi) return;
    struct trie *ts[4] = {&vi->all, &vi->special, &vi->has_lt, &vi->raw_special};
    for (int i = 0; i < 4; i++) { free(ts[i]->node); free(ts[i]->ids); }
    free(vi->raw_upto);
    free(vi->piece);
    free(vi->len);
    free(vi->plain_upto);
    free(vi->no_lt);
    free(vi);
}

int dsv_vocab_index_build(dsv_vocab_index **out, const dsv_tokenizer *tok) {
    if (!out || !tok) return dsv_error(DSV_ERR_ARG, "dsv_vocab_index_build: NULL argument");
    dsv_vocab_index *vi = calloc(1, sizeof *vi);
    if (!vi) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    vi->n_vocab = dsv_tokenizer_n_vocab(tok);
    vi->words = ((size_t)vi->n_vocab + 31) / 32;
    vi->piece = calloc((size_t)vi->n_vocab, sizeof *vi->piece);
    vi->len = calloc((size_t)vi->n_vocab, sizeof *vi->len);
    vi->plain_upto = calloc((MAX_PLAIN_CHARS + 1) * vi->words, sizeof *vi->plain_upto);
    vi->raw_upto = calloc((MAX_PLAIN_CHARS + 1) * vi->words, sizeof *vi->raw_upto);
    vi->no_lt = calloc(vi->words, sizeof *vi->no_lt);
    int ok = vi->piece && vi->len && vi->plain_upto && vi->raw_upto && vi->no_lt;
    for (int32_t id = 0; ok && id < vi->n_vocab; id++) {
        vi->piece[id] = dsv_token_piece(tok, id, &vi->len[id]);
        if (!vi->piece[id] || !vi->len[id]) continue;
        int c = plain_chars((const unsigned char *)vi->piece[id], vi->len[id], 0);
        for (int k = c; c >= 1 && k <= MAX_PLAIN_CHARS; k++) vi->plain_upto[(size_t)k * vi->words + id / 32] |= 1u << (id % 32);
        c = plain_chars((const unsigned char *)vi->piece[id], vi->len[id], 1);
        for (int k = c; c >= 1 && k <= MAX_PLAIN_CHARS; k++) vi->raw_upto[(size_t)k * vi->words + id / 32] |= 1u << (id % 32);
        if (!memchr(vi->piece[id], '<', vi->len[id])) vi->no_lt[id / 32] |= 1u << (id % 32);
    }
    if (!ok || trie_build(vi, &vi->all, keep_all) || trie_build(vi, &vi->special, keep_special) ||
        trie_build(vi, &vi->has_lt, keep_lt) || trie_build(vi, &vi->raw_special, keep_raw_special)) {
        dsv_vocab_index_free(vi);
        return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory indexing a vocabulary of %d", (int)vi->n_vocab);
    }
    *out = vi;
    return DSV_OK;
}

/* ==== 2. Schema and matcher =============================================== */

#define WS_MAX 16          /* whitespace bytes in a row */
#define STR_CAP 512        /* characters in a string without maxLength */
#define KEY_CAP 64         /* characters in a free-form object key */
#define INT_DIGITS 15      /* integer digits of a number */
#define FRAC_DIGITS 6      /* fraction digits of a number */
#define MAX_DEPTH 24       /* frames in one stack */
#define MAX_ALT 32         /* alternatives at once */
#define ANY_DEPTH 8        /* nesting of free-form values */
#define ANY_MEMBERS 16     /* members of a free-form object */
#define ANY_ITEMS 32       /* items of a free-form array */
#define MAX_BRANCH 16      /* ways an answer may start (tools to choose from) */

enum { N_ANY, N_OBJECT, N_ARRAY, N_STRING, N_INTEGER, N_NUMBER, N_BOOL, N_NULL, N_LITERALS, N_ANYOF };

struct node {
    int kind;
    /* N_OBJECT: properties in order; free when it lists none. */
    int n_props;
    char **key;            /* "\"name\"" as JSON text */
    struct node **prop;
    int *required;
    int free_form;
    /* N_ARRAY */
    struct node *items;    /* NULL: any */
    int min_items, max_items; /* max -1: none */
    /* N_STRING */
    int min_len, max_len;
    /* N_INTEGER, N_NUMBER */
    int has_min, has_max;
    double min, max;
    /* N_LITERALS: JSON texts; N_ANYOF: alternatives */
    char **lit;
    int n_lit;
    struct node **alt;
    int n_alt;
    /* N_OBJECT as DSML parameters: each property's opening tag, and whether
     * its value is written raw (string="true"). */
    char **dsml_open;
    int *raw;
};

static void node_free(struct node *n) {
    if (!n) return;
    for (int i = 0; i < n->n_props; i++) { free(n->key[i]); node_free(n->prop[i]); }
    free(n->key);
    free(n->prop);
    free(n->required);
    node_free(n->items);
    for (int i = 0; i < n->n_lit; i++) free(n->lit[i]);
    free(n->lit);
    for (int i = 0; i < n->n_alt; i++) node_free(n->alt[i]);
    free(n->alt);
    for (int i = 0; n->dsml_open && i < n->n_props; i++) free(n->dsml_open[i]);
    free(n->dsml_open);
    free(n->raw);
    free(n);
}

static const char *const annotations[] = {"title", "description", "default", "examples", "$schema", "strict",
                                          "$id", "$comment", NULL};
static const char *const known[] = {"type", "properties", "required", "additionalProperties", "enum", "const",
                                    "items", "minItems", "maxItems", "anyOf", "minLength", "maxLength",
                                    "minimum", "maximum", NULL};

static int in_list(const char *s, const char *const *l) {
    for (; *l; l++)
        if (!strcmp(s, *l)) return 1;
    return 0;
}

/* A count keyword: a whole number in [0, 1e6]. */
static int get_count(const cJSON *v, const char *path, const char *key, int *out) {
    if (!v) return DSV_OK;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 1e6) || v->valuedouble != floor(v->valuedouble))
        return dsv_error(DSV_ERR_ARG, "%s.%s: expected a whole number in [0, 1000000]", path, key);
    *out = (int)v->valuedouble;
    return DSV_OK;
}

static int compile(const cJSON *s, const char *path, int depth, struct node **out);

static int compile_typed(const cJSON *s, const char *type, const char *path, int depth, struct node *n) {
    char sub[512];
    int rc;
    if (!strcmp(type, "object")) {
        n->kind = N_OBJECT;
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
        const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        if (props && !cJSON_IsObject(props)) return dsv_error(DSV_ERR_ARG, "%s.properties: expected an object", path);
        if (req && !cJSON_IsArray(req)) return dsv_error(DSV_ERR_ARG, "%s.required: expected an array", path);
        if (addl && !cJSON_IsBool(addl))
            return dsv_error(DSV_ERR_UNSUPPORTED, "%s.additionalProperties: only true or false is supported", path);
        int np = cJSON_GetArraySize(props);
        n->free_form = np == 0;
        n->key = calloc((size_t)np + 1, sizeof *n->key);
        n->prop = calloc((size_t)np + 1, sizeof *n->prop);
        n->required = calloc((size_t)np + 1, sizeof *n->required);
        if (!n->key || !n->prop || !n->required) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        for (const cJSON *p = props ? props->child : NULL; p; p = p->next) {
            int i = n->n_props++;
            cJSON *k = cJSON_CreateString(p->string);
            n->key[i] = k ? cJSON_PrintUnformatted(k) : NULL;
            cJSON_Delete(k);
            if (!n->key[i]) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
            snprintf(sub, sizeof sub, "%s.properties.%s", path, p->string);
            if ((rc = compile(p, sub, depth + 1, &n->prop[i]))) return rc;
        }
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next) {
            if (!cJSON_IsString(r)) return dsv_error(DSV_ERR_ARG, "%s.required: expected names", path);
            int i = 0;
            while (i < n->n_props && strcmp(props ? cJSON_GetArrayItem(props, i)->string : "", r->valuestring)) i++;
            if (i == n->n_props)
                return dsv_error(DSV_ERR_UNSUPPORTED, "%s.required: \"%s\" is not in properties", path, r->valuestring);
            n->required[i] = 1;
        }
        return DSV_OK;
    }
    if (!strcmp(type, "array")) {
        n->kind = N_ARRAY;
        n->max_items = -1;
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        if (items) {
            snprintf(sub, sizeof sub, "%s.items", path);
            if ((rc = compile(items, sub, depth + 1, &n->items))) return rc;
        }
        if ((rc = get_count(cJSON_GetObjectItemCaseSensitive(s, "minItems"), path, "minItems", &n->min_items)) ||
            (rc = get_count(cJSON_GetObjectItemCaseSensitive(s, "maxItems"), path, "maxItems", &n->max_items)))
            return rc;
        if (n->max_items >= 0 && n->max_items < n->min_items)
            return dsv_error(DSV_ERR_ARG, "%s: maxItems < minItems", path);
        return DSV_OK;
    }
    if (!strcmp(type, "string")) {
        n->kind = N_STRING;
        n->max_len = STR_CAP;
        if ((rc = get_count(cJSON_GetObjectItemCaseSensitive(s, "minLength"), path, "minLength", &n->min_len)) ||
            (rc = get_count(cJSON_GetObjectItemCaseSensitive(s, "maxLength"), path, "maxLength", &n->max_len)))
            return rc;
        if (n->max_len < n->min_len) return dsv_error(DSV_ERR_ARG, "%s: maxLength < minLength", path);
        return DSV_OK;
    }
    if (!strcmp(type, "integer") || !strcmp(type, "number")) {
        n->kind = !strcmp(type, "integer") ? N_INTEGER : N_NUMBER;
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minimum");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maximum");
        if ((mn && !cJSON_IsNumber(mn)) || (mx && !cJSON_IsNumber(mx)))
            return dsv_error(DSV_ERR_ARG, "%s: minimum and maximum must be numbers", path);
        n->has_min = mn != NULL;
        n->has_max = mx != NULL;
        n->min = mn ? mn->valuedouble : 0;
        n->max = mx ? mx->valuedouble : 0;
        if (n->has_min && n->has_max && n->max < n->min) return dsv_error(DSV_ERR_ARG, "%s: maximum < minimum", path);
        if ((n->has_min && fabs(n->min) > 1e15) || (n->has_max && fabs(n->max) > 1e15))
            return dsv_error(DSV_ERR_UNSUPPORTED, "%s: minimum and maximum must be within 1e15", path);
        return DSV_OK;
    }
    if (!strcmp(type, "boolean")) { n->kind = N_BOOL; return DSV_OK; }
    if (!strcmp(type, "null")) { n->kind = N_NULL; return DSV_OK; }
    return dsv_error(DSV_ERR_UNSUPPORTED, "%s.type: \"%s\" is not supported", path, type);
}

static int compile(const cJSON *s, const char *path, int depth, struct node **out) {
    *out = NULL;
    if (depth > 32) return dsv_error(DSV_ERR_UNSUPPORTED, "%s: nested deeper than 32", path);
    if (cJSON_IsBool(s) && cJSON_IsTrue(s)) s = NULL; /* true: anything */
    else if (!cJSON_IsObject(s)) return dsv_error(DSV_ERR_ARG, "%s: a schema must be an object", path);
    for (const cJSON *k = s ? s->child : NULL; k; k = k->next)
        if (!in_list(k->string, known) && !in_list(k->string, annotations))
            return dsv_error(DSV_ERR_UNSUPPORTED, "%s: keyword \"%s\" is not supported", path, k->string);
    struct node *n = calloc(1, sizeof *n);
    if (!n) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    *out = n;
    n->kind = N_ANY;
    if (!s) return DSV_OK;
    const cJSON *cnst = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    char sub[512];
    if (cnst || en) {
        if (en && (!cJSON_IsArray(en) || !en->child)) return dsv_error(DSV_ERR_ARG, "%s.enum: expected a non-empty array", path);
        int k = cnst ? 1 : cJSON_GetArraySize(en);
        if (k > MAX_ALT) return dsv_error(DSV_ERR_UNSUPPORTED, "%s.enum: more than %d values", path, MAX_ALT);
        n->kind = N_LITERALS;
        n->lit = calloc((size_t)k, sizeof *n->lit);
        if (!n->lit) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        for (const cJSON *v = cnst ? cnst : en->child; n->n_lit < k; v = v->next) {
            if (!(n->lit[n->n_lit++] = cJSON_PrintUnformatted(v))) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        }
        return DSV_OK;
    }
    if (any) {
        if (!cJSON_IsArray(any) || !any->child) return dsv_error(DSV_ERR_ARG, "%s.anyOf: expected a non-empty array", path);
        int k = cJSON_GetArraySize(any);
        if (k > 8) return dsv_error(DSV_ERR_UNSUPPORTED, "%s.anyOf: more than 8 alternatives", path);
        n->kind = N_ANYOF;
        n->alt = calloc((size_t)k, sizeof *n->alt);
        if (!n->alt) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        int i = 0;
        for (const cJSON *a = any->child; a; a = a->next, i++) {
            snprintf(sub, sizeof sub, "%s.anyOf[%d]", path, i);
            int rc = compile(a, sub, depth + 1, &n->alt[n->n_alt++]);
            if (rc) return rc;
        }
        return DSV_OK;
    }
    if (cJSON_IsArray(type)) {
        /* "type": [a, b] is anyOf of the typed forms. */
        int k = cJSON_GetArraySize(type);
        if (!k || k > 8) return dsv_error(DSV_ERR_ARG, "%s.type: expected 1 to 8 types", path);
        n->kind = N_ANYOF;
        n->alt = calloc((size_t)k, sizeof *n->alt);
        if (!n->alt) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        for (const cJSON *t = type->child; t; t = t->next) {
            if (!cJSON_IsString(t)) return dsv_error(DSV_ERR_ARG, "%s.type: expected strings", path);
            struct node *a = calloc(1, sizeof *a);
            if (!a) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
            n->alt[n->n_alt++] = a;
            int rc = compile_typed(s, t->valuestring, path, depth, a);
            if (rc) return rc;
        }
        return DSV_OK;
    }
    if (type && !cJSON_IsString(type)) return dsv_error(DSV_ERR_ARG, "%s.type: expected a string", path);
    if (!type) {
        /* Untyped: infer from the keywords, else anything. */
        if (cJSON_GetObjectItemCaseSensitive(s, "properties")) return compile_typed(s, "object", path, depth, n);
        if (cJSON_GetObjectItemCaseSensitive(s, "items")) return compile_typed(s, "array", path, depth, n);
        return DSV_OK;
    }
    return compile_typed(s, type->valuestring, path, depth, n);
}

int dsv_grammar_check_schema(const cJSON *schema) {
    struct node *n = NULL;
    int rc = compile(schema, "schema", 0, &n);
    node_free(n);
    return rc;
}

/* --- The automaton. */

enum { F_VALUE, F_OBJ, F_ARR, F_STR, F_NUM, F_LIT, F_UNTIL, F_DSML, F_RAW };

#define PARAM_CLOSE "</｜DSML｜parameter>"
/* F_OBJ phases */
enum { O_FIRST, O_KEY, O_COLON, O_VALUE, O_AFTER, O_NEXT };
/* F_ARR phases */
enum { A_FIRST, A_AFTER, A_NEXT };
/* F_NUM phases */
enum { U_SIGN, U_ZERO, U_INT, U_DOT, U_FRAC };

struct frame {
    const struct node *n; /* F_VALUE, F_OBJ, F_ARR, F_NUM, F_STR: the schema node (NULL: any) */
    const char *lit;      /* F_LIT, F_UNTIL: the text */
    uint8_t kind, phase, ws, flag; /* flag: F_NUM negative; F_STR: a key; F_OBJ/F_ARR: free-form depth */
    int32_t i;            /* F_OBJ: property; F_ARR: items; F_STR: characters; F_LIT/F_UNTIL: position */
    int32_t j;            /* F_STR: escape state (0, 1 after '\\', 2..5 hex digits); F_NUM: int digits */
    int32_t k;            /* F_STR: UTF-8 continuation bytes due; F_NUM: fraction digits */
    uint8_t lo, hi;       /* F_STR: range of the next continuation byte */
    double m;             /* F_NUM: magnitude so far */
};

struct stack {
    int depth;
    struct frame f[MAX_DEPTH];
};

struct set {
    int n;
    struct stack *s; /* [MAX_ALT] */
};

static const struct node any_node = {.kind = N_ANY};

/* Pushes a frame; 0 when the stack is full (that alternative dies). */
static int push(struct stack *s, struct frame f) {
    if (s->depth == MAX_DEPTH) return 0;
    s->f[s->depth++] = f;
    return 1;
}

static int is_ws(int c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

static int overlap(int neg, double a, double b, double lo, double hi) {
    double x = neg ? -b : a, y = neg ? -a : b;
    return x <= hi && y >= lo;
}

/* Whether some number reachable from the magnitude m (with `digits`
 * integer digits and `frac` fraction digits, in phase ph) lies in
 * [minimum, maximum]: a digit that leaves no such number is refused, so a
 * number can always be finished in range. */
static int num_feasible(const struct node *n, int neg, double m, int digits, int frac, int ph) {
    if (!n || (!n->has_min && !n->has_max)) return 1;
    double lo = n->has_min ? n->min : -INFINITY, hi = n->has_max ? n->max : INFINITY;
    if (ph == U_SIGN) return lo <= 0;
    if (ph == U_FRAC || ph == U_DOT)
        return overlap(neg, m, frac >= FRAC_DIGITS ? m : m + pow(10.0, -frac), lo, hi);
    int integer = n->kind == N_INTEGER;
    for (int k = 0; digits + k <= INT_DIGITS; k++) {
        if (ph == U_ZERO && k) break;
        double p = pow(10.0, k), a = m * p, b = integer ? a + p - 1 : (m + 1) * p;
        if (overlap(neg, a, b, lo, hi)) return 1;
    }
    return 0;
}

static int num_can_end(const struct frame *f) {
    if (f->phase == U_SIGN || f->phase == U_DOT) return 0;
    double v = f->flag ? -f->m : f->m;
    const struct node *n = f->n;
    if (n && n->has_min && v < n->min) return 0;
    if (n && n->has_max && v > n->max) return 0;
    return 1;
}

static int step_set_one(struct set *out, struct stack *s, int c);
/* Adds a copy of s to out. */
static struct stack *fork_into(struct set *out, const struct stack *s) {
    if (out->n == MAX_ALT) return NULL;
    struct stack *d = &out->s[out->n++];
    d->depth = s->depth;
    memcpy(d->f, s->f, (size_t)s->depth * sizeof *s->f);
    return d;
}

/* Starts a value of node n (NULL: any) with its first byte c on top of the
 * stack s (left unchanged); every way it can start is added to out. */
static void start_value(struct set *out, const struct stack *s, const struct node *n, int c, int any_depth) {
    if (!n) n = &any_node;
    struct frame f = {.n = n};
    switch (n->kind) {
    case N_ANYOF:
        for (int i = 0; i < n->n_alt; i++) start_value(out, s, n->alt[i], c, any_depth);
        return;
    case N_LITERALS:
        for (int i = 0; i < n->n_lit; i++) {
            if ((unsigned char)n->lit[i][0] != c) continue;
            struct stack *d = fork_into(out, s);
            if (!d) return;
            if (n->lit[i][1] && !push(d, (struct frame){.kind = F_LIT, .lit = n->lit[i], .i = 1})) out->n--;
        }
        return;
    case N_BOOL:
    case N_NULL: {
        static const char *const words[] = {"true", "false", "null"};
        for (int i = n->kind == N_NULL ? 2 : 0; i < (n->kind == N_NULL ? 3 : 2); i++) {
            if (words[i][0] != c) continue;
            struct stack *d = fork_into(out, s);
            if (d && !push(d, (struct frame){.kind = F_LIT, .lit = words[i], .i = 1})) out->n--;
        }
        return;
    }
    case N_STRING:
        if (c != '"') return;
        f.kind = F_STR;
        break;
    case N_OBJECT:
        if (c != '{') return;
        f.kind = F_OBJ;
        f.phase = O_FIRST;
        f.flag = (uint8_t)(any_depth + 1);
        break;
    case N_ARRAY:
        if (c != '[') return;
        f.kind = F_ARR;
        f.phase = A_FIRST;
        f.flag = (uint8_t)(any_depth + 1);
        break;
    case N_INTEGER:
    case N_NUMBER:
        if (c == '-') {
            f.flag = 1;
            f.phase = U_SIGN;
        } else if (c >= '0' && c <= '9') {
            f.phase = c == '0' ? U_ZERO : U_INT;
            f.m = c - '0';
            f.j = 1;
        } else {
            return;
        }
        f.kind = F_NUM;
        if (!num_feasible(n, f.flag, f.m, f.j, 0, f.phase)) return;
        break;
    default: { /* N_ANY: by the first byte */
        static const struct node obj = {.kind = N_OBJECT, .free_form = 1}, arr = {.kind = N_ARRAY, .max_items = ANY_ITEMS},
                                 str = {.kind = N_STRING, .max_len = STR_CAP}, num = {.kind = N_NUMBER},
                                 boo = {.kind = N_BOOL}, nul = {.kind = N_NULL};
        const struct node *t = c == '{' ? &obj : c == '[' ? &arr : c == '"' ? &str
                             : c == '-' || (c >= '0' && c <= '9') ? &num : c == 't' || c == 'f' ? &boo
                             : c == 'n' ? &nul : NULL;
        if (!t || ((c == '{' || c == '[') && any_depth >= ANY_DEPTH)) return;
        start_value(out, s, t, c, any_depth);
        return;
    }
    }
    struct stack *d = fork_into(out, s);
    if (d && !push(d, f)) out->n--;
}

/* The free-form depth of the frame below the top, for nested any-values. */
static int any_depth_of(const struct frame *f) { return f->kind == F_OBJ || f->kind == F_ARR ? f->flag : 0; }

/* Advances stack s (scratch, may be modified) by byte c; results to out.
 * Returns 1 if any result was produced. */
static int step_set_one(struct set *out, struct stack *s, int c) {
    int before = out->n;
    if (!s->depth) return 0; /* complete: nothing more */
    struct frame *t = &s->f[s->depth - 1];
    switch (t->kind) {
    case F_LIT:
        if ((unsigned char)t->lit[t->i] != c) return 0;
        if (!t->lit[++t->i]) s->depth--;
        fork_into(out, s);
        break;
    case F_UNTIL: {
        /* Free text up to and including the marker: the longest suffix of
         * what was read that is a prefix of the marker. */
        size_t len = strlen(t->lit), pos = (size_t)t->i;
        char buf[64];
        if (pos + 1 > sizeof buf) return 0;
        memcpy(buf, t->lit, pos);
        buf[pos] = (char)c;
        size_t k = pos + 1;
        while (k && memcmp(buf + pos + 1 - k, t->lit, k)) k--;
        t->i = (int32_t)k;
        if (k == len) s->depth--;
        fork_into(out, s);
        break;
    }
    case F_STR: {
        int max = t->flag ? KEY_CAP : t->n ? t->n->max_len : STR_CAP, min = t->flag || !t->n ? 0 : t->n->min_len;
        if (t->k) {
            if (c < t->lo || c > t->hi) return 0;
            t->k--;
            t->lo = 0x80;
            t->hi = 0xBF;
        } else if (t->j == 1) {
            if (c == 'u') t->j = 2;
            else if (strchr("\"\\/bfnrt", c) && c) t->j = 0;
            else return 0;
        } else if (t->j >= 2) {
            if (!isxdigit(c)) return 0;
            t->j = t->j == 5 ? 0 : t->j + 1;
        } else if (c == '"') {
            if (t->i < min) return 0;
            s->depth--;
            if (t->flag && s->depth) s->f[s->depth - 1].phase = O_COLON; /* a free-form key */
        } else if (c == '\\') {
            if (t->i >= max) return 0;
            t->i++;
            t->j = 1;
        } else if (c < 0x20) {
            return 0;
        } else {
            if (t->i >= max) return 0;
            if (c >= 0x80) {
                int k = c >= 0xC2 && c < 0xE0 ? 1 : c >= 0xE0 && c < 0xF0 ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : 0;
                if (!k) return 0;
                t->k = k;
                t->lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
                t->hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
            }
            t->i++;
        }
        fork_into(out, s);
        break;
    }
    case F_NUM: {
        int integer = t->n && t->n->kind == N_INTEGER;
        if (c >= '0' && c <= '9') {
            if (t->phase == U_ZERO) return 0;
            if (t->phase == U_SIGN) {
                t->phase = c == '0' ? U_ZERO : U_INT;
                t->m = c - '0';
                t->j = 1;
            } else if (t->phase == U_INT) {
                if (t->j >= INT_DIGITS) return 0;
                t->m = t->m * 10 + (c - '0');
                t->j++;
            } else {
                if (t->k >= FRAC_DIGITS) return 0;
                t->k++;
                t->m += (c - '0') * pow(10.0, -t->k);
                t->phase = U_FRAC;
            }
            if (!num_feasible(t->n, t->flag, t->m, t->j, t->k, t->phase)) return 0;
            fork_into(out, s);
            break;
        }
        if (c == '.' && !integer && (t->phase == U_INT || t->phase == U_ZERO)) {
            t->phase = U_DOT;
            if (!num_feasible(t->n, t->flag, t->m, t->j, 0, U_DOT)) return 0;
            fork_into(out, s);
            break;
        }
        /* Any other byte ends the number, then goes to the frame below. */
        if (!num_can_end(t)) return 0;
        s->depth--;
        return step_set_one(out, s, c);
    }
    case F_RAW: {
        /* A string parameter written raw: any text but '<' (which starts
         * the closing tag), whole UTF-8 characters, counted. */
        int max = t->n ? t->n->max_len : STR_CAP, min = t->n ? t->n->min_len : 0;
        if (t->k) {
            if (c < t->lo || c > t->hi) return 0;
            t->k--;
            t->lo = 0x80;
            t->hi = 0xBF;
        } else if (c == '<') {
            if (t->i < min) return 0;
            s->depth--;
            return step_set_one(out, s, c);
        } else if ((c < 0x20 && c != '\n' && c != '\t') || t->i >= max) {
            return 0;
        } else {
            if (c >= 0x80) {
                int k = c >= 0xC2 && c < 0xE0 ? 1 : c >= 0xE0 && c < 0xF0 ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : 0;
                if (!k) return 0;
                t->k = k;
                t->lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
                t->hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
            }
            t->i++;
        }
        fork_into(out, s);
        break;
    }
    case F_DSML: {
        /* The next parameter (none required skipped), or the end. */
        const struct node *n = t->n;
        int first = !t->flag, from = t->i;
        for (int p = from; p < n->n_props; p++) {
            struct stack d;
            d.depth = s->depth;
            memcpy(d.f, s->f, (size_t)s->depth * sizeof *s->f);
            d.f[d.depth - 1].i = p + 1;
            d.f[d.depth - 1].flag = 1;
            int ok = push(&d, (struct frame){.kind = F_LIT, .lit = PARAM_CLOSE}) &&
                     push(&d, n->raw[p] ? (struct frame){.kind = F_RAW, .n = n->prop[p]}
                                        : (struct frame){.kind = F_VALUE, .n = n->prop[p]}) &&
                     push(&d, (struct frame){.kind = F_LIT, .lit = n->dsml_open[p]}) &&
                     (first || push(&d, (struct frame){.kind = F_LIT, .lit = "\n"}));
            if (ok) step_set_one(out, &d, c);
            if (n->required[p]) return out->n > before;
        }
        s->depth--;
        return step_set_one(out, s, c) || out->n > before;
    }
    case F_VALUE: {
        int ad = s->depth > 1 ? any_depth_of(&s->f[s->depth - 2]) : 0;
        const struct node *n = t->n;
        s->depth--;
        start_value(out, s, n, c, ad);
        break;
    }
    case F_OBJ: {
        const struct node *n = t->n;
        int free_form = !n || n->free_form;
        if (is_ws(c) && t->phase != O_KEY) {
            if (t->ws >= WS_MAX) return 0;
            t->ws++;
            fork_into(out, s);
            break;
        }
        t->ws = 0;
        switch (t->phase) {
        case O_FIRST:
        case O_NEXT:
            if (c == '}' && t->phase == O_FIRST) {
                /* Allowed when nothing is required from here on. */
                for (int p = t->i; !free_form && p < n->n_props; p++)
                    if (n->required[p]) return 0;
                s->depth--;
                fork_into(out, s);
                break;
            }
            if (c != '"') return 0;
            if (free_form) {
                t->phase = O_KEY;
                if (push(s, (struct frame){.kind = F_STR, .flag = 1})) fork_into(out, s);
                break;
            }
            /* Each property that may come next: no required one skipped. */
            for (int p = t->i; p < n->n_props; p++) {
                struct stack *d = fork_into(out, s);
                if (!d) break;
                struct frame *o = &d->f[d->depth - 1];
                o->phase = O_COLON;
                o->i = p;
                if (!push(d, (struct frame){.kind = F_LIT, .lit = n->key[p], .i = 1})) out->n--;
                if (n->required[p]) break;
            }
            break;
        case O_COLON:
            if (c != ':') return 0;
            t->phase = O_VALUE;
            fork_into(out, s);
            break;
        case O_VALUE: {
            /* The value's first byte (whitespace before it is ours). */
            t->phase = O_AFTER;
            const struct node *v = free_form ? NULL : n->prop[t->i];
            start_value(out, s, v, c, t->flag);
            break;
        }
        case O_AFTER:
            if (c == ',') {
                t->i++;
                if (free_form ? t->i >= ANY_MEMBERS : t->i >= n->n_props) return 0;
                t->phase = O_NEXT;
                fork_into(out, s);
            } else if (c == '}') {
                for (int p = t->i + 1; !free_form && p < n->n_props; p++)
                    if (n->required[p]) return 0;
                s->depth--;
                fork_into(out, s);
            }
            break;
        }
        break;
    }
    case F_ARR: {
        const struct node *n = t->n;
        int min = n ? n->min_items : 0, max = n ? n->max_items : -1;
        if (is_ws(c)) {
            if (t->ws >= WS_MAX) return 0;
            t->ws++;
            fork_into(out, s);
            break;
        }
        t->ws = 0;
        if (c == ']' && (t->phase == A_FIRST || t->phase == A_AFTER)) {
            if (t->i < min) return 0;
            s->depth--;
            fork_into(out, s);
            break;
        }
        if (t->phase == A_AFTER) {
            if (c != ',' || (max >= 0 && t->i >= max)) return 0;
            t->phase = A_NEXT;
            fork_into(out, s);
            break;
        }
        if (max >= 0 && t->i >= max) return 0;
        t->phase = A_AFTER;
        t->i++;
        start_value(out, s, n ? n->items : NULL, c, t->flag);
        break;
    }
    }
    return out->n > before;
}

/* ==== 3. The constraint =================================================== */

enum { G_FORCED, G_JSON };

struct dsv_grammar {
    int type;
    dsv_token_constraint c;
    int32_t eos;
    /* G_FORCED */
    int32_t *ids;
    int n_ids, pos;
    /* G_JSON */
    const dsv_vocab_index *vi;
    struct branch { struct node *root; char *prefix, *suffix; } br[MAX_BRANCH];
    int n_br;
    char *until;
    struct set cur, tmp;    /* the state; scratch for the next one */
    struct stack **levels;  /* the walk's scratch: a set per trie depth, on demand */
    int n_levels;
    int done_eos;           /* EOS was accepted */
};

const dsv_token_constraint *dsv_grammar_constraint(dsv_grammar *g) { return &g->c; }

void dsv_grammar_free(dsv_grammar *g) {
    if (!g) return;
    free(g->ids);
    for (int i = 0; i < g->n_br; i++) { node_free(g->br[i].root); free(g->br[i].prefix); free(g->br[i].suffix); }
    free(g->until);
    free(g->cur.s);
    free(g->tmp.s);
    for (int i = 0; i < g->n_levels; i++) free(g->levels[i]);
    free(g->levels);
    free(g);
}

static void set_bit(uint32_t *m, int32_t id) { m[id / 32] |= 1u << (id % 32); }

static int forced_allowed(void *user, uint32_t *allowed) {
    dsv_grammar *g = user;
    set_bit(allowed, g->pos < g->n_ids ? g->ids[g->pos] : g->eos);
    return DSV_OK;
}

static int forced_accept(void *user, int32_t id) {
    dsv_grammar *g = user;
    int32_t want = g->pos < g->n_ids ? g->ids[g->pos] : g->eos;
    if (id != want) return dsv_error(DSV_ERR_ARG, "grammar: token %d where %d was forced", (int)id, (int)want);
    if (g->pos < g->n_ids) g->pos++;
    else g->done_eos = 1;
    return DSV_OK;
}

int dsv_grammar_forced(dsv_grammar **out, const int32_t *ids, int n, int32_t eos) {
    if (!out || n < 0 || (n && !ids) || eos < 0) return dsv_error(DSV_ERR_ARG, "dsv_grammar_forced: bad argument");
    dsv_grammar *g = calloc(1, sizeof *g);
    if (!g || !(g->ids = malloc(((size_t)n + 1) * sizeof *ids))) {
        free(g);
        return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    }
    if (n) memcpy(g->ids, ids, (size_t)n * sizeof *ids);
    g->type = G_FORCED;
    g->n_ids = n;
    g->eos = eos;
    g->c = (dsv_token_constraint){forced_allowed, forced_accept, g};
    *out = g;
    return DSV_OK;
}

/* Whether an alternative is complete (only EOS may follow). */
static int can_end(const struct stack *s) {
    if (!s->depth) return 1;
    return s->depth == 1 && s->f[0].kind == F_NUM && num_can_end(&s->f[0]);
}

int dsv_grammar_done(const dsv_grammar *g) {
    if (g->type == G_FORCED) return g->pos == g->n_ids;
    for (int i = 0; i < g->cur.n; i++)
        if (can_end(&g->cur.s[i])) return 1;
    return 0;
}

/* Advances the set in by the bytes p[0..n) (n >= 1) into out, ping-ponging
 * with scratch (both distinct from in) so that the last byte lands in out.
 * Returns out->n: 0 when no alternative survives. */
static int advance(const struct set *in, const char *p, size_t n, struct set *out, struct set *scratch) {
    struct set *bufs[2] = {out, scratch};
    const struct set *a = in;
    for (size_t b = 0; b < n; b++) {
        struct set *dst = bufs[(n - 1 - b) % 2];
        dst->n = 0;
        for (int i = 0; i < a->n; i++) {
            struct stack tmp;
            tmp.depth = a->s[i].depth;
            memcpy(tmp.f, a->s[i].f, (size_t)tmp.depth * sizeof *tmp.f);
            step_set_one(dst, &tmp, (unsigned char)p[b]);
        }
        if (!dst->n) { out->n = 0; return 0; }
        a = dst;
    }
    return out->n;
}

/* Level d of the walk's scratch (allocated once, never moved). */
static struct stack *level(dsv_grammar *g, int d) {
    if (d >= g->n_levels) {
        int nl = d + 16;
        struct stack **p = realloc(g->levels, (size_t)nl * sizeof *p);
        if (!p) return NULL;
        for (int i = g->n_levels; i < nl; i++) p[i] = NULL;
        g->levels = p;
        g->n_levels = nl;
    }
    if (!g->levels[d]) g->levels[d] = malloc(MAX_ALT * sizeof **g->levels);
    return g->levels[d];
}

/* The walk: from the n states of level d (at trie node `node`), each
 * child's byte gives level d + 1; where a state survives, the tokens ending
 * at that child are allowed and its children are walked. */
static int walk(dsv_grammar *g, const struct trie *t, uint32_t node, int d, int n, uint32_t *allowed) {
    struct stack *from = level(g, d), *next = level(g, d + 1);
    if (!from || !next) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    const struct tnode *nd = &t->node[node];
    for (uint32_t c = 0; c < nd->n_child; c++) {
        const struct tnode *ch = &t->node[nd->child + c];
        struct set to = {0, next};
        for (int i = 0; i < n; i++) {
            struct stack tmp;
            tmp.depth = from[i].depth;
            memcpy(tmp.f, from[i].f, (size_t)tmp.depth * sizeof *tmp.f);
            step_set_one(&to, &tmp, ch->byte);
        }
        if (!to.n) continue;
        for (uint32_t k = 0; k < ch->n_tok; k++) set_bit(allowed, t->ids[ch->tok + k]);
        if (ch->n_child) {
            int rc = walk(g, t, nd->child + c, d + 1, to.n, allowed);
            if (rc) return rc;
        }
    }
    return DSV_OK;
}

static int json_allowed(void *user, uint32_t *allowed) {
    dsv_grammar *g = user;
    const dsv_vocab_index *vi = g->vi;
    if (dsv_grammar_done(g)) set_bit(allowed, g->eos);
    const struct trie *t = &vi->all;
    if (g->cur.n == 1 && g->cur.s[0].depth) {
        const struct frame *f = &g->cur.s[0].f[g->cur.s[0].depth - 1];
        if ((f->kind == F_STR && !f->k && !f->j) || (f->kind == F_RAW && !f->k)) {
            /* Inside a string: plain tokens by the characters left. */
            int raw = f->kind == F_RAW;
            int max = !raw && f->flag ? KEY_CAP : f->n ? f->n->max_len : STR_CAP;
            int left = max - f->i;
            if (left > MAX_PLAIN_CHARS) left = MAX_PLAIN_CHARS;
            if (left > 0) {
                const uint32_t *b = (raw ? vi->raw_upto : vi->plain_upto) + (size_t)left * vi->words;
                for (size_t w = 0; w < vi->words; w++) allowed[w] |= b[w];
            }
            t = raw ? &vi->raw_special : &vi->special;
        } else if (f->kind == F_UNTIL && f->i == 0 && f->lit[0] == '<') {
            for (size_t w = 0; w < vi->words; w++) allowed[w] |= vi->no_lt[w];
            t = &vi->has_lt;
        }
    }
    /* Level 0 of the walk is the current state. */
    struct stack *l0 = level(g, 0);
    if (!l0) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    for (int i = 0; i < g->cur.n; i++) {
        l0[i].depth = g->cur.s[i].depth;
        memcpy(l0[i].f, g->cur.s[i].f, (size_t)g->cur.s[i].depth * sizeof *g->cur.s[i].f);
    }
    return walk(g, t, 0, 0, g->cur.n, allowed);
}

static int json_accept(void *user, int32_t id) {
    dsv_grammar *g = user;
    if (id == g->eos) {
        if (!dsv_grammar_done(g)) return dsv_error(DSV_ERR_ARG, "grammar: end of text before the value is complete");
        g->done_eos = 1;
        return DSV_OK;
    }
    const dsv_vocab_index *vi = g->vi;
    if (id < 0 || id >= vi->n_vocab || !vi->piece[id])
        return dsv_error(DSV_ERR_ARG, "grammar: token %d has no text", (int)id);
    struct set out = {0, g->tmp.s};
    struct set scratch = {0, level(g, 0)};
    if (!scratch.s) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    if (!advance(&g->cur, vi->piece[id], vi->len[id], &out, &scratch))
        return dsv_error(DSV_ERR_ARG, "grammar: token %d does not fit", (int)id);
    struct stack *tmp = g->cur.s;
    g->cur.s = out.s;
    g->cur.n = out.n;
    g->tmp.s = tmp;
    return DSV_OK;
}

int dsv_grammar_allowed_slow(dsv_grammar *g, uint32_t *allowed) {
    if (g->type != G_JSON) return g->c.allowed(g, allowed);
    if (dsv_grammar_done(g)) set_bit(allowed, g->eos);
    struct set out = {0, g->tmp.s}, scratch = {0, level(g, 0)};
    if (!scratch.s) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    for (int32_t id = 0; id < g->vi->n_vocab; id++)
        if (g->vi->piece[id] && g->vi->len[id] && advance(&g->cur, g->vi->piece[id], g->vi->len[id], &out, &scratch))
            set_bit(allowed, id);
    return DSV_OK;
}

/* The DSML form of an object schema: each property's opening tag. */
static int dsml_prepare(struct node *n, const char *path) {
    if (n->kind != N_OBJECT)
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: a tool's parameters must be an object schema", path);
    n->dsml_open = calloc((size_t)n->n_props + 1, sizeof *n->dsml_open);
    n->raw = calloc((size_t)n->n_props + 1, sizeof *n->raw);
    if (!n->dsml_open || !n->raw) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    for (int p = 0; p < n->n_props; p++) {
        n->raw[p] = n->prop[p]->kind == N_STRING;
        /* key[p] is the JSON-quoted name; the tag has it between quotes. */
        const char *k = n->key[p];
        size_t kl = strlen(k);
        char *tag = malloc(kl + 64);
        if (!tag) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        snprintf(tag, kl + 64, "<｜DSML｜parameter name=%.*s string=\"%s\">", (int)kl, k, n->raw[p] ? "true" : "false");
        n->dsml_open[p] = tag;
    }
    return DSV_OK;
}

int dsv_grammar_json(dsv_grammar **out, const dsv_vocab_index *vi, const dsv_grammar_json_opts *o) {
    if (!out || !vi || !o || o->eos < 0 || o->n_branches < 1 || o->n_branches > MAX_BRANCH || !o->branches)
        return dsv_error(DSV_ERR_ARG, "dsv_grammar_json: bad argument");
    dsv_grammar *g = calloc(1, sizeof *g);
    if (!g) return dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    g->type = G_JSON;
    g->vi = vi;
    g->eos = o->eos;
    g->cur.s = malloc(MAX_ALT * sizeof *g->cur.s);
    g->tmp.s = malloc(MAX_ALT * sizeof *g->tmp.s);
    int rc = !g->cur.s || !g->tmp.s ? dsv_error(DSV_ERR_NOMEM, "grammar: out of memory") : DSV_OK;
    if (!rc && o->until && (strlen(o->until) >= 64 || !*o->until)) rc = dsv_error(DSV_ERR_ARG, "grammar: bad marker");
    if (!rc && o->until && !(g->until = strdup(o->until))) rc = dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
    for (int b = 0; !rc && b < o->n_branches; b++) {
        const dsv_grammar_branch *br = &o->branches[b];
        struct branch *gb = &g->br[g->n_br++];
        char path[32];
        snprintf(path, sizeof path, o->n_branches > 1 ? "schema[%d]" : "schema", b);
        if (br->schema) {
            rc = compile(br->schema, path, 0, &gb->root);
        } else if (!(gb->root = calloc(1, sizeof *gb->root))) {
            rc = dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        } else {
            gb->root->kind = N_OBJECT;
            gb->root->free_form = 1;
        }
        if (!rc && br->dsml) rc = dsml_prepare(gb->root, path);
        if (!rc && br->prefix && *br->prefix && !(gb->prefix = strdup(br->prefix)))
            rc = dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        if (!rc && br->suffix && *br->suffix && !(gb->suffix = strdup(br->suffix)))
            rc = dsv_error(DSV_ERR_NOMEM, "grammar: out of memory");
        if (rc) break;
        /* Its stack, bottom up: suffix, value, prefix, free text. */
        struct stack *s = &g->cur.s[g->cur.n++];
        s->depth = 0;
        if (gb->suffix) push(s, (struct frame){.kind = F_LIT, .lit = gb->suffix});
        push(s, (struct frame){.kind = br->dsml ? F_DSML : F_VALUE, .n = gb->root});
        if (gb->prefix) push(s, (struct frame){.kind = F_LIT, .lit = gb->prefix});
        if (g->until) push(s, (struct frame){.kind = F_UNTIL, .lit = g->until});
    }
    if (rc) {
        dsv_grammar_free(g);
        return rc;
    }
    g->c = (dsv_token_constraint){json_allowed, json_accept, g};
    *out = g;
    return DSV_OK;
}
