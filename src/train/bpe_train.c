/* bpe_train.c: a byte-level BPE trainer that writes a Hugging Face
 * tokenizer.json the engine's tokenizer (tokenizer.c) loads unchanged.
 *
 * The text is split with DeepSeek-V3's own pre-tokenizer (the same Split
 * regexes and ByteLevel step, run by the engine's tokenizer itself through a
 * bootstrap tokenizer.json that holds only the 256 bytes), so training and
 * encoding cut text identically. Merges are learned the classic way: count
 * every adjacent pair over the distinct pieces (weighted by frequency),
 * merge the most frequent (ties: the lower pair of ids), repeat.
 * Ids: 0..2 the DeepSeek BOS/EOS/pad, 3..258 the bytes (3 + byte value), then
 * the merges in order; the chat and tool markers follow as added tokens with
 * DeepSeek's spellings, so the V3.2 chat template works unchanged. */
#include <cjson/cJSON.h>
#include <string.h>

#include "dsv32_tokenizer.h"
#include "train.h"
#include "base/util.h"

/* The pre-tokenizer of DeepSeek-V3's tokenizer.json, unchanged. */
static const char pretok_json[] =
    "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p"
    "{N}{1,3}\"}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"Split\", \"pattern\": "
    "{\"Regex\": \"[\\u4e00-\\u9fa5\\u3040-\\u309f\\u30a0-\\u30ff]+\"}, \"behavior\": \"Isolated\", \""
    "invert\": false}, {\"type\": \"Split\", \"pattern\": {\"Regex\": \"[!\\\"#$%&'()*+,\\\\-./:;<=>?"
    "@\\\\[\\\\\\\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\\\p{L}\\\\p{P}\\\\p{S}]?[\\\\p{L}\\\\p{M}]+| ?[\\\\p"
    "{P}\\\\p{S}]+[\\r\\n]*|\\\\s*[\\r\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": \"Isolated\", \""
    "invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true,"
    " \"use_regex\": false}]}";

/* The DeepSeek-V3.2-Exp chat template (tokenizer_config.json), unchanged. */
static const char chat_template[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{"
    "% if not thinking is defined %}{% set thinking = false %}{% endif %}{% set ns = namespace(is_fir"
    "st=false, is_tool=false, system_prompt='', is_first_sp=true, is_last_user=false, is_only_sys=fal"
    "se, is_prefix=false) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if"
    " ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is"
    "_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['"
    "content'] %}{%- endif %}{% set ns.is_only_sys = true %}{%- endif %}{%- endfor %}{{ bos_token }}{"
    "{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns"
    ".is_tool = false -%}{%- set ns.is_first = false -%}{%- set ns.is_last_user = true -%}{{'<｜User｜>"
    "' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['tool_call"
    "s'] is defined and message['tool_calls'] is not none %}{%- if ns.is_last_user or ns.is_only_sys "
    "%}{{'<｜Assistant｜></think>'}}{%- endif %}{%- set ns.is_last_user = false -%}{%- set ns.is_first "
    "= false %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}{%- if not ns.is"
    "_first %}{%- if message['content'] is none %}{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'+ tool['"
    "function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}{%- e"
    "lse %}{{message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['function']['name'"
    "] + '<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}{%- endif %}{%- set ns"
    ".is_first = true -%}{%- else %}{{'<｜tool▁call▁begin｜>'+ tool['function']['name'] + '<｜tool▁sep｜>"
    "' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}{%- endif %}{%- endfor %}{{'<｜tool▁call"
    "s▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- if message['role'] == 'assistant' and (message['too"
    "l_calls'] is not defined or message['tool_calls'] is none) %}{%- if ns.is_last_user %}{{'<｜Assis"
    "tant｜>'}}{%- if message['prefix'] is defined and message['prefix'] and thinking %}{{'<think>'}}{"
    "%- else %}{{'</think>'}}{%- endif %}{%- endif %}{%- if message['prefix'] is defined and message["
    "'prefix'] %}{%- set ns.is_prefix = true -%}{%- endif %}{%- set ns.is_last_user = false -%}{%- if"
    " ns.is_tool %}{{message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- el"
    "se %}{%- set content = message['content'] -%}{%- if '</think>' in content %}{%- set content = co"
    "ntent.split('</think>', 1)[1] -%}{%- endif %}{{content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- "
    "endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_last_user = false -%}{%- set ns.is_tool"
    " = true -%}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{"
    "%- if message['role'] != 'system' %}{% set ns.is_only_sys = false %}{%- endif %}{%- endfor -%}{%"
    " if add_generation_prompt and not ns.is_tool%}{% if ns.is_last_user or ns.is_only_sys or not ns."
    "is_prefix %}{{'<｜Assistant｜>'}}{%- if not thinking %}{{'</think>'}}{%- else %}{{'<think>'}}{%- e"
    "ndif %}{% endif %}{% endif %}";

/* Added tokens after the BPE vocabulary: content and "special" flag. */
static const struct { const char *s; int special; } added[] = {
    {"<｜search▁begin｜>", 0}, {"<｜search▁end｜>", 0}, {"<think>", 0}, {"</think>", 0},
    {"<｜fim▁hole｜>", 0}, {"<｜fim▁begin｜>", 0}, {"<｜fim▁end｜>", 0},
    {"<｜User｜>", 0}, {"<｜Assistant｜>", 0}, {"<|EOT|>", 1},
    {"<｜tool▁calls▁begin｜>", 0}, {"<｜tool▁calls▁end｜>", 0}, {"<｜tool▁call▁begin｜>", 0},
    {"<｜tool▁call▁end｜>", 0}, {"<｜tool▁outputs▁begin｜>", 0}, {"<｜tool▁outputs▁end｜>", 0},
    {"<｜tool▁output▁begin｜>", 0}, {"<｜tool▁output▁end｜>", 0}, {"<｜tool▁sep｜>", 0},
};
static const char *const specials[3] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"};
enum { FIRST_BYTE = 3 };

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest
 * map to U+0100 upward; each entry is the character's UTF-8. */
static void byte_chars(char out[256][3]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)n++;
        if (cp < 0x80) { out[b][0] = (char)cp; out[b][1] = 0; }
        else { out[b][0] = (char)(0xC0 | (cp >> 6)); out[b][1] = (char)(0x80 | (cp & 0x3F)); out[b][2] = 0; }
    }
}

/* A token's byte-level string (bytes mapped through byte_chars). */
static char *token_string(const uint8_t *bytes, int n, char bc[256][3]) {
    char *s = malloc((size_t)n * 2 + 1), *p = s;
    if (!s) return NULL;
    for (int i = 0; i < n; i++) {
        const char *c = bc[bytes[i]];
        size_t l = strlen(c);
        memcpy(p, c, l);
        p += l;
    }
    *p = 0;
    return s;
}

/* ---- distinct pieces --------------------------------------------------- */

typedef struct word { const char *s; int len; long count; int n_sym; int32_t *sym; } word;

typedef struct wtab { word *w; long n, cap; long *slot; long n_slot; } wtab;

static uint64_t hash_bytes(const char *s, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int wtab_add(wtab *t, const char *s, int len) {
    if (t->n * 2 >= t->n_slot) {
        long ns = t->n_slot ? t->n_slot * 2 : 1 << 16;
        long *slot = malloc((size_t)ns * sizeof *slot);
        if (!slot) return -1;
        for (long i = 0; i < ns; i++) slot[i] = -1;
        for (long i = 0; i < t->n; i++) {
            long h = (long)(hash_bytes(t->w[i].s, t->w[i].len) & (uint64_t)(ns - 1));
            while (slot[h] >= 0) h = (h + 1) & (ns - 1);
            slot[h] = i;
        }
        free(t->slot);
        t->slot = slot;
        t->n_slot = ns;
    }
    long h = (long)(hash_bytes(s, len) & (uint64_t)(t->n_slot - 1));
    while (t->slot[h] >= 0) {
        word *w = &t->w[t->slot[h]];
        if (w->len == len && !memcmp(w->s, s, (size_t)len)) { w->count++; return 0; }
        h = (h + 1) & (t->n_slot - 1);
    }
    if (t->n == t->cap) {
        long nc = t->cap ? t->cap * 2 : 4096;
        word *nw = realloc(t->w, (size_t)nc * sizeof *nw);
        if (!nw) return -1;
        t->w = nw;
        t->cap = nc;
    }
    t->w[t->n] = (word){s, len, 1, 0, NULL};
    t->slot[h] = t->n++;
    return 0;
}

/* ---- pair counts -------------------------------------------------------- */

typedef struct ptab { uint64_t *key; long *cnt; long n_slot; } ptab;

static void ptab_add(ptab *p, int32_t a, int32_t b, long c) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    long h = (long)((k * 0x9E3779B97F4A7C15ull) >> 20) & (p->n_slot - 1);
    while (p->key[h] && p->key[h] != k) h = (h + 1) & (p->n_slot - 1);
    p->key[h] = k;
    p->cnt[h] += c;
}

static int write_json(const char *path, cJSON *root) {
    char *text = cJSON_Print(root);
    if (!text) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    FILE *f = fopen(path, "wb");
    int st = DSV_OK;
    if (!f) st = dsv_error(DSV_ERR_IO, "%s: cannot write", path);
    else {
        size_t n = strlen(text);
        if (fwrite(text, 1, n, f) != n || fputc('\n', f) == EOF) st = dsv_error(DSV_ERR_IO, "%s: write failed", path);
        if (fclose(f) && !st) st = dsv_error(DSV_ERR_IO, "%s: write failed", path);
    }
    free(text);
    return st;
}

/* tokenizer.json for a vocabulary of n tokens (bytes[i], len[i]) and merges
 * (ma[i], mb[i]) -> id FIRST_BYTE + 256 + i. */
static int write_tokenizer(const char *path, uint8_t **bytes, const int *len, int n, const int32_t *ma,
                           const int32_t *mb, int n_merges) {
    char bc[256][3];
    byte_chars(bc);
    cJSON *root = cJSON_CreateObject(), *pre = cJSON_Parse(pretok_json);
    if (!root || !pre) { cJSON_Delete(root); cJSON_Delete(pre); return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *at = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < 3 + (int)(sizeof added / sizeof *added); i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", i < 3 ? i : n + i - 3);
        cJSON_AddStringToObject(o, "content", i < 3 ? specials[i] : added[i - 3].s);
        cJSON_AddFalseToObject(o, "single_word");
        cJSON_AddFalseToObject(o, "lstrip");
        cJSON_AddFalseToObject(o, "rstrip");
        cJSON_AddFalseToObject(o, "normalized");
        cJSON_AddBoolToObject(o, "special", i < 3 || added[i - 3].special);
        cJSON_AddItemToArray(at, o);
    }
    cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
    cJSON_AddStringToObject(norm, "type", "Sequence");
    cJSON_AddArrayToObject(norm, "normalizers");
    cJSON_AddItemToObject(root, "pre_tokenizer", pre);
    const char *bl[2] = {"post_processor", "decoder"};
    for (int i = 0; i < 2; i++) {
        cJSON *o = cJSON_AddObjectToObject(root, bl[i]);
        cJSON_AddStringToObject(o, "type", "ByteLevel");
        cJSON_AddTrueToObject(o, "add_prefix_space");
        cJSON_AddBoolToObject(o, "trim_offsets", i == 1);
        cJSON_AddTrueToObject(o, "use_regex");
    }
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddFalseToObject(model, "fuse_unk");
    cJSON_AddFalseToObject(model, "byte_fallback");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab"), *merges = cJSON_AddArrayToObject(model, "merges");
    int st = DSV_OK;
    char **strs = calloc((size_t)n, sizeof *strs);
    if (!strs) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !st; i++) {
        strs[i] = i < FIRST_BYTE ? strdup(specials[i]) : token_string(bytes[i], len[i], bc);
        if (!strs[i]) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
        else cJSON_AddNumberToObject(vocab, strs[i], i);
    }
    for (int i = 0; i < n_merges && !st; i++) {
        size_t la = strlen(strs[ma[i]]), lb = strlen(strs[mb[i]]);
        char *m = malloc(la + lb + 2);
        if (!m) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); break; }
        memcpy(m, strs[ma[i]], la);
        m[la] = ' ';
        memcpy(m + la + 1, strs[mb[i]], lb + 1);
        cJSON_AddItemToArray(merges, cJSON_CreateString(m));
        free(m);
    }
    if (!st) st = write_json(path, root);
    for (int i = 0; strs && i < n; i++) free(strs[i]);
    free(strs);
    cJSON_Delete(root);
    return st;
}

static int write_tokenizer_config(const char *path) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    cJSON_AddTrueToObject(r, "add_bos_token");
    cJSON_AddFalseToObject(r, "add_eos_token");
    cJSON_AddStringToObject(r, "bos_token", specials[0]);
    cJSON_AddStringToObject(r, "eos_token", specials[1]);
    cJSON_AddStringToObject(r, "pad_token", specials[1]);
    cJSON_AddFalseToObject(r, "clean_up_tokenization_spaces");
    cJSON_AddTrueToObject(r, "legacy");
    cJSON_AddNumberToObject(r, "model_max_length", 1024);
    cJSON_AddNullToObject(r, "unk_token");
    cJSON_AddStringToObject(r, "tokenizer_class", "LlamaTokenizerFast");
    cJSON_AddStringToObject(r, "chat_template", chat_template);
    int st = write_json(path, r);
    cJSON_Delete(r);
    return st;
}

int dsv_bpe_train(const char *dir, const char *text, size_t len, int vocab_size, int *n_vocab) {
    const int base = FIRST_BYTE + 256;
    if (!dir || (!text && len)) return dsv_error(DSV_ERR_ARG, "dsv_bpe_train: NULL argument");
    if (vocab_size < base) return dsv_error(DSV_ERR_ARG, "vocabulary size %d is below %d (specials and bytes)", vocab_size, base);
    if (len >= (size_t)1 << 31) return dsv_error(DSV_ERR_ARG, "text too large (%zu bytes)", len);
    char path[4096];
    /* The longer name first: both fit, or nothing is written. */
    if (dsv_path_join(path, sizeof path, dir, "tokenizer_config.json")) return DSV_ERR_ARG;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    uint8_t **bytes = calloc((size_t)vocab_size, sizeof *bytes);
    int *tlen = calloc((size_t)vocab_size, sizeof *tlen);
    int32_t *ma = calloc((size_t)vocab_size, sizeof *ma), *mb = calloc((size_t)vocab_size, sizeof *mb);
    size_t *ends = malloc((len ? len : 1) * sizeof *ends);
    wtab wt = {0};
    ptab pt = {0};
    dsv_tokenizer *tok = NULL;
    int st = DSV_OK, n = base, n_merges = 0;
    if (!bytes || !tlen || !ma || !mb || !ends) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto done; }
    for (int b = 0; b < 256; b++) {
        bytes[FIRST_BYTE + b] = malloc(1);
        if (!bytes[FIRST_BYTE + b]) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto done; }
        bytes[FIRST_BYTE + b][0] = (uint8_t)b;
        tlen[FIRST_BYTE + b] = 1;
    }
    /* Bootstrap: the engine's tokenizer with bytes only, to pre-tokenize. */
    if ((st = write_tokenizer(path, bytes, tlen, base, ma, mb, 0))) goto done;
    if ((st = dsv_tokenizer_open(&tok, path))) goto done;
    size_t n_pieces = 0;
    if (len && (st = dsv_pretokenize(tok, text, len, ends, len, &n_pieces))) goto done;
    for (size_t i = 0, at = 0; i < n_pieces; at = ends[i++])
        if (wtab_add(&wt, text + at, (int)(ends[i] - at))) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto done; }
    for (long i = 0; i < wt.n; i++) {
        word *w = &wt.w[i];
        w->sym = malloc((size_t)w->len * sizeof *w->sym);
        if (!w->sym) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto done; }
        for (int j = 0; j < w->len; j++) w->sym[j] = FIRST_BYTE + (uint8_t)w->s[j];
        w->n_sym = w->len;
    }
    pt.n_slot = 1 << 20;
    pt.key = malloc((size_t)pt.n_slot * sizeof *pt.key);
    pt.cnt = malloc((size_t)pt.n_slot * sizeof *pt.cnt);
    if (!pt.key || !pt.cnt) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto done; }
    while (n < vocab_size) {
        memset(pt.key, 0, (size_t)pt.n_slot * sizeof *pt.key);
        memset(pt.cnt, 0, (size_t)pt.n_slot * sizeof *pt.cnt);
        for (long i = 0; i < wt.n; i++)
            for (int j = 0; j + 1 < wt.w[i].n_sym; j++) ptab_add(&pt, wt.w[i].sym[j], wt.w[i].sym[j + 1], wt.w[i].count);
        long best = -1;
        for (long h = 0; h < pt.n_slot; h++)
            if (pt.key[h] && (best < 0 || pt.cnt[h] > pt.cnt[best] || (pt.cnt[h] == pt.cnt[best] && pt.key[h] < pt.key[best])))
                best = h;
        if (best < 0 || pt.cnt[best] < 2) break; /* nothing left worth merging */
        int32_t a = (int32_t)((pt.key[best] - 1) >> 32), b = (int32_t)((pt.key[best] - 1) & 0xffffffffu);
        bytes[n] = malloc((size_t)(tlen[a] + tlen[b]));
        if (!bytes[n]) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto done; }
        memcpy(bytes[n], bytes[a], (size_t)tlen[a]);
        memcpy(bytes[n] + tlen[a], bytes[b], (size_t)tlen[b]);
        tlen[n] = tlen[a] + tlen[b];
        ma[n_merges] = a;
        mb[n_merges++] = b;
        for (long i = 0; i < wt.n; i++) {
            word *w = &wt.w[i];
            int o = 0;
            for (int j = 0; j < w->n_sym; j++) {
                if (j + 1 < w->n_sym && w->sym[j] == a && w->sym[j + 1] == b) { w->sym[o++] = n; j++; }
                else w->sym[o++] = w->sym[j];
            }
            w->n_sym = o;
        }
        n++;
    }
    dsv_tokenizer_close(tok);
    tok = NULL;
    if ((st = write_tokenizer(path, bytes, tlen, n, ma, mb, n_merges))) goto done;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if ((st = write_tokenizer_config(path))) goto done;
    if (n_vocab) *n_vocab = n + (int)(sizeof added / sizeof *added);
done:
    dsv_tokenizer_close(tok);
    for (long i = 0; i < wt.n; i++) free(wt.w[i].sym);
    free(wt.w);
    free(wt.slot);
    free(pt.key);
    free(pt.cnt);
    for (int i = 0; bytes && i < vocab_size; i++) free(bytes[i]);
    free(bytes);
    free(tlen);
    free(ma);
    free(mb);
    free(ends);
    return st;
}
