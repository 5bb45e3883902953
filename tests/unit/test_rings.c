/*
 * tests/unit/test_rings.c - stripe removal: boundary rule and medians against brute force,
 * stable ties, thread independence, stripes removed and features kept, the dead/large chain,
 * detection, options and robustness.
 */
#include "check.h"

#include <float.h>
#include <stdint.h>

#include "../../common/pool.h"
#include "../../recon/rings.h"

/* Deterministic uniform numbers in [0, 1). */
static double rnd(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) * (1.0 / 9007199254740992.0);
}

static void *scratch_for(const tomo_rings_params *p, int M, int N)
{
    size_t n = (tomo_rings_scratch_size(p, M, N) + 63) & ~(size_t)63;
    return aligned_alloc(64, n ? n : 64);
}

/* tomo_rings_remove with its own scratch; returns its result code. */
static int remove_serial(const tomo_rings_params *p, float *sino, int M, int N)
{
    void *scratch = scratch_for(p, M, N);
    tomo_error err;
    tomo_error_clear(&err);
    int rc = tomo_rings_remove(p, sino, M, N, scratch, &err);
    if (rc < 0)
        fprintf(stderr, "    tomo_rings_remove: %s\n", err.message);
    free(scratch);
    return rc;
}

static int remove_threads(const tomo_rings_params *p, float *sino, int M, int N, int threads)
{
    tomo_pool *pool = tomo_pool_create(threads);
    tomo_error err;
    tomo_error_clear(&err);
    int rc = tomo_rings_remove_pool(p, sino, M, N, pool, &err);
    tomo_pool_destroy(pool);
    return rc;
}

static tomo_rings_params sort_params(int size, int dim)
{
    tomo_rings_params p;
    tomo_rings_params_default(&p);
    p.method = TOMO_RINGS_SORT;
    p.size = size;
    p.dim = dim;
    return p;
}

/* ---- brute-force references, straight from the definitions ---- */

/* Half-sample symmetric reflection, by repeated mirroring one step at a time. */
static int reflect_slow(long i, int n)
{
    while (i < 0 || i >= n) {
        if (i < 0)
            i = -i - 1;
        if (i >= n)
            i = 2L * n - 1 - i;
    }
    return (int)i;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Rank size/2 of the window [j - size/2, j - size/2 + size) of a row, reflected. */
static float median_slow(const float *row, int n, int j, int size, float *buf)
{
    for (int o = 0; o < size; o++)
        buf[o] = row[reflect_slow((long)j - size / 2 + o, n)];
    qsort(buf, (size_t)size, sizeof *buf, cmp_float);
    return buf[size / 2];
}

/* The same over a size x size window of an M x N image. */
static float median2_slow(const float *img, int M, int N, int r, int j, int size, float *buf)
{
    int k = 0;
    for (int a = 0; a < size; a++)
        for (int b = 0; b < size; b++)
            buf[k++] = img[(size_t)reflect_slow((long)r - size / 2 + a, M) * N +
                           reflect_slow((long)j - size / 2 + b, N)];
    qsort(buf, (size_t)k, sizeof *buf, cmp_float);
    return buf[k / 2];
}

/* Algorithm 3 by the book: stable insertion sort of every column, median, put back. */
static void sort_filter_slow(float *sino, int M, int N, int size, int dim)
{
    float *sorted = malloc((size_t)M * N * sizeof *sorted);
    int *rows = malloc((size_t)M * N * sizeof *rows);
    float *buf = malloc((size_t)size * size * sizeof *buf);
    for (int j = 0; j < N; j++) {
        for (int r = 0; r < M; r++) {
            /* insertion keeps equal values in row order: stable */
            float v = sino[(size_t)r * N + j];
            int k = r;
            while (k > 0 && sorted[(size_t)(k - 1) * N + j] > v) {
                sorted[(size_t)k * N + j] = sorted[(size_t)(k - 1) * N + j];
                rows[(size_t)k * N + j] = rows[(size_t)(k - 1) * N + j];
                k--;
            }
            sorted[(size_t)k * N + j] = v;
            rows[(size_t)k * N + j] = r;
        }
    }
    for (int r = 0; r < M; r++)
        for (int j = 0; j < N; j++) {
            float m = dim == 1 ? median_slow(sorted + (size_t)r * N, N, j, size, buf)
                               : median2_slow(sorted, M, N, r, j, size, buf);
            sino[(size_t)rows[(size_t)r * N + j] * N + j] = m;
        }
    free(sorted);
    free(rows);
    free(buf);
}

static int same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof *a) == 0;
}

/* ---- tests ---- */

/* One projection: sorting is the identity, so the output is the reflected median of the row. */
static void test_reflect_median_1d(void)
{
    uint64_t seed = 11;
    float row[64], out[64], buf[64];
    for (int n = 1; n <= 40; n += (n < 8 ? 1 : 7)) {
        for (int size = 1; size <= 25; size++) {
            for (int j = 0; j < n; j++)
                row[j] = (float)(rnd(&seed) * 10.0 - 3.0);
            memcpy(out, row, sizeof row);
            tomo_rings_params p = sort_params(size, 1);
            CHECK(remove_serial(&p, out, 1, n) == 0);
            int bad = 0;
            for (int j = 0; j < n; j++)
                bad += out[j] != median_slow(row, n, j, size, buf);
            if (bad)
                fprintf(stderr, "    width %d, size %d: %d medians differ\n", n, size, bad);
            CHECK(bad == 0);
        }
    }
    /* the boundary rule itself: d c b a | a b c d | d c b a */
    CHECK_INT(reflect_slow(-1, 4), 0);
    CHECK_INT(reflect_slow(-4, 4), 3);
    CHECK_INT(reflect_slow(-5, 4), 3);
    CHECK_INT(reflect_slow(4, 4), 3);
    CHECK_INT(reflect_slow(8, 4), 0);
    /* a window of 3 at the first sample sees (a, a, b): the median of 5, 1, 9 is 5 there */
    float three[3] = {5, 1, 9};
    tomo_rings_params p = sort_params(3, 1);
    CHECK(remove_serial(&p, three, 1, 3) == 0);
    CHECK(three[0] == 5 && three[1] == 5 && three[2] == 9);
}

/* Columns already sorted: the output is the reflected size x size median of the image. */
static void test_reflect_median_2d(void)
{
    uint64_t seed = 12;
    int M = 23, N = 37;
    float *img = malloc((size_t)M * N * sizeof *img), *out = malloc((size_t)M * N * sizeof *out);
    float buf[26 * 26];
    for (int j = 0; j < N; j++) {
        float v = (float)rnd(&seed);
        for (int r = 0; r < M; r++) {
            v += (float)(rnd(&seed) * 0.3);
            img[(size_t)r * N + j] = v;
        }
    }
    for (int size = 1; size <= 26; size += (size < 6 ? 1 : 5)) {
        memcpy(out, img, (size_t)M * N * sizeof *out);
        tomo_rings_params p = sort_params(size, 2);
        CHECK(remove_serial(&p, out, M, N) == 0);
        int bad = 0;
        for (int r = 0; r < M; r++)
            for (int j = 0; j < N; j++)
                bad += out[(size_t)r * N + j] != median2_slow(img, M, N, r, j, size, buf);
        if (bad)
            fprintf(stderr, "    size %d: %d medians differ\n", size, bad);
        CHECK(bad == 0);
    }
    free(img);
    free(out);
}

/* Integer-valued data with many ties: equal to the stable reference, bit for bit. */
static void test_matches_stable_reference(void)
{
    uint64_t seed = 13;
    static const int shapes[][2] = {{1, 1}, {2, 3}, {31, 7}, {60, 33}, {45, 100}, {120, 150}};
    static const int sizes[] = {1, 2, 5, 8, 21, 51};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1];
        float *in = malloc((size_t)M * N * sizeof *in), *a = malloc((size_t)M * N * sizeof *a),
              *b = malloc((size_t)M * N * sizeof *b);
        for (int i = 0; i < M * N; i++)
            in[i] = (float)(int)(rnd(&seed) * 6.0);
        for (int r = 0; r < M; r++)
            in[(size_t)r * N + N / 2] += 2.5f; /* a stripe */
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
            for (int dim = 1; dim <= 2; dim++) {
                if (dim == 2 && sizes[k] > 21)
                    continue;
                tomo_rings_params p = sort_params(sizes[k], dim);
                memcpy(a, in, (size_t)M * N * sizeof *a);
                memcpy(b, in, (size_t)M * N * sizeof *b);
                CHECK(remove_serial(&p, a, M, N) == 0);
                sort_filter_slow(b, M, N, sizes[k], dim);
                if (!same_bits(a, b, (size_t)M * N))
                    fprintf(stderr, "    %d x %d, size %d, dim %d differs\n", M, N, sizes[k], dim);
                CHECK(same_bits(a, b, (size_t)M * N));
            }
        free(in);
        free(a);
        free(b);
    }
}

/* A column of equal values with a stripe: the same bits on every run and thread count. */
static void test_deterministic_across_threads(void)
{
    uint64_t seed = 14;
    int M = 300, N = 211;
    size_t n = (size_t)M * N;
    float *in = malloc(n * sizeof *in), *ref = malloc(n * sizeof *ref),
          *out = malloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++)
        in[i] = (float)(int)(rnd(&seed) * 4.0) * 0.25f;
    for (int r = 0; r < M; r++) {
        in[(size_t)r * N + 17] = 1.0f; /* all equal */
        in[(size_t)r * N + 18] = 1.0f + (r % 2 ? 0.5f : 0.0f);
        in[(size_t)r * N + 100] += 0.75f; /* an offset stripe */
        in[(size_t)r * N + 160] = 0.5f;   /* a dead column */
    }
    static const tomo_rings_method methods[] = {TOMO_RINGS_SORT, TOMO_RINGS_ALL, TOMO_RINGS_LARGE,
                                                TOMO_RINGS_DEAD};
    for (size_t k = 0; k < 4; k++)
        for (int dim = 1; dim <= 2; dim++) {
            tomo_rings_params p;
            tomo_rings_params_default(&p);
            p.method = methods[k];
            p.dim = dim;
            p.size = 9;
            memcpy(ref, in, n * sizeof *ref);
            CHECK(remove_serial(&p, ref, M, N) == 0);
            memcpy(out, in, n * sizeof *out);
            CHECK(remove_serial(&p, out, M, N) == 0);
            CHECK(same_bits(ref, out, n));
            for (int threads = 1; threads <= 5; threads++) {
                memcpy(out, in, n * sizeof *out);
                CHECK(remove_threads(&p, out, M, N, threads) == 0);
                if (!same_bits(ref, out, n))
                    fprintf(stderr, "    method %s dim %d: %d threads differ\n",
                            tomo_rings_method_name(p.method), dim, threads);
                CHECK(same_bits(ref, out, n));
            }
        }
    free(in);
    free(ref);
    free(out);
}

/*
 * A smooth sinogram: the sinusoids of three Gaussian blobs (projections of 2-D Gaussians) plus
 * mild noise. Smooth on purpose: sorting-based removal assumes that neighbouring columns see
 * similar distributions of values, which a hard edge in the sinogram breaks (docs/rings.md).
 */
static void make_sinogram(float *sino, int M, int N, uint64_t *seed)
{
    static const double blobs[][4] = {
        {0.0, 0.0, 0.35, 0.6}, {0.2, 0.1, 0.25, 0.4}, {-0.25, 0.05, 0.2, 0.5}};
    for (int m = 0; m < M; m++) {
        double th = M_PI * m / M;
        for (int j = 0; j < N; j++) {
            double u = (j + 0.5) / N * 2.0 - 1.0, v = 0;
            for (int d = 0; d < 3; d++) {
                double c = blobs[d][0] * cos(th) + blobs[d][1] * sin(th);
                double t = (u - c) / blobs[d][2];
                v += blobs[d][3] * exp(-0.5 * t * t);
            }
            sino[(size_t)m * N + j] = (float)(v + 0.002 * (rnd(seed) - 0.5));
        }
    }
}

static double column_mean_error(const float *a, const float *clean, int M, int N, int j)
{
    double s = 0;
    for (int r = 0; r < M; r++)
        s += a[(size_t)r * N + j] - clean[(size_t)r * N + j];
    return fabs(s / M);
}

static double max_error_away_from(const float *a, const float *clean, int M, int N, int j0, int j1)
{
    double worst = 0;
    for (int r = 0; r < M; r++)
        for (int j = 0; j < N; j++)
            if (j < j0 || j > j1) {
                double d = fabs(a[(size_t)r * N + j] - clean[(size_t)r * N + j]);
                worst = d > worst ? d : worst;
            }
    return worst;
}

/*
 * A constant offset in one column goes; the smooth object stays. Both dims. What is left in
 * the stripe column is about the change of the sorted values from one column to the next
 * (the median takes a neighbour's value), hence a wide detector and smooth features.
 */
static void test_offset_stripe_removed(void)
{
    uint64_t seed = 15;
    int M = 360, N = 512, col = 280;
    size_t n = (size_t)M * N;
    float *clean = malloc(n * sizeof *clean), *sino = malloc(n * sizeof *sino);
    make_sinogram(clean, M, N, &seed);
    for (int dim = 1; dim <= 2; dim++) {
        memcpy(sino, clean, n * sizeof *sino);
        for (int r = 0; r < M; r++)
            sino[(size_t)r * N + col] += 0.1f;
        double before = column_mean_error(sino, clean, M, N, col);
        tomo_rings_params p = sort_params(dim == 1 ? 11 : 5, dim);
        CHECK(remove_serial(&p, sino, M, N) == 0);
        double after = column_mean_error(sino, clean, M, N, col);
        double elsewhere = max_error_away_from(sino, clean, M, N, col - 8, col + 8);
        /* the object's largest absorbance is about 1.5: keep it to a fraction of a percent */
        fprintf(stderr,
                "    dim %d: stripe column mean error %.5f -> %.6f (%.0fx); largest change "
                "away from it %.5f\n",
                dim, before, after, before / after, elsewhere);
        CHECK(after * 10 < before);
        CHECK(elsewhere < 0.01);
    }
    free(clean);
    free(sino);
}

/* The chain: a dead column and a wide gain stripe on a smooth noisy sinogram. */
static void test_chain_dead_and_large(void)
{
    uint64_t seed = 16;
    int M = 400, N = 512;
    size_t n = (size_t)M * N;
    float *clean = malloc(n * sizeof *clean), *sino = malloc(n * sizeof *sino),
          *work = malloc(n * sizeof *work);
    make_sinogram(clean, M, N, &seed);
    /* a background (a container, say) so that the large-stripe ratio is well defined */
    for (size_t i = 0; i < n; i++)
        clean[i] += 0.5f + 0.02f * (float)(rnd(&seed) - 0.5);
    memcpy(sino, clean, n * sizeof *sino);
    int dead = 150, l0 = 470, l1 = 475; /* dead column and large stripe [l0, l1] */
    for (int r = 0; r < M; r++) {
        sino[(size_t)r * N + dead] = 0.7f;
        for (int j = l0; j <= l1; j++)
            sino[(size_t)r * N + j] *= 1.15f;
    }
    tomo_rings_params p;
    tomo_rings_params_default(&p);
    p.la_size = 31;

    /* algorithm 6 alone interpolates the dead column and leaves the rest alone */
    memcpy(work, sino, n * sizeof *work);
    p.method = TOMO_RINGS_DEAD;
    CHECK(remove_serial(&p, work, M, N) == 0);
    double dead_before = column_mean_error(sino, clean, M, N, dead);
    double dead_after = column_mean_error(work, clean, M, N, dead);
    fprintf(stderr, "    dead column: mean error %.4f -> %.4f\n", dead_before, dead_after);
    CHECK(dead_after * 10 < dead_before);
    int changed_far = 0;
    for (int r = 0; r < M; r++)
        for (int j = 0; j < N; j++)
            if (abs(j - dead) > 2 && work[(size_t)r * N + j] != sino[(size_t)r * N + j])
                changed_far++;
    CHECK_INT(changed_far, 0);

    /* algorithm 5 alone corrects the gain stripe */
    memcpy(work, sino, n * sizeof *work);
    p.method = TOMO_RINGS_LARGE;
    CHECK(remove_serial(&p, work, M, N) == 0);
    for (int j = l0; j <= l1; j += l1 - l0) {
        double b = column_mean_error(sino, clean, M, N, j),
               a = column_mean_error(work, clean, M, N, j);
        fprintf(stderr, "    large stripe column %d: mean error %.4f -> %.4f\n", j, b, a);
        CHECK(a * 5 < b);
    }

    /* the chain does both and keeps the object */
    memcpy(work, sino, n * sizeof *work);
    p.method = TOMO_RINGS_ALL;
    CHECK(remove_serial(&p, work, M, N) == 0);
    double worst = 0;
    for (int j = 0; j < N; j++) {
        double e = column_mean_error(work, clean, M, N, j);
        worst = e > worst ? e : worst;
    }
    double stripes = column_mean_error(sino, clean, M, N, l0);
    double away = max_error_away_from(work, clean, M, N, l0 - 3, l1 + 3);
    fprintf(stderr,
            "    chain: largest column mean error %.4f (stripes were %.4f, %.4f); largest "
            "change of a value away from the large stripe %.4f (noise 0.02 peak to peak)\n",
            worst, dead_before, stripes, away);
    CHECK(worst * 4 < stripes);
    CHECK(away < 0.05);
    free(clean);
    free(sino);
    free(work);
}

/* Algorithm 4 on made-up statistics. */
static void test_detect_stripes(void)
{
    enum { n = 200 };
    double list[n];
    unsigned char mask[n];
    uint64_t seed = 17;
    for (int i = 0; i < n; i++)
        list[i] = 1.0 + 0.01 * (rnd(&seed) - 0.5);
    list[50] = 1.2;
    list[120] = 0.8;
    CHECK_INT(tomo_rings_detect_stripes(list, n, 3.0, mask), 2);
    CHECK(mask[50] && mask[120] && !mask[51]);
    /* a higher ratio needs stronger stripes */
    list[50] = 1.0 + 0.01 * 3;
    CHECK(!tomo_rings_detect_stripes(list, n, 1000.0, mask) || !mask[50]);
    /* noise-free: no error, no stripes */
    for (int i = 0; i < n; i++)
        list[i] = 1.0;
    list[10] = 5.0;
    CHECK_INT(tomo_rings_detect_stripes(list, n, 3.0, mask), 0);
    CHECK(!mask[10]);
    /* too short to fit a line */
    CHECK_INT(tomo_rings_detect_stripes(list, 2, 3.0, mask), 0);
    CHECK_INT(tomo_rings_detect_stripes(list, 0, 3.0, mask), 0);
}

static void test_options(void)
{
    tomo_rings_params p;
    tomo_rings_params_default(&p);
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(p.method, TOMO_RINGS_NONE);
    CHECK_INT(p.size, 0);
    CHECK_INT(p.dim, 1);
    CHECK_INT(p.la_size, 51);
    CHECK_INT(p.sm_size, 21);
    CHECK_NEAR(p.snr, 3.0, 0);
    CHECK_NEAR(p.drop_ratio, 0.1, 0);
    CHECK_INT(tomo_rings_parse_option(&p, "filter", "chesler", &err), 1);
    CHECK_INT(tomo_rings_parse_option(&p, "rings", "sort", &err), 0);
    CHECK_INT(p.method, TOMO_RINGS_SORT);
    CHECK_INT(tomo_rings_parse_option(&p, "rings", "all", &err), 0);
    CHECK_INT(p.method, TOMO_RINGS_ALL);
    CHECK_INT(tomo_rings_parse_option(&p, "rings", "none", &err), 0);
    CHECK_INT(p.method, TOMO_RINGS_NONE);
    CHECK(tomo_rings_parse_option(&p, "rings", "fourier", &err) < 0);
    CHECK_CONTAINS(err.message, "rings=fourier");
    CHECK_INT(p.method, TOMO_RINGS_NONE);
    tomo_error_clear(&err);
    CHECK_INT(tomo_rings_parse_option(&p, "ring_size", "31", &err), 0);
    CHECK_INT(p.size, 31);
    CHECK_INT(tomo_rings_parse_option(&p, "ring_size", "auto", &err), 0);
    CHECK_INT(p.size, 0);
    CHECK(tomo_rings_parse_option(&p, "ring_size", "-3", &err) < 0);
    tomo_error_clear(&err);
    CHECK(tomo_rings_parse_option(&p, "ring_size", "21x", &err) < 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_rings_parse_option(&p, "ring_dim", "2", &err), 0);
    CHECK_INT(p.dim, 2);
    CHECK(tomo_rings_parse_option(&p, "ring_dim", "3", &err) < 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_rings_parse_option(&p, "ring_snr", "2.5", &err), 0);
    CHECK_NEAR(p.snr, 2.5, 0);
    CHECK(tomo_rings_parse_option(&p, "ring_snr", "0", &err) < 0);
    tomo_error_clear(&err);
    CHECK(tomo_rings_parse_option(&p, "ring_snr", "nan", &err) < 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_rings_parse_option(&p, "ring_la_size", "61", &err), 0);
    CHECK_INT(p.la_size, 61);
    CHECK(tomo_rings_parse_option(&p, "ring_la_size", "0", &err) < 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_rings_parse_option(&p, "ring_sm_size", "17", &err), 0);
    CHECK_INT(p.sm_size, 17);
    CHECK_INT(tomo_rings_parse_option(&p, "ring_drop_ratio", "0.2", &err), 0);
    CHECK_NEAR(p.drop_ratio, 0.2, 0);
    CHECK(tomo_rings_parse_option(&p, "ring_drop_ratio", "0.9", &err) < 0);
    tomo_error_clear(&err);
    CHECK(tomo_rings_parse_option(&p, "ring_size", NULL, &err) < 0);
    tomo_error_clear(&err);

    /* the automatic width: 5 for small detectors, odd, 21 above 2000 columns */
    CHECK_INT(tomo_rings_auto_size(26), 5);
    CHECK_INT(tomo_rings_auto_size(640), 7);
    CHECK_INT(tomo_rings_auto_size(699), 7);
    CHECK_INT(tomo_rings_auto_size(1000), 11);
    CHECK_INT(tomo_rings_auto_size(1999), 19);
    CHECK_INT(tomo_rings_auto_size(2000), 21);
    CHECK_INT(tomo_rings_auto_size(4432), 21);
    for (int w = 1; w < 3000; w++)
        CHECK(tomo_rings_auto_size(w) % 2 == 1);

    /* validation */
    tomo_rings_params_default(&p);
    CHECK_INT(tomo_rings_validate(&p, &err), 0);
    p.method = TOMO_RINGS_SORT;
    p.dim = 2;
    p.size = 150;
    CHECK(tomo_rings_validate(&p, &err) < 0);
    tomo_error_clear(&err);
    p.method = (tomo_rings_method)9;
    CHECK(tomo_rings_validate(&p, &err) < 0);

    /* text: only the keys that matter, sizes resolved */
    char buf[256];
    tomo_rings_params_default(&p);
    tomo_rings_params_text(&p, 4432, buf, sizeof buf);
    CHECK(strcmp(buf, "") == 0);
    p.method = TOMO_RINGS_SORT;
    tomo_rings_params_text(&p, 4432, buf, sizeof buf);
    CHECK(strcmp(buf, "rings=sort ring_size=21 ring_dim=1") == 0);
    tomo_rings_params_text(&p, 0, buf, sizeof buf);
    CHECK(strcmp(buf, "rings=sort ring_size=auto ring_dim=1") == 0);
    p.method = TOMO_RINGS_ALL;
    tomo_rings_params_text(&p, 640, buf, sizeof buf);
    CHECK(strcmp(buf, "rings=all ring_snr=3.000000 ring_la_size=51 ring_sm_size=21 "
                      "ring_drop_ratio=0.100000 ring_dim=1") == 0);
    CHECK(strcmp(tomo_rings_method_name(TOMO_RINGS_LARGE), "large") == 0);
    CHECK(tomo_rings_method_name((tomo_rings_method)7) == NULL);
    CHECK_INT(tomo_rings_parse_method("dead"), TOMO_RINGS_DEAD);
    CHECK_INT(tomo_rings_parse_method("bogus"), -1);
    p.method = TOMO_RINGS_NONE;
    CHECK_INT(tomo_rings_scratch_size(&p, 100, 100), 0);
}

/* Finite in, finite out, for every method; non-finite input refused and left alone. */
static void test_robustness(void)
{
    uint64_t seed = 18;
    int M = 64, N = 80;
    size_t n = (size_t)M * N;
    float *in = malloc(n * sizeof *in), *work = malloc(n * sizeof *work);
    static const float extremes[] = {FLT_MAX, -FLT_MAX, FLT_MIN, -FLT_MIN, 1e-45f,
                                     0.0f,    -0.0f,    1e30f,   -1e30f};
    for (size_t i = 0; i < n; i++) {
        double u = rnd(&seed);
        in[i] = u < 0.3 ? extremes[(int)(rnd(&seed) * 9)] : (float)(u - 0.5);
    }
    for (int r = 0; r < M; r++) {
        in[(size_t)r * N + 5] = 0.0f;    /* zero column: a zero ratio */
        in[(size_t)r * N + 40] = 1e-30f; /* tiny column next to large ones */
    }
    static const tomo_rings_method methods[] = {TOMO_RINGS_SORT, TOMO_RINGS_ALL, TOMO_RINGS_LARGE,
                                                TOMO_RINGS_DEAD};
    for (size_t k = 0; k < 4; k++) {
        tomo_rings_params p;
        tomo_rings_params_default(&p);
        p.method = methods[k];
        memcpy(work, in, n * sizeof *work);
        CHECK(remove_serial(&p, work, M, N) == 0);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += !isfinite(work[i]);
        CHECK(bad == 0);
    }
    /* all zero, all equal: nothing to do, nothing breaks */
    for (size_t i = 0; i < n; i++)
        work[i] = 0.25f;
    tomo_rings_params p;
    tomo_rings_params_default(&p);
    p.method = TOMO_RINGS_ALL;
    CHECK(remove_serial(&p, work, M, N) == 0);
    int changed = 0;
    for (size_t i = 0; i < n; i++)
        changed += work[i] != 0.25f;
    CHECK_INT(changed, 0);
    /* NaN and infinity are refused with a message naming the place */
    memcpy(work, in, n * sizeof *work);
    work[3 * N + 7] = NAN;
    memcpy(in, work, n * sizeof *in);
    void *scratch = scratch_for(&p, M, N);
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_rings_remove(&p, work, M, N, scratch, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "projection 3, column 7");
    CHECK(same_bits(in, work, n)); /* untouched */
    work[3 * N + 7] = INFINITY;
    tomo_error_clear(&err);
    CHECK_INT(remove_threads(&p, work, M, N, 3), -TOMO_E_INVALID);
    free(scratch);
    /* bad parameters */
    p.dim = 3;
    tomo_error_clear(&err);
    CHECK_INT(tomo_rings_remove(&p, work, M, N, NULL, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "ring_dim");
    free(in);
    free(work);
}

/* Scratch stays small: it grows with the window, not with the detector. */
static void test_scratch_size(void)
{
    tomo_rings_params p = sort_params(0, 1);
    size_t small = tomo_rings_scratch_size(&p, 3600, 4432);
    size_t wide = tomo_rings_scratch_size(&p, 3600, 8864);
    fprintf(stderr, "    scratch for 3600 x 4432, sort: %.1f MB\n", small / 1048576.0);
    CHECK(small < (size_t)16 << 20);
    CHECK(wide < small + ((size_t)1 << 20)); /* per-column lists only */
    p.method = TOMO_RINGS_ALL;
    CHECK(tomo_rings_scratch_size(&p, 3600, 4432) < (size_t)16 << 20);
}

TOMO_TEST_MAIN(test_reflect_median_1d, test_reflect_median_2d, test_matches_stable_reference,
               test_deterministic_across_threads, test_offset_stripe_removed,
               test_chain_dead_and_large, test_detect_stripes, test_options, test_robustness,
               test_scratch_size)
