/*
 * recon/phantom.h - an analytic 3-D phantom with exact parallel-beam projections.
 *
 * The phantom is a set of ellipsoids (each rotated about the vertical rotation axis only)
 * whose attenuation coefficients add up. Because every horizontal section of such an
 * ellipsoid is an ellipse, the line integral through it has a closed form, and so has its
 * average over the width of a detector pixel: the projections are exact, not sampled.
 *
 * Coordinates are those of tomo_bp_plan (backproject.h): detector row z is slice z; in a
 * slice, X runs to the right and Y up, in detector pixels from the rotation axis; at angle
 * theta the point (X, Y) projects to detector position u = X cos(theta) + Y sin(theta) + c.
 * The ellipsoids lie inside 0.9 of the reconstruction circle, radius min(c, N - 1 - c).
 * Attenuation is scaled with the pixel size so that the thickest path absorbs about
 * ln(1/0.2): transmissions stay measurable at any detector width and pixel size.
 */
#ifndef TOMO_PHANTOM_H
#define TOMO_PHANTOM_H

#include <stdint.h>

#include "../common/rng.h"

#define TOMO_PHANTOM_MAX_ELLIPSOIDS 16

typedef struct tomo_ellipsoid {
    double x0, y0, z0; /* centre: X, Y in detector pixels from the axis; z in detector rows */
    double a, b, c;    /* semi-axes along the ellipsoid's own x, y (pixels) and z (rows) */
    double phi;        /* rotation about the vertical axis, radians */
    double mu;         /* attenuation added inside, cm^-1 */
} tomo_ellipsoid;

typedef struct tomo_phantom {
    int width;       /* detector columns N = slice side */
    int rows;        /* detector rows = number of slices */
    double center;   /* rotation axis position on the detector, columns */
    double pixel_cm; /* detector pixel size */
    int n;           /* ellipsoids in use */
    tomo_ellipsoid e[TOMO_PHANTOM_MAX_ELLIPSOIDS];
} tomo_phantom;

/* The standard phantom for a detector of width x rows pixels of pixel_um micrometres. */
void tomo_phantom_init(tomo_phantom *ph, int width, int rows, double center, double pixel_um);

/*
 * Absorbance (line integral of the attenuation, dimensionless) of detector row z at angle
 * theta (radians), for every column: p[x] is the exact mean over u in [x - 0.5, x + 0.5].
 */
void tomo_phantom_project(const tomo_phantom *ph, int z, double theta, float *p);

/*
 * The attenuation (cm^-1) of slice z at the centre of every pixel of the width x width
 * image (row-major, row 0 at the top).
 */
void tomo_phantom_truth(const tomo_phantom *ph, int z, float *image);

/*
 * The same for image rows [v0, v1) only: rows[(v - v0) * width + h]. Disjoint row ranges can
 * be computed by different threads.
 */
void tomo_phantom_truth_rows(const tomo_phantom *ph, int z, int v0, int v1, float *rows);

/*
 * Distance in pixels from the centre of pixel (h, v) of slice z to the nearest ellipse
 * boundary of that slice (a large number when the slice is empty). Tests use it to leave out
 * the pixels where the truth jumps.
 */
double tomo_phantom_edge_distance(const tomo_phantom *ph, int z, int h, int v);

/* ---- random numbers for simulated detector noise ---- */

/*
 * The generator is common/rng.h's. Streams are cheap to make, so a simulation seeds one per
 * (seed, frame, row) with tomo_rng_seed_words() and its output then does not depend on which
 * thread computes what.
 */

/*
 * A Poisson-distributed count (an integer value) of mean `mean`; 0 when mean <= 0. Exact for
 * every mean: inversion of the distribution function below 30, transformed rejection with
 * squeeze (Hormann's PTRS) above.
 */
double tomo_poisson(tomo_rng *rng, double mean);

#endif
