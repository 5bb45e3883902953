/*
 * tests/unit/test_filter.c - ramp filters: kernels, responses, FFT length, FFT convolution.
 */
#include "check.h"

#include "../../common/pool.h"
#include "../../recon/filter.h"

#include <stdint.h>

#define PI 3.14159265358979323846

static const tomo_filter_kind all_kinds[] = {TOMO_FILTER_CHESLER, TOMO_FILTER_SHEPP_LOGAN,
                                             TOMO_FILTER_RAMLAK};

/* Deterministic uniform numbers in [0, 1). */
static double rnd(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) * (1.0 / 9007199254740992.0);
}

static void *aligned_scratch(const tomo_filter *f)
{
    size_t n = (tomo_filter_scratch_size(f) + 63) & ~(size_t)63;
    return aligned_alloc(64, n);
}

static void test_names(void)
{
    CHECK(strcmp(tomo_filter_name(TOMO_FILTER_CHESLER), "chesler") == 0);
    CHECK(strcmp(tomo_filter_name(TOMO_FILTER_SHEPP_LOGAN), "shepp-logan") == 0);
    CHECK(strcmp(tomo_filter_name(TOMO_FILTER_RAMLAK), "ram-lak") == 0);
    CHECK(tomo_filter_name((tomo_filter_kind)7) == NULL);
    CHECK_INT(tomo_filter_parse("chesler"), TOMO_FILTER_CHESLER);
    CHECK_INT(tomo_filter_parse("hann"), TOMO_FILTER_CHESLER);
    CHECK_INT(tomo_filter_parse("shepp-logan"), TOMO_FILTER_SHEPP_LOGAN);
    CHECK_INT(tomo_filter_parse("shepp"), TOMO_FILTER_SHEPP_LOGAN);
    CHECK_INT(tomo_filter_parse("Shepp_Logan"), TOMO_FILTER_SHEPP_LOGAN);
    CHECK_INT(tomo_filter_parse("ram-lak"), TOMO_FILTER_RAMLAK);
    CHECK_INT(tomo_filter_parse("ramlak"), TOMO_FILTER_RAMLAK);
    CHECK_INT(tomo_filter_parse("ramachandran"), TOMO_FILTER_RAMLAK);
    CHECK_INT(tomo_filter_parse("RAM-LAK"), TOMO_FILTER_RAMLAK);
    CHECK_INT(tomo_filter_parse("cosine"), -1);
    CHECK_INT(tomo_filter_parse(""), -1);
    CHECK_INT(tomo_filter_parse("chesler2"), -1);
    CHECK_INT(tomo_filter_parse(NULL), -1);
    for (int k = 0; k < 3; k++)
        CHECK_INT(tomo_filter_parse(tomo_filter_name(all_kinds[k])), all_kinds[k]);
}

/* The kernels are the inverse DTFT of the closed-form responses. */
static void test_kernel_matches_response(void)
{
    static const double freqs[] = {0.0, 0.03, 0.1, 0.2, 0.25, 0.3, 0.37, 0.45, 0.5};
    for (int k = 0; k < 3; k++) {
        for (size_t j = 0; j < sizeof freqs / sizeof freqs[0]; j++) {
            double f = freqs[j];
            double sum = tomo_filter_kernel(all_kinds[k], 0);
            /* Summed from the tail inwards so the small terms are not lost. */
            for (long i = 100000; i >= 1; i--)
                sum += 2.0 * tomo_filter_kernel(all_kinds[k], i) * cos(2.0 * PI * f * (double)i);
            CHECK_NEAR(sum, tomo_filter_response(all_kinds[k], f), 1e-4);
        }
        for (long i = 1; i < 100; i++)
            CHECK(tomo_filter_kernel(all_kinds[k], i) == tomo_filter_kernel(all_kinds[k], -i));
    }
    CHECK(tomo_filter_kernel(TOMO_FILTER_RAMLAK, 0) == 0.25);
    CHECK(tomo_filter_kernel(TOMO_FILTER_RAMLAK, 2) == 0.0);
    CHECK_NEAR(tomo_filter_kernel(TOMO_FILTER_RAMLAK, 3), -1.0 / (9.0 * PI * PI), 1e-17);
    CHECK_NEAR(tomo_filter_kernel(TOMO_FILTER_SHEPP_LOGAN, 0), 2.0 / (PI * PI), 1e-17);
    CHECK_NEAR(tomo_filter_response(TOMO_FILTER_RAMLAK, -0.3), 0.3, 1e-15);
    CHECK_NEAR(tomo_filter_response(TOMO_FILTER_SHEPP_LOGAN, 0.5), 1.0 / PI, 1e-15);
    CHECK_NEAR(tomo_filter_response(TOMO_FILTER_CHESLER, 0.5), 0.0, 1e-15);
    CHECK_NEAR(tomo_filter_response(TOMO_FILTER_CHESLER, 0.25), 0.125, 1e-15);
}

static void test_chesler_is_smoothed_ramlak(void)
{
    for (long i = -50; i <= 50; i++) {
        double rl = 0.25 * tomo_filter_kernel(TOMO_FILTER_RAMLAK, i - 1) +
                    0.5 * tomo_filter_kernel(TOMO_FILTER_RAMLAK, i) +
                    0.25 * tomo_filter_kernel(TOMO_FILTER_RAMLAK, i + 1);
        CHECK_NEAR(tomo_filter_kernel(TOMO_FILTER_CHESLER, i), rl, 1e-16);
    }
}

static void test_fft_length(void)
{
    enum { TOP = 10100 };
    static char smooth[TOP];
    for (int m = 1; m < TOP; m++) {
        int r = m;
        for (int p = 2; p <= 7; p++)
            while (r % p == 0)
                r /= p;
        smooth[m] = r == 1;
    }
    int bad = 0;
    for (int n = 1; n <= 5000; n++) {
        int expect = 2 * n;
        while (!smooth[expect])
            expect++;
        if (tomo_filter_fft_length(n) != expect && bad++ < 5)
            CHECK_INT(tomo_filter_fft_length(n), expect);
    }
    CHECK_INT(bad, 0);
    CHECK_INT(tomo_filter_fft_length(2048), 4096);
    CHECK_INT(tomo_filter_fft_length(2216), 4480);
    CHECK_INT(tomo_filter_fft_length(4432), 8960);
}

static void test_create_errors(void)
{
    tomo_error err;
    tomo_error_clear(&err);
    CHECK(tomo_filter_create(0, TOMO_FILTER_CHESLER, TOMO_PAD_ZERO, &err) == NULL);
    CHECK_INT(err.code, TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK(tomo_filter_create(100, TOMO_FILTER_CHESLER, TOMO_PAD_AUTO, &err) == NULL);
    CHECK_INT(err.code, TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK(tomo_filter_create(100, (tomo_filter_kind)9, TOMO_PAD_ZERO, &err) == NULL);
    CHECK_INT(err.code, TOMO_E_INVALID);
}

/*
 * The padded row as the filter sees it, indexed from -W: sample k of the result is at [k + W].
 * Pad values are formed in float, like the filter does, so only the convolution is compared.
 */
static int padded_row(const float *row, int N, int W, double *out)
{
    for (int k = 0; k < N + 2 * W; k++)
        out[k] = 0.0;
    for (int k = 0; k < N; k++)
        out[W + k] = row[k];
    for (int n = 1; n <= W; n++) {
        float w = (float)(0.5 * (1.0 + cos(PI * n / W)));
        out[W - n] = (double)(row[0] * w);
        out[W + N - 1 + n] = (double)(row[N - 1] * w);
    }
    return N + 2 * W;
}

static double max_abs(const double *y, int n)
{
    double m = 0.0;
    for (int i = 0; i < n; i++)
        m = fmax(m, fabs(y[i]));
    return m;
}

/*
 * The FFT filter against the linear convolution of the padded row with the (infinite) kernel,
 * computed directly in double: neither the zero nor the edge padding may wrap around.
 */
static void test_filter_matches_direct_convolution(void)
{
    static const int widths[] = {1, 2, 3, 7, 64, 100, 257, 1000};
    uint64_t seed = 12345;
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int N = widths[wi];
        float *row = malloc(sizeof(float) * (size_t)N);
        float *orig = malloc(sizeof(float) * (size_t)N);
        double *pad = malloc(sizeof(double) * (size_t)(2 * N + 2));
        double *lin = malloc(sizeof(double) * (size_t)N);
        /* A smooth object on a large offset (so the edges matter) plus noise. */
        for (int k = 0; k < N; k++)
            orig[k] = (float)(2.0 + sin(0.05 * k) + 0.5 * rnd(&seed));
        for (int ki = 0; ki < 3; ki++) {
            for (int pm = 0; pm < 2; pm++) {
                tomo_filter_kind kind = all_kinds[ki];
                tomo_pad_mode mode = pm ? TOMO_PAD_EDGE : TOMO_PAD_ZERO;
                tomo_error err;
                tomo_filter *f = tomo_filter_create(N, kind, mode, &err);
                CHECK(f != NULL);
                if (!f)
                    continue;
                const int W = mode == TOMO_PAD_EDGE ? N / 2 : 0;
                int P = padded_row(orig, N, W, pad);
                for (int n = 0; n < N; n++) {
                    double s = 0.0;
                    for (int j = 0; j < P; j++)
                        s += pad[j] * tomo_filter_kernel(kind, (long)n - (j - W));
                    lin[n] = s;
                }
                void *scratch = aligned_scratch(f);
                memcpy(row, orig, sizeof(float) * (size_t)N);
                tomo_filter_row(f, row, scratch);
                double scale = fmax(max_abs(lin, N), 1e-30), worst = 0.0;
                for (int n = 0; n < N; n++)
                    worst = fmax(worst, fabs(row[n] - lin[n]) / scale);
                CHECK_NEAR(worst, 0.0, 1e-5);
                if (getenv("TOMO_TEST_VERBOSE"))
                    fprintf(stderr, "N=%d %s pad=%d: relative error %.2e\n", N,
                            tomo_filter_name(kind), (int)mode, worst);
                free(scratch);
                tomo_filter_destroy(f);
            }
        }
        free(row);
        free(orig);
        free(pad);
        free(lin);
    }
}

/*
 * A constant row: the ramp removes the DC, so an infinitely long row filters to 0. Zero padding
 * ends the row in steps whose response rises towards the edges (cupping after back-projection);
 * the edge pad removes most of it near the edges and part of it in the middle.
 */
static void test_edge_pad_suppresses_cupping(void)
{
    const int N = 200;
    float zero[200], edge[200];
    for (int k = 0; k < N; k++)
        zero[k] = edge[k] = 1.0f;
    tomo_filter *fz = tomo_filter_create(N, TOMO_FILTER_RAMLAK, TOMO_PAD_ZERO, NULL);
    tomo_filter *fe = tomo_filter_create(N, TOMO_FILTER_RAMLAK, TOMO_PAD_EDGE, NULL);
    CHECK(fz && fe);
    if (!fz || !fe)
        return;
    void *scratch = aligned_scratch(fz);
    tomo_filter_row(fz, zero, scratch);
    free(scratch);
    scratch = aligned_scratch(fe);
    tomo_filter_row(fe, edge, scratch);
    free(scratch);
    /* The row centre misses the kernel tails beyond 100 samples: 2 sum_{odd i > 100} (pi i)^-2. */
    CHECK_NEAR(zero[N / 2], 1.0 / (PI * PI * 100.0), 2e-5);
    CHECK(fabsf(edge[N / 2]) < 0.8f * zero[N / 2]);
    for (int k = 2; k < 10; k++) {
        CHECK(zero[k] > zero[N / 2]);
        CHECK(fabsf(edge[k]) < 0.25f * zero[k]);
        CHECK(edge[k] == edge[N - 1 - k] || fabsf(edge[k] - edge[N - 1 - k]) < 1e-6f);
    }
    tomo_filter_destroy(fz);
    tomo_filter_destroy(fe);
}

typedef struct filter_job {
    const tomo_filter *f;
    float *rows;
    int width;
    void **scratch;
} filter_job;

static void filter_task(void *arg, int task, int slot)
{
    filter_job *job = arg;
    tomo_filter_row(job->f, job->rows + (size_t)task * job->width, job->scratch[slot]);
}

static void test_deterministic_and_thread_safe(void)
{
    const int N = 1000, rows = 96;
    float *orig = malloc(sizeof(float) * (size_t)N * rows);
    float *a = malloc(sizeof(float) * (size_t)N * rows);
    float *b = malloc(sizeof(float) * (size_t)N * rows);
    float *c = malloc(sizeof(float) * (size_t)N * rows);
    uint64_t seed = 99;
    for (int i = 0; i < N * rows; i++)
        orig[i] = (float)(rnd(&seed) * 3.0 - 0.5);
    for (int pm = 0; pm < 2; pm++) {
        tomo_filter *f =
            tomo_filter_create(N, TOMO_FILTER_CHESLER, pm ? TOMO_PAD_EDGE : TOMO_PAD_ZERO, NULL);
        CHECK(f != NULL);
        if (!f)
            break;
        void *scratch = aligned_scratch(f);
        memcpy(a, orig, sizeof(float) * (size_t)N * rows);
        memcpy(b, orig, sizeof(float) * (size_t)N * rows);
        memcpy(c, orig, sizeof(float) * (size_t)N * rows);
        for (int r = 0; r < rows; r++)
            tomo_filter_row(f, a + (size_t)r * N, scratch);
        for (int r = 0; r < rows; r++)
            tomo_filter_row(f, b + (size_t)r * N, scratch);
        CHECK(memcmp(a, b, sizeof(float) * (size_t)N * rows) == 0);

        tomo_pool *pool = tomo_pool_create(4);
        CHECK(pool != NULL);
        if (pool) {
            int threads = tomo_pool_size(pool);
            void *slots[16] = {0};
            for (int t = 0; t < threads && t < 16; t++)
                slots[t] = aligned_scratch(f);
            filter_job job = {f, c, N, slots};
            for (int rep = 0; rep < 3; rep++) {
                memcpy(c, orig, sizeof(float) * (size_t)N * rows);
                tomo_pool_run(pool, rows, filter_task, &job);
                CHECK(memcmp(a, c, sizeof(float) * (size_t)N * rows) == 0);
            }
            for (int t = 0; t < 16; t++)
                free(slots[t]);
            tomo_pool_destroy(pool);
        }
        free(scratch);
        tomo_filter_destroy(f);
    }
    free(orig);
    free(a);
    free(b);
    free(c);
}

static void test_needs_edge_pad(void)
{
    const int N = 300, M = 40;
    float *sino = malloc(sizeof(float) * (size_t)N * M);
    /* A slab wider than the detector: every row is cut off at both ends. */
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
            sino[m * N + n] = (float)(1.0 + 0.2 * sin(0.03 * n + 0.1 * m));
    CHECK(tomo_filter_needs_edge_pad(sino, M, N, 0.3));
    /* An object inside the field of view: the rows fall to zero at the edges. */
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = (n - 149.5) / 100.0;
            sino[m * N + n] = s * s < 1.0 ? (float)(2.0 * sqrt(1.0 - s * s)) : 0.0f;
        }
    CHECK(!tomo_filter_needs_edge_pad(sino, M, N, 0.3));
    /* Barely truncated: the edge mean is about a quarter of the global mean. */
    double sum = 0.0;
    for (int i = 0; i < N * M; i++)
        sum += sino[i];
    for (int m = 0; m < M; m++)
        sino[m * N] = sino[m * N + N - 1] = (float)(0.25 * sum / (N * M));
    CHECK(tomo_filter_needs_edge_pad(sino, M, N, 0.1));
    CHECK(!tomo_filter_needs_edge_pad(sino, M, N, 0.5));
    memset(sino, 0, sizeof(float) * (size_t)N * M);
    CHECK(!tomo_filter_needs_edge_pad(sino, M, N, 0.3));
    CHECK(!tomo_filter_needs_edge_pad(sino, 0, N, 0.3));
    free(sino);
}

TOMO_TEST_MAIN(test_names, test_kernel_matches_response, test_chesler_is_smoothed_ramlak,
               test_fft_length, test_create_errors, test_filter_matches_direct_convolution,
               test_edge_pad_suppresses_cupping, test_deterministic_and_thread_safe,
               test_needs_edge_pad)
