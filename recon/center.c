#include "center.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

#define CENTER_MAX_ROWS     8
#define CENTER_SMOOTH_SIGMA 1.0
#define CENTER_SMOOTH_RAD   3
/* Below this standard deviation a row carries no information about the axis. */
#define CENTER_MIN_STD 1e-6

/*
 * Gaussian smoothing, normalised at the borders. The kernel is symmetric, so smoothing
 * commutes with the mirroring of the opposite view and does not move the optimum; it only
 * makes the mean-square difference a smoother function of the shift, which the parabolic
 * refinement needs when the data are noisy. Non-finite input counts as missing.
 */
static void smooth_row(const float *src, double *dst, int width)
{
    double k[2 * CENTER_SMOOTH_RAD + 1];
    for (int i = -CENTER_SMOOTH_RAD; i <= CENTER_SMOOTH_RAD; i++)
        k[i + CENTER_SMOOTH_RAD] =
            exp(-0.5 * (double)(i * i) / (CENTER_SMOOTH_SIGMA * CENTER_SMOOTH_SIGMA));
    for (int x = 0; x < width; x++) {
        double s = 0.0, ws = 0.0;
        for (int i = -CENTER_SMOOTH_RAD; i <= CENTER_SMOOTH_RAD; i++) {
            int u = x + i;
            if (u < 0 || u >= width || !isfinite(src[u]))
                continue;
            s += k[i + CENTER_SMOOTH_RAD] * src[u];
            ws += k[i + CENTER_SMOOTH_RAD];
        }
        dst[x] = ws > 0 ? s / ws : 0.0;
    }
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

/* Prefix sums of a row and of its square, for the mean and variance of any overlap. */
static void prefix_sums(const double *v, int n, double *c1, double *c2)
{
    c1[0] = c2[0] = 0.0;
    for (int i = 0; i < n; i++) {
        c1[i + 1] = c1[i] + v[i];
        c2[i + 1] = c2[i] + v[i] * v[i];
    }
}

static double range_variance(const double *c1, const double *c2, int lo, int hi)
{
    int n = hi - lo;
    double s = c1[hi] - c1[lo], s2 = c2[hi] - c2[lo];
    double v = (s2 - s * s / n) / n;
    return v > 0 ? v : 0.0;
}

double tomo_center_from_views(const float *a0, const float *a180, int width, int n_rows,
                              double *score)
{
    double fallback = width > 0 ? (width - 1) / 2.0 : 0.0;
    if (score)
        *score = 1.0;
    if (width < 3 || n_rows < 1)
        return fallback;

    /* With d in [-width/2, width/2], every shift overlaps at least half the detector. */
    int dmax = width / 2;
    int n_shift = 2 * dmax + 1;
    size_t w1 = (size_t)width + 1;
    double *f = malloc((size_t)width * sizeof *f);
    double *g = malloc((size_t)width * sizeof *g);
    double *sums = malloc(4 * w1 * sizeof *sums);
    double *cost = calloc((size_t)n_shift, sizeof *cost);
    double *sorted = malloc((size_t)n_shift * sizeof *sorted);
    if (!f || !g || !sums || !cost || !sorted) {
        free(f);
        free(g);
        free(sums);
        free(cost);
        free(sorted);
        return fallback;
    }
    double *f1 = sums, *f2 = sums + w1, *g1 = sums + 2 * w1, *g2 = sums + 3 * w1;

    for (int r = 0; r < n_rows; r++) {
        smooth_row(a0 + (size_t)r * (size_t)width, f, width);
        smooth_row(a180 + (size_t)r * (size_t)width, g, width);
        /* Mirror the opposite view in place: g[j] becomes b(j) = a180[width - 1 - j]. */
        for (int i = 0, j = width - 1; i < j; i++, j--) {
            double t = g[i];
            g[i] = g[j];
            g[j] = t;
        }
        prefix_sums(f, width, f1, f2);
        prefix_sums(g, width, g1, g2);
        double v_row = range_variance(f1, f2, 0, width) + range_variance(g1, g2, 0, width);
        for (int d = -dmax; d <= dmax; d++) {
            int j0 = d < 0 ? -d : 0;
            int j1 = d < 0 ? width : width - d;
            int n = j1 - j0;
            double s = 0.0;
            for (int j = j0; j < j1; j++) {
                double diff = f[j + d] - g[j];
                s += diff * diff;
            }
            /*
             * The mean-square difference over the overlap, relative to the variance of the two
             * views inside it. Without the normalisation, a shift that pushes a small
             * off-centre sample out of the overlap of both views compares air with air and
             * beats the true shift; normalised, such a shift scores about 1 (noise against
             * noise) while the true one scores near 0. An overlap without any structure
             * carries no information and gets the neutral 1.
             */
            double v = range_variance(f1, f2, j0 + d, j1 + d) + range_variance(g1, g2, j0, j1);
            cost[d + dmax] += v > 1e-9 * v_row && v > 0 ? (s / n) / v : 1.0;
        }
    }

    int best = 0;
    for (int i = 1; i < n_shift; i++)
        if (cost[i] < cost[best])
            best = i;
    double off = 0.0;
    if (best > 0 && best < n_shift - 1) {
        double ym = cost[best - 1], y0 = cost[best], yp = cost[best + 1];
        double den = ym - 2.0 * y0 + yp;
        if (den > 0) {
            off = 0.5 * (ym - yp) / den;
            if (off > 0.5)
                off = 0.5;
            if (off < -0.5)
                off = -0.5;
        }
    }
    double d = (double)(best - dmax) + off;

    if (score) {
        memcpy(sorted, cost, (size_t)n_shift * sizeof *sorted);
        qsort(sorted, (size_t)n_shift, sizeof *sorted, cmp_double);
        double median = sorted[n_shift / 2];
        *score = median > 0 ? cost[best] / median : 1.0;
    }
    free(f);
    free(g);
    free(sums);
    free(cost);
    free(sorted);
    /* A column u of the first view matches column 2c - u of the opposite one, so
     * a0[j + d] = a180[width - 1 - j] gives d = 2c - (width - 1). */
    return (width - 1 + d) / 2.0;
}

static double median_step(const double *angle, int n)
{
    if (n < 2)
        return 0.0;
    double *steps = malloc((size_t)(n - 1) * sizeof *steps);
    if (!steps)
        return (angle[n - 1] - angle[0]) / (n - 1);
    for (int i = 0; i + 1 < n; i++)
        steps[i] = angle[i + 1] - angle[i];
    qsort(steps, (size_t)(n - 1), sizeof *steps, cmp_double);
    double m = steps[(n - 1) / 2];
    free(steps);
    return m;
}

static double row_std(const float *v, int n)
{
    double mean = 0.0;
    for (int i = 0; i < n; i++)
        mean += v[i];
    mean /= n;
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (v[i] - mean) * (v[i] - mean);
    return sqrt(ss / n);
}

int tomo_center_find(const tomo_scan *scan, const tomo_prep_params *pp, tomo_pool *pool,
                     double *center, tomo_error *err)
{
    int n = scan->n_proj, width = scan->width;
    const double *ang = scan->proj_angle_deg;
    if (n < 2 || width < 3 || scan->rows < 1)
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "%s: %d projections of %d columns are too few to find the axis "
                              "(give -o center=)",
                              scan->path, n, width);

    /* The view opposite the first is a blend of two recorded views with weight w on the
     * second: interpolation when the pair brackets it, extrapolation from the last two
     * when the scan stops just short of it. */
    double target = ang[0] + 180.0;
    int k = -1;
    for (int i = 0; i + 1 < n; i++)
        if (ang[i] <= target && target <= ang[i + 1]) {
            k = i;
            break;
        }
    double w;
    if (k >= 0) {
        double span = ang[k + 1] - ang[k];
        w = span > 0 ? (target - ang[k]) / span : 0.0;
    } else {
        double step = median_step(ang, n);
        double gap = target - ang[n - 1];
        double span = ang[n - 1] - ang[n - 2];
        if (!(step > 0 && gap > 0 && gap <= 2.0 * step && span > 0))
            return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                                  "%s: the projections cover only %.6g degrees; the axis needs "
                                  "a view 180 degrees from the first (give -o center=)",
                                  scan->path, ang[n - 1] - ang[0]);
        k = n - 2;
        w = (target - ang[k]) / span;
    }
    int sel[3] = {0, k, k + 1};

    int n_rows = scan->rows < CENTER_MAX_ROWS ? scan->rows : CENTER_MAX_ROWS;
    float *buf = malloc(3 * (size_t)width * sizeof *buf);
    float *v0 = malloc((size_t)n_rows * (size_t)width * sizeof *v0);
    float *v180 = malloc((size_t)n_rows * (size_t)width * sizeof *v180);
    int rc = 0;
    if (!buf || !v0 || !v180) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory finding the axis");
        goto out;
    }

    int kept = 0, last_row = -1;
    double lo = 0.1 * scan->rows, hi = 0.9 * scan->rows;
    for (int r = 0; r < n_rows; r++) {
        int z = (int)floor(lo + (hi - lo) * (r + 0.5) / n_rows);
        if (z < 0)
            z = 0;
        if (z >= scan->rows)
            z = scan->rows - 1;
        if (z == last_row)
            continue;
        last_row = z;
        rc = tomo_prep_rows(scan, pp, pool, sel, 3, z, 1, buf, NULL, err);
        if (rc < 0)
            goto out;
        float *dst0 = v0 + (size_t)kept * (size_t)width;
        float *dst180 = v180 + (size_t)kept * (size_t)width;
        const float *pk = buf + (size_t)width, *pk1 = buf + 2 * (size_t)width;
        memcpy(dst0, buf, (size_t)width * sizeof *dst0);
        for (int x = 0; x < width; x++)
            dst180[x] = (float)((1.0 - w) * pk[x] + w * pk1[x]);
        if (row_std(dst0, width) < CENTER_MIN_STD || row_std(dst180, width) < CENTER_MIN_STD)
            continue;
        kept++;
    }
    if (!kept) {
        rc = tomo_error_set(err, TOMO_E_FORMAT,
                            "%s: no detector row has enough contrast to find the axis", scan->path);
        goto out;
    }

    double score;
    double c = tomo_center_from_views(v0, v180, width, kept, &score);
    tomo_log_info("%s: rotation axis at column %.2f (from %d rows, match score %.3g)", scan->path,
                  c, kept, score);
    *center = c;
out:
    free(buf);
    free(v0);
    free(v180);
    return rc;
}
