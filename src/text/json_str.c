/* json_str.c: JSON strings, both ways. Reading: pulls one string member
 * out of a JSON object with its exact length (dsv_json_get_string, declared
 * in include/dsv32_util.h), a small recursive-descent reader: members before
 * the wanted one are skipped structurally, strings are decoded per RFC 8259
 * (surrogate pairs joined, lone surrogates refused since UTF-8 cannot hold
 * them); the same reader finds strings holding NUL (dsv_json_nul_strings).
 * Writing: the one string-literal writer of the server and the commands
 * (dsv_json_str, dsv_json_quote), which validates UTF-8 as it copies, so no
 * caller has to. */
#include "dsv32_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/utf8.h"
#include "base/util.h"
#include "text.h"

#define MAX_DEPTH 512

struct reader {
    const char *s;
    size_t n, i;
};

static void skip_ws(struct reader *r) {
    while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
        r->i++;
}

static int hex4(struct reader *r, unsigned *v) {
    if (r->n - r->i < 4) return 0;
    *v = 0;
    for (int k = 0; k < 4; k++) {
        char c = r->s[r->i++];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
        if (d == 16) return 0;
        *v = *v << 4 | d;
    }
    return 1;
}

/* Reads a string starting at its opening quote. With out non-NULL, writes
 * the decoded bytes there (never more than the quoted source's length). */
static int read_string(struct reader *r, char *out, size_t *len) {
    size_t k = 0;
    if (r->i >= r->n || r->s[r->i] != '"') return dsv_error(DSV_ERR_FORMAT, "expected a string at byte %zu", r->i);
    r->i++;
    for (;;) {
        if (r->i >= r->n) return dsv_error(DSV_ERR_FORMAT, "unterminated string");
        unsigned char c = (unsigned char)r->s[r->i++];
        if (c == '"') break;
        if (c < 0x20) return dsv_error(DSV_ERR_FORMAT, "control character in a string at byte %zu", r->i - 1);
        if (c != '\\') {
            if (out) out[k] = (char)c;
            k++;
            continue;
        }
        if (r->i >= r->n) return dsv_error(DSV_ERR_FORMAT, "unterminated string");
        char e = r->s[r->i++], ch;
        switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            unsigned u, lo;
            if (!hex4(r, &u)) return dsv_error(DSV_ERR_FORMAT, "bad \\u escape at byte %zu", r->i);
            if (u >= 0xDC00 && u <= 0xDFFF) return dsv_error(DSV_ERR_FORMAT, "lone surrogate \\u%04X", u);
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (r->n - r->i < 6 || r->s[r->i] != '\\' || r->s[r->i + 1] != 'u')
                    return dsv_error(DSV_ERR_FORMAT, "lone surrogate \\u%04X", u);
                r->i += 2;
                if (!hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return dsv_error(DSV_ERR_FORMAT, "lone surrogate \\u%04X", u);
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            char buf[4];
            size_t l = dsv_utf8_encode(u, buf);
            if (out) memcpy(out + k, buf, l);
            k += l;
            continue;
        }
        default: return dsv_error(DSV_ERR_FORMAT, "bad escape \\%c at byte %zu", e, r->i - 1);
        }
        if (out) out[k] = ch;
        k++;
    }
    *len = k;
    return DSV_OK;
}

static int skip_value(struct reader *r, int depth) {
    size_t len;
    skip_ws(r);
    if (r->i >= r->n) return dsv_error(DSV_ERR_FORMAT, "unexpected end of JSON");
    if (depth > MAX_DEPTH) return dsv_error(DSV_ERR_FORMAT, "JSON nested too deeply");
    char c = r->s[r->i];
    if (c == '"') return read_string(r, NULL, &len);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        r->i++;
        skip_ws(r);
        if (r->i < r->n && r->s[r->i] == close) {
            r->i++;
            return DSV_OK;
        }
        for (;;) {
            int rc;
            if (c == '{') {
                skip_ws(r);
                if ((rc = read_string(r, NULL, &len))) return rc;
                skip_ws(r);
                if (r->i >= r->n || r->s[r->i++] != ':')
                    return dsv_error(DSV_ERR_FORMAT, "expected ':' at byte %zu", r->i - 1);
            }
            if ((rc = skip_value(r, depth + 1))) return rc;
            skip_ws(r);
            if (r->i >= r->n) return dsv_error(DSV_ERR_FORMAT, "unexpected end of JSON");
            char d = r->s[r->i++];
            if (d == close) return DSV_OK;
            if (d != ',') return dsv_error(DSV_ERR_FORMAT, "expected ',' or '%c' at byte %zu", close, r->i - 1);
        }
    }
    /* A number or a literal. */
    size_t start = r->i;
    while (r->i < r->n && strchr("+-.0123456789Eaeflnrstu", r->s[r->i]) && r->s[r->i]) r->i++;
    if (r->i == start) return dsv_error(DSV_ERR_FORMAT, "unexpected '%c' at byte %zu", c, r->i);
    return DSV_OK;
}

int dsv_json_get_string(const char *json, size_t len, const char *key, char **out, size_t *out_len) {
    struct reader r = {json, len, 0};
    size_t klen = strlen(key), l;
    /* Decoded strings are never longer than the JSON, so one buffer of its
     * size holds any member name, and then the value. */
    char *buf = malloc(len + 1);
    int rc = DSV_OK;
    if (!buf) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    skip_ws(&r);
    if (r.i >= r.n || r.s[r.i++] != '{') rc = dsv_error(DSV_ERR_FORMAT, "expected a JSON object");
    skip_ws(&r);
    if (!rc && r.i < r.n && r.s[r.i] == '}') rc = dsv_error(DSV_ERR_FORMAT, "no member \"%s\"", key);
    while (!rc) {
        skip_ws(&r);
        if ((rc = read_string(&r, buf, &l))) break;
        int match = l == klen && !memcmp(buf, key, klen);
        skip_ws(&r);
        if (r.i >= r.n || r.s[r.i++] != ':') {
            rc = dsv_error(DSV_ERR_FORMAT, "expected ':' at byte %zu", r.i - 1);
            break;
        }
        if (match) {
            skip_ws(&r);
            if (r.i >= r.n || r.s[r.i] != '"') {
                rc = dsv_error(DSV_ERR_FORMAT, "member \"%s\" is not a string", key);
                break;
            }
            if ((rc = read_string(&r, buf, &l))) break;
            buf[l] = 0;
            *out = buf;
            *out_len = l;
            return DSV_OK;
        }
        if ((rc = skip_value(&r, 1))) break;
        skip_ws(&r);
        if (r.i >= r.n) rc = dsv_error(DSV_ERR_FORMAT, "unexpected end of JSON");
        else if (r.s[r.i] == '}') rc = dsv_error(DSV_ERR_FORMAT, "no member \"%s\"", key);
        else if (r.s[r.i++] != ',') rc = dsv_error(DSV_ERR_FORMAT, "expected ',' or '}' at byte %zu", r.i - 1);
    }
    free(buf);
    return rc;
}

/* ---- Strings holding NUL -------------------------------------------------- */

struct nul_walk {
    struct reader r;
    char path[256];
    int (*fn)(void *user, const char *path, int is_name);
    void *user;
    char *buf; /* decoded strings (never longer than the JSON) */
};

/* Reads a string, and reports it when it holds a NUL. */
static int nul_string(struct nul_walk *w, size_t at, int is_name, size_t *len) {
    int rc = read_string(&w->r, w->buf, len);
    if (rc) return rc;
    if (memchr(w->buf, 0, *len)) {
        w->path[at < sizeof w->path ? at : sizeof w->path - 1] = 0;
        return w->fn(w->user, w->path, is_name);
    }
    return 0;
}

/* Appends to the path at `at` (cut short when it does not fit; only a
 * message needs it). */
static size_t path_add(struct nul_walk *w, size_t at, const char *fmt, const char *s, size_t n, long i) {
    if (at >= sizeof w->path - 1) return at;
    int k = s ? snprintf(w->path + at, sizeof w->path - at, fmt, (int)DSV_MIN(n, 64), s)
              : snprintf(w->path + at, sizeof w->path - at, fmt, i);
    return k < 0 ? at : DSV_MIN(at + (size_t)k, sizeof w->path - 1);
}

static int nul_value(struct nul_walk *w, size_t at, int depth) {
    struct reader *r = &w->r;
    size_t len;
    int rc;
    skip_ws(r);
    if (r->i >= r->n) return dsv_error(DSV_ERR_FORMAT, "unexpected end of JSON");
    if (depth > MAX_DEPTH) return dsv_error(DSV_ERR_FORMAT, "JSON nested too deeply");
    char c = r->s[r->i];
    if (c == '"') return nul_string(w, at, 0, &len);
    if (c != '{' && c != '[') return skip_value(r, depth);
    char close = c == '{' ? '}' : ']';
    r->i++;
    skip_ws(r);
    if (r->i < r->n && r->s[r->i] == close) {
        r->i++;
        return 0;
    }
    for (long i = 0;; i++) {
        size_t sub;
        if (c == '{') {
            skip_ws(r);
            size_t start = r->i;
            if ((rc = read_string(r, w->buf, &len))) return rc;
            sub = path_add(w, at, at ? ".%.*s" : "%.*s", w->buf, len, 0);
            if (memchr(w->buf, 0, len)) {
                r->i = start;
                if ((rc = nul_string(w, sub, 1, &len))) return rc;
            }
            skip_ws(r);
            if (r->i >= r->n || r->s[r->i++] != ':')
                return dsv_error(DSV_ERR_FORMAT, "expected ':' at byte %zu", r->i - 1);
        } else {
            sub = path_add(w, at, "[%ld]", NULL, 0, i);
        }
        if ((rc = nul_value(w, sub, depth + 1))) return rc;
        skip_ws(r);
        if (r->i >= r->n) return dsv_error(DSV_ERR_FORMAT, "unexpected end of JSON");
        char d = r->s[r->i++];
        if (d == close) return 0;
        if (d != ',') return dsv_error(DSV_ERR_FORMAT, "expected ',' or '%c' at byte %zu", close, r->i - 1);
    }
}

int dsv_json_nul_strings(const char *json, size_t len, int (*fn)(void *user, const char *path, int is_name),
                         void *user) {
    /* Without an escaped NUL there is nothing to find. */
    int any = 0;
    for (size_t i = 0; i + 6 <= len && !any; i++) any = !memcmp(json + i, "\\u0000", 6);
    if (!any) return 0;
    struct nul_walk w = {.r = {json, len, 0}, .fn = fn, .user = user};
    if (!(w.buf = malloc(len + 1))) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    int rc = nul_value(&w, 0, 1);
    free(w.buf);
    return rc;
}

size_t dsv_json_depth(const char *json, size_t len) {
    size_t depth = 0, max = 0;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = json[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max) max = depth;
        } else if ((c == ']' || c == '}') && depth) {
            depth--;
        }
    }
    return max;
}

/* ---- Writing -------------------------------------------------------------- */

void dsv_json_str(dsv_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    dsv_buf_add(b, "\"", 1);
    size_t run = 0; /* bytes copied as they are, flushed in one append */
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            run++;
            i++;
            continue;
        }
        if (c >= 0x80) {
            uint32_t cp;
            size_t k = dsv_utf8_decode(s + i, n - i, &cp);
            if (k) {
                run += k;
                i += k;
                continue;
            }
        }
        dsv_buf_add(b, s + i - run, run);
        run = 0;
        i++;
        if (c >= 0x80) {
            dsv_buf_add(b, "\xEF\xBF\xBD", 3); /* U+FFFD for a byte that begins no character */
            continue;
        }
        char esc[6] = {'\\', 0};
        size_t len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0'; esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
            len = 6;
        }
        dsv_buf_add(b, esc, len);
    }
    dsv_buf_add(b, s + n - run, run);
    dsv_buf_add(b, "\"", 1);
}

char *dsv_json_quote(const char *s, size_t n, size_t *out_len) {
    dsv_buf b = {0};
    dsv_json_str(&b, s, n);
    const size_t len = b.len;
    char *out = dsv_buf_take(&b);
    if (!out) {
        dsv_error(DSV_ERR_NOMEM, "out of memory quoting a JSON string");
        return NULL;
    }
    if (out_len) *out_len = len;
    return out;
}
