/* utf8.h: UTF-8 validation and encoding, by the rules of Unicode Table 3-7
 * (no overlong forms, no surrogates, nothing above U+10FFFF), which are also
 * the rules PCRE2 checks. */
#ifndef DSV_UTF8_H
#define DSV_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the longest prefix of s[0..n) made of well-formed characters.
 * When it is less than n, s[result] begins no well-formed character (an
 * ill-formed byte, or a sequence cut short by the end of the input). */
size_t dsv_utf8_valid_prefix(const char *s, size_t n);

/* Decodes one well-formed character at s[0..n): returns its length (1-4) and
 * sets *cp, or returns 0 if s does not begin with one. */
size_t dsv_utf8_decode(const char *s, size_t n, uint32_t *cp);

/* The longest prefix of s[0..n) of at most max bytes that does not end
 * inside a character: where a string must be cut to fit, cut here. */
size_t dsv_utf8_cut(const char *s, size_t n, size_t max);

/* Writes the UTF-8 form of cp (at most U+10FFFF) to out; returns its length. */
size_t dsv_utf8_encode(uint32_t cp, char out[4]);

/* The range the second byte of a sequence led by `lead` must fall in; later
 * continuation bytes are always 0x80..0xBF. Returns the sequence length
 * (2-4), or 0 if lead cannot begin a multi-byte character. */
int dsv_utf8_lead(unsigned char lead, unsigned char *lo, unsigned char *hi);

#endif
