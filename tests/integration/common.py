"""Shared helpers of the integration tests: run tomofs, make phantoms, mount and unmount."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOMOFS = os.environ.get("TOMOFS") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "tools", "tomofs")
SOURCE = os.environ.get("TOMOFS_SOURCE") or os.path.join(os.path.dirname(__file__), "..", "..")
SHARED_DATA = os.path.join(SOURCE, "..", "shared", "data")
SKIP = 77

# Mounts keep slices in a disk cache (by default ~/.cache/tomofs): tests get a fresh one, so
# they neither touch the user's cache nor see slices from other runs.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tomofs-test-cache-")


def run(*args, check=True, timeout=600, **kw):
    """Runs tomofs with args; returns the CompletedProcess (text mode)."""
    p = subprocess.run([TOMOFS, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"tomofs {' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def phantom(outdir, width, rows, projections, *extra):
    run("phantom", outdir, "--width", width, "--rows", rows, "--projections", projections,
        *extra)
    return outdir


def phantom_center(scan):
    with open(os.path.join(scan, "truth", "phantom.txt")) as f:
        for line in f:
            key, _, value = line.partition(":") if ":" in line else line.partition("=")
            if key.strip() == "center":
                return float(value.split()[0])
    raise AssertionError("no center in phantom.txt")


def read_tiff(path):
    import tifffile
    return tifffile.imread(path)


class Mount:
    """A tomofs mount in a temporary folder; unmounted on exit, however the test ends."""

    def __init__(self, scan, *options, foreground=False):
        self.scan = scan
        self.options = options
        self.dir = tempfile.mkdtemp(prefix="tomofs-mnt-")
        self.proc = None
        self.foreground = foreground

    def __enter__(self):
        args = [TOMOFS, "mount", self.scan, self.dir, *self.options]
        if self.foreground:
            self.proc = subprocess.Popen(args + ["-f"], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 60
            while not os.path.ismount(self.dir):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise AssertionError("mount failed: " + self.proc.stderr.read())
                time.sleep(0.05)
        else:
            p = subprocess.run(args, capture_output=True, text=True, timeout=120)
            if p.returncode != 0 or not os.path.ismount(self.dir):
                raise AssertionError(f"mount failed ({p.returncode}): {p.stderr}")
        return self

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def status(self):
        with open(self.path(".tomofs", "status")) as f:
            return dict(line.split(": ", 1) for line in f.read().splitlines())

    def pid(self):
        return int(self.status()["pid"])

    def unmount(self):
        if os.path.ismount(self.dir):
            run("umount", self.dir, timeout=60)
        if self.proc:
            self.proc.wait(timeout=60)

    def __exit__(self, *exc):
        try:
            self.unmount()
        finally:
            if os.path.ismount(self.dir):
                subprocess.run(["fusermount3", "-u", "-z", self.dir])
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
            try:
                os.rmdir(self.dir)
            except OSError:
                pass


class Results:
    """Counts named checks and prints 'N passed, N failed' at the end."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn):
        t0 = time.time()
        try:
            fn()
        except Exception as e:  # report and go on with the next check
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            import traceback
            traceback.print_exc()
        else:
            self.passed += 1
            print(f"ok   {name} ({time.time() - t0:.1f} s)", flush=True)

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        sys.exit(1 if self.failed else 0)


def fov_mask(size, center, width):
    """Pixels inside the reconstruction circle, as tomofs defines it (bin 1)."""
    import numpy as np
    r = min(center, width - 1 - center)
    c = np.arange(size) + 0.5 - width / 2
    x, y = np.meshgrid(c, -c)
    return x * x + y * y <= r * r


def interior_mask(truth, margin=2):
    """Pixels whose (2 margin + 1)^2 neighbourhood in the truth is constant (away from edges)."""
    from scipy import ndimage
    k = 2 * margin + 1
    return ndimage.maximum_filter(truth, k) == ndimage.minimum_filter(truth, k)
