"""The programs people open slices with, run for real against a mounted phantom.

- ImageJ (Debian's imagej, under xvfb-run): File > Import > Image Sequence as a virtual stack,
  through a macro. Its pixels (saved back by ImageJ) equal tifffile's reading of the same file
  and the phantom's truth; its calibration is the pixel size in micrometres (also above
  10 um, where centimetre tags alone would show cm); only the slices shown are computed (the
  status counters); uint16 slices show calibrated cm^-1; a 20,000-slice folder imports
  computing its first slice only.
- ParaView's pvpython: the TIFF series reader, as a file series (one slice per time step, read
  when shown) and as an image stack (the whole volume). float32 values, the pixel spacing
  (millimetres: VTK converts the centimetre resolution tags) and laziness are checked.
- Shell tools: file, cp -r, tar, rsync -a twice and again after a remount (the second copies
  nothing and reads nothing), tifffile with memory mapping.
- Metadata never computes: ls -l and a list-then-stat of every file of a 20,000-slice scan
  reconstruct nothing (timings are in docs/performance.md, tools/bench/metadata.sh).
- The status file and the log: counters, cache hits, backend, the last error and a log line
  naming the file; progress bars of the long commands on a terminal.

Outside tools/check a missing client program skips its checks with a message; under tools/check
(TOMOFS_REQUIRE_CLIENTS=1) or in CI (CI=true) it is a failure.

    python3 tests/integration/test_clients.py --screenshots docs/images

makes the pictures of docs/user-guide.md from a mounted phantom instead (needs xdotool).
"""

import errno
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import (SKIP, TOMOFS, Mount, Results, fov_mask, interior_mask, phantom,  # noqa: E402
                    phantom_center, read_tiff, run)

# The phantom the clients open: noise-free, so pixels can be compared with the truth.
WIDTH, ROWS, PROJ, PIXEL_UM = 128, 48, 180, 6.5
# ImageJ shows these 1-based stack positions; ParaView reads these 0-based time steps.
IJ_SHOWN = [5, 30]
PV_SHOWN = [4, 29]
# A scan with many rows and little else, for the metadata checks.
TALL_ROWS = 20000

REQUIRED = bool(os.environ.get("TOMOFS_REQUIRE_CLIENTS") or os.environ.get("CI"))
# A client normally takes seconds; a macro error leaves ImageJ waiting on its error dialog.
CLIENT_TIMEOUT = 120


def names(rows):
    return [f"slice_{z:05d}.tif" for z in range(rows)]


def check_with(r, programs, name, fn):
    """Runs check `fn` if every (program, Debian package) is installed. If one is missing the
    check fails under tools/check and in CI, and is skipped with a message elsewhere."""
    missing = [f"{program} (Debian package {package})" for program, package in programs
               if not shutil.which(program)]
    if not missing:
        r.check(name, fn)
        return
    message = f"{', '.join(missing)} not installed; tools/install-deps installs it"
    if REQUIRED:
        def fail():
            raise AssertionError(message)
        r.check(name, fail)
    else:
        print(f"SKIP {name}: {message}", flush=True)


def run_client(args, timeout=CLIENT_TIMEOUT, **kw):
    """Runs a client program in its own session; on a time-out kills it with its children
    (xvfb-run's Xvfb, the imagej wrapper's java) and fails with what it printed."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"{' '.join(args)}: no answer after {timeout} s (killed):\n"
                             f"{out}\n{err}")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def counters(m):
    st = m.status()
    return {k: int(st[k]) for k in ("requests", "joined", "slices_computed", "errors",
                                    "cache_hits") if k in st}


def computations(m):
    """Slices the engine was asked for that no other request had asked for already."""
    c = counters(m)
    return c["requests"] - c["joined"]


def relative_rms(image, truth, center):
    mask = fov_mask(WIDTH, center, WIDTH) & interior_mask(truth)
    assert mask.sum() > 100, "too few interior pixels to compare"
    return float(np.sqrt(np.mean((image - truth)[mask] ** 2)) / truth.max())


# ---- ImageJ ----

def imagej(macro, workdir, timeout=CLIENT_TIMEOUT):
    """Runs an ImageJ macro in batch mode under Xvfb; returns its 'RESULT key=value' lines."""
    path = os.path.join(workdir, f"macro-{time.monotonic_ns()}.ijm")
    with open(path, "w") as f:
        f.write(macro + '\nprint("RESULT done=1");\nrun("Quit");\n')
    env = dict(os.environ, HOME=os.path.join(workdir, "home"))  # ImageJ keeps prefs in ~/.imagej
    os.makedirs(env["HOME"], exist_ok=True)
    p = run_client(["xvfb-run", "-a", "imagej", "-b", path], timeout, env=env)
    out = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            key, _, value = line[7:].partition("=")
            out[key] = value
    if out.get("done") != "1":
        raise AssertionError(f"ImageJ macro {path} did not finish ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return out


# The calibration unit in ASCII: ImageJ spells micrometres "µm" (U+00B5), "um" or "micron(s)".
IJ_UNIT = """
function asciiUnit(unit) {
    if (lengthOf(unit) == 2 && charCodeAt(unit, 0) == 181 && substring(unit, 1) == "m")
        return "um";
    if (unit == "micron" || unit == "microns")
        return "um";
    return unit;
}
"""


def imagej_virtual_stack_macro(folder, outdir, shown):
    return IJ_UNIT + f"""
setBatchMode(true);
run("Image Sequence...", "dir=[{folder}/] sort use");
print("RESULT slices=" + nSlices);
print("RESULT bitdepth=" + bitDepth());
print("RESULT virtual=" + is("Virtual Stack"));
getVoxelSize(pw, ph, pd, unit);
print("RESULT unit=" + asciiUnit(unit));
print("RESULT pixel_width=" + d2s(pw, 9));
print("RESULT pixel_height=" + d2s(ph, 9));
stack = getImageID();
shown = split("{",".join(map(str, shown))}", ",");  // newArray(30) would be 30 zeros
for (i = 0; i < shown.length; i++) {{
    selectImage(stack);
    setSlice(parseInt(shown[i]));
    print("RESULT label" + shown[i] + "=" + getInfo("slice.label"));
    v = getPixel(getWidth() / 2, getHeight() / 2);
    print("RESULT centre" + shown[i] + "=" + d2s(v, 9));
    print("RESULT calibrated" + shown[i] + "=" + d2s(calibrate(v), 9));
    run("Duplicate...", "title=shown");
    saveAs("Tiff", "{outdir}/imagej_" + shown[i] + ".tif");
    close();
}}
"""


def imagej_checks(tmp, scan, truth_center, exported):
    def virtual_stack():
        out = os.path.join(tmp, "imagej-out")
        os.makedirs(out)
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM},max_chunk=2,cache=none") as m:
            res = imagej(imagej_virtual_stack_macro(m.path("slices"), out, IJ_SHOWN), tmp)
            print(f"     ImageJ: {res['slices']} slices, {res['bitdepth']}-bit, calibration "
                  f"{res['pixel_width']} {res['unit']}, status {counters(m)}")
            assert res["slices"] == str(ROWS) and res["bitdepth"] == "32", res
            assert res["virtual"] == "1", res
            for k in IJ_SHOWN:
                z = k - 1
                name = f"slice_{z:05d}.tif"
                assert res[f"label{k}"] == name[:-4], (k, res[f"label{k}"])
                seen = read_tiff(os.path.join(out, f"imagej_{k}.tif"))
                served = read_tiff(m.path("slices", name))
                assert seen.dtype == np.float32 and seen.shape == (WIDTH, WIDTH), seen.shape
                assert np.array_equal(seen, served), f"{name}: ImageJ's pixels differ"
                assert abs(float(res[f"centre{k}"]) - served[WIDTH // 2, WIDTH // 2]) < 1e-5
                truth = read_tiff(os.path.join(scan, "truth", name))
                err = relative_rms(seen, truth, truth_center)
                print(f"     {name} in ImageJ against the truth: relative RMS {err:.4f}")
                assert err < 0.02, (name, err)
            # the first file (opened to learn the image size) and the slices shown; nothing else
            assert computations(m) == 1 + len(IJ_SHOWN), counters(m)
            c = counters(m)
            assert c["slices_computed"] <= 2 * (1 + len(IJ_SHOWN)), c
            assert c["errors"] == 0, c

    def calibration():
        # the virtual stack's calibration, from the slice files' resolution tags
        out = os.path.join(tmp, "imagej-cal")
        os.makedirs(out)
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM},cache=none") as m:
            res = imagej(imagej_virtual_stack_macro(m.path("slices"), out, []), tmp)
        assert res["unit"] == "um", f"ImageJ shows the unit {res['unit']!r}, not micrometres"
        for key in ("pixel_width", "pixel_height"):
            assert abs(float(res[key]) - PIXEL_UM) < 1e-4, (key, res[key], PIXEL_UM)

    def large_pixels():
        # bin=4 makes 26 um pixels. From centimetre resolution tags alone ImageJ shows
        # micrometres only up to 0.001 cm (10 um); the ImageJ-style description of the slice
        # files (unit=um) makes it do so for every size (docs/outputs.md, "Calibration").
        out = os.path.join(tmp, "imagej-cal-bin4")
        os.makedirs(out)
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM},bin=4,cache=none") as m:
            res = imagej(imagej_virtual_stack_macro(m.path("slices"), out, []), tmp)
        print(f"     ImageJ, 4 x {PIXEL_UM} um pixels: {res['pixel_width']} {res['unit']}")
        assert res["unit"] == "um", f"ImageJ shows {res['pixel_width']} {res['unit']}"
        for key in ("pixel_width", "pixel_height"):
            assert abs(float(res[key]) - 4 * PIXEL_UM) < 1e-4, (key, res)

    def uint16_values():
        # dtype=uint16: ImageJ turns samples into cm^-1 with the description's straight line
        out = os.path.join(tmp, "imagej-u16")
        os.makedirs(out)
        k = IJ_SHOWN[1]
        name = f"slice_{k - 1:05d}.tif"
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM},dtype=uint16,cache=none") as m:
            res = imagej(imagej_virtual_stack_macro(m.path("slices"), out, [k]), tmp)
            samples = read_tiff(m.path("slices", name))
            info = json.load(open(m.path("scan.json")))
        floats = read_tiff(os.path.join(exported, name))
        assert res["bitdepth"] == "16" and samples.dtype == np.uint16, res
        assert np.array_equal(read_tiff(os.path.join(out, f"imagej_{k}.tif")), samples)
        centre = floats[WIDTH // 2, WIDTH // 2]
        lo, hi = info["variants"]["slices"]["range"]
        step = (hi - lo) / 65535
        print(f"     ImageJ, uint16: centre {res[f'calibrated{k}']} cm^-1, float32 {centre:.6f} "
              f"(step {step:.2g})")
        assert abs(float(res[f"calibrated{k}"]) - centre) <= step, (res, centre, step)

    def tall_folder_imports_one_slice(tall):
        with Mount(tall, "-o", "center=8.75,max_chunk=2,cache=none") as m:
            t0 = time.time()
            res = imagej(f"""
setBatchMode(true);
t0 = getTime();
run("Image Sequence...", "dir=[{m.path('slices')}/] sort use");
print("RESULT ms=" + (getTime() - t0));
print("RESULT slices=" + nSlices);
print("RESULT label=" + getInfo("slice.label"));
""", tmp)
            print(f"     ImageJ imported {res['slices']} slices in {res['ms']} ms "
                  f"({time.time() - t0:.1f} s with start-up); status {counters(m)}")
            assert res["slices"] == str(TALL_ROWS), res
            assert res["label"] == "slice_00000", res
            assert computations(m) == 1, counters(m)

    return virtual_stack, calibration, large_pixels, uint16_values, tall_folder_imports_one_slice


# ---- ParaView ----

PVPYTHON_SCRIPT = r'''
import glob, json, sys
import numpy as np
from paraview.simple import TIFFSeriesReader
from paraview import servermanager
from vtk.util.numpy_support import vtk_to_numpy

folder, outdir, status = sys.argv[1], sys.argv[2], sys.argv[3]
shown = [int(t) for t in sys.argv[4].split(",")]
files = sorted(glob.glob(folder + "/slice_*.tif"))
res = {}

def fetch(reader, time=None):
    if time is None:
        reader.UpdatePipeline()
    else:
        reader.UpdatePipeline(time)
    data = servermanager.Fetch(reader)
    scalars = data.GetPointData().GetScalars()
    nx, ny, nz = data.GetDimensions()
    return data, vtk_to_numpy(scalars).reshape(nz, ny, nx), scalars.GetDataTypeAsString()

series = TIFFSeriesReader(FileNames=files, ReadAsImageStack=0)
series.UpdatePipelineInformation()
res["timesteps"] = len(series.TimestepValues)
res["status_information"] = open(status).read()
for t in shown:
    data, values, kind = fetch(series, t)
    np.save("%s/paraview_%d.npy" % (outdir, t), values[0])
    res["step%d" % t] = {"dims": data.GetDimensions(), "spacing": data.GetSpacing(), "type": kind}
res["status_series"] = open(status).read()

stack = TIFFSeriesReader(FileNames=files, ReadAsImageStack=1)
data, values, kind = fetch(stack)
np.save("%s/paraview_stack.npy" % outdir, values)
res["stack"] = {"dims": data.GetDimensions(), "spacing": data.GetSpacing(), "type": kind}
res["status_stack"] = open(status).read()
print("RESULT " + json.dumps(res))
'''


PVPYTHON_NRRD_SCRIPT = r'''
import json, sys
import numpy as np
from paraview.simple import OpenDataFile
from paraview import servermanager
from vtk.util.numpy_support import vtk_to_numpy

reader = OpenDataFile(sys.argv[1])
reader.UpdatePipeline()
data = servermanager.Fetch(reader)
scalars = data.GetPointData().GetScalars()
nx, ny, nz = data.GetDimensions()
np.save(sys.argv[2], vtk_to_numpy(scalars).reshape(nz, ny, nx))
print("RESULT " + json.dumps({"reader": reader.GetXMLName(), "dims": [nx, ny, nz],
                              "spacing": data.GetSpacing(),
                              "type": scalars.GetDataTypeAsString()}))
'''


def paraview_volume_check(tmp, scan):
    def volume_file():
        script = os.path.join(tmp, "paraview_nrrd.py")
        with open(script, "w") as f:
            f.write(PVPYTHON_NRRD_SCRIPT)
        out = os.path.join(tmp, "paraview_nrrd.npy")
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM},cache=none") as m:
            p = run_client(["pvpython", script, m.path("volumes", "slices.nrrd"), out])
            lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            assert p.returncode == 0 and lines, f"pvpython failed ({p.returncode}):\n" \
                                                f"{p.stdout}\n{p.stderr}"
            res = json.loads(lines[-1][7:])
            served = np.stack([read_tiff(m.path("slices", f"slice_{z:05d}.tif"))
                               for z in range(ROWS)])
        assert res["dims"] == [WIDTH, WIDTH, ROWS] and res["type"] == "float", res
        volume = np.load(out)
        # NRRD's axes run x fastest, like the slice files: the same samples in the same order
        assert np.array_equal(volume, served), "volumes/slices.nrrd differs from the slices"
        for s in res["spacing"]:
            assert abs(s - PIXEL_UM) < 1e-6 * PIXEL_UM or abs(s - PIXEL_UM / 1000) < 1e-9, \
                res["spacing"]
        print(f"     ParaView ({res['reader']}) opens volumes/slices.nrrd as one "
              f"{res['dims']} float32 image at spacing {res['spacing'][0]:.6g}")

    return volume_file


def parse_status(text):
    return dict(line.split(": ", 1) for line in text.splitlines())


def paraview_checks(tmp, scan):
    def series_and_stack():
        out = os.path.join(tmp, "paraview-out")
        os.makedirs(out)
        script = os.path.join(tmp, "paraview_read.py")
        with open(script, "w") as f:
            f.write(PVPYTHON_SCRIPT)
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM},max_chunk=2,cache=none") as m:
            p = run_client(["pvpython", script, m.path("slices"), out,
                            m.path(".tomofs", "status"), ",".join(map(str, PV_SHOWN))])
            lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            assert p.returncode == 0 and lines, f"pvpython failed ({p.returncode}):\n" \
                                                f"{p.stdout}\n{p.stderr}"
            res = json.loads(lines[-1][7:])
            served = {t: read_tiff(m.path("slices", f"slice_{t:05d}.tif")) for t in range(ROWS)}
        assert res["timesteps"] == ROWS, res["timesteps"]
        spacing_mm = PIXEL_UM / 1000
        for t in PV_SHOWN:
            step = res[f"step{t}"]
            assert step["type"] == "float", step
            assert step["dims"] == [WIDTH, WIDTH, 1], step
            for s in step["spacing"][:2]:
                assert abs(s - spacing_mm) < 1e-6 * spacing_mm + 1e-9, step["spacing"]
            values = np.load(os.path.join(out, f"paraview_{t}.npy"))
            assert values.dtype == np.float32
            # VTK keeps the file's row order (its y axis points up, so pictures look flipped)
            assert np.array_equal(values, served[t]), f"time step {t}: values differ"
        print(f"     ParaView file series: {res['timesteps']} time steps, float32, spacing "
              f"{res[f'step{PV_SHOWN[0]}']['spacing'][0]:.6g} mm")

        def computed(key):
            st = parse_status(res[key])
            return int(st["requests"]) - int(st["joined"]), int(st["slices_computed"])

        # the information pass opens the first file; each time step reads its own file only
        assert computed("status_information")[0] == 1, res["status_information"]
        n, slices = computed("status_series")
        assert n == 1 + len(PV_SHOWN) and slices <= 2 * n, res["status_series"]
        # as an image stack ParaView reads, and so computes, every slice
        stack = res["stack"]
        assert stack["dims"] == [WIDTH, WIDTH, ROWS] and stack["type"] == "float", stack
        volume = np.load(os.path.join(out, "paraview_stack.npy"))
        assert np.array_equal(volume, np.stack([served[z] for z in range(ROWS)]))
        assert computed("status_stack")[1] == ROWS, res["status_stack"]
        print(f"     ParaView image stack: {stack['dims']} at {stack['spacing'][0]:.6g} mm; "
              f"computed every slice, as documented")

    return series_and_stack


# ---- shell tools ----

def rsync_transferred(src, dst):
    p = subprocess.run(["rsync", "-a", "--stats", src + "/", dst + "/"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    m = re.search(r"Number of regular files transferred: ([\d,]+)", p.stdout)
    assert m, p.stdout
    return int(m.group(1).replace(",", ""))


def same_files(folder, exported, rows):
    bad = [n for n in names(rows) if open(os.path.join(folder, n), "rb").read() !=
           open(os.path.join(exported, n), "rb").read()]
    assert not bad, f"{folder}: differ from export: {bad[:5]}"


def shell_checks(tmp, scan, exported):
    options = ["-o", f"pixel_um={PIXEL_UM}"]

    def file_command():
        with Mount(scan, *options) as m:
            out = subprocess.run(["file", "-b", m.path("slices", "slice_00010.tif")],
                                 capture_output=True, text=True, check=True).stdout
        assert "TIFF image data, little-endian" in out, out

    def cp_tar_tifffile():
        with Mount(scan, *options) as m:
            dest = os.path.join(tmp, "cp")
            subprocess.run(["cp", "-r", m.path("slices"), dest], check=True)
            same_files(dest, exported, ROWS)
            archive = os.path.join(tmp, "slices.tar")
            # tar stats every file again after reading it and warns if anything changed
            p = subprocess.run(["tar", "-cf", archive, "-C", m.dir, "slices"],
                               capture_output=True, text=True)
            assert p.returncode == 0 and not p.stderr, (p.returncode, p.stderr)
            untarred = os.path.join(tmp, "untar")
            os.makedirs(untarred)
            subprocess.run(["tar", "-xf", archive, "-C", untarred], check=True)
            same_files(os.path.join(untarred, "slices"), exported, ROWS)
            mtime = os.stat(m.path("slices", "slice_00000.tif")).st_mtime
            assert os.stat(os.path.join(untarred, "slices", "slice_00000.tif")).st_mtime == mtime
            import tifffile
            mapped = tifffile.memmap(m.path("slices", "slice_00007.tif"), mode="r")
            assert isinstance(mapped, np.memmap) and mapped.dtype == np.float32
            assert np.array_equal(mapped, read_tiff(os.path.join(exported, "slice_00007.tif")))
            del mapped  # unmapped, or the mount would be busy

    def rsync_twice_and_after_remount():
        dest = os.path.join(tmp, "rsync")
        with Mount(scan, *options) as m:
            before = [os.stat(m.path("slices", n)) for n in names(ROWS)]
            assert rsync_transferred(m.path("slices"), dest) == ROWS
            same_files(dest, exported, ROWS)
            assert rsync_transferred(m.path("slices"), dest) == 0
        with Mount(scan, *options) as m:
            after = [os.stat(m.path("slices", n)) for n in names(ROWS)]
            assert [(s.st_size, s.st_mtime_ns) for s in before] == \
                [(s.st_size, s.st_mtime_ns) for s in after], "sizes or times changed"
            assert rsync_transferred(m.path("slices"), dest) == 0
            # the quick check compared sizes and times only: nothing was read or computed
            assert counters(m)["requests"] == 0, counters(m)

    return file_command, cp_tar_tifffile, rsync_twice_and_after_remount


# ---- metadata, status, log, progress ----

def metadata_checks(tmp, tall):
    def ls_and_list_then_stat():
        size = 4096 + 16 * 16 * 4
        with Mount(tall, "-o", "center=8.75,cache=none") as m:
            t0 = time.time()
            out = subprocess.run(["ls", "-l", m.path("slices")], capture_output=True, text=True,
                                 check=True).stdout.splitlines()
            t_ls = time.time() - t0
            assert len(out) == TALL_ROWS + 1, len(out)  # "total N" and one line per file
            assert out[1].split()[4] == str(size), out[1]
            t0 = time.time()
            listed = os.listdir(m.path("slices"))  # ImageJ: File.list(), then
            for name in listed:                    # File.isDirectory() on every name
                st = os.stat(m.path("slices", name))
                assert st.st_size == size and not os.path.isdir(m.path("slices", name))
            t_stat = time.time() - t0
            assert listed == names(TALL_ROWS)
            c = counters(m)
            print(f"     {TALL_ROWS} slices: ls -l {t_ls:.2f} s, list then stat {t_stat:.2f} s "
                  f"(not asserted; see docs/performance.md); status {c}")
            assert c["requests"] == 0 and c["slices_computed"] == 0, c

    return ls_and_list_then_stat


def status_and_log_checks(tmp, scan):
    def status_file():
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM}") as m:
            open(m.path("slices", "slice_00003.tif"), "rb").read()
        with Mount(scan, "-o", f"pixel_um={PIXEL_UM}") as m:
            st = m.status()
            for key in ("version", "mountpoint", "uptime_seconds", "backend", "queued",
                        "requests", "slices_computed", "errors", "last_error", "ram_hits",
                        "ram_evictions", "cache_hits", "cache_misses", "cache"):
                assert key in st, f"status lacks {key}: {st}"
            assert st["mountpoint"] == os.path.realpath(m.dir), st["mountpoint"]
            assert st["backend"].startswith("cpu"), st["backend"]
            assert st["last_error"] == "none" and st["errors"] == "0", st
            open(m.path("slices", "slice_00003.tif"), "rb").read()
            deadline = time.time() + 5
            while m.status()["cache_hits"] == "0" and time.time() < deadline:
                time.sleep(0.02)
            st = m.status()
            assert int(st["cache_hits"]) >= 1 and st["slices_computed"] == "0", st
            assert st["queued"] == "0", st

    def errors_in_status_and_log():
        broken = os.path.join(tmp, "late-broken")
        shutil.copytree(scan, broken, ignore=shutil.ignore_patterns("truth"))
        m = Mount(broken, "-o", "cache=none", foreground=True)
        with m:
            frame = sorted(f for f in os.listdir(broken) if f.startswith("q"))[20]
            path = os.path.join(broken, frame)
            os.truncate(path, os.path.getsize(path) - WIDTH * 2 * (ROWS // 2))
            victim = f"slice_{ROWS - 1:05d}.tif"
            try:
                open(m.path("slices", victim), "rb").read()
            except OSError as e:
                assert e.errno == errno.EIO, e
            else:
                raise AssertionError("a slice with a truncated frame was served")
            st = m.status()
            print(f"     last_error: {st['last_error']}")
            assert int(st["errors"]) >= 1, st
            assert f"slices/{victim}" in st["last_error"] and frame in st["last_error"], st
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", st["last_error"]), st
            mountpoint = os.path.realpath(m.dir)
            # the daemon is this process's child: tomofs umount would take the zombie it
            # leaves until reaped for a daemon still running
            subprocess.run(["fusermount3", "-u", m.dir], check=True)
            m.proc.wait(timeout=60)
        log = m.proc.stderr.read()
        print("     log: " + "\n     log: ".join(log.strip().splitlines()))
        lines = [l for l in log.splitlines() if f"{mountpoint}/slices/{victim}" in l]
        assert len(lines) >= 1 and "error" in lines[0] and frame in lines[0], log
        assert any(l.startswith("tomofs: stopped serving") for l in log.splitlines()), log

    def progress_bars():
        def on_terminal(*args):
            master, slave = pty.openpty()
            p = subprocess.Popen([TOMOFS, *map(str, args)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=slave)
            os.close(slave)
            chunks = []
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            os.close(master)
            assert p.wait(timeout=300) == 0, args
            return b"".join(chunks).decode(errors="replace")

        out = on_terminal("phantom", os.path.join(tmp, "pty-scan"), "--width", 32, "--rows", 8,
                          "--projections", 40)
        assert re.search(r"phantom: frames \[#+\] (\d+)/\1 100%", out), out
        out = on_terminal("export", scan, os.path.join(tmp, "pty-export"), "--range", "0:6")
        assert re.search(r"export \[#+\] 6/6 100%", out), out
        out = on_terminal("bench", scan, "--rows", 2, "--repeat", 2)
        assert re.search(r"bench \[#+\] 2/2 100%", out), out
        cache = os.path.join(tmp, "pty-cache")
        on_terminal("export", scan, os.path.join(tmp, "pty-export-cached"), "--range", "0:6",
                    "-o", "cache=" + cache)
        out = on_terminal("cache", "verify", "--cache", cache)
        assert re.search(r"verify \[#+\] 6/6 100%", out), out

    return status_file, errors_in_status_and_log, progress_bars


# ---- screenshots for docs/user-guide.md ----

class Display:
    """An Xvfb server for the pictures; xdotool finds and clicks windows, PIL grabs the screen."""

    def __init__(self, number=97, size="1280x800"):
        self.name = f":{number}"
        self.proc = subprocess.Popen(["Xvfb", self.name, "-screen", "0", size + "x24",
                                      "-nolisten", "tcp"], stderr=subprocess.DEVNULL)
        self.env = dict(os.environ, DISPLAY=self.name)
        time.sleep(1)

    def xdotool(self, *args):
        return subprocess.run(["xdotool", *map(str, args)], env=self.env, capture_output=True,
                              text=True).stdout

    def window(self, title, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.xdotool("search", "--name", title).split()
            if found:
                return found[0]
            time.sleep(0.3)
        raise SystemExit(f"no window named {title!r} appeared")

    def click(self, window, x, y):
        self.xdotool("mousemove", "--window", window, x, y, "click", "1")

    def grab(self, path, box=None):
        """Saves the screen (cropped to the windows on it, or to box) as a PNG."""
        from PIL import ImageGrab
        img = ImageGrab.grab(xdisplay=self.name)
        box = box or img.point(lambda v: 255 if v > 0 else 0).getbbox()
        img.crop(box).save(path, optimize=True)
        print(f"wrote {path} ({box[2] - box[0]} x {box[3] - box[1]})")

    def close(self):
        self.proc.terminate()
        self.proc.wait()


PARAVIEW_SCENE = r"""
import glob, sys
from paraview.simple import *
files = sorted(glob.glob("%(slices)s/slice_*.tif"))
reader = TIFFSeriesReader(registrationName="slice_..tif", FileNames=files, ReadAsImageStack=0)
view = GetActiveViewOrCreate("RenderView")
display = Show(reader, view)
display.SetRepresentationType("Slice")
ColorBy(display, ("POINTS", "Tiff Scalars"))
lut = GetColorTransferFunction("TiffScalars")
lut.ApplyPreset("Grayscale", True)
lut.RescaleTransferFunction(-2.0, 30.0)
display.SetScalarBarVisibility(view, True)
scene = GetAnimationScene()
scene.UpdateAnimationUsingDataTimeSteps()
scene.AnimationTime = %(step)d
GetTimeKeeper().Time = %(step)d
view.InteractionMode = "2D"
half = %(size_mm)f / 2
view.CameraFocalPoint = [half, half, 0]
view.CameraPosition = [half, half, 10]
view.CameraViewUp = [0, 1, 0]
view.CameraParallelScale = half * 1.05
Render(view)
"""


def screenshots(outdir):
    """Pictures of ImageJ and ParaView showing a mounted phantom, for docs/user-guide.md."""
    for program, package in [("Xvfb", "xvfb"), ("xdotool", "xdotool"), ("imagej", "imagej"),
                             ("paraview", "paraview"), ("pvpython", "python3-paraview")]:
        if not shutil.which(program):
            sys.exit(f"{program} is needed for the screenshots (apt-get install {package})")
    outdir = os.path.abspath(outdir)
    tmp = tempfile.mkdtemp(prefix="tomofs-shots-")
    scan = phantom(os.path.join(tmp, "raw"), 256, 64, 360, "--pixel-um", PIXEL_UM,
                   "--photons", 20000)
    home = os.path.join(tmp, "home")
    os.makedirs(home)
    shown = 33
    mnt = os.path.join(tmp, "scan")
    os.makedirs(mnt)
    run("mount", scan, mnt, "-o", f"pixel_um={PIXEL_UM}")
    try:
        slices = os.path.join(mnt, "slices")
        screen = Display()
        env = dict(screen.env, HOME=home)
        try:
            # ImageJ: File > Import > Image Sequence..., "Use virtual stack" ticked, OK; then the
            # stack at one slice. The macro opens the dialog from a second thread (doCommand);
            # the clicks are xdotool's.
            done = os.path.join(tmp, "done")
            macro = os.path.join(tmp, "shots.ijm")
            with open(macro, "w") as f:
                f.write(f"""
call("ij.Prefs.set", "import.sequence.dir", "{slices}/");
doCommand("Image Sequence...");
while (nImages == 0) wait(200);
wait(1000);
setSlice({shown});
run("Set... ", "zoom=200");
setMinAndMax(-2, 30);
while (!File.exists("{done}")) wait(200);
run("Quit");
""")
            ij = subprocess.Popen(["imagej", "-m", macro], env=env, stdout=subprocess.DEVNULL)
            dialog = screen.window("Import Image Sequence")
            time.sleep(1.5)
            screen.click(dialog, 45, 306)  # the "Use virtual stack" box
            time.sleep(0.5)
            screen.grab(os.path.join(outdir, "imagej-import.png"))
            screen.xdotool("key", "Return")  # OK
            screen.window(r"^slices \(V\)$")  # (V): a virtual stack
            time.sleep(2)
            screen.grab(os.path.join(outdir, "imagej-stack.png"))
            open(done, "w").close()
            ij.wait(timeout=60)

            # ParaView: the slices as a file series, one time step (slice) shown
            script = os.path.join(tmp, "scene.py")
            with open(script, "w") as f:
                f.write(PARAVIEW_SCENE % {"slices": slices, "step": shown - 1,
                                          "size_mm": 256 * PIXEL_UM / 1000})
            pv = subprocess.Popen(["paraview", f"--script={script}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            screen.window("ParaView")
            welcome = screen.window("Welcome to ParaView", timeout=30)
            time.sleep(5)
            screen.xdotool("windowfocus", welcome)
            screen.xdotool("key", "Escape")
            time.sleep(5)
            screen.grab(os.path.join(outdir, "paraview-series.png"))
            pv.kill()
            pv.wait()
        finally:
            screen.close()
        print("status after the pictures:\n" + open(os.path.join(mnt, ".tomofs", "status")).read())
    finally:
        run("umount", mnt)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshots":
        screenshots(sys.argv[2])
        return
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("SKIP: /dev/fuse or fusermount3 is missing; FUSE tests cannot run here")
        sys.exit(SKIP)
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-clients-")
    scan = phantom(os.path.join(tmp, "scan"), WIDTH, ROWS, PROJ, "--pixel-um", PIXEL_UM)
    truth_center = phantom_center(scan)
    exported = os.path.join(tmp, "export")
    run("export", scan, exported, "-o", f"pixel_um={PIXEL_UM}")
    tall = phantom(os.path.join(tmp, "tall"), 16, TALL_ROWS, 4, "--no-truth")

    (virtual_stack, calibration, large_pixels, uint16_values,
     tall_import) = imagej_checks(tmp, scan, truth_center, exported)
    imagej = [("imagej", "imagej"), ("xvfb-run", "xvfb"), ("xauth", "xauth")]
    check_with(r, imagej, "ImageJ: a virtual stack computes only the slices shown; pixels "
               "equal the file and the truth", virtual_stack)
    check_with(r, imagej, f"ImageJ: calibration {PIXEL_UM} um", calibration)
    check_with(r, imagej, f"ImageJ: calibration {4 * PIXEL_UM} um (bin=4)", large_pixels)
    check_with(r, imagej, "ImageJ: uint16 slices calibrated in cm^-1", uint16_values)
    check_with(r, imagej, f"ImageJ: a {TALL_ROWS}-slice folder imports computing one slice",
               lambda: tall_import(tall))
    check_with(r, [("pvpython", "python3-paraview")],
               "ParaView: file series and image stack, float32, spacing, laziness",
               paraview_checks(tmp, scan))
    check_with(r, [("pvpython", "python3-paraview")],
               "ParaView: volumes/slices.nrrd opens as one 3D float32 image equal to the slices",
               paraview_volume_check(tmp, scan))
    file_command, cp_tar_tifffile, rsync_checks = shell_checks(tmp, scan, exported)
    check_with(r, [("file", "file")], "file names a little-endian TIFF", file_command)
    r.check("cp -r, tar (no 'file changed' warning), tifffile memory mapping", cp_tar_tifffile)
    check_with(r, [("rsync", "rsync")],
               "rsync -a twice and after a remount: the second copies and computes nothing",
               rsync_checks)
    r.check(f"ls -l and list-then-stat of {TALL_ROWS} slices compute nothing",
            metadata_checks(tmp, tall))
    status_file, errors_in_status_and_log, progress_bars = status_and_log_checks(tmp, scan)
    r.check("status: version, mount point, backend, queue, cache hits, errors", status_file)
    r.check("a failed read: status last_error and a log line naming the file",
            errors_in_status_and_log)
    r.check("phantom, export, bench and cache verify draw progress bars on a terminal",
            progress_bars)
    r.finish()


if __name__ == "__main__":
    main()
