/* cmd_tokenize.c: `dsv32 tokenize` (text to ids) and `dsv32 detokenize` (ids
 * to text), thin clients of dsv32_tokenizer.h.
 *
 * tokenize has one function per input mode (whole stdin, JSON lines, the
 * throughput benchmark); a new mode is a new enum value, option and function.
 * Errors are one line on stderr, "dsv32 <command>: <reason>", and exit status
 * 1 (2 for bad usage). Output is flushed and checked, so a full disk or a
 * closed pipe is an error too. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dsv32_chat.h"
#include "dsv32_tokenizer.h"
#include "dsv32_util.h"

#define BENCH_TIME_DEFAULT 1.0

/* Texts are read whole; past 4 GiB the token ids alone would not fit. */
#define TEXT_MAX_BYTES ((size_t)1 << 32)

static int finish_output(const char *cmd) {
    if (fflush(stdout) != 0 || ferror(stdout)) return cli_fail(cmd, "writing output: %s", strerror(errno));
    return 0;
}

static void print_ids(const int32_t *ids, size_t n, const char *sep) {
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? sep : "", (int)ids[i]);
}

/* ---- tokenize ------------------------------------------------------------ */

enum tokenize_mode { MODE_TEXT, MODE_JSONL, MODE_CHAT, MODE_BENCH };

static void tokenize_usage(FILE *f) {
    fprintf(f,
            "usage: dsv32 tokenize -m MODEL [options]\n"
            "Encodes text to token ids. No BOS is added: special-token strings in the text\n"
            "(such as <｜begin▁of▁sentence｜>) are encoded as those tokens.\n"
            "\n"
            "  -m, --model PATH     model directory or tokenizer.json file (required)\n"
            "      --jsonl          read one JSON object per line with a \"text\" member and\n"
            "                       write {\"ids\":[...]} per line (default: off; read all of\n"
            "                       stdin as one text and write its ids comma-separated)\n"
            "      --chat           read one JSON object per line {\"messages\":[...],\n"
            "                       \"thinking\":bool (or \"thinking_mode\":\"chat\"|\"thinking\"),\n"
            "                       \"add_generation_prompt\":bool, \"tools\":[...]}\n"
            "                       and write {\"text\":\"<rendered prompt>\",\"ids\":[...]} per line;\n"
            "                       the chat format renders BOS itself (default: off)\n"
            "      --chat-format F  the chat format for --chat: %s\n"
            "                       (default: detected from the model directory, or from a\n"
            "                       GGUF's tokenizer.chat_template and architecture)\n"
            "      --bench FILE     encode FILE repeatedly and print MB/s and tokens/s\n"
            "                       (default: off)\n"
            "      --bench-time S   measure for at least S seconds (default: %g)\n"
            "  -h, --help           show this help\n",
            dsv_chat_format_list(), BENCH_TIME_DEFAULT);
}

/* Encodes text into *ids, growing it as needed (dsv_tokenize never needs
 * more ids than bytes). */
static int encode(const dsv_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *cap,
                  size_t *n) {
    if (*cap < len + 1) {
        int32_t *p = realloc(*ids, (len + 1) * sizeof *p);
        if (!p) return dsv_error(DSV_ERR_NOMEM, "out of memory");
        *ids = p;
        *cap = len + 1;
    }
    return dsv_tokenize(tok, text, len, *ids, *cap, n);
}

static int tokenize_text(const dsv_tokenizer *tok) {
    size_t len, n, cap = 0;
    int32_t *ids = NULL;
    char *text;
    if (dsv_read_file("-", TEXT_MAX_BYTES, &text, &len)) return cli_fail("tokenize", "%s", dsv_errmsg());
    int rc = encode(tok, text, len, &ids, &cap, &n);
    free(text);
    if (rc == DSV_OK) {
        print_ids(ids, n, ",");
        putchar('\n');
    }
    free(ids);
    if (rc) return cli_fail("tokenize", "%s", dsv_errmsg());
    return finish_output("tokenize");
}

/* Blank lines are skipped; any other line must be an object with "text". */
static int tokenize_jsonl(const dsv_tokenizer *tok) {
    char *line = NULL, *text;
    size_t line_cap = 0, cap = 0, n, len;
    int32_t *ids = NULL;
    int rc = 0;
    ssize_t got;
    for (long no = 1; rc == 0 && (got = getline(&line, &line_cap, stdin)) >= 0; no++) {
        if (strspn(line, " \t\r\n") == (size_t)got) continue;
        rc = dsv_json_get_string(line, (size_t)got, "text", &text, &len);
        if (rc == DSV_OK) {
            rc = encode(tok, text, len, &ids, &cap, &n);
            free(text);
        }
        if (rc) {
            dsv_error_prefix(rc, "stdin line %ld", no);
            break;
        }
        fputs("{\"ids\":[", stdout);
        print_ids(ids, n, ",");
        fputs("]}\n", stdout);
    }
    free(line);
    free(ids);
    if (rc) return cli_fail("tokenize", "%s", dsv_errmsg());
    if (ferror(stdin)) return cli_fail("tokenize", "reading stdin: %s", strerror(errno));
    return finish_output("tokenize");
}

/* The thinking default of a --chat line: "thinking_mode" (the V3.2
 * encoder's own switch) when present; the format reads "thinking" itself. */
static int line_thinking(const char *line, size_t len) {
    cJSON *root = cJSON_ParseWithLength(line, len);
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(root, "thinking_mode");
    int thinking = cJSON_IsString(mode) && !strcmp(mode->valuestring, "thinking");
    cJSON_Delete(root);
    return thinking;
}

/* One conversation per line: render in the chat format, then encode the
 * rendered text as it stands (it starts with the BOS string itself). */
static int tokenize_chat(const dsv_tokenizer *tok, const dsv_chat_format *fmt) {
    char *line = NULL, *text = NULL;
    size_t line_cap = 0, cap = 0, n;
    int32_t *ids = NULL;
    int rc = 0;
    ssize_t got;
    for (long no = 1; rc == 0 && (got = getline(&line, &line_cap, stdin)) >= 0; no++) {
        if (strspn(line, " \t\r\n") == (size_t)got) continue;
        rc = dsv_chat_format_render_json(fmt, line, (size_t)got, line_thinking(line, (size_t)got), 1, &text);
        if (rc == DSV_OK) rc = encode(tok, text, strlen(text), &ids, &cap, &n);
        if (rc) {
            dsv_error_prefix(rc, "stdin line %ld", no);
            break;
        }
        size_t qlen;
        char *q = dsv_json_quote(text, strlen(text), &qlen);
        if (!q) { rc = DSV_ERR_NOMEM; break; }
        fputs("{\"text\":", stdout);
        fwrite(q, 1, qlen, stdout);
        free(q);
        fputs(",\"ids\":[", stdout);
        print_ids(ids, n, ",");
        fputs("]}\n", stdout);
        free(text);
        text = NULL;
    }
    free(text);
    free(line);
    free(ids);
    if (rc) return cli_fail("tokenize", "%s", dsv_errmsg());
    if (ferror(stdin)) return cli_fail("tokenize", "reading stdin: %s", strerror(errno));
    return finish_output("tokenize");
}

static int tokenize_bench(const dsv_tokenizer *tok, const char *path, double min_time, double load_s) {
    size_t len, n = 0, cap = 0;
    char *text;
    if (dsv_read_file(path, TEXT_MAX_BYTES, &text, &len)) return cli_fail("tokenize", "%s", dsv_errmsg());
    int32_t *ids = NULL;
    int runs = 0, rc = 0;
    double t0 = dsv_time(), dt;
    do {
        rc = encode(tok, text, len, &ids, &cap, &n);
        runs++;
        dt = dsv_time() - t0;
    } while (rc == DSV_OK && dt < min_time);
    free(text);
    free(ids);
    if (rc) return cli_fail("tokenize", "%s", dsv_errmsg());
    printf("file: %s, %zu bytes, %zu tokens (%.2f bytes/token)\n", path, len, n, n ? (double)len / (double)n : 0.0);
    printf("load: %.0f ms\n", load_s * 1e3);
    printf("encode: %.2f MB/s, %.0f tokens/s (%d runs in %.2f s)\n", (double)len * runs / dt / 1e6,
           (double)n * runs / dt, runs, dt);
    return finish_output("tokenize");
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *bench = NULL, *fmt_name = NULL;
    enum tokenize_mode mode = MODE_TEXT;
    double bench_time = BENCH_TIME_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            tokenize_usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(a, "--jsonl")) {
            mode = MODE_JSONL;
        } else if (!strcmp(a, "--chat")) {
            mode = MODE_CHAT;
        } else if (!strcmp(a, "--chat-format") && i + 1 < argc) {
            fmt_name = argv[++i];
            if (!dsv_chat_format_find(fmt_name)) {
                cli_fail("tokenize", "%s", dsv_errmsg());
                return 2;
            }
        } else if (!strcmp(a, "--bench") && i + 1 < argc) {
            mode = MODE_BENCH;
            bench = argv[++i];
        } else if (!strcmp(a, "--bench-time") && i + 1 < argc) {
            char *end;
            bench_time = strtod(argv[++i], &end);
            if (*end || !(bench_time >= 0)) {
                cli_fail("tokenize", "--bench-time: '%s' is not a number of seconds", argv[i]);
                return 2;
            }
        } else {
            cli_fail("tokenize", "unknown or incomplete option '%s' (see dsv32 tokenize --help)", a);
            return 2;
        }
    }
    if (!model) {
        cli_fail("tokenize", "-m MODEL is required (see dsv32 tokenize --help)");
        return 2;
    }
    const dsv_chat_format *fmt = NULL;
    if (mode == MODE_CHAT && !(fmt = cli_chat_format("tokenize", fmt_name, model))) return 1;
    dsv_tokenizer *tok;
    double t0 = dsv_time();
    if (dsv_tokenizer_open(&tok, model)) return cli_fail("tokenize", "%s", dsv_errmsg());
    double load_s = dsv_time() - t0;
    int rc;
    switch (mode) {
    case MODE_JSONL: rc = tokenize_jsonl(tok); break;
    case MODE_CHAT: rc = tokenize_chat(tok, fmt); break;
    case MODE_BENCH: rc = tokenize_bench(tok, bench, bench_time, load_s); break;
    default: rc = tokenize_text(tok); break;
    }
    dsv_tokenizer_close(tok);
    return rc;
}

/* ---- detokenize ---------------------------------------------------------- */

static void detokenize_usage(FILE *f) {
    fprintf(f, "usage: dsv32 detokenize -m MODEL [options]\n"
               "Reads token ids separated by commas, spaces, newlines or brackets from stdin and\n"
               "writes their text, byte for byte, with no newline added.\n"
               "\n"
               "  -m, --model PATH     model directory or tokenizer.json file (required)\n"
               "      --skip-special   leave out special tokens such as BOS and EOS\n"
               "                       (default: off; chat markers and <think> are not special)\n"
               "  -h, --help           show this help\n");
}

/* Parses the ids in s into a malloc'd array. */
static int parse_ids(char *s, int32_t **out, size_t *n) {
    size_t cap = 64, k = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    const char *sep = ", \t\r\n[]";
    for (char *p = s + strspn(s, sep); *p; p += strspn(p, sep)) {
        size_t l = strcspn(p, sep);
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end != p + l || l == 0 || errno || v < 0 || v > INT32_MAX) {
            int rc = dsv_error(DSV_ERR_ARG, "stdin: '%.*s' is not a token id", (int)(l < 40 ? l : 40), p);
            free(ids);
            return rc;
        }
        if (k == cap) {
            int32_t *b = realloc(ids, 2 * cap * sizeof *b);
            if (!b) {
                free(ids);
                return dsv_error(DSV_ERR_NOMEM, "out of memory");
            }
            ids = b;
            cap *= 2;
        }
        ids[k++] = (int32_t)v;
        p += l;
    }
    *out = ids;
    *n = k;
    return DSV_OK;
}

int cmd_detokenize(int argc, char **argv) {
    const char *model = NULL;
    int skip = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            detokenize_usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(a, "--skip-special")) {
            skip = 1;
        } else {
            cli_fail("detokenize", "unknown or incomplete option '%s' (see dsv32 detokenize --help)", a);
            return 2;
        }
    }
    if (!model) {
        cli_fail("detokenize", "-m MODEL is required (see dsv32 detokenize --help)");
        return 2;
    }
    size_t len, n = 0, out_len = 0;
    char *in;
    if (dsv_read_file("-", TEXT_MAX_BYTES, &in, &len)) return cli_fail("detokenize", "%s", dsv_errmsg());
    int32_t *ids = NULL;
    char *out = NULL;
    dsv_tokenizer *tok = NULL;
    int rc = parse_ids(in, &ids, &n);
    free(in);
    if (!rc) rc = dsv_tokenizer_open(&tok, model);
    if (!rc && dsv_detokenize(tok, ids, n, skip, NULL, 0, &out_len) == DSV_ERR_ARG) rc = DSV_ERR_ARG;
    if (!rc && !(out = malloc(out_len + 1))) rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
    if (!rc) rc = dsv_detokenize(tok, ids, n, skip, out, out_len, &out_len);
    if (!rc) fwrite(out, 1, out_len, stdout);
    free(out);
    free(ids);
    dsv_tokenizer_close(tok);
    if (rc) return cli_fail("detokenize", "%s", dsv_errmsg());
    return finish_output("detokenize");
}
