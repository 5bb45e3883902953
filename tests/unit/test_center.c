#include "check.h"

#include "../../common/pool.h"
#include "../../recon/center.h"

/* ---- registration of two views ---- */

/* An asymmetric profile around the axis; `row` varies it a little. */
static double profile(double v, int row)
{
    return 1.0 * exp(-(v - 25.0) * (v - 25.0) / (2.0 * 36.0)) +
           0.6 * exp(-(v + 12.0) * (v + 12.0) / (2.0 * 9.0)) +
           0.3 * exp(-(v - 3.0 - 4.0 * row) * (v - 3.0 - 4.0 * row) / (2.0 * 16.0));
}

static unsigned long long rng_state;

static double uniform01(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}

static double gaussian(void)
{
    return sqrt(-2.0 * log(uniform01())) * cos(2.0 * M_PI * uniform01());
}

#define VW    256
#define VROWS 4

static double register_views(double c, double noise, double *score)
{
    static float a0[VROWS * VW], a180[VROWS * VW];
    for (int r = 0; r < VROWS; r++)
        for (int u = 0; u < VW; u++) {
            /* p(theta + 180, u) = p(theta, 2c - u) */
            a0[r * VW + u] = (float)(profile(u - c, r) + noise * gaussian());
            a180[r * VW + u] = (float)(profile(c - u, r) + noise * gaussian());
        }
    return tomo_center_from_views(a0, a180, VW, VROWS, score);
}

static void test_from_views_clean(void)
{
    const double centres[] = {128.0, 127.5, 100.3, 155.8, 90.5, 141.0, 113.7};
    for (size_t i = 0; i < sizeof centres / sizeof centres[0]; i++) {
        double score = -1.0;
        double c = register_views(centres[i], 0.0, &score);
        CHECK_NEAR(c, centres[i], 0.05);
        CHECK(score >= 0.0 && score < 0.05);
    }
}

static void test_from_views_noisy(void)
{
    rng_state = 12345;
    const double centres[] = {128.0, 127.5, 100.3, 155.8, 90.5};
    for (size_t i = 0; i < sizeof centres / sizeof centres[0]; i++) {
        double c = register_views(centres[i], 0.03, NULL);
        CHECK_NEAR(c, centres[i], 0.3);
    }
}

/*
 * A small sample beside an off-centre axis: some shifts push it out of the overlap of both
 * views, so that they compare empty columns only. Those must not beat the true shift.
 */
static void test_from_views_small_sample(void)
{
    const double centres[] = {90.2, 90.3, 88.6, 164.8, 166.1};
    rng_state = 99;
    for (size_t i = 0; i < sizeof centres / sizeof centres[0]; i++) {
        CHECK_NEAR(register_views(centres[i], 0.0, NULL), centres[i], 0.05);
        CHECK_NEAR(register_views(centres[i], 0.03, NULL), centres[i], 0.3);
    }
}

static void test_from_views_degenerate(void)
{
    float flat[2 * 16] = {0};
    double score = 0.0;
    double c = tomo_center_from_views(flat, flat, 16, 2, &score);
    CHECK(isfinite(c));
    CHECK(c >= 0.0 && c <= 15.0);
    CHECK(isfinite(score));
}

/* ---- a synthetic scan of Gaussian blobs ---- */

typedef struct blob {
    double x, y, sigma, peak;
} blob;

typedef struct blob_scan {
    tomo_scan scan;
    double axis;
    int empty; /* every row without sample */
} blob_scan;

#define BW      128
#define BR      10
#define B_DARK  100.0
#define B_FLAT  4000.0
#define N_BLOBS 3

static const blob blobs[N_BLOBS] = {
    {18.0, -10.0, 3.0, 0.9},
    {-25.0, 8.0, 4.5, 0.6},
    {5.0, 22.0, 2.5, 1.2},
};

/*
 * Parallel-beam line integral through the blobs of row z. A 2-D Gaussian of peak A and width
 * s projects to a 1-D Gaussian of peak A s sqrt(2 pi) at X cos + Y sin from the axis; `peak`
 * is that projected peak. Row 4 is empty, the others scale the blobs differently.
 */
static double blob_absorbance(const blob_scan *bs, double theta_deg, int z, double u)
{
    if (bs->empty || z == 4)
        return 0.0;
    double th = theta_deg * M_PI / 180.0, p = 0.0;
    for (int b = 0; b < N_BLOBS; b++) {
        double scale = 0.5 + 0.1 * ((z + 2 * b) % 5);
        double pos = bs->axis + blobs[b].x * cos(th) + blobs[b].y * sin(th);
        double v = u - pos;
        p += scale * blobs[b].peak * exp(-v * v / (2.0 * blobs[b].sigma * blobs[b].sigma));
    }
    return p;
}

static int blob_read_rows(void *reader, tomo_frame_kind kind, int index, int z0, int nz, float *dst,
                          tomo_error *err)
{
    const blob_scan *bs = reader;
    if (z0 < 0 || nz < 1 || z0 + nz > BR)
        return tomo_error_set(err, TOMO_E_INTERNAL, "bad rows %d+%d", z0, nz);
    for (int z = 0; z < nz; z++)
        for (int x = 0; x < BW; x++) {
            double v = B_DARK;
            if (kind == TOMO_FRAME_FLAT)
                v += B_FLAT;
            else if (kind == TOMO_FRAME_PROJECTION)
                v += B_FLAT * exp(-blob_absorbance(bs, bs->scan.proj_angle_deg[index], z0 + z, x));
            dst[z * BW + x] = (float)v;
        }
    return 0;
}

static void blob_close(void *reader)
{
    (void)reader;
}

static const tomo_scan_reader_ops blob_ops = {blob_read_rows, blob_close};

static void blob_scan_init(blob_scan *bs, double axis, int n_proj, double step_deg)
{
    memset(bs, 0, sizeof *bs);
    bs->axis = axis;
    tomo_scan *s = &bs->scan;
    snprintf(s->path, sizeof s->path, "/data/blob-scan-%d", n_proj);
    s->width = BW;
    s->rows = BR;
    s->n_proj = n_proj;
    s->n_flat = 2;
    s->n_dark = 1;
    s->n_flat_groups = 1;
    s->proj_angle_deg = calloc((size_t)n_proj, sizeof(double));
    s->proj_time = calloc((size_t)n_proj, sizeof(double));
    s->proj_frame = calloc((size_t)n_proj, sizeof(int));
    s->flat_time = calloc(2, sizeof(double));
    s->flat_group = calloc(2, sizeof(int));
    s->flat_frame = calloc(2, sizeof(int));
    for (int m = 0; m < n_proj; m++) {
        s->proj_angle_deg[m] = m * step_deg;
        s->proj_time[m] = m;
        s->proj_frame[m] = m + 2;
    }
    s->flat_time[0] = -2.0;
    s->flat_time[1] = -1.0;
    s->flat_frame[1] = 1;
    s->ops = &blob_ops;
    s->reader = bs;
}

static void blob_scan_free(blob_scan *bs)
{
    free(bs->scan.proj_angle_deg);
    free(bs->scan.proj_time);
    free(bs->scan.proj_frame);
    free(bs->scan.flat_time);
    free(bs->scan.flat_group);
    free(bs->scan.flat_frame);
}

static void find_case(double axis, int n_proj, double step, tomo_pool *pool)
{
    blob_scan bs;
    blob_scan_init(&bs, axis, n_proj, step);
    tomo_error err;
    tomo_error_clear(&err);
    double c = NAN;
    int rc = tomo_center_find(&bs.scan, NULL, pool, &c, &err);
    CHECK_INT(rc, 0);
    if (rc < 0)
        fprintf(stderr, "  %s\n", err.message);
    CHECK_NEAR(c, axis, 0.1);
    blob_scan_free(&bs);
}

static void test_find_interpolated(void)
{
    /* 181 views over [0, 180]: the end frame is the opposite view. */
    find_case(70.3, 181, 1.0, NULL);
    find_case(55.5, 181, 1.0, NULL);
    /* 165 views 1.1 degrees apart: 180 lies between 179.3 and 180.4. */
    tomo_pool *pool = tomo_pool_create(4);
    find_case(70.3, 165, 1.1, pool);
    find_case(64.0, 165, 1.1, pool);
    tomo_pool_destroy(pool);
}

static void test_find_extrapolated(void)
{
    /* 180 views over [0, 179]: the opposite view lies one step past the last. */
    find_case(70.3, 180, 1.0, NULL);
    find_case(58.8, 180, 1.0, NULL);
}

static void test_find_short_scan(void)
{
    blob_scan bs;
    blob_scan_init(&bs, 70.3, 91, 1.0);
    tomo_error err;
    tomo_error_clear(&err);
    double c = -1.0;
    CHECK_INT(tomo_center_find(&bs.scan, NULL, NULL, &c, &err), -TOMO_E_UNSUPPORTED);
    CHECK_INT(err.code, TOMO_E_UNSUPPORTED);
    CHECK_CONTAINS(err.message, "/data/blob-scan-91");
    CHECK_CONTAINS(err.message, "90 degrees");
    CHECK_CONTAINS(err.message, "center=");
    CHECK_NEAR(c, -1.0, 0.0);
    blob_scan_free(&bs);

    /* Three steps short is too far to extrapolate. */
    blob_scan_init(&bs, 70.3, 178, 1.0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_center_find(&bs.scan, NULL, NULL, &c, &err), -TOMO_E_UNSUPPORTED);
    blob_scan_free(&bs);
}

static void test_find_no_contrast(void)
{
    blob_scan bs;
    blob_scan_init(&bs, 70.3, 181, 1.0);
    bs.empty = 1;
    tomo_error err;
    tomo_error_clear(&err);
    double c = -1.0;
    CHECK_INT(tomo_center_find(&bs.scan, NULL, NULL, &c, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "/data/blob-scan-181");
    CHECK_CONTAINS(err.message, "contrast");
    blob_scan_free(&bs);
}

TOMO_TEST_MAIN(test_from_views_clean, test_from_views_noisy, test_from_views_small_sample,
               test_from_views_degenerate, test_find_interpolated, test_find_extrapolated,
               test_find_short_scan, test_find_no_contrast)
