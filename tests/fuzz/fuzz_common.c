#include "fuzz.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../recon/scan.h"

/* Reads stay small so that a header claiming a huge frame costs time only when it is real. */
#define FUZZ_MAX_PIXELS (1 << 20)
#define FUZZ_MAX_FRAMES 64

static char scratch[64];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_scratch(void)
{
    if (scratch[0])
        nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_scratch(void)
{
    if (!scratch[0]) {
        strcpy(scratch, "/tmp/tomo_fuzz_XXXXXX");
        if (!mkdtemp(scratch)) {
            perror("mkdtemp");
            exit(1);
        }
        atexit(remove_scratch);
    }
    return scratch;
}

const char *fuzz_write(const char *name, const uint8_t *data, size_t size)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", fuzz_scratch(), name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return NULL;
    size_t put = size ? fwrite(data, 1, size, f) : 0;
    if (fclose(f) != 0 || put != size)
        return NULL;
    return path;
}

static void read_frames(const tomo_scan *scan, tomo_frame_kind kind, int count, float *buf,
                        int rows)
{
    for (int i = 0; i < count && i < FUZZ_MAX_FRAMES; i++) {
        tomo_error err;
        tomo_error_clear(&err);
        /* The first band, and the last row: the two ends of every frame. */
        tomo_scan_read_rows(scan, kind, i, 0, rows, buf, &err);
        tomo_error_clear(&err);
        tomo_scan_read_rows(scan, kind, i, scan->rows - 1, 1, buf, &err);
    }
}

void fuzz_read_scan(const tomo_scan *scan)
{
    if (scan->width <= 0 || scan->rows <= 0 || scan->width > FUZZ_MAX_PIXELS)
        return;
    int rows = FUZZ_MAX_PIXELS / scan->width;
    rows = rows < scan->rows ? rows : scan->rows;
    rows = rows < 3 ? rows : 3;
    float *buf = malloc((size_t)scan->width * (size_t)(rows > 0 ? rows : 1) * sizeof *buf);
    if (!buf || rows <= 0) {
        free(buf);
        return;
    }
    read_frames(scan, TOMO_FRAME_PROJECTION, scan->n_proj, buf, rows);
    read_frames(scan, TOMO_FRAME_FLAT, scan->n_flat, buf, rows);
    read_frames(scan, TOMO_FRAME_DARK, scan->n_dark, buf, rows);
    free(buf);
}
