#include <stdatomic.h>

#include "../../common/pool.h"
#include "check.h"

struct sum_job {
    atomic_long sum;
    atomic_int seen[1000];
    int max_slot;
    int slots;
};

static void add_task(void *arg, int task, int slot)
{
    struct sum_job *j = arg;
    atomic_fetch_add(&j->sum, task);
    atomic_fetch_add(&j->seen[task], 1);
    if (slot < 0 || slot >= j->slots)
        j->max_slot = -1;
}

static void test_every_task_runs_once(void)
{
    for (int threads = 1; threads <= 4; threads++) {
        tomo_pool *pool = tomo_pool_create(threads);
        CHECK(pool != NULL);
        CHECK_INT(tomo_pool_size(pool), threads);
        for (int round = 0; round < 20; round++) {
            static struct sum_job job;
            atomic_store(&job.sum, 0);
            for (int i = 0; i < 1000; i++)
                atomic_store(&job.seen[i], 0);
            job.slots = tomo_pool_size(pool);
            job.max_slot = 0;
            tomo_pool_run(pool, 1000, add_task, &job);
            CHECK_INT(atomic_load(&job.sum), 999L * 1000 / 2);
            int once = 1;
            for (int i = 0; i < 1000; i++)
                once &= atomic_load(&job.seen[i]) == 1;
            CHECK(once);
            CHECK_INT(job.max_slot, 0);
        }
        tomo_pool_destroy(pool);
    }
}

static void test_empty_and_null(void)
{
    static struct sum_job job;
    job.slots = 1;
    tomo_pool_run(NULL, 10, add_task, &job);
    CHECK_INT(atomic_load(&job.sum), 45);
    tomo_pool *pool = tomo_pool_create(2);
    tomo_pool_run(pool, 0, add_task, &job);
    CHECK_INT(atomic_load(&job.sum), 45);
    tomo_pool_destroy(pool);
    tomo_pool_destroy(NULL);
    CHECK(tomo_cpu_count() >= 1);
}

TOMO_TEST_MAIN(test_every_task_runs_once, test_empty_and_null)
