/* threads.c: the thread pool (see threads.h).
 *
 * Three kinds of waiting: a worker for the next task, the caller for the
 * workers to finish a task, and every thread at a barrier. Each waits on a
 * 32-bit word that changes when it may go on (a generation, a count, a
 * phase). A waiter first spins for a few microseconds, about the gap
 * between two kernels of a forward pass, so that back-to-back tasks cost no
 * system call; then it sleeps in the kernel (a futex on Linux, a condition
 * variable elsewhere) so that an idle engine, or one whose threads share
 * cores with other work, does not burn the CPU its peers need. Whoever
 * changes a word wakes sleepers only if there are any. */
#include "threads.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "util.h"

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

void (*dsv_thread_init_hook)(void);

/* Spin iterations before sleeping: ~2k pauses are a few to tens of
 * microseconds depending on the core's pause latency. */
#define SPIN_ITERS 2048

/* A word to wait on, with a count of sleepers so changes skip the wake
 * call when nobody sleeps. */
typedef struct {
    atomic_uint v;
    atomic_int sleepers;
#if !defined(__linux__)
    pthread_mutex_t mu;
    pthread_cond_t cv;
#endif
} wait_word;

static void ww_init(wait_word *w) {
    atomic_init(&w->v, 0);
    atomic_init(&w->sleepers, 0);
#if !defined(__linux__)
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
#endif
}

static void ww_destroy(wait_word *w) {
#if !defined(__linux__)
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
#else
    (void)w;
#endif
}

/* Waits while w->v == old (returns the new value). */
static unsigned ww_wait(wait_word *w, unsigned old) {
    unsigned v;
    for (int i = 0; i < SPIN_ITERS; i++) {
        if ((v = atomic_load_explicit(&w->v, memory_order_acquire)) != old) return v;
        cpu_relax();
    }
    atomic_fetch_add(&w->sleepers, 1);
    while ((v = atomic_load_explicit(&w->v, memory_order_acquire)) == old) {
#if defined(__linux__)
        syscall(SYS_futex, &w->v, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
#else
        pthread_mutex_lock(&w->mu);
        if (atomic_load(&w->v) == old) pthread_cond_wait(&w->cv, &w->mu);
        pthread_mutex_unlock(&w->mu);
#endif
    }
    atomic_fetch_sub(&w->sleepers, 1);
    return v;
}

/* Call after changing w->v. The sleeper count is read after the change
 * (both sequentially consistent), and a sleeper re-reads v after counting
 * itself, so no wake is lost. */
static void ww_wake(wait_word *w) {
    if (atomic_load(&w->sleepers) == 0) return;
#if defined(__linux__)
    syscall(SYS_futex, &w->v, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    pthread_mutex_lock(&w->mu);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
#endif
}

struct worker {
    dsv_pool *pool;
    int ith;
    pthread_t tid;
};

struct dsv_pool {
    int n;
    struct worker *workers;
    dsv_task_fn fn;
    void *arg;
    atomic_int stop;
    wait_word gen;          /* bumped once per run */
    wait_word done;         /* workers finished with the current run */
    wait_word bar_phase;    /* bumped when all threads reach a barrier */
    atomic_int bar_count;
    unsigned long long runs;          /* the caller's alone */
    atomic_ullong barriers;           /* bumped by each barrier's last thread */
};

static void *worker_main(void *p) {
    struct worker *w = p;
    dsv_pool *pool = w->pool;
    if (dsv_thread_init_hook) dsv_thread_init_hook();
    unsigned seen = 0;
    for (;;) {
        seen = ww_wait(&pool->gen, seen);
        if (atomic_load(&pool->stop)) return NULL;
        pool->fn(pool->arg, w->ith, pool->n);
        if ((int)atomic_fetch_add(&pool->done.v, 1) + 1 == pool->n - 1) ww_wake(&pool->done);
    }
}

int dsv_pool_init(dsv_pool **out, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    dsv_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return dsv_error(DSV_ERR_NOMEM, "thread pool: out of memory");
    pool->n = n_threads;
    ww_init(&pool->gen);
    ww_init(&pool->done);
    ww_init(&pool->bar_phase);
    atomic_init(&pool->barriers, 0);
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    if (!pool->workers) {
        free(pool);
        return dsv_error(DSV_ERR_NOMEM, "thread pool: out of memory");
    }
    if (dsv_thread_init_hook) dsv_thread_init_hook();
    for (int i = 1; i < n_threads; i++) {
        pool->workers[i].pool = pool;
        pool->workers[i].ith = i;
        if (pthread_create(&pool->workers[i].tid, NULL, worker_main, &pool->workers[i])) {
            pool->n = i; /* shut down the ones started */
            dsv_pool_free(pool);
            return dsv_error(DSV_ERR_NOMEM, "thread pool: cannot start thread %d", i);
        }
    }
    *out = pool;
    return DSV_OK;
}

void dsv_pool_free(dsv_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    atomic_fetch_add(&pool->gen.v, 1);
    ww_wake(&pool->gen);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->workers[i].tid, NULL);
    ww_destroy(&pool->gen);
    ww_destroy(&pool->done);
    ww_destroy(&pool->bar_phase);
    free(pool->workers);
    free(pool);
}

int dsv_pool_size(const dsv_pool *pool) { return pool->n; }

void dsv_pool_run(dsv_pool *pool, dsv_task_fn fn, void *arg) {
    if (pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->runs++;
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->done.v, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
    atomic_fetch_add(&pool->gen.v, 1); /* publishes fn/arg to the workers */
    ww_wake(&pool->gen);
    fn(arg, 0, pool->n);
    unsigned d;
    while ((d = atomic_load_explicit(&pool->done.v, memory_order_acquire)) < (unsigned)(pool->n - 1))
        ww_wait(&pool->done, d);
}

void dsv_pool_barrier(dsv_pool *pool) {
    if (pool->n == 1) return;
    unsigned phase = atomic_load_explicit(&pool->bar_phase.v, memory_order_acquire);
    if (atomic_fetch_add(&pool->bar_count, 1) == pool->n - 1) {
        atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool->barriers, 1, memory_order_relaxed);
        atomic_fetch_add(&pool->bar_phase.v, 1);
        ww_wake(&pool->bar_phase);
        return;
    }
    ww_wait(&pool->bar_phase, phase);
}

void dsv_pool_counts(const dsv_pool *pool, unsigned long long *runs, unsigned long long *barriers) {
    *runs = pool->runs;
    *barriers = atomic_load_explicit(&((dsv_pool *)pool)->barriers, memory_order_relaxed);
}
