/*
 * recon/filter.c - ramp-type filtering of projection rows by FFT convolution.
 *
 * The filter spectrum is the DFT of the spatial kernel, not the sampled closed-form response:
 * a sampled |f| would be a circular (aliased) convolution with a kernel that has a DC offset,
 * whereas the DFT of the truncated spatial kernel gives the linear convolution with h exactly
 * (for zero padding, since L >= 2N). The spectrum is computed once in double precision with a
 * small mixed-radix FFT so that it is accurate to float precision even where |H| is tiny.
 */
#include "filter.h"

#include <complex.h>
#include <ctype.h>
#include <fftw3.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PI 3.14159265358979323846

/* The FFTW planner keeps global state; plans are made and destroyed only under this lock. */
static pthread_mutex_t planner_lock = PTHREAD_MUTEX_INITIALIZER;

struct tomo_filter {
    int width;     /* N */
    int length;    /* L */
    int pad_width; /* W, samples of edge pad on each side (0 for zero padding) */
    tomo_filter_kind kind;
    tomo_pad_mode pad;
    float *spectrum; /* [L/2 + 1], real (the kernel is even), 1/L folded in */
    float *window;   /* [W], raised-cosine decay of the edge pad, window[n-1] = w(n) */
    size_t complex_offset;
    size_t scratch_size;
    fftwf_plan forward;
    fftwf_plan inverse;
};

const char *tomo_filter_name(tomo_filter_kind kind)
{
    switch (kind) {
    case TOMO_FILTER_CHESLER:
        return "chesler";
    case TOMO_FILTER_SHEPP_LOGAN:
        return "shepp-logan";
    case TOMO_FILTER_RAMLAK:
        return "ram-lak";
    }
    return NULL;
}

/* Case-insensitive equality that treats '-' and '_' alike, so "Shepp_Logan" is accepted. */
static int name_equal(const char *a, const char *b)
{
    for (;; a++, b++) {
        int ca = tolower((unsigned char)*a), cb = tolower((unsigned char)*b);
        if (ca == '_')
            ca = '-';
        if (cb == '_')
            cb = '-';
        if (ca != cb)
            return 0;
        if (!ca)
            return 1;
    }
}

int tomo_filter_parse(const char *name)
{
    static const struct {
        const char *name;
        tomo_filter_kind kind;
    } names[] = {
        {"chesler", TOMO_FILTER_CHESLER},         {"hann", TOMO_FILTER_CHESLER},
        {"shepp-logan", TOMO_FILTER_SHEPP_LOGAN}, {"shepp", TOMO_FILTER_SHEPP_LOGAN},
        {"ram-lak", TOMO_FILTER_RAMLAK},          {"ramlak", TOMO_FILTER_RAMLAK},
        {"ramachandran", TOMO_FILTER_RAMLAK},
    };
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (name_equal(name, names[i].name))
            return (int)names[i].kind;
    return -1;
}

double tomo_filter_kernel(tomo_filter_kind kind, long i)
{
    double di = (double)(i < 0 ? -i : i);
    double pi2 = PI * PI;
    switch (kind) {
    case TOMO_FILTER_RAMLAK:
        if (i == 0)
            return 0.25;
        return ((long)di & 1) ? -1.0 / (pi2 * di * di) : 0.0;
    case TOMO_FILTER_SHEPP_LOGAN:
        return 2.0 / (pi2 * (1.0 - 4.0 * di * di));
    case TOMO_FILTER_CHESLER:
        if (i == 0)
            return 0.125 - 1.0 / (2.0 * pi2);
        if (di == 1.0)
            return 0.0625 - 1.0 / (2.0 * pi2);
        if ((long)di & 1)
            return -1.0 / (2.0 * pi2 * di * di);
        return -(di * di + 1.0) / (2.0 * pi2 * (di * di - 1.0) * (di * di - 1.0));
    }
    return 0.0;
}

double tomo_filter_response(tomo_filter_kind kind, double f)
{
    /* The DTFT of a sampled kernel is periodic with period 1. */
    f = fabs(f - nearbyint(f));
    switch (kind) {
    case TOMO_FILTER_RAMLAK:
        return f;
    case TOMO_FILTER_SHEPP_LOGAN:
        return fabs(sin(PI * f)) / PI;
    case TOMO_FILTER_CHESLER: {
        double c = cos(PI * f);
        return f * c * c;
    }
    }
    return 0.0;
}

static int is_7smooth(long m)
{
    static const int primes[] = {2, 3, 5, 7};
    for (int k = 0; k < 4; k++)
        while (m % primes[k] == 0)
            m /= primes[k];
    return m == 1;
}

int tomo_filter_fft_length(int n)
{
    long m = n > 0 ? 2L * n : 1;
    while (!is_7smooth(m))
        m++;
    return m > INT32_MAX ? -1 : (int)m;
}

/*
 * Forward complex DFT (sign -1) by recursive decimation in time over the factors 2, 3, 5, 7.
 * tw[k] = exp(-2 pi i k / L) for the top-level length L; a sub-transform of length n uses
 * every (L/n)-th entry. Only used once per filter, so clarity beats speed here.
 */
static void dft_rec(const double complex *in, size_t stride, double complex *out, int n, int L,
                    const double complex *tw)
{
    if (n == 1) {
        out[0] = in[0];
        return;
    }
    int p = n % 2 == 0 ? 2 : n % 3 == 0 ? 3 : n % 5 == 0 ? 5 : 7;
    int m = n / p;
    for (int r = 0; r < p; r++)
        dft_rec(in + (size_t)r * stride, stride * (size_t)p, out + (size_t)r * m, m, L, tw);
    int step = L / n;
    for (int k = 0; k < m; k++) {
        double complex y[7];
        for (int r = 0; r < p; r++)
            y[r] = out[(size_t)r * m + k] * tw[(size_t)((long)r * k % n) * step];
        for (int q = 0; q < p; q++) {
            double complex s = 0;
            for (int r = 0; r < p; r++)
                s += y[r] * tw[(size_t)(r * q % p) * (L / p)];
            out[(size_t)q * m + k] = s;
        }
    }
}

/* spectrum[j] = Re DFT(g)[j] / L for j in [0, L/2], g the periodic kernel of length L. */
static int kernel_spectrum(tomo_filter_kind kind, int L, float *spectrum)
{
    double complex *g = malloc(sizeof *g * (size_t)L);
    double complex *G = malloc(sizeof *G * (size_t)L);
    double complex *tw = malloc(sizeof *tw * (size_t)L);
    if (!g || !G || !tw) {
        free(g);
        free(G);
        free(tw);
        return -1;
    }
    for (int k = 0; k < L; k++) {
        double a = 2.0 * PI * (double)k / (double)L;
        tw[k] = cos(a) - I * sin(a);
        g[k] = 0;
    }
    for (int k = 0; k <= L / 2; k++) {
        double h = tomo_filter_kernel(kind, k);
        g[k] = h;
        if (k > 0)
            g[L - k] = h;
    }
    dft_rec(g, 1, G, L, L, tw);
    for (int j = 0; j <= L / 2; j++)
        spectrum[j] = (float)(creal(G[j]) / (double)L);
    free(g);
    free(G);
    free(tw);
    return 0;
}

static size_t round_up64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

void tomo_filter_destroy(tomo_filter *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&planner_lock);
    if (f->forward)
        fftwf_destroy_plan(f->forward);
    if (f->inverse)
        fftwf_destroy_plan(f->inverse);
    pthread_mutex_unlock(&planner_lock);
    free(f->spectrum);
    free(f->window);
    free(f);
}

tomo_filter *tomo_filter_create(int width, tomo_filter_kind kind, tomo_pad_mode pad,
                                tomo_error *err)
{
    if (width < 1) {
        tomo_error_set(err, TOMO_E_INVALID, "filter: row width %d must be positive", width);
        return NULL;
    }
    if (!tomo_filter_name(kind)) {
        tomo_error_set(err, TOMO_E_INVALID, "filter: unknown filter kind %d", (int)kind);
        return NULL;
    }
    if (pad != TOMO_PAD_ZERO && pad != TOMO_PAD_EDGE) {
        tomo_error_set(err, TOMO_E_INVALID,
                       "filter: pad mode %d must be resolved to zero or edge before filtering",
                       (int)pad);
        return NULL;
    }
    /* With the edge pad the row spans N + 2W samples and output n sees inputs up to N + W - 1
     * away; L >= 2(N + W) keeps all of those distances within +-L/2 of the periodic kernel. */
    int pad_width = pad == TOMO_PAD_EDGE ? width / 2 : 0;
    int L = tomo_filter_fft_length(width + pad_width);
    if (L < 0 || L > (1 << 28)) {
        tomo_error_set(err, TOMO_E_INVALID, "filter: row width %d is too large", width);
        return NULL;
    }

    tomo_filter *f = calloc(1, sizeof *f);
    if (!f) {
        tomo_error_set(err, TOMO_E_NOMEM, "filter: out of memory");
        return NULL;
    }
    f->width = width;
    f->length = L;
    f->kind = kind;
    f->pad = pad;
    f->pad_width = pad_width;
    f->complex_offset = round_up64(sizeof(float) * (size_t)L);
    f->scratch_size = f->complex_offset + round_up64(sizeof(fftwf_complex) * (size_t)(L / 2 + 1));
    f->spectrum = malloc(sizeof(float) * (size_t)(L / 2 + 1));
    f->window = malloc(sizeof(float) * (size_t)(f->pad_width + 1));
    if (!f->spectrum || !f->window || kernel_spectrum(kind, L, f->spectrum) != 0) {
        tomo_filter_destroy(f);
        tomo_error_set(err, TOMO_E_NOMEM, "filter: out of memory for a %d-point spectrum", L);
        return NULL;
    }
    for (int n = 1; n <= f->pad_width; n++)
        f->window[n - 1] = (float)(0.5 * (1.0 + cos(PI * n / f->pad_width)));

    /* Plans are made on fftwf_malloc'd arrays; execution uses the caller's 64-byte aligned
     * scratch, which has at least the same alignment, through the new-array interface. */
    pthread_mutex_lock(&planner_lock);
    float *re = fftwf_malloc(sizeof(float) * (size_t)L);
    fftwf_complex *cx = fftwf_malloc(sizeof(fftwf_complex) * (size_t)(L / 2 + 1));
    if (re && cx) {
        f->forward = fftwf_plan_dft_r2c_1d(L, re, cx, FFTW_ESTIMATE);
        f->inverse = fftwf_plan_dft_c2r_1d(L, cx, re, FFTW_ESTIMATE);
    }
    fftwf_free(re);
    fftwf_free(cx);
    pthread_mutex_unlock(&planner_lock);
    if (!f->forward || !f->inverse) {
        tomo_filter_destroy(f);
        tomo_error_set(err, TOMO_E_NOMEM, "filter: cannot create %d-point FFT plans", L);
        return NULL;
    }
    return f;
}

int tomo_filter_length(const tomo_filter *f)
{
    return f->length;
}

int tomo_filter_pad_width(const tomo_filter *f)
{
    return f->pad_width;
}

const float *tomo_filter_spectrum(const tomo_filter *f)
{
    return f->spectrum;
}

const float *tomo_filter_window(const tomo_filter *f)
{
    return f->window;
}

size_t tomo_filter_scratch_size(const tomo_filter *f)
{
    return f->scratch_size;
}

void tomo_filter_row(const tomo_filter *f, float *row, void *scratch)
{
    const int N = f->width, L = f->length, W = f->pad_width;
    float *x = scratch;
    /* Interleaved (re, im); fftwf_complex is C99 complex here since <complex.h> comes first. */
    float *X = (float *)((char *)scratch + f->complex_offset);

    memcpy(x, row, sizeof(float) * (size_t)N);
    memset(x + N, 0, sizeof(float) * (size_t)(L - N));
    if (f->pad == TOMO_PAD_EDGE && W > 0) {
        float left = row[0], right = row[N - 1];
        for (int n = 1; n <= W; n++) {
            x[N - 1 + n] = right * f->window[n - 1];
            x[L - n] = left * f->window[n - 1];
        }
    }
    fftwf_execute_dft_r2c(f->forward, x, (fftwf_complex *)X);
    const float *s = f->spectrum;
    for (int j = 0; j <= L / 2; j++) {
        X[2 * j] *= s[j];
        X[2 * j + 1] *= s[j];
    }
    fftwf_execute_dft_c2r(f->inverse, (fftwf_complex *)X, x);
    memcpy(row, x, sizeof(float) * (size_t)N);
}

int tomo_filter_needs_edge_pad(const float *sino, int n_rows, int width, double threshold)
{
    if (!sino || n_rows < 1 || width < 1)
        return 0;
    double all = 0.0, edge = 0.0;
    for (int m = 0; m < n_rows; m++) {
        const float *p = sino + (size_t)m * (size_t)width;
        double s = 0.0;
        for (int n = 0; n < width; n++)
            s += fabs((double)p[n]);
        all += s;
        edge += fabs((double)p[0]) + fabs((double)p[width - 1]);
    }
    if (!(all > 0.0))
        return 0;
    return edge / (2.0 * n_rows) > threshold * all / ((double)n_rows * width);
}
