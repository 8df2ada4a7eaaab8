/* threads.c: the thread pool (see threads.h). */
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "util.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

void (*dsv_thread_init_hook)(void);

/* Spins before sleeping: long enough to bridge the gap between two kernels
 * of one forward pass, short enough not to burn a core when idle. */
#define SPIN_ITERS 20000

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
    atomic_uint gen;        /* bumped once per run */
    atomic_int n_done;      /* workers finished with the current run */
    atomic_int stop;
    atomic_int n_sleeping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* Barrier state. */
    atomic_int bar_count;
    atomic_uint bar_phase;
};

static void *worker_main(void *p) {
    struct worker *w = p;
    dsv_pool *pool = w->pool;
    if (dsv_thread_init_hook) dsv_thread_init_hook();
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen) {
            if (atomic_load(&pool->stop)) return NULL;
            if (++spins < SPIN_ITERS) { cpu_relax(); continue; }
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->cv, &pool->mu);
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mu);
            spins = 0;
        }
        seen = g;
        if (atomic_load(&pool->stop)) return NULL;
        pool->fn(pool->arg, w->ith, pool->n);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_acq_rel);
    }
}

int dsv_pool_init(dsv_pool **out, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    dsv_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return dsv_error(DSV_ERR_NOMEM, "thread pool: out of memory");
    pool->n = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    if (!pool->workers) { free(pool); return dsv_error(DSV_ERR_NOMEM, "thread pool: out of memory"); }
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
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->workers[i].tid, NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    free(pool->workers);
    free(pool);
}

int dsv_pool_size(const dsv_pool *pool) { return pool->n; }

void dsv_pool_run(dsv_pool *pool, dsv_task_fn fn, void *arg) {
    if (pool->n == 1) { fn(arg, 0, 1); return; }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->gen, 1, memory_order_release);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
    fn(arg, 0, pool->n);
    int spins = 0;
    while (atomic_load_explicit(&pool->n_done, memory_order_acquire) < pool->n - 1) {
        if (++spins < SPIN_ITERS) cpu_relax();
        else sched_yield();
    }
}

void dsv_pool_barrier(dsv_pool *pool) {
    if (pool->n == 1) return;
    unsigned phase = atomic_load_explicit(&pool->bar_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->bar_count, 1, memory_order_acq_rel) == pool->n - 1) {
        atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool->bar_phase, 1, memory_order_release);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&pool->bar_phase, memory_order_acquire) == phase) {
        if (++spins < SPIN_ITERS) cpu_relax();
        else sched_yield();
    }
}
