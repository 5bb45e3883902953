/*
 * recon/engine.h - turns requests for slices into reconstructions.
 *
 * The engine owns the worker threads. A request names a variant (a full parameter set, see
 * tomo_recon_params) and a slice; it is answered once, asynchronously, on an engine thread.
 * Requests are single-flight: while a slice is being computed, further requests for it wait
 * on the same computation. The engine plans a chunk of adjacent slices around each new
 * request: small for the first, growing while requests keep moving forward through the
 * volume, so sequential readers are served from ever larger and cheaper chunks. Every slice a
 * chunk produces goes to the sink (the cache), wanted or not. A chunk is never larger than
 * the sink was seen to keep: when a slice of the last chunk is asked for again after the
 * sink dropped it, that variant's chunks are capped at three quarters of what the sink still
 * held of it.
 *
 * One chunk runs at a time: its preprocessing reads the detector rows of every projection in
 * parallel, and its reconstruction uses every core (or the GPU). While a chunk computes, a
 * reader thread reads the rows of the next one when it is known (read_ahead): the next
 * queued chunk, the next chunk of a series of tomo_engine_compute calls, or the chunk a
 * sequential reader will ask for next. Reading ahead only reads: it stops, and what it read
 * is dropped, as soon as a chunk of anything else is to run, and a read that fails is
 * forgotten, so its error reaches a reader only if that chunk is asked for and fails again.
 */
#ifndef TOMO_ENGINE_H
#define TOMO_ENGINE_H

#include <stdint.h>

#include "../common/error.h"
#include "cuda.h"
#include "filter.h"
#include "prep.h"
#include "rings.h"
#include "scan.h"
#include "slice.h"

/*
 * Centres (first + k step) / 10^decimals for k = 0 .. count - 1, held as integers so that the
 * centre of slice k is the double nearest to its decimal text, the same as strtod() of it.
 */
typedef struct tomo_center_sweep {
    int count;       /* 0 = no sweep */
    int slice;       /* the slice reconstructed (an index of the variant without the sweep) */
    long long first; /* first centre, in units of 10^-decimals columns */
    long long step;  /* > 0, same units */
    int decimals;    /* 0 to 6 */
} tomo_center_sweep;

/* Centre k of a sweep, in detector columns. */
double tomo_recon_sweep_center(const tomo_center_sweep *sweep, int k);

/* Everything that determines the pixels of a reconstruction. */
typedef struct tomo_recon_params {
    tomo_filter_kind filter;
    tomo_pad_mode pad; /* resolved once per volume, see tomo_recon_resolve() */
    double center;     /* rotation axis, detector columns; NaN = find automatically */
    double pixel_um;   /* detector pixel size; sets the cm^-1 scale */
    int bin;           /* output binning, 1 = full resolution */
    tomo_prep_params prep;
    tomo_rings_params rings; /* stripe removal between preprocessing and filtering; NONE = off */
    /*
     * Noise2Inverse sub-reconstruction: with split_count K > 1, only projections split_index,
     * split_index + K, split_index + 2K, ... are used (tomo_scan_subset), at their own angles
     * and weights, so the slice is in cm^-1 like the full reconstruction. K <= 1: all of them.
     */
    int split_index;
    int split_count;
    /*
     * Rows per slice: slice z is reconstructed from the average of the preprocessed detector
     * rows z zbin ... z zbin + zbin - 1 (absorbance, before ring removal and filtering); the
     * last rows % zbin rows are left out. 1 = one row per slice. On the CPU only.
     */
    int zbin;
    /*
     * Centre sweep: with sweep.count > 0 the variant has sweep.count slices, slice k being
     * slice sweep.slice reconstructed with the centre tomo_recon_sweep_center(&sweep, k)
     * instead of `center`. On the CPU only.
     */
    tomo_center_sweep sweep;
} tomo_recon_params;

void tomo_recon_params_default(tomo_recon_params *params);

/*
 * Fills in what was left automatic: the centre (tomo_center_find), the padding decision
 * (the truncation test on a few rows spread over the detector) and automatic ring-removal
 * median widths (tomo_rings_auto_size of the detector width); checks the ring parameters.
 * Runs on the caller's thread; reads a handful of detector rows.
 */
int tomo_recon_resolve(const tomo_scan *scan, tomo_recon_params *params, tomo_error *err);

/*
 * The canonical text of a parameter set: every field that changes pixels, printed with
 * fixed precision, prefixed by the format version. Equal texts mean equal pixels. Ring
 * removal adds its keys (tomo_rings_params_text) only when it is on, a split
 * (" split=k/K") only when K > 1, " zbin=B" only when B > 1 and a sweep
 * (" center_sweep=slice:first:step:count") only when there is one, so the text of a
 * parameter set without them is what it always was.
 */
void tomo_recon_params_text(const tomo_recon_params *params, char *buf, size_t size);

/* Side of the slices a parameter set produces. */
int tomo_recon_slice_size(const tomo_scan *scan, const tomo_recon_params *params);

/* Number of slices a parameter set produces: rows / zbin, or the sweep's count. */
int tomo_recon_slice_count(const tomo_scan *scan, const tomo_recon_params *params);

typedef struct tomo_engine tomo_engine;

/* Where finished slices go: typically the cache. Both functions may be NULL. */
typedef struct tomo_engine_sink {
    void *ctx;
    /* Called once for every slice computed, before the waiting requests are answered. */
    void (*store)(void *ctx, tomo_slice *slice);
    /* A new reference to a slice already stored, or NULL; lets the engine skip it. */
    tomo_slice *(*lookup)(void *ctx, int variant, int z);
} tomo_engine_sink;

typedef struct tomo_engine_config {
    int threads;              /* CPU threads for preprocessing and reconstruction; 0 = all */
    int first_chunk;          /* slices in the chunk planned for an isolated request */
    int max_chunk;            /* cap on slices per chunk */
    uint64_t memory_limit;    /* bytes of sinogram per chunk at most */
    int device;               /* TOMO_DEVICE_AUTO, TOMO_DEVICE_CPU or a CUDA device index */
    tomo_precision precision; /* GPU back-projection precision */
    /*
     * Reading the next chunk's rows while one computes: 0 for chunks on the GPU (into its
     * pinned buffer, at no memory cost), 1 for every chunk (on the CPU into a second sinogram
     * buffer, up to memory_limit), -1 never.
     */
    int read_ahead;
    /*
     * 0: every folder's GPU buffers are taken when the engine starts, so that a mount's first
     * read does not wait for them; 1: at a folder's first chunk, for tools that compute one
     * folder (export), which then do not pay for the others'.
     */
    int gpu_at_first_use;
} tomo_engine_config;

#define TOMO_DEVICE_AUTO (-1) /* the first CUDA device if there is one, else the CPU */
#define TOMO_DEVICE_CPU  (-2)

void tomo_engine_config_default(tomo_engine_config *config);

/*
 * Answer to a request: on success `slice` is a borrowed reference (take your own with
 * tomo_slice_ref to keep it) and err is NULL; on failure slice is NULL and err says why.
 */
typedef void (*tomo_engine_done_fn)(void *arg, tomo_slice *slice, const tomo_error *err);

/*
 * Starts the engine's threads for `scan` and the `n_variants` parameter sets (resolved, see
 * tomo_recon_resolve). The scan and the variants must outlive the engine.
 */
int tomo_engine_create(const tomo_scan *scan, const tomo_recon_params *variants, int n_variants,
                       const tomo_engine_config *config, const tomo_engine_sink *sink,
                       tomo_engine **out, tomo_error *err);

/*
 * Asks for slice z of a variant. `done` is called exactly once, from an engine thread or,
 * when the sink already holds the slice, from the calling thread before this returns.
 */
void tomo_engine_request(tomo_engine *engine, int variant, int z, tomo_engine_done_fn done,
                         void *arg);

/*
 * Reconstructs slices [z0, z0 + nz) of a variant as one chunk and waits for them. out[i]
 * receives slice z0 + i (caller unrefs). For whole-volume work such as export: while the
 * chunk computes, the rows of [z0 + nz, z0 + 2 nz) are read ahead, so a caller that walks
 * the volume in order finds the next chunk's rows read.
 */
int tomo_engine_compute(tomo_engine *engine, int variant, int z0, int nz, tomo_slice **out,
                        tomo_error *err);

/* Counters for status displays. */
typedef struct tomo_engine_stats {
    uint64_t chunks;     /* chunks reconstructed */
    uint64_t slices;     /* slices reconstructed */
    uint64_t requests;   /* requests received */
    uint64_t joined;     /* requests that joined a computation already under way */
    uint64_t errors;     /* chunks that failed */
    uint64_t queued;     /* requests waiting now */
    double busy_seconds; /* time spent reconstructing */
    /* of which reading (and, on the CPU, normalising) detector rows, or waiting for them */
    double read_seconds;
    uint64_t read_ahead_used;    /* chunks whose rows had been read ahead */
    uint64_t read_ahead_dropped; /* reads ahead cancelled, failed or not wanted */
} tomo_engine_stats;

void tomo_engine_get_stats(tomo_engine *engine, tomo_engine_stats *stats);

/* Where chunks are reconstructed, e.g. "cpu (16 threads)" or "cuda:0 NVIDIA H100 (fast)". */
const char *tomo_engine_backend(const tomo_engine *engine);

/*
 * Stops the threads. Requests still waiting are answered with TOMO_E_CANCELLED. NULL allowed.
 */
void tomo_engine_destroy(tomo_engine *engine);

#endif
