/* threads.c: the thread pool (see threads.h).
 *
 * Three kinds of waiting: a worker for the next task, the caller for the
 * workers to finish a task, and every thread at a barrier. Each waits on a
 * 32-bit word that changes when it may go on (a generation, a count, a
 * phase). A waiter first spins (SPIN_ITERS pauses, at least the gap
 * between two kernels of a forward pass), so that back-to-back tasks cost
 * no system call; then it sleeps in the kernel (a futex on Linux, a condition
 * variable elsewhere) so that an idle engine, or one whose threads share
 * cores with other work, does not burn the CPU its peers need. Whoever
 * changes a word wakes sleepers only if there are any. */
#include "threads.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

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

/* Spin iterations before sleeping. What 2k pauses last depends on the
 * core's pause latency: a few microseconds on older Intel cores, tens on
 * newer ones, and 0.17-0.32 ms on the AMD EPYC virtual machine the AVX-512
 * figures of the README come from (~100 ns a pause there). Spinning without
 * pause measured slower under load there, so the count stays. */
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

/* Waits while w->v == old (returns the new value); counts a sleep in
 * *slept if it had to sleep. */
static unsigned ww_wait(wait_word *w, unsigned old, unsigned long long *slept) {
    unsigned v;
    for (int i = 0; i < SPIN_ITERS; i++) {
        if ((v = atomic_load_explicit(&w->v, memory_order_acquire)) != old) return v;
        cpu_relax();
    }
    ++*slept;
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

/* DSV32_POOL_PROFILE=1 (read when a pool starts): where the threads of
 * the pool wait, per task function, printed to stderr when the pool is
 * freed. Per thread and task function: the runs, the time inside it, the
 * time a worker waited before it (split into its wait for the caller to
 * finish the previous run, charged to that run as "wtail", and the rest:
 * the caller's serial work between the runs plus the wake-up, "gap"), the
 * time the caller waited at its end for the slowest worker ("tail"), the
 * time at its barriers, and the waits that slept in the kernel. Off, it
 * costs a branch per run and per barrier. */
#define PROF_FNS 64
typedef struct {
    unsigned long long runs, busy, gap, wtail, tail, bar, slept;
} prof_cell;

static uint64_t prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The pool thread index of this thread (0: a caller), for the barrier's
 * profile cell. */
static _Thread_local int tl_ith;

struct worker {
    dsv_pool *pool;
    int ith;
    pthread_t tid;
    uint64_t last_end; /* profile: when its last task ended */
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
    /* Profile (prof != 0): cells [n][PROF_FNS], the task functions seen,
     * the current one's index, and the first run's start. */
    int prof, n_fns, cur, prev;
    prof_cell *cells;
    dsv_task_fn fns[PROF_FNS];
    uint64_t t_first, t_prev_end; /* the caller's end of the previous run */
};

static prof_cell *prof_cell_of(dsv_pool *pool, int ith) { return &pool->cells[(size_t)ith * PROF_FNS + pool->cur]; }

static void *worker_main(void *p) {
    struct worker *w = p;
    dsv_pool *pool = w->pool;
    if (dsv_thread_init_hook) dsv_thread_init_hook();
    unsigned seen = 0;
    unsigned long long slept = 0;
    tl_ith = w->ith;
    for (;;) {
        seen = ww_wait(&pool->gen, seen, &slept);
        if (atomic_load(&pool->stop)) return NULL;
        if (pool->prof) {
            prof_cell *pc = prof_cell_of(pool, w->ith);
            uint64_t t0 = prof_now();
            if (w->last_end) {
                /* The caller ends a run after every worker (it waits
                 * for them); the max only guards the arithmetic. */
                const uint64_t pe = pool->t_prev_end > w->last_end ? pool->t_prev_end : w->last_end;
                pool->cells[(size_t)w->ith * PROF_FNS + pool->prev].wtail += pe - w->last_end;
                pc->gap += t0 > pe ? t0 - pe : 0;
            }
            pc->slept += slept;
            slept = 0;
            pc->runs++;
            pool->fn(pool->arg, w->ith, pool->n);
            w->last_end = prof_now();
            pc->busy += w->last_end - t0;
        } else {
            pool->fn(pool->arg, w->ith, pool->n);
        }
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
    const char *env = getenv("DSV32_POOL_PROFILE");
    if (env && *env && *env != '0' && n_threads > 1)
        pool->prof = (pool->cells = calloc((size_t)n_threads * PROF_FNS, sizeof *pool->cells)) != NULL;
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

/* The profile's table: a line per task function, the caller's and the
 * workers' (summed) times in ms. A function is named by its offset in its
 * object file (addr2line -f -e BINARY OFFSET), as statics have no dynamic
 * symbol. */
static void prof_print(dsv_pool *pool) {
    const double ms = 1e-6;
    fprintf(stderr, "pool profile: %d threads, %.1f ms since the first run; per task: caller busy/tail/bar, "
                    "workers busy/wtail/gap/bar (ms, summed), waits that slept\n",
            pool->n, (double)(prof_now() - pool->t_first) * ms);
    for (int f = 0; f < pool->n_fns; f++) {
        prof_cell c0 = pool->cells[f], w = {0};
        for (int i = 1; i < pool->n; i++) {
            const prof_cell *c = &pool->cells[(size_t)i * PROF_FNS + f];
            w.busy += c->busy, w.gap += c->gap, w.wtail += c->wtail, w.bar += c->bar, w.slept += c->slept;
        }
        Dl_info info;
        const char *obj = "?", *sym = NULL;
        unsigned long off = 0;
        if (dladdr((void *)(uintptr_t)pool->fns[f], &info)) {
            obj = info.dli_fname ? info.dli_fname : "?";
            sym = info.dli_saddr == (void *)(uintptr_t)pool->fns[f] ? info.dli_sname : NULL;
            off = (unsigned long)((uintptr_t)pool->fns[f] - (uintptr_t)info.dli_fbase);
        }
        fprintf(stderr, "  %-16s %7llu runs | caller %8.2f %7.2f %7.2f | workers %8.2f %7.2f %7.2f %7.2f | slept %llu (%s 0x%lx)\n",
                sym ? sym : "", c0.runs, c0.busy * ms, c0.tail * ms, c0.bar * ms, w.busy * ms, w.wtail * ms, w.gap * ms,
                w.bar * ms, c0.slept + w.slept, obj, off);
    }
}

void dsv_pool_free(dsv_pool *pool) {
    if (!pool) return;
    if (pool->prof) prof_print(pool);
    atomic_store(&pool->stop, 1);
    atomic_fetch_add(&pool->gen.v, 1);
    ww_wake(&pool->gen);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->workers[i].tid, NULL);
    ww_destroy(&pool->gen);
    ww_destroy(&pool->done);
    ww_destroy(&pool->bar_phase);
    free(pool->workers);
    free(pool->cells);
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
    uint64_t t0 = 0;
    if (pool->prof) {
        int f = 0;
        while (f < pool->n_fns && pool->fns[f] != fn) f++;
        if (f == pool->n_fns && f < PROF_FNS) pool->fns[pool->n_fns++] = fn;
        pool->prev = pool->cur;
        pool->cur = f < PROF_FNS ? f : PROF_FNS - 1; /* past the table: the last line */
        t0 = prof_now();
        if (!pool->t_first) pool->t_first = t0;
    }
    atomic_store_explicit(&pool->done.v, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
    atomic_fetch_add(&pool->gen.v, 1); /* publishes fn/arg (and cur) to the workers */
    ww_wake(&pool->gen);
    fn(arg, 0, pool->n);
    uint64_t t1 = pool->prof ? prof_now() : 0;
    unsigned d;
    unsigned long long slept = 0;
    while ((d = atomic_load_explicit(&pool->done.v, memory_order_acquire)) < (unsigned)(pool->n - 1))
        ww_wait(&pool->done, d, &slept);
    if (pool->prof) {
        prof_cell *pc = prof_cell_of(pool, 0);
        pc->runs++;
        pc->busy += t1 - t0;
        pool->t_prev_end = prof_now();
        pc->tail += pool->t_prev_end - t1;
        pc->slept += slept;
    }
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
    if (!pool->prof) {
        unsigned long long slept = 0;
        ww_wait(&pool->bar_phase, phase, &slept);
        return;
    }
    prof_cell *pc = prof_cell_of(pool, tl_ith);
    uint64_t t0 = prof_now();
    ww_wait(&pool->bar_phase, phase, &pc->slept);
    pc->bar += prof_now() - t0;
}

void dsv_pool_counts(const dsv_pool *pool, unsigned long long *runs, unsigned long long *barriers) {
    *runs = pool->runs;
    *barriers = atomic_load_explicit(&((dsv_pool *)pool)->barriers, memory_order_relaxed);
}
