/*
 * recon/filter.h - the ramp-type filters of filtered back-projection.
 *
 * Kernels are given in the spatial domain at unit sample spacing (ct-rec's definitions):
 *   Ram-Lak      h(0) = 1/4, h(odd i) = -1/(pi^2 i^2), h(even i != 0) = 0;   H(f) = |f|
 *   Shepp-Logan  h(i) = 2 / (pi^2 (1 - 4 i^2));                              H(f) = |sin(pi f)|/pi
 *   Chesler      Ram-Lak convolved with [1/4, 1/2, 1/4];                     H(f) = |f| cos^2(pi f)
 * with f in cycles per sample, |f| <= 1/2. Chesler (a Hann-windowed ramp) is the default.
 *
 * Rows are filtered by FFT convolution over a padded length L: the smallest 7-smooth number
 * >= 2N, or >= 2(N + N/2) with the edge pad, so that the result is the linear convolution of
 * the padded row with h (no wrap-around). The padding either repeats the edge value with a
 * raised-cosine decay over N/2 samples (for objects wider than the field of view) or is zero;
 * the choice is made once per volume by the caller.
 */
#ifndef TOMO_FILTER_H
#define TOMO_FILTER_H

#include "../common/error.h"

typedef enum tomo_filter_kind {
    TOMO_FILTER_CHESLER = 0,
    TOMO_FILTER_SHEPP_LOGAN = 1,
    TOMO_FILTER_RAMLAK = 2,
} tomo_filter_kind;

typedef enum tomo_pad_mode {
    TOMO_PAD_AUTO = -1, /* not decided yet: tomo_recon_resolve() runs the truncation test */
    TOMO_PAD_ZERO = 0,
    TOMO_PAD_EDGE = 1,
} tomo_pad_mode;

/* "chesler", "shepp-logan", "ram-lak"; NULL for an unknown kind. */
const char *tomo_filter_name(tomo_filter_kind kind);

/* Parses a filter name (also "shepp", "ramlak", "ramachandran", "hann"). Returns -1 if unknown. */
int tomo_filter_parse(const char *name);

/* Spatial kernel h(i) at unit spacing. */
double tomo_filter_kernel(tomo_filter_kind kind, long i);

/* Closed-form frequency response H(f), f in cycles per sample. */
double tomo_filter_response(tomo_filter_kind kind, double f);

/* Smallest 7-smooth integer (2^a 3^b 5^c 7^d) >= 2 * n. */
int tomo_filter_fft_length(int n);

typedef struct tomo_filter tomo_filter;

/*
 * Prepares filtering of rows of `width` samples: the FFT plans and the filter spectrum
 * (computed in double from the spatial kernel, once). Plans are made with FFTW_ESTIMATE so
 * results are bit-identical from run to run. Not thread-safe; call before starting threads
 * or under a lock.
 */
tomo_filter *tomo_filter_create(int width, tomo_filter_kind kind, tomo_pad_mode pad,
                                tomo_error *err);

/* Bytes of scratch memory one thread needs for tomo_filter_row(). */
size_t tomo_filter_scratch_size(const tomo_filter *f);

/*
 * Filters one row in place: row := h * row (linear convolution with the padded row). `scratch`
 * is 64-byte aligned memory of tomo_filter_scratch_size() bytes, private to the calling
 * thread. Safe to call from several threads at once with distinct scratch buffers.
 */
void tomo_filter_row(const tomo_filter *f, float *row, void *scratch);

void tomo_filter_destroy(tomo_filter *f);

/* ---- what another backend needs to filter exactly like tomo_filter_row() ---- */

/* The padded FFT length L. */
int tomo_filter_length(const tomo_filter *f);

/* Samples of edge padding on each side (0 with zero padding). */
int tomo_filter_pad_width(const tomo_filter *f);

/* The real filter spectrum, L/2 + 1 values, with the 1/L of the inverse FFT folded in. */
const float *tomo_filter_spectrum(const tomo_filter *f);

/* The edge pad's decay: the n-th pad sample (n = 1..W) is edge * window[n - 1]. */
const float *tomo_filter_window(const tomo_filter *f);

/*
 * The truncation test of ct-rec: the pad is needed when the mean absolute value of the edge
 * samples exceeds `threshold` (default 0.3) times the mean absolute value of all samples.
 * `sino` holds n_rows rows of `width` samples.
 */
int tomo_filter_needs_edge_pad(const float *sino, int n_rows, int width, double threshold);

#endif
