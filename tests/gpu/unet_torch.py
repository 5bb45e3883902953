#!/usr/bin/env python3
"""tests/gpu/unet_torch.py - the denoising network's CUDA results against PyTorch in float64.

    unet_check torch DIR && python3 tests/gpu/unet_torch.py DIR

unet_check writes, for each case, the network (parameters and running statistics), an input
batch and a target, and the CUDA backend's results in exact (fp32) and tf32 mode. This script
builds the same network from the flat arrays with torch.nn.functional, following the layout of
denoise/unet.h (PyTorch's order and semantics) on its own, and computes in float64:

  forward       inference (running statistics), on the batch
  loss, grad    MSE and its gradient, BatchNorm with the batch's statistics, on the batch and
                on the first image alone
  steps         torch.optim.Adam (lr 1e-3, PyTorch's defaults), the running statistics updated
                by F.batch_norm (momentum 0.1, unbiased variance): after one step and three

Errors are relative RMS differences, ||got - ref|| / ||ref||; for the Adam steps, of the
parameter change. Exit status 1 when one is over its limit.

The gradient of a ReLU network with max-pools jumps where a value before a ReLU crosses 0 or
the two largest values of a pool window swap. float32 (ours, or PyTorch's own) lands on the
other side of such a point whenever float64 puts it within float32's rounding error, and the
gradient then differs by about 1 % (one pixel's contribution out of a few thousand). The
forward pass of the float64 reference counts these near-ties (a margin below NEAR_TIE of the
tensor's RMS; float32 forward errors here are about 1e-6), and PyTorch's own float32 gradient
is shown beside ours. unet_check marks the cases large enough to have them ("near_ties": the
medium one, where PyTorch's float32 gradient differs from float64 by 8e-3 on an H100); their
gradient and multi-step results get the looser "exact ties" limits, the others the exact
ones. Everything continuous in the parameters (forward, loss, running statistics after one
step) is held to the exact limits always.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

NEAR_TIE = 1e-5
LIMITS = {
    "exact": {"forward": 1e-5, "loss": 1e-5, "stats": 1e-5, "grad": 1e-4, "update": 3e-3,
              "stats3": 1e-5, "loss3": 1e-5},
    "exact ties": {"grad": 3e-2, "update": 0.5, "stats3": 3e-3, "loss3": 2e-3},
    "tf32": {"forward": 3e-3, "loss": 1e-3, "stats": 2e-3, "grad": 0.2, "update": 0.6,
             "stats3": 2e-2, "loss3": 1e-2},
}


def make_layout(channels, features, levels):
    """Offsets in params and buffers, in unet.h's order: down[0..L], (up[l], dec[l]) for
    l = L-1..0, head. Every entry is (offset, shape)."""
    cursor = {"p": 0, "b": 0}
    names = []

    def take(kind, shape, name):
        n = int(np.prod(shape))
        at = cursor[kind]
        cursor[kind] += n
        if kind == "p":
            names.append((name, at, n))
        return (at, shape)

    def unit(name, cin, cout):
        return {
            "w": take("p", (cout, cin, 3, 3), name + ".weight"),
            "gamma": take("p", (cout,), name + ".gamma"),
            "beta": take("p", (cout,), name + ".beta"),
            "mean": take("b", (cout,), name + ".mean"),
            "var": take("b", (cout,), name + ".var"),
        }

    def block(name, cin, cout):
        return [unit(name + ".a", cin, cout), unit(name + ".b", cout, cout)]

    lay = {"down": [], "up": {}, "dec": {}, "levels": levels, "features": features}
    cin = channels
    for l in range(levels + 1):
        lay["down"].append(block("down[%d]" % l, cin, features << l))
        cin = features << l
    for l in range(levels - 1, -1, -1):
        i, o = features << (l + 1), features << l
        lay["up"][l] = {
            "w": take("p", (i, o, 2, 2), "up[%d].weight" % l),
            "b": take("p", (o,), "up[%d].bias" % l),
        }
        lay["dec"][l] = block("dec[%d]" % l, 2 * o, o)
    lay["head_w"] = take("p", (1, features, 1, 1), "head.weight")
    lay["head_b"] = take("p", (1,), "head.bias")
    lay["n_params"] = cursor["p"]
    lay["n_buffers"] = cursor["b"]
    lay["names"] = names
    return lay


def view(flat, entry):
    at, shape = entry
    return flat[at : at + int(np.prod(shape))].view(shape)


def units(lay):
    for blk in lay["down"]:
        yield from blk
    for l in range(lay["levels"] - 1, -1, -1):
        yield from lay["dec"][l]


def near_ties(z, kind):
    """Values before a ReLU within NEAR_TIE of 0, or pool windows (of a ReLU output) whose two
    largest values are that close; relative to the tensor's RMS."""
    z = z.detach()
    tol = NEAR_TIE * torch.sqrt(torch.mean(z * z))
    if kind == "relu":
        return int((z.abs() < tol).sum())
    n, c, h, w = z.shape
    win = z.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, -1, 4)
    top = torch.topk(win, 2, dim=-1).values
    return int(((top[..., 0] - top[..., 1] < tol) & (top[..., 0] > 0)).sum())


def forward(P, stats, x, lay, training, update=False, ties=None):
    """The network. stats: {unit offset: (mean, var)} tensors; with training and update, F.batch_norm
    updates them; with training and not update, BatchNorm uses the batch alone. ties: a list
    that receives the near-tie counts."""

    def unit(h, u):
        h = F.conv2d(h, view(P, u["w"]), padding=1)
        mean, var = stats[u["mean"][0]]
        if training and not update:
            mean, var = None, None
        h = F.batch_norm(h, mean, var, view(P, u["gamma"]), view(P, u["beta"]),
                         training=training, momentum=0.1, eps=1e-5)
        if ties is not None:
            ties.append(near_ties(h, "relu"))
        return F.relu(h)

    L = lay["levels"]
    skips = []
    h = x
    for l in range(L + 1):
        h = unit(unit(h, lay["down"][l][0]), lay["down"][l][1])
        if l < L:
            skips.append(h)
            if ties is not None:
                ties.append(near_ties(h, "pool"))
            h = F.max_pool2d(h, 2)
    for l in range(L - 1, -1, -1):
        up = lay["up"][l]
        h = F.conv_transpose2d(h, view(P, up["w"]), view(P, up["b"]), stride=2)
        h = torch.cat([skips[l], h], dim=1)
        h = unit(unit(h, lay["dec"][l][0]), lay["dec"][l][1])
    return F.conv2d(h, view(P, lay["head_w"]), view(P, lay["head_b"]))


def load(d, name, suffix, shape=None):
    a = np.fromfile(os.path.join(d, name + suffix + ".f32"), dtype="<f4").astype(np.float64)
    return a.reshape(shape) if shape is not None else a


def rel(got, ref):
    got, ref = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    den = np.sqrt(np.sum(ref * ref))
    num = np.sqrt(np.sum((got - ref) ** 2))
    return num / den if den > 0 else num


def reference(d, name, meta, dev):
    lay = make_layout(meta["channels"], meta["features"], meta["levels"])
    assert lay["n_params"] == meta["n_params"], (lay["n_params"], meta["n_params"])
    assert lay["n_buffers"] == meta["n_buffers"], (lay["n_buffers"], meta["n_buffers"])
    n, c, h, w = meta["batch"], meta["channels"], meta["height"], meta["width"]
    t = lambda a: torch.tensor(a, dtype=torch.float64, device=dev)
    params = t(load(d, name, "_params"))
    buffers = t(load(d, name, "_buffers"))
    x = t(load(d, name, "_in", (n, c, h, w)))
    target = t(load(d, name, "_target", (n, 1, h, w)))

    def fresh_stats():
        return {u["mean"][0]: (view(buffers, u["mean"]).clone(), view(buffers, u["var"]).clone())
                for u in units(lay)}

    ref = {"layout": lay, "params": params.cpu().numpy()}
    with torch.no_grad():
        ref["out"] = forward(params, fresh_stats(), x, lay, False).cpu().numpy()
    for key, xs, ts in (("", x, target), ("1", x[:1], target[:1])):
        P = params.clone().requires_grad_(True)
        ties = []
        loss = ((forward(P, fresh_stats(), xs, lay, True, ties=ties) - ts) ** 2).mean()
        loss.backward()
        ref["loss" + key] = loss.item()
        ref["grad" + key] = P.grad.cpu().numpy()
        ref["ties" + key] = sum(ties)
        # PyTorch's own float32 (no TF32), for comparison where there are near-ties
        P32 = params.float().clone().requires_grad_(True)
        stats32 = {k: (m.float(), v.float()) for k, (m, v) in fresh_stats().items()}
        loss32 = ((forward(P32, stats32, xs.float(), lay, True) - ts.float()) ** 2).mean()
        loss32.backward()
        ref["grad32" + key] = P32.grad.double().cpu().numpy()
    P = params.clone().requires_grad_(True)
    stats = fresh_stats()
    opt = torch.optim.Adam([P], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    def flat_stats():
        b = buffers.clone()
        for u in units(lay):
            mean, var = stats[u["mean"][0]]
            view(b, u["mean"]).copy_(mean)
            view(b, u["var"]).copy_(var)
        return b.cpu().numpy()

    for step in range(3):
        opt.zero_grad()
        loss = ((forward(P, stats, x, lay, True, update=True) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            ref["buffers1"] = flat_stats()
    ref["losses"] = losses
    ref["params3"] = P.detach().cpu().numpy()
    ref["buffers3"] = flat_stats()
    return ref


def worst_tensors(got, ref, lay, count=3):
    """The parameter tensors with the largest relative gradient error, among those whose
    gradient is not negligible (RMS at least 1e-3 of the whole gradient's)."""
    whole = np.sqrt(np.mean(ref * ref))
    rows = []
    for name, at, size in lay["names"]:
        r = ref[at : at + size]
        if np.sqrt(np.mean(r * r)) >= 1e-3 * whole:
            rows.append((rel(got[at : at + size], r), name))
    rows.sort(reverse=True)
    return rows[:count]


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "/tmp/tomofs-gpu/unet"
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    print("PyTorch %s, float64 on %s" % (torch.__version__, dev))
    failed = 0
    cases = sorted(f[:-5] for f in os.listdir(d) if f.endswith(".json"))
    if not cases:
        print("no cases in %s: run unet_check torch %s first" % (d, d))
        return 1
    for name in cases:
        with open(os.path.join(d, name + ".json")) as f:
            meta = json.load(f)
        ref = reference(d, name, meta, dev)
        lay = ref["layout"]
        n, h, w = meta["batch"], meta["height"], meta["width"]
        print("%s: %d channels, %d features, %d levels, %d x %d x %d, %d parameters"
              % (name, meta["channels"], meta["features"], meta["levels"], n, w, h,
                 meta["n_params"]))
        print("  near-ties (float64 forward): %d on the batch, %d on the first image; PyTorch "
              "float32 gradient against float64: %.2e, %.2e"
              % (ref["ties"], ref["ties1"], rel(ref["grad32"], ref["grad"]),
                 rel(ref["grad321"], ref["grad1"])))
        for mode in ("exact", "tf32"):
            if mode not in meta:
                print("  %s: no results" % mode)
                failed = 1
                continue
            got = meta[mode]
            p0 = ref["params"]

            def limit(kind, ties):
                if mode == "exact" and ties and kind in LIMITS["exact ties"]:
                    return LIMITS["exact ties"][kind], " (near-ties)"
                return LIMITS[mode][kind], ""

            t = t1 = meta.get("near_ties", 1)
            rows = [
                ("forward", rel(load(d, name, "_%s_out" % mode), ref["out"]), "forward", 0),
                ("forward, inference-only executor",
                 rel(load(d, name, "_%s_out_infer" % mode), ref["out"]), "forward", 0),
                ("loss", abs(got["loss"] - ref["loss"]) / ref["loss"], "loss", 0),
                ("gradient", rel(load(d, name, "_%s_grad" % mode), ref["grad"]), "grad", t),
                ("loss, first image alone", abs(got["loss1"] - ref["loss1"]) / ref["loss1"],
                 "loss", 0),
                ("gradient, first image alone",
                 rel(load(d, name, "_%s_grad1" % mode), ref["grad1"]), "grad", t1),
                ("1 step: running statistics",
                 rel(load(d, name, "_%s_buffers1" % mode), ref["buffers1"]), "stats", 0),
                ("3 Adam steps: parameter change",
                 rel(load(d, name, "_%s_params3" % mode) - p0, ref["params3"] - p0), "update", t),
                ("3 steps: running statistics",
                 rel(load(d, name, "_%s_buffers3" % mode), ref["buffers3"]), "stats3", t),
                ("3 steps: losses", rel(got["losses"], ref["losses"]), "loss3", t),
            ]
            print("  %s" % mode)
            for what, err, kind, ties in rows:
                lim, note = limit(kind, ties)
                ok = err <= lim
                failed |= not ok
                print("    %-36s %.2e  (limit %.0e%s)%s" % (what, err, lim, note,
                                                           "" if ok else "  FAIL"))
            worst = worst_tensors(load(d, name, "_%s_grad" % mode), ref["grad"], lay)
            print("    worst gradient tensors: " +
                  ", ".join("%s %.2e" % (nm, e) for e, nm in worst))
    print("unet torch: %s" % ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
