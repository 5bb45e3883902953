#include "progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

double tomo_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void tomo_progress_start(tomo_progress *p, const char *label, long total)
{
    p->label = label;
    p->total = total > 0 ? total : 1;
    p->start = tomo_now();
    p->last_draw = 0;
    p->enabled = isatty(STDERR_FILENO);
}

static void draw(const tomo_progress *p, long done, const char *extra, double now)
{
    enum { WIDTH = 30 };
    int filled = (int)(WIDTH * done / p->total);
    char bar[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[WIDTH] = '\0';
    double elapsed = now - p->start;
    double rate = elapsed > 0 ? done / elapsed : 0;
    long eta = rate > 0 ? (long)((p->total - done) / rate) : 0;
    fprintf(stderr, "\r%s [%s] %ld/%ld %3d%% %.1f/s ETA %ld:%02ld %s\033[K", p->label, bar, done,
            p->total, (int)(100 * done / p->total), rate, eta / 60, eta % 60, extra ? extra : "");
}

void tomo_progress_update(tomo_progress *p, long done, const char *extra)
{
    if (!p->enabled)
        return;
    double now = tomo_now();
    if (now - p->last_draw < 0.2 && done < p->total)
        return;
    p->last_draw = now;
    draw(p, done, extra, now);
}

void tomo_progress_finish(tomo_progress *p, long done)
{
    if (!p->enabled)
        return;
    draw(p, done, NULL, tomo_now());
    fputc('\n', stderr);
}
