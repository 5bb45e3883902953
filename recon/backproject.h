/*
 * recon/backproject.h - parallel-beam back-projection on the CPU (the reference backend).
 *
 * Geometry (ct-rec's conventions): the detector has N columns, column centres at 0..N-1; the
 * rotation axis projects to column position c (sub-pixel). The output image is S x S pixels
 * of b detector pixels each (S = N / b, b the binning, 1 by default). Image pixel (h, v),
 * h the column and v the row from the top, sits at
 *     X = (h + 0.5) b - N/2,   Y = N/2 - (v + 0.5) b
 * in detector pixels around the axis, and sees the ray at detector position
 *     r_m = X cos(theta_m) + Y sin(theta_m) + c.
 * The value is sum_m w_m q_m(r_m) / dr, with q_m the filtered projection linearly
 * interpolated (zero outside the detector), w_m the angular weight of view m (radians, see
 * tomo_angle_weights) and dr the pixel size in cm, so slices are in cm^-1. Pixels outside the
 * reconstruction circle, radius R = min(c, N - 1 - c) around the axis, are exactly 0.
 * Summation runs over views in ascending order for every pixel, so the result does not depend
 * on the number of threads.
 */
#ifndef TOMO_BACKPROJECT_H
#define TOMO_BACKPROJECT_H

#include "../common/error.h"

/*
 * Angular weights for views at ascending angles (radians): the trapezoid rule on the
 * circle, w_m = (theta_{m+1} - theta_{m-1}) / 2, with the neighbours of the first and last view
 * taken from the periodic continuation (period pi for scans shorter than 1.5 pi, 2 pi
 * otherwise, the latter halved because every ray is then seen twice). A gap at the seam wider
 * than twice the median step (a partial scan) counts as one median step. For uniform views
 * over [0, pi) every weight is pi / M; a 180-degree end frame shares its weight with the
 * first view.
 */
void tomo_angle_weights(const double *angle_rad, int n, double *weight);

typedef struct tomo_bp_plan {
    int width;     /* N, detector columns */
    int bin;       /* b */
    int size;      /* S = N / b, output side */
    int n_views;   /* views used */
    double center; /* c */
    double fov_radius;
    float *cos_t;  /* [n_views] */
    float *sin_t;  /* [n_views] */
    float *weight; /* [n_views] w_m / dr */
} tomo_bp_plan;

/*
 * Prepares back-projection of n_views views at angles angle_rad (radians, ascending; only the
 * differences matter for the image orientation up to a rotation), with per-view weights
 * `weight` (radians; NULL computes tomo_angle_weights), centre `center`, pixel size
 * `pixel_cm` and binning `bin` (1, 2, 4, ...; width must be divisible by it).
 */
int tomo_bp_plan_init(tomo_bp_plan *plan, int width, const double *angle_rad, const double *weight,
                      int n_views, double center, double pixel_cm, int bin, tomo_error *err);

void tomo_bp_plan_free(tomo_bp_plan *plan);

/*
 * Back-projects rows [v0, v1) of `n_slices` images at once (they share the geometry).
 * filtered[s * slice_stride + m * width + x]: filtered projection of slice s, view m.
 * image[s * size * size + v * size + h]: output. Rows outside [v0, v1) are not touched.
 */
void tomo_bp_rows(const tomo_bp_plan *plan, const float *filtered, long slice_stride, int n_slices,
                  float *image, int v0, int v1);

#endif
