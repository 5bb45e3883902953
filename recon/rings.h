/*
 * recon/rings.h - ring-artefact removal on sinograms: Vo's stripe removal.
 *
 * A detector column that answers differently from its neighbours adds the same error at every
 * angle: a stripe in the sinogram, a ring in the slice. The methods here are those of Vo,
 * Atwood and Drakopoulos, "Superior techniques for eliminating ring artifacts in X-ray
 * micro-tomography", Opt. Express 26, 28396 (2018), with the steps and defaults of Algotom's
 * implementation (docs/rings.md lists every difference):
 *
 *   TOMO_RINGS_SORT   algorithm 3, sorting-based: sort every column along the angles, median
 *                     filter the sorted image across the detector, put every value back in
 *                     its row. Removes partial and full stripes of any shape; the default.
 *   TOMO_RINGS_ALL    Algotom's remove_all_stripe: algorithm 6 (dead stripes: columns whose
 *                     values barely change with angle, replaced by interpolation between their
 *                     neighbours), then algorithm 5 (large stripes: columns whose trimmed mean
 *                     departs from their smoothed neighbourhood, normalised, and replaced by
 *                     the smoothed values where detected), then algorithm 3.
 *   TOMO_RINGS_LARGE  algorithm 5 alone; TOMO_RINGS_DEAD algorithm 6 alone (Algotom's
 *                     remove_dead_stripe with residual=False). Single steps of ALL.
 *
 * A sinogram is n_rows x width floats, row-major: row m is projection m in angle order,
 * column x is detector column x. It is modified in place.
 *
 * Exactness. Columns are sorted with ties broken by row (a stable sort), so equal values, which
 * integer-valued raw data makes common, come out in one reproducible order. Medians are exact
 * selections with SciPy ndimage's default boundary 'reflect' (half-sample symmetric:
 * d c b a | a b c d | d c b a, repeated when the window is wider than the image), a window of
 * `size` samples starting size/2 before the centre and the value of rank size/2 of the
 * window (the middle one for odd sizes, the upper middle for even ones), as SciPy's
 * median_filter does. Algorithm 3 therefore equals its NumPy/SciPy transcription
 * (np.argsort(kind='stable'), ndimage.median_filter(mode='reflect')) bit for bit, except that
 * -0.0 comes out as +0.0. Results never depend on the number of threads.
 *
 * Robustness. Every input value must be finite (tomo_prep_rows guarantees it); a non-finite
 * value is refused with TOMO_E_INVALID and the sinogram left untouched. Outputs are finite for
 * every finite input: ratios that would be 0 or not finite are not applied and quotients are
 * kept within the float range.
 *
 * Threads. The functions keep no state: one call works on one sinogram with the scratch memory
 * it is given, so calls on different sinograms may run at once on different threads.
 * tomo_rings_remove_pool() spreads one sinogram over a pool instead, for when there are fewer
 * sinograms than threads.
 */
#ifndef TOMO_RINGS_H
#define TOMO_RINGS_H

#include <stddef.h>

#include "../common/error.h"
#include "../common/pool.h"

typedef enum tomo_rings_method {
    TOMO_RINGS_NONE = 0,  /* no ring removal */
    TOMO_RINGS_SORT = 1,  /* algorithm 3 */
    TOMO_RINGS_ALL = 2,   /* algorithms 6, 5, 3 */
    TOMO_RINGS_LARGE = 3, /* algorithm 5 */
    TOMO_RINGS_DEAD = 4,  /* algorithm 6 */
} tomo_rings_method;

typedef struct tomo_rings_params {
    tomo_rings_method method;
    /* SORT: width of the median across the detector; 0 = tomo_rings_auto_size(width). */
    int size;
    /* SORT, and the last step of ALL: 1 = window of 1 x size (along the detector only),
     * 2 = size x size (also along the sorted angle axis). */
    int dim;
    /* ALL, LARGE, DEAD: a stripe is a value of the column statistic whose distance from the
     * straight line fitted to the sorted statistic is at least snr times the noise level. */
    double snr;
    /* ALL, LARGE, DEAD: width of the median across the detector that defines "normal" for
     * large and dead stripes. */
    int la_size;
    /* ALL: size of the final algorithm 3 step; 0 = tomo_rings_auto_size(width). */
    int sm_size;
    /* ALL, LARGE: share of the sorted rows, half at each end, left out of the column means
     * that detect large stripes; clipped to [0, 0.8]. */
    double drop_ratio;
} tomo_rings_params;

/* Defaults, those of Algotom's remove_all_stripe and remove_stripe_based_sorting. */
#define TOMO_RINGS_SNR_DEFAULT        3.0
#define TOMO_RINGS_LA_SIZE_DEFAULT    51
#define TOMO_RINGS_SM_SIZE_DEFAULT    21
#define TOMO_RINGS_DROP_RATIO_DEFAULT 0.1
#define TOMO_RINGS_DIM_DEFAULT        1

/* Largest median width accepted (dim = 1); dim = 2 windows are at most 101 x 101. */
#define TOMO_RINGS_MAX_SIZE   1001
#define TOMO_RINGS_MAX_SIZE_2 101

/*
 * method NONE, size 0 (automatic), dim 1, snr 3, la_size 51, sm_size 21, drop_ratio 0.1.
 */
void tomo_rings_params_default(tomo_rings_params *p);

/*
 * The automatic median width for a detector of `width` columns (TomoPy's rule, made odd):
 * 21 when width > 2000, otherwise max(5, floor(0.01 * width)) plus one if that is even.
 * So 5 up to 699 columns, 7 for 700-899, ..., 19 for 1800-1999, 21 from 2000 on.
 */
int tomo_rings_auto_size(int width);

/* The median widths a parameter set uses on `width` columns, automatic values resolved. */
int tomo_rings_sort_size(const tomo_rings_params *p, int width);

/* "none", "sort", "all", "large", "dead"; NULL for an unknown method. */
const char *tomo_rings_method_name(tomo_rings_method method);

/* Parses a method name; -1 if unknown. */
int tomo_rings_parse_method(const char *name);

/* Checks the ranges of every field. Returns 0 or -TOMO_E_INVALID with a message. */
int tomo_rings_validate(const tomo_rings_params *p, tomo_error *err);

/*
 * Applies one -o option to *p:
 *   rings=none|sort|all|large|dead   method (default none)
 *   ring_size=N          SORT median width, odd or even >= 1, or 0/auto (default auto)
 *   ring_dim=1|2         median window 1 x N or N x N (default 1)
 *   ring_snr=R           detection ratio > 0 (default 3)
 *   ring_la_size=N       large/dead-stripe median width >= 1 (default 51)
 *   ring_sm_size=N       ALL's final sorting width, or 0/auto (default 21)
 *   ring_drop_ratio=R    in [0, 0.8] (default 0.1)
 * Returns 0 when applied, 1 when `key` is not one of these (nothing changed), or a negative
 * TOMO_E_* code when the value is bad (err says which option and why; nothing changed).
 */
int tomo_rings_parse_option(tomo_rings_params *p, const char *key, const char *value,
                            tomo_error *err);

/*
 * The canonical text of the fields that change pixels for the method, e.g.
 * "rings=sort ring_size=21 ring_dim=1"; empty for NONE. Automatic sizes are printed as
 * resolved for `width` columns (width <= 0 prints "auto").
 */
void tomo_rings_params_text(const tomo_rings_params *p, int width, char *buf, size_t size);

/*
 * Bytes of scratch memory tomo_rings_remove() needs for n_rows x width sinograms, a multiple
 * of 64 (ready for aligned_alloc): about 4 MB for 3600 x 4432 with the defaults (it grows
 * with the median widths, not with the number of columns). 0 for NONE.
 */
size_t tomo_rings_scratch_size(const tomo_rings_params *p, int n_rows, int width);

/*
 * Removes stripes from one sinogram in place. `scratch` is 64-byte aligned memory of
 * tomo_rings_scratch_size() bytes private to the caller (its contents on entry do not
 * matter). Returns 0, or a negative TOMO_E_* code: TOMO_E_INVALID for bad parameters or a
 * non-finite input value (the sinogram is then unchanged).
 */
int tomo_rings_remove(const tomo_rings_params *p, float *sino, int n_rows, int width, void *scratch,
                      tomo_error *err);

/*
 * The same result, bit for bit, computed by the threads of `pool` over the columns of one
 * sinogram. Allocates about 8 bytes per sinogram value plus per-thread scratch.
 */
int tomo_rings_remove_pool(const tomo_rings_params *p, float *sino, int n_rows, int width,
                           tomo_pool *pool, tomo_error *err);

/*
 * Algorithm 4 (detect_stripe), exposed for tests: marks in mask[0..n) the values of `list`
 * that are stripes. The list is sorted; a straight line is fitted by least squares to its
 * middle (dropping floor(0.25 n) values at the bottom and floor(0.25 n) + 1 at the top); the
 * noise level is the rise of that line over the whole list, |slope| (n - 1). If the largest
 * value is at least snr noise levels above the line's end, values above end + snr/2 noise
 * levels are stripes; if the smallest is at least snr noise levels below the line's start,
 * values at or below start - snr/2 noise levels are. Returns the number marked. Unlike
 * Algotom, a noise level below 1e-5 (noise-free data) or fewer than 2 fitted points mean
 * "no stripes", not an error.
 */
int tomo_rings_detect_stripes(const double *list, int n, double snr, unsigned char *mask);

#endif
