/* gguf.c: the GGUF reader (mmap + validation) and writer declared in gguf.h.
 *
 * Reader, in the order it runs: map the file; a cursor walks the header
 * (magic, version, counts, key-values, tensor infos), every read bounded by
 * the bytes left; counts are checked against the least bytes their items
 * could take before anything is allocated for them; then the tensors are
 * placed in the data section and checked for overlap. For a split set the
 * same runs for every part, and one hash table over all names catches a
 * tensor stored twice.
 *
 * The input is hostile (a fuzz target drives dsv_gguf_open_memory): no
 * pointer is formed past the end of the image, no size is multiplied before
 * an overflow check, and names are copied NUL-terminated only after their
 * length has been checked.
 *
 * Writer: key-values and tensor infos are serialized at begin, then the data
 * streams through stdio with the padding after each tensor that llama.cpp's
 * writer puts there. Not done: big-endian files (refused), version 1. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"

/* Bytes of one element of a fixed-size value type; 0 for string and array. */
static size_t vsize(uint32_t t) {
    switch (t) {
    case DSV_GGUF_U8: case DSV_GGUF_I8: case DSV_GGUF_BOOL: return 1;
    case DSV_GGUF_U16: case DSV_GGUF_I16: return 2;
    case DSV_GGUF_U32: case DSV_GGUF_I32: case DSV_GGUF_F32: return 4;
    case DSV_GGUF_U64: case DSV_GGUF_I64: case DSV_GGUF_F64: return 8;
    }
    return 0;
}

static const char *vtype_name(uint32_t t) {
    static const char *n[DSV_GGUF_NTYPES] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                             "string", "array", "u64", "i64", "f64"};
    return t < DSV_GGUF_NTYPES ? n[t] : "?";
}

/* ---- reader ------------------------------------------------------------ */

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
/* Far above any real file (DeepSeek-V3 has ~1,100 tensors per part); keeps
 * indices in an int. */
#define MAX_ITEMS (1 << 24)

struct kv {
    char *key;
    uint32_t type, arr_type;
    uint64_t n;               /* array length; 1 otherwise */
    const uint8_t *val;       /* the value (for an array: its first element) */
    uint64_t *str_off;        /* string arrays: offset of each string from val */
};

struct gfile {
    char *path;
    const uint8_t *base;
    size_t size;
    int mapped;
    uint32_t version, alignment;
    struct kv *kv;
    int n_kv;
};

struct dsv_gguf {
    struct gfile *files;
    int n_files;
    dsv_gguf_tensor *tensors;
    int n_tensors;
    uint32_t *slots;          /* hash table of tensor index + 1; 0 = empty */
    uint32_t mask;
};

/* A copy of s[0..n) fit for a one-line message: at most ~60 bytes,
 * control characters as '?'. */
static const char *printable(const char *s, size_t n, char buf[static 80]) {
    size_t i = 0;
    for (; i < n && i < 60; i++) buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (i < n) { memcpy(buf + i, "...", 3); i += 3; }
    buf[i] = 0;
    return buf;
}

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void dsv_gguf_close(dsv_gguf *g) {
    if (!g) return;
    for (int i = 0; i < g->n_files; i++) {
        struct gfile *f = &g->files[i];
        if (f->mapped) munmap((void *)f->base, f->size);
        for (int k = 0; k < f->n_kv; k++) {
            free(f->kv[k].key);
            free(f->kv[k].str_off);
        }
        free(f->kv);
        free(f->path);
    }
    for (int i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->files);
    free(g->tensors);
    free(g->slots);
    free(g);
}

/* The reading position in one file. */
typedef struct cursor {
    const struct gfile *f;
    size_t pos;
} cursor;

static size_t left(const cursor *c) { return c->f->size - c->pos; }

static int truncated(const cursor *c, const char *what) {
    return dsv_error(DSV_ERR_FORMAT, "%s: truncated: %s at byte %zu runs past the end (%zu bytes)", c->f->path,
                     what, c->pos, c->f->size);
}

static int rd(cursor *c, void *out, size_t n, const char *what) {
    if (left(c) < n) return truncated(c, what);
    memcpy(out, c->f->base + c->pos, n);
    c->pos += n;
    return DSV_OK;
}

/* A string: its bytes stay in the mapping. */
static int rd_str(cursor *c, const char **s, uint64_t *len, const char *what) {
    int st = rd(c, len, 8, what);
    if (st) return st;
    if (*len > left(c)) return truncated(c, what);
    *s = (const char *)c->f->base + c->pos;
    c->pos += (size_t)*len;
    return DSV_OK;
}

/* Skips a value of type t (not an array), checking bools. */
static int skip_value(cursor *c, uint32_t t, const char *key) {
    char kb[80];
    if (t == DSV_GGUF_STRING) {
        const char *s;
        uint64_t n;
        return rd_str(c, &s, &n, "a string value");
    }
    size_t k = vsize(t);
    if (!k) return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\": unknown value type %u", c->f->path,
                             printable(key, strlen(key), kb), t);
    if (left(c) < k) return truncated(c, "a value");
    if (t == DSV_GGUF_BOOL && c->f->base[c->pos] > 1)
        return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\": bool value %u is neither 0 nor 1", c->f->path,
                         printable(key, strlen(key), kb), c->f->base[c->pos]);
    c->pos += k;
    return DSV_OK;
}

static int parse_kv(cursor *c, struct kv *kv, struct kv *prev, int n_prev) {
    const char *k;
    uint64_t klen;
    int st;
    char kb[80];
    if ((st = rd_str(c, &k, &klen, "a key"))) return st;
    if (klen == 0) return dsv_error(DSV_ERR_FORMAT, "%s: empty key at byte %zu", c->f->path, c->pos - 8);
    if (memchr(k, 0, (size_t)klen))
        return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\" contains a NUL byte", c->f->path, printable(k, (size_t)klen, kb));
    if (!(kv->key = strndup(k, (size_t)klen))) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", c->f->path);
    for (int i = 0; i < n_prev; i++)
        if (!strcmp(prev[i].key, kv->key))
            return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\" appears twice", c->f->path, printable(k, (size_t)klen, kb));
    if ((st = rd(c, &kv->type, 4, "a value type"))) return st;
    kv->n = 1;
    if (kv->type != DSV_GGUF_ARRAY) {
        kv->val = c->f->base + c->pos;
        return skip_value(c, kv->type, kv->key);
    }
    if ((st = rd(c, &kv->arr_type, 4, "an array type")) || (st = rd(c, &kv->n, 8, "an array length"))) return st;
    kv->val = c->f->base + c->pos;
    if (kv->arr_type == DSV_GGUF_ARRAY)
        return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\": nested arrays are not supported", c->f->path,
                         printable(kv->key, (size_t)klen, kb));
    if (kv->arr_type == DSV_GGUF_STRING) {
        /* Each string takes at least its 8-byte length: bound the count by
         * that before allocating an offset per string. */
        if (kv->n > left(c) / 8) return truncated(c, "a string array");
        if (!(kv->str_off = malloc((size_t)(kv->n ? kv->n : 1) * sizeof *kv->str_off)))
            return dsv_error(DSV_ERR_NOMEM, "%s: out of memory for key \"%s\"", c->f->path, kv->key);
        for (uint64_t i = 0; i < kv->n; i++) {
            kv->str_off[i] = (uint64_t)(c->pos - (size_t)(kv->val - c->f->base));
            if ((st = skip_value(c, DSV_GGUF_STRING, kv->key))) return st;
        }
        return DSV_OK;
    }
    size_t es = vsize(kv->arr_type);
    if (!es) return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\": unknown array element type %u", c->f->path,
                              printable(kv->key, (size_t)klen, kb), kv->arr_type);
    if (kv->n > left(c) / es) return truncated(c, "an array");
    if (kv->arr_type == DSV_GGUF_BOOL)
        for (uint64_t i = 0; i < kv->n; i++)
            if (kv->val[i] > 1)
                return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\": bool element %llu is %u", c->f->path,
                                 printable(kv->key, (size_t)klen, kb), (unsigned long long)i, kv->val[i]);
    c->pos += (size_t)(kv->n * es);
    return DSV_OK;
}

static int kv_index(const struct gfile *f, const char *key) {
    for (int i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return i;
    return -1;
}

/* A file-level integer key of an exact type (alignment, split numbers). */
static int file_uint(const struct gfile *f, const char *key, uint32_t type, uint64_t *out, int *present) {
    int i = kv_index(f, key);
    *present = i >= 0;
    if (i < 0) return DSV_OK;
    if (f->kv[i].type != type)
        return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\" is %s, expected %s", f->path, key,
                         vtype_name(f->kv[i].type), vtype_name(type));
    uint64_t v = 0;
    memcpy(&v, f->kv[i].val, vsize(type)); /* little-endian host: low bytes first */
    if (type == DSV_GGUF_I32 && (int32_t)v < 0)
        return dsv_error(DSV_ERR_FORMAT, "%s: key \"%s\" is negative", f->path, key);
    *out = v;
    return DSV_OK;
}

struct span { uint64_t begin, end; int idx; };

static int cmp_span(const void *a, const void *b) {
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Parses one tensor info into t (name copied); offset in *off. */
static int parse_tensor_info(cursor *c, dsv_gguf_tensor *t, uint64_t *off) {
    const char *s;
    uint64_t len;
    char nb[80];
    int st;
    if ((st = rd_str(c, &s, &len, "a tensor name"))) return st;
    if (len == 0 || len > DSV_GGUF_MAX_NAME || memchr(s, 0, (size_t)len))
        return dsv_error(DSV_ERR_FORMAT, "%s: tensor name \"%s\" (%llu bytes) is empty, longer than %d bytes or holds a NUL",
                         c->f->path, printable(s, (size_t)len, nb), (unsigned long long)len, DSV_GGUF_MAX_NAME);
    if (!(t->name = strndup(s, (size_t)len))) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", c->f->path);
    uint32_t nd;
    if ((st = rd(c, &nd, 4, "a tensor's n_dims"))) return st;
    if (nd < 1 || nd > DSV_GGUF_MAX_DIMS)
        return dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\": %u dimensions (1 to %d allowed)", c->f->path,
                         t->name, nd, DSV_GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    for (int d = 0; d < DSV_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        if ((st = rd(c, &v, 8, "a tensor extent"))) return st;
        if (v > (uint64_t)INT64_MAX)
            return dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\": extent ne[%u] = %llu is negative as int64", c->f->path,
                             t->name, d, (unsigned long long)v);
        t->ne[d] = (int64_t)v;
    }
    if ((st = rd(c, &t->type, 4, "a tensor type")) || (st = rd(c, off, 8, "a tensor offset"))) return st;
    const int blck = dsv_ggml_blck(t->type);
    if (!blck) return dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\": unknown ggml type %u", c->f->path, t->name, t->type);
    if (t->ne[0] % blck)
        return dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\": row length %lld is not a multiple of %s's block of %d",
                         c->f->path, t->name, (long long)t->ne[0], dsv_ggml_name(t->type), blck);
    uint64_t nbytes = (uint64_t)(t->ne[0] / blck) * dsv_ggml_bsize(t->type), n_el = (uint64_t)t->ne[0];
    for (int d = 1; d < DSV_GGUF_MAX_DIMS; d++)
        if (__builtin_mul_overflow(nbytes, (uint64_t)t->ne[d], &nbytes) ||
            __builtin_mul_overflow(n_el, (uint64_t)t->ne[d], &n_el) || n_el > (uint64_t)INT64_MAX)
            return dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\": size overflows 64 bits", c->f->path, t->name);
    if (nbytes > SIZE_MAX)
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: tensor \"%s\": larger than the address space", c->f->path, t->name);
    t->nbytes = (size_t)nbytes;
    return DSV_OK;
}

/* Parses one file's header; appends its tensors to g. */
static int parse_file(dsv_gguf *g, struct gfile *f, int file) {
    cursor c = {f, 0};
    uint32_t magic;
    uint64_t n_tensors, n_kv;
    int st;
    if (f->size < 4) return truncated(&c, "the magic");
    memcpy(&magic, f->base, 4);
    if (magic != GGUF_MAGIC) return dsv_error(DSV_ERR_FORMAT, "%s: not a GGUF file (no \"GGUF\" magic)", f->path);
    c.pos = 4;
    if ((st = rd(&c, &f->version, 4, "the version"))) return st;
    if (f->version == 1)
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: GGUF version 1 is not supported (2 and 3 are)", f->path);
    if ((f->version & 0xffff) == 0 && f->version)
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: a big-endian GGUF file is not supported", f->path);
    if (f->version != 2 && f->version != 3)
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (2 and 3 are)", f->path, f->version);
    if ((st = rd(&c, &n_tensors, 8, "the tensor count")) || (st = rd(&c, &n_kv, 8, "the key-value count"))) return st;
    /* A key-value takes at least 8 + 1 + 4 + 1 bytes, a tensor info
     * 8 + 1 + 4 + 8 + 4 + 8. */
    if (n_kv > MAX_ITEMS || n_kv > left(&c) / 14)
        return dsv_error(DSV_ERR_FORMAT, "%s: key-value count %llu cannot fit in the file", f->path, (unsigned long long)n_kv);
    if (n_tensors > MAX_ITEMS || n_tensors > left(&c) / 33)
        return dsv_error(DSV_ERR_FORMAT, "%s: tensor count %llu cannot fit in the file", f->path,
                         (unsigned long long)n_tensors);
    if (!(f->kv = calloc((size_t)n_kv + 1, sizeof *f->kv))) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", f->path);
    for (uint64_t i = 0; i < n_kv; i++) {
        st = parse_kv(&c, &f->kv[i], f->kv, (int)i);
        f->n_kv = (int)i + 1; /* freed on error too */
        if (st) return st;
    }
    uint64_t align = DSV_GGUF_DEFAULT_ALIGNMENT;
    int present;
    if ((st = file_uint(f, "general.alignment", DSV_GGUF_U32, &align, &present))) return st;
    if (align == 0 || (align & (align - 1)))
        return dsv_error(DSV_ERR_FORMAT, "%s: general.alignment %llu is not a power of two", f->path, (unsigned long long)align);
    f->alignment = (uint32_t)align;

    if (n_tensors > (uint64_t)(MAX_ITEMS - g->n_tensors))
        return dsv_error(DSV_ERR_FORMAT, "%s: too many tensors in the set", f->path);
    dsv_gguf_tensor *ts = realloc(g->tensors, (size_t)(g->n_tensors + (int)n_tensors + 1) * sizeof *ts);
    uint64_t *offs = malloc((size_t)(n_tensors + 1) * sizeof *offs);
    struct span *sp = malloc((size_t)(n_tensors + 1) * sizeof *sp);
    if (ts) g->tensors = ts;
    if (!ts || !offs || !sp) {
        free(offs);
        free(sp);
        return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", f->path);
    }
    const int base = g->n_tensors;
    for (uint64_t i = 0; i < n_tensors; i++) {
        dsv_gguf_tensor *t = &g->tensors[base + (int)i];
        memset(t, 0, sizeof *t);
        t->file = file;
        g->n_tensors++; /* its name is freed by close, even on error */
        if ((st = parse_tensor_info(&c, t, &offs[i]))) goto out;
    }
    /* The data section starts at the next multiple of the alignment. */
    uint64_t data_off = ((uint64_t)c.pos + align - 1) / align * align;
    uint64_t data_size = data_off <= f->size ? f->size - data_off : 0;
    if (n_tensors && data_off > f->size) {
        st = dsv_error(DSV_ERR_FORMAT, "%s: truncated: the data section would start at byte %llu, past the end (%zu bytes)",
                       f->path, (unsigned long long)data_off, f->size);
        goto out;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        dsv_gguf_tensor *t = &g->tensors[base + (int)i];
        if (offs[i] % align) {
            st = dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\": offset %llu is not a multiple of the alignment %llu", f->path,
                           t->name, (unsigned long long)offs[i], (unsigned long long)align);
            goto out;
        }
        if (offs[i] > data_size || t->nbytes > data_size - offs[i]) {
            st = dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\": bytes %llu..%llu run past the data section (%llu bytes)",
                           f->path, t->name, (unsigned long long)offs[i], (unsigned long long)offs[i] + t->nbytes,
                           (unsigned long long)data_size);
            goto out;
        }
        t->data = f->base + data_off + offs[i];
        sp[i] = (struct span){offs[i], offs[i] + t->nbytes, base + (int)i};
    }
    qsort(sp, (size_t)n_tensors, sizeof *sp, cmp_span);
    for (uint64_t i = 1; i < n_tensors; i++)
        if (sp[i].begin < sp[i - 1].end) {
            st = dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\" overlaps tensor \"%s\"", f->path, g->tensors[sp[i].idx].name,
                           g->tensors[sp[i - 1].idx].name);
            goto out;
        }
    st = DSV_OK;
out:
    free(offs);
    free(sp);
    return st;
}

static int map_file(struct gfile *f) {
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return dsv_error(DSV_ERR_IO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dsv_error(DSV_ERR_IO, "%s: not a readable regular file", f->path);
    }
    if ((uint64_t)sb.st_size != (uint64_t)(size_t)sb.st_size) {
        close(fd);
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: file does not fit in the address space", f->path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size == 0) { close(fd); return DSV_OK; }
    void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return dsv_error(DSV_ERR_IO, "%s: cannot map: %s", f->path, strerror(e));
    f->base = p;
    f->mapped = 1;
    return DSV_OK;
}

static struct gfile *add_file(dsv_gguf *g, const char *path) {
    struct gfile *fs = realloc(g->files, (size_t)(g->n_files + 1) * sizeof *fs);
    if (!fs) return NULL;
    g->files = fs;
    struct gfile *f = &fs[g->n_files];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return NULL;
    g->n_files++;
    return f;
}

static int build_table(dsv_gguf *g) {
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)g->n_tensors) cap *= 2;
    if (!(g->slots = calloc(cap, sizeof *g->slots))) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    g->mask = cap - 1;
    for (int i = 0; i < g->n_tensors; i++) {
        uint32_t s = (uint32_t)hash_name(g->tensors[i].name) & g->mask;
        for (; g->slots[s]; s = (s + 1) & g->mask)
            if (!strcmp(g->tensors[g->slots[s] - 1].name, g->tensors[i].name))
                return dsv_error(DSV_ERR_FORMAT, "%s: tensor \"%s\" appears twice (also in %s)",
                                 g->files[g->tensors[i].file].path, g->tensors[i].name,
                                 g->files[g->tensors[g->slots[s] - 1].file].path);
        g->slots[s] = (uint32_t)i + 1;
    }
    return DSV_OK;
}

/* Split sets: the first file's split.count says how many parts; their names
 * differ from the first's only in the part number. */
static int open_split(dsv_gguf *g, const char *path) {
    struct gfile *f0 = &g->files[0];
    uint64_t no = 0, count = 1, total = 0;
    int has_no, has_count, has_total, st;
    if ((st = file_uint(f0, "split.no", DSV_GGUF_U16, &no, &has_no)) ||
        (st = file_uint(f0, "split.count", DSV_GGUF_U16, &count, &has_count)) ||
        (st = file_uint(f0, "split.tensors.count", DSV_GGUF_I32, &total, &has_total)))
        return st;
    if (!has_count || count <= 1) return DSV_OK;
    if (no != 0)
        return dsv_error(DSV_ERR_ARG, "%s: part %llu of a split set; open the first part (-00001-of-)", path,
                         (unsigned long long)no + 1);
    char tail[48];
    snprintf(tail, sizeof tail, "-00001-of-%05llu.gguf", (unsigned long long)count);
    size_t n = strlen(path), tn = strlen(tail);
    if (n < tn || strcmp(path + n - tn, tail))
        return dsv_error(DSV_ERR_FORMAT, "%s: split.count is %llu but the name does not end in %s", path,
                         (unsigned long long)count, tail);
    char *p = malloc(n + 48);
    if (!p) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (uint64_t k = 1; k < count; k++) {
        snprintf(p, n + 48, "%.*s-%05llu-of-%05llu.gguf", (int)(n - tn), path, (unsigned long long)k + 1,
                 (unsigned long long)count);
        struct gfile *f = add_file(g, p);
        if (!f) { free(p); return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
        uint64_t fno = 0, fcount = 0;
        int a, b;
        if ((st = map_file(f)) || (st = parse_file(g, f, g->n_files - 1)) ||
            (st = file_uint(f, "split.no", DSV_GGUF_U16, &fno, &a)) ||
            (st = file_uint(f, "split.count", DSV_GGUF_U16, &fcount, &b))) {
            free(p);
            return st;
        }
        if (!a || !b || fno != k || fcount != count) {
            free(p);
            return dsv_error(DSV_ERR_FORMAT, "%s: expected split.no %llu and split.count %llu", f->path,
                             (unsigned long long)k, (unsigned long long)count);
        }
    }
    free(p);
    if (has_total && total != (uint64_t)g->n_tensors)
        return dsv_error(DSV_ERR_FORMAT, "%s: split.tensors.count is %llu but the parts hold %d tensors", path,
                         (unsigned long long)total, g->n_tensors);
    return DSV_OK;
}

int dsv_gguf_open(dsv_gguf **out, const char *path) {
    if (!out || !path) return dsv_error(DSV_ERR_ARG, "dsv_gguf_open: NULL argument");
    *out = NULL;
    dsv_gguf *g = calloc(1, sizeof *g);
    int st;
    if (!g || !add_file(g, path)) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    else if (!(st = map_file(&g->files[0])) && !(st = parse_file(g, &g->files[0], 0)) && !(st = open_split(g, path)))
        st = build_table(g);
    if (st) { dsv_gguf_close(g); return st; }
    *out = g;
    return DSV_OK;
}

int dsv_gguf_open_memory(dsv_gguf **out, const void *buf, size_t size, const char *name) {
    if (!out || (!buf && size)) return dsv_error(DSV_ERR_ARG, "dsv_gguf_open_memory: NULL argument");
    *out = NULL;
    dsv_gguf *g = calloc(1, sizeof *g);
    int st;
    if (!g || !add_file(g, name ? name : "<memory>")) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    else {
        g->files[0].base = buf;
        g->files[0].size = size;
        if (!(st = parse_file(g, &g->files[0], 0))) st = build_table(g);
    }
    if (st) { dsv_gguf_close(g); return st; }
    *out = g;
    return DSV_OK;
}

int dsv_gguf_version(const dsv_gguf *g) { return (int)g->files[0].version; }
uint32_t dsv_gguf_alignment(const dsv_gguf *g) { return g->files[0].alignment; }
int dsv_gguf_file_count(const dsv_gguf *g) { return g->n_files; }
const char *dsv_gguf_file_path(const dsv_gguf *g, int file) {
    return file >= 0 && file < g->n_files ? g->files[file].path : NULL;
}
int dsv_gguf_count(const dsv_gguf *g) { return g->n_tensors; }
const dsv_gguf_tensor *dsv_gguf_at(const dsv_gguf *g, int i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}
const dsv_gguf_tensor *dsv_gguf_find(const dsv_gguf *g, const char *name) {
    for (uint32_t s = (uint32_t)hash_name(name) & g->mask; g->slots[s]; s = (s + 1) & g->mask)
        if (!strcmp(g->tensors[g->slots[s] - 1].name, name)) return &g->tensors[g->slots[s] - 1];
    return NULL;
}

int dsv_gguf_kv_count(const dsv_gguf *g) { return g->files[0].n_kv; }
int dsv_gguf_kv_find(const dsv_gguf *g, const char *key) { return kv_index(&g->files[0], key); }
const char *dsv_gguf_kv_key(const dsv_gguf *g, int i) { return g->files[0].kv[i].key; }
int dsv_gguf_kv_type(const dsv_gguf *g, int i) { return (int)g->files[0].kv[i].type; }
int dsv_gguf_arr_type(const dsv_gguf *g, int i) { return (int)g->files[0].kv[i].arr_type; }
uint64_t dsv_gguf_arr_n(const dsv_gguf *g, int i) { return g->files[0].kv[i].n; }

/* A number of a numeric type at p, as a double (exact for every integer a
 * model's metadata holds: below 2^53). */
static double num_at(uint32_t t, const uint8_t *p) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } v;
    memcpy(&v, p, vsize(t));
    switch (t) {
    case DSV_GGUF_U8: case DSV_GGUF_BOOL: return v.u8;
    case DSV_GGUF_I8: return v.i8;
    case DSV_GGUF_U16: return v.u16;
    case DSV_GGUF_I16: return v.i16;
    case DSV_GGUF_U32: return v.u32;
    case DSV_GGUF_I32: return v.i32;
    case DSV_GGUF_F32: return v.f32;
    case DSV_GGUF_U64: return (double)v.u64;
    case DSV_GGUF_I64: return (double)v.i64;
    default: return v.f64;
    }
}

static int is_int_type(uint32_t t) {
    return t <= DSV_GGUF_I32 || t == DSV_GGUF_U64 || t == DSV_GGUF_I64;
}

static const struct kv *get(const dsv_gguf *g, const char *key, int *st) {
    int i = kv_index(&g->files[0], key);
    if (i < 0) {
        *st = dsv_error(DSV_ERR_MODEL, "%s: metadata key \"%s\" is missing", g->files[0].path, key);
        return NULL;
    }
    *st = DSV_OK;
    return &g->files[0].kv[i];
}

static int wrong_type(const dsv_gguf *g, const struct kv *kv, const char *want) {
    return dsv_error(DSV_ERR_MODEL, "%s: metadata key \"%s\" is %s, expected %s", g->files[0].path, kv->key,
                     vtype_name(kv->type), want);
}

int dsv_gguf_get_int(const dsv_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    int st;
    const struct kv *kv = get(g, key, &st);
    if (!kv) return st;
    if (!is_int_type(kv->type)) return wrong_type(g, kv, "an integer");
    int64_t v;
    if (kv->type == DSV_GGUF_U64) {
        uint64_t u;
        memcpy(&u, kv->val, 8);
        v = u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u;
    } else if (kv->type == DSV_GGUF_I64) memcpy(&v, kv->val, 8);
    else v = (int64_t)num_at(kv->type, kv->val);
    if (v < lo || v > hi)
        return dsv_error(DSV_ERR_MODEL, "%s: metadata key \"%s\" = %lld is outside [%lld, %lld]", g->files[0].path, key,
                         (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return DSV_OK;
}

int dsv_gguf_get_f32(const dsv_gguf *g, const char *key, float *out) {
    int st;
    const struct kv *kv = get(g, key, &st);
    if (!kv) return st;
    if (kv->type != DSV_GGUF_F32 && kv->type != DSV_GGUF_F64) return wrong_type(g, kv, "a float");
    *out = (float)num_at(kv->type, kv->val);
    return DSV_OK;
}

int dsv_gguf_get_bool(const dsv_gguf *g, const char *key, int *out) {
    int st;
    const struct kv *kv = get(g, key, &st);
    if (!kv) return st;
    if (kv->type != DSV_GGUF_BOOL) return wrong_type(g, kv, "a bool");
    *out = kv->val[0];
    return DSV_OK;
}

int dsv_gguf_get_str(const dsv_gguf *g, const char *key, const char **s, size_t *len) {
    int st;
    const struct kv *kv = get(g, key, &st);
    if (!kv) return st;
    if (kv->type != DSV_GGUF_STRING) return wrong_type(g, kv, "a string");
    uint64_t n;
    memcpy(&n, kv->val, 8);
    *s = (const char *)kv->val + 8;
    *len = (size_t)n;
    return DSV_OK;
}

const char *dsv_gguf_arr_str(const dsv_gguf *g, int i, uint64_t k, size_t *len) {
    const struct kv *kv = &g->files[0].kv[i];
    DSV_ASSERT(kv->type == DSV_GGUF_ARRAY && kv->arr_type == DSV_GGUF_STRING && k < kv->n);
    uint64_t n;
    memcpy(&n, kv->val + kv->str_off[k], 8);
    *len = (size_t)n;
    return (const char *)kv->val + kv->str_off[k] + 8;
}

double dsv_gguf_arr_num(const dsv_gguf *g, int i, uint64_t k) {
    const struct kv *kv = &g->files[0].kv[i];
    DSV_ASSERT(kv->type == DSV_GGUF_ARRAY && vsize(kv->arr_type) && k < kv->n);
    return num_at(kv->arr_type, kv->val + k * vsize(kv->arr_type));
}

/* Lengths were bounded by the file's size when it was parsed, so the span
 * lies inside the mapping. */
const void *dsv_gguf_kv_bytes(const dsv_gguf *g, int i, size_t *len) {
    const struct kv *kv = &g->files[0].kv[i];
    uint64_t n = 0;
    if (kv->type == DSV_GGUF_STRING) {
        memcpy(&n, kv->val, 8);
        n += 8;
    } else if (kv->type != DSV_GGUF_ARRAY) {
        n = vsize(kv->type);
    } else if (kv->arr_type == DSV_GGUF_STRING) {
        if (kv->n) {
            memcpy(&n, kv->val + kv->str_off[kv->n - 1], 8);
            n += kv->str_off[kv->n - 1] + 8;
        }
    } else {
        n = kv->n * vsize(kv->arr_type);
    }
    *len = (size_t)n;
    return kv->val;
}

/* ---- writer ------------------------------------------------------------ */

struct wkv {
    char *key;
    uint32_t type;
    uint8_t *bytes; /* the value as stored after the type code */
    size_t len;
};

struct wtensor {
    char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[DSV_GGUF_MAX_DIMS];
    uint64_t offset, nbytes;
};

struct dsv_gguf_writer {
    struct wkv *kv;
    int n_kv;
    struct wtensor *t;
    int n_t;
    uint64_t data_size;
    FILE *f;
    char *path, *tmp;
    int cur;              /* the tensor being put */
    uint64_t cur_done;    /* its bytes put so far */
};

#define W_ALIGN DSV_GGUF_DEFAULT_ALIGNMENT

int dsv_gguf_writer_init(dsv_gguf_writer **out) {
    if (!out) return dsv_error(DSV_ERR_ARG, "dsv_gguf_writer_init: NULL argument");
    if (!(*out = calloc(1, sizeof **out))) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    return DSV_OK;
}

void dsv_gguf_writer_free(dsv_gguf_writer *w) {
    if (!w) return;
    if (w->f) {
        fclose(w->f);
        unlink(w->tmp);
    }
    for (int i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].bytes); }
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w->path);
    free(w->tmp);
    free(w);
}

/* Stores key's value bytes (taking ownership of bytes). */
static int set_kv(dsv_gguf_writer *w, const char *key, uint32_t type, uint8_t *bytes, size_t len) {
    if (!w || !key || !*key || w->f) { free(bytes); return dsv_error(DSV_ERR_ARG, "gguf writer: bad key or already begun"); }
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) {
            free(w->kv[i].bytes);
            w->kv[i].type = type;
            w->kv[i].bytes = bytes;
            w->kv[i].len = len;
            return DSV_OK;
        }
    struct wkv *kv = realloc(w->kv, (size_t)(w->n_kv + 1) * sizeof *kv);
    char *k = strdup(key);
    if (!kv || !k) {
        if (kv) w->kv = kv;
        free(k);
        free(bytes);
        return dsv_error(DSV_ERR_NOMEM, "out of memory");
    }
    w->kv = kv;
    w->kv[w->n_kv++] = (struct wkv){k, type, bytes, len};
    return DSV_OK;
}

static int set_fixed(dsv_gguf_writer *w, const char *key, uint32_t type, const void *v) {
    uint8_t *b = malloc(8);
    if (!b) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    memcpy(b, v, vsize(type));
    return set_kv(w, key, type, b, vsize(type));
}

int dsv_gguf_set_u32(dsv_gguf_writer *w, const char *key, uint32_t v) { return set_fixed(w, key, DSV_GGUF_U32, &v); }
int dsv_gguf_set_i32(dsv_gguf_writer *w, const char *key, int32_t v) { return set_fixed(w, key, DSV_GGUF_I32, &v); }
int dsv_gguf_set_u16(dsv_gguf_writer *w, const char *key, uint16_t v) { return set_fixed(w, key, DSV_GGUF_U16, &v); }
int dsv_gguf_set_f32(dsv_gguf_writer *w, const char *key, float v) { return set_fixed(w, key, DSV_GGUF_F32, &v); }
int dsv_gguf_set_bool(dsv_gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    return set_fixed(w, key, DSV_GGUF_BOOL, &b);
}

int dsv_gguf_set_str(dsv_gguf_writer *w, const char *key, const char *v) {
    if (!v) return dsv_error(DSV_ERR_ARG, "gguf writer: NULL string for \"%s\"", key ? key : "?");
    uint64_t n = strlen(v);
    uint8_t *b = malloc(8 + n);
    if (!b) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    memcpy(b, &n, 8);
    memcpy(b + 8, v, n);
    return set_kv(w, key, DSV_GGUF_STRING, b, 8 + n);
}

int dsv_gguf_set_arr(dsv_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n) {
    size_t es = elem_type >= 0 ? vsize((uint32_t)elem_type) : 0;
    if (!es || (n && !data) || n > SIZE_MAX / 16) return dsv_error(DSV_ERR_ARG, "gguf writer: bad array for \"%s\"", key ? key : "?");
    uint8_t *b = malloc(12 + (size_t)n * es);
    if (!b) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    uint32_t et = (uint32_t)elem_type;
    memcpy(b, &et, 4);
    memcpy(b + 4, &n, 8);
    if (n) memcpy(b + 12, data, (size_t)n * es);
    return set_kv(w, key, DSV_GGUF_ARRAY, b, 12 + (size_t)n * es);
}

int dsv_gguf_set_arr_str(dsv_gguf_writer *w, const char *key, const char *const *s, uint64_t n) {
    size_t len = 12;
    for (uint64_t i = 0; i < n; i++) {
        if (!s[i]) return dsv_error(DSV_ERR_ARG, "gguf writer: NULL string in \"%s\"", key ? key : "?");
        len += 8 + strlen(s[i]);
    }
    uint8_t *b = malloc(len), *p = b + 12;
    if (!b) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    uint32_t et = DSV_GGUF_STRING;
    memcpy(b, &et, 4);
    memcpy(b + 4, &n, 8);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = strlen(s[i]);
        memcpy(p, &k, 8);
        memcpy(p + 8, s[i], k);
        p += 8 + k;
    }
    return set_kv(w, key, DSV_GGUF_ARRAY, b, len);
}

int dsv_gguf_writer_add(dsv_gguf_writer *w, const char *name, uint32_t type, int n_dims, const int64_t *ne) {
    if (!w || !name || w->f) return dsv_error(DSV_ERR_ARG, "gguf writer: NULL argument or already begun");
    const int blck = dsv_ggml_blck(type);
    if (!*name || strlen(name) > DSV_GGUF_MAX_NAME)
        return dsv_error(DSV_ERR_ARG, "gguf writer: tensor name \"%s\" is empty or longer than %d bytes", name,
                         DSV_GGUF_MAX_NAME);
    if (!blck || n_dims < 1 || n_dims > DSV_GGUF_MAX_DIMS || ne[0] < 0 || ne[0] % blck)
        return dsv_error(DSV_ERR_ARG, "gguf writer: tensor \"%s\": bad type %u or extents", name, type);
    struct wtensor t = {.type = type, .n_dims = n_dims, .offset = w->data_size};
    uint64_t nb = (uint64_t)(ne[0] / blck) * dsv_ggml_bsize(type);
    for (int d = 0; d < DSV_GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] < 0 || (d && __builtin_mul_overflow(nb, (uint64_t)t.ne[d], &nb)))
            return dsv_error(DSV_ERR_ARG, "gguf writer: tensor \"%s\": bad extents", name);
    }
    for (int i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return dsv_error(DSV_ERR_ARG, "gguf writer: tensor \"%s\" added twice", name);
    t.nbytes = nb;
    struct wtensor *ts = realloc(w->t, (size_t)(w->n_t + 1) * sizeof *ts);
    if (!ts || !(t.name = strdup(name))) {
        if (ts) w->t = ts;
        return dsv_error(DSV_ERR_NOMEM, "out of memory");
    }
    w->t = ts;
    w->t[w->n_t++] = t;
    w->data_size += (nb + W_ALIGN - 1) / W_ALIGN * W_ALIGN;
    return DSV_OK;
}

uint64_t dsv_gguf_writer_data_size(const dsv_gguf_writer *w) { return w->data_size; }

static int wr(dsv_gguf_writer *w, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, w->f) != n) return dsv_error(DSV_ERR_IO, "%s: write failed: %s", w->tmp, strerror(errno));
    return DSV_OK;
}

static int pad(dsv_gguf_writer *w, uint64_t pos) {
    static const uint8_t zeros[W_ALIGN];
    return wr(w, zeros, (size_t)((W_ALIGN - pos % W_ALIGN) % W_ALIGN));
}

int dsv_gguf_writer_begin(dsv_gguf_writer *w, const char *path) {
    if (!w || !path || w->f) return dsv_error(DSV_ERR_ARG, "gguf writer: NULL path or already begun");
    free(w->path);
    free(w->tmp);
    w->path = strdup(path);
    w->tmp = malloc(strlen(path) + 5);
    if (!w->path || !w->tmp) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    sprintf(w->tmp, "%s.tmp", path);
    if (!(w->f = fopen(w->tmp, "wb"))) return dsv_error(DSV_ERR_IO, "%s: cannot create: %s", w->tmp, strerror(errno));
    uint32_t magic = GGUF_MAGIC, version = 3;
    uint64_t nt = (uint64_t)w->n_t, nkv = (uint64_t)w->n_kv, pos = 24;
    int st;
    if ((st = wr(w, &magic, 4)) || (st = wr(w, &version, 4)) || (st = wr(w, &nt, 8)) || (st = wr(w, &nkv, 8))) return st;
    for (int i = 0; i < w->n_kv; i++) {
        uint64_t kl = strlen(w->kv[i].key);
        if ((st = wr(w, &kl, 8)) || (st = wr(w, w->kv[i].key, kl)) || (st = wr(w, &w->kv[i].type, 4)) ||
            (st = wr(w, w->kv[i].bytes, w->kv[i].len)))
            return st;
        pos += 12 + kl + w->kv[i].len;
    }
    for (int i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        uint64_t nl = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims;
        if ((st = wr(w, &nl, 8)) || (st = wr(w, t->name, nl)) || (st = wr(w, &nd, 4))) return st;
        for (int d = 0; d < t->n_dims; d++)
            if ((st = wr(w, &t->ne[d], 8))) return st;
        if ((st = wr(w, &t->type, 4)) || (st = wr(w, &t->offset, 8))) return st;
        pos += 8 + nl + 4 + 8 * (uint64_t)t->n_dims + 12;
    }
    w->cur = 0;
    w->cur_done = 0;
    return pad(w, pos);
}

int dsv_gguf_writer_put(dsv_gguf_writer *w, const void *data, size_t n) {
    if (!w || !w->f) return dsv_error(DSV_ERR_ARG, "gguf writer: put before begin");
    const uint8_t *p = data;
    while (n) {
        if (w->cur >= w->n_t) return dsv_error(DSV_ERR_ARG, "gguf writer: more data than the declared tensors");
        const struct wtensor *t = &w->t[w->cur];
        size_t k = (size_t)DSV_MIN((uint64_t)n, t->nbytes - w->cur_done);
        int st = wr(w, p, k);
        if (st) return st;
        p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == t->nbytes) {
            if ((st = pad(w, t->nbytes))) return st;
            w->cur++;
            w->cur_done = 0;
        }
    }
    /* Empty tensors need no bytes: step over them. */
    while (w->cur < w->n_t && w->t[w->cur].nbytes == 0) w->cur++;
    return DSV_OK;
}

int dsv_gguf_writer_finish(dsv_gguf_writer *w) {
    if (!w || !w->f) return dsv_error(DSV_ERR_ARG, "gguf writer: finish before begin");
    int st = dsv_gguf_writer_put(w, NULL, 0);
    if (!st && w->cur < w->n_t)
        st = dsv_error(DSV_ERR_ARG, "gguf writer: tensor \"%s\" is missing data", w->t[w->cur].name);
    if (!st && (fflush(w->f) || fsync(fileno(w->f))))
        st = dsv_error(DSV_ERR_IO, "%s: cannot flush: %s", w->tmp, strerror(errno));
    int rc = fclose(w->f);
    w->f = NULL;
    if (!st && rc) st = dsv_error(DSV_ERR_IO, "%s: cannot close: %s", w->tmp, strerror(errno));
    if (!st && rename(w->tmp, w->path)) st = dsv_error(DSV_ERR_IO, "%s: cannot rename: %s", w->path, strerror(errno));
    if (st) unlink(w->tmp);
    return st;
}
