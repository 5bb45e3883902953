#include "h5io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/io.h"
#include "../common/hash.h"

/* Largest detector side accepted; beyond it a size is more likely damage than a detector. */
#define H5IO_MAX_SIDE (1 << 20)
/* Largest rank-1 metadata array (angles, image keys) read whole. */
#define H5IO_MAX_VECTOR (1 << 27)
/* Largest string attribute or dataset read. */
#define H5IO_MAX_STRING 65536
/* Largest buffer the direct chunk path allocates per read; beyond it H5Dread does the work. */
#define H5IO_MAX_DIRECT_BUFFER ((size_t)256 << 20)

/* ------------------------------------------------------------------------------------------ */
/* Lock and errors                                                                             */
/* ------------------------------------------------------------------------------------------ */

static pthread_mutex_t h5_mutex;
static pthread_once_t h5_once = PTHREAD_ONCE_INIT;
static _Thread_local int h5_quiet;

static void h5_init(void)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&h5_mutex, &attr);
    pthread_mutexattr_destroy(&attr);
}

void tomo_h5_lock(void)
{
    pthread_once(&h5_once, h5_init);
    pthread_mutex_lock(&h5_mutex);
    /* Thread-safe HDF5 builds keep the automatic printing per thread. */
    if (!h5_quiet) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        h5_quiet = 1;
    }
}

void tomo_h5_unlock(void)
{
    pthread_mutex_unlock(&h5_mutex);
}

typedef struct h5_reason {
    char text[200];
    int found;
} h5_reason;

static herr_t take_innermost(unsigned n, const H5E_error2_t *e, void *data)
{
    (void)n;
    h5_reason *r = data;
    if (r->found || !e)
        return 0;
    if (e->desc && e->desc[0]) {
        snprintf(r->text, sizeof r->text, "%s", e->desc);
        r->found = 1;
        return 0;
    }
    char minor[160];
    if (H5Eget_msg(e->min_num, NULL, minor, sizeof minor) > 0) {
        snprintf(r->text, sizeof r->text, "%s", minor);
        r->found = 1;
    }
    return 0;
}

/* The innermost reason on HDF5's error stack, printable; clears the stack. */
static void h5_take_reason(char *buf, size_t size)
{
    h5_reason r = {.found = 0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, take_innermost, &r);
    H5Eclear2(H5E_DEFAULT);
    size_t k = 0;
    for (size_t i = 0; r.found && r.text[i] && k + 1 < size; i++) {
        unsigned char c = (unsigned char)r.text[i];
        buf[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
    }
    if (size)
        buf[k] = '\0';
}

int tomo_h5_fail(tomo_error *err, int code, const char *fmt, ...)
{
    char msg[TOMO_ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char reason[200];
    h5_take_reason(reason, sizeof reason);
    if (reason[0])
        return tomo_error_set(err, code, "%s (HDF5: %s)", msg, reason);
    return tomo_error_set(err, code, "%s", msg);
}

/* ------------------------------------------------------------------------------------------ */
/* Files, objects, small values                                                                */
/* ------------------------------------------------------------------------------------------ */

int tomo_hdf5_file_detect(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    tomo_h5_lock();
    htri_t is = H5Fis_hdf5(path);
    H5Eclear2(H5E_DEFAULT);
    tomo_h5_unlock();
    return is > 0;
}

int tomo_h5_open_file(const char *path, hid_t *file, tomo_error *err)
{
    *file = H5I_INVALID_HID;
    /* The system's own words for a missing or unreadable file beat HDF5's. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    close(fd);
    if (!regular)
        return tomo_error_set(err, TOMO_E_IO, "%s: not a regular file", path);
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: not an HDF5 file", path);
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return tomo_h5_fail(err, TOMO_E_FORMAT, "%s: cannot open as HDF5", path);
    *file = f;
    return 0;
}

/* Why a link that exists cannot be followed: where it points. */
static void describe_dangling(hid_t file, const char *prefix, char *why, size_t size)
{
    H5L_info_t li;
    if (H5Lget_info(file, prefix, &li, H5P_DEFAULT) < 0) {
        snprintf(why, size, "%s cannot be opened", prefix);
        return;
    }
    size_t len = li.type == H5L_TYPE_HARD ? 0 : li.u.val_size;
    char *val = len > 0 && len < 65536 ? malloc(len) : NULL;
    if (val && H5Lget_val(file, prefix, val, len, H5P_DEFAULT) < 0) {
        free(val);
        val = NULL;
    }
    char reason[200];
    h5_take_reason(reason, sizeof reason);
    if (li.type == H5L_TYPE_SOFT && val) {
        snprintf(why, size, "%s is a link to %.*s, which does not exist", prefix, (int)len, val);
    } else if (li.type == H5L_TYPE_EXTERNAL && val) {
        const char *target_file = NULL, *target_obj = NULL;
        unsigned flags;
        if (H5Lunpack_elink_val(val, len, &flags, &target_file, &target_obj) >= 0 && target_file &&
            target_obj)
            snprintf(why, size, "%s is an external link to %s:%s, which cannot be opened", prefix,
                     target_file, target_obj);
        else
            snprintf(why, size, "%s is an unreadable external link", prefix);
    } else {
        snprintf(why, size, "%s cannot be opened%s%s", prefix, reason[0] ? ": " : "", reason);
    }
    H5Eclear2(H5E_DEFAULT);
    free(val);
}

H5O_type_t tomo_h5_object_type(hid_t file, const char *path, char *why, size_t why_size)
{
    char local[1];
    if (!why) {
        why = local;
        why_size = sizeof local;
    }
    why[0] = '\0';
    size_t n = strlen(path);
    if (n == 0 || n >= 4096 || path[0] != '/') {
        snprintf(why, why_size, "bad object path '%s'", path);
        return H5O_TYPE_UNKNOWN;
    }
    char prefix[4096];
    /* Each component is checked in turn, so the message names the first missing one. */
    for (size_t i = 1; i <= n; i++) {
        if (i < n && path[i] != '/')
            continue;
        if (path[i - 1] == '/')
            continue; /* "//" or a trailing slash */
        memcpy(prefix, path, i);
        prefix[i] = '\0';
        htri_t exists = H5Lexists(file, prefix, H5P_DEFAULT);
        if (exists <= 0) {
            H5Eclear2(H5E_DEFAULT);
            snprintf(why, why_size, "no %s", prefix);
            return H5O_TYPE_UNKNOWN;
        }
        htri_t resolves = H5Oexists_by_name(file, prefix, H5P_DEFAULT);
        if (resolves <= 0) {
            describe_dangling(file, prefix, why, why_size);
            return H5O_TYPE_UNKNOWN;
        }
    }
    hid_t obj = H5Oopen(file, path, H5P_DEFAULT);
    if (obj < 0) {
        char reason[200];
        h5_take_reason(reason, sizeof reason);
        snprintf(why, why_size, "%s cannot be opened%s%s", path, reason[0] ? ": " : "", reason);
        return H5O_TYPE_UNKNOWN;
    }
    H5I_type_t t = H5Iget_type(obj);
    H5Oclose(obj);
    if (t == H5I_GROUP)
        return H5O_TYPE_GROUP;
    if (t == H5I_DATASET)
        return H5O_TYPE_DATASET;
    snprintf(why, why_size, "%s is neither a group nor a dataset", path);
    return H5O_TYPE_UNKNOWN;
}

/* Reads the first string of an attribute (is_attr) or dataset into buf. */
static int read_first_string(hid_t obj, int is_attr, char *buf, size_t size)
{
    int ok = 0;
    hid_t type = is_attr ? H5Aget_type(obj) : H5Dget_type(obj);
    hid_t space = is_attr ? H5Aget_space(obj) : H5Dget_space(obj);
    hid_t mem = H5I_INVALID_HID;
    if (type < 0 || space < 0 || H5Tget_class(type) != H5T_STRING)
        goto out;
    hssize_t npoints = H5Sget_simple_extent_npoints(space);
    if (npoints < 1 || npoints > 64)
        goto out;
    mem = H5Tcopy(H5T_C_S1);
    /* HDF5 converts no strings between ASCII and UTF-8: read them in the file's own set. */
    if (mem < 0 || H5Tset_cset(mem, H5Tget_cset(type)) < 0)
        goto out;
    htri_t variable = H5Tis_variable_str(type);
    if (variable > 0) {
        char *ptrs[64] = {NULL};
        if (H5Tset_size(mem, H5T_VARIABLE) < 0)
            goto out;
        herr_t rc = is_attr ? H5Aread(obj, mem, ptrs)
                            : H5Dread(obj, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs);
        if (rc >= 0) {
            snprintf(buf, size, "%s", ptrs[0] ? ptrs[0] : "");
            ok = 1;
            for (hssize_t i = 0; i < npoints; i++)
                H5free_memory(ptrs[i]);
        }
    } else if (variable == 0) {
        size_t len = H5Tget_size(type);
        if (len == 0 || len > H5IO_MAX_STRING)
            goto out;
        char *tmp = calloc((size_t)npoints, len + 1);
        if (!tmp || H5Tset_size(mem, len) < 0) {
            free(tmp);
            goto out;
        }
        herr_t rc = is_attr ? H5Aread(obj, mem, tmp)
                            : H5Dread(obj, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, tmp);
        if (rc >= 0) {
            size_t k = 0;
            while (k < len && tmp[k] && k + 1 < size) {
                buf[k] = tmp[k];
                k++;
            }
            if (size)
                buf[k] = '\0';
            ok = 1;
        }
        free(tmp);
    }
out:
    if (mem >= 0)
        H5Tclose(mem);
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    H5Eclear2(H5E_DEFAULT);
    return ok;
}

int tomo_h5_string_attr(hid_t obj, const char *name, char *buf, size_t size)
{
    if (size)
        buf[0] = '\0';
    if (H5Aexists(obj, name) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    int ok = read_first_string(a, 1, buf, size);
    H5Aclose(a);
    return ok;
}

int tomo_h5_string_dataset(hid_t loc, const char *path, char *buf, size_t size)
{
    if (size)
        buf[0] = '\0';
    if (tomo_h5_object_type(loc, path, NULL, 0) != H5O_TYPE_DATASET)
        return 0;
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    if (d < 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    int ok = read_first_string(d, 0, buf, size);
    H5Dclose(d);
    return ok;
}

static const char *class_name(H5T_class_t c)
{
    switch (c) {
    case H5T_INTEGER:
        return "integers";
    case H5T_FLOAT:
        return "floating-point numbers";
    case H5T_STRING:
        return "strings";
    case H5T_COMPOUND:
        return "a compound type";
    case H5T_ENUM:
        return "an enumeration";
    case H5T_ARRAY:
        return "arrays";
    default:
        return "a non-numeric type";
    }
}

/* Rank and dimensions of a dataset; -1 on failure. */
static int dataset_shape(hid_t d, hsize_t dims[H5S_MAX_RANK])
{
    hid_t space = H5Dget_space(d);
    if (space < 0)
        return -1;
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank > 0 && H5Sget_simple_extent_dims(space, dims, NULL) < 0)
        rank = -1;
    H5Sclose(space);
    return rank;
}

static void shape_text(int rank, const hsize_t *dims, char *buf, size_t size)
{
    size_t k = (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < rank && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, "%s%llu", i ? ", " : "",
                              (unsigned long long)dims[i]);
    if (k < size)
        snprintf(buf + k, size - k, ")");
}

/* Opens a dataset, naming what is missing when it cannot. */
static int open_dataset(hid_t file, const char *master, const char *path, hid_t *d, tomo_error *err)
{
    char why[1024];
    H5O_type_t t = tomo_h5_object_type(file, path, why, sizeof why);
    if (t == H5O_TYPE_UNKNOWN)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s", master, why);
    if (t != H5O_TYPE_DATASET)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s is a group, expected a dataset", master,
                              path);
    *d = H5Dopen2(file, path, H5P_DEFAULT);
    if (*d < 0)
        return tomo_h5_fail(err, TOMO_E_FORMAT, "%s: %s: cannot open", master, path);
    return 0;
}

/*
 * HDF5 1.10 reads past its buffers when a compact or contiguous dataset stores fewer bytes
 * than its shape and type need (a damaged file); such a dataset is refused before any read.
 * A contiguous dataset that was never written stores nothing and reads as its fill value.
 */
static int check_storage(hid_t d, const char *master, const char *path, tomo_error *err)
{
    hid_t dcpl = H5Dget_create_plist(d);
    if (dcpl < 0)
        return tomo_h5_fail(err, TOMO_E_FORMAT, "%s: %s: unreadable storage properties", master,
                            path);
    H5D_layout_t layout = H5Pget_layout(dcpl);
    H5Pclose(dcpl);
    if (layout != H5D_COMPACT && layout != H5D_CONTIGUOUS)
        return 0;
    hid_t type = H5Dget_type(d), space = H5Dget_space(d);
    hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    hsize_t stored = H5Dget_storage_size(d);
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    H5Eclear2(H5E_DEFAULT);
    int unwritten = layout == H5D_CONTIGUOUS && stored == 0;
    if (n < 0 || size == 0 || (hsize_t)n > ((hsize_t)-1) / size ||
        (!unwritten && stored < (hsize_t)n * size))
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %s is damaged: %llu bytes stored for %lld values of %zu bytes",
                              master, path, (unsigned long long)stored, (long long)n, size);
    return 0;
}

/* More chunks than this in one request are not checked one by one (the probe still runs). */
#define H5IO_MAX_CHECKED_CHUNKS (1 << 20)

/*
 * HDF5 1.10 copies a whole chunk out of a buffer of the chunk's stored size when no filter is
 * in the pipeline, so an unfiltered chunk stored smaller than a chunk (damage) makes it read
 * past its buffer. Checks the stored chunks that the region [start, start + count) touches.
 */
static int check_chunks(hid_t d, const hsize_t *start, const hsize_t *count, const char *master,
                        const char *path, tomo_error *err)
{
    hid_t dcpl = H5Dget_create_plist(d), type = H5Dget_type(d);
    int rank = -1, ok = 1;
    hsize_t chunk[H5S_MAX_RANK];
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_nfilters(dcpl) == 0)
        rank = H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (type >= 0)
        H5Tclose(type);
    H5Eclear2(H5E_DEFAULT);
    if (rank < 1 || rank > 3 || size == 0)
        return 0;
    hsize_t first[3] = {0, 0, 0}, last[3] = {0, 0, 0}, expected = size;
    uint64_t total = 1;
    for (int i = 0; i < rank; i++) {
        if (chunk[i] == 0 || count[i] == 0)
            return 0;
        first[i] = start[i] / chunk[i];
        last[i] = (start[i] + count[i] - 1) / chunk[i];
        total *= (uint64_t)(last[i] - first[i] + 1);
        if (expected > ((hsize_t)1 << 40) / chunk[i] || total > H5IO_MAX_CHECKED_CHUNKS)
            return 0;
        expected *= chunk[i];
    }
    hsize_t c[3] = {first[0], first[1], first[2]};
    while (ok) {
        hsize_t coord[3] = {0, 0, 0};
        for (int i = 0; i < rank; i++)
            coord[i] = c[i] * chunk[i];
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t stored = 0;
        if (H5Dget_chunk_info_by_coord(d, coord, &mask, &addr, &stored) < 0)
            H5Eclear2(H5E_DEFAULT);
        else if (addr != HADDR_UNDEF && stored != expected)
            ok = 0;
        int i = rank - 1;
        while (i >= 0 && ++c[i] > last[i]) {
            c[i] = first[i];
            i--;
        }
        if (i < 0)
            break;
    }
    if (!ok)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %s is damaged: a chunk is not stored at its full size of %llu "
                              "bytes",
                              master, path, (unsigned long long)expected);
    return 0;
}

static int numeric_class(hid_t d, const char *master, const char *path, tomo_error *err)
{
    hid_t type = H5Dget_type(d);
    if (type < 0)
        return tomo_h5_fail(err, TOMO_E_FORMAT, "%s: %s: unreadable type", master, path);
    H5T_class_t c = H5Tget_class(type);
    H5Tclose(type);
    if (c != H5T_INTEGER && c != H5T_FLOAT)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s holds %s, expected numbers", master, path,
                              class_name(c));
    return 0;
}

int tomo_h5_read_vector(hid_t file, const char *master, const char *path, double **values, int *n,
                        tomo_error *err)
{
    *values = NULL;
    *n = 0;
    hid_t d = H5I_INVALID_HID;
    int rc = open_dataset(file, master, path, &d, err);
    if (rc < 0)
        return rc;
    hsize_t dims[H5S_MAX_RANK];
    int rank;
    double *v = NULL;
    if ((rc = numeric_class(d, master, path, err)) < 0 ||
        (rc = check_storage(d, master, path, err)) < 0)
        goto out;
    rank = dataset_shape(d, dims);
    if (rank != 1) {
        char shape[128] = "";
        if (rank > 0)
            shape_text(rank, dims, shape, sizeof shape);
        rc = tomo_error_set(err, TOMO_E_FORMAT,
                            "%s: %s has rank %d %s, expected one value per frame", master, path,
                            rank < 0 ? 0 : rank, shape);
        goto out;
    }
    if (dims[0] == 0 || dims[0] > H5IO_MAX_VECTOR) {
        rc = tomo_error_set(err, TOMO_E_FORMAT, "%s: %s holds %llu values", master, path,
                            (unsigned long long)dims[0]);
        goto out;
    }
    hsize_t zero[1] = {0};
    if ((rc = check_chunks(d, zero, dims, master, path, err)) < 0)
        goto out;
    v = malloc((size_t)dims[0] * sizeof *v);
    if (!v) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "%s: %s: out of memory", master, path);
        goto out;
    }
    if (H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0) {
        rc = tomo_h5_fail(err, TOMO_E_IO, "%s: %s: cannot read", master, path);
        goto out;
    }
    *values = v;
    *n = (int)dims[0];
    v = NULL;
out:
    free(v);
    H5Dclose(d);
    return rc;
}

int tomo_h5_dataset_file(hid_t file, const char *path, char *buf, size_t size)
{
    hid_t d = H5Dopen2(file, path, H5P_DEFAULT);
    if (d < 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    ssize_t n = H5Fget_name(d, buf, size);
    H5Dclose(d);
    H5Eclear2(H5E_DEFAULT);
    return n > 0 && (size_t)n < size;
}

int tomo_h5_same_object(hid_t a, hid_t b)
{
#if H5_VERSION_GE(1, 12, 0)
    H5O_info2_t ia, ib;
    if (H5Oget_info3(a, &ia, H5O_INFO_BASIC) < 0 || H5Oget_info3(b, &ib, H5O_INFO_BASIC) < 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    int cmp = 1;
    if (ia.fileno != ib.fileno || H5Otoken_cmp(a, &ia.token, &ib.token, &cmp) < 0)
        return 0;
    return cmp == 0;
#else
    H5O_info_t ia, ib;
    if (H5Oget_info2(a, &ia, H5O_INFO_BASIC) < 0 || H5Oget_info2(b, &ib, H5O_INFO_BASIC) < 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    return ia.fileno == ib.fileno && ia.addr == ib.addr;
#endif
}

uint64_t tomo_h5_hash_file(uint64_t h, const char *path, int64_t *mtime)
{
    struct stat st;
    h = tomo_hash_bytes(h, path, strlen(path) + 1);
    if (stat(path, &st) < 0)
        return tomo_hash_u64(h, 0);
    h = tomo_hash_u64(h, (uint64_t)st.st_size);
    h = tomo_hash_u64(h, (uint64_t)st.st_mtim.tv_sec);
    h = tomo_hash_u64(h, (uint64_t)st.st_mtim.tv_nsec);
    if (mtime && (int64_t)st.st_mtim.tv_sec > *mtime)
        *mtime = (int64_t)st.st_mtim.tv_sec;
    return h;
}

/* ------------------------------------------------------------------------------------------ */
/* Stacks of frames                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* The stored type as one the direct path converts; bytes == 0 when only HDF5 can. */
static tomo_sample_format stored_format(hid_t type)
{
    tomo_sample_format f = {TOMO_SAMPLE_UINT, 0, 0};
    H5T_class_t c = H5Tget_class(type);
    size_t size = H5Tget_size(type);
    H5T_order_t order = H5Tget_order(type);
    if (order != H5T_ORDER_LE && order != H5T_ORDER_BE)
        return f;
    if (c == H5T_INTEGER && (size == 1 || size == 2 || size == 4 || size == 8)) {
        /* Integers with padding bits or an offset are left to HDF5. */
        if (H5Tget_precision(type) != 8 * size || H5Tget_offset(type) != 0)
            return f;
        f.kind = H5Tget_sign(type) == H5T_SGN_2 ? TOMO_SAMPLE_INT : TOMO_SAMPLE_UINT;
        f.bytes = (int)size;
        f.big_endian = order == H5T_ORDER_BE;
        return f;
    }
    if (c == H5T_FLOAT) {
        static const struct {
            hid_t *id;
            int bytes, be;
        } ieee[] = {{&H5T_IEEE_F32LE_g, 4, 0},
                    {&H5T_IEEE_F32BE_g, 4, 1},
                    {&H5T_IEEE_F64LE_g, 8, 0},
                    {&H5T_IEEE_F64BE_g, 8, 1}};
        for (size_t i = 0; i < sizeof ieee / sizeof ieee[0]; i++) {
            if (H5Tequal(type, *ieee[i].id) > 0) {
                f.kind = TOMO_SAMPLE_FLOAT;
                f.bytes = ieee[i].bytes;
                f.big_endian = ieee[i].be;
                return f;
            }
        }
    }
    return f;
}

static int read_through_hdf5(tomo_h5_stack *st, int index, int z0, int nz, float *dst,
                             tomo_error *err)
{
    tomo_h5_lock();
    int rc;
    hid_t fs = H5Dget_space(st->dset);
    hsize_t start[3] = {(hsize_t)index, (hsize_t)z0, 0};
    hsize_t count[3] = {1, (hsize_t)nz, (hsize_t)st->width};
    hsize_t mdims[1] = {(hsize_t)nz * (hsize_t)st->width};
    hid_t ms = H5Screate_simple(1, mdims, NULL);
    rc = check_chunks(st->dset, start, count, st->master, st->path, err);
    if (rc == 0 && (fs < 0 || ms < 0 ||
                    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                    H5Dread(st->dset, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, dst) < 0))
        rc = tomo_h5_fail(err, TOMO_E_IO, "%s: %s: cannot read frame %d, rows %d-%d", st->master,
                          st->path, index, z0, z0 + nz - 1);
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    tomo_h5_unlock();
    return rc;
}

static int short_read(const tomo_h5_stack *st, int index, tomo_error *err)
{
    return tomo_error_set(err, TOMO_E_IO,
                          "%s: %s: short read of frame %d from %s (file truncated?)", st->master,
                          st->path, index, st->file);
}

static int read_contiguous(tomo_h5_stack *st, int64_t base, int index, int z0, int nz, float *dst,
                           tomo_error *err)
{
    size_t s = (size_t)st->fmt.bytes;
    size_t n = (size_t)nz * (size_t)st->width;
    int64_t element = ((int64_t)index * st->rows + z0) * (int64_t)st->width;
    unsigned char *raw;
    unsigned char *owned = NULL;
    size_t at = tomo_samples_raw_offset(&st->fmt, n);
    if (at != (size_t)-1) {
        raw = (unsigned char *)dst + at;
    } else {
        raw = owned = malloc(n * s);
        if (!raw)
            return tomo_error_set(err, TOMO_E_NOMEM, "%s: %s: out of memory", st->master, st->path);
    }
    ssize_t got = tomo_pread_full(st->fd, raw, n * s, base + st->offset + element * (int64_t)s);
    int rc = 0;
    if (got < 0)
        rc = tomo_error_set(err, TOMO_E_IO, "%s: %s: read failed: %s", st->file, st->path,
                            strerror(errno));
    else if ((size_t)got < n * s)
        rc = short_read(st, index, err);
    else
        tomo_samples_to_float(&st->fmt, raw, n, dst);
    free(owned);
    return rc;
}

/* File offset of the chunk starting at (f0, r0, x0), or -1 when it is not stored plainly. */
static int64_t chunk_address(tomo_h5_stack *st, int64_t f0, int64_t r0, int64_t x0)
{
    int64_t slot = -1;
    if (st->chunk_at && r0 == 0 && x0 == 0) {
        slot = f0 / st->chunk[0];
        if (slot < st->n_chunk_at) {
            int64_t v = __atomic_load_n(&st->chunk_at[slot], __ATOMIC_RELAXED);
            if (v > 0)
                return v;
        } else {
            slot = -1;
        }
    }
    hsize_t coord[3] = {(hsize_t)f0, (hsize_t)r0, (hsize_t)x0};
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0;
    tomo_h5_lock();
    herr_t e = H5Dget_chunk_info_by_coord(st->dset, coord, &mask, &addr, &size);
    if (e < 0)
        H5Eclear2(H5E_DEFAULT);
    tomo_h5_unlock();
    hsize_t whole = (hsize_t)st->chunk[0] * (hsize_t)st->chunk[1] * (hsize_t)st->chunk[2] *
                    (hsize_t)st->fmt.bytes;
    /* A chunk of another size is damage; H5Dread then reports it (see check_chunks). */
    if (e < 0 || addr == HADDR_UNDEF || mask != 0 || addr > (haddr_t)INT64_MAX / 2 || size != whole)
        return -1;
    if (slot >= 0)
        __atomic_store_n(&st->chunk_at[slot], (int64_t)addr, __ATOMIC_RELAXED);
    return (int64_t)addr;
}

/*
 * Reads through the chunk index and pread. Returns 1 (nothing read) when a chunk is missing
 * (it holds the fill value, which only HDF5 knows) or the buffer would be too large.
 */
static int read_chunked(tomo_h5_stack *st, int64_t base, int index, int z0, int nz, float *dst,
                        tomo_error *err)
{
    int64_t c0 = st->chunk[0], c1 = st->chunk[1], c2 = st->chunk[2];
    size_t s = (size_t)st->fmt.bytes;
    int64_t span_rows = c1 < nz ? c1 : nz;
    size_t buf_size = (size_t)span_rows * (size_t)c2 * s;
    if (buf_size > H5IO_MAX_DIRECT_BUFFER)
        return 1;
    unsigned char *buf = malloc(buf_size);
    if (!buf)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: %s: out of memory", st->master, st->path);
    int64_t f0 = index - index % c0, fi = index % c0;
    int rc = 0;
    for (int64_t cz = z0 / c1; cz <= (z0 + nz - 1) / c1 && rc == 0; cz++) {
        int64_t r_start = cz * c1 > z0 ? cz * c1 : z0;
        int64_t r_end = (cz + 1) * c1 < z0 + nz ? (cz + 1) * c1 : z0 + nz;
        for (int64_t cx = 0; cx * c2 < st->width && rc == 0; cx++) {
            int64_t addr = chunk_address(st, f0, cz * c1, cx * c2);
            if (addr < 0) {
                rc = 1;
                break;
            }
            int64_t x_start = cx * c2;
            int64_t ncols = st->width - x_start < c2 ? st->width - x_start : c2;
            size_t len = (size_t)(r_end - r_start) * (size_t)c2 * s;
            int64_t off = base + addr + ((fi * c1 + (r_start - cz * c1)) * c2) * (int64_t)s;
            ssize_t got = tomo_pread_full(st->fd, buf, len, off);
            if (got < 0) {
                rc = tomo_error_set(err, TOMO_E_IO, "%s: %s: read failed: %s", st->file, st->path,
                                    strerror(errno));
                break;
            }
            if ((size_t)got < len) {
                rc = short_read(st, index, err);
                break;
            }
            for (int64_t r = r_start; r < r_end; r++)
                tomo_samples_to_float(&st->fmt, buf + (size_t)((r - r_start) * c2) * s,
                                      (size_t)ncols,
                                      dst + (size_t)(r - z0) * (size_t)st->width + (size_t)x_start);
        }
    }
    free(buf);
    return rc;
}

static int read_direct(tomo_h5_stack *st, int index, int z0, int nz, float *dst, tomo_error *err)
{
    if (st->chunked)
        return read_chunked(st, st->base, index, z0, nz, dst, err);
    return read_contiguous(st, st->base, index, z0, nz, dst, err);
}

int tomo_h5_stack_read(tomo_h5_stack *st, int index, int z0, int nz, float *dst, tomo_error *err)
{
    if (index < 0 || index >= st->frames || z0 < 0 || nz <= 0 || z0 > st->rows - nz)
        return tomo_error_set(err, TOMO_E_INTERNAL, "%s: %s: frame %d rows %d+%d outside (%d, %d)",
                              st->master, st->path, index, z0, nz, st->frames, st->rows);
    if (st->fd >= 0) {
        int rc = read_direct(st, index, z0, nz, dst, err);
        if (rc <= 0)
            return rc;
    }
    return read_through_hdf5(st, index, z0, nz, dst, err);
}

/* Equal floats, NaN equal to NaN. */
static int same_floats(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i] && !(isnan(a[i]) && isnan(b[i])))
            return 0;
    }
    return 1;
}

/* Size of the user block of the file that holds the stack (addresses may count from its end). */
static int64_t user_block(const tomo_h5_stack *st)
{
    hsize_t size = 0;
    hid_t f = H5Iget_file_id(st->dset);
    hid_t fcpl = f >= 0 ? H5Fget_create_plist(f) : H5I_INVALID_HID;
    if (fcpl < 0 || H5Pget_userblock(fcpl, &size) < 0)
        size = 0;
    if (fcpl >= 0)
        H5Pclose(fcpl);
    if (f >= 0)
        H5Fclose(f);
    H5Eclear2(H5E_DEFAULT);
    return size < (hsize_t)INT64_MAX / 4 ? (int64_t)size : 0;
}

/*
 * Keeps the direct path only when it reads what HDF5 reads, on the first row of the first
 * frame, with addresses counted from the start of the file or from the end of its user block:
 * this covers whichever convention the HDF5 version at hand uses.
 */
static void verify_direct(tomo_h5_stack *st)
{
    size_t n = (size_t)st->width;
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    tomo_error e;
    tomo_error_clear(&e);
    int ok = want && got && read_through_hdf5(st, 0, 0, 1, want, &e) == 0;
    int64_t bases[2] = {0, user_block(st)};
    int matched = 0;
    for (int b = 0; ok && !matched && b < (bases[1] > 0 ? 2 : 1); b++) {
        st->base = bases[b];
        tomo_error_clear(&e);
        matched = read_direct(st, 0, 0, 1, got, &e) == 0 && same_floats(want, got, n);
    }
    free(want);
    free(got);
    if (!matched) {
        close(st->fd);
        st->fd = -1;
        st->base = 0;
        free(st->chunk_at);
        st->chunk_at = NULL;
        st->n_chunk_at = 0;
    }
}

static void setup_direct(tomo_h5_stack *st, hid_t dcpl)
{
    if (st->fmt.bytes == 0 || st->filtered || H5Pget_external_count(dcpl) != 0)
        return;
    if (!st->chunked) {
        haddr_t off = H5Dget_offset(st->dset);
        if (off == HADDR_UNDEF || off > (haddr_t)INT64_MAX / 2) {
            H5Eclear2(H5E_DEFAULT);
            return;
        }
        st->offset = (int64_t)off;
    } else if (st->chunk[1] >= st->rows && st->chunk[2] >= st->width) {
        int64_t n = (st->frames + st->chunk[0] - 1) / st->chunk[0];
        if (n <= (1 << 24)) {
            st->chunk_at = calloc((size_t)n, sizeof *st->chunk_at);
            st->n_chunk_at = st->chunk_at ? n : 0;
        }
    }
    st->fd = open(st->file, O_RDONLY | O_CLOEXEC);
    if (st->fd >= 0)
        verify_direct(st);
}

static int check_stack_shape(tomo_h5_stack *st, tomo_error *err)
{
    hsize_t dims[H5S_MAX_RANK];
    int rank = dataset_shape(st->dset, dims);
    if (rank < 0)
        return tomo_h5_fail(err, TOMO_E_FORMAT, "%s: %s: unreadable shape", st->master, st->path);
    char shape[160] = "()";
    if (rank > 0)
        shape_text(rank, dims, shape, sizeof shape);
    if (rank != 3)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %s has rank %d %s, expected 3 (frames, rows, columns)",
                              st->master, st->path, rank, shape);
    if (dims[0] == 0 || dims[1] == 0 || dims[2] == 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s is empty %s", st->master, st->path,
                              shape);
    if (dims[0] > INT_MAX || dims[1] > H5IO_MAX_SIDE || dims[2] > H5IO_MAX_SIDE)
        return tomo_error_set(err, TOMO_E_UNSUPPORTED, "%s: %s is %s, larger than supported",
                              st->master, st->path, shape);
    st->frames = (int)dims[0];
    st->rows = (int)dims[1];
    st->width = (int)dims[2];
    return 0;
}

static int inspect_stack(tomo_h5_stack *st, tomo_error *err)
{
    int rc = numeric_class(st->dset, st->master, st->path, err);
    if (rc < 0 || (rc = check_stack_shape(st, err)) < 0 ||
        (rc = check_storage(st->dset, st->master, st->path, err)) < 0)
        return rc;
    hid_t type = H5Dget_type(st->dset);
    if (type < 0)
        return tomo_h5_fail(err, TOMO_E_FORMAT, "%s: %s: unreadable type", st->master, st->path);
    st->fmt = stored_format(type);
    if (st->fmt.bytes)
        tomo_sample_format_name(&st->fmt, st->type_name, sizeof st->type_name);
    else
        snprintf(st->type_name, sizeof st->type_name, "%s%zu (converted by HDF5)",
                 H5Tget_class(type) == H5T_FLOAT ? "float" : "int", 8 * H5Tget_size(type));
    H5Tclose(type);
    hid_t dcpl = H5Dget_create_plist(st->dset);
    if (dcpl < 0)
        return tomo_h5_fail(err, TOMO_E_FORMAT, "%s: %s: unreadable storage properties", st->master,
                            st->path);
    H5D_layout_t layout = H5Pget_layout(dcpl);
    st->chunked = layout == H5D_CHUNKED;
    st->filtered = H5Pget_nfilters(dcpl) > 0;
    if (st->chunked) {
        hsize_t c[3] = {0, 0, 0};
        if (H5Pget_chunk(dcpl, 3, c) != 3 || c[0] == 0 || c[1] == 0 || c[2] == 0) {
            st->filtered = 1; /* unusual chunking: leave it all to HDF5 */
            c[0] = c[1] = c[2] = 1;
        }
        for (int i = 0; i < 3; i++)
            st->chunk[i] = (int64_t)c[i];
    }
    if (layout == H5D_CONTIGUOUS || layout == H5D_CHUNKED)
        setup_direct(st, dcpl);
    H5Pclose(dcpl);
    H5Eclear2(H5E_DEFAULT);
    return 0;
}

int tomo_h5_stack_open(hid_t file, const char *master, const char *path, tomo_h5_stack *st,
                       tomo_error *err)
{
    memset(st, 0, sizeof *st);
    st->dset = H5I_INVALID_HID;
    st->fd = -1;
    snprintf(st->master, sizeof st->master, "%s", master);
    snprintf(st->path, sizeof st->path, "%s", path);
    int rc = open_dataset(file, master, path, &st->dset, err);
    if (rc < 0)
        return rc;
    ssize_t n = H5Fget_name(st->dset, st->file, sizeof st->file);
    if (n <= 0 || (size_t)n >= sizeof st->file)
        snprintf(st->file, sizeof st->file, "%s", master);
    rc = inspect_stack(st, err);
    if (rc < 0)
        tomo_h5_stack_close(st);
    return rc;
}

void tomo_h5_stack_describe(const tomo_h5_stack *st, char *buf, size_t size)
{
    size_t k = (size_t)snprintf(buf, size, "%s %s (%d, %d, %d)", st->path, st->type_name,
                                st->frames, st->rows, st->width);
    if (k < size && strcmp(st->file, st->master) != 0) {
        const char *slash = strrchr(st->file, '/');
        k += (size_t)snprintf(buf + k, size - k, " in %s", slash ? slash + 1 : st->file);
    }
    if (k < size && st->chunked)
        k += (size_t)snprintf(buf + k, size - k, ", chunks (%lld, %lld, %lld)",
                              (long long)st->chunk[0], (long long)st->chunk[1],
                              (long long)st->chunk[2]);
    if (k < size && st->filtered)
        snprintf(buf + k, size - k, ", filtered");
}

void tomo_h5_stack_close(tomo_h5_stack *st)
{
    if (st->fd >= 0)
        close(st->fd);
    st->fd = -1;
    free(st->chunk_at);
    st->chunk_at = NULL;
    if (st->dset > 0) {
        tomo_h5_lock();
        H5Dclose(st->dset);
        tomo_h5_unlock();
    }
    st->dset = H5I_INVALID_HID;
}

/* ------------------------------------------------------------------------------------------ */
/* Scan reader                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static int h5_read_rows(void *reader, tomo_frame_kind kind, int index, int z0, int nz, float *dst,
                        tomo_error *err)
{
    tomo_h5_reader *r = reader;
    if ((int)kind < 0 || (int)kind > 2 || index < 0 || index >= r->kind[kind].count)
        return tomo_error_set(err, TOMO_E_INTERNAL, "hdf5 reader: no frame %d of kind %d", index,
                              (int)kind);
    int s = r->kind[kind].stack[index];
    if (s < 0 || s >= r->n_stacks)
        return tomo_error_set(err, TOMO_E_INTERNAL, "hdf5 reader: frame %d of kind %d unmapped",
                              index, (int)kind);
    return tomo_h5_stack_read(&r->stack[s], r->kind[kind].frame[index], z0, nz, dst, err);
}

void tomo_h5_reader_free(tomo_h5_reader *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_stacks; i++)
        tomo_h5_stack_close(&r->stack[i]);
    for (int k = 0; k < 3; k++) {
        free(r->kind[k].stack);
        free(r->kind[k].frame);
    }
    if (r->file > 0) {
        tomo_h5_lock();
        H5Fclose(r->file);
        H5Eclear2(H5E_DEFAULT);
        tomo_h5_unlock();
    }
    free(r);
}

static void h5_close(void *reader)
{
    tomo_h5_reader_free(reader);
}

int tomo_h5_reader_map(tomo_h5_reader *r, tomo_frame_kind kind, int count)
{
    size_t n = count > 0 ? (size_t)count : 1;
    r->kind[kind].stack = calloc(n, sizeof(int));
    r->kind[kind].frame = calloc(n, sizeof(int));
    if (!r->kind[kind].stack || !r->kind[kind].frame)
        return -1;
    r->kind[kind].count = count;
    return 0;
}

const tomo_scan_reader_ops tomo_h5_reader_ops = {h5_read_rows, h5_close};

/* ------------------------------------------------------------------------------------------ */
/* Dry run in a child process                                                                  */
/* ------------------------------------------------------------------------------------------ */

#define PROBE_FAILED  3
#define PROBE_TIMEOUT 120 /* seconds; opening a real scan takes well under one */

/* What the child sends back: the error code, then the message. */
typedef struct probe_report {
    int code;
    char message[TOMO_ERROR_MESSAGE_MAX];
} probe_report;

/* Reads the two ends of the first and the last frame of every kind. */
static int probe_reads(const tomo_scan *scan, tomo_error *err)
{
    float *row = malloc((size_t)scan->width * sizeof *row);
    if (!row)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", scan->path);
    int counts[3] = {scan->n_proj, scan->n_flat, scan->n_dark};
    int rc = 0;
    for (int k = 0; k < 3 && rc == 0; k++) {
        for (int which = 0; which < 2 && rc == 0 && counts[k] > 0; which++) {
            int index = which ? counts[k] - 1 : 0;
            rc = tomo_scan_read_rows(scan, (tomo_frame_kind)k, index, 0, 1, row, err);
            if (rc == 0)
                rc = tomo_scan_read_rows(scan, (tomo_frame_kind)k, index, scan->rows - 1, 1, row,
                                         err);
        }
    }
    free(row);
    return rc;
}

static _Noreturn void probe_child(int fd, const char *path, tomo_h5_open_fn open_fn, pid_t parent,
                                  int timeout)
{
    /* A crash here is expected to happen sometimes; it must not leave a core file behind. */
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    /* An endless loop in HDF5 must not outlive the dry run, whatever happens to the parent. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(PROBE_FAILED);
    alarm((unsigned)timeout + 5);
    probe_report rep = {0, ""};
    tomo_error e;
    tomo_error_clear(&e);
    tomo_scan *scan = NULL;
    int rc = open_fn(path, &scan, &e);
    if (rc == 0)
        rc = probe_reads(scan, &e);
    if (rc < 0) {
        rep.code = e.code != TOMO_OK ? e.code : -rc;
        snprintf(rep.message, sizeof rep.message, "%s", e.message);
    }
    (void)tomo_write_full(fd, &rep, sizeof rep); /* a failure reads as a dead child */
    /* No cleanup: the parent only needs the verdict, and _exit skips HDF5's exit handlers. */
    _exit(rc == 0 ? 0 : PROBE_FAILED);
}

static int probe_timeout(void)
{
    const char *env = getenv("TOMO_HDF5_PROBE_TIMEOUT");
    int t = env ? atoi(env) : 0;
    return t > 0 ? t : PROBE_TIMEOUT;
}

/* Collects the child's report; returns bytes read, or -1 when the time ran out. */
static ssize_t probe_collect(int fd, probe_report *rep, int timeout)
{
    size_t got = 0;
    int waited = 0;
    while (got < sizeof *rep) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int n = poll(&pfd, 1, 1000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0) {
            if (++waited >= timeout)
                return -1;
            continue;
        }
        ssize_t r = read(fd, (char *)rep + got, sizeof *rep - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int tomo_h5_open_checked(const char *path, tomo_h5_open_fn open_fn, tomo_scan **out,
                         tomo_error *err)
{
    const char *env = getenv("TOMO_HDF5_PROBE");
    int timeout = probe_timeout();
    pid_t parent = getpid();
    int fds[2];
    if ((env && strcmp(env, "0") == 0) || pipe2(fds, O_CLOEXEC) < 0)
        return open_fn(path, out, err);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return open_fn(path, out, err);
    }
    if (pid == 0) {
        close(fds[0]);
        probe_child(fds[1], path, open_fn, parent, timeout);
    }
    close(fds[1]);
    probe_report rep;
    memset(&rep, 0, sizeof rep);
    ssize_t got = probe_collect(fds[0], &rep, timeout);
    close(fds[0]);
    if (got < 0)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (got < 0)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: reading it with the HDF5 library took more than %d s: the "
                              "file is damaged",
                              path, timeout);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && got == (ssize_t)sizeof rep)
        return open_fn(path, out, err);
    if (WIFEXITED(status) && WEXITSTATUS(status) == PROBE_FAILED && got == (ssize_t)sizeof rep) {
        rep.message[sizeof rep.message - 1] = '\0';
        int code = rep.code > 0 && rep.code <= TOMO_E_CANCELLED ? rep.code : TOMO_E_FORMAT;
        return tomo_error_set(err, code, "%s", rep.message);
    }
    if (WIFSIGNALED(status))
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: the HDF5 library crashed reading it (signal %d): the file is "
                              "damaged",
                              path, WTERMSIG(status));
    return tomo_error_set(err, TOMO_E_FORMAT,
                          "%s: the HDF5 library failed reading it (exit status %d): the file is "
                          "damaged",
                          path, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}
