/*
 * recon/rings.c - Vo's stripe removal: algorithms 3 (sorting), 4 (detection), 5 (large
 * stripes) and 6 (dead stripes), chained as Algotom's remove_all_stripe.
 *
 * Written from the published description of the algorithms and of Algotom's steps and
 * defaults (algotom/prep/removal.py as described in our reference notes); no code was taken
 * from Algotom, TomoPy or any other implementation.
 *
 * Deviations from Algotom, and why (docs/rings.md has the same list):
 *  1. Column sorts break ties by row (stable). Algotom's argsort is not stable, so on data
 *     with repeated values its output depends on NumPy's sort internals; ours is reproducible
 *     and equals np.argsort(kind='stable').
 *  2. detect_stripe: a noise level below 1e-5 (noise-free data: the sorted statistic is flat)
 *     means "no stripes" instead of raising an error, and so do lists too short to fit a
 *     line (fewer than 2 points). A mount must not fail on a perfect detector.
 *  3. Column means (large stripes), the dead-stripe variation sums, the background mean and
 *     the line fit are computed in double. Algotom accumulates the means in float32, whose
 *     rounding would make the detection depend on the summation order.
 *  4. Large stripes: a ratio that is 0 or not finite once rounded to float is not applied
 *     (the column is left as it is) and quotients beyond the float range are clamped to
 *     +-FLT_MAX; Algotom would divide by 0 and produce Inf or NaN.
 *  5. Dead stripes: when the background (median of the column variations) is 0 everywhere, no
 *     column is treated; Algotom would divide by 0. The bound "fewer than N/3 columns" is
 *     read as 3 * count < N.
 *  6. Dead stripes: masked columns are filled row by row by linear interpolation between the
 *     nearest unmasked columns, computed in double as np.interp does. Algotom evaluates a
 *     degree-1 RectBivariateSpline on the grid, which is the same function (the integration
 *     test checks it) up to rounding.
 *  7. Keys: -0.0 sorts and comes out as +0.0.
 *  8. A non-finite input value is refused (TOMO_E_INVALID) rather than sorted somewhere.
 *  9. Options that Algotom accepts but we fix: the median is always the median (no
 *     substitute filter), norm=True for large stripes, smooth_strength=10 for dead stripes.
 *
 * Layout of the work. Everything is organised by blocks of BLOCK adjacent detector columns.
 * A column is sorted along the angles once per step into (key, row) pairs: the key is the
 * float's bit pattern made to order like the float, so comparisons are integer ones and a
 * stable LSD radix sort gives the tie-break by row for free. The median across the detector
 * at rank r only needs the sorted columns within half a window of the current block, so the
 * single-thread path keeps a ring of sorted columns (a few megabytes) instead of a sorted copy
 * of the whole sinogram, and writes each block back as soon as its medians are known: the
 * columns it overwrites have been sorted already and no later block reads them. The pool path
 * sorts every column into a full copy first, so blocks are independent tasks. Within a block
 * the window slides along the detector for each rank, kept sorted: for dim = 1 by binary
 * search and a shift, for dim = 2 by merging out one sorted run and in another.
 */
#include "rings.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Columns handled together: two cache lines of floats per sinogram row. */
#define BLOCK 32

/* "No column": the median windows are not valid for any column (j0 - 1 is never below -1). */
#define NO_COLUMN (-2)

/* Dead stripes: length of the uniform filter along the angles (Algotom's smooth_strength). */
#define DEAD_SMOOTH 10

/* ------------------------------------------------------------------------------------------ */
/* Parameters                                                                                  */

void tomo_rings_params_default(tomo_rings_params *p)
{
    memset(p, 0, sizeof *p);
    p->method = TOMO_RINGS_NONE;
    p->size = 0;
    p->dim = TOMO_RINGS_DIM_DEFAULT;
    p->snr = TOMO_RINGS_SNR_DEFAULT;
    p->la_size = TOMO_RINGS_LA_SIZE_DEFAULT;
    p->sm_size = TOMO_RINGS_SM_SIZE_DEFAULT;
    p->drop_ratio = TOMO_RINGS_DROP_RATIO_DEFAULT;
}

int tomo_rings_auto_size(int width)
{
    if (width > 2000)
        return 21;
    int s = (int)(0.01 * (double)width);
    if (s < 5)
        s = 5;
    return s % 2 ? s : s + 1;
}

int tomo_rings_sort_size(const tomo_rings_params *p, int width)
{
    int s = p->method == TOMO_RINGS_ALL ? p->sm_size : p->size;
    return s > 0 ? s : tomo_rings_auto_size(width);
}

static const char *const method_names[] = {"none", "sort", "all", "large", "dead"};

const char *tomo_rings_method_name(tomo_rings_method method)
{
    if ((int)method < 0 || (int)method >= (int)(sizeof method_names / sizeof method_names[0]))
        return NULL;
    return method_names[method];
}

int tomo_rings_parse_method(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < (int)(sizeof method_names / sizeof method_names[0]); i++)
        if (strcmp(name, method_names[i]) == 0)
            return i;
    if (strcmp(name, "vo") == 0 || strcmp(name, "vo-all") == 0)
        return TOMO_RINGS_ALL;
    if (strcmp(name, "sorting") == 0)
        return TOMO_RINGS_SORT;
    if (strcmp(name, "off") == 0)
        return TOMO_RINGS_NONE;
    return -1;
}

static int size_ok(int size, int dim, int allow_auto)
{
    if (size == 0)
        return allow_auto;
    return size >= 1 && size <= (dim == 2 ? TOMO_RINGS_MAX_SIZE_2 : TOMO_RINGS_MAX_SIZE);
}

int tomo_rings_validate(const tomo_rings_params *p, tomo_error *err)
{
    if (!tomo_rings_method_name(p->method))
        return tomo_error_set(err, TOMO_E_INVALID, "ring removal method %d is unknown",
                              (int)p->method);
    if (p->method == TOMO_RINGS_NONE)
        return 0;
    if (p->dim != 1 && p->dim != 2)
        return tomo_error_set(err, TOMO_E_INVALID, "ring_dim=%d: must be 1 or 2", p->dim);
    if (p->method == TOMO_RINGS_SORT && !size_ok(p->size, p->dim, 1))
        return tomo_error_set(err, TOMO_E_INVALID, "ring_size=%d: must be 0 (auto) or 1 to %d",
                              p->size, p->dim == 2 ? TOMO_RINGS_MAX_SIZE_2 : TOMO_RINGS_MAX_SIZE);
    if (p->method == TOMO_RINGS_SORT)
        return 0;
    if (!(p->snr > 0) || !isfinite(p->snr))
        return tomo_error_set(err, TOMO_E_INVALID, "ring_snr=%g: must be a positive number",
                              p->snr);
    if (!size_ok(p->la_size, 1, 0))
        return tomo_error_set(err, TOMO_E_INVALID, "ring_la_size=%d: must be 1 to %d", p->la_size,
                              TOMO_RINGS_MAX_SIZE);
    if (p->method == TOMO_RINGS_ALL && !size_ok(p->sm_size, p->dim, 1))
        return tomo_error_set(err, TOMO_E_INVALID, "ring_sm_size=%d: must be 0 (auto) or 1 to %d",
                              p->sm_size,
                              p->dim == 2 ? TOMO_RINGS_MAX_SIZE_2 : TOMO_RINGS_MAX_SIZE);
    if (!(p->drop_ratio >= 0 && p->drop_ratio <= 0.8))
        return tomo_error_set(err, TOMO_E_INVALID, "ring_drop_ratio=%g: must be from 0 to 0.8",
                              p->drop_ratio);
    return 0;
}

static int parse_int_value(const char *key, const char *value, int lo, int hi, int allow_auto,
                           int *out, tomo_error *err)
{
    if (allow_auto && strcmp(value, "auto") == 0) {
        *out = 0;
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < lo || v > hi || (v == 0 && !allow_auto))
        return tomo_error_set(err, TOMO_E_INVALID,
                              "option %s=%s: expected an integer from %d to %d%s", key, value,
                              allow_auto ? 1 : lo, hi, allow_auto ? " or auto" : "");
    *out = (int)v;
    return 0;
}

static int parse_double_value(const char *key, const char *value, double lo, double hi, int open_lo,
                              double *out, tomo_error *err)
{
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || end == value || *end || !isfinite(v) || v < lo || v > hi || (open_lo && v == lo))
        return tomo_error_set(err, TOMO_E_INVALID, "option %s=%s: expected a number %s %g%s%g", key,
                              value, open_lo ? "above" : "from", lo,
                              open_lo ? " and up to " : " to ", hi);
    *out = v;
    return 0;
}

int tomo_rings_parse_option(tomo_rings_params *p, const char *key, const char *value,
                            tomo_error *err)
{
    static const char *const keys[] = {"rings",        "ring_size",    "ring_dim",       "ring_snr",
                                       "ring_la_size", "ring_sm_size", "ring_drop_ratio"};
    int which = -1;
    for (int i = 0; i < (int)(sizeof keys / sizeof keys[0]); i++)
        if (key && strcmp(key, keys[i]) == 0)
            which = i;
    if (which < 0)
        return 1;
    if (!value || !*value)
        return tomo_error_set(err, TOMO_E_INVALID, "option %s needs a value (%s=...)", key, key);
    switch (which) {
    case 0: {
        int m = tomo_rings_parse_method(value);
        if (m < 0)
            return tomo_error_set(err, TOMO_E_INVALID,
                                  "option rings=%s: expected none, sort, all, large or dead",
                                  value);
        p->method = (tomo_rings_method)m;
        return 0;
    }
    case 1:
        return parse_int_value(key, value, 0, TOMO_RINGS_MAX_SIZE, 1, &p->size, err);
    case 2:
        return parse_int_value(key, value, 1, 2, 0, &p->dim, err);
    case 3:
        return parse_double_value(key, value, 0, 1e6, 1, &p->snr, err);
    case 4:
        return parse_int_value(key, value, 1, TOMO_RINGS_MAX_SIZE, 0, &p->la_size, err);
    case 5:
        return parse_int_value(key, value, 0, TOMO_RINGS_MAX_SIZE, 1, &p->sm_size, err);
    default:
        return parse_double_value(key, value, 0, 0.8, 0, &p->drop_ratio, err);
    }
}

static void size_text(int size, int width, char *buf, size_t n)
{
    if (size > 0 || width > 0)
        snprintf(buf, n, "%d", size > 0 ? size : tomo_rings_auto_size(width));
    else
        snprintf(buf, n, "auto");
}

void tomo_rings_params_text(const tomo_rings_params *p, int width, char *buf, size_t size)
{
    char s[16];
    switch (p->method) {
    case TOMO_RINGS_SORT:
        size_text(p->size, width, s, sizeof s);
        snprintf(buf, size, "rings=sort ring_size=%s ring_dim=%d", s, p->dim);
        break;
    case TOMO_RINGS_ALL:
        size_text(p->sm_size, width, s, sizeof s);
        snprintf(buf, size,
                 "rings=all ring_snr=%.6f ring_la_size=%d ring_sm_size=%s ring_drop_ratio=%.6f "
                 "ring_dim=%d",
                 p->snr, p->la_size, s, p->drop_ratio, p->dim);
        break;
    case TOMO_RINGS_LARGE:
        snprintf(buf, size, "rings=large ring_snr=%.6f ring_la_size=%d ring_drop_ratio=%.6f",
                 p->snr, p->la_size, p->drop_ratio);
        break;
    case TOMO_RINGS_DEAD:
        snprintf(buf, size, "rings=dead ring_snr=%.6f ring_la_size=%d", p->snr, p->la_size);
        break;
    default:
        if (size)
            buf[0] = '\0';
        break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                               */

/* Maps a float to an unsigned key with the same order (-0.0 taken as +0.0). */
static inline uint32_t float_key(float v)
{
    v += 0.0f; /* -0.0 + 0.0 = +0.0: equal floats must get equal keys */
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float key_float(uint32_t k)
{
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static inline uint32_t pair_key(uint64_t pair)
{
    return (uint32_t)(pair >> 32);
}

static inline uint32_t pair_row(uint64_t pair)
{
    return (uint32_t)pair;
}

/* SciPy's 'reflect' extension (half-sample symmetric), repeated for any distance. */
static inline int reflect(long i, int n)
{
    if (i >= 0 && i < n)
        return (int)i;
    long period = 2L * n;
    i %= period;
    if (i < 0)
        i += period;
    return (int)(i < n ? i : period - 1 - i);
}

static inline int min_int(int a, int b)
{
    return a < b ? a : b;
}

static inline int max_int(int a, int b)
{
    return a > b ? a : b;
}

/* x / f kept finite: f is finite and nonzero here, so only overflow can happen. */
static inline float safe_div(float x, float f)
{
    float q = x / f;
    if (isinf(q))
        q = q > 0 ? FLT_MAX : -FLT_MAX;
    return q;
}

static void insertion_sort_u32(uint32_t *a, int n)
{
    for (int i = 1; i < n; i++) {
        uint32_t v = a[i];
        int j = i;
        while (j > 0 && a[j - 1] > v) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------------------------------------ */
/* Algorithm 4: stripe detection on a per-column statistic                                     */

/* tomo_rings_detect_stripes() with caller-provided room for the sorted list (n doubles). */
static int detect_stripes(const double *list, int n, double snr, unsigned char *mask,
                          double *sorted)
{
    for (int i = 0; i < n; i++)
        mask[i] = 0;
    int ndrop = (int)(0.25 * (double)n);
    int a = ndrop, b = n - ndrop - 1; /* fitted indices [a, b) of the sorted list */
    if (n < 1 || b - a < 2)
        return 0;
    memcpy(sorted, list, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_double);
    /* least squares y = intercept + slope * x, from centred sums */
    double mx = 0, my = 0;
    for (int i = a; i < b; i++) {
        mx += i;
        my += sorted[i];
    }
    mx /= (b - a);
    my /= (b - a);
    double sxy = 0, sxx = 0;
    for (int i = a; i < b; i++) {
        sxy += (i - mx) * (sorted[i] - my);
        sxx += (i - mx) * (i - mx);
    }
    double slope = sxy / sxx;
    double intercept = my - slope * mx;
    double y_end = intercept + slope * (double)(n - 1);
    double noise = fabs(y_end - intercept);
    double lo = sorted[0], hi = sorted[n - 1];
    if (!(noise >= 1e-5))
        return 0;
    int count = 0;
    if ((hi - y_end) / noise >= snr) {
        double cut = y_end + 0.5 * snr * noise;
        for (int i = 0; i < n; i++)
            if (list[i] > cut && !mask[i]) {
                mask[i] = 1;
                count++;
            }
    }
    if ((intercept - lo) / noise >= snr) {
        double cut = intercept - 0.5 * snr * noise;
        for (int i = 0; i < n; i++)
            if (list[i] <= cut && !mask[i]) {
                mask[i] = 1;
                count++;
            }
    }
    return count;
}

int tomo_rings_detect_stripes(const double *list, int n, double snr, unsigned char *mask)
{
    double *sorted = malloc((size_t)(n > 0 ? n : 1) * sizeof *sorted);
    if (!sorted) {
        for (int i = 0; i < n; i++)
            mask[i] = 0;
        return 0;
    }
    int count = detect_stripes(list, n, snr, mask, sorted);
    free(sorted);
    return count;
}

/* Binary dilation by one column (structure [1 1 1], outside = 0); returns the count. */
static int dilate(const unsigned char *in, unsigned char *out, int n)
{
    int count = 0;
    for (int i = 0; i < n; i++) {
        out[i] = in[i] || (i > 0 && in[i - 1]) || (i + 1 < n && in[i + 1]);
        count += out[i];
    }
    return count;
}

/* ------------------------------------------------------------------------------------------ */
/* Working memory                                                                              */

/* Sorted columns: (key, row) pairs, M per column, column c in slot c % cap. */
typedef struct colstore {
    uint64_t *pairs;
    int cap;
    int next; /* ring: columns below `next` have been sorted (or skipped) */
    int full; /* every column sorted, cap = N */
} colstore;

/* What one thread needs. */
typedef struct worker {
    uint64_t *tmp;         /* M: radix sort ping-pong buffer */
    float *gather;         /* M x BLOCK: a block of columns, row-major */
    uint32_t *med;         /* BLOCK x M: medians of the block, column-major */
    float *out;            /* M x BLOCK: output block, row-major */
    uint32_t *wins;        /* dim 1: one window of `size` keys per rank, kept across blocks */
    int wins_col;          /* column the windows of every rank are valid for, or NO_COLUMN */
    int *cuts;             /* dim 2: per rank, the cut of each run of the window (size ints) */
    const uint64_t **runs; /* dim 2: the runs of the current window */
    uint32_t *win;         /* dim 2: window, size^2 keys */
    uint32_t *win2;        /* dim 2: second window buffer for merges */
    uint32_t *run_rem;     /* dim 2: the run leaving the window */
    uint32_t *run_add;     /* dim 2: the run entering it */
    const uint64_t **cp;   /* BLOCK + size - 1 column pointers for the current block */
    double *ext;           /* a reflected column (dead stripes), or a window of doubles */
} worker;

typedef struct rings_call {
    const tomo_rings_params *p;
    float *sino;
    int M, N;
    tomo_pool *pool; /* NULL: single thread with a ring of sorted columns */
    colstore cs;
    int store_valid; /* pool: cs holds the sorted columns of the current sinogram */
    worker *workers;
    int n_workers;
    /* per column */
    double *list1, *list2, *sorted;
    float *factf;
    unsigned char *mask, *mask2, *needed;
    /* the step being run */
    int size, dim, hl, hr;
    int ndrop;
} rings_call;

typedef struct bump {
    char *base;
    size_t off;
} bump;

static void *take(bump *b, size_t bytes)
{
    size_t at = (b->off + 63) & ~(size_t)63;
    b->off = at + bytes;
    return b->base ? b->base + at : NULL;
}

static int uses_sort(tomo_rings_method m)
{
    return m == TOMO_RINGS_SORT || m == TOMO_RINGS_ALL;
}

static int uses_la(tomo_rings_method m)
{
    return m == TOMO_RINGS_ALL || m == TOMO_RINGS_LARGE || m == TOMO_RINGS_DEAD;
}

/* Widest window (columns) and largest window (keys) of the steps a method runs. */
/*
 * Widest window (columns) of the steps a method runs, widest window of the dim = 1 steps and
 * largest dim = 2 window (keys).
 */
static void window_needs(const tomo_rings_params *p, int N, int *max_size, int *max_1d, int *max_2d)
{
    int w = 1, w1 = 1, w2 = 1;
    if (uses_sort(p->method)) {
        int s = tomo_rings_sort_size(p, N);
        w = max_int(w, s);
        if (p->dim == 2)
            w2 = s * s;
        else
            w1 = s;
    }
    if (uses_la(p->method)) {
        w = max_int(w, p->la_size);
        w1 = max_int(w1, p->la_size);
    }
    *max_size = w;
    *max_1d = w1;
    *max_2d = w2;
}

static void layout_worker(bump *b, worker *w, int M, const tomo_rings_params *p, int N)
{
    int max_size, max_1d, max_2d;
    window_needs(p, N, &max_size, &max_1d, &max_2d);
    w->tmp = take(b, (size_t)M * sizeof(uint64_t));
    w->gather = take(b, (size_t)M * BLOCK * sizeof(float));
    w->med = take(b, (size_t)M * BLOCK * sizeof(uint32_t));
    w->out = take(b, (size_t)M * BLOCK * sizeof(float));
    w->wins = take(b, (size_t)M * (size_t)max_1d * sizeof(uint32_t));
    w->wins_col = NO_COLUMN;
    int size_2d = uses_sort(p->method) && p->dim == 2 ? tomo_rings_sort_size(p, N) : 1;
    w->cuts = take(b, (size_t)M * (size_t)size_2d * sizeof(int));
    w->runs = take(b, (size_t)size_2d * sizeof(uint64_t *));
    w->win = take(b, (size_t)max_2d * sizeof(uint32_t));
    w->win2 = take(b, (size_t)max_2d * sizeof(uint32_t));
    w->run_rem = take(b, (size_t)max_size * sizeof(uint32_t));
    w->run_add = take(b, (size_t)max_size * sizeof(uint32_t));
    w->cp = take(b, (size_t)(BLOCK + max_size + 1) * sizeof(uint64_t *));
    w->ext = take(b, (size_t)max_int(M + DEAD_SMOOTH, max_size) * sizeof(double));
}

static void layout_columns(bump *b, rings_call *c, int N)
{
    c->list1 = take(b, (size_t)N * sizeof(double));
    c->list2 = take(b, (size_t)N * sizeof(double));
    c->sorted = take(b, (size_t)N * sizeof(double));
    c->factf = take(b, (size_t)N * sizeof(float));
    c->mask = take(b, (size_t)N);
    c->mask2 = take(b, (size_t)N);
    c->needed = take(b, (size_t)N);
}

/* Columns of the ring: enough for a window and two blocks (see ensure_sorted). */
static int ring_capacity(int N, int max_size)
{
    long cap = (long)max_size + 2L * BLOCK;
    return cap < N ? (int)cap : N;
}

/* The whole scratch of a single-thread call; with base NULL only measures it. */
static size_t layout_serial(const tomo_rings_params *p, int M, int N, void *base, rings_call *c,
                            worker *w)
{
    int max_size, max_1d, max_2d;
    window_needs(p, N, &max_size, &max_1d, &max_2d);
    bump b = {base, 0};
    layout_worker(&b, w, M, p, N);
    layout_columns(&b, c, N);
    c->cs.cap = ring_capacity(N, max_size);
    c->cs.pairs = take(&b, (size_t)c->cs.cap * (size_t)M * sizeof(uint64_t));
    c->cs.full = c->cs.cap == N;
    return (b.off + 63) & ~(size_t)63;
}

size_t tomo_rings_scratch_size(const tomo_rings_params *p, int n_rows, int width)
{
    if (p->method == TOMO_RINGS_NONE || n_rows < 1 || width < 1)
        return 0;
    rings_call c;
    worker w;
    return layout_serial(p, n_rows, width, NULL, &c, &w);
}

/* ------------------------------------------------------------------------------------------ */
/* Sorting columns                                                                             */

/*
 * Stable LSD radix sort of M (key, row) pairs on the key, 8 bits per pass; passes whose digit
 * is the same for every pair are skipped (the top byte usually is). The result is in `dst`.
 */
static void radix_sort(uint64_t *dst, uint64_t *tmp, int M)
{
    uint32_t hist[4][256];
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < M; i++) {
        uint32_t k = pair_key(dst[i]);
        hist[0][k & 255]++;
        hist[1][(k >> 8) & 255]++;
        hist[2][(k >> 16) & 255]++;
        hist[3][k >> 24]++;
    }
    uint64_t *src = dst, *out = tmp;
    for (int pass = 0; pass < 4; pass++) {
        int shift = 32 + 8 * pass;
        uint32_t *h = hist[pass];
        if (h[(src[0] >> shift) & 255] == (uint32_t)M)
            continue;
        uint32_t offset[256], sum = 0;
        for (int d = 0; d < 256; d++) {
            offset[d] = sum;
            sum += h[d];
        }
        for (int i = 0; i < M; i++) {
            uint64_t v = src[i];
            out[offset[(v >> shift) & 255]++] = v;
        }
        uint64_t *t = src;
        src = out;
        out = t;
    }
    if (src != dst)
        memcpy(dst, src, (size_t)M * sizeof *dst);
}

static inline const uint64_t *column(const colstore *cs, int c, int M)
{
    return cs->pairs + (size_t)(c % cs->cap) * (size_t)M;
}

/* Sorts the columns [b0, b1) of the sinogram (those with needed[c], if given) into the store. */
static void sort_block(const rings_call *c, worker *w, int b0, int b1, const unsigned char *needed)
{
    int M = c->M, N = c->N, nb = b1 - b0;
    if (needed) {
        int any = 0;
        for (int j = b0; j < b1; j++)
            any |= needed[j];
        if (!any)
            return;
    }
    for (int r = 0; r < M; r++)
        memcpy(w->gather + (size_t)r * BLOCK, c->sino + (size_t)r * N + b0, (size_t)nb * 4);
    for (int k = 0; k < nb; k++) {
        if (needed && !needed[b0 + k])
            continue;
        uint64_t *dst = c->cs.pairs + (size_t)((b0 + k) % c->cs.cap) * (size_t)M;
        for (int r = 0; r < M; r++)
            dst[r] = (uint64_t)float_key(w->gather[(size_t)r * BLOCK + k]) << 32 | (uint32_t)r;
        radix_sort(dst, w->tmp, M);
    }
}

/*
 * Single-thread ring: sorts every column up to `upto` (whole blocks). Column c overwrites the
 * slot of column c - cap; with cap >= size + 2 BLOCK that column is left of every window still
 * to be computed, including the reflected ones at both ends of the detector.
 */
static void ensure_sorted(rings_call *c, worker *w, int upto, const unsigned char *needed)
{
    while (c->cs.next <= upto && c->cs.next < c->N) {
        int b0 = c->cs.next, b1 = min_int(c->N, b0 + BLOCK);
        sort_block(c, w, b0, b1, needed);
        c->cs.next = b1;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Medians across the detector of the sorted image                                             */

/* Sorts the keys of column pointer cp at ranks reflect(r - hl .. r + hr) into run[size]. */
static inline void gather_run(const uint64_t *cp, int r, int M, int hl, int size, uint32_t *run)
{
    if (r - hl >= 0 && r - hl + size <= M) {
        for (int q = 0; q < size; q++)
            run[q] = pair_key(cp[r - hl + q]);
        return;
    }
    for (int q = 0; q < size; q++)
        run[q] = pair_key(cp[reflect((long)r - hl + q, M)]);
    insertion_sort_u32(run, size);
}

/* Replaces the sorted run `rem` (part of the window) by the sorted run `add`, in one merge. */
static void window_replace(const uint32_t *w, int n, const uint32_t *rem, const uint32_t *add,
                           int s, uint32_t *out)
{
    int p = 0, q = 0, o = 0;
    for (int i = 0; i < n; i++) {
        uint32_t v = w[i];
        if (p < s && v == rem[p]) {
            p++;
            continue;
        }
        while (q < s && add[q] <= v)
            out[o++] = add[q++];
        out[o++] = v;
    }
    while (q < s)
        out[o++] = add[q++];
}

/* Sorts `count` sorted runs of `len` keys, stored one after the other in a, by merging. */
static uint32_t *merge_runs(uint32_t *a, uint32_t *b, int len, int count)
{
    int n = len * count;
    for (int width = len; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = min_int(lo + width, n), hi = min_int(lo + 2 * width, n);
            int i = lo, j = mid, o = lo;
            while (i < mid && j < hi)
                b[o++] = a[j] < a[i] ? a[j++] : a[i++];
            while (i < mid)
                b[o++] = a[i++];
            while (j < hi)
                b[o++] = a[j++];
        }
        uint32_t *t = a;
        a = b;
        b = t;
    }
    return a;
}

/*
 * Replaces one key of the sorted window w[n] equal to `old` by `add`, keeping it sorted. The
 * two positions are counted rather than searched: the counting loops have no data-dependent
 * branches and vectorise, which beats a binary search at these sizes.
 */
static inline void window_slide(uint32_t *w, int n, uint32_t old, uint32_t add)
{
    int po = 0, pa = 0;
    for (int i = 0; i < n; i++) {
        po += w[i] < old;
        pa += w[i] < add;
    }
    /* w[po] == old; pa counts old itself when add > old */
    if (pa > po) {
        for (int i = po; i < pa - 1; i++)
            w[i] = w[i + 1];
        w[pa - 1] = add;
    } else {
        for (int i = po; i > pa; i--)
            w[i] = w[i - 1];
        w[pa] = add;
    }
}

/* Number of keys of the sorted run[0..n) below v. */
static inline int count_below(const uint64_t *run, int n, uint32_t v)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (pair_key(run[mid]) < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/*
 * dim = 2 at an interior rank r: the window of column j is the union of `size` runs, the
 * ranks r - hl .. r + hr of the sorted columns j - hl .. j + hr, each run sorted and read in
 * place. cut[o] says how many of the smallest keys of run o make up L, the rank + 1 smallest
 * keys of the window, so the median is max(L). Sliding to the next column swaps one run: the
 * entering run is cut where the remaining L ends, and L is then brought back to its size by
 * moving the smallest keys above it in, or its largest keys out, one at a time. That costs
 * O(size) per move and a few moves per pixel (about size / 2 on noisy data), instead of the
 * O(size^2) of merging whole windows. The cuts are kept per rank across blocks (wins_col).
 */
static void median2_interior(worker *w, const uint64_t *const *cp, int j0, int j1, int r, int size,
                             int hl, int rank, int M, const unsigned char *only, int cont)
{
    int *cut = w->cuts + (size_t)r * size; /* in window order: run o is column j - hl + o */
    const uint64_t **run = w->runs;
    int start = r - hl;
    int valid = cont;
    for (int j = j0; j < j1; j++) {
        int x = j - j0;
        if (only && !only[j]) {
            valid = 0;
            continue;
        }
        for (int o = 0; o < size; o++)
            run[o] = cp[x + 1 + o] + start;
        if (!valid) {
            uint32_t *win = w->win;
            for (int o = 0; o < size; o++)
                for (int q = 0; q < size; q++)
                    win[(size_t)o * size + q] = pair_key(run[o][q]);
            uint32_t m = merge_runs(win, w->win2, size, size)[rank];
            int need = rank + 1;
            for (int o = 0; o < size; o++) {
                cut[o] = count_below(run[o], size, m);
                need -= cut[o];
            }
            /* keys equal to the median: as many as L still lacks */
            for (int o = 0; o < size && need > 0; o++)
                while (need > 0 && cut[o] < size && pair_key(run[o][cut[o]]) == m) {
                    cut[o]++;
                    need--;
                }
            valid = 1;
        } else {
            int cut_out = cut[0];
            for (int o = 0; o + 1 < size; o++)
                cut[o] = cut[o + 1];
            uint32_t top = 0;
            int have = 0;
            for (int o = 0; o < size - 1; o++)
                if (cut[o] > 0) {
                    uint32_t v = pair_key(run[o][cut[o] - 1]);
                    top = v > top ? v : top;
                    have = 1;
                }
            int cut_in = have ? count_below(run[size - 1], size, top) : 0;
            cut[size - 1] = cut_in;
            for (int d = cut_out - cut_in; d > 0; d--) {
                int best = -1;
                uint32_t bv = UINT32_MAX;
                for (int o = 0; o < size; o++)
                    if (cut[o] < size) {
                        uint32_t v = pair_key(run[o][cut[o]]);
                        if (v < bv || best < 0) {
                            best = o;
                            bv = v;
                        }
                    }
                cut[best]++;
            }
            for (int d = cut_out - cut_in; d < 0; d++) {
                int best = -1;
                uint32_t bv = 0;
                for (int o = 0; o < size; o++)
                    if (cut[o] > 0) {
                        uint32_t v = pair_key(run[o][cut[o] - 1]);
                        if (v > bv || best < 0) {
                            best = o;
                            bv = v;
                        }
                    }
                cut[best]--;
            }
        }
        uint32_t med = 0;
        for (int o = 0; o < size; o++)
            if (cut[o] > 0) {
                uint32_t v = pair_key(run[o][cut[o] - 1]);
                med = v > med ? v : med;
            }
        w->med[(size_t)x * M + r] = med;
    }
}

/*
 * Medians of the sorted image at columns [j0, j1), every rank, into w->med[(j - j0) M + r],
 * for the window of the current step (c->size, c->dim). Columns with only[j] == 0 are skipped
 * (only may be NULL). Needs the sorted columns reflect(j0 - hl - 1 .. j1 - 1 + hr). The dim = 1
 * windows stay valid from one block to the next (w->wins_col), so a run of blocks pays for
 * building them once per rank.
 */
static void median_block(const rings_call *c, worker *w, int j0, int j1, const unsigned char *only)
{
    int M = c->M, N = c->N, size = c->size, hl = c->hl;
    /* cp[x] is the sorted column at position j0 - hl - 1 + x */
    int n_ptr = (j1 - j0) + size;
    for (int x = 0; x < n_ptr; x++)
        w->cp[x] = column(&c->cs, reflect((long)j0 - hl - 1 + x, N), M);
    const uint64_t **cp = w->cp;
    if (c->dim == 1) {
        int rank = size / 2;
        int cont = w->wins_col == j0 - 1;
        for (int r = 0; r < M; r++) {
            uint32_t *win = w->wins + (size_t)r * size;
            int valid = cont;
            for (int j = j0; j < j1; j++) {
                int x = j - j0;
                if (only && !only[j]) {
                    valid = 0;
                    continue;
                }
                if (valid) {
                    window_slide(win, size, pair_key(cp[x][r]), pair_key(cp[x + size][r]));
                } else {
                    for (int o = 0; o < size; o++)
                        win[o] = pair_key(cp[x + 1 + o][r]);
                    insertion_sort_u32(win, size);
                    valid = 1;
                }
                w->med[(size_t)x * M + r] = win[rank];
            }
        }
        w->wins_col = (only && !only[j1 - 1]) ? NO_COLUMN : j1 - 1;
        return;
    }
    int n = size * size, rank = n / 2;
    int cont = w->wins_col == j0 - 1;
    for (int r = 0; r < M; r++) {
        if (r - hl >= 0 && r - hl + size <= M) {
            median2_interior(w, cp, j0, j1, r, size, hl, rank, M, only, cont);
            continue;
        }
        /* near the first and last ranks the runs are reflected: merge whole windows */
        int valid = 0;
        uint32_t *win = w->win, *spare = w->win2;
        for (int j = j0; j < j1; j++) {
            int x = j - j0;
            if (only && !only[j]) {
                valid = 0;
                continue;
            }
            if (!valid) {
                for (int o = 0; o < size; o++)
                    gather_run(cp[x + 1 + o], r, M, hl, size, win + (size_t)o * size);
                uint32_t *sorted = merge_runs(win, spare, size, size);
                if (sorted != win) {
                    spare = win;
                    win = sorted;
                }
                valid = 1;
            } else {
                gather_run(cp[x], r, M, hl, size, w->run_rem);
                gather_run(cp[x + size], r, M, hl, size, w->run_add);
                window_replace(win, n, w->run_rem, w->run_add, size, spare);
                uint32_t *t = win;
                win = spare;
                spare = t;
            }
            w->med[(size_t)x * M + r] = win[rank];
        }
    }
    w->wins_col = (only && !only[j1 - 1]) ? NO_COLUMN : j1 - 1;
}

/* Writes rows of the output block to columns [j0, j0 + nb) of the sinogram. */
static void flush_block(const rings_call *c, const worker *w, int j0, int nb)
{
    for (int r = 0; r < c->M; r++)
        memcpy(c->sino + (size_t)r * c->N + j0, w->out + (size_t)r * BLOCK, (size_t)nb * 4);
}

/* Puts the median of rank r of column j back in the row that value came from. */
static void scatter_column(const rings_call *c, worker *w, int j0, int j)
{
    int M = c->M, k = j - j0;
    const uint64_t *col = column(&c->cs, j, M);
    const uint32_t *med = w->med + (size_t)k * M;
    for (int r = 0; r < M; r++)
        w->out[(size_t)pair_row(col[r]) * BLOCK + k] = key_float(med[r]);
}

/* ------------------------------------------------------------------------------------------ */
/* Running a step block by block                                                               */

typedef void (*block_fn)(rings_call *c, worker *w, int j0, int j1);

struct block_task {
    rings_call *c;
    block_fn fn;
    const unsigned char *needed;
    int n_blocks;
    int blocks_per_task;
};

static void sort_task(void *arg, int task, int slot)
{
    struct block_task *t = arg;
    int j0 = task * BLOCK;
    sort_block(t->c, &t->c->workers[slot], j0, min_int(t->c->N, j0 + BLOCK), t->needed);
}

/* A task is a range of blocks, run in order so that the median windows carry over. */
static void block_task_run(void *arg, int task, int slot)
{
    struct block_task *t = arg;
    worker *w = &t->c->workers[slot];
    w->wins_col = NO_COLUMN;
    int b0 = task * t->blocks_per_task, b1 = min_int(t->n_blocks, b0 + t->blocks_per_task);
    for (int b = b0; b < b1; b++)
        t->fn(t->c, w, b * BLOCK, min_int(t->c->N, (b + 1) * BLOCK));
}

/*
 * Runs fn on every block of columns. With sorted != 0, fn may read the sorted columns of its
 * window (restricted to needed[] when given): the single-thread path sorts them into the
 * ring just ahead of each block, the pool path sorts the whole sinogram first unless the
 * store is still current.
 */
static void run_blocks(rings_call *c, block_fn fn, int sorted, const unsigned char *needed)
{
    int nblocks = (c->N + BLOCK - 1) / BLOCK;
    if (!c->pool) {
        worker *w = &c->workers[0];
        c->cs.next = 0;
        w->wins_col = NO_COLUMN;
        for (int b = 0; b < nblocks; b++) {
            int j0 = b * BLOCK, j1 = min_int(c->N, j0 + BLOCK);
            if (sorted)
                ensure_sorted(c, w, c->cs.full ? c->N - 1 : min_int(c->N - 1, j1 - 1 + c->hr),
                              needed);
            fn(c, w, j0, j1);
        }
        return;
    }
    struct block_task t = {c, fn, NULL, nblocks, 1};
    if (sorted && !c->store_valid) {
        tomo_pool_run(c->pool, nblocks, sort_task, &t);
        c->store_valid = 1;
    }
    /* about four ranges per thread: balance against rebuilding the windows at each start */
    int ranges = 4 * c->n_workers;
    t.blocks_per_task = (nblocks + ranges - 1) / ranges;
    tomo_pool_run(c->pool, (nblocks + t.blocks_per_task - 1) / t.blocks_per_task, block_task_run,
                  &t);
}

static void set_window(rings_call *c, int size, int dim)
{
    c->size = size;
    c->dim = dim;
    c->hl = size / 2;
    c->hr = size - 1 - c->hl;
}

/* ------------------------------------------------------------------------------------------ */
/* Algorithm 3                                                                                 */

static void sort_filter_block(rings_call *c, worker *w, int j0, int j1)
{
    median_block(c, w, j0, j1, NULL);
    for (int j = j0; j < j1; j++)
        scatter_column(c, w, j0, j);
    flush_block(c, w, j0, j1 - j0);
}

static void remove_sorting(rings_call *c, int size, int dim)
{
    set_window(c, size, dim);
    run_blocks(c, sort_filter_block, 1, NULL);
    c->store_valid = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Algorithm 5                                                                                 */

/* Trimmed means of the sorted columns (list1) and of their medians (list2). */
static void large_means_block(rings_call *c, worker *w, int j0, int j1)
{
    int M = c->M, r0 = c->ndrop, r1 = c->M - c->ndrop;
    median_block(c, w, j0, j1, NULL);
    for (int j = j0; j < j1; j++) {
        const uint64_t *col = column(&c->cs, j, M);
        const uint32_t *med = w->med + (size_t)(j - j0) * M;
        double s1 = 0, s2 = 0;
        for (int r = r0; r < r1; r++) {
            s1 += key_float(pair_key(col[r]));
            s2 += key_float(med[r]);
        }
        c->list1[j] = s1 / (r1 - r0);
        c->list2[j] = s2 / (r1 - r0);
    }
}

/* Masked columns take their smoothed values, the others are divided by their ratio. */
static void large_apply_block(rings_call *c, worker *w, int j0, int j1)
{
    int M = c->M, N = c->N, nb = j1 - j0, any = 0;
    for (int j = j0; j < j1; j++)
        any |= c->mask2[j];
    if (any) {
        median_block(c, w, j0, j1, c->mask2);
        for (int j = j0; j < j1; j++)
            if (c->mask2[j])
                scatter_column(c, w, j0, j);
    }
    for (int r = 0; r < M; r++) {
        const float *in = c->sino + (size_t)r * N + j0;
        float *out = w->out + (size_t)r * BLOCK;
        for (int k = 0; k < nb; k++)
            if (!c->mask2[j0 + k])
                out[k] = safe_div(in[k], c->factf[j0 + k]);
    }
    flush_block(c, w, j0, nb);
}

static void remove_large(rings_call *c)
{
    const tomo_rings_params *p = c->p;
    int M = c->M, N = c->N;
    double drop = p->drop_ratio < 0 ? 0 : p->drop_ratio > 0.8 ? 0.8 : p->drop_ratio;
    c->ndrop = (int)(0.5 * drop * M);
    set_window(c, p->la_size, 1);
    run_blocks(c, large_means_block, 1, NULL);

    double *fact = c->list1;
    for (int j = 0; j < N; j++)
        fact[j] = c->list2[j] != 0 ? c->list1[j] / c->list2[j] : 1.0;
    detect_stripes(fact, N, p->snr, c->mask, c->sorted);
    dilate(c->mask, c->mask2, N);
    for (int j = 0; j < N; j++) {
        float f = (float)fact[j];
        c->factf[j] = (f != 0 && isfinite(f)) ? f : 1.0f;
    }
    /* the columns whose windows reach a masked column: only those need sorting again */
    for (int j = 0; j < N; j++)
        c->needed[j] = 0;
    for (int j = 0; j < N; j++)
        if (c->mask2[j])
            for (int o = -c->hl; o <= c->hr; o++)
                c->needed[reflect((long)j + o, N)] = 1;
    run_blocks(c, large_apply_block, 1, c->needed);
    c->store_valid = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Algorithm 6                                                                                 */

/* list1[j] = sum over angles of |S - uniform_filter(S, 10)| for every column of the block. */
static void dead_variation_block(rings_call *c, worker *w, int j0, int j1)
{
    int M = c->M, N = c->N, nb = j1 - j0, half = DEAD_SMOOTH / 2;
    for (int r = 0; r < M; r++)
        memcpy(w->gather + (size_t)r * BLOCK, c->sino + (size_t)r * N + j0, (size_t)nb * 4);
    for (int k = 0; k < nb; k++) {
        double *ext = w->ext;
        for (int q = 0; q < M + DEAD_SMOOTH - 1; q++)
            ext[q] = w->gather[(size_t)reflect((long)q - half, M) * BLOCK + k];
        double diff = 0;
        for (int r = 0; r < M; r++) {
            double s = 0;
            for (int t = 0; t < DEAD_SMOOTH; t++)
                s += ext[r + t];
            diff += fabs(ext[r + half] - s / DEAD_SMOOTH);
        }
        c->list1[j0 + k] = diff;
    }
}

static void remove_dead(rings_call *c)
{
    const tomo_rings_params *p = c->p;
    int N = c->N, M = c->M, size = p->la_size, hl = size / 2;
    run_blocks(c, dead_variation_block, 0, NULL);
    double *diff = c->list1, *bck = c->list2;
    /* background: a median of the variations across the detector (the blocks are done, so
     * the first worker's column buffer is free) */
    double *win = c->workers[0].ext;
    double mean_abs = 0;
    for (int j = 0; j < N; j++) {
        for (int o = 0; o < size; o++)
            win[o] = diff[reflect((long)j - hl + o, N)];
        qsort(win, (size_t)size, sizeof *win, cmp_double);
        bck[j] = win[size / 2];
        mean_abs += fabs(bck[j]);
    }
    mean_abs /= N;
    if (!(mean_abs > 0))
        return; /* no variation anywhere: nothing can be called dead */
    double *fact = c->list2;
    for (int j = 0; j < N; j++)
        fact[j] = diff[j] / (bck[j] == 0 ? mean_abs : bck[j]);
    detect_stripes(fact, N, p->snr, c->mask, c->sorted);
    dilate(c->mask, c->mask2, N);
    for (int j = 0; j < 2 && j < N; j++) {
        c->mask2[j] = 0;
        c->mask2[N - 1 - j] = 0;
    }
    int count = 0;
    for (int j = 0; j < N; j++)
        count += c->mask2[j];
    if (count == 0 || 3L * count >= N)
        return;
    /* linear interpolation along each row between the nearest unmasked columns */
    for (int j = 0; j < N;) {
        if (!c->mask2[j]) {
            j++;
            continue;
        }
        int a = j - 1, b = j;
        while (c->mask2[b])
            b++;
        for (int r = 0; r < M; r++) {
            float *row = c->sino + (size_t)r * N;
            double fa = row[a], fb = row[b];
            double slope = (fb - fa) / (double)(b - a);
            for (int x = a + 1; x < b; x++)
                row[x] = (float)(slope * (double)(x - a) + fa);
        }
        j = b;
    }
    c->store_valid = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Entry points                                                                                */

static int check_input(const tomo_rings_params *p, const float *sino, int M, int N, tomo_error *err)
{
    int rc = tomo_rings_validate(p, err);
    if (rc < 0)
        return rc;
    if (M < 1 || N < 1)
        return tomo_error_set(err, TOMO_E_INVALID, "ring removal: empty sinogram (%d x %d)", M, N);
    if ((long)M * N > ((long)1 << 40) || M > INT32_MAX / 2)
        return tomo_error_set(err, TOMO_E_INVALID, "ring removal: sinogram too large");
    for (int r = 0; r < M; r++) {
        const float *row = sino + (size_t)r * N;
        int bad = 0;
        for (int x = 0; x < N; x++)
            bad |= !isfinite(row[x]);
        if (bad)
            for (int x = 0; x < N; x++)
                if (!isfinite(row[x]))
                    return tomo_error_set(err, TOMO_E_INVALID,
                                          "ring removal: the sinogram holds a non-finite value "
                                          "(%g) at projection %d, column %d",
                                          row[x], r, x);
    }
    return 0;
}

static void run_method(rings_call *c)
{
    const tomo_rings_params *p = c->p;
    switch (p->method) {
    case TOMO_RINGS_SORT:
        remove_sorting(c, tomo_rings_sort_size(p, c->N), p->dim);
        break;
    case TOMO_RINGS_ALL:
        remove_dead(c);
        remove_large(c);
        remove_sorting(c, tomo_rings_sort_size(p, c->N), p->dim);
        break;
    case TOMO_RINGS_LARGE:
        remove_large(c);
        break;
    case TOMO_RINGS_DEAD:
        remove_dead(c);
        break;
    default:
        break;
    }
}

int tomo_rings_remove(const tomo_rings_params *p, float *sino, int n_rows, int width, void *scratch,
                      tomo_error *err)
{
    if (p->method == TOMO_RINGS_NONE)
        return tomo_rings_validate(p, err);
    int rc = check_input(p, sino, n_rows, width, err);
    if (rc < 0)
        return rc;
    rings_call c;
    worker w;
    memset(&c, 0, sizeof c);
    layout_serial(p, n_rows, width, scratch, &c, &w);
    c.p = p;
    c.sino = sino;
    c.M = n_rows;
    c.N = width;
    c.workers = &w;
    c.n_workers = 1;
    run_method(&c);
    return 0;
}

int tomo_rings_remove_pool(const tomo_rings_params *p, float *sino, int n_rows, int width,
                           tomo_pool *pool, tomo_error *err)
{
    if (p->method == TOMO_RINGS_NONE)
        return tomo_rings_validate(p, err);
    int rc = check_input(p, sino, n_rows, width, err);
    if (rc < 0)
        return rc;
    if (!pool || tomo_pool_size(pool) < 2 || width <= BLOCK) {
        void *scratch = aligned_alloc(64, tomo_rings_scratch_size(p, n_rows, width));
        if (!scratch)
            return tomo_error_set(err, TOMO_E_NOMEM, "out of memory for ring removal");
        rc = tomo_rings_remove(p, sino, n_rows, width, scratch, err);
        free(scratch);
        return rc;
    }
    int M = n_rows, N = width, slots = tomo_pool_size(pool);
    rings_call c;
    memset(&c, 0, sizeof c);
    c.workers = calloc((size_t)slots, sizeof *c.workers);
    bump b = {NULL, 0};
    for (int s = 0; s < slots; s++)
        layout_worker(&b, &c.workers[s], M, p, N);
    layout_columns(&b, &c, N);
    take(&b, (size_t)N * (size_t)M * sizeof(uint64_t));
    size_t bytes = b.off + 64;
    void *mem = c.workers ? aligned_alloc(64, (bytes + 63) & ~(size_t)63) : NULL;
    if (!mem) {
        free(c.workers);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory for ring removal (%zu MB)",
                              bytes >> 20);
    }
    b.base = mem;
    b.off = 0;
    for (int s = 0; s < slots; s++)
        layout_worker(&b, &c.workers[s], M, p, N);
    layout_columns(&b, &c, N);
    c.cs.pairs = take(&b, (size_t)N * (size_t)M * sizeof(uint64_t));
    c.cs.cap = N;
    c.cs.full = 1;
    c.p = p;
    c.sino = sino;
    c.M = M;
    c.N = N;
    c.pool = pool;
    c.n_workers = slots;
    run_method(&c);
    free(mem);
    free(c.workers);
    return 0;
}
