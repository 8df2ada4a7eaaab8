/* prefix.c: the prefix cache (see prefix.h).
 *
 * Storage is fixed at init: one entry slot per KV page (an entry holds a
 * reference on its page, and no page can be in two entries, because an
 * entry's page holds exactly the tokens of its key), a hash table of twice
 * that many buckets chained through entry indices, and an LRU list threaded
 * through the entries. Nothing allocates after init.
 *
 * Touch order: a lookup or an insert walks from the first page to the last
 * and then touches the entries deepest first, so a parent is always more
 * recent than its children. Eviction scans from the least recent end and
 * only takes leaves, so it meets the leaves of an old chain before their
 * parents and can free a whole chain in one pass. */
#include "prefix.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"

enum { NIL = -1 };

typedef struct entry {
    uint64_t hash;          /* of the parent's hash and this page's tokens */
    int32_t parent;         /* entry index, NIL for a first page */
    int32_t page;           /* KV page id (NIL: slot free) */
    int32_t n_children;
    int32_t hnext;          /* hash chain */
    int32_t prev, next;     /* LRU list: prev is more recent */
    int32_t tokens[DSV_PAGE];
} entry;

struct srv_prefix {
    dsv_context *ctx;
    entry *e;               /* [cap] */
    int32_t cap;
    int32_t *bucket;        /* [n_bucket] head entry index */
    uint32_t n_bucket;      /* power of two */
    int32_t free_head;      /* free slots, chained through hnext */
    int32_t mru, lru;       /* ends of the LRU list */
    int64_t n;
};

#define ROOT_HASH 0x6a09e667f3bcc908ull

/* FNV-1a over the 32-bit tokens, seeded with the parent's hash, then a
 * splitmix64 finalizer so that the low bits (the bucket) mix well. */
static uint64_t page_hash(uint64_t parent, const int32_t *t) {
    uint64_t h = parent ^ 0xcbf29ce484222325ull;
    for (int i = 0; i < DSV_PAGE; i++) h = (h ^ (uint32_t)t[i]) * 0x100000001b3ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 31);
}

int srv_prefix_init(srv_prefix **out, dsv_context *ctx) {
    int64_t used, nfree;
    dsv_kv_stats(ctx, &used, &nfree);
    int64_t cap = used + nfree;
    if (cap < 1) cap = 1;
    if (cap > INT32_MAX / 4) return dsv_error(DSV_ERR_ARG, "prefix cache: too many KV pages (%lld)", (long long)cap);
    srv_prefix *pc = calloc(1, sizeof *pc);
    if (!pc) return dsv_error(DSV_ERR_NOMEM, "prefix cache: out of memory");
    pc->ctx = ctx;
    pc->cap = (int32_t)cap;
    pc->n_bucket = 2;
    while (pc->n_bucket < 2 * (uint32_t)cap) pc->n_bucket *= 2;
    pc->e = malloc((size_t)cap * sizeof *pc->e);
    pc->bucket = malloc(pc->n_bucket * sizeof *pc->bucket);
    if (!pc->e || !pc->bucket) {
        srv_prefix_free(pc);
        return dsv_error(DSV_ERR_NOMEM, "prefix cache: out of memory for %lld entries", (long long)cap);
    }
    for (uint32_t b = 0; b < pc->n_bucket; b++) pc->bucket[b] = NIL;
    for (int32_t i = 0; i < pc->cap; i++) {
        pc->e[i].page = NIL;
        pc->e[i].hnext = i + 1 < pc->cap ? i + 1 : NIL;
    }
    pc->free_head = 0;
    pc->mru = pc->lru = NIL;
    *out = pc;
    return DSV_OK;
}

static void lru_unlink(srv_prefix *pc, int32_t i) {
    entry *x = &pc->e[i];
    if (x->prev != NIL) pc->e[x->prev].next = x->next; else pc->mru = x->next;
    if (x->next != NIL) pc->e[x->next].prev = x->prev; else pc->lru = x->prev;
}

static void lru_push(srv_prefix *pc, int32_t i) {
    entry *x = &pc->e[i];
    x->prev = NIL;
    x->next = pc->mru;
    if (pc->mru != NIL) pc->e[pc->mru].prev = i; else pc->lru = i;
    pc->mru = i;
}

static void touch(srv_prefix *pc, int32_t i) {
    lru_unlink(pc, i);
    lru_push(pc, i);
}

static int32_t find(const srv_prefix *pc, uint64_t h, int32_t parent, const int32_t *tokens) {
    for (int32_t i = pc->bucket[h & (pc->n_bucket - 1)]; i != NIL; i = pc->e[i].hnext) {
        const entry *x = &pc->e[i];
        if (x->hash == h && x->parent == parent && !memcmp(x->tokens, tokens, sizeof x->tokens)) return i;
    }
    return NIL;
}

/* Touches the chain ending at i, deepest first (see the file comment). */
static void touch_chain(srv_prefix *pc, int32_t i) {
    for (; i != NIL; i = pc->e[i].parent) touch(pc, i);
}

int srv_prefix_lookup(srv_prefix *pc, const int32_t *tokens, int max_pages, int32_t *pages) {
    uint64_t h = ROOT_HASH;
    int32_t parent = NIL;
    int n = 0;
    for (; n < max_pages; n++) {
        const int32_t *t = tokens + (size_t)n * DSV_PAGE;
        h = page_hash(h, t);
        int32_t i = find(pc, h, parent, t);
        if (i == NIL) break;
        pages[n] = pc->e[i].page;
        parent = i;
    }
    touch_chain(pc, parent);
    return n;
}

void srv_prefix_insert(srv_prefix *pc, const int32_t *tokens, const int32_t *pages, int n_pages) {
    uint64_t h = ROOT_HASH;
    int32_t parent = NIL;
    for (int k = 0; k < n_pages; k++) {
        const int32_t *t = tokens + (size_t)k * DSV_PAGE;
        h = page_hash(h, t);
        int32_t i = find(pc, h, parent, t);
        if (i == NIL) {
            /* One entry per page in use, and this page is in use. */
            DSV_ASSERT(pc->free_head != NIL);
            i = pc->free_head;
            entry *x = &pc->e[i];
            pc->free_head = x->hnext;
            x->hash = h;
            x->parent = parent;
            x->page = pages[k];
            x->n_children = 0;
            memcpy(x->tokens, t, sizeof x->tokens);
            uint32_t b = (uint32_t)(h & (pc->n_bucket - 1));
            x->hnext = pc->bucket[b];
            pc->bucket[b] = i;
            lru_push(pc, i);
            if (parent != NIL) pc->e[parent].n_children++;
            int st = dsv_kv_page_ref(pc->ctx, pages[k]);
            DSV_ASSERT(st == DSV_OK);
            pc->n++;
        }
        parent = i;
    }
    touch_chain(pc, parent);
}

static void remove_entry(srv_prefix *pc, int32_t i) {
    entry *x = &pc->e[i];
    int32_t *link = &pc->bucket[x->hash & (pc->n_bucket - 1)];
    while (*link != i) link = &pc->e[*link].hnext;
    *link = x->hnext;
    lru_unlink(pc, i);
    if (x->parent != NIL) pc->e[x->parent].n_children--;
    int st = dsv_kv_page_unref(pc->ctx, x->page);
    DSV_ASSERT(st == DSV_OK);
    x->page = NIL;
    x->hnext = pc->free_head;
    pc->free_head = i;
    pc->n--;
}

int64_t srv_prefix_evict(srv_prefix *pc, int64_t want) {
    int64_t freed = 0;
    for (int progress = 1; freed < want && progress;) {
        progress = 0;
        for (int32_t i = pc->lru; i != NIL && freed < want;) {
            int32_t newer = pc->e[i].prev;
            if (pc->e[i].n_children == 0 && dsv_kv_page_refs(pc->ctx, pc->e[i].page) == 1) {
                remove_entry(pc, i);
                freed++;
                progress = 1;
            }
            i = newer;
        }
    }
    return freed;
}

int64_t srv_prefix_entries(const srv_prefix *pc) { return pc->n; }

int64_t srv_prefix_idle_pages(const srv_prefix *pc) {
    int64_t n = 0;
    for (int32_t i = pc->mru; i != NIL; i = pc->e[i].next) n += dsv_kv_page_refs(pc->ctx, pc->e[i].page) == 1;
    return n;
}

void srv_prefix_free(srv_prefix *pc) {
    if (!pc) return;
    if (pc->e && pc->bucket)
        for (int32_t i = 0; i < pc->cap; i++)
            if (pc->e[i].page != NIL) dsv_kv_page_unref(pc->ctx, pc->e[i].page);
    free(pc->e);
    free(pc->bucket);
    free(pc);
}
