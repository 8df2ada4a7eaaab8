/* safetensors.c: the safetensors reader (mmap + header validation) and
 * writer declared in safetensors.h.
 *
 * Reader, in the order it runs:
 *   resolve path -> list of files (directory, index.json or single file)
 *   map each file read-only, parse its header:
 *     length field -> UTF-8 / NUL check -> JSON (cJSON) -> one entry per
 *     tensor (dtype, shape, data_offsets, each range inside the data section
 *     and sized exactly by shape x dtype) -> the ranges must tile the data
 *     section (sorted by offset: no overlap, no gap, no trailing bytes)
 *   one hash table over all names (duplicates across shards are an error)
 *   check the index's weight_map against where tensors really are.
 * Tensor data is never read: only pointers into the mapping are handed out.
 *
 * The input is hostile (a fuzz target drives dsv_st_open_memory): every
 * length is checked before it is used, arithmetic on file-supplied numbers is
 * overflow-checked, and cJSON only ever sees a NUL-terminated copy of the
 * header so its scanner cannot run off the end of the mapping.
 *
 * Writer: builds the header in memory (serde_json's compact spelling, the
 * same bytes the reference library writes), then streams the data section
 * through stdio into "<path>.tmp", fsyncs, renames. Not done here: sub-byte
 * dtypes, big-endian hosts' byte order (data is handed out as stored). */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"

/* ---- small helpers shared by reader and writer ---------------------------- */

/* JSON numbers reach us as doubles (cJSON). Integers are exact up to 2^53,
 * far beyond any real offset or dimension (8 PB), so larger values are
 * refused rather than silently rounded. */
#define MAX_EXACT_INT 9007199254740992.0 /* 2^53 */

/* Copies s for an error message: at most ~100 bytes, control characters as
 * '?', so a hostile name can neither flood nor split the one-line message. */
static const char *printable(const char *s, char buf[static 128]) {
    size_t i = 0;
    for (; s[i] && i < 100; i++) buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i]) { memcpy(buf + i, "...", 3); i += 3; }
    buf[i] = 0;
    return buf;
}

/* Returns the offset of the first byte of s[0..n) that is not part of valid
 * UTF-8 (overlong forms, surrogates and code points past U+10FFFF are
 * invalid), or n if all of it is valid. */
static size_t utf8_check(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;      /* overlong */
            if (c == 0xed) hi = 0x9f;      /* UTF-16 surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;      /* overlong */
            if (c == 0xf4) hi = 0x8f;      /* past U+10FFFF */
        } else return i;
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += len;
    }
    return n;
}

/* FNV-1a: short names with long shared prefixes ("model.layers.12.mlp...")
 * hash well enough, and it needs no seed. */
static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Open-addressing table of indices into a dsv_st_tensor array (slot value
 * index + 1, 0 = empty), kept at most half full. Used by the reader (built
 * once) and the writer (grown as tensors are added). */
struct name_table {
    uint32_t *slots;
    uint32_t mask;
};

/* Returns the index of name or -1; *slot is where it is or would go. */
static int table_find(const struct name_table *h, const dsv_st_tensor *arr, const char *name,
                      uint32_t *slot) {
    uint32_t i = (uint32_t)hash_name(name) & h->mask;
    while (h->slots[i]) {
        int idx = (int)h->slots[i] - 1;
        if (!strcmp(arr[idx].name, name)) { if (slot) *slot = i; return idx; }
        i = (i + 1) & h->mask;
    }
    if (slot) *slot = i;
    return -1;
}

/* Sizes the table for n entries and inserts arr[0..n) (which must have
 * unique names, or *dup gets the first index whose name is already in). */
static int table_build(struct name_table *h, const dsv_st_tensor *arr, int n, int *dup) {
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n) cap *= 2;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots) return dsv_error(DSV_ERR_NOMEM, "out of memory for a %u-slot name table", cap);
    free(h->slots);
    h->slots = slots;
    h->mask = cap - 1;
    *dup = -1;
    for (int i = 0; i < n; i++) {
        uint32_t slot;
        if (table_find(h, arr, arr[i].name, &slot) >= 0) { *dup = i; return DSV_OK; }
        h->slots[slot] = (uint32_t)i + 1;
    }
    return DSV_OK;
}

/* Element count and byte size of a shape, overflow-checked. Returns 0, or 1
 * if either overflows 64 bits. */
static int shape_nbytes(dsv_dtype dt, int n_dims, const int64_t *shape, uint64_t *nbytes) {
    uint64_t n = 1;
    for (int i = 0; i < n_dims; i++)
        if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n)) return 1;
    return __builtin_mul_overflow(n, (uint64_t)dsv_dtype_size(dt), nbytes) ? 1 : 0;
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

/* A shard name from an index must stay inside the index's directory. */
static int plain_file_name(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

/* Parses n bytes of text as one JSON value followed only by whitespace.
 * text[n] must be readable and NUL: cJSON relies on a terminator in places.
 * On failure returns DSV_ERR_FORMAT with "<what> ..." as the message. */
static int parse_json(const char *text, size_t n, const char *what, cJSON **out) {
    size_t bad = utf8_check((const unsigned char *)text, n);
    if (bad < n)
        return dsv_error(DSV_ERR_FORMAT, "%s is not valid UTF-8 (byte %zu)", what, bad);
    const char *nul = memchr(text, 0, n);
    if (nul)
        return dsv_error(DSV_ERR_FORMAT, "%s contains a NUL byte (byte %zu)", what,
                         (size_t)(nul - text));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + n ? (size_t)(end - text) : 0;
        return dsv_error(DSV_ERR_FORMAT, "%s is not valid JSON (error near byte %zu)", what, at);
    }
    for (const char *p = end; p < text + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return dsv_error(DSV_ERR_FORMAT, "%s has trailing characters after the JSON value (byte %zu)",
                             what, (size_t)(p - text));
        }
    *out = root;
    return DSV_OK;
}

/* ---- reader ------------------------------------------------------------ */

struct st_file {
    char *path;
    const uint8_t *base;  /* the whole file (or the caller's buffer) */
    size_t size;
    int mapped;           /* base came from mmap */
    const uint8_t *data;  /* the data section: base + 8 + header length */
    size_t data_size;
    char **meta;          /* __metadata__ as key, value pairs sorted by key */
    int n_meta;
};

struct dsv_st {
    struct st_file *files;
    int n_files;
    dsv_st_tensor *tensors; /* files in order, each in header order */
    int n_tensors, cap_tensors;
    struct name_table table;
};

/* A tensor's byte range while its file's ranges are checked for tiling. */
struct span {
    uint64_t begin, end;
    int idx;
};

/* No real checkpoint comes close (DeepSeek-V3 has ~91k tensors); the bound
 * keeps index arithmetic in 32 bits. */
#define MAX_TENSORS (1 << 28)

void dsv_st_close(dsv_st *st) {
    if (!st) return;
    for (int i = 0; i < st->n_files; i++) {
        struct st_file *f = &st->files[i];
        if (f->mapped) munmap((void *)f->base, f->size);
        for (int k = 0; k < 2 * f->n_meta; k++) free(f->meta[k]);
        free(f->meta);
        free(f->path);
    }
    for (int i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    free(st->files);
    free(st->tensors);
    free(st->table.slots);
    free(st);
}

/* Adds a file slot (path copied) and returns it, or NULL on OOM. */
static struct st_file *add_file(dsv_st *st, const char *path) {
    struct st_file *files = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *files);
    if (!files) return NULL;
    st->files = files;
    struct st_file *f = &files[st->n_files];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return NULL;
    st->n_files++;
    return f;
}

static int map_file(struct st_file *f) {
    /* O_NONBLOCK: opening a FIFO named like a shard must not hang. */
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return dsv_error(DSV_ERR_IO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return dsv_error(DSV_ERR_IO, "%s: cannot stat: %s", f->path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return dsv_error(DSV_ERR_IO, "%s: not a regular file", f->path);
    }
    if ((uint64_t)sb.st_size != (uint64_t)(size_t)sb.st_size) {
        close(fd);
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: file of %lld bytes does not fit in the address space",
                         f->path, (long long)sb.st_size);
    }
    f->size = (size_t)sb.st_size;
    if (f->size == 0) { close(fd); return DSV_OK; } /* mmap refuses 0 bytes; parse reports it */
    void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED) return dsv_error(DSV_ERR_IO, "%s: cannot map: %s", f->path, strerror(e));
    f->base = p;
    f->mapped = 1;
    return DSV_OK;
}

static int cmp_span(const void *a, const void *b) {
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads a JSON number that must be a non-negative integer below 2^53.
 * Returns NULL if it is one, else what it is not. */
static const char *json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return "is not a number";
    double d = v->valuedouble;
    if (d != floor(d)) return "is not an integer"; /* +-inf pass here, caught below */
    if (d < 0) return "is negative";
    if (d > MAX_EXACT_INT) return "is too large (above 2^53)";
    *out = (uint64_t)d;
    return NULL;
}

static int parse_metadata(struct st_file *f, const cJSON *m) {
    if (!cJSON_IsObject(m))
        return dsv_error(DSV_ERR_FORMAT, "%s: __metadata__ is not an object", f->path);
    int n = cJSON_GetArraySize(m);
    f->meta = calloc(2 * (size_t)n + 1, sizeof *f->meta);
    if (!f->meta) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory for __metadata__", f->path);
    char nb[128];
    for (const cJSON *it = m->child; it; it = it->next) {
        if (!cJSON_IsString(it))
            return dsv_error(DSV_ERR_FORMAT, "%s: __metadata__ value \"%s\" is not a string", f->path,
                             printable(it->string, nb));
        /* Pairs stay adjacent: sorting treats each pair as one 2-pointer record. */
        char *k = strdup(it->string), *v = strdup(it->valuestring);
        f->meta[2 * f->n_meta] = k;
        f->meta[2 * f->n_meta + 1] = v;
        f->n_meta++;
        if (!k || !v) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory for __metadata__", f->path);
    }
    qsort(f->meta, (size_t)f->n_meta, 2 * sizeof *f->meta, cmp_meta);
    for (int i = 1; i < f->n_meta; i++)
        if (!strcmp(f->meta[2 * i], f->meta[2 * i - 2]))
            return dsv_error(DSV_ERR_FORMAT, "%s: __metadata__ key \"%s\" appears twice", f->path,
                             printable(f->meta[2 * i], nb));
    return DSV_OK;
}

/* An error about tensor t of file f; the name is made printable only here,
 * on the error path. */
static int entry_error(int status, const struct st_file *f, const dsv_st_tensor *t, const char *fmt, ...)
    DSV_PRINTF(4, 5);
static int entry_error(int status, const struct st_file *f, const dsv_st_tensor *t, const char *fmt, ...) {
    char msg[512], nb[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dsv_error(status, "%s: tensor \"%s\": %s", f->path, printable(t->name, nb), msg);
}

/* Fills t from one header entry and returns its [begin, end) in *sp. */
static int parse_entry(const struct st_file *f, const cJSON *e, dsv_st_tensor *t, struct span *sp) {
    if (!cJSON_IsObject(e)) return entry_error(DSV_ERR_FORMAT, f, t, "entry is not an object");
    /* Find the three fields by hand: a repeated field is an aliasing trick
     * (two readers may pick different copies), so it is refused. */
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *it = e->child; it; it = it->next) {
        const cJSON **slot = !strcmp(it->string, "dtype") ? &dtype
                           : !strcmp(it->string, "shape") ? &shape
                           : !strcmp(it->string, "data_offsets") ? &offs : NULL;
        if (!slot) continue; /* unknown fields are ignored, as by the reference */
        if (*slot) return entry_error(DSV_ERR_FORMAT, f, t, "field \"%s\" appears twice", it->string);
        *slot = it;
    }
    if (!dtype) return entry_error(DSV_ERR_FORMAT, f, t, "missing \"dtype\"");
    if (!shape) return entry_error(DSV_ERR_FORMAT, f, t, "missing \"shape\"");
    if (!offs) return entry_error(DSV_ERR_FORMAT, f, t, "missing \"data_offsets\"");

    if (!cJSON_IsString(dtype)) return entry_error(DSV_ERR_FORMAT, f, t, "\"dtype\" is not a string");
    int rc = dsv_dtype_from_name(dtype->valuestring, &t->dtype);
    char db[128];
    if (rc == DSV_ERR_UNSUPPORTED)
        return entry_error(rc, f, t, "sub-byte dtype \"%s\" is not supported",
                           printable(dtype->valuestring, db));
    if (rc) return entry_error(rc, f, t, "unknown dtype \"%s\"", printable(dtype->valuestring, db));

    if (!cJSON_IsArray(shape)) return entry_error(DSV_ERR_FORMAT, f, t, "\"shape\" is not an array");
    int nd = cJSON_GetArraySize(shape);
    if (nd > DSV_ST_MAX_DIMS)
        return entry_error(DSV_ERR_UNSUPPORTED, f, t, "%d dimensions (at most %d are supported)", nd,
                           DSV_ST_MAX_DIMS);
    t->n_dims = nd;
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        uint64_t v;
        const char *why = json_uint(d, &v);
        if (why) return entry_error(DSV_ERR_FORMAT, f, t, "shape[%d] %s", i, why);
        t->shape[i] = (int64_t)v;
    }
    uint64_t need;
    if (shape_nbytes(t->dtype, nd, t->shape, &need))
        return entry_error(DSV_ERR_FORMAT, f, t, "shape product overflows 64 bits");

    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return entry_error(DSV_ERR_FORMAT, f, t, "\"data_offsets\" is not [begin, end]");
    uint64_t begin, end;
    const char *why = json_uint(offs->child, &begin);
    if (why) return entry_error(DSV_ERR_FORMAT, f, t, "data_offsets begin %s", why);
    if ((why = json_uint(offs->child->next, &end)))
        return entry_error(DSV_ERR_FORMAT, f, t, "data_offsets end %s", why);
    if (begin > end)
        return entry_error(DSV_ERR_FORMAT, f, t, "data_offsets begin %llu > end %llu",
                           (unsigned long long)begin, (unsigned long long)end);
    if (end > f->data_size)
        return entry_error(DSV_ERR_FORMAT, f, t,
                           "data_offsets end %llu is beyond the data section (%zu bytes)",
                           (unsigned long long)end, f->data_size);
    if (end - begin != need)
        return entry_error(DSV_ERR_FORMAT, f, t, "data_offsets span %llu bytes but %d-d %s needs %llu",
                           (unsigned long long)(end - begin), nd, dsv_dtype_name(t->dtype),
                           (unsigned long long)need);
    t->data = f->data + begin;
    t->nbytes = (size_t)need;
    sp->begin = begin;
    sp->end = end;
    return DSV_OK;
}

/* The ranges of one file must tile its data section exactly, as the
 * reference reader demands: overlaps would let one write alias another
 * tensor, and gaps or trailing bytes could hide a second payload. */
static int check_tiling(const struct st_file *f, const dsv_st_tensor *ts, struct span *sp, int n) {
    qsort(sp, (size_t)n, sizeof *sp, cmp_span);
    uint64_t pos = 0;
    int prev = -1;
    char a[128], b[128];
    for (int i = 0; i < n; i++) {
        if (sp[i].begin < pos)
            return dsv_error(DSV_ERR_FORMAT,
                             "%s: tensor \"%s\" (bytes %llu..%llu) overlaps tensor \"%s\" (bytes %llu..%llu)",
                             f->path, printable(ts[sp[i].idx].name, a), (unsigned long long)sp[i].begin,
                             (unsigned long long)sp[i].end, printable(ts[sp[prev].idx].name, b),
                             (unsigned long long)sp[prev].begin, (unsigned long long)sp[prev].end);
        if (sp[i].begin > pos)
            return dsv_error(DSV_ERR_FORMAT,
                             "%s: %llu bytes before tensor \"%s\" belong to no tensor (gaps are not allowed)",
                             f->path, (unsigned long long)(sp[i].begin - pos),
                             printable(ts[sp[i].idx].name, a));
        if (sp[i].end > pos) { pos = sp[i].end; prev = i; }
    }
    if (pos != f->data_size)
        return dsv_error(DSV_ERR_FORMAT, "%s: the last %llu bytes of the data section belong to no tensor",
                         f->path, (unsigned long long)(f->data_size - pos));
    return DSV_OK;
}

/* Validates file fi's header and appends its tensors to st. */
static int parse_file(dsv_st *st, int fi) {
    struct st_file *f = &st->files[fi];
    if (f->size < 8)
        return dsv_error(DSV_ERR_FORMAT, "%s: file is too short (%zu bytes) to hold the 8-byte header length",
                         f->path, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->base[i]; /* little-endian on any host */
    if (n > DSV_ST_MAX_HEADER)
        return dsv_error(DSV_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", f->path,
                         (unsigned long long)n, DSV_ST_MAX_HEADER);
    if (n > f->size - 8)
        return dsv_error(DSV_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                         f->path, (unsigned long long)n, f->size);
    f->data = f->base + 8 + n;
    f->data_size = f->size - 8 - (size_t)n;

    /* A private, terminated copy for cJSON (see the design comment); zero
     * padding past the terminator absorbs any look-ahead of a few bytes. */
    char *text = malloc((size_t)n + 16);
    if (!text) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory for a %llu-byte header", f->path,
                                (unsigned long long)n);
    memcpy(text, f->base + 8, (size_t)n);
    memset(text + n, 0, 16);
    cJSON *root = NULL;
    int rc = parse_json(text, (size_t)n, "header", &root);
    free(text);
    if (rc) return dsv_error_prefix(rc, "%s", f->path);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dsv_error(DSV_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    }

    int n_entries = cJSON_GetArraySize(root);
    struct span *sp = NULL;
    int n_sp = 0, seen_meta = 0;
    if (n_entries > MAX_TENSORS - st->n_tensors) {
        rc = dsv_error(DSV_ERR_UNSUPPORTED, "%s: too many tensors", f->path);
        goto done;
    }
    if (st->n_tensors + n_entries > st->cap_tensors) {
        int cap = st->cap_tensors ? st->cap_tensors : 64;
        while (cap < st->n_tensors + n_entries) cap = cap > MAX_TENSORS / 2 ? MAX_TENSORS : cap * 2;
        dsv_st_tensor *ts = realloc(st->tensors, (size_t)cap * sizeof *ts);
        if (!ts) {
            rc = dsv_error(DSV_ERR_NOMEM, "%s: out of memory for %d tensors", f->path, cap);
            goto done;
        }
        st->tensors = ts;
        st->cap_tensors = cap;
    }
    sp = malloc(((size_t)n_entries + 1) * sizeof *sp);
    if (!sp) { rc = dsv_error(DSV_ERR_NOMEM, "%s: out of memory", f->path); goto done; }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            if (seen_meta++) {
                rc = dsv_error(DSV_ERR_FORMAT, "%s: __metadata__ appears twice", f->path);
                goto done;
            }
            if ((rc = parse_metadata(f, it))) goto done;
            continue;
        }
        dsv_st_tensor *t = &st->tensors[st->n_tensors];
        memset(t, 0, sizeof *t);
        t->file = fi;
        if (!(t->name = strdup(it->string))) {
            rc = dsv_error(DSV_ERR_NOMEM, "%s: out of memory", f->path);
            goto done;
        }
        st->n_tensors++; /* owned from here: dsv_st_close frees the name */
        sp[n_sp].idx = st->n_tensors - 1;
        if ((rc = parse_entry(f, it, t, &sp[n_sp]))) goto done;
        n_sp++;
    }
    rc = check_tiling(f, st->tensors, sp, n_sp);
done:
    free(sp);
    cJSON_Delete(root);
    return rc;
}

/* One hash table over every file's tensors; a name twice is an error. */
static int index_tensors(dsv_st *st) {
    int dup;
    int rc = table_build(&st->table, st->tensors, st->n_tensors, &dup);
    if (rc || dup < 0) return rc;
    const dsv_st_tensor *t = &st->tensors[dup];
    const dsv_st_tensor *o = &st->tensors[table_find(&st->table, st->tensors, t->name, NULL)];
    char nb[128];
    if (o->file == t->file)
        return dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\" appears twice in the header",
                         st->files[t->file].path, printable(t->name, nb));
    return dsv_error(DSV_ERR_FORMAT, "tensor \"%s\" is in both %s and %s", printable(t->name, nb),
                     st->files[o->file].path, st->files[t->file].path);
}

/* ---- paths: directory, index, single file ---- */

struct index {
    char *path;       /* the index file */
    cJSON *root;
    const cJSON *weight_map;
    const char **shards; /* unique shard names, sorted; point into root */
    int n_shards;
};

static void index_free(struct index *ix) {
    free(ix->path);
    cJSON_Delete(ix->root);
    free(ix->shards);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Reads a whole (small) file into a NUL-terminated, zero-padded buffer. */
static int read_small_file(const char *path, size_t limit, char **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return dsv_error(DSV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dsv_error(DSV_ERR_IO, "%s: not a readable regular file", path);
    }
    if ((uint64_t)sb.st_size > limit) {
        close(fd);
        return dsv_error(DSV_ERR_FORMAT, "%s: %lld bytes is larger than the %zu-byte limit", path,
                         (long long)sb.st_size, limit);
    }
    size_t n = (size_t)sb.st_size, got = 0;
    char *buf = malloc(n + 16);
    if (!buf) { close(fd); return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", path); }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return dsv_error(DSV_ERR_IO, "%s: read failed: %s", path, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    memset(buf + n, 0, 16);
    *out = buf;
    *len = n;
    return DSV_OK;
}

static int index_load(struct index *ix, const char *path) {
    if (!(ix->path = strdup(path))) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    char *text = NULL;
    size_t n = 0;
    int rc = read_small_file(path, DSV_ST_MAX_HEADER, &text, &n);
    if (rc) return rc;
    rc = parse_json(text, n, "index", &ix->root);
    free(text);
    if (rc) return dsv_error_prefix(rc, "%s", path);
    if (!cJSON_IsObject(ix->root)) return dsv_error(DSV_ERR_FORMAT, "%s: index is not a JSON object", path);
    ix->weight_map = cJSON_GetObjectItemCaseSensitive(ix->root, "weight_map");
    if (!cJSON_IsObject(ix->weight_map))
        return dsv_error(DSV_ERR_FORMAT, "%s: index has no \"weight_map\" object", path);
    int n_map = cJSON_GetArraySize(ix->weight_map);
    if (n_map == 0) return dsv_error(DSV_ERR_FORMAT, "%s: \"weight_map\" is empty", path);
    ix->shards = malloc((size_t)n_map * sizeof *ix->shards);
    if (!ix->shards) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", path);
    char nb[128], sb[128];
    for (const cJSON *it = ix->weight_map->child; it; it = it->next) {
        if (!cJSON_IsString(it))
            return dsv_error(DSV_ERR_FORMAT, "%s: weight_map entry \"%s\" is not a string", path,
                             printable(it->string, nb));
        if (!plain_file_name(it->valuestring))
            return dsv_error(DSV_ERR_FORMAT,
                             "%s: weight_map entry \"%s\" names \"%s\", not a plain file name", path,
                             printable(it->string, nb), printable(it->valuestring, sb));
        ix->shards[ix->n_shards++] = it->valuestring;
    }
    qsort(ix->shards, (size_t)ix->n_shards, sizeof *ix->shards, cmp_str);
    int u = 0;
    for (int i = 0; i < ix->n_shards; i++)
        if (!u || strcmp(ix->shards[i], ix->shards[u - 1])) ix->shards[u++] = ix->shards[i];
    ix->n_shards = u;
    return DSV_OK;
}

/* Every weight_map entry must name the shard its tensor was found in. */
static int index_check(const dsv_st *st, const struct index *ix) {
    char nb[128], sb[128], ob[128];
    for (const cJSON *it = ix->weight_map->child; it; it = it->next) {
        const dsv_st_tensor *t = dsv_st_find(st, it->string);
        if (!t)
            return dsv_error(DSV_ERR_FORMAT,
                             "%s: weight_map puts tensor \"%s\" in \"%s\", which does not contain it",
                             ix->path, printable(it->string, nb), printable(it->valuestring, sb));
        /* files[] were opened from shards[] in the same order */
        const char *in = ix->shards[t->file];
        if (strcmp(in, it->valuestring))
            return dsv_error(DSV_ERR_FORMAT,
                             "%s: weight_map puts tensor \"%s\" in \"%s\", but it is in \"%s\"", ix->path,
                             printable(it->string, nb), printable(it->valuestring, sb), printable(in, ob));
    }
    return DSV_OK;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Every *.safetensors in dir, sorted. Dot files are skipped: they are
 * editors' and other systems' droppings (macOS "._x.safetensors"), never
 * shards. */
static int scan_dir(const char *dir, char ***out, int *n_out) {
    DIR *d = opendir(dir);
    if (!d) return dsv_error(DSV_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0, rc = DSV_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".safetensors")) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) { rc = DSV_ERR_NOMEM; break; }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) { rc = DSV_ERR_NOMEM; break; }
        n++;
    }
    closedir(d);
    if (rc) {
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        return dsv_error(rc, "%s: out of memory listing the directory", dir);
    }
    if (n > 1) qsort(names, (size_t)n, sizeof *names, cmp_str);
    *out = names;
    *n_out = n;
    return DSV_OK;
}

/* Maps and parses each of the n paths (relative to dir if dir != NULL). */
static int open_files(dsv_st *st, const char *dir, const char *const *names, int n,
                      const struct index *ix, const dsv_st_open_params *params) {
    uint64_t total = 0, done = 0;
    int rc = DSV_OK;
    char **paths = calloc((size_t)n + 1, sizeof *paths);
    if (!paths) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        if (!(paths[i] = dir ? path_join(dir, names[i]) : strdup(names[i]))) {
            rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
            goto out;
        }
    if (params && params->progress) {
        struct stat sb;
        for (int i = 0; i < n; i++)
            if (!stat(paths[i], &sb)) total += (uint64_t)sb.st_size;
    }
    for (int i = 0; i < n; i++) {
        struct st_file *f = add_file(st, paths[i]);
        if (!f) { rc = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto out; }
        if ((rc = map_file(f))) {
            char sb[128];
            if (ix)
                dsv_error_prefix(rc, "%s: shard \"%s\" listed in the index", ix->path,
                                 printable(names[i], sb));
            goto out;
        }
        if ((rc = parse_file(st, st->n_files - 1))) goto out;
        done += f->size;
        if (params && params->progress)
            params->progress(done, total > done ? total : done, params->progress_user);
    }
out:
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    return rc;
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int dsv_st_open_ex(dsv_st **out, const char *path, const dsv_st_open_params *params) {
    if (!out || !path) return dsv_error(DSV_ERR_ARG, "dsv_st_open: NULL argument");
    struct stat sb;
    if (stat(path, &sb) != 0) return dsv_error(DSV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    dsv_st *st = calloc(1, sizeof *st);
    if (!st) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    struct index ix = {0};
    char *dir = NULL, **scanned = NULL;
    int n_scanned = 0, rc;

    if (S_ISDIR(sb.st_mode)) {
        dir = strdup(path);
        char *idx = path_join(path, "model.safetensors.index.json");
        char *single = path_join(path, "model.safetensors");
        if (!dir || !idx || !single) {
            rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
        } else if (!access(idx, F_OK)) {
            rc = index_load(&ix, idx);
        } else if (!access(single, F_OK)) {
            rc = open_files(st, NULL, (const char *const *)&single, 1, NULL, params);
        } else if (!(rc = scan_dir(path, &scanned, &n_scanned)) && n_scanned == 0) {
            rc = dsv_error(DSV_ERR_IO,
                           "%s: no model.safetensors.index.json, model.safetensors or *.safetensors", path);
        } else if (!rc) {
            rc = open_files(st, path, (const char *const *)scanned, n_scanned, NULL, params);
        }
        free(idx);
        free(single);
    } else if (ends_with(path, ".json")) {
        if (!(dir = dir_of(path))) rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
        else rc = index_load(&ix, path);
    } else {
        rc = open_files(st, NULL, &path, 1, NULL, params);
    }
    if (!rc && ix.root) rc = open_files(st, dir, ix.shards, ix.n_shards, &ix, params);
    if (!rc) rc = index_tensors(st);
    if (!rc && ix.root) rc = index_check(st, &ix);

    index_free(&ix);
    for (int i = 0; i < n_scanned; i++) free(scanned[i]);
    free(scanned);
    free(dir);
    if (rc) { dsv_st_close(st); return rc; }
    *out = st;
    return DSV_OK;
}

int dsv_st_open(dsv_st **out, const char *path) { return dsv_st_open_ex(out, path, NULL); }

int dsv_st_open_memory(dsv_st **out, const void *buf, size_t size, const char *name) {
    if (!out || (!buf && size)) return dsv_error(DSV_ERR_ARG, "dsv_st_open_memory: NULL argument");
    dsv_st *st = calloc(1, sizeof *st);
    if (!st) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    struct st_file *f = add_file(st, name ? name : "<memory>");
    int rc;
    if (!f) {
        rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
    } else {
        f->base = buf;
        f->size = size;
        rc = parse_file(st, 0);
    }
    if (!rc) rc = index_tensors(st);
    if (rc) { dsv_st_close(st); return rc; }
    *out = st;
    return DSV_OK;
}

const dsv_st_tensor *dsv_st_find(const dsv_st *st, const char *name) {
    if (!st || !name || !st->table.slots) return NULL;
    int i = table_find(&st->table, st->tensors, name, NULL);
    return i < 0 ? NULL : &st->tensors[i];
}

int dsv_st_count(const dsv_st *st) { return st ? st->n_tensors : 0; }

const dsv_st_tensor *dsv_st_at(const dsv_st *st, int i) {
    return st && i >= 0 && i < st->n_tensors ? &st->tensors[i] : NULL;
}

int dsv_st_file_count(const dsv_st *st) { return st ? st->n_files : 0; }

const char *dsv_st_file_path(const dsv_st *st, int file) {
    return st && file >= 0 && file < st->n_files ? st->files[file].path : NULL;
}

const char *dsv_st_metadata(const dsv_st *st, int file, const char *key) {
    if (!st || !key || file < 0 || file >= st->n_files) return NULL;
    const struct st_file *f = &st->files[file];
    if (!f->n_meta) return NULL;
    char *const *hit = bsearch(&key, f->meta, (size_t)f->n_meta, 2 * sizeof *f->meta, cmp_meta);
    return hit ? hit[1] : NULL;
}

int dsv_st_prefetch(const dsv_st *st, const dsv_st_tensor *t) {
    if (!st || !t || t < st->tensors || t >= st->tensors + st->n_tensors)
        return dsv_error(DSV_ERR_ARG, "dsv_st_prefetch: not a tensor of this checkpoint");
    if (!st->files[t->file].mapped || !t->nbytes) return DSV_OK;
    /* madvise wants a page-aligned start; tensors start anywhere. */
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(page - 1), b = (uintptr_t)t->data + t->nbytes;
    if (madvise((void *)a, b - a, MADV_WILLNEED) != 0)
        return dsv_error(DSV_ERR_IO, "%s: madvise: %s", st->files[t->file].path, strerror(errno));
    return DSV_OK;
}

/* ---- writer ------------------------------------------------------------ */

/* A growable string; once an allocation fails it stays failed (oom). */
struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
};

static void sb_add(struct sbuf *s, const char *src, size_t n) {
    if (s->oom) return;
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->n + n + 1) cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p) { s->oom = 1; return; }
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->n, src, n);
    s->n += n;
    s->p[s->n] = 0;
}

static void sb_str(struct sbuf *s, const char *src) { sb_add(s, src, strlen(src)); }

static void sb_u64(struct sbuf *s, uint64_t v) {
    char b[24];
    sb_add(s, b, (size_t)snprintf(b, sizeof b, "%llu", (unsigned long long)v));
}

/* A JSON string, escaped as serde_json does (the reference writer), so that
 * files we write match its bytes: quote, backslash, \b \f \n \r \t, other
 * controls as \u00xx; everything else, UTF-8 included, verbatim. */
static void sb_json_str(struct sbuf *s, const char *str) {
    sb_add(s, "\"", 1);
    for (const char *p = str; *p; p++) {
        unsigned char c = (unsigned char)*p;
        const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b" : c == '\f' ? "\\f"
                        : c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
        if (esc) sb_str(s, esc);
        else if (c < 0x20) {
            char b[8];
            snprintf(b, sizeof b, "\\u%04x", c);
            sb_str(s, b);
        } else sb_add(s, p, 1);
    }
    sb_add(s, "\"", 1);
}

enum { W_DECLARE, W_WRITING, W_DONE };

struct dsv_st_writer {
    dsv_st_tensor *t;      /* name owned, data borrowed; file unused */
    int n, cap;
    struct name_table table;
    char **meta;           /* key, value pairs in insertion order */
    int n_meta;
    uint64_t data_size;
    int state;
    FILE *fp;              /* while W_WRITING */
    char *path, *tmp_path;
    uint64_t written;
};

int dsv_st_writer_init(dsv_st_writer **out) {
    if (!out) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_init: NULL argument");
    dsv_st_writer *w = calloc(1, sizeof *w);
    if (!w) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    *out = w;
    return DSV_OK;
}

/* Closes and deletes an unfinished output; the writer is spent afterwards. */
static void writer_abort(dsv_st_writer *w) {
    if (w->fp) { fclose(w->fp); w->fp = NULL; }
    if (w->tmp_path) unlink(w->tmp_path);
    w->state = W_DONE;
}

void dsv_st_writer_free(dsv_st_writer *w) {
    if (!w) return;
    if (w->state == W_WRITING) writer_abort(w);
    for (int i = 0; i < w->n; i++) free((char *)w->t[i].name);
    for (int i = 0; i < 2 * w->n_meta; i++) free(w->meta[i]);
    free(w->t);
    free(w->table.slots);
    free(w->meta);
    free(w->path);
    free(w->tmp_path);
    free(w);
}

static int valid_utf8(const char *s) {
    size_t n = strlen(s);
    return utf8_check((const unsigned char *)s, n) == n;
}

int dsv_st_writer_set_metadata(dsv_st_writer *w, const char *key, const char *value) {
    if (!w || !key || !value) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_set_metadata: NULL argument");
    if (w->state != W_DECLARE)
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_set_metadata: the header is already written");
    if (!valid_utf8(key) || !valid_utf8(value))
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_set_metadata: key or value is not valid UTF-8");
    char *v = strdup(value);
    if (!v) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[2 * i], key)) { free(w->meta[2 * i + 1]); w->meta[2 * i + 1] = v; return DSV_OK; }
    char *k = strdup(key);
    char **m = realloc(w->meta, (size_t)(w->n_meta + 1) * 2 * sizeof *m);
    if (!k || !m) { free(k); free(v); if (m) w->meta = m; return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    w->meta = m;
    m[2 * w->n_meta] = k;
    m[2 * w->n_meta + 1] = v;
    w->n_meta++;
    return DSV_OK;
}

int dsv_st_writer_add(dsv_st_writer *w, const char *name, dsv_dtype dtype, int n_dims,
                      const int64_t *shape, const void *data) {
    if (!w || !name || (n_dims > 0 && !shape))
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: NULL argument");
    char nb[128];
    if (w->state != W_DECLARE)
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: tensor \"%s\": the header is already written",
                         printable(name, nb));
    if (!valid_utf8(name)) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: tensor name is not valid UTF-8");
    if (!strcmp(name, "__metadata__"))
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: \"__metadata__\" is reserved");
    if ((unsigned)dtype >= DSV_DT_COUNT)
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: tensor \"%s\": invalid dtype %d",
                         printable(name, nb), (int)dtype);
    if (n_dims < 0 || n_dims > DSV_ST_MAX_DIMS)
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: tensor \"%s\": %d dimensions", printable(name, nb),
                         n_dims);
    for (int i = 0; i < n_dims; i++)
        if (shape[i] < 0 || (double)shape[i] > MAX_EXACT_INT)
            return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: tensor \"%s\": shape[%d] = %lld",
                             printable(name, nb), i, (long long)shape[i]);
    uint64_t nbytes;
    if (shape_nbytes(dtype, n_dims, shape, &nbytes) || nbytes > (uint64_t)MAX_EXACT_INT - w->data_size ||
        nbytes != (uint64_t)(size_t)nbytes)
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: tensor \"%s\": too many bytes",
                         printable(name, nb));
    if (w->n && table_find(&w->table, w->t, name, NULL) >= 0)
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_add: tensor \"%s\" added twice", printable(name, nb));

    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        dsv_st_tensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return dsv_error(DSV_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    dsv_st_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    t->dtype = dtype;
    t->n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = (size_t)nbytes;
    w->n++;
    /* Rebuild the table when it would pass half full; also builds it on the
     * first add. Names are unique here, so table_build finds no duplicate. */
    int dup;
    if (!w->table.slots || 2u * (uint32_t)w->n > w->table.mask + 1) {
        if (table_build(&w->table, w->t, w->n, &dup)) { free((char *)t->name); w->n--; return DSV_ERR_NOMEM; }
    } else {
        uint32_t slot;
        table_find(&w->table, w->t, name, &slot);
        w->table.slots[slot] = (uint32_t)w->n;
    }
    w->data_size += nbytes;
    return DSV_OK;
}

uint64_t dsv_st_writer_data_size(const dsv_st_writer *w) { return w ? w->data_size : 0; }

/* The header JSON, space-padded so that 8 + its length is a multiple of 8. */
static int writer_header(const dsv_st_writer *w, struct sbuf *s) {
    uint64_t off = 0;
    sb_add(s, "{", 1);
    for (int i = 0; i < w->n; i++) {
        const dsv_st_tensor *t = &w->t[i];
        if (i) sb_add(s, ",", 1);
        sb_json_str(s, t->name);
        sb_str(s, ":{\"dtype\":\"");
        sb_str(s, dsv_dtype_name(t->dtype));
        sb_str(s, "\",\"shape\":[");
        for (int d = 0; d < t->n_dims; d++) {
            if (d) sb_add(s, ",", 1);
            sb_u64(s, (uint64_t)t->shape[d]);
        }
        sb_str(s, "],\"data_offsets\":[");
        sb_u64(s, off);
        sb_add(s, ",", 1);
        sb_u64(s, off + t->nbytes);
        sb_str(s, "]}");
        off += t->nbytes;
    }
    if (w->n_meta) {
        sb_str(s, w->n ? ",\"__metadata__\":{" : "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) sb_add(s, ",", 1);
            sb_json_str(s, w->meta[2 * i]);
            sb_add(s, ":", 1);
            sb_json_str(s, w->meta[2 * i + 1]);
        }
        sb_add(s, "}", 1);
    }
    sb_add(s, "}", 1);
    while (!s->oom && s->n % 8) sb_add(s, " ", 1);
    if (s->oom) return dsv_error(DSV_ERR_NOMEM, "out of memory for the header");
    if (s->n > DSV_ST_MAX_HEADER)
        return dsv_error(DSV_ERR_ARG, "header of %zu bytes exceeds the %u-byte limit readers accept", s->n,
                         DSV_ST_MAX_HEADER);
    return DSV_OK;
}

int dsv_st_writer_begin(dsv_st_writer *w, const char *path) {
    if (!w || !path) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_begin: NULL argument");
    if (w->state != W_DECLARE) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_begin: already begun");
    struct sbuf s = {0};
    int rc = writer_header(w, &s);
    if (rc) { free(s.p); return rc; }
    free(w->path); /* from an earlier begin that failed to create the file */
    free(w->tmp_path);
    w->path = strdup(path);
    w->tmp_path = malloc(strlen(path) + 5);
    if (!w->path || !w->tmp_path) { free(s.p); return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    sprintf(w->tmp_path, "%s.tmp", path);
    w->fp = fopen(w->tmp_path, "wb");
    if (!w->fp) {
        free(s.p);
        return dsv_error(DSV_ERR_IO, "%s: cannot create: %s", w->tmp_path, strerror(errno));
    }
    w->state = W_WRITING;
    /* Large buffer: puts of small rows still reach the disk in big writes. */
    setvbuf(w->fp, NULL, _IOFBF, 1 << 20);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)s.n >> (8 * i));
    int ok = fwrite(len, 1, 8, w->fp) == 8 && fwrite(s.p, 1, s.n, w->fp) == s.n;
    free(s.p);
    if (!ok) {
        rc = dsv_error(DSV_ERR_IO, "%s: write failed: %s", w->tmp_path, strerror(errno));
        writer_abort(w);
        return rc;
    }
    return DSV_OK;
}

int dsv_st_writer_put(dsv_st_writer *w, const void *data, size_t n) {
    if (!w || (!data && n)) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_put: NULL argument");
    if (w->state != W_WRITING)
        return dsv_error(DSV_ERR_ARG, "dsv_st_writer_put: not between begin and finish");
    if (n > w->data_size - w->written) {
        int rc = dsv_error(DSV_ERR_ARG,
                           "%s: put of %zu bytes exceeds the declared data size (%llu of %llu written)",
                           w->path, n, (unsigned long long)w->written, (unsigned long long)w->data_size);
        writer_abort(w);
        return rc;
    }
    if (n && fwrite(data, 1, n, w->fp) != n) {
        int rc = dsv_error(DSV_ERR_IO, "%s: write failed: %s", w->tmp_path, strerror(errno));
        writer_abort(w);
        return rc;
    }
    w->written += n;
    return DSV_OK;
}

/* Flushes, fsyncs and closes fp, then renames tmp over path. fp is closed
 * in every case. Why fsync: without it a crash soon after the rename can
 * leave an empty file under the final name on common file systems. */
static int commit_file(FILE *fp, const char *tmp, const char *path) {
    int bad = fflush(fp) != 0 || fsync(fileno(fp)) != 0;
    int e = errno;
    if (fclose(fp) != 0 && !bad) { bad = 1; e = errno; }
    if (bad) return dsv_error(DSV_ERR_IO, "%s: write failed: %s", tmp, strerror(e));
    if (rename(tmp, path) != 0)
        return dsv_error(DSV_ERR_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    return DSV_OK;
}

int dsv_st_writer_finish(dsv_st_writer *w) {
    if (!w) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_finish: NULL argument");
    if (w->state != W_WRITING) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_finish: not begun");
    if (w->written != w->data_size) {
        int rc = dsv_error(DSV_ERR_ARG, "%s: only %llu of %llu data bytes were put", w->path,
                           (unsigned long long)w->written, (unsigned long long)w->data_size);
        writer_abort(w);
        return rc;
    }
    FILE *fp = w->fp;
    w->fp = NULL;
    int rc = commit_file(fp, w->tmp_path, w->path);
    if (rc) writer_abort(w);
    w->state = W_DONE;
    return rc;
}

int dsv_st_writer_write(dsv_st_writer *w, const char *path) {
    if (!w || !path) return dsv_error(DSV_ERR_ARG, "dsv_st_writer_write: NULL argument");
    char nb[128];
    for (int i = 0; i < w->n; i++)
        if (w->t[i].nbytes && !w->t[i].data)
            return dsv_error(DSV_ERR_ARG, "dsv_st_writer_write: tensor \"%s\" has no data",
                             printable(w->t[i].name, nb));
    int rc = dsv_st_writer_begin(w, path);
    for (int i = 0; !rc && i < w->n; i++) rc = dsv_st_writer_put(w, w->t[i].data, w->t[i].nbytes);
    return rc ? rc : dsv_st_writer_finish(w);
}

/* ---- index writer ---- */

struct map_entry {
    const char *name, *shard;
};

static int cmp_map_entry(const void *a, const void *b) {
    return strcmp(((const struct map_entry *)a)->name, ((const struct map_entry *)b)->name);
}

int dsv_st_write_index(const char *dir, const char *const *shards, int n_shards) {
    if (!dir || (!shards && n_shards) || n_shards < 1)
        return dsv_error(DSV_ERR_ARG, "dsv_st_write_index: no shards");
    for (int i = 0; i < n_shards; i++)
        if (!shards[i] || !plain_file_name(shards[i]) || !valid_utf8(shards[i]))
            return dsv_error(DSV_ERR_ARG, "dsv_st_write_index: shard %d is not a plain file name", i);
    dsv_st **sts = calloc((size_t)n_shards, sizeof *sts);
    struct map_entry *map = NULL;
    struct sbuf s = {0};
    char *path = NULL, *tmp = NULL;
    int rc = DSV_OK, n = 0;
    uint64_t total = 0;
    if (!sts) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n_shards; i++) {
        char *p = path_join(dir, shards[i]);
        rc = p ? dsv_st_open(&sts[i], p) : dsv_error(DSV_ERR_NOMEM, "out of memory");
        free(p);
        if (!rc) n += dsv_st_count(sts[i]);
    }
    if (!rc && !(map = malloc(((size_t)n + 1) * sizeof *map))) rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
    if (!rc) {
        int k = 0;
        for (int i = 0; i < n_shards; i++)
            for (int j = 0; j < dsv_st_count(sts[i]); j++) {
                const dsv_st_tensor *t = dsv_st_at(sts[i], j);
                map[k++] = (struct map_entry){t->name, shards[i]};
                total += t->nbytes;
            }
        qsort(map, (size_t)n, sizeof *map, cmp_map_entry);
        char nb[128];
        for (int i = 1; i < n && !rc; i++)
            if (!strcmp(map[i].name, map[i - 1].name))
                rc = dsv_error(DSV_ERR_FORMAT, "tensor \"%s\" is in both %s and %s",
                               printable(map[i].name, nb), map[i - 1].shard, map[i].shard);
    }
    if (!rc) {
        /* The layout transformers writes: two-space indent, names sorted. */
        sb_str(&s, "{\n  \"metadata\": {\n    \"total_size\": ");
        sb_u64(&s, total);
        sb_str(&s, "\n  },\n  \"weight_map\": {");
        for (int i = 0; i < n; i++) {
            sb_str(&s, i ? ",\n    " : "\n    ");
            sb_json_str(&s, map[i].name);
            sb_str(&s, ": ");
            sb_json_str(&s, map[i].shard);
        }
        sb_str(&s, "\n  }\n}\n");
        path = path_join(dir, "model.safetensors.index.json");
        tmp = path ? malloc(strlen(path) + 5) : NULL;
        if (s.oom || !tmp) rc = dsv_error(DSV_ERR_NOMEM, "out of memory");
    }
    if (!rc) {
        sprintf(tmp, "%s.tmp", path);
        FILE *fp = fopen(tmp, "wb");
        if (!fp) rc = dsv_error(DSV_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        else if (fwrite(s.p, 1, s.n, fp) != s.n) {
            rc = dsv_error(DSV_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
            fclose(fp);
        } else rc = commit_file(fp, tmp, path);
        if (rc) unlink(tmp);
    }
    for (int i = 0; i < n_shards; i++) dsv_st_close(sts[i]);
    free(sts);
    free(map);
    free(s.p);
    free(path);
    free(tmp);
    return rc;
}
