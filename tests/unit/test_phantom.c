#include "check.h"

#include <stdint.h>

#include "../../recon/phantom.h"

static const double pi = 3.14159265358979323846;

/* Section semi-axes, written out again here so that the tests do not trust the library's. */
static int test_section(const tomo_ellipsoid *e, double z, double *A, double *B)
{
    double r = (z - e->z0) / e->c;
    if (fabs(r) >= 1)
        return 0;
    *A = e->a * sqrt(1 - r * r);
    *B = e->b * sqrt(1 - r * r);
    return 1;
}

/* The sections of slice z seen at angle theta: where their chords are centred, how wide. */
typedef struct {
    int n;
    double uc[TOMO_PHANTOM_MAX_ELLIPSOIDS], s2[TOMO_PHANTOM_MAX_ELLIPSOIDS];
    double scale[TOMO_PHANTOM_MAX_ELLIPSOIDS];
} view_sections;

static void view_init(view_sections *vs, const tomo_phantom *ph, int z, double theta)
{
    vs->n = 0;
    for (int i = 0; i < ph->n; i++) {
        const tomo_ellipsoid *e = &ph->e[i];
        double A, B;
        if (!test_section(e, z, &A, &B))
            continue;
        double d = theta - e->phi;
        double s2 = A * A * cos(d) * cos(d) + B * B * sin(d) * sin(d);
        vs->uc[vs->n] = ph->center + e->x0 * cos(theta) + e->y0 * sin(theta);
        vs->s2[vs->n] = s2;
        vs->scale[vs->n] = 2 * e->mu * A * B / s2 * ph->pixel_cm;
        vs->n++;
    }
}

/* Line integral along the ray that hits the detector at u (not averaged over a pixel). */
static double ray_sum(const view_sections *vs, double u)
{
    double sum = 0;
    for (int i = 0; i < vs->n; i++) {
        double t = u - vs->uc[i];
        if (t * t < vs->s2[i])
            sum += vs->scale[i] * sqrt(vs->s2[i] - t * t);
    }
    return sum;
}

static void test_geometry(void)
{
    tomo_phantom ph;
    tomo_phantom_init(&ph, 256, 100, 128.75, 1.0);
    CHECK(ph.n >= 8 && ph.n <= TOMO_PHANTOM_MAX_ELLIPSOIDS);
    double r0 = 0.9 * fmin(ph.center, 255 - ph.center);
    int rotated = 0, negative = 0, small = 0;
    for (int i = 0; i < ph.n; i++) {
        const tomo_ellipsoid *e = &ph.e[i];
        CHECK(hypot(e->x0, e->y0) + fmax(e->a, e->b) <= r0 * (1 + 1e-12));
        CHECK(e->a > 0 && e->b > 0 && e->c > 0);
        rotated += e->phi != 0;
        negative += e->mu < 0;
        small += fmax(e->a, e->b) <= 6;
    }
    CHECK(rotated >= 1);
    CHECK(negative >= 1);
    CHECK(small >= 2);
    CHECK_NEAR(ph.pixel_cm, 1e-4, 1e-18);
}

/*
 * The closed form against midpoint quadrature of the chord sum over each pixel. The square-root
 * edge of an ellipse limits the quadrature to about 0.2 n^-1.5 of a pixel's value: 1024 points
 * keep that well below the tolerance.
 */
static void test_projection_matches_quadrature(void)
{
    tomo_phantom ph;
    tomo_phantom_init(&ph, 256, 64, 128.75, 2.5);
    float p[256];
    const double thetas[] = {0, 0.3, 1.0, pi / 2, 2.2, 3.0};
    const int zs[] = {0, 10, 29, 32, 40, 63};
    double worst = 0;
    for (size_t a = 0; a < sizeof thetas / sizeof thetas[0]; a++)
        for (size_t b = 0; b < sizeof zs / sizeof zs[0]; b++) {
            tomo_phantom_project(&ph, zs[b], thetas[a], p);
            view_sections vs;
            view_init(&vs, &ph, zs[b], thetas[a]);
            for (int x = 0; x < 256; x++) {
                double ref = 0;
                for (int j = 0; j < 1024; j++)
                    ref += ray_sum(&vs, x - 0.5 + (j + 0.5) / 1024);
                ref /= 1024;
                if (ref > 0.01) {
                    double rel = fabs(p[x] - ref) / ref;
                    worst = fmax(worst, rel);
                } else {
                    CHECK(fabs(p[x] - ref) < 1e-4);
                }
            }
        }
    CHECK(worst < 1e-3);
    fprintf(stderr, "     against quadrature: worst relative error %.2g\n", worst);
}

/* The closed form in long double, as the reference of precision at the full detector size. */
static long double ref_integral(long double s, long double t)
{
    if (t >= s)
        return 0.25L * 3.14159265358979323846264338L * s * s;
    if (t <= -s)
        return -0.25L * 3.14159265358979323846264338L * s * s;
    long double w = sqrtl((s - t) * (s + t));
    return 0.5L * (t * w + s * s * atan2l(t, w));
}

static void test_projection_precise_at_full_size(void)
{
    enum { N = 4432, ROWS = 2368 };
    tomo_phantom ph;
    tomo_phantom_init(&ph, N, ROWS, 2216.73, 0.65);
    float *p = malloc(N * sizeof *p);
    long double *ref = malloc(N * sizeof *ref);
    const double thetas[] = {0, 0.7853981633974483, 1.234, pi / 2, 2.9};
    const int zs[] = {0, 700, 1184, 1500, 2367};
    double worst = 0;
    for (size_t a = 0; a < sizeof thetas / sizeof thetas[0]; a++)
        for (size_t b = 0; b < sizeof zs / sizeof zs[0]; b++) {
            double theta = thetas[a];
            tomo_phantom_project(&ph, zs[b], theta, p);
            for (int x = 0; x < N; x++)
                ref[x] = 0;
            for (int i = 0; i < ph.n; i++) {
                const tomo_ellipsoid *e = &ph.e[i];
                long double r = ((long double)zs[b] - e->z0) / e->c;
                if (fabsl(r) >= 1)
                    continue;
                long double k = sqrtl((1 - r) * (1 + r));
                long double A = e->a * k, B = e->b * k;
                long double d = (long double)theta - e->phi;
                long double s2 = A * A * cosl(d) * cosl(d) + B * B * sinl(d) * sinl(d);
                long double s = sqrtl(s2);
                long double uc = ph.center + e->x0 * cosl(theta) + e->y0 * sinl(theta);
                long double scale = 2 * e->mu * ph.pixel_cm * A * B / s2;
                for (int x = 0; x < N; x++)
                    ref[x] +=
                        scale * (ref_integral(s, x + 0.5L - uc) - ref_integral(s, x - 0.5L - uc));
            }
            for (int x = 0; x < N; x++) {
                double err = fabs((double)(p[x] - ref[x]));
                if (ref[x] > 1e-3)
                    worst = fmax(worst, err / (double)ref[x]);
                else
                    CHECK(err < 1e-10);
            }
        }
    CHECK(worst < 1e-7);
    fprintf(stderr, "     at N = 4432: worst relative error %.2g\n", worst);
    free(p);
    free(ref);
}

/* theta + pi sees the mirror image about the axis: u -> 2c - u. */
static void test_mirror_symmetry(void)
{
    tomo_phantom ph;
    tomo_phantom_init(&ph, 256, 32, 127.5, 1.0);
    float p[256], q[256];
    for (int a = 0; a < 12; a++) {
        double theta = a * 0.27;
        for (int z = 4; z < 32; z += 9) {
            tomo_phantom_project(&ph, z, theta, p);
            tomo_phantom_project(&ph, z, theta + pi, q);
            for (int x = 0; x < 256; x++)
                CHECK_NEAR(q[x], p[255 - x], 1e-6);
        }
    }
}

/* The thickest path absorbs about ln 5, at any size and pixel size. */
static void test_max_line_integral(void)
{
    double maxima[2];
    const double pixel[2] = {1.0, 6.5};
    for (int k = 0; k < 2; k++) {
        tomo_phantom ph;
        tomo_phantom_init(&ph, 256, 48, 128.75, pixel[k]);
        float p[256];
        double m = 0;
        for (int z = 0; z < 48; z++)
            for (int a = 0; a < 180; a++) {
                tomo_phantom_project(&ph, z, a * pi / 180, p);
                for (int x = 0; x < 256; x++) {
                    CHECK(p[x] >= 0);
                    m = fmax(m, p[x]);
                }
                CHECK(p[0] == 0 && p[255] == 0);
            }
        maxima[k] = m;
    }
    CHECK(maxima[0] > 0.7 * log(5.0) && maxima[0] < 1.3 * log(5.0));
    CHECK_NEAR(maxima[1], maxima[0], 1e-6 * maxima[0]);
}

/* Every projection carries the mass of the slice. */
static void test_mass_conservation(void)
{
    enum { N = 256, ROWS = 40 };
    tomo_phantom ph;
    tomo_phantom_init(&ph, N, ROWS, 128.75, 1.0);
    float *truth = malloc(N * N * sizeof *truth);
    float p[N];
    for (int z = 0; z < ROWS; z += 3) {
        tomo_phantom_truth(&ph, z, truth);
        double mass = 0;
        for (int i = 0; i < N * N; i++) {
            CHECK(truth[i] >= 0);
            mass += truth[i];
        }
        mass *= ph.pixel_cm;
        CHECK(mass > 0);
        for (int a = 0; a < 36; a++) {
            tomo_phantom_project(&ph, z, a * pi / 36, p);
            double sum = 0;
            for (int x = 0; x < N; x++)
                sum += p[x];
            CHECK_NEAR(sum, mass, 0.005 * mass);
        }
    }
    free(truth);
}

/* The truth is non-negative everywhere and zero outside 0.9 of the reconstruction circle. */
static void test_truth_support(void)
{
    enum { N = 200, ROWS = 30 };
    tomo_phantom ph;
    tomo_phantom_init(&ph, N, ROWS, 97.0, 1.0);
    double r0 = 0.9 * 97.0;
    float *truth = malloc(N * N * sizeof *truth);
    for (int z = 0; z < ROWS; z++) {
        tomo_phantom_truth(&ph, z, truth);
        for (int v = 0; v < N; v++)
            for (int h = 0; h < N; h++) {
                float t = truth[v * N + h];
                double X = h + 0.5 - N / 2.0, Y = N / 2.0 - (v + 0.5);
                CHECK(t >= 0);
                if (hypot(X, Y) > r0)
                    CHECK(t == 0);
            }
    }
    /* rows computed separately are the same as the whole image */
    float *rows = malloc(7 * N * sizeof *rows);
    tomo_phantom_truth(&ph, 15, truth);
    tomo_phantom_truth_rows(&ph, 15, 90, 97, rows);
    CHECK(memcmp(rows, truth + 90 * N, 7 * N * sizeof *rows) == 0);
    free(rows);
    free(truth);
}

/*
 * Orientation: X right, Y up, row 0 at the top, and projections that agree with the truth
 * image about it (with c = 127.5 and N = 256, column h of the image is detector column h at
 * theta = 0, and row v is detector column 255 - v at theta = pi / 2).
 */
static void test_truth_orientation(void)
{
    enum { N = 256, ROWS = 64 };
    tomo_phantom ph;
    tomo_phantom_init(&ph, N, ROWS, 127.5, 1.0);
    /* the densest ellipsoid sits at X > 0, Y > 0 */
    int dense = 0;
    for (int i = 1; i < ph.n; i++)
        if (ph.e[i].mu > ph.e[dense].mu)
            dense = i;
    CHECK(ph.e[dense].x0 > 0 && ph.e[dense].y0 > 0);
    int z = (int)ph.e[dense].z0;
    float *truth = malloc(N * N * sizeof *truth);
    tomo_phantom_truth(&ph, z, truth);
    int best = 0;
    for (int i = 1; i < N * N; i++)
        if (truth[i] > truth[best])
            best = i;
    CHECK(best % N > N / 2);
    CHECK(best / N < N / 2);

    float p[N];
    double diff = 0, norm = 0;
    tomo_phantom_project(&ph, z, 0, p);
    for (int h = 0; h < N; h++) {
        double col = 0;
        for (int v = 0; v < N; v++)
            col += truth[v * N + h];
        diff += fabs(col * ph.pixel_cm - p[h]);
        norm += p[h];
    }
    tomo_phantom_project(&ph, z, pi / 2, p);
    for (int v = 0; v < N; v++) {
        double row = 0;
        for (int h = 0; h < N; h++)
            row += truth[v * N + h];
        diff += fabs(row * ph.pixel_cm - p[255 - v]);
        norm += p[255 - v];
    }
    CHECK(diff < 0.02 * norm);
    free(truth);
}

static void test_edge_distance(void)
{
    enum { N = 256, ROWS = 64 };
    tomo_phantom ph;
    tomo_phantom_init(&ph, N, ROWS, 128.75, 1.0);
    int dense = 0;
    for (int i = 1; i < ph.n; i++)
        if (ph.e[i].mu > ph.e[dense].mu)
            dense = i;
    const tomo_ellipsoid *e = &ph.e[dense];
    int z = (int)lround(e->z0);
    double A = 0, B = 0;
    CHECK(test_section(e, z, &A, &B));
    /* at its centre and next to its right vertex (phi = 0 for this one) */
    int h = (int)lround(e->x0 + N / 2.0 - 0.5), v = (int)lround(N / 2.0 - 0.5 - e->y0);
    CHECK(tomo_phantom_edge_distance(&ph, z, h, v) >= 2);
    CHECK(tomo_phantom_edge_distance(&ph, z, h, v) <= fmin(A, B) + 1);
    h = (int)lround(e->x0 + A + N / 2.0 - 0.5);
    CHECK(tomo_phantom_edge_distance(&ph, z, h, v) < 1);
    /* an empty slice */
    tomo_phantom empty = ph;
    empty.n = 0;
    CHECK(tomo_phantom_edge_distance(&empty, z, 10, 10) > 1e6);

    /* against brute force over densely sampled boundaries */
    for (int k = 0; k < 200; k++) {
        int hh = (k * 37) % N, vv = (k * 101 + 13) % N, zz = (k * 7) % ROWS;
        double brute = 1e30;
        for (int i = 0; i < ph.n; i++) {
            const tomo_ellipsoid *f = &ph.e[i];
            double a, b;
            if (!test_section(f, zz, &a, &b))
                continue;
            double X = hh + 0.5 - N / 2.0 - f->x0, Y = N / 2.0 - (vv + 0.5) - f->y0;
            for (int j = 0; j < 20000; j++) {
                double t = 2 * pi * j / 20000;
                double bx = a * cos(t), by = b * sin(t);
                double px = f->x0 + bx * cos(f->phi) - by * sin(f->phi) - f->x0;
                double py = f->y0 + bx * sin(f->phi) + by * cos(f->phi) - f->y0;
                brute = fmin(brute, hypot(X - px, Y - py));
            }
        }
        double d = tomo_phantom_edge_distance(&ph, zz, hh, vv);
        CHECK(d <= brute + 1e-9);
        CHECK(d > brute - 0.02 - 1e-3 * brute);
    }

    /* pixels 1.5 px from every edge have all eight neighbours of the same value */
    float *truth = malloc(N * N * sizeof *truth);
    for (int zz = 5; zz < ROWS; zz += 20) {
        tomo_phantom_truth(&ph, zz, truth);
        for (int vv = 1; vv < N - 1; vv++)
            for (int hh = 1; hh < N - 1; hh++) {
                if (tomo_phantom_edge_distance(&ph, zz, hh, vv) < 1.5)
                    continue;
                float c = truth[vv * N + hh];
                for (int dv = -1; dv <= 1; dv++)
                    for (int dh = -1; dh <= 1; dh++)
                        if (truth[(vv + dv) * N + hh + dh] != c) {
                            CHECK(!"neighbour differs");
                            dv = dh = 2;
                        }
            }
    }
    free(truth);
}

static void test_rng(void)
{
    tomo_rng a, b, c;
    tomo_rng_seed_words(&a, 1, 2, 3);
    tomo_rng_seed_words(&b, 1, 2, 3);
    tomo_rng_seed_words(&c, 2, 1, 3);
    int same = 1, differ = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = tomo_rng_next(&a), y = tomo_rng_next(&b), z = tomo_rng_next(&c);
        same &= x == y;
        differ += x != z;
    }
    CHECK(same);
    CHECK(differ == 100);
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = tomo_rng_uniform(&a);
        CHECK(u >= 0 && u < 1);
        sum += u;
    }
    CHECK_NEAR(sum / 100000, 0.5, 5 * sqrt(1.0 / 12 / 100000));
}

static void test_poisson_moments(void)
{
    const double means[] = {0.5, 10, 29.9, 30, 1000, 30000};
    enum { SAMPLES = 200000 };
    for (size_t m = 0; m < sizeof means / sizeof means[0]; m++) {
        double mu = means[m];
        tomo_rng rng;
        tomo_rng_seed_words(&rng, 42, m, 0);
        double sum = 0, sum2 = 0;
        for (int i = 0; i < SAMPLES; i++) {
            double k = tomo_poisson(&rng, mu);
            CHECK(k >= 0 && k == floor(k));
            sum += k;
            sum2 += k * k;
        }
        double mean = sum / SAMPLES, var = sum2 / SAMPLES - mean * mean;
        CHECK_NEAR(mean, mu, 5 * sqrt(mu / SAMPLES));
        CHECK_NEAR(var, mu, 5 * sqrt((2 * mu * mu + mu) / SAMPLES));
    }
    tomo_rng rng;
    tomo_rng_seed_words(&rng, 1, 1, 1);
    CHECK(tomo_poisson(&rng, 0) == 0);
    CHECK(tomo_poisson(&rng, -3) == 0);
}

/* The whole distribution, by a chi-square test on both sides of the method switch. */
static void test_poisson_distribution(void)
{
    const double means[] = {4, 35, 200};
    enum { SAMPLES = 300000 };
    for (size_t m = 0; m < sizeof means / sizeof means[0]; m++) {
        double mu = means[m];
        int lo = (int)fmax(0, floor(mu - 5 * sqrt(mu))), hi = (int)ceil(mu + 5 * sqrt(mu));
        int nb = hi - lo + 1;
        long *count = calloc((size_t)nb, sizeof *count);
        tomo_rng rng;
        tomo_rng_seed_words(&rng, 7, m, 9);
        long outside = 0;
        for (int i = 0; i < SAMPLES; i++) {
            double k = tomo_poisson(&rng, mu);
            if (k < lo || k > hi)
                outside++;
            else
                count[(int)k - lo]++;
        }
        /* merge bins with few expected counts into their neighbours */
        double chi2 = 0, exp_acc = 0, obs_acc = 0;
        int dof = -1;
        for (int k = lo; k <= hi; k++) {
            exp_acc += SAMPLES * exp(-mu + k * log(mu) - lgamma(k + 1.0));
            obs_acc += count[k - lo];
            if (exp_acc >= 20 || k == hi) {
                chi2 += (obs_acc - exp_acc) * (obs_acc - exp_acc) / exp_acc;
                dof++;
                exp_acc = obs_acc = 0;
            }
        }
        /* mean dof, sd sqrt(2 dof): allow five standard deviations */
        CHECK(chi2 < dof + 5 * sqrt(2.0 * dof));
        CHECK(outside < 20);
        free(count);
    }
}

TOMO_TEST_MAIN(test_geometry, test_projection_matches_quadrature,
               test_projection_precise_at_full_size, test_mirror_symmetry, test_max_line_integral,
               test_mass_conservation, test_truth_support, test_truth_orientation,
               test_edge_distance, test_rng, test_poisson_moments, test_poisson_distribution)
