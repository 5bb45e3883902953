/*
 * fs/volume.h - a scan as the filesystem presents it: folders of slice files, their names,
 * sizes and bytes, and scan.json.
 *
 * A volume is opened in two steps because a daemon must not fork with threads running:
 * tomo_volume_open() validates the scan and resolves every parameter (centre, padding) on the
 * calling thread, so errors reach the terminal before anything is mounted;
 * tomo_volume_start() then starts the engine and the cache, after daemonizing.
 * The export command uses the same functions, so exported files equal served files byte for
 * byte.
 */
#ifndef TOMO_VOLUME_H
#define TOMO_VOLUME_H

#include <stddef.h>
#include <stdint.h>

#include "../cache/ram_cache.h"
#include "../cache/store.h"
#include "../recon/engine.h"
#include "nrrd.h"
#include "tiff.h"

/* What a user can set with -o. */
typedef struct tomo_volume_options {
    char format[32];          /* scan format name; empty = detect */
    tomo_recon_params params; /* filter, centre (NaN = auto), pixel size, pad, bin, prep */
    tomo_rings_params rings;  /* ring removal of rings-removed/ (method NONE: no such folder) */
    uint64_t ram_cache_bytes; /* RAM tier budget */
    char cache_dir[4096];     /* disk tier folder; empty = default (absolute once opened) */
    int cache_off;            /* 1: no disk tier (-o cache=none) */
    int gpu_at_first_use;     /* 1: GPU buffers taken per folder when first used (export) */
    uint64_t cache_bytes;     /* disk tier capacity */
    int cache_level;          /* zstd level of the disk tier */
    int threads;              /* CPU threads, 0 = all */
    int max_chunk;            /* slices per chunk at most */
    int device;               /* TOMO_DEVICE_AUTO, TOMO_DEVICE_CPU or a CUDA device index */
    tomo_precision precision; /* GPU back-projection: fast (packed fp16) or exact (fp32) */
    tomo_sample dtype;        /* sample type of every slice and volume file */
    double range_lo;          /* uint16: the cm^-1 of 0 and 65535; NaN = automatic */
    double range_hi;
    tomo_center_sweep center_search; /* count > 0: the centre-search/ folder */
    int splits;       /* K, Noise2Inverse projection subsets; a loaded model's K wins */
    char model[4096]; /* denoising model file; empty = the default place for the scan */
    int model_off;    /* 1: look for no model; denoised/ holds its README (training) */
} tomo_volume_options;

void tomo_volume_options_default(tomo_volume_options *opts);

/* Most Noise2Inverse splits, K. */
#define TOMO_VOLUME_MAX_SPLITS 16

/* slices, rings-removed, K splits, denoised, and room for more folders */
#define TOMO_VOLUME_MAX_VARIANTS 24

/*
 * One set of slices: a folder of the mount, or an internal one (a Noise2Inverse split) that
 * is cached and computed like a folder but not listed.
 */
typedef struct tomo_volume_variant {
    char name[32];            /* folder name, e.g. "slices"; "split_0_of_2" for a split */
    int hidden;               /* 1: internal, not in the mount (splits) */
    tomo_recon_params params; /* resolved */
    char params_text[512];    /* tomo_recon_params_text() */
    uint64_t key;             /* hash of the scan fingerprint and params_text */
    int size;                 /* slice side, pixels */
    uint64_t file_size;       /* bytes of each slice file */
    int n_slices;             /* slice files: detector rows / zbin, or the sweep's centres */
    tomo_sample dtype;        /* of the files; the slices themselves are float */
    double lo, hi;            /* uint16: the cm^-1 of 0 and 65535 */
    double pixel_um;          /* output pixel: detector pixel x bin */
    double spacing_um;        /* between slices: detector pixel x zbin */
    double origin_um[3];      /* centre of pixel (0, 0) of slice 0, see tomo_nrrd_info */
    int range_automatic;      /* uint16: lo and hi came from tomo_volume_auto_range() */
    char output_text[128];    /* "" for float32, else "dtype=uint16 range=lo:hi" */
    uint64_t file_key;        /* of the files' bytes: key, or a hash of key and output_text */
    char volume_name[48];     /* volumes/<name>.nrrd, or "" when the folder has no volume file */
    uint64_t volume_size;     /* bytes of the volume file */
} tomo_volume_variant;

typedef struct tomo_volume {
    tomo_scan *scan;
    tomo_volume_options opts;
    int center_automatic; /* the centre was found, not given */
    int n_variants;
    tomo_volume_variant variants[TOMO_VOLUME_MAX_VARIANTS];
    int name_digits; /* digits in slice file names */
    char *scan_json;
    size_t scan_json_len;
    tomo_ram_cache *ram;
    tomo_engine *engine;
    tomo_store *store;                          /* disk tier; NULL when off or unusable */
    int store_handle[TOMO_VOLUME_MAX_VARIANTS]; /* each variant's handle in the store */
    struct tomo_volume_loads *loads;            /* slices being read from the store */
    /*
     * Noise2Inverse: the K split variants are consecutive, from split_variant0; each has the
     * parameters of base_variant (rings-removed/, or slices/ with rings=none) on every K-th
     * projection. denoised_variant is the denoised/ folder, -1 while no model is loaded.
     */
    int n_splits;
    int split_variant0;
    int base_variant;
    int denoised_variant;
    struct tomo_volume_denoiser *denoiser; /* the model, its executor and thread; or NULL */
    /*
     * Where the model is, or would be stored (tomofs train writes there): opts.model made
     * absolute, or the default place; set even with model_off; "" when no cache folder is
     * known.
     */
    char model_path[4096];
    char *denoised_readme; /* denoised/README.txt while there is no model */
    size_t denoised_readme_len;
} tomo_volume;

/*
 * Opens and validates the scan and resolves the parameters, including the absolute cache
 * folder (the daemon changes to / when it detaches). Starts no thread.
 *
 * Denoising: unless opts->model_off, the model is looked for at opts->model or, when that is
 * empty, at its default place (tomo_model_default_path: the cache folder's models/, named by
 * the scan fingerprint and the base variant's name and key), and vol->model_path says where.
 * A model found is loaded and checked here (its file, that it was trained on this scan and
 * base variant, its split and normalisation), so a bad one fails the open with one message;
 * its K replaces opts->splits, and denoised/ becomes a folder of slices whose key holds the
 * model id. No model at the default place is not an error: denoised/ then holds a README.
 */
int tomo_volume_open(const char *scan_path, const tomo_volume_options *opts, tomo_volume **out,
                     tomo_error *err);

/*
 * Starts the caches and the engine threads. A disk tier that cannot be opened logs one
 * warning and is left out: the volume still serves, from the RAM tier and the engine.
 */
int tomo_volume_start(tomo_volume *vol, tomo_error *err);

/* Index of the variant folder called `name`, or -1. Internal variants are not found. */
int tomo_volume_find_variant(const tomo_volume *vol, const char *name);

/*
 * Index of the variant of Noise2Inverse split k (0 <= k < vol->n_splits): the reconstruction
 * from projections k, k + K, k + 2K, ... with the parameters of the base variant. -1 when k
 * is out of range.
 */
int tomo_volume_split_variant(const tomo_volume *vol, int k);

/* "slice_00042.tif" for z = 42 (zero-padded to name_digits). */
void tomo_volume_slice_name(const tomo_volume *vol, int z, char *buf, size_t size);

/* The slice index named by `name`, or -1 if it names no slice of this volume. */
int tomo_volume_parse_slice_name(const tomo_volume *vol, const char *name);

/*
 * Name of file z of a variant's folder: tomo_volume_slice_name(), or for centre-search/
 * "center_1203.50.tif", the centre with the sweep's decimals (at least two), its integer part
 * zero-padded so that names sort as the centres do.
 */
void tomo_volume_file_name(const tomo_volume *vol, int variant, int z, char *buf, size_t size);

/* The file index named by `name` in a variant's folder, or -1. */
int tomo_volume_parse_file_name(const tomo_volume *vol, int variant, const char *name);

/* The TOMO_TIFF_DATA_OFFSET header bytes of slice z of a variant. */
int tomo_volume_slice_header(const tomo_volume *vol, int variant, int z,
                             unsigned char header[TOMO_TIFF_DATA_OFFSET], tomo_error *err);

/*
 * Gets the pixels of slice z of a variant: from the RAM tier at once; else from the disk
 * tier, decoded on the calling thread (concurrent requests for a slice being decoded wait for
 * that one decode) and kept in the RAM tier; else from the engine. `done` is called exactly
 * once (see tomo_engine_done_fn). Requires tomo_volume_start().
 */
void tomo_volume_get(tomo_volume *vol, int variant, int z, tomo_engine_done_fn done, void *arg);

/*
 * tomo_volume_get for a read of bytes [offset, offset + length) of the slice file. A slice
 * decoded from the disk tier reaches `done` as soon as the pixels of that range are decoded,
 * while the rest may still be decoding: `done` must use that range only.
 */
void tomo_volume_read(tomo_volume *vol, int variant, int z, uint64_t offset, size_t length,
                      tomo_engine_done_fn done, void *arg);

/*
 * Gets slice z of a variant and waits for it: tomo_volume_get made blocking, for tools
 * (training, export) that want pixels one slice at a time through the RAM tier, the disk
 * tier and the engine, caching what is computed as a mount would. On success *slice is a new
 * reference (release it with tomo_slice_unref) and 0 is returned; on failure *slice is NULL
 * and err says why. Safe from any number of threads; never call it from an engine callback
 * (a `done` function), which would wait on itself. Requires tomo_volume_start().
 */
int tomo_volume_fetch(tomo_volume *vol, int variant, int z, tomo_slice **slice, tomo_error *err);

/*
 * Slices [z0, z0 + nz) of a variant, waited for, for whole-volume work such as export: one
 * chunk of the engine (tomo_engine_compute), or for denoised/ one slice after another through
 * tomo_volume_fetch. out[i] receives slice z0 + i (caller unrefs). The caller keeps the range
 * inside the variant.
 */
int tomo_volume_compute(tomo_volume *vol, int variant, int z0, int nz, tomo_slice **out,
                        tomo_error *err);

/*
 * Copies bytes [offset, offset + length) of the slice file into dst, from its header and
 * pixels (converted to uint16 for such a variant). Returns the number of bytes copied (less
 * than length only at the end of the file).
 */
size_t tomo_volume_file_bytes(const tomo_volume *vol, int variant, const unsigned char *header,
                              const tomo_slice *slice, uint64_t offset, size_t length,
                              unsigned char *dst);

/* The TOMO_NRRD_HEADER_BYTES header bytes of a variant's volume file. */
int tomo_volume_nrrd_header(const tomo_volume *vol, int variant,
                            unsigned char header[TOMO_NRRD_HEADER_BYTES], tomo_error *err);

/*
 * Answer to tomo_volume_read_volume: `length` bytes at `data` (valid during the call only),
 * or data NULL and err saying why.
 */
typedef void (*tomo_volume_bytes_fn)(void *arg, const unsigned char *data, size_t length,
                                     const tomo_error *err);

/*
 * Reads bytes [offset, offset + length) of a variant's volume file (the caller keeps the range
 * inside the file): gets the slices the range covers, and only those, through
 * tomo_volume_read (RAM tier, disk tier, engine), then calls `done` exactly once with the
 * bytes, from whichever thread delivered the last slice. A range within the header needs no
 * slice and is answered at once.
 */
void tomo_volume_read_volume(tomo_volume *vol, int variant, uint64_t offset, size_t length,
                             tomo_volume_bytes_fn done, void *arg);

/*
 * The automatic uint16 range from sampled values (any order; sorted in place): lo and hi
 * are the 0.1th and 99.9th percentiles (nearest rank below), widened by a tenth of their
 * distance on each side and rounded outwards to three significant digits of the widened
 * distance, then to what "%.6g" prints. Deterministic; lo < hi always.
 */
void tomo_volume_auto_range(float *values, size_t n, double *lo, double *hi);

/*
 * Parses "Z:FROM:TO:STEP" (slice Z, centres FROM to TO by STEP, in detector columns, at most
 * six decimals and 10000 centres) into a sweep. Returns 0, or a negative TOMO_E_* code with err
 * saying what is wrong.
 */
int tomo_volume_parse_center_search(const char *text, tomo_center_sweep *sweep, tomo_error *err);

/*
 * Stops computing: the denoiser and the engine finish, and every request still waiting is
 * answered with TOMO_E_CANCELLED. Nothing may be requested afterwards. The filesystem calls
 * it when the kernel has gone; tomo_volume_close() calls it too.
 */
void tomo_volume_stop(tomo_volume *vol);

/* Stops everything and frees the volume. NULL allowed. */
void tomo_volume_close(tomo_volume *vol);

#endif
