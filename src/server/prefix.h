/* prefix.h: the server's prefix cache. Full KV pages of finished prompt
 * chunks are kept (one page reference each) under a key made of every token
 * up to the page's end, so a later request whose prompt starts with the same
 * tokens starts on those pages instead of recomputing them.
 *
 * Entries form a tree: a page's entry points at the entry of the page before
 * it, and a lookup walks from the first page while pages match. Matching
 * compares the page's 64 tokens and the parent entry, never a hash alone, so
 * a hit is exact. Only leaves (entries no other entry builds on) that no
 * sequence is using are evicted, least recently used first: a prefix never
 * disappears from under a longer one.
 *
 * Single-threaded: the scheduler thread alone calls these. */
#ifndef DSV_SERVER_PREFIX_H
#define DSV_SERVER_PREFIX_H

#include <stdint.h>

#include "dsv32.h"

typedef struct srv_prefix srv_prefix;

/* A cache over ctx's page pool (at most one entry per page). */
int srv_prefix_init(srv_prefix **out, dsv_context *ctx);
/* Drops every entry and its page reference. NULL is a no-op. */
void srv_prefix_free(srv_prefix *pc);

/* The longest cached run of pages for tokens (at most max_pages pages of
 * DSV_PAGE tokens, so tokens must hold max_pages * DSV_PAGE of them): writes
 * their ids to pages[] and returns how many. The pages are still only the
 * cache's: attach them (dsv_seq_attach) before anything can evict them. */
int srv_prefix_lookup(srv_prefix *pc, const int32_t *tokens, int max_pages, int32_t *pages);

/* Records pages[0..n_pages) of a sequence whose first n_pages * DSV_PAGE
 * tokens are tokens[]: each page not cached yet gets an entry and a
 * reference. Pages already cached under the same tokens are left as they
 * are (the sequence's own copy is not added twice). */
void srv_prefix_insert(srv_prefix *pc, const int32_t *tokens, const int32_t *pages, int n_pages);

/* Returns up to `want` pages to the pool by evicting unused leaves, least
 * recently used first; returns how many it freed. */
int64_t srv_prefix_evict(srv_prefix *pc, int64_t want);

/* Entries, and how many of their pages only the cache holds (free to evict). */
int64_t srv_prefix_entries(const srv_prefix *pc);
int64_t srv_prefix_idle_pages(const srv_prefix *pc);

#endif
