/* threads.h: a small pthread pool for data-parallel kernels.
 *
 * dsv_pool_run(pool, fn, arg) calls fn(arg, ith, nth) once on each of nth
 * threads (the caller is ith 0) and returns when all are done. Kernels split
 * their work by (ith, nth), as ggml does. Inside a task, dsv_pool_barrier()
 * lets a multi-phase kernel synchronize without returning to the caller.
 * Idle workers spin briefly (calls come back to back in a forward pass) and
 * then sleep in the kernel (a futex on Linux, a condition variable
 * elsewhere; threads.c), so an idle engine costs no CPU. With the
 * environment variable DSV32_POOL_PROFILE=1, a pool prints at its end
 * where its threads waited, per task function (threads.c). */
#ifndef DSV_THREADS_H
#define DSV_THREADS_H

typedef struct dsv_pool dsv_pool;
typedef void (*dsv_task_fn)(void *arg, int ith, int nth);

/* n_threads >= 1 including the caller. */
int dsv_pool_init(dsv_pool **out, int n_threads);
void dsv_pool_free(dsv_pool *pool);
int dsv_pool_size(const dsv_pool *pool);
void dsv_pool_run(dsv_pool *pool, dsv_task_fn fn, void *arg);
/* All nth threads of the running task must call it the same number of times. */
void dsv_pool_barrier(dsv_pool *pool);
/* Since the pool started: the runs that woke other threads, and the
 * barriers inside them (each a wait of every thread for the slowest). */
void dsv_pool_counts(const dsv_pool *pool, unsigned long long *runs, unsigned long long *barriers);

/* Splits [0, n) into nth near-equal contiguous parts; part ith is [*b, *e). */
static inline void dsv_split(long n, int ith, int nth, long *b, long *e) {
    long q = n / nth, r = n % nth;
    *b = ith * q + (ith < r ? ith : r);
    *e = *b + q + (ith < r);
}

/* Called once on every pool thread (and the caller) before any task: a hook
 * for per-thread CPU state such as the AMX tile permission. */
extern void (*dsv_thread_init_hook)(void);

#endif
