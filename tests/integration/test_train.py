"""tomofs train on a noisy phantom: the loss falls, checkpoints and resume are exact, the model
file reads back with an independent parser of its documented format, and the loss CSV and PNG
are valid.

The network is tiny (11:8:2) and the phantom 64 x 64 x 32, so every run takes seconds on the
CPU.
"""

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

NET = ["--net", "11:8:2", "--slices-per-epoch", "16", "--batch", "2", "--patch", "32",
       "--device", "cpu", "-o", "threads=2"]
EPOCHS = 6
STEPS_PER_EPOCH = 8


# ---- an independent reader of the model file (denoise/model.h, format version 1) -----------

class Reader:
    def __init__(self, data, at):
        self.data = data
        self.at = at

    def take(self, fmt):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def text(self):
        n = self.take("I")
        s = self.data[self.at:self.at + n].decode()
        self.at += n
        return s

    def floats(self):
        n = self.take("Q")
        a = np.frombuffer(self.data, dtype="<f4", count=n, offset=self.at).copy()
        self.at += 4 * n
        return a


def read_model(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:16] == b"TOMOFS-N2I-MODEL", "magic"
    version, reserved, size = struct.unpack_from("<IIQ", data, 16)
    assert version == 1 and reserved == 0, (version, reserved)
    assert size == len(data), (size, len(data))
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4]), "crc"
    r = Reader(data, 32)
    m = {}
    m["net"] = r.take("iii")
    m["split"] = r.take("iii")
    m["options"] = r.take("iiiiiffffQ")
    m["mean"], m["std"] = r.take("dd")
    m["fingerprint"] = r.take("Q")
    m["base_variant"] = r.text()
    m["base_key"] = r.take("Q")
    m["base_params"] = r.text()
    m["slice_size"], m["n_slices"] = r.take("ii")
    m["epoch"] = r.take("i")
    m["step_in_epoch"], m["step"] = r.take("QQ")
    m["seconds"] = r.take("d")
    m["rng"] = r.take("QQQQ")
    m["adam_step"] = r.take("Q")
    m["id"] = r.take("Q")
    m["params"] = r.floats()
    m["buffers"] = r.floats()
    m["adam_m"] = r.floats()
    m["adam_v"] = r.floats()
    n = r.take("Q")
    m["history"] = [r.take("iQdd") for _ in range(n)]
    assert r.at == len(data) - 4, "trailing bytes"
    return m


def expected_params(c, f, levels):
    """Parameter count of denoise/unet.h's layout, computed from its description."""
    def block(a, b):
        return (a * b * 9 + 2 * b) + (b * b * 9 + 2 * b)
    n = 0
    in_c = c
    for l in range(levels + 1):
        n += block(in_c, f << l)
        in_c = f << l
    for l in range(levels - 1, -1, -1):
        n += (f << (l + 1)) * (f << l) * 4 + (f << l)
        n += block(2 * (f << l), f << l)
    return n + f + 1


# ---- an independent PNG reader --------------------------------------------------------------

def read_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "signature"
    at, idat, ihdr, chunks = 8, b"", None, []
    while at < len(data):
        n, kind = struct.unpack_from(">I4s", data, at)
        body = data[at + 8:at + 8 + n]
        crc = struct.unpack_from(">I", data, at + 8 + n)[0]
        assert crc == zlib.crc32(kind + body), f"CRC of {kind}"
        chunks.append(kind)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + n
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", chunks
    w, h, depth, colour, comp, filt, interlace = ihdr
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0), ihdr
    raw = zlib.decompress(idat)  # checks the Adler-32 too
    assert len(raw) == h * (1 + 3 * w), (len(raw), w, h)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all(), "filter type 0 on every row"
    return rows[:, 1:].reshape(h, w, 3)


def read_csv(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0] == "epoch,step,loss,seconds", lines[0]
    rows = []
    for line in lines[1:]:
        e, s, loss, sec = line.split(",")
        rows.append((int(e), int(s), float(loss), float(sec)))
    return rows


def train(scan, model, *extra, check=True):
    return common.run("train", scan, *NET, "--model", model, *extra, check=check, timeout=600)


def interrupt(scan, model, sig, *extra):
    """Starts training, signals it once its first checkpoint of this run exists, and waits."""
    csv = model[:-len(".model")] + ".loss.csv"
    before = os.path.getmtime(csv) if os.path.exists(csv) else None
    p = subprocess.Popen([common.TOMOFS, "train", scan, *NET, "--model", model, *map(str, extra)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(csv) and os.path.getmtime(csv) != before:
            break
        time.sleep(0.01)
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return p.returncode, err


def main():
    work = tempfile.mkdtemp(prefix="tomofs-train-")
    scan = common.phantom(os.path.join(work, "scan"), 64, 32, 120, "--photons", "500",
                          "--threads", "2")
    results = common.Results()
    full = os.path.join(work, "full.model")
    state = {}

    def uninterrupted():
        p = train(scan, full, "--epochs", EPOCHS)
        assert f"epoch {EPOCHS}/{EPOCHS}" in p.stderr, p.stderr
        m = read_model(full)
        state["full"] = m
        n = EPOCHS * STEPS_PER_EPOCH
        assert m["net"] == (11, 8, 2)
        assert len(m["params"]) == expected_params(11, 8, 2), len(m["params"])
        assert len(m["adam_m"]) == len(m["adam_v"]) == len(m["params"])
        assert m["split"] == (2, 0, 5), m["split"]  # K = 2, X:1, 5 slices either side
        assert m["options"][:5] == (EPOCHS, 16, 2, 32, 32), m["options"]
        assert abs(m["options"][5] - 1e-3) < 1e-9 and m["options"][9] == 1
        assert m["epoch"] == EPOCHS and m["step"] == n and m["step_in_epoch"] == 0
        assert m["adam_step"] == n and len(m["history"]) == n
        assert m["slice_size"] == 64 and m["n_slices"] == 32
        assert m["base_variant"] == "rings-removed" and "rings=sort" in m["base_params"]
        assert m["std"] > 0 and np.isfinite(m["mean"])
        assert np.isfinite(m["params"]).all() and np.isfinite(m["buffers"]).all()

    def loss_falls():
        rows = read_csv(os.path.join(work, "full.loss.csv"))
        assert len(rows) == EPOCHS * STEPS_PER_EPOCH
        assert [r[1] for r in rows] == list(range(1, len(rows) + 1))
        assert [r[0] for r in rows] == [1 + i // STEPS_PER_EPOCH for i in range(len(rows))]
        secs = [r[3] for r in rows]
        assert all(b >= a for a, b in zip(secs, secs[1:])) and secs[-1] > 0
        # The CSV is the model's history.
        for r, h in zip(rows, state["full"]["history"]):
            assert (r[0], r[1]) == h[:2] and abs(r[2] - h[2]) <= 1e-8 * h[2], (r, h)
        means = [np.mean([r[2] for r in rows if r[0] == e]) for e in range(1, EPOCHS + 1)]
        print("mean loss per epoch:", " ".join(f"{x:.4f}" for x in means))
        # Random weights start far from the target; Noise2Inverse's loss then falls towards
        # the noise level of the left-out split.
        assert means[-1] < 0.7 * means[0], means
        assert min(means[-2:]) < min(means[:2]), means

    def png_valid():
        img = read_png(os.path.join(work, "full.loss.png"))
        from skimage import io
        assert (io.imread(os.path.join(work, "full.loss.png")) == img).all()
        blue = (img == np.array([31, 100, 180], np.uint8)).all(axis=2).sum()
        grey = (img == np.array([175, 175, 175], np.uint8)).all(axis=2).sum()
        black = (img == 0).all(axis=2).sum()
        assert blue > 50 and grey > 50 and black > 500, (blue, grey, black)

    def sigint_then_resume():
        cut = os.path.join(work, "cut.model")
        rc, err = interrupt(scan, cut, signal.SIGINT, "--epochs", EPOCHS)
        assert rc == 130, (rc, err)
        assert "checkpoint saved to " + cut in err and "--resume" in err, err
        m = read_model(cut)  # a valid file: checksum, sizes, fields
        assert 1 <= m["step"] < EPOCHS * STEPS_PER_EPOCH, m["step"]
        assert len(m["history"]) == m["step"] == m["adam_step"]
        assert m["epoch"] * STEPS_PER_EPOCH + m["step_in_epoch"] == m["step"]
        print(f"interrupted after step {m['step']}")
        assert len(read_csv(os.path.join(work, "cut.loss.csv"))) == m["step"]
        # Stopped again, by SIGTERM, on the way.
        rc, err = interrupt(scan, cut, signal.SIGTERM, "--resume")
        assert rc in (143, 0), (rc, err)
        if rc == 143:
            assert "SIGTERM" in err and "checkpoint saved" in err, err
            print(f"terminated after step {read_model(cut)['step']}")
        p = train(scan, cut, "--resume")
        assert "resuming" in p.stderr or "already trained" in p.stderr, p.stderr
        a, b = state["full"], read_model(cut)
        for key in ("params", "buffers", "adam_m", "adam_v"):
            assert a[key].tobytes() == b[key].tobytes(), key
        for key in ("rng", "adam_step", "step", "epoch", "id", "mean", "std"):
            assert a[key] == b[key], (key, a[key], b[key])
        assert [h[2] for h in a["history"]] == [h[2] for h in b["history"]]

    def second_run_uses_cache():
        def stats():
            out = common.run("cache", "stats").stdout
            return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        before = stats()
        train(scan, os.path.join(work, "again.model"), "--epochs", 1)
        after = stats()
        assert after["misses"] == before["misses"], (before, after)
        assert int(after["hits"]) > int(before["hits"]), (before, after)

    def refusals():
        p = train(scan, full, "--epochs", EPOCHS, check=False)
        assert p.returncode == 2 and "already there" in p.stderr and full in p.stderr, p.stderr
        p = train(scan, full, "--resume", "--batch", "4", check=False)
        assert p.returncode == 2 and "--batch 2" in p.stderr, p.stderr
        p = train(scan, full, "--resume", check=False)  # nothing left to do
        assert p.returncode == 0 and "already trained" in p.stderr, p.stderr
        bad = os.path.join(work, "bad.model")
        with open(full, "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0x40
        with open(bad, "wb") as f:
            f.write(data)
        p = train(scan, bad, "--resume", check=False)
        assert p.returncode == 1, p.returncode
        assert "bad.model: damaged model file: checksum mismatch" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) <= 3, p.stderr
        with open(bad, "wb") as f:
            f.write(b"not a model\n")
        p = train(scan, bad, "--resume", check=False)
        assert p.returncode == 1 and "not a tomofs model file" in p.stderr, p.stderr
        p = train(scan, os.path.join(work, "none.model"), "--resume", check=False)
        assert p.returncode == 1 and "nothing to resume" in p.stderr, p.stderr
        p = common.run("train", scan, "--net", "12:8:2", check=False)
        assert p.returncode == 2 and "odd" in p.stderr, p.stderr
        # A model of another scan is refused.
        other = common.phantom(os.path.join(work, "other"), 64, 32, 120, "--photons", "500",
                               "--seed", "2", "--threads", "2")
        p = train(other, full, "--resume", "--epochs", EPOCHS + 1, check=False)
        assert p.returncode == 1 and "another scan" in p.stderr, p.stderr

    def default_place():
        import json
        info = json.loads(common.run("info", scan).stdout)
        fingerprint = info["scan"]["fingerprint"]
        key = info["variants"]["rings-removed"]["key"]
        p = common.run("train", scan, *NET, "--epochs", 1)
        models = os.path.join(os.environ["XDG_CACHE_HOME"], "tomofs", "models")
        stem = f"{fingerprint}-rings-removed-{key}"
        assert sorted(os.listdir(models)) == [stem + ".loss.csv", stem + ".loss.png",
                                              stem + ".model"], os.listdir(models)
        assert os.path.join(models, stem + ".model") in p.stderr, p.stderr
        m = read_model(os.path.join(models, stem + ".model"))
        assert f"{m['fingerprint']:016x}" == fingerprint and f"{m['base_key']:016x}" == key
        assert m["epoch"] == 1
        assert m["base_params"] == info["variants"]["rings-removed"]["parameters"]

    def three_splits():
        k3 = os.path.join(work, "k3.model")
        train(scan, k3, "--epochs", 1, "-o", "splits=3")
        m = read_model(k3)
        assert m["split"] == (3, 0, 5) and m["epoch"] == 1, m["split"]
        # Resumed without -o splits=3: the model's K is used.
        p = train(scan, k3, "--epochs", 2, "--resume")
        assert "3 splits" in p.stderr, p.stderr
        m = read_model(k3)
        assert m["split"][0] == 3 and m["epoch"] == 2 and m["step"] == 2 * STEPS_PER_EPOCH

    def denoises():
        # The default model, trained on to 40 epochs, served by a mount: in the flat interior
        # of the phantom's features, denoised/ is closer to the truth than rings-removed/.
        p = common.run("train", scan, *NET, "--epochs", 40, "--resume")
        assert "epoch 40/40" in p.stderr, p.stderr
        zs = range(6, 26)
        truth = [common.read_tiff(os.path.join(scan, "truth", f"slice_{z:05d}.tif")) for z in zs]
        fov = common.fov_mask(64, common.phantom_center(scan), 64)
        with common.Mount(scan, "-o", "threads=2") as mnt:
            err = {}
            for folder in ("rings-removed", "denoised"):
                e = []
                for z, t in zip(zs, truth):
                    x = common.read_tiff(mnt.path(folder, f"slice_{z:05d}.tif"))
                    e.append((x - t)[fov & common.interior_mask(t, 3)])
                err[folder] = float(np.sqrt(np.mean(np.concatenate(e) ** 2)))
        print("interior RMS error: rings-removed {rings-removed:.2f}, denoised {denoised:.2f}"
              .format(**err))
        assert err["denoised"] < 0.85 * err["rings-removed"], err

    results.check("uninterrupted training writes a complete model", uninterrupted)
    results.check("the loss falls on a noisy phantom; the CSV is the history", loss_falls)
    results.check("the loss plot is a valid PNG with the curves drawn", png_valid)
    results.check("SIGINT and SIGTERM leave valid checkpoints; resumed = uninterrupted",
                  sigint_then_resume)
    results.check("a second run reads the split reconstructions from the cache",
                  second_run_uses_cache)
    results.check("refused: overwrite, changed options, damaged and foreign files", refusals)
    results.check("without --model the model goes to the cache folder", default_place)
    results.check("three splits, kept on resume", three_splits)
    results.check("the trained model lowers the noise of denoised/ through a mount", denoises)
    shutil.rmtree(work, ignore_errors=True)
    results.finish()


if __name__ == "__main__":
    main()
