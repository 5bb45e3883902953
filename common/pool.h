/*
 * common/pool.h - a fixed set of worker threads running data-parallel loops.
 *
 * One tomo_pool_run() call spreads tasks 0..n-1 over the workers and the calling thread and
 * returns when all are done. Tasks are handed out one at a time, so uneven tasks balance.
 * Calls from several threads are serialised: the pool runs one loop at a time.
 */
#ifndef TOMO_POOL_H
#define TOMO_POOL_H

typedef struct tomo_pool tomo_pool;

/*
 * The task function. `task` is in [0, n); `slot` is in [0, tomo_pool_size()) and is unique
 * among the threads running at the same moment, so it can index per-thread scratch memory.
 */
typedef void (*tomo_pool_fn)(void *arg, int task, int slot);

/*
 * Starts `threads - 1` workers (the caller of tomo_pool_run is the last one).
 * threads <= 0 means one per online CPU. Returns NULL when threads cannot be created.
 */
tomo_pool *tomo_pool_create(int threads);

/* Number of threads that take part in a run, the caller included (>= 1). */
int tomo_pool_size(const tomo_pool *pool);

/* Runs fn(arg, task, slot) for every task in [0, n) and waits for all of them. */
void tomo_pool_run(tomo_pool *pool, int n, tomo_pool_fn fn, void *arg);

/* Stops and joins the workers. NULL is allowed. */
void tomo_pool_destroy(tomo_pool *pool);

/* Number of online CPUs, at least 1. */
int tomo_cpu_count(void);

#endif
