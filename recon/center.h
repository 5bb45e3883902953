/*
 * recon/center.h - finding the rotation axis.
 *
 * In parallel beam the view at theta + 180 degrees is the mirror image of the view at theta
 * about the axis: p(theta + pi, u) = p(theta, 2c - u). The axis c is found by registering the
 * first view against the mirrored view 180 degrees later (interpolated in angle between the
 * two nearest views, or extrapolated from the last two when the scan stops short of 180),
 * over several detector rows: the mean-square difference, normalised by the variance of both
 * views over the overlap (so that empty columns never match best), is evaluated for every
 * integer shift with at least half the detector overlapping, and the minimum is refined to
 * sub-pixel by a parabola through its neighbours.
 */
#ifndef TOMO_CENTER_H
#define TOMO_CENTER_H

#include "../common/error.h"
#include "../common/pool.h"
#include "prep.h"
#include "scan.h"

/*
 * Axis position (0-based detector columns) from rows of absorbance at theta0 (a0) and at
 * theta0 + 180 degrees (a180), each n_rows x width. *score, if not NULL, receives the ratio
 * of the best mean-square difference to the median over all shifts (small is confident).
 */
double tomo_center_from_views(const float *a0, const float *a180, int width, int n_rows,
                              double *score);

/*
 * Finds the axis of `scan` from up to 8 rows spread over the middle 80% of the detector.
 * Fails with TOMO_E_UNSUPPORTED when the scan covers less than 180 degrees minus two steps.
 */
int tomo_center_find(const tomo_scan *scan, const tomo_prep_params *pp, tomo_pool *pool,
                     double *center, tomo_error *err);

#endif
