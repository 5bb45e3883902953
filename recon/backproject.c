/*
 * recon/backproject.c - parallel-beam back-projection on the CPU.
 *
 * Loop order: bands of image rows, then views, then rows of the band, then pixels. The
 * filtered row of one view (scaled by its weight and zero-padded) then stays in L1 while the
 * band's output rows, which serve as the accumulators, stay in L2. Every pixel still sums its
 * views in ascending order with the same float operations, so the result depends neither on
 * the band size nor on how the caller splits the rows between threads.
 *
 * Per pixel and view, with X, Y, cos, sin, c in float:
 *     r' = X cos + (Y sin + (c + 1))          the detector position plus one, ~1..N in the FOV
 *     i  = (int)r',  t = r' - i               so truncation is the floor
 *     acc += a + t * (b - a),   a = w q[i-1],  b = w q[i]
 * with q extended by zeros on both sides. The offset of one lets the interpolation reach
 * towards zero on both detector edges without a branch: rounding can put r a few ulp outside
 * [0, N-1] at the rim of the circle.
 */
#include "backproject.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define PI 3.14159265358979323846

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Angles folded into one period, kept with their view index so that ties stay in order. */
typedef struct folded_angle {
    double angle;
    int index;
} folded_angle;

static int cmp_folded(const void *a, const void *b)
{
    const folded_angle *x = a, *y = b;
    if (x->angle != y->angle)
        return (x->angle > y->angle) - (x->angle < y->angle);
    return (x->index > y->index) - (x->index < y->index);
}

/*
 * Trapezoid rule on the circle of the given period. Angles are folded into
 * [angle[0], angle[0] + period) first, so overscans (an end frame at 180 degrees, a few views
 * past 360) share weight with the views they repeat instead of counting twice.
 */
static int weights_on_circle(const double *angle, int n, double period, double *weight)
{
    folded_angle *f = malloc(sizeof *f * (size_t)n);
    double *steps = malloc(sizeof *steps * (size_t)n);
    if (!f || !steps) {
        free(f);
        free(steps);
        return -1;
    }
    for (int m = 0; m < n; m++) {
        double a = fmod(angle[m] - angle[0], period);
        if (a < 0)
            a += period;
        if (a >= period)
            a = 0;
        f[m].angle = a;
        f[m].index = m;
    }
    qsort(f, (size_t)n, sizeof *f, cmp_folded);

    for (int k = 0; k + 1 < n; k++)
        steps[k] = f[k + 1].angle - f[k].angle;
    memcpy(weight, steps, sizeof *steps * (size_t)(n - 1)); /* weight[] as sort space */
    qsort(weight, (size_t)(n - 1), sizeof *weight, cmp_double);
    double median =
        (n - 1) % 2 ? weight[(n - 1) / 2] : 0.5 * (weight[(n - 1) / 2 - 1] + weight[(n - 1) / 2]);
    double seam = f[0].angle + period - f[n - 1].angle;
    if (seam > 2.0 * median)
        seam = median; /* a partial scan: do not give the missing wedge to its end views */

    for (int k = 0; k < n; k++) {
        double before = k > 0 ? steps[k - 1] : seam;
        double after = k + 1 < n ? steps[k] : seam;
        weight[f[k].index] = 0.5 * (before + after);
    }
    free(f);
    free(steps);
    return 0;
}

void tomo_angle_weights(const double *angle_rad, int n, double *weight)
{
    if (n < 1)
        return;
    if (n == 1) {
        weight[0] = PI;
        return;
    }
    double span = angle_rad[n - 1] - angle_rad[0];
    double period = span < 1.5 * PI ? PI : 2.0 * PI;
    if (weights_on_circle(angle_rad, n, period, weight) != 0) {
        /* Out of memory: uniform weights are the least surprising fallback. */
        for (int m = 0; m < n; m++)
            weight[m] = PI / n;
        return;
    }
    if (period > PI)
        for (int m = 0; m < n; m++)
            weight[m] *= 0.5;
}

void tomo_bp_plan_free(tomo_bp_plan *plan)
{
    if (!plan)
        return;
    free(plan->cos_t);
    free(plan->sin_t);
    free(plan->weight);
    plan->cos_t = plan->sin_t = plan->weight = NULL;
}

int tomo_bp_plan_init(tomo_bp_plan *plan, int width, const double *angle_rad, const double *weight,
                      int n_views, double center, double pixel_cm, int bin, tomo_error *err)
{
    memset(plan, 0, sizeof *plan);
    if (width < 1)
        return tomo_error_set(err, TOMO_E_INVALID, "detector width %d must be positive", width);
    if (n_views < 1 || !angle_rad)
        return tomo_error_set(err, TOMO_E_INVALID, "back-projection needs at least one view");
    if (bin < 1 || width % bin != 0)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "binning %d does not divide the detector width %d", bin, width);
    if (!(pixel_cm > 0.0) || !isfinite(pixel_cm))
        return tomo_error_set(err, TOMO_E_INVALID, "pixel size %g cm must be positive", pixel_cm);
    double radius = fmin(center, (double)(width - 1) - center);
    if (!isfinite(center) || !(radius > 0.0))
        return tomo_error_set(err, TOMO_E_INVALID, "centre %g is outside the detector (0..%d)",
                              center, width - 1);
    for (int m = 0; m < n_views; m++)
        if (!isfinite(angle_rad[m]) || (weight && !isfinite(weight[m])))
            return tomo_error_set(err, TOMO_E_INVALID, "view %d: angle or weight is not finite", m);

    double *w = NULL;
    if (!weight) {
        w = malloc(sizeof *w * (size_t)n_views);
        if (!w)
            return tomo_error_set(err, TOMO_E_NOMEM, "out of memory for %d view weights", n_views);
        tomo_angle_weights(angle_rad, n_views, w);
        weight = w;
    }
    plan->cos_t = malloc(sizeof(float) * (size_t)n_views);
    plan->sin_t = malloc(sizeof(float) * (size_t)n_views);
    plan->weight = malloc(sizeof(float) * (size_t)n_views);
    if (!plan->cos_t || !plan->sin_t || !plan->weight) {
        free(w);
        tomo_bp_plan_free(plan);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory for %d views", n_views);
    }
    for (int m = 0; m < n_views; m++) {
        plan->cos_t[m] = (float)cos(angle_rad[m]);
        plan->sin_t[m] = (float)sin(angle_rad[m]);
        plan->weight[m] = (float)(weight[m] / pixel_cm);
    }
    free(w);
    plan->width = width;
    plan->bin = bin;
    plan->size = width / bin;
    plan->n_views = n_views;
    plan->center = center;
    plan->fov_radius = radius;
    return 0;
}

/* Pixel coordinates in detector pixels; exact in float (multiples of 1/2). */
static double pixel_x(const tomo_bp_plan *p, int h)
{
    return (h + 0.5) * p->bin - 0.5 * p->width;
}

static double pixel_y(const tomo_bp_plan *p, int v)
{
    return 0.5 * p->width - (v + 0.5) * p->bin;
}

/* Columns [*h0, *h1) of row v that lie inside the reconstruction circle (exact test). */
static void circle_span(const tomo_bp_plan *p, int v, int *h0, int *h1)
{
    const double y = pixel_y(p, v), r2 = p->fov_radius * p->fov_radius;
    const int S = p->size;
#define INSIDE(h) (pixel_x(p, h) * pixel_x(p, h) + y * y <= r2)
    double rest = r2 - y * y;
    if (rest < 0) {
        *h0 = *h1 = 0;
        return;
    }
    double xm = sqrt(rest);
    /* Start from the analytic bounds, then settle them with the exact test. */
    double a = ceil((0.5 * p->width - xm) / p->bin - 0.5);
    double b = floor((0.5 * p->width + xm) / p->bin - 0.5) + 1.0;
    int lo = a < 0 ? 0 : a > S ? S : (int)a;
    int hi = b < 0 ? 0 : b > S ? S : (int)b;
    while (lo < hi && !INSIDE(lo))
        lo++;
    while (lo > 0 && INSIDE(lo - 1))
        lo--;
    while (hi > lo && !INSIDE(hi - 1))
        hi--;
    while (hi < S && INSIDE(hi))
        hi++;
    if (lo >= hi || !INSIDE(lo)) {
        *h0 = *h1 = 0;
        return;
    }
#undef INSIDE
    *h0 = lo;
    *h1 = hi;
}

/*
 * One view's filtered row, weighted and padded with zeros on both sides:
 * A[0] = 0, A[1 + n] = w q[n] for n in [0, N), A[N + 1] = A[N + 2] = 0.
 */
static void build_table(const float *q, int N, float w, float *A)
{
    A[0] = 0.0f;
    for (int n = 0; n < N; n++)
        A[n + 1] = w * q[n];
    A[N + 1] = 0.0f;
    A[N + 2] = 0.0f;
}

/* Detector index and fraction of n pixels of one row; vectorises (SSE2 cvttps2dq). */
static void positions(const float *restrict xs, int n, float cs, float base, float top,
                      int *restrict idx, float *restrict frac)
{
    for (int k = 0; k < n; k++) {
        float r = xs[k] * cs + base;
        r = r > 0.0f ? r : 0.0f;
        r = r < top ? r : top;
        int i = (int)r;
        idx[k] = i;
        frac[k] = r - (float)i;
    }
}

/*
 * acc[k] += a + t (b - a) with (a, b) = (A[i], A[i + 1]). gcc does not vectorise the gather, so
 * the SSE2 path fetches each adjacent pair with one 8-byte load and transposes four of them; it
 * performs the same single-precision operations as the scalar loop, so both give identical bits.
 */
static void accumulate(const float *restrict A, const int *restrict idx, const float *restrict frac,
                       int n, float *restrict acc)
{
    int k = 0;
#ifdef __SSE2__
    const __m128 zero = _mm_setzero_ps();
    for (; k + 4 <= n; k += 4) {
        __m128 p01 = _mm_loadl_pi(zero, (const __m64 *)(A + idx[k]));
        __m128 p23 = _mm_loadl_pi(zero, (const __m64 *)(A + idx[k + 2]));
        p01 = _mm_loadh_pi(p01, (const __m64 *)(A + idx[k + 1]));
        p23 = _mm_loadh_pi(p23, (const __m64 *)(A + idx[k + 3]));
        __m128 a = _mm_shuffle_ps(p01, p23, _MM_SHUFFLE(2, 0, 2, 0));
        __m128 b = _mm_shuffle_ps(p01, p23, _MM_SHUFFLE(3, 1, 3, 1));
        __m128 t = _mm_loadu_ps(frac + k);
        __m128 s = _mm_loadu_ps(acc + k);
        _mm_storeu_ps(acc + k, _mm_add_ps(s, _mm_add_ps(a, _mm_mul_ps(t, _mm_sub_ps(b, a)))));
    }
#endif
    for (; k < n; k++) {
        float a = A[idx[k]], b = A[idx[k] + 1];
        acc[k] += a + frac[k] * (b - a);
    }
}

/*
 * The same arithmetic as the banded path, pixel by pixel and without scratch memory: used
 * only when the scratch allocation fails, and bit-identical to the fast path.
 */
static void bp_rows_direct(const tomo_bp_plan *p, const float *filtered, long slice_stride,
                           int n_slices, float *image, int v, int h0, int h1)
{
    const int N = p->width, S = p->size;
    const float c1 = (float)(p->center + 1.0), top = (float)(N + 1);
    for (int s = 0; s < n_slices; s++) {
        const float *qs = filtered + (size_t)s * (size_t)slice_stride;
        float *out = image + (size_t)s * S * S + (size_t)v * S;
        for (int h = h0; h < h1; h++) {
            const float x = (float)pixel_x(p, h), y = (float)pixel_y(p, v);
            float acc = 0.0f;
            for (int m = 0; m < p->n_views; m++) {
                const float *q = qs + (size_t)m * N;
                const float w = p->weight[m];
                float r = x * p->cos_t[m] + (y * p->sin_t[m] + c1);
                r = r > 0.0f ? r : 0.0f;
                r = r < top ? r : top;
                int i = (int)r;
                float t = r - (float)i;
                float a = i >= 1 && i <= N ? w * q[i - 1] : 0.0f;
                float b = i < N ? w * q[i] : 0.0f;
                acc += a + t * (b - a);
            }
            out[h] = acc;
        }
    }
}

void tomo_bp_rows(const tomo_bp_plan *plan, const float *filtered, long slice_stride, int n_slices,
                  float *image, int v0, int v1)
{
    const int N = plan->width, S = plan->size, M = plan->n_views;
    if (v0 < 0)
        v0 = 0;
    if (v1 > S)
        v1 = S;
    if (v0 >= v1 || n_slices < 1)
        return;

    /* Rows per band: enough output per view to amortise the table build, few enough that the
     * band's accumulators of all slices stay in L2. */
    int band = (int)(65536 / ((long)S * n_slices));
    if (band < 4)
        band = 4;
    if (band > 64)
        band = 64;

    const size_t tab_len = (size_t)N + 3;
    float *tabs = malloc(sizeof(float) * tab_len * (size_t)n_slices);
    float *xs = malloc(sizeof(float) * (size_t)S);
    int *idx = malloc(sizeof(int) * (size_t)S);
    float *frac = malloc(sizeof(float) * (size_t)S);
    int *span = malloc(sizeof(int) * 2 * (size_t)(v1 - v0));

    for (int v = v0; v < v1; v++) {
        int h0, h1;
        circle_span(plan, v, &h0, &h1);
        if (span) {
            span[2 * (v - v0)] = h0;
            span[2 * (v - v0) + 1] = h1;
        }
        for (int s = 0; s < n_slices; s++) {
            float *row = image + (size_t)s * S * S + (size_t)v * S;
            memset(row, 0, sizeof(float) * (size_t)S);
        }
        if (!tabs || !xs || !idx || !frac || !span)
            bp_rows_direct(plan, filtered, slice_stride, n_slices, image, v, h0, h1);
    }
    if (!tabs || !xs || !idx || !frac || !span)
        goto done;

    for (int h = 0; h < S; h++)
        xs[h] = (float)pixel_x(plan, h);
    const float c1 = (float)(plan->center + 1.0), top = (float)(N + 1);

    for (int vb = v0; vb < v1; vb += band) {
        const int ve = vb + band < v1 ? vb + band : v1;
        for (int m = 0; m < M; m++) {
            const float cs = plan->cos_t[m], sn = plan->sin_t[m];
            for (int s = 0; s < n_slices; s++)
                build_table(filtered + (size_t)s * (size_t)slice_stride + (size_t)m * N, N,
                            plan->weight[m], tabs + (size_t)s * tab_len);
            for (int v = vb; v < ve; v++) {
                const int h0 = span[2 * (v - v0)], h1 = span[2 * (v - v0) + 1];
                if (h0 >= h1)
                    continue;
                const float base = (float)pixel_y(plan, v) * sn + c1;
                positions(xs + h0, h1 - h0, cs, base, top, idx, frac);
                for (int s = 0; s < n_slices; s++)
                    accumulate(tabs + (size_t)s * tab_len, idx, frac, h1 - h0,
                               image + (size_t)s * S * S + (size_t)v * S + h0);
            }
        }
    }
done:
    free(tabs);
    free(xs);
    free(idx);
    free(frac);
    free(span);
}
