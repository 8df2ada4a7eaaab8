/* gguf.h: a memory-mapped, fully validated reader and a streaming writer for
 * GGUF files (the format of llama.cpp), single or split
 * (NAME-00001-of-0000N.gguf).
 *
 * The format (version 2 and 3; little-endian only): "GGUF", u32 version,
 * u64 tensor count, u64 key-value count; then the key-values (string key,
 * u32 value type, value); then per tensor its name, u32 n_dims, n_dims u64
 * extents (ne[0] is the innermost, contiguous one: the reverse of a
 * row-major shape), u32 ggml type and a u64 offset into the data section;
 * then padding to general.alignment (default 32), then the data section.
 * A string is a u64 byte count and the bytes (no terminator); an array is a
 * u32 element type, a u64 count and the elements.
 *
 * Reader: opening reads and checks every header byte and never touches
 * tensor data. Every count, length and offset is checked against the bytes
 * that remain before it is used or multiplied; tensor extents are checked
 * against the type's block size and their byte sizes for overflow; every
 * tensor must lie inside the data section at a multiple of the alignment and
 * no two may overlap; duplicate keys and tensor names are refused, and so are
 * nested arrays (llama.cpp's reader refuses them too). Types are known by
 * their block geometry, so a file of a type this engine cannot compute with
 * still opens: the model loader refuses it, naming the tensor.
 *
 * Split sets: the first file holds the metadata and split.count; the others
 * are found by name (the -00001-of- part with each number) and must carry
 * the matching split.no and split.count. Tensors of all files form one
 * namespace.
 *
 * All functions that can fail return a dsv_status and set dsv_errmsg(); the
 * message names the file and, where one is at fault, the key or tensor. */
#ifndef DSV_GGUF_H
#define DSV_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"
#include "kernels/quant.h" /* the ggml type codes and block sizes */

/* GGUF value types (the on-disk codes). */
enum {
    DSV_GGUF_U8 = 0, DSV_GGUF_I8 = 1, DSV_GGUF_U16 = 2, DSV_GGUF_I16 = 3,
    DSV_GGUF_U32 = 4, DSV_GGUF_I32 = 5, DSV_GGUF_F32 = 6, DSV_GGUF_BOOL = 7,
    DSV_GGUF_STRING = 8, DSV_GGUF_ARRAY = 9, DSV_GGUF_U64 = 10, DSV_GGUF_I64 = 11,
    DSV_GGUF_F64 = 12, DSV_GGUF_NTYPES
};

#define DSV_GGUF_MAX_DIMS 4
/* ggml's GGML_MAX_NAME: a longer tensor name cannot be loaded by llama.cpp. */
#define DSV_GGUF_MAX_NAME 63
#define DSV_GGUF_DEFAULT_ALIGNMENT 32

typedef struct dsv_gguf_tensor {
    const char *name;                 /* owned by the dsv_gguf */
    uint32_t type;                    /* dsv_ggml_type */
    int n_dims;                       /* 1..4 */
    int64_t ne[DSV_GGUF_MAX_DIMS];    /* ne[0] innermost; unused dims are 1 */
    const void *data;                 /* into the mapping, at the file's alignment */
    size_t nbytes;
    int file;
} dsv_gguf_tensor;

typedef struct dsv_gguf dsv_gguf;

/* Opens a GGUF file, or a split set given its first file. Errors:
 * DSV_ERR_ARG, DSV_ERR_IO, DSV_ERR_FORMAT (anything malformed),
 * DSV_ERR_UNSUPPORTED (version 1, a big-endian file), DSV_ERR_NOMEM. */
int dsv_gguf_open(dsv_gguf **out, const char *path);
/* Validates an image already in memory (borrowed until close); no split. */
int dsv_gguf_open_memory(dsv_gguf **out, const void *buf, size_t size, const char *name);
void dsv_gguf_close(dsv_gguf *g);

int dsv_gguf_version(const dsv_gguf *g);
uint32_t dsv_gguf_alignment(const dsv_gguf *g);
int dsv_gguf_file_count(const dsv_gguf *g);
const char *dsv_gguf_file_path(const dsv_gguf *g, int file);

/* Tensors: all files', in file order then header order. */
int dsv_gguf_count(const dsv_gguf *g);
const dsv_gguf_tensor *dsv_gguf_at(const dsv_gguf *g, int i);
const dsv_gguf_tensor *dsv_gguf_find(const dsv_gguf *g, const char *name);

/* Metadata of the first file (the one that describes the model). Index of a
 * key or -1; then its key, type, and for an array its element type and
 * count. */
int dsv_gguf_kv_count(const dsv_gguf *g);
int dsv_gguf_kv_find(const dsv_gguf *g, const char *key);
const char *dsv_gguf_kv_key(const dsv_gguf *g, int i);
int dsv_gguf_kv_type(const dsv_gguf *g, int i);
int dsv_gguf_arr_type(const dsv_gguf *g, int i);
uint64_t dsv_gguf_arr_n(const dsv_gguf *g, int i);
/* The bytes of kv i's value as the file stores them (a string with its
 * length, an array's elements), for comparing two files' metadata. */
const void *dsv_gguf_kv_bytes(const dsv_gguf *g, int i, size_t *len);

/* Typed getters by key. Each returns DSV_OK and sets *out, or DSV_ERR_MODEL
 * (with a message naming the key) if the key is absent or of another type.
 * get_int accepts any integer type and range-checks into [lo, hi]. The
 * string is not NUL-terminated: *len gets its length. */
int dsv_gguf_get_int(const dsv_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out);
int dsv_gguf_get_f32(const dsv_gguf *g, const char *key, float *out);   /* F32 or F64 */
int dsv_gguf_get_bool(const dsv_gguf *g, const char *key, int *out);
int dsv_gguf_get_str(const dsv_gguf *g, const char *key, const char **s, size_t *len);
/* Elements of array kv i: a string (pointer into the mapping + length), or
 * a number converted to double (any numeric element type). Index checked by
 * the caller against dsv_gguf_arr_n (asserted). */
const char *dsv_gguf_arr_str(const dsv_gguf *g, int i, uint64_t k, size_t *len);
double dsv_gguf_arr_num(const dsv_gguf *g, int i, uint64_t k);

/* The three Split regexes of DeepSeek-V3's pre-tokenizer, applied in turn
 * before a ByteLevel step without its own regex: what the GGUF name
 * tokenizer.ggml.pre = "deepseek-v3" stands for (quantize.c). */
extern const char *const dsv_deepseek_v3_pretok[3];

/* ---- writer ------------------------------------------------------------ */

/* Writes one GGUF file (version 3, alignment 32): set the metadata, add the
 * tensors (name, type, extents in ggml order), begin, put each tensor's bytes
 * in order (in chunks of any size), finish. Output goes to "<path>.tmp",
 * renamed into place by finish after an fsync. Key-values keep insertion
 * order; setting a key again replaces its value in place. */
typedef struct dsv_gguf_writer dsv_gguf_writer;

int dsv_gguf_writer_init(dsv_gguf_writer **out);
void dsv_gguf_writer_free(dsv_gguf_writer *w);
int dsv_gguf_set_u32(dsv_gguf_writer *w, const char *key, uint32_t v);
int dsv_gguf_set_i32(dsv_gguf_writer *w, const char *key, int32_t v);
int dsv_gguf_set_u16(dsv_gguf_writer *w, const char *key, uint16_t v);
int dsv_gguf_set_f32(dsv_gguf_writer *w, const char *key, float v);
int dsv_gguf_set_bool(dsv_gguf_writer *w, const char *key, int v);
int dsv_gguf_set_str(dsv_gguf_writer *w, const char *key, const char *v);
/* An array of n elements of a fixed-size type (the bytes little-endian, as
 * stored), copied. */
int dsv_gguf_set_arr(dsv_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n);
/* An array of n strings, copied. */
int dsv_gguf_set_arr_str(dsv_gguf_writer *w, const char *key, const char *const *s, uint64_t n);
/* Declares the next tensor; nbytes is computed from type and extents (ne[0]
 * a multiple of the block size). */
int dsv_gguf_writer_add(dsv_gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne);
/* Bytes the declared tensors take in the data section, padding included. */
uint64_t dsv_gguf_writer_data_size(const dsv_gguf_writer *w);
int dsv_gguf_writer_begin(dsv_gguf_writer *w, const char *path);
int dsv_gguf_writer_put(dsv_gguf_writer *w, const void *data, size_t n);
int dsv_gguf_writer_finish(dsv_gguf_writer *w);

#endif /* DSV_GGUF_H */
