/* fixture.c: test model directories (see fixture.h). */
#include "fixture.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

/* GPT-2's byte-level alphabet: printable bytes stand for themselves, the
 * others for code points from 256 up, in byte order. */
static unsigned byte_char(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return (unsigned)b;
    unsigned n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + n;
}

static void put_utf8(FILE *f, unsigned cp) {
    if (cp == '"' || cp == '\\') fprintf(f, "\\%c", (char)cp);
    else if (cp < 0x80) fputc((int)cp, f);
    else if (cp < 0x800) { fputc(0xc0 | (int)(cp >> 6), f); fputc(0x80 | (int)(cp & 63), f); }
    else { fputc(0xe0 | (int)(cp >> 12), f); fputc(0x80 | (int)((cp >> 6) & 63), f); fputc(0x80 | (int)(cp & 63), f); }
}

static const char *specials[][2] = {
    {"<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "true"},
    {"<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "true"},
    {"<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>", "true"},
    {"<\xef\xbd\x9cUser\xef\xbd\x9c>", "true"},
    {"<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>", "true"},
    {"<think>", "false"},
    {"</think>", "false"},
};

static int special_id(int k) { return k < 3 ? k : 256 + k; } /* 0,1,2 then 259.. */

const char *fixture_text_model(void) {
    static char dir[1024];
    char path[1200], src[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/textmodel", test_tmpdir());
    mkdir(dir, 0700);
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "conformance/public_sparse_bf16/hf/%s", files[i]);
        REQUIRE(realpath(test_shared(rel), src));
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        REQUIRE(symlink(src, path) == 0);
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[", f);
    for (int k = 0; k < 7; k++)
        fprintf(f, "%s{\"id\":%d,\"content\":\"%s\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
                   "\"normalized\":false,\"special\":%s}", k ? "," : "", special_id(k), specials[k][0], specials[k][1]);
    fputs("],\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},"
          "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
          "{\"Regex\":\"\\\\s+|\\\\S+\"},\"behavior\":\"Isolated\",\"invert\":false},"
          "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]},"
          "\"post_processor\":null,"
          "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
          "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
          "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"vocab\":{", f);
    for (int k = 0; k < 3; k++) fprintf(f, "\"%s\":%d,", specials[k][0], k);
    for (int b = 0; b < 256; b++) {
        fputc('"', f);
        put_utf8(f, byte_char(b));
        fprintf(f, "\":%d%s", 3 + b, b < 255 ? "," : "");
    }
    fputs("},\"merges\":[]}}\n", f);
    REQUIRE(fclose(f) == 0);
    REQUIRE(realpath(test_shared("tokenizer/tokenizer_config.json"), src));
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    REQUIRE(symlink(src, path) == 0);
    return dir;
}
