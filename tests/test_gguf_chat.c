/* test_gguf_chat.c: the chat format of a GGUF model (src/text/chat_format.c):
 *  - templates recognized by their markers (the V3.2-Exp template, a
 *    re-indented copy, a DSML one; R1-style, V3-style and other models' not);
 *  - every rule on metadata-only files: template recognized / absent /
 *    unknown x arch deepseek32 / deepseek2 / other, with the warning note;
 *  - end to end through the command line on files `dsv32 quantize` wrote
 *    from the conformance checkpoint (with DeepSeek's tokenizer, its
 *    template, none, or another model's) and from the tiny model:
 *    `tokenize --chat` gives the chat goldens' texts and ids, `parse`
 *    reads the detected format's tool calls, --chat-format overrides. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32_chat.h"
#include "dsv32_util.h"
#include "format/gguf.h"
#include "test.h"

static const char *tmp(const char *name) {
    static char p[8][1024];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s", test_tmpdir(), name);
    return p[k];
}

/* The chat_template string of a tokenizer_config.json (caller frees). */
static char *config_template(const char *path) {
    char *text = test_read_file(path, NULL);
    REQUIRE(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
    REQUIRE(cJSON_IsString(t));
    char *s = strdup(t->valuestring);
    cJSON_Delete(j);
    return s;
}

static const char *fmt_of(const char *tmpl) {
    const dsv_chat_format *f = dsv_chat_format_match_template(tmpl, tmpl ? strlen(tmpl) : 0);
    return f ? dsv_chat_format_name(f) : "(none)";
}

/* Every "%}{" becomes "%}\n  {", as llama.cpp's re-indented copies of the
 * DeepSeek templates are laid out. */
static char *reindent(const char *s) {
    char *o = malloc(strlen(s) * 3 + 1), *w = o;
    REQUIRE(o);
    for (; *s; s++) {
        *w++ = *s;
        if (s[0] == '}' && s[-1] == '%' && s[1] == '{') w += sprintf(w, "\n  ");
    }
    *w = 0;
    return o;
}

/* Markup in the style of other formats, written for this test. */
#define T_R1 "{{'<｜User｜>' + m}}{{'<｜Assistant｜><｜tool▁calls▁begin｜>' + t + '<｜tool▁sep｜>'}}" \
             "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>'}}{{'<｜Assistant｜><think>\\n'}}"
#define T_V3 "{{'<｜User｜>' + m}}{{'<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>'}}"
#define T_CHATML "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
#define T_DSML "{{ bos_token }}{%- set dsml = '｜DSML｜' -%}<{{ dsml }}function_calls>"

TEST(gguf_chat_template_markers) {
    char *exp = config_template(test_shared("tokenizer/tokenizer_config.json"));
    CHECK_STR(fmt_of(exp), "deepseek-v3.2-exp");
    char *re = reindent(exp);
    CHECK(strlen(re) > strlen(exp) + 100); /* the layout did change */
    CHECK_STR(fmt_of(re), "deepseek-v3.2-exp");
    /* The tiny model's template (written by dsv32 bpe) is the Exp one too. */
    char *tiny = config_template("models/tiny/tokenizer_config.json");
    CHECK_STR(fmt_of(tiny), "deepseek-v3.2-exp");
    CHECK_STR(fmt_of(T_DSML), "deepseek-v3.2");
    CHECK_STR(fmt_of(T_R1), "(none)");
    CHECK_STR(fmt_of(T_V3), "(none)");
    CHECK_STR(fmt_of(T_CHATML), "(none)");
    CHECK_STR(fmt_of(""), "(none)");
    CHECK_STR(fmt_of(NULL), "(none)");
    /* The Exp markers with R1's tool-output wrapper added: not Exp. */
    size_t n = strlen(exp);
    char *mixed = malloc(n + 64);
    REQUIRE(mixed);
    snprintf(mixed, n + 64, "%s{{'<｜tool▁outputs▁begin｜>'}}", exp);
    CHECK_STR(fmt_of(mixed), "(none)");
    /* A marker cut by the length is not seen (the GGUF string is not
     * NUL-terminated). */
    const char *cut = "<｜Assistant｜></think><｜tool▁sep｜>";
    CHECK(dsv_chat_format_match_template(cut, strlen(cut)) != NULL);
    CHECK(dsv_chat_format_match_template(cut, strlen(cut) - 1) == NULL);
    /* The alias. */
    CHECK_STR(dsv_chat_format_name(dsv_chat_format_find("deepseek-v3.1")), "deepseek-v3.1");
    free(mixed);
    free(tiny);
    free(re);
    free(exp);
}

/* A GGUF with only metadata: the architecture and, when tmpl is not NULL,
 * the template (stored as a string, or as a number when tmpl is "#"). */
static const char *meta_gguf(const char *name, const char *arch, const char *tmpl) {
    const char *path = tmp(name);
    dsv_gguf_writer *w;
    REQUIRE(dsv_gguf_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_gguf_set_str(w, "general.architecture", arch) == DSV_OK);
    if (tmpl && !strcmp(tmpl, "#")) REQUIRE(dsv_gguf_set_u32(w, "tokenizer.chat_template", 7) == DSV_OK);
    else if (tmpl) REQUIRE(dsv_gguf_set_str(w, "tokenizer.chat_template", tmpl) == DSV_OK);
    REQUIREF(dsv_gguf_writer_begin(w, path) == DSV_OK && dsv_gguf_writer_finish(w) == DSV_OK, "%s", dsv_errmsg());
    dsv_gguf_writer_free(w);
    return path;
}

TEST(gguf_chat_detect_rules) {
    char *exp = config_template(test_shared("tokenizer/tokenizer_config.json"));
    static const char *const archs[3] = {"deepseek32", "deepseek2", "llama"};
    /* Per template (none, Exp, DSML, ChatML) and arch: the format, or NULL
     * for an error. */
    static const char *const want[4][3] = {
        {"deepseek-v3.2", "deepseek-v3.1", NULL},
        {"deepseek-v3.2-exp", "deepseek-v3.2-exp", "deepseek-v3.2-exp"},
        {"deepseek-v3.2", "deepseek-v3.2", "deepseek-v3.2"},
        {"deepseek-v3.2", "deepseek-v3.1", NULL},
    };
    const char *tmpls[4] = {NULL, exp, T_DSML, T_CHATML};
    for (int t = 0; t < 4; t++)
        for (int a = 0; a < 3; a++) {
            char name[64];
            snprintf(name, sizeof name, "m-%d-%d.gguf", t, a);
            const char *path = meta_gguf(name, archs[a], tmpls[t]);
            const dsv_chat_format *f = NULL;
            char note[1024] = "junk";
            int rc = dsv_chat_format_detect_note(path, &f, note, sizeof note);
            if (!want[t][a]) {
                CHECKF(rc == DSV_ERR_MODEL, "template %d arch %s: rc %d", t, archs[a], rc);
                CHECKF(strstr(dsv_errmsg(), path) && strstr(dsv_errmsg(), "architecture 'llama'") &&
                           strstr(dsv_errmsg(), "--chat-format"),
                       "%s", dsv_errmsg());
                continue;
            }
            REQUIREF(rc == DSV_OK, "template %d arch %s: %s", t, archs[a], dsv_errmsg());
            CHECKF(!strcmp(dsv_chat_format_name(f), want[t][a]), "template %d arch %s: %s, expected %s", t, archs[a],
                   dsv_chat_format_name(f), want[t][a]);
            if (t == 3) {
                /* Unknown template: a note naming the file and the choice. */
                CHECKF(strstr(note, path) && strstr(note, want[t][a]) && strstr(note, "not a DeepSeek template"),
                       "note: %s", note);
                CHECK(!strchr(note, '\n'));
            } else {
                CHECK_STR(note, "");
            }
            /* dsv_chat_format_detect agrees, without the note. */
            const dsv_chat_format *g = NULL;
            REQUIRE(dsv_chat_format_detect(path, &g) == DSV_OK);
            CHECK(g == f);
        }
    /* A template that is not a string: an error naming the key. */
    const dsv_chat_format *f = NULL;
    CHECK(dsv_chat_format_detect(meta_gguf("num.gguf", "deepseek32", "#"), &f) != DSV_OK);
    CHECKF(strstr(dsv_errmsg(), "tokenizer.chat_template") != NULL, "%s", dsv_errmsg());
    /* A missing file, or one that is not GGUF: the reader's error, naming it. */
    CHECK(dsv_chat_format_detect(tmp("none.gguf"), &f) != DSV_OK);
    CHECKF(strstr(dsv_errmsg(), "none.gguf") != NULL, "%s", dsv_errmsg());
    FILE *x = fopen(tmp("text.gguf"), "w");
    REQUIRE(x && fputs("not a gguf file at all, just text\n", x) >= 0);
    fclose(x);
    CHECK(dsv_chat_format_detect(tmp("text.gguf"), &f) != DSV_OK);
    CHECKF(strstr(dsv_errmsg(), "text.gguf") != NULL, "%s", dsv_errmsg());
    free(exp);
}

/* ---- The command line ---------------------------------------------------- */

#define BF16_CKPT "conformance/public_sparse_bf16/hf"

/* A model directory: the conformance checkpoint with DeepSeek's tokenizer
 * and a tokenizer_config.json whose chat_template is tmpl (none if NULL). */
static const char *ckpt_dir(const char *name, const char *tmpl) {
    const char *dir = tmp(name);
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && zstd -q -d -f '%s' -o '%s/tokenizer.json' && "
             "ln -sf \"$(realpath '%s')\"/config.json \"$(realpath '%s')\"/model.safetensors '%s/'",
             dir, test_shared("tokenizer/tokenizer.json.zst"), dir, test_shared(BF16_CKPT), test_shared(BF16_CKPT), dir);
    test_run_ok(cmd, NULL);
    char *text = test_read_file(test_shared("tokenizer/tokenizer_config.json"), NULL);
    REQUIRE(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    REQUIRE(j);
    cJSON_DeleteItemFromObjectCaseSensitive(j, "chat_template");
    if (tmpl) cJSON_AddStringToObject(j, "chat_template", tmpl);
    char *s = cJSON_Print(j);
    snprintf(cmd, sizeof cmd, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(cmd, "w");
    REQUIRE(f && s && fputs(s, f) >= 0);
    fclose(f);
    free(s);
    cJSON_Delete(j);
    return dir;
}

/* Writes the GGUF file test_tmpdir()/name; returns its path (a buffer of
 * its own per name, so that later tmp() calls leave it alone). */
static const char *quantize(const char *model, const char *name, const char *args) {
    static char paths[8][1024];
    static int k;
    char *out = paths[k++ % 8], cmd[4096];
    snprintf(out, sizeof paths[0], "%s/%s", test_tmpdir(), name);
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s %s 2>&1", test_bin(), model, out, args);
    test_run_ok(cmd, NULL);
    return out;
}

/* `tokenize --chat` on every golden conversation of a golden file through
 * model (extra: options); checks each output line's text and ids against
 * the golden's (V3.2's goldens have no ids: then against `tokenize --jsonl`
 * of the golden text through the same file), and returns what the command
 * wrote on stderr. */
static char *check_goldens(const char *model, const char *golden_rel, const char *extra, int *n_lines) {
    char *golden = test_read_file(test_shared(golden_rel), NULL);
    REQUIRE(golden);
    const char *in = tmp("in.jsonl"), *texts = tmp("texts.jsonl");
    FILE *f = fopen(in, "w"), *ft = fopen(texts, "w");
    REQUIRE(f && ft);
    cJSON *want[64];
    int n = 0;
    for (char *line = strtok(golden, "\n"); line && n < 64; line = strtok(NULL, "\n")) {
        cJSON *g = cJSON_Parse(line), *req = cJSON_Duplicate(g, 1);
        REQUIRE(g && req);
        cJSON_DeleteItemFromObject(req, "text");
        cJSON_DeleteItemFromObject(req, "ids");
        cJSON_DeleteItemFromObject(req, "name");
        char *s = cJSON_PrintUnformatted(req);
        fprintf(f, "%s\n", s);
        free(s);
        cJSON_Delete(req);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddItemToObject(t, "text", cJSON_Duplicate(cJSON_GetObjectItem(g, "text"), 1));
        s = cJSON_PrintUnformatted(t);
        fprintf(ft, "%s\n", s);
        free(s);
        cJSON_Delete(t);
        want[n++] = g;
    }
    fclose(f);
    fclose(ft);
    free(golden);
    char cmd[8192], *out = NULL;
    const char *err = tmp("err.txt");
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s --chat %s < %s 2> %s", test_bin(), model, extra, in, err);
    test_run_ok(cmd, &out);
    char *plain = NULL;
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s --jsonl < %s", test_bin(), model, texts);
    test_run_ok(cmd, &plain);
    int i = 0;
    char *save1, *save2, *pl = strtok_r(plain, "\n", &save2);
    for (char *line = strtok_r(out, "\n", &save1); line; line = strtok_r(NULL, "\n", &save1), i++) {
        REQUIRE(i < n && pl);
        cJSON *got = cJSON_Parse(line), *enc = cJSON_Parse(pl);
        REQUIRE(got && enc);
        const char *name = cJSON_GetObjectItem(want[i], "name")->valuestring;
        const cJSON *ids = cJSON_GetObjectItem(want[i], "ids");
        CHECKF(cJSON_Compare(cJSON_GetObjectItem(got, "text"), cJSON_GetObjectItem(want[i], "text"), 1),
               "%s (%s): text differs", name, model);
        CHECKF(cJSON_Compare(cJSON_GetObjectItem(got, "ids"), ids ? ids : cJSON_GetObjectItem(enc, "ids"), 1),
               "%s (%s): ids differ", name, model);
        CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(got, "ids")) > 2);
        cJSON_Delete(got);
        cJSON_Delete(enc);
        pl = strtok_r(NULL, "\n", &save2);
    }
    CHECK_EQ_INT(i, n);
    for (int k = 0; k < n; k++) cJSON_Delete(want[k]);
    free(out);
    free(plain);
    *n_lines = n;
    char *e = test_read_file(err, NULL);
    return e ? e : strdup("");
}

#define EXP_GOLDEN "tokenizer/chat-golden.jsonl"
#define V32_GOLDEN "tokenizer/v32/chat-golden.jsonl"

TEST(gguf_chat_cli_goldens) {
    int n;
    char *err;
    /* V3.2-Exp's template, written by quantize: the Exp format, exactly. */
    char *exp = config_template(test_shared("tokenizer/tokenizer_config.json"));
    const char *g = quantize(ckpt_dir("exp", exp), "exp.gguf", "--type BF16");
    dsv_gguf *f;
    REQUIREF(dsv_gguf_open(&f, g) == DSV_OK, "%s", dsv_errmsg());
    const char *s;
    size_t len;
    REQUIRE(dsv_gguf_get_str(f, "tokenizer.chat_template", &s, &len) == DSV_OK);
    CHECK(len == strlen(exp) && !memcmp(s, exp, len));
    dsv_gguf_close(f);
    err = check_goldens(g, EXP_GOLDEN, "", &n);
    CHECK(n >= 16);
    CHECK_STR(err, "");
    free(err);
    /* No template: arch deepseek32 is V3.2 (DSML), deepseek2 the V3.1 format. */
    const char *none = ckpt_dir("none", NULL);
    g = quantize(none, "v32.gguf", "--type BF16");
    err = check_goldens(g, V32_GOLDEN, "", &n);
    CHECK(n >= 10);
    CHECK_STR(err, "");
    free(err);
    const char *g2 = quantize(none, "v31.gguf", "--type BF16 --arch deepseek2");
    err = check_goldens(g2, EXP_GOLDEN, "", &n);
    CHECK_STR(err, "");
    free(err);
    /* --chat-format overrides the detection. */
    err = check_goldens(g, EXP_GOLDEN, "--chat-format deepseek-v3.1", &n);
    CHECK_STR(err, "");
    free(err);
    err = check_goldens(g2, V32_GOLDEN, "--chat-format deepseek-v3.2", &n);
    CHECK_STR(err, "");
    free(err);
    /* Another model's template: the arch's format, and one warning line
     * that names the file and the choice. */
    g = quantize(ckpt_dir("chatml", T_CHATML), "chatml.gguf", "--type BF16");
    err = check_goldens(g, V32_GOLDEN, "", &n);
    char want[2048];
    snprintf(want, sizeof want,
             "dsv32 tokenize: warning: %s: tokenizer.chat_template is not a DeepSeek template dsv32 recognizes; using "
             "deepseek-v3.2, the format of architecture deepseek32 (--chat-format overrides)\n",
             g);
    CHECK_STR(err, want);
    free(err);
    /* ... and none with --chat-format. */
    err = check_goldens(g, EXP_GOLDEN, "--chat-format deepseek-v3.2-exp", &n);
    CHECK_STR(err, "");
    free(err);
    free(exp);
}

/* `parse` reads the tool calls of the format it detects; the tiny model's
 * quantized file carries its template and parses as Exp. */
TEST(gguf_chat_cli_parse) {
    const char *exp_call = "{\"completion\": \"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get<｜tool▁sep｜>{\\\"a\\\": 1}"
                           "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>\"}";
    const char *dsml_call = "{\"completion\": \"\\n\\n<｜DSML｜function_calls>\\n<｜DSML｜invoke name=\\\"get\\\">\\n"
                            "<｜DSML｜parameter name=\\\"a\\\" string=\\\"false\\\">1</｜DSML｜parameter>\\n"
                            "</｜DSML｜invoke>\\n</｜DSML｜function_calls><｜end▁of▁sentence｜>\"}";
    const char *call = "\"tool_calls\":[{\"name\":\"get\",\"arguments\":{\"a\":1}}]";
    const char *tiny = quantize("models/tiny", "tiny.gguf", "--type Q8_0");
    const char *v32 = quantize(test_shared(BF16_CKPT), "c32.gguf", "--type BF16");
    const char *v31 = quantize(test_shared(BF16_CKPT), "c2.gguf", "--type BF16 --arch deepseek2");
    char *tt = config_template("models/tiny/tokenizer_config.json");
    dsv_gguf *f;
    REQUIREF(dsv_gguf_open(&f, tiny) == DSV_OK, "%s", dsv_errmsg());
    const char *s;
    size_t len;
    REQUIRE(dsv_gguf_get_str(f, "tokenizer.chat_template", &s, &len) == DSV_OK);
    CHECK(len == strlen(tt) && !memcmp(s, tt, len));
    dsv_gguf_close(f);
    free(tt);
    static const struct { int model; const char *opt; int dsml; } cases[] = {
        {0, "", 0}, {1, "", 1}, {2, "", 0}, {1, "--chat-format deepseek-v3.2-exp", 0}, {0, "--chat-format deepseek-v3.2", 1},
    };
    const char *models[3] = {tiny, v32, v31};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[8192], *out = NULL;
        /* The format's own markup is a call; the other format's is content. */
        for (int m = 0; m < 2; m++) {
            snprintf(cmd, sizeof cmd, "printf '%%s\\n' '%s' | %s parse -m %s %s 2>&1", m ? dsml_call : exp_call, test_bin(),
                     models[cases[i].model], cases[i].opt);
            test_run_ok(cmd, &out);
            int is_call = strstr(out, call) != NULL;
            CHECKF(is_call == (m == cases[i].dsml), "%s %s on %s markup: %s", models[cases[i].model], cases[i].opt,
                   m ? "DSML" : "Exp", out);
            free(out);
        }
    }
}
