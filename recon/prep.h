/*
 * recon/prep.h - from raw counts to absorbance sinograms.
 *
 * For projection m taken at time t:
 *     I0(t) = (1 - w) * G_a + w * G_b          (G = mean of a flat group, a and b the groups
 *                                               that bracket t in time, w linear in t; before
 *                                               the first or after the last group, the nearest)
 *     p     = ln( max(I0 - D, F) / max(I - D, F) )
 * where D is the mean dark and F the low-transmission floor (default 2 counts). A value that
 * is not >= F (NaN included) counts as clipped. A projection line with more than
 * black_fraction of its pixels clipped is "black" (beam lost, shutter closed) and is replaced
 * by the mean of the good lines of the same sinogram. Every output value is finite.
 */
#ifndef TOMO_PREP_H
#define TOMO_PREP_H

#include "../common/error.h"
#include "../common/pool.h"
#include "scan.h"

typedef struct tomo_prep_params {
    double floor_counts;   /* F: counts above dark below which a pixel is clipped; > 0 */
    double black_fraction; /* share of clipped pixels that makes a line black; (0, 1] */
} tomo_prep_params;

#define TOMO_PREP_FLOOR_DEFAULT          2.0
#define TOMO_PREP_BLACK_FRACTION_DEFAULT 0.5

void tomo_prep_params_default(tomo_prep_params *pp);

typedef struct tomo_prep_stats {
    long clipped_pixels; /* pixels raised to the floor */
    long black_lines;    /* projection lines replaced by the mean line */
} tomo_prep_stats;

/*
 * Flat interpolation for time t given the mean times of the flat groups (ascending):
 * I0 = (1 - *w) * G[*a] + *w * G[*b]. With one group, a = b = 0 and w = 0.
 */
void tomo_flat_bracket(const double *group_time, int n_groups, double t, int *a, int *b, double *w);

/*
 * Mean acquisition time of each flat group of `scan`, into group_time[n_flat_groups].
 */
void tomo_flat_group_times(const tomo_scan *scan, double *group_time);

/*
 * Absorbance of detector rows [z0, z0 + nz) for the projections listed in `proj`
 * (n_sel indices; NULL means all n_proj in order). Output layout: out[(z * n_sel + k) * width + x]
 * for row z0 + z, selected projection k, column x. Frames are read in parallel on `pool`
 * (NULL runs on the caller). `stats` may be NULL.
 */
int tomo_prep_rows(const tomo_scan *scan, const tomo_prep_params *pp, tomo_pool *pool,
                   const int *proj, int n_sel, int z0, int nz, float *out, tomo_prep_stats *stats,
                   tomo_error *err);

/*
 * What a backend that normalises elsewhere (the GPU) needs besides the raw rows: the mean
 * dark, the mean of every flat group and each projection's flat interpolation, for detector
 * rows [z0, z0 + nz), in the double precision tomo_prep_rows() computes them in, so that the
 * other backend can reproduce its absorbance exactly. Release with tomo_prep_refs_free().
 */
typedef struct tomo_prep_refs {
    int nz, width, n_groups;
    double *dark;       /* [nz][width] */
    double *group_mean; /* [n_groups][nz][width]; groups no projection uses are zero */
    int *flat_a;        /* [n_proj] I0 = (1 - w) G[a] + w G[b] */
    int *flat_b;        /* [n_proj] */
    double *flat_w;     /* [n_proj] */
} tomo_prep_refs;

/*
 * Reads detector rows [z0, z0 + nz) of every projection as raw counts into
 * raw[(z * n_proj + m) * width + x], and the reference rows into *refs, in parallel on `pool`.
 */
int tomo_prep_raw_rows(const tomo_scan *scan, tomo_pool *pool, int z0, int nz, float *raw,
                       tomo_prep_refs *refs, tomo_error *err);

void tomo_prep_refs_free(tomo_prep_refs *refs);

#endif
