#include "options.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char tomo_options_help[] =
    "Reconstruction options (-o name=value,...):\n"
    "  filter=chesler|shepp-logan|ram-lak  FBP filter (default chesler, a Hann-windowed ramp)\n"
    "  center=X               rotation axis in detector columns, 0-based (default: found from\n"
    "                         the views 180 degrees apart)\n"
    "  pixel_um=P             detector pixel size in micrometres; sets the cm^-1 scale (default "
    "1)\n"
    "  pad=auto|edge|zero     padding of rows before filtering; auto tests for truncation once\n"
    "  bin=B                  binned preview: slices of width/B pixels of B times the pixel\n"
    "                         size, each from the mean of B detector rows, rows/B slices; B\n"
    "                         divides the detector width (default 1; reconstructed on the CPU)\n"
    "  dtype=float32|uint16   sample type of slice and volume files (default float32)\n"
    "  range=LO:HI            uint16: the cm^-1 stored as 0 and 65535, values outside clipped\n"
    "                         (default: automatic, fixed at mount: the 0.1 and 99.9 percentiles\n"
    "                         of 5 sampled slices inside the circle, widened by 10 %% each side)\n"
    "  center_search=Z:FROM:TO:STEP  adds centre-search/: slice Z reconstructed at each centre\n"
    "                         from FROM to TO by STEP (detector columns), center_<c>.tif\n"
    "  floor=F                low-transmission floor in counts above dark (default 2)\n"
    "  black_fraction=R       share of clipped pixels that marks a line black (default 0.5)\n"
    "  format=NAME            scan format: spring8, dxchange, nxtomo or tiff-series\n"
    "                         (default: detected; docs/formats.md)\n"
    "  ram_cache=SIZE         memory for finished slices, e.g. 512M, 4G (default 1G)\n"
    "  cache=DIR|none         disk cache of finished slices, shared by every mount (default\n"
    "                         $XDG_CACHE_HOME/tomofs or ~/.cache/tomofs; export: none)\n"
    "  cache_size=SIZE        disk space the cache may fill, e.g. 50G (default 16G)\n"
    "  cache_level=L          zstd level of the disk cache, 1 to 3 (default 1)\n"
    "  no_cache               the same as cache=none\n"
    "  threads=N              CPU threads (default: all)\n"
    "  max_chunk=N            most slices reconstructed together (default 32)\n"
    "  rings=sort|all|large|dead|none  ring removal of rings-removed/ (default sort: Vo's\n"
    "                         algorithm 3; all: dead, large, then sorting; none: no folder)\n"
    "  ring_size=N|auto       median width of the sorting step (default auto: 21 for detectors\n"
    "                         wider than 2000 columns, 1 % of the width otherwise, at least 5)\n"
    "  ring_dim=1|2           median along the detector (1) or over size x size (2)\n"
    "  ring_snr=R, ring_la_size=N, ring_sm_size=N, ring_drop_ratio=R\n"
    "                         detection ratio, large-stripe median width, final sorting width and\n"
    "                         dropped share for rings=all/large/dead (defaults 3, 51, 21, 0.1)\n"
    "  device=auto|cpu|cuda:N where to reconstruct and denoise (default auto: the first GPU,\n"
    "                         else the CPU)\n"
    "  precision=fast|exact   GPU back-projection: fast packs eight slices in fp16 with fp32\n"
    "                         sums (relative RMS ~1e-4), exact is fp32 throughout (default fast)\n"
    "  model=FILE             Noise2Inverse model of denoised/ (default: the one tomofs train\n"
    "                         stored for this scan and these options, if any)\n"
    "  splits=K               interleaved projection subsets of Noise2Inverse (default 2; a\n"
    "                         model's own K wins)\n"
    "\n"
    "Every folder of slices is also one 3D image, volumes/FOLDER.nrrd: a 4096-byte NRRD\n"
    "header, then the slices' little-endian samples in order; a read computes only the slices\n"
    "it covers. ParaView opens it (File > Open), Fiji with File > Import > Nrrd, ImageJ with\n"
    "File > Import > Raw (offset 4096, little-endian, use virtual stack). Sizes, pixel size and\n"
    "slice spacing are in scan.json; docs/outputs.md has the details.\n";

int64_t tomo_parse_size(const char *text)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || !(v >= 0))
        return -1;
    double mult = 1;
    switch (*end) {
    case 'k':
    case 'K':
        mult = 1024.0;
        end++;
        break;
    case 'm':
    case 'M':
        mult = 1024.0 * 1024;
        end++;
        break;
    case 'g':
    case 'G':
        mult = 1024.0 * 1024 * 1024;
        end++;
        break;
    case 't':
    case 'T':
        mult = 1024.0 * 1024 * 1024 * 1024;
        end++;
        break;
    }
    if (*end == 'i' || *end == 'B')
        end++;
    if (*end == 'B')
        end++;
    if (*end)
        return -1;
    return (int64_t)(v * mult);
}

static int parse_double(const char *key, const char *value, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || end == value || *end || !isfinite(v)) {
        fprintf(stderr, "tomofs: option %s=%s: not a number\n", key, value);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_int(const char *key, const char *value, int lo, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < lo || v > 1 << 30) {
        fprintf(stderr, "tomofs: option %s=%s: expected an integer >= %d\n", key, value, lo);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int apply_cache_dir(const char *value, tomo_volume_options *opts)
{
    if (strcmp(value, "none") == 0 || strcmp(value, "off") == 0) {
        opts->cache_off = 1;
        return 0;
    }
    if (!value[0] || strlen(value) >= sizeof opts->cache_dir) {
        fprintf(stderr, "tomofs: option cache=%s: expected a folder or none\n", value);
        return -1;
    }
    snprintf(opts->cache_dir, sizeof opts->cache_dir, "%s", value);
    opts->cache_off = 0;
    return 0;
}

static int apply(const char *key, const char *value, tomo_volume_options *opts)
{
    tomo_recon_params *p = &opts->params;
    if (value) {
        tomo_error err;
        tomo_error_clear(&err);
        int r = tomo_rings_parse_option(&opts->rings, key, value, &err);
        if (r < 0) {
            fprintf(stderr, "tomofs: %s\n", err.message);
            return -1;
        }
        if (r == 0)
            return 0;
    }
    if (strcmp(key, "no_cache") == 0 && !value) {
        opts->cache_off = 1;
        return 0;
    }
    if (!value) {
        fprintf(stderr, "tomofs: option %s needs a value (%s=...)\n", key, key);
        return -1;
    }
    if (strcmp(key, "filter") == 0) {
        int f = tomo_filter_parse(value);
        if (f < 0) {
            fprintf(stderr, "tomofs: option filter=%s: expected chesler, shepp-logan or ram-lak\n",
                    value);
            return -1;
        }
        p->filter = (tomo_filter_kind)f;
        return 0;
    }
    if (strcmp(key, "center") == 0 || strcmp(key, "centre") == 0) {
        if (strcmp(value, "auto") == 0) {
            p->center = NAN;
            return 0;
        }
        return parse_double(key, value, &p->center);
    }
    if (strcmp(key, "pixel_um") == 0) {
        if (parse_double(key, value, &p->pixel_um) < 0)
            return -1;
        if (!(p->pixel_um > 0)) {
            fprintf(stderr, "tomofs: option pixel_um=%s: must be positive\n", value);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "pad") == 0) {
        if (strcmp(value, "auto") == 0)
            p->pad = TOMO_PAD_AUTO;
        else if (strcmp(value, "edge") == 0)
            p->pad = TOMO_PAD_EDGE;
        else if (strcmp(value, "zero") == 0)
            p->pad = TOMO_PAD_ZERO;
        else {
            fprintf(stderr, "tomofs: option pad=%s: expected auto, edge or zero\n", value);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "bin") == 0) {
        if (parse_int(key, value, 1, &p->bin) < 0)
            return -1;
        p->zbin = p->bin; /* the same binning along the slices */
        return 0;
    }
    if (strcmp(key, "dtype") == 0) {
        if (strcmp(value, "float32") == 0 || strcmp(value, "float") == 0)
            opts->dtype = TOMO_SAMPLE_FLOAT32;
        else if (strcmp(value, "uint16") == 0)
            opts->dtype = TOMO_SAMPLE_UINT16;
        else {
            fprintf(stderr, "tomofs: option dtype=%s: expected float32 or uint16\n", value);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "range") == 0) {
        char *end;
        errno = 0;
        double lo = strtod(value, &end);
        int ok = end != value && *end == ':' && isfinite(lo);
        const char *second = ok ? end + 1 : value;
        double hi = ok ? strtod(second, &end) : 0;
        ok = ok && end != second && *end == '\0' && isfinite(hi) && errno == 0;
        if (!ok || !(lo < hi)) {
            fprintf(stderr,
                    "tomofs: option range=%s: expected LO:HI in cm^-1 with LO < HI, e.g. "
                    "range=-0.5:3\n",
                    value);
            return -1;
        }
        opts->range_lo = lo;
        opts->range_hi = hi;
        return 0;
    }
    if (strcmp(key, "center_search") == 0 || strcmp(key, "centre_search") == 0) {
        tomo_error err;
        tomo_error_clear(&err);
        if (tomo_volume_parse_center_search(value, &opts->center_search, &err) < 0) {
            fprintf(stderr, "tomofs: option %s=%s: %s\n", key, value, err.message);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "floor") == 0) {
        if (parse_double(key, value, &p->prep.floor_counts) < 0)
            return -1;
        if (!(p->prep.floor_counts > 0)) {
            fprintf(stderr, "tomofs: option floor=%s: must be positive\n", value);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "black_fraction") == 0) {
        if (parse_double(key, value, &p->prep.black_fraction) < 0)
            return -1;
        if (!(p->prep.black_fraction > 0 && p->prep.black_fraction <= 1)) {
            fprintf(stderr, "tomofs: option black_fraction=%s: must be in (0, 1]\n", value);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "format") == 0) {
        snprintf(opts->format, sizeof opts->format, "%s", value);
        return 0;
    }
    if (strcmp(key, "ram_cache") == 0) {
        int64_t bytes = tomo_parse_size(value);
        if (bytes < 0) {
            fprintf(stderr, "tomofs: option ram_cache=%s: expected a size such as 512M or 4G\n",
                    value);
            return -1;
        }
        opts->ram_cache_bytes = (uint64_t)bytes;
        return 0;
    }
    if (strcmp(key, "cache") == 0)
        return apply_cache_dir(value, opts);
    if (strcmp(key, "cache_size") == 0) {
        int64_t bytes = tomo_parse_size(value);
        if (bytes < 0) {
            fprintf(stderr, "tomofs: option cache_size=%s: expected a size such as 50G\n", value);
            return -1;
        }
        opts->cache_bytes = (uint64_t)bytes;
        return 0;
    }
    if (strcmp(key, "cache_level") == 0) {
        if (parse_int(key, value, 1, &opts->cache_level) < 0)
            return -1;
        if (opts->cache_level > 3) {
            fprintf(stderr,
                    "tomofs: option cache_level=%s: expected 1, 2 or 3 (higher levels "
                    "gain about 2%% for many times the time)\n",
                    value);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "threads") == 0)
        return parse_int(key, value, 0, &opts->threads);
    if (strcmp(key, "max_chunk") == 0)
        return parse_int(key, value, 1, &opts->max_chunk);
    if (strcmp(key, "splits") == 0) {
        if (parse_int(key, value, 2, &opts->splits) < 0)
            return -1;
        if (opts->splits > TOMO_VOLUME_MAX_SPLITS) {
            fprintf(stderr, "tomofs: option splits=%s: expected 2 to %d\n", value,
                    TOMO_VOLUME_MAX_SPLITS);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "model") == 0) {
        if (!value[0] || strlen(value) >= sizeof opts->model) {
            fprintf(stderr, "tomofs: option model=%s: expected a model file\n", value);
            return -1;
        }
        snprintf(opts->model, sizeof opts->model, "%s", value);
        return 0;
    }
    if (strcmp(key, "device") == 0) {
        int index;
        if (strcmp(value, "auto") == 0)
            opts->device = TOMO_DEVICE_AUTO;
        else if (strcmp(value, "cpu") == 0)
            opts->device = TOMO_DEVICE_CPU;
        else if (strcmp(value, "cuda") == 0 || strcmp(value, "gpu") == 0)
            opts->device = 0;
        else if (sscanf(value, "cuda:%d", &index) == 1 && index >= 0)
            opts->device = index;
        else {
            fprintf(stderr, "tomofs: option device=%s: expected auto, cpu or cuda:N\n", value);
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "precision") == 0) {
        if (strcmp(value, "fast") == 0)
            opts->precision = TOMO_PRECISION_FAST;
        else if (strcmp(value, "exact") == 0)
            opts->precision = TOMO_PRECISION_EXACT;
        else {
            fprintf(stderr, "tomofs: option precision=%s: expected fast or exact\n", value);
            return -1;
        }
        return 0;
    }
    return 1; /* not ours */
}

int tomo_options_parse(const char *list, tomo_volume_options *opts, char *unknown,
                       size_t unknown_size)
{
    char *copy = strdup(list);
    if (!copy) {
        fprintf(stderr, "tomofs: out of memory\n");
        return -1;
    }
    int rc = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        char *value = NULL;
        if (eq) {
            *eq = '\0';
            value = eq + 1;
        }
        int r = apply(item, value, opts);
        if (r < 0) {
            rc = -1;
            break;
        }
        if (r > 0) {
            if (eq)
                *eq = '=';
            if (!unknown) {
                fprintf(stderr, "tomofs: unknown option '%s'\n", item);
                rc = -1;
                break;
            }
            size_t len = strlen(unknown);
            int n = snprintf(unknown + len, unknown_size - len, "%s%s", len ? "," : "", item);
            if (n < 0 || (size_t)n >= unknown_size - len) {
                fprintf(stderr, "tomofs: too many options\n");
                rc = -1;
                break;
            }
        }
    }
    free(copy);
    return rc;
}

tomo_volume *tomo_open_scan_argument(const char *arg, const tomo_volume_options *opts)
{
    char path[PATH_MAX];
    if (!realpath(arg, path)) {
        fprintf(stderr, "tomofs: %s: no such file or directory\n", arg);
        return NULL;
    }
    tomo_volume *vol;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_volume_open(path, opts, &vol, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        return NULL;
    }
    return vol;
}
