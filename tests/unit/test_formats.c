/*
 * Unit tests of the Data Exchange, NXtomo and TIFF-series readers and of format detection
 * (recon/dxchange.c, recon/nxtomo.c, recon/h5io.c, recon/tiffseries.c, recon/tiffframe.c,
 * recon/samples.c, recon/scan.c), on small synthetic files written here with libhdf5 and
 * libtiff.
 */
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>
#include <tiffio.h>

#include "../../recon/h5io.h"
#include "../../recon/samples.h"
#include "../../recon/scan.h"
#include "../../recon/tiffseries.h"
#define FIXTURE_TMP_NAME "tomo_fmt"
#include "fixture.h"

/* A count that differs per frame, row and column; below 2^15 so every type holds it. */
static double pix(int id, int x, int y)
{
    return (double)((id * 977 + y * 131 + x * 17 + 5) % 30000) + 100.0;
}

/* Every frame of a scan holds pix(id) where id = frame_id(kind, number). */
static int frame_id(tomo_frame_kind kind, int number)
{
    return (int)kind * 1000 + number;
}

/* Reads every frame, in bands of 1 and 2 rows and whole, and compares with pix(). */
static int frames_match(const tomo_scan *scan, const int *proj_id, const int *flat_id,
                        const int *dark_id)
{
    int w = scan->width, h = scan->rows;
    float *buf = malloc((size_t)w * (size_t)h * sizeof *buf);
    int ok = 1;
    const int *ids[3] = {proj_id, flat_id, dark_id};
    int counts[3] = {scan->n_proj, scan->n_flat, scan->n_dark};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < counts[k]; i++) {
            for (int z0 = 0; z0 < h; z0++) {
                for (int nz = 1; nz <= h - z0; nz += (nz == 2 ? h : 1)) {
                    tomo_error err;
                    tomo_error_clear(&err);
                    if (tomo_scan_read_rows(scan, (tomo_frame_kind)k, i, z0, nz, buf, &err) < 0) {
                        fprintf(stderr, "read %d/%d rows %d+%d: %s\n", k, i, z0, nz, err.message);
                        ok = 0;
                        continue;
                    }
                    for (int y = 0; y < nz; y++) {
                        for (int x = 0; x < w; x++) {
                            double want = pix(ids[k][i], x, z0 + y);
                            if (buf[(size_t)y * w + x] != (float)want) {
                                if (ok)
                                    fprintf(stderr, "kind %d frame %d (%d, %d): %g, expected %g\n",
                                            k, i, x, z0 + y, buf[(size_t)y * w + x], want);
                                ok = 0;
                            }
                        }
                    }
                }
            }
        }
    }
    free(buf);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Writing HDF5                                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct h5_layout {
    hid_t type;       /* file type, e.g. H5T_STD_U16LE */
    hsize_t chunk[3]; /* {0} = contiguous */
    int deflate;      /* compression level, 0 = none */
} h5_layout;

static const h5_layout PLAIN_U16 = {0, {0, 0, 0}, 0};

static hid_t layout_type(const h5_layout *l)
{
    return l->type ? l->type : H5T_STD_U16LE;
}

static hid_t create_file(const char *path, hsize_t user_block)
{
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    if (user_block)
        H5Pset_userblock(fcpl, user_block);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    H5Pclose(fcpl);
    if (f < 0) {
        fprintf(stderr, "cannot create %s\n", path);
        exit(1);
    }
    return f;
}

static hid_t intermediate_groups(void)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    return lcpl;
}

/* Writes n frames of h x w holding pix(first_id + i). */
static void write_stack(hid_t loc, const char *path, int n, int h, int w, int first_id,
                        const h5_layout *l)
{
    hsize_t dims[3] = {(hsize_t)n, (hsize_t)h, (hsize_t)w};
    hid_t space = H5Screate_simple(3, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (l->chunk[0]) {
        H5Pset_chunk(dcpl, 3, l->chunk);
        if (l->deflate)
            H5Pset_deflate(dcpl, (unsigned)l->deflate);
    }
    hid_t lcpl = intermediate_groups();
    hid_t d = H5Dcreate2(loc, path, layout_type(l), space, lcpl, dcpl, H5P_DEFAULT);
    double *v = malloc((size_t)n * h * w * sizeof *v);
    for (int i = 0; i < n; i++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                v[((size_t)i * h + y) * w + x] = pix(first_id + i, x, y);
    if (d < 0 || H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    free(v);
    H5Dclose(d);
    H5Pclose(lcpl);
    H5Pclose(dcpl);
    H5Sclose(space);
}

static void write_vector(hid_t loc, const char *path, const double *v, int n, hid_t type)
{
    hsize_t dims[1] = {(hsize_t)n};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t lcpl = intermediate_groups();
    hid_t d = H5Dcreate2(loc, path, type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    H5Dclose(d);
    H5Pclose(lcpl);
    H5Sclose(space);
}

/* Attributes as h5py writes Python strings (variable-length UTF-8) instead of fixed ASCII. */
static int attrs_vlen_utf8;

static void write_string_attr(hid_t loc, const char *obj_path, const char *name, const char *value)
{
    hid_t obj = H5Oopen(loc, obj_path, H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    if (attrs_vlen_utf8) {
        H5Tset_size(type, H5T_VARIABLE);
        H5Tset_cset(type, H5T_CSET_UTF8);
    } else {
        H5Tset_size(type, strlen(value) + 1);
    }
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attrs_vlen_utf8)
        H5Awrite(a, type, &value);
    else
        H5Awrite(a, type, value);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
    H5Oclose(obj);
}

static void make_group(hid_t loc, const char *path, const char *nx_class)
{
    if (H5Lexists(loc, path, H5P_DEFAULT) <= 0) {
        hid_t lcpl = intermediate_groups();
        hid_t g = H5Gcreate2(loc, path, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        H5Gclose(g);
        H5Pclose(lcpl);
    }
    if (nx_class)
        write_string_attr(loc, path, "NX_class", nx_class);
}

/* ------------------------------------------------------------------------------------------ */
/* Data Exchange                                                                               */
/* ------------------------------------------------------------------------------------------ */

#define DX_N 6
#define DX_H 3
#define DX_W 5

/* Angles given out of order, so the reader's sorting shows. */
static const double DX_THETA[DX_N] = {0.0, 36.0, 72.0, 144.0, 108.0, 180.0};

typedef struct dx_opts {
    h5_layout data;
    const char *units; /* NULL = no attribute */
    int radians;
    int no_dark;
    hsize_t user_block;
} dx_opts;

static void write_dx(const char *path, const dx_opts *o)
{
    hid_t f = create_file(path, o->user_block);
    write_stack(f, "/exchange/data", DX_N, DX_H, DX_W, frame_id(TOMO_FRAME_PROJECTION, 0),
                &o->data);
    write_stack(f, "/exchange/data_white", 2, DX_H, DX_W, frame_id(TOMO_FRAME_FLAT, 0), &PLAIN_U16);
    if (!o->no_dark)
        write_stack(f, "/exchange/data_dark", 3, DX_H, DX_W, frame_id(TOMO_FRAME_DARK, 0),
                    &PLAIN_U16);
    double theta[DX_N];
    for (int i = 0; i < DX_N; i++)
        theta[i] = o->radians ? DX_THETA[i] * M_PI / 180.0 : DX_THETA[i];
    write_vector(f, "/exchange/theta", theta, DX_N, H5T_IEEE_F64LE);
    if (o->units)
        write_string_attr(f, "/exchange/theta", "units", o->units);
    H5Fclose(f);
}

/* Frame ids in the scan's order: projections sorted by angle. */
static void dx_ids(int *proj, int *flat, int *dark)
{
    static const int order[DX_N] = {0, 1, 2, 4, 3, 5};
    for (int m = 0; m < DX_N; m++)
        proj[m] = frame_id(TOMO_FRAME_PROJECTION, order[m]);
    for (int f = 0; f < 2; f++)
        flat[f] = frame_id(TOMO_FRAME_FLAT, f);
    for (int d = 0; d < 3; d++)
        dark[d] = frame_id(TOMO_FRAME_DARK, d);
}

/* 1 when frames are read with pread, 0 through H5Dread, -1 when not an HDF5 scan. */
static int reads_directly(const tomo_scan *scan, int stack)
{
    if (scan->ops != &tomo_h5_reader_ops)
        return -1;
    const tomo_h5_reader *r = scan->reader;
    return r->stack[stack].fd >= 0;
}

static void check_dx(const dx_opts *o, int direct, const char *what)
{
    char dir[64], path[512];
    make_dir(dir);
    path_of(path, sizeof path, dir, "scan.h5");
    write_dx(path, o);
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_open(path, NULL, &scan, &err), 0);
    if (!scan) {
        fprintf(stderr, "%s: %s\n", what, err.message);
        remove_dir(dir);
        return;
    }
    CHECK(strcmp(scan->format, "dxchange") == 0);
    CHECK_INT(scan->width, DX_W);
    CHECK_INT(scan->rows, DX_H);
    CHECK_INT(scan->n_proj, DX_N);
    CHECK_INT(scan->n_flat, 2);
    CHECK_INT(scan->n_flat_groups, 1);
    CHECK_INT(scan->n_dark, o->no_dark ? 0 : 3);
    for (int m = 0; m < DX_N; m++)
        CHECK_NEAR(scan->proj_angle_deg[m], 36.0 * m, 1e-9);
    CHECK_INT(scan->proj_frame[3], 4);
    CHECK_INT(reads_directly(scan, 0), direct);
    int proj[DX_N], flat[2], dark[3];
    dx_ids(proj, flat, dark);
    if (!frames_match(scan, proj, flat, dark)) {
        fprintf(stderr, "%s: values differ\n", what);
        CHECK(0);
    }
    CHECK_CONTAINS(scan->source, "/exchange/data ");
    CHECK_CONTAINS(scan->angle_source, "/exchange/theta");
    CHECK_CONTAINS(scan->angle_source, o->radians ? "radians" : "degrees");
    CHECK(strcmp(scan->time_basis, "none") == 0);
    if (o->no_dark)
        CHECK_CONTAINS(scan->source, "dark taken as 0");
    tomo_scan_close(scan);
    remove_dir(dir);
}

static void test_dxchange_layouts(void)
{
    dx_opts o = {PLAIN_U16, "degrees", 0, 0, 0};
    check_dx(&o, 1, "uint16 contiguous");
    o.data.type = H5T_IEEE_F32BE;
    o.units = NULL;
    check_dx(&o, 1, "float32 big-endian, degrees by magnitude");
    o.data.type = H5T_STD_I32LE;
    o.radians = 1;
    check_dx(&o, 1, "int32, radians by magnitude");
    o.units = "rad";
    o.data.type = H5T_IEEE_F64LE;
    o.data.chunk[0] = 1;
    o.data.chunk[1] = DX_H;
    o.data.chunk[2] = DX_W;
    check_dx(&o, 1, "float64 chunked by frame, radians by attribute");
    o.radians = 0;
    o.units = "degree";
    o.data.type = H5T_STD_U16BE;
    o.data.chunk[0] = 4;
    o.data.chunk[1] = 2;
    o.data.chunk[2] = 2;
    check_dx(&o, 1, "uint16 big-endian, partial chunks (4, 2, 2)");
    o.data.deflate = 4;
    check_dx(&o, 0, "deflate chunks: through H5Dread");
    o.data = PLAIN_U16;
    o.user_block = 512;
    check_dx(&o, 1, "user block of 512 bytes");
    o.user_block = 0;
    o.no_dark = 1;
    check_dx(&o, 1, "no data_dark");
}

static void test_dxchange_errors(void)
{
    char dir[64], path[512];
    make_dir(dir);
    path_of(path, sizeof path, dir, "scan.h5");

    /* missing theta */
    hid_t f = create_file(path, 0);
    write_stack(f, "/exchange/data", 4, 3, 5, 0, &PLAIN_U16);
    write_stack(f, "/exchange/data_white", 1, 3, 5, 0, &PLAIN_U16);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "scan.h5: no projection angles", "/exchange/theta");

    /* theta of the wrong length */
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    double th[5] = {0, 45, 90, 135, 180};
    write_vector(f, "/exchange/theta", th, 5, H5T_IEEE_F64LE);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "/exchange/theta holds 5 angles",
                     "/exchange/data holds 4 projections");

    /* a NaN angle */
    f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "/exchange/theta", H5P_DEFAULT);
    th[2] = NAN;
    write_vector(f, "/exchange/theta", th, 4, H5T_IEEE_F64LE);
    H5Fclose(f);
    check_open_fails(path, "dxchange", TOMO_E_FORMAT, "/exchange/theta[2] is nan", "scan.h5");

    /* flats of another shape */
    f = create_file(path, 0);
    write_stack(f, "/exchange/data", 4, 3, 5, 0, &PLAIN_U16);
    write_stack(f, "/exchange/data_white", 1, 3, 6, 0, &PLAIN_U16);
    write_vector(f, "/exchange/theta", th, 4, H5T_IEEE_F64LE);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "/exchange/data_white frames are 3 x 6",
                     "/exchange/data frames are 3 x 5");

    /* no flats */
    f = create_file(path, 0);
    write_stack(f, "/exchange/data", 4, 3, 5, 0, &PLAIN_U16);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "no /exchange/data_white", "flat");

    /* wrong rank */
    f = create_file(path, 0);
    write_vector(f, "/exchange/data", th, 4, H5T_IEEE_F64LE);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "/exchange/data has rank 1 (4)", "expected 3");

    /* empty data */
    f = create_file(path, 0);
    write_stack(f, "/exchange/data", 0, 3, 5, 0, &PLAIN_U16);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "/exchange/data is empty (0, 3, 5)", "");

    /* strings instead of numbers */
    f = create_file(path, 0);
    hid_t lcpl = intermediate_groups();
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 4);
    hsize_t dims[3] = {2, 2, 2};
    hid_t space = H5Screate_simple(3, dims, NULL);
    hid_t d = H5Dcreate2(f, "/exchange/data", st, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(space);
    H5Tclose(st);
    H5Pclose(lcpl);
    H5Fclose(f);
    check_open_fails(path, "dxchange", TOMO_E_FORMAT, "/exchange/data holds strings",
                     "expected numbers");

    /* not HDF5 at all */
    write_text(dir, "scan.h5", "this is not HDF5\n");
    check_open_fails(path, NULL, TOMO_E_FORMAT, "scan.h5: not an HDF5 file", "");
    check_open_fails(path, "dxchange", TOMO_E_FORMAT, "scan.h5: not an HDF5 file", "");
    unlink(path);
    check_open_fails(path, "dxchange", TOMO_E_IO, "scan.h5: cannot open", "No such file");

    /* an HDF5 file without /exchange/data, forced as DXchange */
    f = create_file(path, 0);
    make_group(f, "/entry", "NXentry");
    H5Fclose(f);
    check_open_fails(path, "dxchange", TOMO_E_FORMAT, "not a Data Exchange file", "no /exchange");
    remove_dir(dir);
}

/* ------------------------------------------------------------------------------------------ */
/* NXtomo                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Frames in acquisition order: flats, a dark, projections, an invalid frame, flats, a dark. */
static const int NX_KEYS[] = {1, 1, 2, 0, 0, 0, 0, 3, 0, 1, 1, 2};
#define NX_FRAMES ((int)(sizeof NX_KEYS / sizeof NX_KEYS[0]))
#define NX_H      4
#define NX_W      3

typedef struct nx_opts {
    int external;     /* data in sub/frames.h5 behind an external link */
    int diad;         /* Diamond DIAD layout: NXdetector "imaging", angles in NXdata */
    int radians;      /* angles in radians without units */
    int key_value;    /* if >= 0, frame 4's key is this */
    int no_key;       /* no image_key */
    int no_angles;    /* no angles */
    int nan_at;       /* frame whose angle is NaN, or -1 */
    int short_angles; /* one angle too few */
    h5_layout data;
} nx_opts;

static const nx_opts NX_DEFAULT = {0, 0, 0, -1, 0, 0, -1, 0, {0, {0, 0, 0}, 0}};

/* The angle of frame i: projections at 0, 45, ... 180 (out of order), others at -1. */
static double nx_angle(int i)
{
    static const double proj_angles[] = {0, 45, 135, 90, 180};
    int m = 0;
    for (int k = 0; k < i; k++)
        m += NX_KEYS[k] == 0;
    return NX_KEYS[i] == 0 ? proj_angles[m] : -1.0;
}

static void write_nx(const char *dir, const nx_opts *o)
{
    char master[512], sub[512];
    path_of(master, sizeof master, dir, "scan.nxs");
    hid_t f = create_file(master, 0);
    const char *det = o->diad ? "/entry/instrument/imaging" : "/entry/instrument/detector";
    char data_path[256];
    snprintf(data_path, sizeof data_path, "%s/data", det);
    make_group(f, "/entry", "NXentry");
    make_group(f, "/entry/instrument", "NXinstrument");
    make_group(f, det, "NXdetector");
    make_group(f, "/entry/sample", "NXsample");
    if (o->external) {
        path_of(sub, sizeof sub, dir, "sub");
        mkdir(sub, 0755);
        path_of(sub, sizeof sub, dir, "sub/frames.h5");
        hid_t g = create_file(sub, 0);
        write_stack(g, "/entry/detector/detector", NX_FRAMES, NX_H, NX_W, 0, &o->data);
        H5Fclose(g);
        H5Lcreate_external("sub/frames.h5", "/entry/detector/detector", f, data_path, H5P_DEFAULT,
                           H5P_DEFAULT);
    } else {
        write_stack(f, data_path, NX_FRAMES, NX_H, NX_W, 0, &o->data);
    }
    double keys[NX_FRAMES], angles[NX_FRAMES];
    for (int i = 0; i < NX_FRAMES; i++) {
        keys[i] = NX_KEYS[i];
        angles[i] = nx_angle(i) * (o->radians ? M_PI / 180.0 : 1.0);
    }
    if (o->key_value >= 0)
        keys[4] = o->key_value;
    if (o->nan_at >= 0)
        angles[o->nan_at] = NAN;
    char key_path[256];
    snprintf(key_path, sizeof key_path, "%s/image_key", det);
    if (!o->no_key)
        write_vector(f, key_path, keys, NX_FRAMES, H5T_STD_I32LE);
    int n_angles = NX_FRAMES - (o->short_angles ? 1 : 0);
    if (o->diad) {
        /* the NXdata group shows the same frames through a second link */
        make_group(f, "/entry/imaging", "NXdata");
        write_string_attr(f, "/entry/imaging", "signal", "data");
        if (o->external)
            H5Lcreate_external("sub/frames.h5", "/entry/detector/detector", f,
                               "/entry/imaging/data", H5P_DEFAULT, H5P_DEFAULT);
        else
            H5Lcreate_hard(f, data_path, f, "/entry/imaging/data", H5P_DEFAULT, H5P_DEFAULT);
        if (!o->no_angles)
            write_vector(f, "/entry/imaging/gts_theta_value", angles, n_angles, H5T_IEEE_F64LE);
        /* a decoy: an NXdata group of other frames with its own angles */
        make_group(f, "/entry/other", "NXdata");
        write_vector(f, "/entry/other/rotation_angle", angles, n_angles, H5T_IEEE_F64LE);
    } else if (!o->no_angles) {
        write_vector(f, "/entry/sample/rotation_angle", angles, n_angles, H5T_IEEE_F64LE);
        if (!o->radians)
            write_string_attr(f, "/entry/sample/rotation_angle", "units", "degrees");
    }
    H5Fclose(f);
}

static void nx_ids(int *proj, int *flat, int *dark)
{
    /* projections sorted by angle: frames 3 (0), 4 (45), 6 (90), 5 (135), 8 (180) */
    static const int proj_frames[] = {3, 4, 6, 5, 8};
    for (int m = 0; m < 5; m++)
        proj[m] = proj_frames[m];
    static const int flat_frames[] = {0, 1, 9, 10};
    for (int i = 0; i < 4; i++)
        flat[i] = flat_frames[i];
    dark[0] = 2;
    dark[1] = 11;
}

static void check_nx(const nx_opts *o, const char *what)
{
    char dir[64], path[512], cwd[512];
    make_dir(dir);
    write_nx(dir, o);
    path_of(path, sizeof path, dir, "scan.nxs");
    /* External links must resolve from the master's folder, not from where we are. */
    if (!getcwd(cwd, sizeof cwd) || chdir("/") != 0)
        CHECK(0);
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_open(path, NULL, &scan, &err), 0);
    if (!scan) {
        fprintf(stderr, "%s: %s\n", what, err.message);
        goto out;
    }
    CHECK(strcmp(scan->format, "nxtomo") == 0);
    CHECK_INT(scan->width, NX_W);
    CHECK_INT(scan->rows, NX_H);
    CHECK_INT(scan->n_proj, 5);
    CHECK_INT(scan->n_flat, 4);
    CHECK_INT(scan->n_dark, 2);
    CHECK_INT(scan->n_flat_groups, 2);
    static const int groups[] = {0, 0, 1, 1};
    static const double flat_time[] = {0, 1, 9, 10};
    for (int i = 0; i < 4; i++) {
        CHECK_INT(scan->flat_group[i], groups[i]);
        CHECK_NEAR(scan->flat_time[i], flat_time[i], 0);
    }
    CHECK_INT(scan->dark_frame[0], 2);
    CHECK_INT(scan->dark_frame[1], 11);
    for (int m = 0; m < 5; m++)
        CHECK_NEAR(scan->proj_angle_deg[m], 45.0 * m, 1e-9);
    CHECK_INT(scan->proj_frame[2], 6);
    CHECK_NEAR(scan->proj_time[2], 6, 0);
    int proj[5], flat[4], dark[2];
    nx_ids(proj, flat, dark);
    if (!frames_match(scan, proj, flat, dark)) {
        fprintf(stderr, "%s: values differ\n", what);
        CHECK(0);
    }
    CHECK(strcmp(scan->time_basis, "frame index") == 0);
    CHECK_CONTAINS(scan->source, "1 invalid frames (image_key 3) skipped");
    CHECK_CONTAINS(scan->source, "4 flats in 2 groups (frames 0-1, 9-10)");
    CHECK_CONTAINS(scan->source, "2 darks (frames 2, 11)");
    if (o->external)
        CHECK_CONTAINS(scan->source, "in frames.h5");
    CHECK_CONTAINS(scan->angle_source,
                   o->diad ? "/entry/imaging/gts_theta_value" : "/entry/sample/rotation_angle");
    CHECK_CONTAINS(scan->angle_source, o->radians ? "radians" : "degrees");
    tomo_scan_close(scan);
out:
    if (chdir(cwd) != 0)
        CHECK(0);
    remove_dir(dir);
}

static void test_nxtomo(void)
{
    nx_opts o = NX_DEFAULT;
    check_nx(&o, "standard NXtomo");
    o.external = 1;
    check_nx(&o, "external link to the frames");
    o.data.chunk[0] = 1;
    o.data.chunk[1] = NX_H;
    o.data.chunk[2] = NX_W;
    check_nx(&o, "external link, chunked frames");
    o.radians = 1;
    o.data.deflate = 1;
    check_nx(&o, "external link, compressed, radians");
    o = NX_DEFAULT;
    o.diad = 1;
    check_nx(&o, "DIAD layout");
    attrs_vlen_utf8 = 1;
    check_nx(&o, "DIAD layout, classes and units as variable-length UTF-8 strings");
    o = NX_DEFAULT;
    check_nx(&o, "standard NXtomo, variable-length UTF-8 strings");
    attrs_vlen_utf8 = 0;
    o.diad = 1;
    o.external = 1;
    o.data.type = H5T_IEEE_F32LE;
    check_nx(&o, "DIAD layout, external float32 frames");
    /* A NaN angle on a frame that is not a projection does no harm. */
    o = NX_DEFAULT;
    o.nan_at = 0;
    check_nx(&o, "NaN angle of a flat");
}

static void check_nx_fails(const nx_opts *o, const char *want1, const char *want2)
{
    char dir[64], path[512];
    make_dir(dir);
    write_nx(dir, o);
    path_of(path, sizeof path, dir, "scan.nxs");
    check_open_fails(path, NULL, TOMO_E_FORMAT, want1, want2);
    remove_dir(dir);
}

static void test_nxtomo_errors(void)
{
    nx_opts o = NX_DEFAULT;
    o.key_value = 7;
    check_nx_fails(&o, "/entry/instrument/detector/image_key[4] is 7", "expected 0 (projection)");
    o = NX_DEFAULT;
    o.no_key = 1;
    check_nx_fails(&o, "no NXtomo frames found",
                   "/entry/instrument/detector/data has no image_key");
    o = NX_DEFAULT;
    o.no_angles = 1;
    check_nx_fails(&o, "no rotation angles for /entry/instrument/detector/data",
                   "sample/rotation_angle");
    o.diad = 1;
    check_nx_fails(&o, "no rotation angles for /entry/instrument/imaging/data", "scan.nxs");
    o = NX_DEFAULT;
    o.short_angles = 1;
    check_nx_fails(&o, "no rotation angles", "rotation_angle holds 11 values for 12 frames");
    o = NX_DEFAULT;
    o.nan_at = 5;
    check_nx_fails(&o, "/entry/sample/rotation_angle[5] is nan", "frame 5 is a projection");

    /* The file behind the external link is missing. */
    char dir[64], path[512], sub[512];
    make_dir(dir);
    o = NX_DEFAULT;
    o.external = 1;
    write_nx(dir, &o);
    path_of(sub, sizeof sub, dir, "sub/frames.h5");
    unlink(sub);
    path_of(path, sizeof path, dir, "scan.nxs");
    check_open_fails(path, NULL, TOMO_E_FORMAT, "no NXtomo frames found",
                     "external link to sub/frames.h5:/entry/detector/detector");
    check_open_fails(path, "nxtomo", TOMO_E_FORMAT, "scan.nxs", "cannot be opened");
    remove_dir(dir);

    /* No flats at all. */
    make_dir(dir);
    path_of(path, sizeof path, dir, "scan.nxs");
    hid_t f = create_file(path, 0);
    make_group(f, "/entry", "NXentry");
    write_stack(f, "/entry/instrument/detector/data", 3, 2, 2, 0, &PLAIN_U16);
    double keys[3] = {0, 0, 2}, ang[3] = {0, 90, 0};
    write_vector(f, "/entry/instrument/detector/image_key", keys, 3, H5T_STD_U8LE);
    write_vector(f, "/entry/sample/rotation_angle", ang, 3, H5T_IEEE_F32LE);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "marks no frame as a flat field (1)", "scan.nxs");

    /* A file with groups but nothing NeXus in it. */
    f = create_file(path, 0);
    make_group(f, "/stuff", NULL);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "not a NeXus NXtomo file", "no NXentry group");
    f = create_file(path, 0);
    H5Fclose(f);
    check_open_fails(path, NULL, TOMO_E_FORMAT, "not a NeXus NXtomo file", "no NXentry group");
    remove_dir(dir);
}

/* ------------------------------------------------------------------------------------------ */
/* TIFF series                                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef struct tif_opts {
    int bits;
    int format; /* SAMPLEFORMAT_* */
    int compression;
    int predictor;
    int big_endian;
    int photometric;
    int tiled;
    int rows_per_strip;
} tif_opts;

static const tif_opts TIF_U16 = {
    16, SAMPLEFORMAT_UINT, COMPRESSION_NONE, 1, 0, PHOTOMETRIC_MINISBLACK, 0, 0};

static void put_sample(unsigned char *p, const tif_opts *o, double v)
{
    switch (o->bits) {
    case 8:
        *p = (unsigned char)v;
        break;
    case 16:
        if (o->format == SAMPLEFORMAT_INT) {
            int16_t s = (int16_t)v;
            memcpy(p, &s, 2);
        } else {
            uint16_t u = (uint16_t)v;
            memcpy(p, &u, 2);
        }
        break;
    case 32:
        if (o->format == SAMPLEFORMAT_IEEEFP) {
            float fl = (float)v;
            memcpy(p, &fl, 4);
        } else {
            uint32_t u = (uint32_t)v;
            memcpy(p, &u, 4);
        }
        break;
    case 64: {
        memcpy(p, &v, 8);
        break;
    }
    }
}

/* Writes a w x h TIFF of pix(id) (minus `offset`, for signed types), as `o` says. */
static void write_tif(const char *dir, const char *name, int w, int h, int id, const tif_opts *o,
                      double offset)
{
    char path[512];
    path_of(path, sizeof path, dir, name);
    TIFF *t = TIFFOpen(path, o->big_endian ? "wb" : "wl");
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)h);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)o->bits);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, (uint16_t)o->format);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)1);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, (uint16_t)o->photometric);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_COMPRESSION, (uint16_t)o->compression);
    if (o->predictor > 1)
        TIFFSetField(t, TIFFTAG_PREDICTOR, (uint16_t)o->predictor);
    size_t s = (size_t)o->bits / 8;
    if (o->tiled) {
        TIFFSetField(t, TIFFTAG_TILEWIDTH, (uint32_t)16);
        TIFFSetField(t, TIFFTAG_TILELENGTH, (uint32_t)16);
        unsigned char *tile = calloc(16 * 16, s);
        for (int ty = 0; ty < h; ty += 16)
            for (int tx = 0; tx < w; tx += 16) {
                memset(tile, 0, 16 * 16 * s);
                for (int y = 0; y < 16 && ty + y < h; y++)
                    for (int x = 0; x < 16 && tx + x < w; x++)
                        put_sample(tile + (size_t)(y * 16 + x) * s, o,
                                   pix(id, tx + x, ty + y) - offset);
                TIFFWriteTile(t, tile, (uint32_t)tx, (uint32_t)ty, 0, 0);
            }
        free(tile);
    } else {
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP,
                     (uint32_t)(o->rows_per_strip ? o->rows_per_strip : 1));
        unsigned char *line = malloc((size_t)w * s);
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++)
                put_sample(line + (size_t)x * s, o, pix(id, x, y) - offset);
            TIFFWriteScanline(t, line, (uint32_t)y, 0);
        }
        free(line);
    }
    TIFFClose(t);
}

#define TS_N 5
#define TS_W 19
#define TS_H 18

static const tif_opts TIF_FLOAT = {
    32, SAMPLEFORMAT_IEEEFP, COMPRESSION_NONE, 1, 0, PHOTOMETRIC_MINISBLACK, 0, 0};

/* Projections proj_0000.tif.. (angles listed with 2 extra entries at each end), two flats,
 * one dark, all in `o`'s layout except the flats, which are float32. */
static void write_series(const char *dir, const tif_opts *o, const char *angles_name)
{
    for (int m = 0; m < TS_N; m++) {
        char name[64];
        snprintf(name, sizeof name, "proj_%04d.tif", m + 10);
        write_tif(dir, name, TS_W, TS_H, frame_id(TOMO_FRAME_PROJECTION, m), o, 0);
    }
    write_tif(dir, "flat_001.tif", TS_W, TS_H, frame_id(TOMO_FRAME_FLAT, 0), &TIF_FLOAT, 0);
    write_tif(dir, "Flat_002.tiff", TS_W, TS_H, frame_id(TOMO_FRAME_FLAT, 1), &TIF_FLOAT, 0);
    write_tif(dir, "dark.tif", TS_W, TS_H, frame_id(TOMO_FRAME_DARK, 0), o, 0);
    /* angles out of order, degrees, with a comment, commas and CRLF line ends */
    write_text(dir, angles_name,
               "# angle of every frame\r\n-1\r\n-1\r\n0, 90\r\n45\n180\n135\n"
               "\n200\n200  # after the scan\n");
}

static void check_series(const tif_opts *o, const char *what)
{
    char dir[64];
    make_dir(dir);
    write_series(dir, o, "angles.txt");
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_open(dir, NULL, &scan, &err), 0);
    if (!scan) {
        fprintf(stderr, "%s: %s\n", what, err.message);
        remove_dir(dir);
        return;
    }
    CHECK(strcmp(scan->format, "tiff-series") == 0);
    CHECK_INT(scan->width, TS_W);
    CHECK_INT(scan->rows, TS_H);
    CHECK_INT(scan->n_proj, TS_N);
    CHECK_INT(scan->n_flat, 2);
    CHECK_INT(scan->n_flat_groups, 1);
    CHECK_INT(scan->n_dark, 1);
    for (int m = 0; m < TS_N; m++)
        CHECK_NEAR(scan->proj_angle_deg[m], 45.0 * m, 1e-12);
    /* projection files in angle order: 0 (0), 2 (45), 1 (90), 4 (135), 3 (180) */
    static const int order[TS_N] = {0, 2, 1, 4, 3};
    int proj[TS_N], flat[2] = {frame_id(TOMO_FRAME_FLAT, 0), frame_id(TOMO_FRAME_FLAT, 1)};
    int dark[1] = {frame_id(TOMO_FRAME_DARK, 0)};
    for (int m = 0; m < TS_N; m++) {
        proj[m] = frame_id(TOMO_FRAME_PROJECTION, order[m]);
        CHECK_INT(scan->proj_frame[m], order[m] + 10);
    }
    if (!frames_match(scan, proj, flat, dark)) {
        fprintf(stderr, "%s: values differ\n", what);
        CHECK(0);
    }
    CHECK_CONTAINS(scan->angle_source, "angles.txt: 9 values for 5 projections, entries 3-7 used");
    CHECK_CONTAINS(scan->source, "proj_0010.tif ... proj_0014.tif: 5 projections");
    tomo_scan_close(scan);
    remove_dir(dir);
}

static void test_tiff_series(void)
{
    tif_opts o = TIF_U16;
    check_series(&o, "uint16, one row per strip");
    o.rows_per_strip = 5;
    o.big_endian = 1;
    check_series(&o, "uint16 big-endian, 5 rows per strip");
    o.photometric = PHOTOMETRIC_MINISWHITE;
    check_series(&o, "uint16 MinIsWhite (not inverted)");
    o = TIF_FLOAT;
    check_series(&o, "float32");
    o.big_endian = 1;
    o.rows_per_strip = 4;
    check_series(&o, "float32 big-endian");
    o.compression = COMPRESSION_ADOBE_DEFLATE;
    check_series(&o, "float32 big-endian, deflate");
    /* libtiff 4.5 writes big-endian files with the floating-point predictor wrongly (it swaps
     * before predicting), so that case is checked little-endian only. */
    o.big_endian = 0;
    o.predictor = 3;
    check_series(&o, "float32, deflate with floating-point predictor");
    o = TIF_U16;
    o.tiled = 1;
    check_series(&o, "uint16 tiled 16x16");
    o.compression = COMPRESSION_ADOBE_DEFLATE;
    o.big_endian = 1;
    check_series(&o, "uint16 tiled, deflate, big-endian");
    o = TIF_U16;
    o.compression = COMPRESSION_LZW;
    o.predictor = 2;
    o.rows_per_strip = 3;
    check_series(&o, "uint16 LZW with predictor");
    o = TIF_U16;
    o.bits = 32;
    check_series(&o, "uint32");
    o.bits = 64;
    o.format = SAMPLEFORMAT_IEEEFP;
    o.big_endian = 1;
    check_series(&o, "float64 big-endian");
}

static void check_series_fails(const char *dir, int code, const char *want1, const char *want2)
{
    check_open_fails(dir, NULL, code, want1, want2);
}

static void test_tiff_series_errors(void)
{
    char dir[64], path[512];
    make_dir(dir);
    write_series(dir, &TIF_U16, "angles.txt");

    /* an odd number of extra angles */
    write_text(dir, "angles.txt", "0\n0\n45\n90\n135\n180\n");
    check_series_fails(dir, TOMO_E_FORMAT, "angles.txt: 6 angles for 5 projections",
                       "as many extra entries");
    write_text(dir, "angles.txt", "0\n45\n90\n");
    check_series_fails(dir, TOMO_E_FORMAT, "angles.txt: 3 angles for 5 projections", "");
    write_text(dir, "angles.txt", "0\n45\nninety\n135\n180\n");
    check_series_fails(dir, TOMO_E_FORMAT, "angles.txt:3: 'ninety' is not an angle", "");
    write_text(dir, "angles.txt", "0\n45\nnan\n135\n180\n");
    check_series_fails(dir, TOMO_E_FORMAT, "angles.txt:3: 'nan' is not an angle", "");
    write_text(dir, "angles.txt", "# nothing\n");
    check_series_fails(dir, TOMO_E_FORMAT, "angles.txt: no angles in the file", "");
    write_text(dir, "angles.txt", "0 45 90 135 180\n");

    /* two angles files */
    write_text(dir, "angles.csv", "0,45,90,135,180\n");
    check_series_fails(dir, TOMO_E_FORMAT, "two angles files", "keep one");
    path_of(path, sizeof path, dir, "angles.csv");
    unlink(path);

    /* no angles file: a directory with flats is still a TIFF series */
    path_of(path, sizeof path, dir, "angles.txt");
    unlink(path);
    check_series_fails(dir, TOMO_E_FORMAT, "no angles file", "angles are unknown");
    write_text(dir, "angles.txt", "0 45 90 135 180\n");

    /* a second projection series */
    write_tif(dir, "other_0001.tif", TS_W, TS_H, 1, &TIF_U16, 0);
    check_series_fails(dir, TOMO_E_FORMAT, "are not of one series", "other_0001.tif");
    path_of(path, sizeof path, dir, "other_0001.tif");
    unlink(path);

    /* a frame of another size (first and last are always inspected) */
    write_tif(dir, "proj_0014.tif", TS_W, TS_H - 1, 1, &TIF_U16, 0);
    check_series_fails(dir, TOMO_E_FORMAT, "proj_0014.tif: is 19x17, expected 19x18", "");
    write_tif(dir, "proj_0014.tif", TS_W, TS_H, frame_id(TOMO_FRAME_PROJECTION, 4), &TIF_U16, 0);

    /* a garbage projection of another size is caught at open */
    write_text(dir, "proj_0012.tif", "not a tiff");
    check_series_fails(dir, TOMO_E_FORMAT, "proj_0012.tif: not a readable TIFF", "");
    write_text(dir, "proj_0012.tif", "");
    check_series_fails(dir, TOMO_E_FORMAT, "proj_0012.tif: empty file", "");

    /* RGB and 12-bit frames */
    {
        path_of(path, sizeof path, dir, "proj_0012.tif");
        TIFF *t = TIFFOpen(path, "w");
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)TS_W);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)TS_H);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)8);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)3);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
        TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
        unsigned char line[3 * TS_W] = {0};
        for (int y = 0; y < TS_H; y++)
            TIFFWriteScanline(t, line, (uint32_t)y, 0);
        TIFFClose(t);
    }
    check_series_fails(dir, TOMO_E_FORMAT, "proj_0012.tif: 3 samples per pixel", "greyscale");

    /* two pages */
    {
        TIFF *t = TIFFOpen(path, "w");
        for (int page = 0; page < 2; page++) {
            TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)TS_W);
            TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)TS_H);
            TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)16);
            TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)1);
            TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
            uint16_t line[TS_W] = {0};
            for (int y = 0; y < TS_H; y++)
                TIFFWriteScanline(t, line, (uint32_t)y, 0);
            TIFFWriteDirectory(t);
        }
        TIFFClose(t);
    }
    check_series_fails(dir, TOMO_E_UNSUPPORTED, "proj_0012.tif: 2 pages", "one frame per file");
    write_tif(dir, "proj_0012.tif", TS_W, TS_H, frame_id(TOMO_FRAME_PROJECTION, 2), &TIF_U16, 0);

    /* a damaged middle frame of the right size is found when read, with its name */
    {
        char good[512];
        path_of(good, sizeof good, dir, "proj_0013.tif");
        path_of(path, sizeof path, dir, "proj_0011.tif");
        struct stat st;
        CHECK(stat(good, &st) == 0);
        char *junk = malloc((size_t)st.st_size);
        memset(junk, 'x', (size_t)st.st_size);
        FILE *fj = fopen(path, "wb");
        fwrite(junk, 1, (size_t)st.st_size, fj);
        fclose(fj);
        free(junk);
        tomo_scan *scan = NULL;
        tomo_error err;
        tomo_error_clear(&err);
        CHECK_INT(tomo_scan_open(dir, NULL, &scan, &err), 0);
        if (scan) {
            float buf[TS_W * TS_H];
            int bad = -1;
            for (int m = 0; m < scan->n_proj; m++)
                if (scan->proj_frame[m] == 11)
                    bad = m;
            tomo_error_clear(&err);
            CHECK(tomo_scan_read_rows(scan, TOMO_FRAME_PROJECTION, bad, 0, 2, buf, &err) < 0);
            CHECK_CONTAINS(err.message, "proj_0011.tif");
        }
        tomo_scan_close(scan);
        write_tif(dir, "proj_0011.tif", TS_W, TS_H, frame_id(TOMO_FRAME_PROJECTION, 1), &TIF_U16,
                  0);
    }

    /* no flats */
    path_of(path, sizeof path, dir, "flat_001.tif");
    unlink(path);
    path_of(path, sizeof path, dir, "Flat_002.tiff");
    unlink(path);
    check_open_fails(dir, "tiff-series", TOMO_E_FORMAT, "no flat field", "flat* or white*");
    remove_dir(dir);
}

/* Signed 16-bit samples, angles in radians, and a series without darks. */
static void test_tiff_types(void)
{
    char dir[64];
    make_dir(dir);
    tif_opts s16 = TIF_U16;
    s16.format = SAMPLEFORMAT_INT;
    for (int m = 0; m < 2; m++) {
        char name[32];
        snprintf(name, sizeof name, "p%d.tif", m);
        write_tif(dir, name, 4, 3, m, &s16, 20000.0);
    }
    write_tif(dir, "white.tif", 4, 3, 0, &TIF_FLOAT, 0);
    write_text(dir, "angles.dat", "0 3.14159265358979");
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_open(dir, NULL, &scan, &err), 0);
    if (scan) {
        CHECK_INT(scan->n_dark, 0);
        CHECK_NEAR(scan->proj_angle_deg[1], 180.0, 1e-9);
        CHECK_CONTAINS(scan->angle_source, "radians");
        CHECK_CONTAINS(scan->source, "dark taken as 0");
        float buf[12];
        CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_PROJECTION, 1, 0, 3, buf, &err), 0);
        for (int y = 0; y < 3; y++)
            for (int x = 0; x < 4; x++)
                CHECK_NEAR(buf[y * 4 + x], pix(1, x, y) - 20000.0, 0);
    } else {
        fprintf(stderr, "%s\n", err.message);
    }
    tomo_scan_close(scan);
    remove_dir(dir);
}

static void test_angles_parse(void)
{
    double *v = NULL;
    int n = 0;
    tomo_error err;
    tomo_error_clear(&err);
    const char *text = "\xEF\xBB\xBF# header\n1.5;2e1 , -3\r\n\r\n 4 # four\n";
    CHECK_INT(tomo_angles_parse("a.txt", text, strlen(text), &v, &n, &err), 0);
    CHECK_INT(n, 4);
    if (n == 4) {
        CHECK_NEAR(v[0], 1.5, 0);
        CHECK_NEAR(v[1], 20, 0);
        CHECK_NEAR(v[2], -3, 0);
        CHECK_NEAR(v[3], 4, 0);
    }
    free(v);
    /* not NUL-terminated: the last number ends at len */
    CHECK_INT(tomo_angles_parse("a.txt", "7 8 9", 3, &v, &n, &err), 0);
    CHECK_INT(n, 2);
    free(v);
    tomo_error_clear(&err);
    CHECK_INT(tomo_angles_parse("a.txt", "1\n2\n3x\n", 7, &v, &n, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "a.txt:3: '3x' is not an angle");
    CHECK(v == NULL);
    tomo_error_clear(&err);
    CHECK_INT(tomo_angles_parse("a.txt", "1\ninf\n", 6, &v, &n, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "a.txt:2: 'inf'");
    int first = -1;
    CHECK_INT(tomo_angles_select("a", 111, 91, &first, &err), 0);
    CHECK_INT(first, 10);
    CHECK_INT(tomo_angles_select("a", 91, 91, &first, &err), 0);
    CHECK_INT(first, 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_angles_select("a", 90, 91, &first, &err), -TOMO_E_FORMAT);
}

static void test_angle_units(void)
{
    double deg[3] = {0, 90, 179}, rad[3] = {0, 1.5, 3.14}, full[2] = {0, 6.28}, nan3[2] = {NAN, 1};
    CHECK(tomo_angles_look_like_degrees(deg, 3));
    CHECK(!tomo_angles_look_like_degrees(rad, 3));
    CHECK(!tomo_angles_look_like_degrees(full, 2));
    CHECK(!tomo_angles_look_like_degrees(nan3, 2));
    CHECK_INT(tomo_angle_unit_from_name(" Degrees "), 1);
    CHECK_INT(tomo_angle_unit_from_name("deg"), 1);
    CHECK_INT(tomo_angle_unit_from_name("RAD"), 0);
    CHECK_INT(tomo_angle_unit_from_name("radians\n"), 0);
    CHECK_INT(tomo_angle_unit_from_name("mm"), -1);
    CHECK_INT(tomo_angle_unit_from_name(""), -1);
    char how[256];
    double a[2] = {0, 1};
    tomo_angles_to_degrees(a, 2, "degrees", how, sizeof how);
    CHECK_NEAR(a[1], 1, 0);
    CHECK_CONTAINS(how, "units attribute 'degrees'");
    tomo_angles_to_degrees(a, 2, "mm", how, sizeof how);
    CHECK_NEAR(a[1], 180.0 / M_PI, 1e-12);
    CHECK_CONTAINS(how, "ignored units 'mm'");
}

static void test_frame_runs(void)
{
    char buf[64];
    int f[6] = {0, 1, 2, 7, 9, 10};
    tomo_frame_runs(f, 6, buf, sizeof buf);
    CHECK(strcmp(buf, "0-2, 7, 9-10") == 0);
    tomo_frame_runs(f, 0, buf, sizeof buf);
    CHECK(strcmp(buf, "") == 0);
    tomo_frame_runs(f, 6, buf, 6); /* whole runs that fit, never overflowing */
    CHECK(strcmp(buf, "0-2") == 0);
}

static void test_samples(void)
{
    unsigned char b[8];
    float f;
    tomo_sample_format fmt = {TOMO_SAMPLE_INT, 2, 1};
    b[0] = 0xff;
    b[1] = 0xfe;
    tomo_samples_to_float(&fmt, b, 1, &f);
    CHECK_NEAR(f, -2, 0);
    fmt = (tomo_sample_format){TOMO_SAMPLE_INT, 1, 0};
    b[0] = 0x80;
    tomo_samples_to_float(&fmt, b, 1, &f);
    CHECK_NEAR(f, -128, 0);
    fmt = (tomo_sample_format){TOMO_SAMPLE_UINT, 4, 1};
    memcpy(b, "\x00\x01\x00\x02", 4);
    tomo_samples_to_float(&fmt, b, 1, &f);
    CHECK_NEAR(f, 65538, 0);
    fmt = (tomo_sample_format){TOMO_SAMPLE_INT, 8, 0};
    int64_t i64 = -5;
    memcpy(b, &i64, 8);
    tomo_samples_to_float(&fmt, b, 1, &f);
    CHECK_NEAR(f, -5, 0);
    fmt = (tomo_sample_format){TOMO_SAMPLE_FLOAT, 8, 1};
    double d = 1234.5;
    unsigned char le[8];
    memcpy(le, &d, 8);
    for (int k = 0; k < 8; k++)
        b[k] = le[7 - k];
    tomo_samples_to_float(&fmt, b, 1, &f);
    CHECK_NEAR(f, 1234.5, 0);
    char name[32];
    CHECK(strcmp(tomo_sample_format_name(&fmt, name, sizeof name), "float64 big-endian") == 0);
    fmt = (tomo_sample_format){TOMO_SAMPLE_FLOAT, 2, 0};
    CHECK(!tomo_sample_format_valid(&fmt));
    /* in place, from the raw area */
    float buf[4];
    fmt = (tomo_sample_format){TOMO_SAMPLE_UINT, 1, 0};
    unsigned char *raw = (unsigned char *)buf + tomo_samples_raw_offset(&fmt, 4);
    raw[0] = 1;
    raw[1] = 2;
    raw[2] = 3;
    raw[3] = 250;
    tomo_samples_to_float(&fmt, raw, 4, buf);
    CHECK_NEAR(buf[0], 1, 0);
    CHECK_NEAR(buf[3], 250, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Detection                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void test_detection(void)
{
    char dir[64], path[512], sub[512];
    make_dir(dir);
    /* a directory holding one HDF5 file opens that file */
    path_of(sub, sizeof sub, dir, "dx");
    mkdir(sub, 0755);
    path_of(path, sizeof path, sub, "tomo.hdf5");
    dx_opts o = {PLAIN_U16, "degrees", 0, 0, 0};
    write_dx(path, &o);
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_open(sub, NULL, &scan, &err), 0);
    if (scan) {
        CHECK(strcmp(scan->format, "dxchange") == 0);
        CHECK_CONTAINS(scan->path, "tomo.hdf5");
    }
    tomo_scan_close(scan);
    /* .nxs is NeXus by name, even with /exchange/data inside */
    char nxs[512];
    path_of(nxs, sizeof nxs, sub, "copy.nxs");
    write_dx(nxs, &o);
    check_open_fails(nxs, NULL, TOMO_E_FORMAT, "copy.nxs: not a NeXus NXtomo file", "no NXentry");
    check_open_fails(sub, NULL, TOMO_E_FORMAT, "holds several HDF5 files", "give the file itself");
    /* the format option overrides */
    scan = NULL;
    CHECK_INT(tomo_scan_open(nxs, "dxchange", &scan, &err), 0);
    tomo_scan_close(scan);
    /* an HDF5 file under another name is detected by its signature */
    char other[512];
    path_of(other, sizeof other, sub, "scan.data");
    CHECK_INT(rename(path, other), 0);
    scan = NULL;
    CHECK_INT(tomo_scan_open(other, NULL, &scan, &err), 0);
    if (scan)
        CHECK(strcmp(scan->format, "dxchange") == 0);
    tomo_scan_close(scan);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "not a recognised scan directory",
                     "no output.log, no TIFF series, no HDF5 file");
    check_open_fails(dir, "hdf4", TOMO_E_INVALID, "unknown format 'hdf4'",
                     "spring8, dxchange, nxtomo, tiff-series");
    /* a TIFF series is found by its flats even without an angles file */
    write_tif(dir, "flat.tif", 4, 3, 0, &TIF_U16, 0);
    write_tif(dir, "p_1.tif", 4, 3, 0, &TIF_U16, 0);
    CHECK(tomo_tiffseries_detect(dir));
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "no angles file", "");
    check_open_fails(dir, "nxtomo", TOMO_E_IO, "not a regular file", "");
    remove_dir(dir);
}

/* ---- the dry run of HDF5 opens ---- */

static int open_crashes(const char *path, tomo_scan **out, tomo_error *err)
{
    (void)path;
    (void)out;
    (void)err;
    raise(SIGSEGV);
    return 0;
}

static int open_loops(const char *path, tomo_scan **out, tomo_error *err)
{
    (void)path;
    (void)out;
    (void)err;
    volatile int forever = 1;
    while (forever)
        pause();
    return 0;
}

static int open_fails(const char *path, tomo_scan **out, tomo_error *err)
{
    *out = NULL;
    return tomo_error_set(err, TOMO_E_UNSUPPORTED, "%s: refused for a reason", path);
}

static int opened_here;

/* Succeeds, and counts the calls made in this process (the child's do not show). */
static int open_works(const char *path, tomo_scan **out, tomo_error *err)
{
    opened_here++;
    tomo_scan *scan = tomo_scan_alloc(0, 0);
    if (!scan)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    snprintf(scan->path, sizeof scan->path, "%s", path);
    *out = scan;
    return 0;
}

static void test_dry_run(void)
{
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_h5_open_checked("x.h5", open_crashes, &scan, &err), -TOMO_E_FORMAT);
    /* "crashed ... (signal 11)", or under AddressSanitizer, which catches the signal itself,
     * "failed ... (exit status 1)" */
    CHECK_CONTAINS(err.message, "x.h5: the HDF5 library ");
    CHECK_CONTAINS(err.message, "reading it");
    CHECK_CONTAINS(err.message, "the file is damaged");
    CHECK(scan == NULL);

    tomo_error_clear(&err);
    CHECK_INT(tomo_h5_open_checked("x.h5", open_fails, &scan, &err), -TOMO_E_UNSUPPORTED);
    CHECK_CONTAINS(err.message, "x.h5: refused for a reason");

    setenv("TOMO_HDF5_PROBE_TIMEOUT", "1", 1);
    tomo_error_clear(&err);
    CHECK_INT(tomo_h5_open_checked("x.h5", open_loops, &scan, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "x.h5: reading it with the HDF5 library took more than 1 s");
    unsetenv("TOMO_HDF5_PROBE_TIMEOUT");

    opened_here = 0;
    tomo_error_clear(&err);
    CHECK_INT(tomo_h5_open_checked("x.h5", open_works, &scan, &err), 0);
    CHECK_INT(opened_here, 1);
    CHECK(scan != NULL);
    tomo_scan_close(scan);

    /* Without the dry run the opener runs here, once. */
    setenv("TOMO_HDF5_PROBE", "0", 1);
    opened_here = 0;
    scan = NULL;
    CHECK_INT(tomo_h5_open_checked("x.h5", open_works, &scan, &err), 0);
    CHECK_INT(opened_here, 1);
    tomo_scan_close(scan);
    unsetenv("TOMO_HDF5_PROBE");
}

/* Reads from many threads at once agree with a single-threaded read. */
typedef struct thread_job {
    const tomo_scan *scan;
    int ok;
} thread_job;

#include <pthread.h>

static void *read_all(void *arg)
{
    thread_job *job = arg;
    const tomo_scan *scan = job->scan;
    float *buf = malloc((size_t)scan->width * scan->rows * sizeof *buf);
    job->ok = 1;
    for (int rep = 0; rep < 20; rep++) {
        for (int m = 0; m < scan->n_proj; m++) {
            tomo_error err;
            tomo_error_clear(&err);
            int z0 = (m + rep) % scan->rows;
            if (tomo_scan_read_rows(scan, TOMO_FRAME_PROJECTION, m, z0, 1, buf, &err) < 0) {
                job->ok = 0;
                continue;
            }
            int id = frame_id(TOMO_FRAME_PROJECTION, scan->proj_frame[m]);
            for (int x = 0; x < scan->width; x++)
                if (buf[x] != (float)pix(id, x, z0))
                    job->ok = 0;
        }
    }
    free(buf);
    return NULL;
}

static void test_concurrent_hdf5_reads(void)
{
    for (int compressed = 0; compressed < 2; compressed++) {
        char dir[64], path[512];
        make_dir(dir);
        path_of(path, sizeof path, dir, "scan.h5");
        dx_opts o = {PLAIN_U16, "degrees", 0, 0, 0};
        if (compressed) {
            o.data.chunk[0] = 1;
            o.data.chunk[1] = 2;
            o.data.chunk[2] = DX_W;
            o.data.deflate = 1;
        }
        write_dx(path, &o);
        tomo_scan *scan = NULL;
        tomo_error err;
        tomo_error_clear(&err);
        CHECK_INT(tomo_scan_open(path, NULL, &scan, &err), 0);
        if (scan) {
            pthread_t th[8];
            thread_job jobs[8];
            for (int i = 0; i < 8; i++) {
                jobs[i] = (thread_job){scan, 0};
                pthread_create(&th[i], NULL, read_all, &jobs[i]);
            }
            for (int i = 0; i < 8; i++) {
                pthread_join(th[i], NULL);
                CHECK(jobs[i].ok);
            }
        }
        tomo_scan_close(scan);
        remove_dir(dir);
    }
}

TOMO_TEST_MAIN(test_samples, test_frame_runs, test_angle_units, test_angles_parse,
               test_dxchange_layouts, test_dxchange_errors, test_nxtomo, test_nxtomo_errors,
               test_tiff_series, test_tiff_series_errors, test_tiff_types, test_detection,
               test_concurrent_hdf5_reads, test_dry_run)
