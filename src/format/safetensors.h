/* safetensors.h: a memory-mapped, fully validated reader and a streaming
 * writer for Hugging Face safetensors files and sharded model directories.
 *
 * The format: 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON (an
 * object mapping tensor names to {"dtype", "shape", "data_offsets"} plus an
 * optional "__metadata__" object of string -> string), then the data section.
 * data_offsets are [begin, end) relative to the data section (file offset
 * 8 + N). Tensors are little-endian, row-major, packed, with no alignment
 * guarantee beyond the byte: consumers must read unaligned-safe.
 *
 * Reader: opening parses and checks every header and never touches tensor
 * data, so a 690 GB checkpoint opens in the time it takes to parse its JSON.
 * Every check that guards a memory access is strict; the rest follow the
 * reference implementation (huggingface/safetensors), which is strict too:
 * duplicate keys, gaps and unindexed trailing bytes are rejected, because
 * they let two readers disagree about what a file holds. The handle is
 * read-only after open, so every accessor below is safe from many threads.
 *
 * Writer: header first, then data streamed in insertion order, into a
 * temporary file that is renamed into place only when complete.
 *
 * All functions that can fail return a dsv_status and set dsv_errmsg(); the
 * message names the file and, where one is at fault, the tensor. */
#ifndef DSV_SAFETENSORS_H
#define DSV_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"
#include "base/dtype.h"

/* ---- reader ------------------------------------------------------------ */

#define DSV_ST_MAX_DIMS 8
/* The reference implementation's limit; real headers are well under 10 MB. */
#define DSV_ST_MAX_HEADER 100000000u

typedef struct dsv_st_tensor {
    const char *name;               /* owned by the dsv_st */
    dsv_dtype dtype;
    int n_dims;                     /* 0 for a scalar */
    int64_t shape[DSV_ST_MAX_DIMS]; /* row-major; unused dims are 0 */
    const void *data;               /* into the read-only mapping; any alignment */
    size_t nbytes;                  /* == product(shape) * dsv_dtype_size(dtype) */
    int file;                       /* index of the shard file (dsv_st_file_path) */
} dsv_st_tensor;

typedef struct dsv_st dsv_st;

/* Called after each file is opened and validated, with the sizes of the
 * files done so far and of all of them (bytes on disk, tensor data included
 * though it is not read), for a progress bar over many shards. The
 * argument order is dsv_model_params.progress's, so the loader hands that
 * callback straight through. */
typedef void (*dsv_st_progress_fn)(uint64_t done, uint64_t total, void *user);

typedef struct dsv_st_open_params {
    dsv_st_progress_fn progress;    /* NULL: none */
    void *progress_user;
} dsv_st_open_params;

/* Opens a checkpoint. path is one of:
 *  - a directory: its model.safetensors.index.json if present (the shards it
 *    lists); else its model.safetensors; else every *.safetensors in it
 *    (names starting with '.' skipped), sorted by name;
 *  - a *.json file: an index, its shards named relative to its directory;
 *  - any other file: a single safetensors file.
 * Files are mapped read-only and only their headers are read. An index must
 * be an object with a "weight_map" object of tensor name -> shard file name
 * (a plain name in the index's directory); every shard it names must open,
 * and every tensor it lists must be in the shard it names. Tensors present in
 * a shard but absent from the weight map are kept. A tensor name may appear
 * only once across all files.
 * Each file must have: a header length <= DSV_ST_MAX_HEADER that fits in the
 * file; a header of UTF-8 without NUL bytes holding one JSON object and then
 * only whitespace; no key twice (tensor names, "__metadata__", its keys, an
 * entry's fields); "__metadata__", if present, an object of strings; each
 * other entry an object with a known "dtype" string, a "shape" array of at
 * most DSV_ST_MAX_DIMS integers in [0, 2^53] (integral floats such as 1.0
 * pass) whose byte size does not overflow, and "data_offsets" [begin, end],
 * integers with begin <= end <= data section size and end - begin equal to
 * that byte size (unknown fields are ignored); the ranges, sorted, must tile
 * the data section exactly: no overlap, gap or trailing byte (empty tensors
 * may sit at any boundary).
 * On success *out owns the mappings. Errors: DSV_ERR_ARG (NULL argument),
 * DSV_ERR_IO (missing or unreadable file), DSV_ERR_FORMAT (malformed file or
 * index), DSV_ERR_UNSUPPORTED (sub-byte dtype, more than DSV_ST_MAX_DIMS
 * dims, a file larger than the address space), DSV_ERR_NOMEM.
 * The files must not be truncated while open: like any mapping, reading a
 * page past a shrunken file raises SIGBUS. */
int dsv_st_open(dsv_st **out, const char *path);
/* dsv_st_open with options; params may be NULL. */
int dsv_st_open_ex(dsv_st **out, const char *path, const dsv_st_open_params *params);
/* Validates and indexes a safetensors image already in memory (an embedded
 * model, a fuzzer's input). The buffer is borrowed: it must stay valid and
 * unchanged until dsv_st_close. name is used in messages and as the file
 * path (NULL: "<memory>"). */
int dsv_st_open_memory(dsv_st **out, const void *buf, size_t size, const char *name);
/* Unmaps everything and frees the handle; every pointer it gave out dies.
 * NULL is a no-op. */
void dsv_st_close(dsv_st *st);

/* The tensor with this exact name, or NULL. O(1) (hash lookup). */
const dsv_st_tensor *dsv_st_find(const dsv_st *st, const char *name);
/* Tensors in file order, and within a file in header order; i in [0, count). */
int dsv_st_count(const dsv_st *st);
const dsv_st_tensor *dsv_st_at(const dsv_st *st, int i);   /* NULL if out of range */
int dsv_st_file_count(const dsv_st *st);
const char *dsv_st_file_path(const dsv_st *st, int file);  /* NULL if out of range */
/* A string from file's "__metadata__", or NULL if absent or file is out of
 * range. */
const char *dsv_st_metadata(const dsv_st *st, int file, const char *key);
/* Hints the kernel to read t's pages ahead of use (madvise WILLNEED); a
 * no-op for in-memory images. Returns DSV_OK or DSV_ERR_IO; never needed
 * for correctness. */
int dsv_st_prefetch(const dsv_st *st, const dsv_st_tensor *t);

/* ---- writer ------------------------------------------------------------ */

/* Writes one safetensors file. The header lists tensors in insertion order,
 * then "__metadata__" (if any metadata was set), compact JSON padded with
 * spaces so that the data section starts at a multiple of 8 bytes; the data
 * follows in the same order, packed. (Insertion order rather than sorted by
 * name: it is the order a streaming caller produces data in; callers that
 * want name order add tensors in name order.)
 *
 * Two ways to supply data:
 *  - all at once: add every tensor with its data pointer, then
 *    dsv_st_writer_write(). Data is borrowed, never copied.
 *  - streamed: add every tensor (data may be NULL), dsv_st_writer_begin(),
 *    then dsv_st_writer_put() the bytes of each tensor in insertion order, in
 *    chunks of any size, then dsv_st_writer_finish(). Only the header is ever
 *    held in memory.
 * Output goes to "<path>.tmp" and is renamed to path by finish after an
 * fsync, so a crash or an error never leaves a partial file under path, and
 * replacing a file that is currently mapped by a reader is safe.
 * A writer produces one file; free it afterwards. */
typedef struct dsv_st_writer dsv_st_writer;

int dsv_st_writer_init(dsv_st_writer **out);
/* Frees the writer; if a file was begun and not finished, removes the
 * temporary file. NULL is a no-op. */
void dsv_st_writer_free(dsv_st_writer *w);
/* Sets (or replaces) a "__metadata__" string. key and value are copied and
 * must be valid UTF-8. DSV_ERR_ARG otherwise, or after begin. */
int dsv_st_writer_set_metadata(dsv_st_writer *w, const char *key, const char *value);
/* Declares the next tensor. name is copied (valid UTF-8, unique, not
 * "__metadata__"); shape has n_dims entries (0..DSV_ST_MAX_DIMS), each >= 0;
 * data (product(shape) * dtype size bytes) is borrowed until write, and may
 * be NULL when streaming. DSV_ERR_ARG on a bad argument or after begin. */
int dsv_st_writer_add(dsv_st_writer *w, const char *name, dsv_dtype dtype, int n_dims,
                      const int64_t *shape, const void *data);
/* Sum of the declared tensors' bytes (the data section size), for callers
 * that cut shards at a size. */
uint64_t dsv_st_writer_data_size(const dsv_st_writer *w);
/* begin + put every tensor's data + finish. Every tensor with bytes must have
 * a data pointer (DSV_ERR_ARG). */
int dsv_st_writer_write(dsv_st_writer *w, const char *path);
/* Creates "<path>.tmp" and writes the header. DSV_ERR_IO on failure. */
int dsv_st_writer_begin(dsv_st_writer *w, const char *path);
/* Appends n bytes of the data section. DSV_ERR_ARG if this would exceed the
 * declared size or begin was not called; DSV_ERR_IO on a write error. */
int dsv_st_writer_put(dsv_st_writer *w, const void *data, size_t n);
/* Checks that exactly the declared bytes were put (DSV_ERR_ARG otherwise),
 * flushes, fsyncs and renames into place (DSV_ERR_IO). On any error the
 * temporary file is removed. */
int dsv_st_writer_finish(dsv_st_writer *w);

/* Writes <dir>/model.safetensors.index.json for the given shards (file names
 * relative to dir, each already written): {"metadata": {"total_size": sum of
 * tensor bytes}, "weight_map": {tensor name: shard, ...}} with names sorted.
 * The shards are opened (headers only) so the index always agrees with them;
 * their errors are returned as from dsv_st_open. Written via a temporary
 * file and rename, like the writer. */
int dsv_st_write_index(const char *dir, const char *const *shards, int n_shards);

#endif /* DSV_SAFETENSORS_H */
