#include "phantom.h"

#include <math.h>
#include <stddef.h>

/*
 * The standard phantom: a sample in a thin-walled container. X and Y are in units of
 * R0 = 0.9 min(c, N - 1 - c), the radius the whole phantom stays within; z0 is relative to
 * rows / 2 and c to rows / 2 as well, so the container spans every row; mu is in units of
 * ln(5) / (2 R0 pixel_cm) cm^-1, so a path of 2 R0 through mu = 1 absorbs ln(5). The thickest
 * path through the whole table absorbs about 0.92 ln(5).
 *
 * The layout has no symmetry that would hide an orientation error: every feature is off
 * centre, the body and the pore are rotated, and the dense inclusion sits at X > 0, Y > 0.
 * Negative entries cut holes into an enclosing positive one (they lie inside it at every
 * height), so the attenuation is never negative.
 */
static const struct {
    double x0, y0, z0, a, b, c, phi_deg, mu;
} table[] = {
    /*  x0     y0     z0     a      b      c     phi     mu */
    {0.02, -0.01, 0.00, 0.96, 0.95, 1.25, 0, 1.00},     /* container wall (outer surface) */
    {0.02, -0.01, 0.00, 0.90, 0.89, 1.20, 0, -1.00},    /* container bore: leaves the wall */
    {0.05, 0.03, -0.05, 0.78, 0.66, 1.00, 20, 0.60},    /* sample body */
    {-0.35, 0.28, 0.10, 0.30, 0.11, 0.60, 35, 0.80},    /* rotated bar in the body */
    {0.40, 0.22, -0.10, 0.10, 0.085, 0.25, 0, 3.00},    /* dense inclusion, X > 0, Y > 0 */
    {-0.10, -0.30, 0.05, 0.16, 0.10, 0.40, -15, -0.60}, /* pore: a hole in the body */
    {0.15, -0.50, 0.00, 0.05, 0.05, 0.05, 0, 2.00},     /* small feature, 5.7 px at N = 256 */
    {-0.55, -0.10, -0.30, 0.04, 0.04, 0.04, 0, 2.50},   /* small feature, 4.5 px */
    {0.30, 0.52, 0.30, 0.035, 0.03, 0.05, 0, 3.00},     /* small feature, 3.4-4 px */
    {0.60, -0.15, 0.20, 0.07, 0.18, 0.70, -25, 1.40},   /* tilted rod near the wall */
};

enum { TABLE_SIZE = sizeof table / sizeof table[0] };
_Static_assert(TABLE_SIZE <= TOMO_PHANTOM_MAX_ELLIPSOIDS, "phantom table too long");

static const double pi = 3.14159265358979323846;

void tomo_phantom_init(tomo_phantom *ph, int width, int rows, double center, double pixel_um)
{
    double r0 = 0.9 * fmin(center, width - 1 - center);
    double half_rows = 0.5 * rows;
    double pixel_cm = pixel_um * 1e-4;
    double mu_unit = log(5.0) / (2.0 * r0 * pixel_cm);

    ph->width = width;
    ph->rows = rows;
    ph->center = center;
    ph->pixel_cm = pixel_cm;
    ph->n = TABLE_SIZE;
    for (int i = 0; i < TABLE_SIZE; i++) {
        tomo_ellipsoid *e = &ph->e[i];
        e->x0 = table[i].x0 * r0;
        e->y0 = table[i].y0 * r0;
        e->z0 = half_rows + table[i].z0 * half_rows;
        e->a = table[i].a * r0;
        e->b = table[i].b * r0;
        e->c = table[i].c * half_rows;
        e->phi = table[i].phi_deg * (pi / 180.0);
        e->mu = table[i].mu * mu_unit;
    }
}

/* Semi-axes of the section of e by the plane at height z; 0 when the plane misses it. */
static int section(const tomo_ellipsoid *e, double z, double *A, double *B)
{
    double r = (z - e->z0) / e->c;
    if (!(fabs(r) < 1.0))
        return 0;
    /* (1 - r)(1 + r) keeps its relative precision near the poles, 1 - r^2 does not */
    double k = sqrt((1.0 - r) * (1.0 + r));
    *A = e->a * k;
    *B = e->b * k;
    return *A > 0 && *B > 0;
}

/*
 * Antiderivative of sqrt(s^2 - t^2), with t clamped to [-s, s]. The angle comes from atan2 of
 * t and the half chord w: asin(t / s) loses all precision as t / s nears 1, while w computed
 * as sqrt((s - t)(s + t)) stays accurate there.
 */
static double chord_integral(double s, double s2, double t)
{
    if (t >= s)
        return 0.25 * pi * s2;
    if (t <= -s)
        return -0.25 * pi * s2;
    double w = sqrt((s - t) * (s + t));
    return 0.5 * (t * w + s2 * atan2(t, w));
}

/*
 * Far from the ends of a chord, the pixel mean of f(t) = sqrt(s^2 - t^2) follows from its even
 * derivatives at the pixel centre, f + f''/24 + f''''/1920 + ..., term k being about
 * (s / w^2)^(2k) of f, with w the half chord. Where w^2 >= SERIES_MIN s, the first omitted term
 * is below 1e-11 of the value, far beneath float precision, and a square root replaces the
 * arc tangent of the closed form (the bulk of the work for wide ellipses).
 */
#define SERIES_MIN 25.0

typedef struct {
    double uc, s, s2, scale;
    int x_lo, x_hi;   /* columns the chord touches */
    int in_lo, in_hi; /* columns where the series applies (empty when in_lo > in_hi) */
} chord_run;

/* Adds the pixel means of one chord to acc[x - x0] for x in [lo, hi], exactly. */
static void add_exact(const chord_run *c, int lo, int hi, int x0, double *acc)
{
    double left = chord_integral(c->s, c->s2, (lo - 0.5) - c->uc);
    for (int x = lo; x <= hi; x++) {
        /* pixel edges are shared, so each edge costs one antiderivative */
        double right = chord_integral(c->s, c->s2, (x + 0.5) - c->uc);
        acc[x - x0] += c->scale * (right - left);
        left = right;
    }
}

/* The same from the series: f - s^2 / (24 w^3) - s^2 (s^2 + 4 t^2) / (640 w^7). */
static void add_series(const chord_run *c, int lo, int hi, int x0, double *acc)
{
    double s = c->s, s2 = c->s2, scale = c->scale;
    for (int x = lo; x <= hi; x++) {
        double t = x - c->uc;
        double w2 = (s - t) * (s + t);
        double inv = 1.0 / w2;
        double q = s2 * inv * inv;
        double mean = sqrt(w2) * (1.0 - q * (1.0 / 24.0 + (s2 + 4.0 * t * t) * inv * inv / 640.0));
        acc[x - x0] += scale * mean;
    }
}

/* Columns are summed in blocks so that the double accumulator can live on the stack. */
enum { BLOCK = 512 };

void tomo_phantom_project(const tomo_phantom *ph, int z, double theta, float *p)
{
    int n = ph->width;
    double ct = cos(theta), st = sin(theta);
    chord_run act[TOMO_PHANTOM_MAX_ELLIPSOIDS];
    int n_act = 0;
    for (int i = 0; i < ph->n; i++) {
        const tomo_ellipsoid *e = &ph->e[i];
        double A, B;
        if (!section(e, z, &A, &B) || e->mu == 0)
            continue;
        double cd = cos(theta - e->phi), sd = sin(theta - e->phi);
        double s2 = A * A * cd * cd + B * B * sd * sd;
        double s = sqrt(s2);
        double uc = ph->center + e->x0 * ct + e->y0 * st;
        /* columns whose interval [x - 0.5, x + 0.5] meets (uc - s, uc + s) */
        double lo = ceil(uc - s - 0.5), hi = floor(uc + s + 0.5);
        if (hi < 0 || lo > n - 1)
            continue;
        chord_run *c = &act[n_act++];
        c->uc = uc;
        c->s = s;
        c->s2 = s2;
        /* chord(t) = 2 mu A B sqrt(s^2 - t^2) / s^2, lengths in pixels */
        c->scale = 2.0 * e->mu * ph->pixel_cm * A * B / s2;
        c->x_lo = lo < 0 ? 0 : (int)lo;
        c->x_hi = hi > n - 1 ? n - 1 : (int)hi;
        c->in_lo = 1;
        c->in_hi = 0;
        if (s > SERIES_MIN) {
            /* |t| <= tm keeps w^2 >= SERIES_MIN s; such pixels lie well inside the chord */
            double tm = sqrt((s - SERIES_MIN) * s);
            double a = fmax(ceil(uc - tm), c->x_lo), b = fmin(floor(uc + tm), c->x_hi);
            if (a <= b) {
                c->in_lo = (int)a;
                c->in_hi = (int)b;
            }
        }
    }

    double acc[BLOCK];
    for (int x0 = 0; x0 < n; x0 += BLOCK) {
        int x1 = x0 + BLOCK < n ? x0 + BLOCK : n;
        for (int x = x0; x < x1; x++)
            acc[x - x0] = 0;
        for (int i = 0; i < n_act; i++) {
            const chord_run *c = &act[i];
            int lo = c->x_lo > x0 ? c->x_lo : x0;
            int hi = c->x_hi < x1 - 1 ? c->x_hi : x1 - 1;
            if (lo > hi)
                continue;
            int a = c->in_lo > lo ? c->in_lo : lo, b = c->in_hi < hi ? c->in_hi : hi;
            if (a > b) {
                add_exact(c, lo, hi, x0, acc);
                continue;
            }
            if (lo < a)
                add_exact(c, lo, a - 1, x0, acc);
            add_series(c, a, b, x0, acc);
            if (b < hi)
                add_exact(c, b + 1, hi, x0, acc);
        }
        for (int x = x0; x < x1; x++)
            p[x] = (float)acc[x - x0];
    }
}

/* A section in the frame of its own axes, ready for point tests. */
typedef struct {
    double x0, y0, cp, sp, A, B, inv_a2, inv_b2, mu;
} flat_ellipse;

static int flat_sections(const tomo_phantom *ph, int z, flat_ellipse *out)
{
    int n = 0;
    for (int i = 0; i < ph->n; i++) {
        const tomo_ellipsoid *e = &ph->e[i];
        double A, B;
        if (!section(e, z, &A, &B))
            continue;
        out[n] = (flat_ellipse){e->x0, e->y0,         cos(e->phi),   sin(e->phi), A,
                                B,     1.0 / (A * A), 1.0 / (B * B), e->mu};
        n++;
    }
    return n;
}

/* Coordinates of (X, Y) along the ellipse's own axes. */
static void to_local(const flat_ellipse *f, double X, double Y, double *xl, double *yl)
{
    double dx = X - f->x0, dy = Y - f->y0;
    *xl = dx * f->cp + dy * f->sp;
    *yl = -dx * f->sp + dy * f->cp;
}

static int inside(const flat_ellipse *f, double X, double Y)
{
    double xl, yl;
    to_local(f, X, Y, &xl, &yl);
    return xl * xl * f->inv_a2 + yl * yl * f->inv_b2 < 1.0;
}

void tomo_phantom_truth_rows(const tomo_phantom *ph, int z, int v0, int v1, float *rows)
{
    int n = ph->width;
    flat_ellipse f[TOMO_PHANTOM_MAX_ELLIPSOIDS];
    int nf = flat_sections(ph, z, f);
    for (int v = v0; v < v1; v++) {
        float *row = rows + (size_t)(v - v0) * (size_t)n;
        double Y = 0.5 * n - (v + 0.5);
        /*
         * Each ellipse covers one run of X on this row: the roots of a quadratic bound it, and
         * the exact point test decides the pixels at its ends, so that only covered pixels
         * are visited and the result is the plain point test.
         */
        int lo[TOMO_PHANTOM_MAX_ELLIPSOIDS], hi[TOMO_PHANTOM_MAX_ELLIPSOIDS];
        for (int i = 0; i < nf; i++) {
            double cp = f[i].cp, sp = f[i].sp, dy = Y - f[i].y0;
            double qa = cp * cp * f[i].inv_a2 + sp * sp * f[i].inv_b2;
            double qb = dy * cp * sp * (f[i].inv_a2 - f[i].inv_b2);
            double qc = dy * dy * (sp * sp * f[i].inv_a2 + cp * cp * f[i].inv_b2) - 1.0;
            double disc = qb * qb - qa * qc;
            lo[i] = 1;
            hi[i] = 0;
            if (disc < 0)
                continue;
            double r = sqrt(disc);
            double xa = f[i].x0 + (-qb - r) / qa, xb = f[i].x0 + (-qb + r) / qa;
            /* pixel h has X = h + 0.5 - n / 2; widen by one for rounding */
            double ha = ceil(xa + 0.5 * n - 0.5) - 1, hb = floor(xb + 0.5 * n - 0.5) + 1;
            if (hb < 0 || ha > n - 1)
                continue;
            lo[i] = ha < 0 ? 0 : (int)ha;
            hi[i] = hb > n - 1 ? n - 1 : (int)hb;
        }
        for (int h = 0; h < n; h++) {
            double X = h + 0.5 - 0.5 * n;
            double sum = 0;
            for (int i = 0; i < nf; i++)
                if (h >= lo[i] && h <= hi[i] && inside(&f[i], X, Y))
                    sum += f[i].mu;
            row[h] = (float)sum;
        }
    }
}

void tomo_phantom_truth(const tomo_phantom *ph, int z, float *image)
{
    tomo_phantom_truth_rows(ph, z, 0, ph->width, image);
}

/*
 * Euclidean distance from (px, py) to the ellipse x^2/A^2 + y^2/B^2 = 1. The nearest point is
 * (A^2 x / (t + A^2), B^2 y / (t + B^2)) for the root t of a function that decreases
 * monotonically between two known bounds; bisection finds it to full precision.
 */
static double ellipse_distance(double A, double B, double px, double py)
{
    double e0 = A, e1 = B, y0 = fabs(px), y1 = fabs(py);
    if (e0 < e1) {
        double t = e0;
        e0 = e1;
        e1 = t;
        t = y0;
        y0 = y1;
        y1 = t;
    }
    /* now e0 >= e1, the point in the first quadrant */
    if (y1 > 0) {
        if (y0 == 0)
            return fabs(y1 - e1);
        double a0 = e0 * y0, a1 = e1 * y1;
        double t_lo = -e1 * e1 + a1;                      /* second term alone is 1: G >= 0 */
        double t_hi = -e1 * e1 + sqrt(a0 * a0 + a1 * a1); /* G <= 0 */
        for (int it = 0; it < 200; it++) {
            double t = 0.5 * (t_lo + t_hi);
            if (t <= t_lo || t >= t_hi)
                break;
            double r0 = a0 / (t + e0 * e0), r1 = a1 / (t + e1 * e1);
            double g = r0 * r0 + r1 * r1 - 1.0;
            if (g > 0)
                t_lo = t;
            else if (g < 0)
                t_hi = t;
            else {
                t_lo = t_hi = t;
                break;
            }
        }
        double t = 0.5 * (t_lo + t_hi);
        double x0 = e0 * e0 * y0 / (t + e0 * e0), x1 = e1 * e1 * y1 / (t + e1 * e1);
        return hypot(x0 - y0, x1 - y1);
    }
    /* on the major axis: inside, near the centre, the nearest point is off the axis */
    double d = e0 * e0 - e1 * e1;
    if (d > 0 && y0 * e0 < d) {
        double x0 = e0 * e0 * y0 / d;
        double q = x0 / e0;
        double x1 = e1 * sqrt(fmax(0.0, (1.0 - q) * (1.0 + q)));
        return hypot(x0 - y0, x1);
    }
    return fabs(y0 - e0);
}

double tomo_phantom_edge_distance(const tomo_phantom *ph, int z, int h, int v)
{
    flat_ellipse f[TOMO_PHANTOM_MAX_ELLIPSOIDS];
    int nf = flat_sections(ph, z, f);
    double X = h + 0.5 - 0.5 * ph->width, Y = 0.5 * ph->width - (v + 0.5);
    double best = 1e30;
    for (int i = 0; i < nf; i++) {
        double xl, yl;
        to_local(&f[i], X, Y, &xl, &yl);
        /* the circles through the vertices bound the distance from below: skip hopeless ones */
        double r = hypot(xl, yl), big = fmax(f[i].A, f[i].B), small = fmin(f[i].A, f[i].B);
        double bound = r > big ? r - big : r < small ? small - r : 0.0;
        if (bound >= best)
            continue;
        double d = ellipse_distance(f[i].A, f[i].B, xl, yl);
        if (d < best)
            best = d;
    }
    return best;
}

/* ---- random numbers ---- */

/* ln(k!) for integer k >= 0: a table, then Stirling's series (error below 1e-12 from k = 10). */
static double log_factorial(double k)
{
    static const double small[10] = {0.0,
                                     0.0,
                                     0.69314718055994531,
                                     1.7917594692280550,
                                     3.1780538303479458,
                                     4.7874917427820460,
                                     6.5792512120101010,
                                     8.5251613610654147,
                                     10.604602902745251,
                                     12.801827480081469};
    if (k < 10)
        return small[(int)k];
    double n = k + 1, n2 = n * n;
    return (n - 0.5) * log(n) - n + 0.91893853320467274 +
           (1.0 / 12.0 - (1.0 / 360.0 - 1.0 / (1260.0 * n2)) / n2) / n;
}

double tomo_poisson(tomo_rng *rng, double mean)
{
    if (!(mean > 0))
        return 0;
    if (mean < 30) {
        /* inversion: walk the distribution function until it passes u */
        double u = tomo_rng_uniform(rng);
        double pk = exp(-mean), cdf = pk;
        double k = 0;
        while (u >= cdf) {
            k += 1;
            pk *= mean / k;
            cdf += pk;
            if (pk < 1e-300 && k > mean)
                break; /* u within rounding of 1: the tail beyond is empty in double */
        }
        return k;
    }
    /*
     * PTRS (W. Hormann, "The transformed rejection method for generating Poisson random
     * variables", Insurance: Mathematics and Economics 12, 1993): a uniform pair is mapped
     * through an approximate inverse, accepted at once inside a squeeze region (~90 %), and
     * otherwise compared with the exact probability.
     */
    double smu = sqrt(mean);
    double b = 0.931 + 2.53 * smu;
    double a = -0.059 + 0.02483 * b;
    double inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
    double v_r = 0.9277 - 3.6224 / (b - 2);
    double log_mean = log(mean);
    for (;;) {
        double u = tomo_rng_uniform(rng) - 0.5;
        double v = tomo_rng_uniform(rng);
        double us = 0.5 - fabs(u);
        if (us <= 0)
            continue;
        double k = floor((2 * a / us + b) * u + mean + 0.43);
        if (us >= 0.07 && v <= v_r)
            return k;
        if (k < 0 || (us < 0.013 && v > us))
            continue;
        if (log(v * inv_alpha / (a / (us * us) + b)) <= -mean + k * log_mean - log_factorial(k))
            return k;
    }
}
