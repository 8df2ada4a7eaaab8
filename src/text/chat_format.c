/* chat_format.c: the table of chat formats and their detection from a model
 * directory or a GGUF file (see include/dsv32_chat.h).
 *
 * A format is a name and three functions; the callers (chat, serve,
 * tokenize, parse) pick one entry once and never test which it is. Detection
 * in a directory reads the two small JSON files that tell V3.2-Exp from
 * V3.2: Exp ships its Jinja template in tokenizer_config.json, V3.2 ships
 * none (its encoder is Python) but the same model_type.
 *
 * A GGUF file carries the template (tokenizer.chat_template, copied from
 * tokenizer_config.json by the converter) and general.architecture. There is
 * no Jinja engine here, so a template is recognized by markers, not by its
 * text: converters and uploaders reformat whitespace and patch templates
 * (llama.cpp's own copy of V3.1's is re-indented and adds enable_thinking),
 * so a byte or whitespace-normalized comparison would miss the files people
 * have. The markers are the output strings that only that format writes. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dsv32_chat.h"
#include "dsml.h"
#include "base/util.h"
#include "format/gguf.h"

struct dsv_chat_format {
    const char *name;
    int (*render_json)(const char *json, size_t len, int thinking, int add_gen, char **out);
    int (*parse)(const char *text, size_t len, int thinking, dsv_chat_result *out);
    int dsml; /* stream kind: 0 the Exp parser, 1 DSML */
};

static int dsml_render(const char *json, size_t len, int thinking, int add_gen, char **out) {
    (void)add_gen; /* the format has no such switch */
    return dsv_dsml_render_json(json, len, thinking, out);
}

/* deepseek-v3.1 is the same format as deepseek-v3.2-exp (V3.2-Exp kept
 * V3.1's template, revised only in corner cases of prefix and system-only
 * conversations) under the name users of V3.1 files look for. */
static const dsv_chat_format formats[] = {
    {"deepseek-v3.2-exp", dsv_chat_render_json, dsv_chat_parse, 0},
    {"deepseek-v3.2", dsml_render, dsv_dsml_parse, 1},
    {"deepseek-v3.1", dsv_chat_render_json, dsv_chat_parse, 0},
};
#define N_FORMATS (int)(sizeof formats / sizeof formats[0])
#define FMT_EXP (&formats[0])
#define FMT_V32 (&formats[1])
#define FMT_V31 (&formats[2])

const char *dsv_chat_format_list(void) { return "deepseek-v3.2-exp, deepseek-v3.2, deepseek-v3.1"; }

const dsv_chat_format *dsv_chat_format_find(const char *name) {
    for (int i = 0; name && i < N_FORMATS; i++)
        if (!strcmp(name, formats[i].name)) return &formats[i];
    dsv_error(DSV_ERR_ARG, "unknown chat format \"%s\" (known: %s)", name ? name : "", dsv_chat_format_list());
    return NULL;
}

const char *dsv_chat_format_name(const dsv_chat_format *f) { return (f ? f : &formats[0])->name; }

int dsv_chat_format_render_json(const dsv_chat_format *f, const char *json, size_t len, int thinking,
                                int add_generation_prompt, char **out_text) {
    return (f ? f : &formats[0])->render_json(json, len, thinking, add_generation_prompt, out_text);
}

int dsv_chat_format_parse(const dsv_chat_format *f, const char *text, size_t len, int thinking,
                          dsv_chat_result *out) {
    return (f ? f : &formats[0])->parse(text, len, thinking, out);
}

int dsv_chat_stream_init_dsml(dsv_chat_stream **out, int thinking); /* chat.c */

int dsv_chat_format_stream_init(const dsv_chat_format *f, dsv_chat_stream **out, int thinking) {
    return f && f->dsml ? dsv_chat_stream_init_dsml(out, thinking) : dsv_chat_stream_init(out, thinking);
}

int dsv_chat_format_call_markup(const dsv_chat_format *f, const char *name, char **prefix, char **suffix, int *dsml) {
    if (!name || !prefix || !suffix || !dsml) return dsv_error(DSV_ERR_ARG, "dsv_chat_format_call_markup: NULL argument");
    if (!f) f = &formats[0];
    const char *pre_a = f->dsml ? "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"" : "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>";
    const char *pre_b = f->dsml ? "\">\n" : "<｜tool▁sep｜>";
    const char *suf = f->dsml ? "\n</｜DSML｜invoke>\n</｜DSML｜function_calls>" : "<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    size_t n = strlen(pre_a) + strlen(name) + strlen(pre_b) + 1;
    char *p = malloc(n), *s = strdup(suf);
    if (!p || !s) {
        free(p);
        free(s);
        return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    }
    snprintf(p, n, "%s%s%s", pre_a, name, pre_b);
    *prefix = p;
    *suffix = s;
    *dsml = f->dsml;
    return DSV_OK;
}

/* dir/name parsed, or NULL when the file does not exist (*rc = DSV_OK) or
 * is unreadable or not JSON (*rc set, naming the file). */
static cJSON *read_json(const char *dir, const char *name, int *rc) {
    char path[4096];
    *rc = DSV_OK;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
        *rc = dsv_error(DSV_ERR_ARG, "%s: path too long", dir);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno != ENOENT) *rc = dsv_error(DSV_ERR_IO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            char *p = cap > ((size_t)64 << 20) ? NULL : realloc(buf, cap ? 2 * cap : 8192);
            if (!p) { *rc = dsv_error(DSV_ERR_NOMEM, "%s: too large or out of memory", path); break; }
            buf = p;
            cap = cap ? 2 * cap : 8192;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (!*rc && ferror(f)) *rc = dsv_error(DSV_ERR_IO, "%s: read error", path);
    fclose(f);
    cJSON *root = NULL;
    if (!*rc) {
        root = cJSON_ParseWithLength(buf, n);
        if (!root) *rc = dsv_error(DSV_ERR_FORMAT, "%s: not valid JSON", path);
    }
    free(buf);
    return root;
}

static int has(const char *t, size_t n, const char *marker) { return memmem(t, n, marker, strlen(marker)) != NULL; }

const dsv_chat_format *dsv_chat_format_match_template(const char *tmpl, size_t len) {
    if (!tmpl) return NULL;
    /* DSML markup: V3.2's tool calls (llama.cpp's V3.2 template and the
     * community ones spell the token out or build it from "｜DSML｜"). */
    if (has(tmpl, len, "｜DSML｜")) return FMT_V32;
    /* V3.1 / V3.2-Exp: the non-thinking answer opens with "</think>" right
     * after the Assistant tag (written as one literal in the tool-call
     * branch), tool calls are name<｜tool▁sep｜>arguments, and there is no
     * "<｜tool▁outputs▁begin｜>" (R1's and V3's tool-output wrapper; R1
     * opens with "<think>\n" instead). */
    if (has(tmpl, len, "<｜Assistant｜></think>") && has(tmpl, len, "<｜tool▁sep｜>") &&
        !has(tmpl, len, "<｜tool▁outputs▁begin｜>"))
        return FMT_EXP;
    return NULL;
}

/* A GGUF file's format: its template if recognized, else its
 * architecture's default (with a note when a template was there but not
 * recognized). */
static int detect_gguf(const char *path, const dsv_chat_format **out, char *note, size_t note_cap) {
    dsv_gguf *g;
    int st = dsv_gguf_open(&g, path);
    if (st) return st;
    const char *arch = "", *tmpl = NULL;
    size_t arch_len = 0, tmpl_len = 0;
    const dsv_chat_format *f;
    if (dsv_gguf_kv_find(g, "general.architecture") >= 0 &&
        (st = dsv_gguf_get_str(g, "general.architecture", &arch, &arch_len)))
        goto done;
    if (dsv_gguf_kv_find(g, "tokenizer.chat_template") >= 0 &&
        (st = dsv_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tmpl_len)))
        goto done;
    if ((f = dsv_chat_format_match_template(tmpl, tmpl_len))) {
        *out = f;
        goto done;
    }
    if (arch_len == 10 && !memcmp(arch, "deepseek32", 10)) f = FMT_V32;
    else if (arch_len == 9 && !memcmp(arch, "deepseek2", 9)) f = FMT_V31;
    else {
        st = dsv_error(DSV_ERR_MODEL,
                       "%s: no chat format for architecture '%.*s' and %s chat template (--chat-format chooses one: %s)",
                       path, (int)(arch_len > 64 ? 64 : arch_len), arch, tmpl ? "an unrecognized" : "no",
                       dsv_chat_format_list());
        goto done;
    }
    if (tmpl && note && note_cap)
        snprintf(note, note_cap,
                 "%s: tokenizer.chat_template is not a DeepSeek template dsv32 recognizes; using %s, the format of "
                 "architecture %.*s (--chat-format overrides)",
                 path, f->name, (int)arch_len, arch);
    *out = f;
done:
    dsv_gguf_close(g);
    return st;
}

int dsv_chat_format_detect(const char *model_path, const dsv_chat_format **out) {
    return dsv_chat_format_detect_note(model_path, out, NULL, 0);
}

int dsv_chat_format_detect_note(const char *model_path, const dsv_chat_format **out, char *note, size_t note_cap) {
    if (!model_path || !out) return dsv_error(DSV_ERR_ARG, "dsv_chat_format_detect: NULL argument");
    if (note && note_cap) note[0] = 0;
    const size_t plen = strlen(model_path);
    struct stat st;
    /* A .gguf path that is not a directory is a GGUF file (the model
     * loader's rule); one that does not exist is an error from the reader. */
    if (plen > 5 && !strcmp(model_path + plen - 5, ".gguf") && !(stat(model_path, &st) == 0 && S_ISDIR(st.st_mode)))
        return detect_gguf(model_path, out, note, note_cap);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", model_path);
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        /* A tokenizer.json path: its directory. */
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    }
    int rc;
    cJSON *tc = read_json(dir, "tokenizer_config.json", &rc);
    if (rc) return rc;
    const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
    int has_template = tmpl && !cJSON_IsNull(tmpl);
    cJSON_Delete(tc);
    const dsv_chat_format *f = &formats[0];
    if (!has_template) {
        cJSON *cfg = read_json(dir, "config.json", &rc);
        if (rc) return rc;
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
        if (cJSON_IsString(mt) && !strcmp(mt->valuestring, "deepseek_v32")) f = &formats[1];
        cJSON_Delete(cfg);
    }
    *out = f;
    return DSV_OK;
}
