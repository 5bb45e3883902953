#include "check.h"

#include "../../common/pool.h"
#include "../../recon/prep.h"

/* ---- an in-memory scan whose frames are plain arrays ---- */

typedef struct mem_reader {
    int width, rows;
    int count[3];     /* frames per tomo_frame_kind */
    float *frames[3]; /* [count][rows][width] per kind */
    int fail_kind;    /* a read of this frame fails; fail_index < 0 for none */
    int fail_index;
} mem_reader;

static int mem_read_rows(void *reader, tomo_frame_kind kind, int index, int z0, int nz, float *dst,
                         tomo_error *err)
{
    mem_reader *mr = reader;
    if ((int)kind == mr->fail_kind && index == mr->fail_index)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "scan/q%04d.img: truncated: 100 bytes, "
                              "expected 8256",
                              index + 1);
    if (index < 0 || index >= mr->count[kind] || z0 < 0 || nz < 1 || z0 + nz > mr->rows)
        return tomo_error_set(err, TOMO_E_INTERNAL, "bad read: kind %d index %d rows %d+%d",
                              (int)kind, index, z0, nz);
    memcpy(dst, mr->frames[kind] + ((size_t)index * mr->rows + z0) * mr->width,
           (size_t)nz * mr->width * sizeof *dst);
    return 0;
}

static void mem_close(void *reader)
{
    (void)reader;
}

static const tomo_scan_reader_ops mem_ops = {mem_read_rows, mem_close};

typedef struct fixture {
    tomo_scan scan;
    mem_reader mr;
    double *base;  /* [rows][width] open-beam counts above dark at t = 0 */
    double *dark;  /* [rows][width] */
    double *truth; /* [n_proj][rows][width] absorbance */
    double drift;  /* relative flat drift per time unit */
} fixture;

#define FW 64
#define FR 6
#define FP 30
#define FG 3 /* flat groups */
#define FF 4 /* flats per group */
#define FD 3 /* darks */

static float *frame(fixture *fx, tomo_frame_kind kind, int index)
{
    return fx->mr.frames[kind] + (size_t)index * FR * FW;
}

static double i0_at(const fixture *fx, double t, int z, int x)
{
    return fx->base[z * FW + x] * (1.0 + fx->drift * t);
}

static double group_t0(int g)
{
    return 60.0 * g;
}

/*
 * 3 groups of 4 flats at t = 60g + 0..3, projections at t = 4 + 3.9 m (all between the first
 * and the last group, except the last one, which comes after it). Flats drift linearly in time,
 * so time interpolation between group means reproduces the open beam exactly.
 */
static void fixture_init(fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    fx->drift = 0.002;
    fx->base = malloc(FR * FW * sizeof *fx->base);
    fx->dark = malloc(FR * FW * sizeof *fx->dark);
    fx->truth = malloc((size_t)FP * FR * FW * sizeof *fx->truth);
    mem_reader *mr = &fx->mr;
    mr->width = FW;
    mr->rows = FR;
    mr->count[TOMO_FRAME_PROJECTION] = FP;
    mr->count[TOMO_FRAME_FLAT] = FG * FF;
    mr->count[TOMO_FRAME_DARK] = FD;
    for (int k = 0; k < 3; k++)
        mr->frames[k] = malloc((size_t)mr->count[k] * FR * FW * sizeof(float));
    mr->fail_kind = -1;
    mr->fail_index = -1;

    tomo_scan *s = &fx->scan;
    snprintf(s->path, sizeof s->path, "/data/mem-scan");
    snprintf(s->format, sizeof s->format, "memory");
    s->width = FW;
    s->rows = FR;
    s->n_proj = FP;
    s->n_flat = FG * FF;
    s->n_dark = FD;
    s->n_flat_groups = FG;
    s->proj_angle_deg = calloc(FP, sizeof(double));
    s->proj_time = calloc(FP, sizeof(double));
    s->proj_frame = calloc(FP, sizeof(int));
    s->flat_time = calloc(FG * FF, sizeof(double));
    s->flat_group = calloc(FG * FF, sizeof(int));
    s->flat_frame = calloc(FG * FF, sizeof(int));
    s->ops = &mem_ops;
    s->reader = mr;

    for (int z = 0; z < FR; z++)
        for (int x = 0; x < FW; x++) {
            fx->base[z * FW + x] = 3000.0 + 200.0 * sin(0.1 * x + z);
            fx->dark[z * FW + x] = 100.0 + 10.0 * ((x * 7 + z * 3) % 5);
        }
    for (int i = 0; i < FD; i++)
        for (int j = 0; j < FR * FW; j++)
            frame(fx, TOMO_FRAME_DARK, i)[j] = (float)(fx->dark[j] + 0.5 * (i - 1));
    for (int g = 0; g < FG; g++)
        for (int i = 0; i < FF; i++) {
            int f = g * FF + i;
            double t = group_t0(g) + i;
            s->flat_time[f] = t;
            s->flat_group[f] = g;
            s->flat_frame[f] = f;
            for (int z = 0; z < FR; z++)
                for (int x = 0; x < FW; x++)
                    frame(fx, TOMO_FRAME_FLAT, f)[z * FW + x] =
                        (float)(fx->dark[z * FW + x] + i0_at(fx, t, z, x));
        }
    for (int m = 0; m < FP; m++) {
        double t = m == FP - 1 ? 130.0 : 4.0 + 3.9 * m;
        s->proj_angle_deg[m] = 6.0 * m;
        s->proj_time[m] = t;
        s->proj_frame[m] = m;
        /* After the last group the nearest group's mean is the reference. */
        double tref = t > group_t0(FG - 1) + 1.5 ? group_t0(FG - 1) + 1.5 : t;
        for (int z = 0; z < FR; z++)
            for (int x = 0; x < FW; x++) {
                double p = 0.2 + 1.5 * exp(-(x - 20 - 0.5 * m) * (x - 20 - 0.5 * m) / 50.0) +
                           0.1 * z + 0.3 * sin(0.2 * x + m);
                double i0 = i0_at(fx, t, z, x);
                double raw = fx->dark[z * FW + x] + i0 * exp(-p);
                frame(fx, TOMO_FRAME_PROJECTION, m)[z * FW + x] = (float)raw;
                /* The value prep must return: the reference differs from the true beam only
                 * for the projection after the last group. */
                fx->truth[((size_t)m * FR + z) * FW + x] =
                    log(i0_at(fx, tref, z, x) / (raw - fx->dark[z * FW + x]));
            }
    }
}

static void fixture_free(fixture *fx)
{
    for (int k = 0; k < 3; k++)
        free(fx->mr.frames[k]);
    free(fx->base);
    free(fx->dark);
    free(fx->truth);
    free(fx->scan.proj_angle_deg);
    free(fx->scan.proj_time);
    free(fx->scan.proj_frame);
    free(fx->scan.flat_time);
    free(fx->scan.flat_group);
    free(fx->scan.flat_frame);
}

static float out_at(const float *out, int n_sel, int z, int k, int x)
{
    return out[((size_t)z * n_sel + k) * FW + x];
}

/* ---- tests ---- */

static void test_defaults(void)
{
    tomo_prep_params pp;
    tomo_prep_params_default(&pp);
    CHECK_NEAR(pp.floor_counts, 2.0, 0);
    CHECK_NEAR(pp.black_fraction, 0.5, 0);
}

static void test_flat_bracket(void)
{
    const double t3[] = {0.0, 10.0, 20.0};
    int a, b;
    double w;
    tomo_flat_bracket(t3, 3, -5.0, &a, &b, &w);
    CHECK(a == 0 && b == 0 && w == 0.0);
    tomo_flat_bracket(t3, 3, 25.0, &a, &b, &w);
    CHECK(a == 2 && b == 2 && w == 0.0);
    tomo_flat_bracket(t3, 3, 20.0, &a, &b, &w);
    CHECK(a == 2 && b == 2 && w == 0.0);
    tomo_flat_bracket(t3, 3, 5.0, &a, &b, &w);
    CHECK(a == 0 && b == 1);
    CHECK_NEAR(w, 0.5, 1e-15);
    tomo_flat_bracket(t3, 3, 0.0, &a, &b, &w);
    CHECK(a == 0 && b == 1 && w == 0.0);
    tomo_flat_bracket(t3, 3, 10.0, &a, &b, &w);
    CHECK(a == 1 && b == 2 && w == 0.0);
    tomo_flat_bracket(t3, 3, 17.5, &a, &b, &w);
    CHECK(a == 1 && b == 2);
    CHECK_NEAR(w, 0.75, 1e-15);
    tomo_flat_bracket(t3, 3, NAN, &a, &b, &w);
    CHECK(a == 0 && b == 0 && w == 0.0);

    const double one[] = {7.0};
    tomo_flat_bracket(one, 1, 100.0, &a, &b, &w);
    CHECK(a == 0 && b == 0 && w == 0.0);

    /* Equal group times never give a NaN weight. */
    const double eq[] = {0.0, 10.0, 10.0, 20.0};
    tomo_flat_bracket(eq, 4, 10.0, &a, &b, &w);
    CHECK(a == 2 && b == 3 && w == 0.0);
    tomo_flat_bracket(eq, 4, 5.0, &a, &b, &w);
    CHECK(a == 0 && b == 1);
    CHECK_NEAR(w, 0.5, 1e-15);
    const double same[] = {5.0, 5.0, 5.0};
    tomo_flat_bracket(same, 3, 5.0, &a, &b, &w);
    CHECK(a == 2 && b == 2 && w == 0.0);
    tomo_flat_bracket(same, 3, 4.0, &a, &b, &w);
    CHECK(a == 0 && b == 0 && w == 0.0);
}

static void test_group_times(void)
{
    fixture fx;
    fixture_init(&fx);
    double gt[FG];
    tomo_flat_group_times(&fx.scan, gt);
    for (int g = 0; g < FG; g++)
        CHECK_NEAR(gt[g], group_t0(g) + 1.5, 1e-12);
    fixture_free(&fx);
}

static void test_known_absorbance(void)
{
    fixture fx;
    fixture_init(&fx);
    float *out = malloc((size_t)FP * FR * FW * sizeof *out);
    tomo_prep_stats st = {0};
    tomo_error err;
    tomo_error_clear(&err);
    int rc = tomo_prep_rows(&fx.scan, NULL, NULL, NULL, FP, 0, FR, out, &st, &err);
    CHECK_INT(rc, 0);
    double worst = 0.0;
    for (int m = 0; m < FP; m++)
        for (int z = 0; z < FR; z++)
            for (int x = 0; x < FW; x++) {
                double e = fabs(out_at(out, FP, z, m, x) - fx.truth[((size_t)m * FR + z) * FW + x]);
                if (e > worst)
                    worst = e;
            }
    CHECK_NEAR(worst, 0.0, 1e-5);
    CHECK_INT(st.clipped_pixels, 0);
    CHECK_INT(st.black_lines, 0);

    /* A band of rows and an unordered selection with a repeat give the same values. */
    const int sel[] = {17, 0, 5, 29, 17};
    int ns = 5, z0 = 2, nz = 3;
    float *part = malloc((size_t)ns * nz * FW * sizeof *part);
    rc = tomo_prep_rows(&fx.scan, NULL, NULL, sel, ns, z0, nz, part, NULL, &err);
    CHECK_INT(rc, 0);
    int same = 1;
    for (int z = 0; z < nz; z++)
        for (int k = 0; k < ns; k++)
            for (int x = 0; x < FW; x++)
                same &= out_at(part, ns, z, k, x) == out_at(out, FP, z0 + z, sel[k], x);
    CHECK(same);
    free(part);
    free(out);
    fixture_free(&fx);
}

static void test_bad_arguments(void)
{
    fixture fx;
    fixture_init(&fx);
    float out[FW];
    tomo_error err;
    tomo_prep_params pp;
    tomo_prep_params_default(&pp);
    pp.floor_counts = 0.0;
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, &pp, NULL, NULL, 1, 0, 1, out, NULL, &err), -TOMO_E_INVALID);
    tomo_prep_params_default(&pp);
    pp.black_fraction = 1.5;
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, &pp, NULL, NULL, 1, 0, 1, out, NULL, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, NULL, NULL, 1, FR, 1, out, NULL, &err),
              -TOMO_E_INVALID);
    const int bad = FP;
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, NULL, &bad, 1, 0, 1, out, NULL, &err),
              -TOMO_E_INVALID);
    fixture_free(&fx);
}

/*
 * Zero, negative, NaN and infinite counts, a pixel just above dark, a NaN flat pixel and a NaN
 * dark pixel: every output stays finite, clipped pixels sit at ln(I0/F), and each pixel that
 * was raised to the floor is counted once.
 */
static void corrupt(fixture *fx)
{
    float *p3 = frame(fx, TOMO_FRAME_PROJECTION, 3) + 1 * FW;
    p3[5] = 0.0f;
    p3[6] = -50.0f;
    p3[7] = NAN;
    p3[8] = INFINITY;
    p3[9] = (float)(fx->dark[1 * FW + 9] + 1.0);
    frame(fx, TOMO_FRAME_FLAT, 2 * FF + 1)[2 * FW + 10] = NAN;
    frame(fx, TOMO_FRAME_DARK, 1)[3 * FW + 20] = NAN;
}

static void test_guard(void)
{
    fixture fx;
    fixture_init(&fx);
    corrupt(&fx);
    float *out = malloc((size_t)FP * FR * FW * sizeof *out);
    tomo_prep_stats st = {0};
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, NULL, NULL, FP, 0, FR, out, &st, &err), 0);

    double cap = 0.0;
    for (int j = 0; j < FR * FW; j++)
        if (log(i0_at(&fx, 130.0, j / FW, j % FW) / 2.0) > cap)
            cap = log(i0_at(&fx, 130.0, j / FW, j % FW) / 2.0);
    int finite = 1, capped = 1;
    for (size_t i = 0; i < (size_t)FP * FR * FW; i++) {
        finite &= isfinite(out[i]) != 0;
        capped &= out[i] <= cap + 1e-5;
    }
    CHECK(finite);
    CHECK(capped);

    double gt[FG];
    tomo_flat_group_times(&fx.scan, gt);
    double t3 = fx.scan.proj_time[3];
    for (int x = 5; x <= 9; x++) {
        if (x == 8)
            continue;
        CHECK_NEAR(out_at(out, FP, 1, 3, x), log(i0_at(&fx, t3, 1, x) / 2.0), 1e-5);
    }
    CHECK_NEAR(out_at(out, FP, 1, 3, 8), log(i0_at(&fx, t3, 1, 8) / 1e300), 1e-3);
    /* The NaN dark pixel clips both terms: p = ln(F/F) = 0 in every projection. */
    for (int m = 0; m < FP; m++)
        CHECK_NEAR(out_at(out, FP, 3, m, 20), 0.0, 0.0);

    /* Projections that weigh the last flat group see the NaN flat pixel. */
    long expected = 4 + FP;
    for (int m = 0; m < FP; m++) {
        int a, b;
        double w;
        tomo_flat_bracket(gt, FG, fx.scan.proj_time[m], &a, &b, &w);
        if (a == FG - 1 || (b == FG - 1 && w != 0.0)) {
            expected++;
            double num = frame(&fx, TOMO_FRAME_PROJECTION, m)[2 * FW + 10] - fx.dark[2 * FW + 10];
            CHECK_NEAR(out_at(out, FP, 2, m, 10), log(2.0 / num), 1e-5);
        }
    }
    CHECK(expected > 4 + FP);
    CHECK_INT(st.clipped_pixels, expected);
    CHECK_INT(st.black_lines, 0);
    free(out);
    fixture_free(&fx);
}

static void blacken(fixture *fx, int m, int z, int n)
{
    float *row = frame(fx, TOMO_FRAME_PROJECTION, m) + z * FW;
    for (int x = 0; x < n; x++)
        row[x] = (float)fx->dark[z * FW + x];
}

static void test_black_lines(void)
{
    fixture fx;
    fixture_init(&fx);
    blacken(&fx, 7, 2, FW / 2 + 8); /* black: more than half clipped */
    blacken(&fx, 9, 2, FW / 2);     /* exactly half: kept */
    for (int m = 0; m < FP; m++)
        blacken(&fx, m, 4, FW); /* a row with no transmission at all */
    float *out = malloc((size_t)FP * FR * FW * sizeof *out);
    tomo_prep_stats st = {0};
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, NULL, NULL, FP, 0, FR, out, &st, &err), 0);
    CHECK_INT(st.black_lines, 1 + FP);
    CHECK_INT(st.clipped_pixels, FW / 2 + 8 + FW / 2 + (long)FP * FW);

    double worst = 0.0;
    for (int x = 0; x < FW; x++) {
        double s = 0.0;
        for (int k = 0; k < FP; k++)
            if (k != 7)
                s += out_at(out, FP, 2, k, x);
        double e = fabs(out_at(out, FP, 2, 7, x) - s / (FP - 1));
        if (e > worst)
            worst = e;
    }
    CHECK_NEAR(worst, 0.0, 1e-6);
    /* The half-clipped line is not replaced: its unclipped part is the measured value. */
    CHECK_NEAR(out_at(out, FP, 2, 9, FW - 1), fx.truth[((size_t)9 * FR + 2) * FW + FW - 1], 1e-5);
    int zeros = 1;
    for (int k = 0; k < FP; k++)
        for (int x = 0; x < FW; x++)
            zeros &= out_at(out, FP, 4, k, x) == 0.0f;
    CHECK(zeros);
    /* Other rows are untouched. */
    CHECK_NEAR(out_at(out, FP, 3, 7, 5), fx.truth[((size_t)7 * FR + 3) * FW + 5], 1e-5);
    free(out);
    fixture_free(&fx);
}

static void test_threads_bit_identical(void)
{
    fixture fx;
    fixture_init(&fx);
    corrupt(&fx);
    blacken(&fx, 7, 2, FW - 3);
    blacken(&fx, 12, 2, FW);
    size_t n = (size_t)FP * FR * FW;
    float *o1 = malloc(n * sizeof *o1), *o4 = malloc(n * sizeof *o4);
    float *o0 = malloc(n * sizeof *o0);
    tomo_pool *p1 = tomo_pool_create(1), *p4 = tomo_pool_create(4);
    tomo_prep_stats s1 = {0}, s4 = {0};
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, p1, NULL, FP, 0, FR, o1, &s1, &err), 0);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, p4, NULL, FP, 0, FR, o4, &s4, &err), 0);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, NULL, NULL, FP, 0, FR, o0, NULL, &err), 0);
    CHECK(memcmp(o1, o4, n * sizeof *o1) == 0);
    CHECK(memcmp(o1, o0, n * sizeof *o1) == 0);
    CHECK_INT(s1.clipped_pixels, s4.clipped_pixels);
    CHECK_INT(s1.black_lines, 2);
    CHECK_INT(s4.black_lines, 2);
    /* Stats accumulate over calls. */
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, p4, NULL, FP, 0, FR, o4, &s4, &err), 0);
    CHECK_INT(s4.black_lines, 4);
    tomo_pool_destroy(p1);
    tomo_pool_destroy(p4);
    free(o0);
    free(o1);
    free(o4);
    fixture_free(&fx);
}

static void test_reader_error(void)
{
    fixture fx;
    fixture_init(&fx);
    float *out = malloc((size_t)FP * FR * FW * sizeof *out);
    tomo_pool *p4 = tomo_pool_create(4);
    const struct {
        tomo_frame_kind kind;
        int index;
        const char *name;
    } cases[] = {
        {TOMO_FRAME_PROJECTION, 11, "scan/q0012.img: truncated"},
        {TOMO_FRAME_FLAT, 5, "scan/q0006.img: truncated"},
        {TOMO_FRAME_DARK, 2, "scan/q0003.img: truncated"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int pooled = 0; pooled < 2; pooled++) {
            fx.mr.fail_kind = (int)cases[i].kind;
            fx.mr.fail_index = cases[i].index;
            tomo_error err;
            tomo_error_clear(&err);
            int rc = tomo_prep_rows(&fx.scan, NULL, pooled ? p4 : NULL, NULL, FP, 0, FR, out, NULL,
                                    &err);
            CHECK_INT(rc, -TOMO_E_FORMAT);
            CHECK_INT(err.code, TOMO_E_FORMAT);
            CHECK_CONTAINS(err.message, cases[i].name);
        }
    tomo_pool_destroy(p4);
    free(out);
    fixture_free(&fx);
}

static void test_no_flats(void)
{
    fixture fx;
    fixture_init(&fx);
    fx.scan.n_flat = 0;
    fx.scan.n_flat_groups = 0;
    float out[FW];
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_prep_rows(&fx.scan, NULL, NULL, NULL, 1, 0, 1, out, NULL, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "/data/mem-scan");
    fixture_free(&fx);
}

TOMO_TEST_MAIN(test_defaults, test_flat_bracket, test_group_times, test_known_absorbance,
               test_bad_arguments, test_guard, test_black_lines, test_threads_bit_identical,
               test_reader_error, test_no_flats)
