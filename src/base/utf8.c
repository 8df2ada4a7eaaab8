/* utf8.c: UTF-8 validation, decoding and encoding (see utf8.h). Validation
 * runs once over every input the tokenizer sees, so ASCII is checked eight
 * bytes at a time. */
#include "utf8.h"

#include <string.h>

int dsv_utf8_lead(unsigned char lead, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) {
        if (lead == 0xE0) *lo = 0xA0;       /* shorter forms are overlong */
        if (lead == 0xED) *hi = 0x9F;       /* U+D800..U+DFFF are surrogates */
        return 3;
    }
    if (lead >= 0xF0 && lead <= 0xF4) {
        if (lead == 0xF0) *lo = 0x90;       /* overlong */
        if (lead == 0xF4) *hi = 0x8F;       /* above U+10FFFF */
        return 4;
    }
    return 0;
}

size_t dsv_utf8_decode(const char *s, size_t n, uint32_t *cp) {
    const unsigned char *p = (const unsigned char *)s;
    unsigned char lo, hi;
    if (n == 0) return 0;
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    int len = dsv_utf8_lead(p[0], &lo, &hi);
    if (len == 0 || (size_t)len > n || p[1] < lo || p[1] > hi) return 0;
    uint32_t c = p[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (p[i] & 0x3F);
    }
    *cp = c;
    return (size_t)len;
}

size_t dsv_utf8_valid_prefix(const char *s, size_t n) {
    size_t i = 0;
    uint32_t cp;
    while (i < n) {
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        size_t len = dsv_utf8_decode(s + i, n - i, &cp);
        if (len == 0) break;
        i += len;
    }
    return i;
}

size_t dsv_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t dsv_utf8_cut(const char *s, size_t n, size_t max) {
    if (n <= max) return n;
    /* s[max] is the first byte dropped: back off over continuation bytes
     * (at most three) so that no character is split. */
    size_t k = max;
    while (k > 0 && max - k < 3 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return ((unsigned char)s[k] & 0xC0) == 0x80 ? max : k;
}
