/* pyjson.c: Python's json.dumps (see pyjson.h), for the chat formats'
 * prompts: the V3.2-Exp tool block (ensure_ascii=True) and the V3.2 DSML
 * encoder (ensure_ascii=False) must write JSON exactly as DeepSeek's Python
 * did, separators, escapes and float digits included. */
#include "pyjson.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- json.dumps emulation (default arguments: ensure_ascii=True,
 * separators (", ", ": "), keys in the given order). */

/* Decodes one UTF-8 character at s[0..n); returns its length and stores the
 * code point, or returns 1 and stores U+FFFD for an invalid byte. */
static size_t utf8_decode(const unsigned char *s, size_t n, unsigned *cp) {
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (len == 1) { *cp = c; return 1; }
    if (len == 0 || len > n) { *cp = 0xFFFD; return 1; }
    unsigned v = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) { *cp = 0xFFFD; return 1; }
        v = v << 6 | (s[i] & 0x3F);
    }
    /* Reject overlong forms, surrogates and values past U+10FFFF. */
    static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min_cp[len] || (v >= 0xD800 && v < 0xE000) || v > 0x10FFFF) { *cp = 0xFFFD; return 1; }
    *cp = v;
    return len;
}

/* json.dumps of a string; ascii = ensure_ascii. With ensure_ascii=False
 * Python escapes only '"', '\\' and control characters, and writes every
 * other byte as it is. */
static void pyjson_string(dsv_buf *b, const char *s, size_t n, int ascii) {
    const unsigned char *p = (const unsigned char *)s;
    char tmp[16];
    dsv_buf_add(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned cp;
        if (ascii) i += utf8_decode(p + i, n - i, &cp);
        else cp = p[i++];
        switch (cp) {
        case '"': dsv_buf_add(b, "\\\"", 2); continue;
        case '\\': dsv_buf_add(b, "\\\\", 2); continue;
        case '\n': dsv_buf_add(b, "\\n", 2); continue;
        case '\r': dsv_buf_add(b, "\\r", 2); continue;
        case '\t': dsv_buf_add(b, "\\t", 2); continue;
        case '\b': dsv_buf_add(b, "\\b", 2); continue;
        case '\f': dsv_buf_add(b, "\\f", 2); continue;
        }
        if (!ascii) {
            if (cp < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", cp);
                dsv_buf_adds(b, tmp);
            } else {
                char c = (char)cp;
                dsv_buf_add(b, &c, 1);
            }
            continue;
        }
        /* Python escapes everything outside ' '..'~' (DEL too), lowercase hex,
         * astral code points as a surrogate pair. */
        if (cp >= 0x20 && cp <= 0x7E) {
            char c = (char)cp;
            dsv_buf_add(b, &c, 1);
        } else if (cp < 0x10000) {
            snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            dsv_buf_adds(b, tmp);
        } else {
            unsigned v = cp - 0x10000;
            snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            dsv_buf_adds(b, tmp);
        }
    }
    dsv_buf_add(b, "\"", 1);
}

/* Python's repr(float): the shortest digits that read back to d, in fixed
 * notation when the decimal exponent is in [-4, 16), else as 1.5e+300. */
static void pyjson_float(dsv_buf *b, double d) {
    char tmp[64], digits[32];
    int prec = 1;
    /* json.dumps writes these as JavaScript does (1e400 reads as inf). */
    if (isnan(d)) { dsv_buf_adds(b, "NaN"); return; }
    if (isinf(d)) { dsv_buf_adds(b, d < 0 ? "-Infinity" : "Infinity"); return; }
    for (; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    /* tmp is "[-]D[.DDD]e[+-]XX": gather the digits and the exponent. */
    const char *p = tmp;
    if (*p == '-') { dsv_buf_add(b, "-", 1); p++; }
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int exp10 = atoi(p + 1);
    if (exp10 < -4 || exp10 >= 16) {
        dsv_buf_add(b, digits, 1);
        if (nd > 1) { dsv_buf_add(b, ".", 1); dsv_buf_add(b, digits + 1, (size_t)nd - 1); }
        snprintf(tmp, sizeof tmp, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
        dsv_buf_adds(b, tmp);
    } else if (exp10 < 0) {
        dsv_buf_add(b, "0.", 2);
        for (int i = 0; i < -exp10 - 1; i++) dsv_buf_add(b, "0", 1);
        dsv_buf_add(b, digits, (size_t)nd);
    } else if (exp10 + 1 < nd) {
        dsv_buf_add(b, digits, (size_t)exp10 + 1);
        dsv_buf_add(b, ".", 1);
        dsv_buf_add(b, digits + exp10 + 1, (size_t)(nd - exp10 - 1));
    } else {
        dsv_buf_add(b, digits, (size_t)nd);
        for (int i = nd; i < exp10 + 1; i++) dsv_buf_add(b, "0", 1);
        dsv_buf_add(b, ".0", 2);
    }
}

static void pyjson_dump(dsv_buf *b, const cJSON *v, int ascii) {
    if (cJSON_IsNull(v)) dsv_buf_adds(b, "null");
    else if (cJSON_IsTrue(v)) dsv_buf_adds(b, "true");
    else if (cJSON_IsFalse(v)) dsv_buf_adds(b, "false");
    else if (cJSON_IsString(v)) pyjson_string(b, v->valuestring, strlen(v->valuestring), ascii);
    else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        /* cJSON keeps no int/float distinction. Integral values below 1e16
         * print as Python ints (schemas say "minimum": 1, rarely 1.0);
         * the rest as Python floats. */
        if (d == 0) dsv_buf_adds(b, "0");
        else if (d == floor(d) && fabs(d) < 1e16) {
            char tmp[32];
            snprintf(tmp, sizeof tmp, "%.0f", d);
            dsv_buf_adds(b, tmp);
        } else {
            pyjson_float(b, d);
        }
    } else if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        int obj = cJSON_IsObject(v);
        dsv_buf_add(b, obj ? "{" : "[", 1);
        for (const cJSON *c = v->child; c; c = c->next) {
            if (c != v->child) dsv_buf_add(b, ", ", 2);
            if (obj) { pyjson_string(b, c->string, strlen(c->string), ascii); dsv_buf_add(b, ": ", 2); }
            pyjson_dump(b, c, ascii);
        }
        dsv_buf_add(b, obj ? "}" : "]", 1);
    }
}

void dsv_pyjson_dump(dsv_buf *b, const cJSON *v, int ensure_ascii) { pyjson_dump(b, v, ensure_ascii); }
void dsv_pyjson_string(dsv_buf *b, const char *s, size_t n, int ensure_ascii) { pyjson_string(b, s, n, ensure_ascii); }
