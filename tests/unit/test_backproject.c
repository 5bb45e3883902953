/*
 * tests/unit/test_backproject.c - angular weights, geometry and accuracy of the CPU
 * back-projection, with the filters of recon/filter.c as the real pipeline uses them.
 */
#include "check.h"

#include "../../recon/backproject.h"
#include "../../recon/filter.h"

#include <stdint.h>

#define PI 3.14159265358979323846

static double rnd(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) * (1.0 / 9007199254740992.0);
}

static double sum(const double *w, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += w[i];
    return s;
}

static void test_weights_uniform_half_turn(void)
{
    enum { M = 180 };
    double a[M + 1], w[M + 1];
    for (int m = 0; m < M; m++)
        a[m] = m * PI / M;
    tomo_angle_weights(a, M, w);
    for (int m = 0; m < M; m++)
        CHECK_NEAR(w[m], PI / M, 1e-12);
    CHECK_NEAR(sum(w, M), PI, 1e-12);

    /* With a 180-degree end frame, the first and last views share one step. */
    for (int m = 0; m <= M; m++)
        a[m] = m * PI / M;
    tomo_angle_weights(a, M + 1, w);
    CHECK_NEAR(w[0] + w[M], PI / M, 1e-12);
    CHECK_NEAR(w[0], 0.5 * PI / M, 1e-12);
    for (int m = 1; m < M; m++)
        CHECK_NEAR(w[m], PI / M, 1e-12);
    CHECK_NEAR(sum(w, M + 1), PI, 1e-12);

    /* An offset start changes nothing. */
    for (int m = 0; m < M; m++)
        a[m] = 1.234 + m * PI / M;
    tomo_angle_weights(a, M, w);
    for (int m = 0; m < M; m++)
        CHECK_NEAR(w[m], PI / M, 1e-12);

    double one = 0.7;
    tomo_angle_weights(&one, 1, w);
    CHECK_NEAR(w[0], PI, 0);
}

static void test_weights_full_turn(void)
{
    enum { M = 400 };
    double a[M + 1], w[M + 1];
    for (int m = 0; m < M; m++)
        a[m] = m * 2.0 * PI / M;
    tomo_angle_weights(a, M, w);
    for (int m = 0; m < M; m++)
        CHECK_NEAR(w[m], PI / M, 1e-12);
    CHECK_NEAR(sum(w, M), PI, 1e-12);

    /* A 360-degree end frame. */
    for (int m = 0; m <= M; m++)
        a[m] = m * 2.0 * PI / M;
    tomo_angle_weights(a, M + 1, w);
    CHECK_NEAR(w[0] + w[M], PI / M, 1e-12);
    CHECK_NEAR(sum(w, M + 1), PI, 1e-12);
}

static void test_weights_non_uniform(void)
{
    enum { M = 300 };
    double a[M], w[M];
    uint64_t seed = 7;
    for (int m = 0; m < M; m++)
        a[m] = (m + 0.45 * rnd(&seed)) * PI / M;
    tomo_angle_weights(a, M, w);
    CHECK_NEAR(sum(w, M), PI, 1e-12);
    for (int m = 1; m + 1 < M; m++)
        CHECK_NEAR(w[m], 0.5 * (a[m + 1] - a[m - 1]), 1e-15);
    CHECK_NEAR(w[0], 0.5 * (a[1] - (a[M - 1] - PI)), 1e-12);

    /* A partial scan over 120 degrees: the missing wedge counts as one step, not as weight. */
    const double step = (2.0 * PI / 3.0) / (M - 1);
    for (int m = 0; m < M; m++)
        a[m] = m * step;
    tomo_angle_weights(a, M, w);
    CHECK_NEAR(w[0], step, 1e-12);
    CHECK_NEAR(w[M - 1], step, 1e-12);
    CHECK_NEAR(sum(w, M), 2.0 * PI / 3.0 + step, 1e-12);

    /* Views given in 360 degrees but with gaps stay normalised to pi. */
    for (int m = 0; m < M; m++)
        a[m] = m * 2.0 * PI / M + (m % 3 == 0 ? 0.001 : 0.0);
    tomo_angle_weights(a, M, w);
    CHECK_NEAR(sum(w, M), PI, 1e-12);
}

static void test_plan_errors(void)
{
    double a[4] = {0, 0.5, 1.0, 1.5};
    tomo_bp_plan p;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_bp_plan_init(&p, 100, a, NULL, 4, 120.0, 1e-4, 1, &err), -TOMO_E_INVALID);
    CHECK_INT(err.code, TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "outside the detector (0..99)");
    tomo_error_clear(&err);
    CHECK_INT(tomo_bp_plan_init(&p, 100, a, NULL, 4, -3.0, 1e-4, 1, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "outside the detector");
    tomo_error_clear(&err);
    CHECK_INT(tomo_bp_plan_init(&p, 100, a, NULL, 4, 49.5, 1e-4, 3, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "binning 3");
    tomo_error_clear(&err);
    CHECK_INT(tomo_bp_plan_init(&p, 100, a, NULL, 0, 49.5, 1e-4, 1, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_bp_plan_init(&p, 100, a, NULL, 4, 49.5, 0.0, 1, &err), -TOMO_E_INVALID);

    tomo_error_clear(&err);
    CHECK_INT(tomo_bp_plan_init(&p, 100, a, NULL, 4, 40.0, 2e-4, 2, &err), 0);
    CHECK_INT(p.size, 50);
    CHECK_NEAR(p.fov_radius, 40.0, 0);
    CHECK_NEAR(p.weight[1], 0.5 / 2e-4, 1e-2); /* the wide seam counts as one step */
    CHECK_NEAR(p.cos_t[2], cos(1.0), 1e-7);
    CHECK_NEAR(p.sin_t[3], sin(1.5), 1e-7);
    tomo_bp_plan_free(&p);
    tomo_bp_plan_free(&p);
}

/* Integral of 2 sqrt(R^2 - s^2) from 0 to s (clamped to the disc). */
static double chord_integral(double s, double R)
{
    if (s <= -R)
        return -0.5 * PI * R * R;
    if (s >= R)
        return 0.5 * PI * R * R;
    return s * sqrt(R * R - s * s) + R * R * asin(s / R);
}

/*
 * Parallel projections of a disc of attenuation mu (cm^-1) and radius R pixels at (X0, Y0)
 * around the axis, averaged over each detector pixel, as line integrals in the units a real
 * sinogram has (-ln I/I0: cm^-1 times cm).
 */
static void add_disc(float *sino, int N, int M, const double *angle, double center, double X0,
                     double Y0, double R, double mu, double pixel_cm)
{
    for (int m = 0; m < M; m++) {
        double u0 = X0 * cos(angle[m]) + Y0 * sin(angle[m]) + center;
        for (int x = 0; x < N; x++) {
            double s = x - u0;
            double v = chord_integral(s + 0.5, R) - chord_integral(s - 0.5, R);
            sino[(size_t)m * N + x] += (float)(mu * pixel_cm * v);
        }
    }
}

static float *filtered_sinogram(const float *sino, int N, int M, tomo_filter_kind kind)
{
    tomo_error err;
    tomo_filter *f = tomo_filter_create(N, kind, TOMO_PAD_ZERO, &err);
    CHECK(f != NULL);
    float *q = malloc(sizeof(float) * (size_t)N * M);
    void *scratch = aligned_alloc(64, (tomo_filter_scratch_size(f) + 63) & ~(size_t)63);
    memcpy(q, sino, sizeof(float) * (size_t)N * M);
    for (int m = 0; m < M; m++)
        tomo_filter_row(f, q + (size_t)m * N, scratch);
    free(scratch);
    tomo_filter_destroy(f);
    return q;
}

typedef struct disc_stats {
    double mean, rms, n;
    int outside_nonzero;
} disc_stats;

/* Statistics inside the disc (more than `margin` pixels in) and the FOV check. */
static disc_stats disc_check(const tomo_bp_plan *p, const float *img, double R, double margin)
{
    disc_stats st = {0, 0, 0, 0};
    const int S = p->size, b = p->bin, N = p->width;
    for (int v = 0; v < S; v++)
        for (int h = 0; h < S; h++) {
            double X = (h + 0.5) * b - 0.5 * N, Y = 0.5 * N - (v + 0.5) * b;
            double rr = X * X + Y * Y;
            float val = img[(size_t)v * S + h];
            if (rr > p->fov_radius * p->fov_radius) {
                uint32_t bits;
                memcpy(&bits, &val, sizeof bits);
                if (bits != 0)
                    st.outside_nonzero++;
            } else if (sqrt(rr) < R - margin) {
                st.mean += val;
                st.rms += (val - 1.0) * (val - 1.0);
                st.n++;
            }
        }
    st.mean /= st.n;
    st.rms = sqrt(st.rms / st.n);
    return st;
}

static void uniform_angles(double *a, int M)
{
    for (int m = 0; m < M; m++)
        a[m] = m * PI / M;
}

static void test_disc_accuracy(void)
{
    enum { N = 256, M = 360 };
    static const double centers[] = {127.5, 129.3};
    static const tomo_filter_kind kinds[] = {TOMO_FILTER_RAMLAK, TOMO_FILTER_CHESLER};
    const double pixel_cm = 1e-4, R = 60.0;
    double angle[M];
    uniform_angles(angle, M);
    float *sino = malloc(sizeof(float) * N * M);
    float *img = malloc(sizeof(float) * N * N);
    for (int ci = 0; ci < 2; ci++) {
        const double c = centers[ci];
        memset(sino, 0, sizeof(float) * N * M);
        add_disc(sino, N, M, angle, c, 0.0, 0.0, R, 1.0, pixel_cm);
        for (int ki = 0; ki < 2; ki++) {
            float *q = filtered_sinogram(sino, N, M, kinds[ki]);
            for (int bin = 1; bin <= 2; bin++) {
                tomo_bp_plan p;
                tomo_error err;
                CHECK_INT(tomo_bp_plan_init(&p, N, angle, NULL, M, c, pixel_cm, bin, &err), 0);
                CHECK_INT(p.size, N / bin);
                tomo_bp_rows(&p, q, (long)N * M, 1, img, 0, p.size);
                disc_stats st = disc_check(&p, img, R, 3.0);
                if (getenv("TOMO_TEST_VERBOSE"))
                    fprintf(stderr, "c=%.1f %s bin %d: mean %.6f rms %.6f over %.0f px\n", c,
                            tomo_filter_name(kinds[ki]), bin, st.mean, st.rms, st.n);
                CHECK_NEAR(st.mean, 1.0, 0.005);
                CHECK(st.rms < 0.01);
                CHECK_INT(st.outside_nonzero, 0);
                /* Well outside the disc (but inside the FOV) the image is ~0. */
                const int S = p.size;
                double worst = 0.0;
                for (int v = 0; v < S; v++)
                    for (int h = 0; h < S; h++) {
                        double X = (h + 0.5) * bin - 0.5 * N, Y = 0.5 * N - (v + 0.5) * bin;
                        double r = sqrt(X * X + Y * Y);
                        if (r > R + 4 && r < p.fov_radius - 4)
                            worst = fmax(worst, fabs(img[(size_t)v * S + h]));
                    }
                CHECK(worst < 0.02);
                tomo_bp_plan_free(&p);
            }
            free(q);
        }
    }
    free(sino);
    free(img);
}

/* Centroid (h, v) of the pixels above half the maximum. */
static void centroid(const float *img, int S, double *h, double *v)
{
    float top = 0.0f;
    for (int i = 0; i < S * S; i++)
        top = img[i] > top ? img[i] : top;
    double sw = 0.0, sh = 0.0, sv = 0.0;
    for (int i = 0; i < S * S; i++)
        if (img[i] > 0.5f * top) {
            sw += img[i];
            sh += img[i] * (double)(i % S);
            sv += img[i] * (double)(i / S);
        }
    *h = sh / sw;
    *v = sv / sw;
}

/* A small disc at X > 0, Y > 0 must appear right of and above the image centre. */
static void test_orientation(void)
{
    enum { N = 128, M = 180 };
    const double c = 63.5, X0 = 20.5, Y0 = 30.5;
    double angle[M];
    uniform_angles(angle, M);
    float *sino = calloc((size_t)N * M, sizeof(float));
    float *img = malloc(sizeof(float) * N * N);
    add_disc(sino, N, M, angle, c, X0, Y0, 2.5, 1.0, 1e-4);
    float *q = filtered_sinogram(sino, N, M, TOMO_FILTER_RAMLAK);
    tomo_bp_plan p;
    CHECK_INT(tomo_bp_plan_init(&p, N, angle, NULL, M, c, 1e-4, 1, NULL), 0);
    tomo_bp_rows(&p, q, (long)N * M, 1, img, 0, N);
    double h, v;
    centroid(img, N, &h, &v);
    /* X = h + 0.5 - N/2, Y = N/2 - v - 0.5 */
    CHECK_NEAR(h, X0 + N / 2 - 0.5, 0.05);
    CHECK_NEAR(v, N / 2 - 0.5 - Y0, 0.05);
    CHECK(h > N / 2);
    CHECK(v < N / 2);
    CHECK_NEAR(img[(int)v * N + (int)h], 1.0, 0.05);
    tomo_bp_plan_free(&p);

    /* Adding 90 degrees to every angle turns the image 90 degrees counter-clockwise:
     * u = X0 cos t + Y0 sin t = -Y0 cos t' + X0 sin t', so the object is found at (-Y0, X0). */
    double shifted[M];
    for (int m = 0; m < M; m++)
        shifted[m] = angle[m] + PI / 2;
    CHECK_INT(tomo_bp_plan_init(&p, N, shifted, NULL, M, c, 1e-4, 1, NULL), 0);
    tomo_bp_rows(&p, q, (long)N * M, 1, img, 0, N);
    centroid(img, N, &h, &v);
    CHECK_NEAR(h, -Y0 + N / 2 - 0.5, 0.05);
    CHECK_NEAR(v, N / 2 - 0.5 - X0, 0.05);
    tomo_bp_plan_free(&p);
    free(q);
    free(sino);
    free(img);
}

static float *random_sinogram(int N, int M, uint64_t seed)
{
    float *q = malloc(sizeof(float) * (size_t)N * M);
    for (int i = 0; i < N * M; i++)
        q[i] = (float)(rnd(&seed) - 0.3);
    return q;
}

static void test_split_invariance(void)
{
    enum { N = 256, M = 97 };
    double angle[M];
    for (int m = 0; m < M; m++)
        angle[m] = 0.3 + m * 1.01 * PI / M;
    float *q = random_sinogram(N, M, 5);
    float *a = malloc(sizeof(float) * N * N);
    float *b = malloc(sizeof(float) * N * N);
    static const int cuts[] = {0, 13, 50, 51, 100, 170, 201, 256};
    for (int ci = 0; ci < 2; ci++) {
        tomo_bp_plan p;
        CHECK_INT(tomo_bp_plan_init(&p, N, angle, NULL, M, ci ? 127.5 : 140.25, 1e-3, 1, NULL), 0);
        memset(a, 0x55, sizeof(float) * N * N);
        memset(b, 0x77, sizeof(float) * N * N);
        tomo_bp_rows(&p, q, (long)N * M, 1, a, 0, N);
        for (int k = 7; k > 0; k--) /* in reverse order, as threads might */
            tomo_bp_rows(&p, q, (long)N * M, 1, b, cuts[k - 1], cuts[k]);
        CHECK(memcmp(a, b, sizeof(float) * N * N) == 0);
        /* Row by row, and rows outside [v0, v1) untouched. */
        memset(b, 0x77, sizeof(float) * N * N);
        for (int v = 0; v < N; v++)
            tomo_bp_rows(&p, q, (long)N * M, 1, b, v, v + 1);
        CHECK(memcmp(a, b, sizeof(float) * N * N) == 0);
        memset(b, 0x77, sizeof(float) * N * N);
        tomo_bp_rows(&p, q, (long)N * M, 1, b, 20, 30);
        CHECK(memcmp(a + 20 * N, b + 20 * N, sizeof(float) * 10 * N) == 0);
        uint32_t bits;
        memcpy(&bits, &b[19 * N + 128], 4);
        CHECK(bits == 0x77777777u);
        memcpy(&bits, &b[30 * N + 128], 4);
        CHECK(bits == 0x77777777u);
        tomo_bp_plan_free(&p);
    }
    free(q);
    free(a);
    free(b);
}

static void test_multi_slice(void)
{
    enum { N = 192, M = 120, S = 3 };
    const long stride = (long)N * M + 17; /* not a multiple of the row length */
    double angle[M];
    uniform_angles(angle, M);
    float *q = malloc(sizeof(float) * (size_t)stride * S);
    for (int s = 0; s < S; s++) {
        float *r = random_sinogram(N, M, 100 + s);
        memcpy(q + s * stride, r, sizeof(float) * N * M);
        free(r);
    }
    for (int bin = 1; bin <= 2; bin++) {
        tomo_bp_plan p;
        CHECK_INT(tomo_bp_plan_init(&p, N, angle, NULL, M, 94.7, 1e-4, bin, NULL), 0);
        const int sz = p.size;
        float *all = malloc(sizeof(float) * (size_t)sz * sz * S);
        float *one = malloc(sizeof(float) * (size_t)sz * sz * S);
        tomo_bp_rows(&p, q, stride, S, all, 0, sz);
        for (int s = 0; s < S; s++)
            tomo_bp_rows(&p, q + s * stride, stride, 1, one + (size_t)s * sz * sz, 0, sz);
        CHECK(memcmp(all, one, sizeof(float) * (size_t)sz * sz * S) == 0);
        /* And split into bands at the same time. */
        memset(one, 0, sizeof(float) * (size_t)sz * sz * S);
        tomo_bp_rows(&p, q, stride, S, one, 0, sz / 3);
        tomo_bp_rows(&p, q, stride, S, one, sz / 3, sz);
        CHECK(memcmp(all, one, sizeof(float) * (size_t)sz * sz * S) == 0);
        free(all);
        free(one);
        tomo_bp_plan_free(&p);
    }
    free(q);
}

/* One view, no filter: every pixel reads the interpolated row at its detector position. */
static void test_single_view_interpolation(void)
{
    enum { N = 16 };
    double angle = 0.0, weight = 1.0;
    float q[N];
    for (int x = 0; x < N; x++)
        q[x] = (float)(1 + x * x);
    tomo_bp_plan p;
    /* Centre 7.25 with angle 0: pixel h sees r = h + 0.5 - 8 + 7.25 = h - 0.25. */
    CHECK_INT(tomo_bp_plan_init(&p, N, &angle, &weight, 1, 7.25, 0.5, 1, NULL), 0);
    float img[N * N];
    tomo_bp_rows(&p, q, N, 1, img, 0, N);
    const int v = N / 2;
    for (int h = 0; h < N; h++) {
        double X = h + 0.5 - N / 2.0, Y = N / 2.0 - v - 0.5;
        if (X * X + Y * Y > p.fov_radius * p.fov_radius) {
            CHECK(img[v * N + h] == 0.0f);
            continue;
        }
        double r = h - 0.25;
        int n = (int)floor(r);
        double t = r - n;
        double lo = n >= 0 ? q[n] : 0.0, hi = n + 1 < N ? q[n + 1] : 0.0;
        double expect = (lo + t * (hi - lo)) / 0.5;
        CHECK_NEAR(img[v * N + h], expect, 4e-7 * fabs(expect));
    }
    tomo_bp_plan_free(&p);
}

TOMO_TEST_MAIN(test_weights_uniform_half_turn, test_weights_full_turn, test_weights_non_uniform,
               test_plan_errors, test_disc_accuracy, test_orientation, test_split_invariance,
               test_multi_slice, test_single_view_interpolation)
