/* text.c: growable byte buffer and the scanning helpers of text.h. */
#include "text.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

int dsv_buf_add(dsv_buf *b, const char *s, size_t n) {
    if (b->failed) return DSV_ERR_NOMEM;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) { b->failed = 1; return DSV_ERR_NOMEM; }
        b->data = p;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return DSV_OK;
}

int dsv_buf_adds(dsv_buf *b, const char *s) { return s ? dsv_buf_add(b, s, strlen(s)) : DSV_OK; }

void dsv_buf_consume(dsv_buf *b, size_t n) {
    DSV_ASSERT(n <= b->len);
    if (!n) return;
    memmove(b->data, b->data + n, b->len - n + 1);
    b->len -= n;
}

void dsv_buf_clear(dsv_buf *b) {
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

char *dsv_buf_take(dsv_buf *b) {
    char *p = b->failed ? NULL : b->data;
    if (b->failed) free(b->data);
    else if (!p) p = calloc(1, 1);
    *b = (dsv_buf){0};
    return p;
}

void dsv_buf_free(dsv_buf *b) {
    free(b->data);
    *b = (dsv_buf){0};
}

const char *dsv_memfind(const char *hay, size_t hlen, const char *needle, size_t nlen) {
    if (nlen == 0 || hlen < nlen) return NULL;
    const char *end = hay + (hlen - nlen);
    for (const char *p = hay; p <= end; p++) {
        p = memchr(p, needle[0], (size_t)(end - p) + 1);
        if (!p) return NULL;
        if (!memcmp(p, needle, nlen)) return p;
    }
    return NULL;
}

size_t dsv_partial_suffix(const char *s, size_t n, const char *const *pats, int n_pat) {
    size_t best = 0;
    for (int i = 0; i < n_pat; i++) {
        size_t pl = strlen(pats[i]);
        /* Longest first, so the first hit for this pattern is its best. */
        for (size_t k = DSV_MIN(n, pl - 1); k > best; k--)
            if (!memcmp(s + n - k, pats[i], k)) { best = k; break; }
    }
    return best;
}

size_t dsv_utf8_complete(const char *s, size_t n) {
    /* Walk back over at most 3 continuation bytes to the lead byte. */
    size_t i = n, back = 0;
    while (i > 0 && back < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) { i--; back++; }
    if (i == 0) return n;
    unsigned char c = (unsigned char)s[i - 1];
    size_t need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
    /* A lead byte whose sequence is still short: hold it and its tail. */
    if (need && n - (i - 1) < need) return i - 1;
    return n;
}
