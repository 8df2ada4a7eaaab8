/* fuzz.h: what the libFuzzer targets in this folder share. Each target is
 * one file, fuzz_NAME.c, built and run by `make fuzz` (see the Makefile's
 * FUZZ_TARGETS); its seeds are in seeds/NAME/ and inputs that once crashed
 * it in tests/data/fuzz/NAME/. A target feeds one parser of outside input
 * and checks the library's promises: a failure has a status and a message,
 * and what succeeds is consistent. ASan and UBSan (no recovery) catch the
 * rest. */
#ifndef DSV_FUZZ_H
#define DSV_FUZZ_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* A broken promise is a crash, so libFuzzer saves the input. */
static inline void fuzz_check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz: broken promise: %s\n", what);
        abort();
    }
}

/* A private, NUL-terminated copy of exactly n bytes: libFuzzer's buffer may
 * sit inside a larger allocation, which would hide reads past the end. */
static inline char *fuzz_copy(const unsigned char *data, size_t n) {
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, data, n);
        s[n] = 0;
    }
    return s;
}

/* A failed call returns a negative status and leaves a message. */
static inline void fuzz_check_status(int rc) {
    fuzz_check(rc == DSV_OK || (rc < 0 && dsv_errmsg()[0]), "a failure has a status and a message");
}

#endif
