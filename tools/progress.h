/*
 * tools/progress.h - a one-line progress bar on stderr, drawn only when stderr is a terminal.
 */
#ifndef TOMO_PROGRESS_H
#define TOMO_PROGRESS_H

typedef struct tomo_progress {
    const char *label;
    long total;
    double start;
    double last_draw;
    int enabled;
} tomo_progress;

void tomo_progress_start(tomo_progress *p, const char *label, long total);

/* Redraws at most a few times a second: "label [#####.....] 120/400 30% 12.5/s ETA 0:22". */
void tomo_progress_update(tomo_progress *p, long done, const char *extra);

/* Draws the final state and ends the line. */
void tomo_progress_finish(tomo_progress *p, long done);

double tomo_now(void);

#endif
