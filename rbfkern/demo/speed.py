"""Part 5: each fused op vs its naive PyTorch version (rbfkern.reference) on this machine."""
from __future__ import annotations

import statistics
import time

import torch

from .. import ops, reference


def _median(fn, rounds: int) -> float:
    fn()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _cases(quick: bool):
    g = torch.Generator().manual_seed(0)
    n, c, d = (512, 64, 32) if quick else (2048, 256, 64)
    x, cen = torch.randn(n, d, generator=g), torch.randn(c, d, generator=g)
    w = torch.rand(c, d, generator=g) + 0.5
    yield ("rbf diag gaussian", f"{n}x{c}x{d}", [x, cen, w],
           lambda x, c, w: ops.rbf(x, c, diag=w), lambda x, c, w: reference.rbf(x, c, w))
    if hasattr(ops, "bcos_conv2d") and hasattr(reference, "bcos_conv2d"):
        b, ch, hw = (4, 16, 16) if quick else (8, 32, 16)
        xi, wt = torch.randn(b, ch, hw, hw, generator=g), torch.randn(2 * ch, ch, 3, 3, generator=g)
        yield ("bcos_conv2d b=2 maxout=2", f"{b}x{ch}x{hw}x{hw}", [xi, wt],
               lambda x, w: ops.bcos_conv2d(x, w, b=2.0, max_out=2, padding=1),
               lambda x, w: reference.bcos_conv2d(x, w, b=2.0, max_out=2, padding=1))
    if hasattr(ops, "gauss_deriv_conv2d") and hasattr(reference, "gauss_deriv_conv2d"):
        b, ch, hw = (2, 8, 16) if quick else (4, 16, 32)
        xi = torch.randn(b, ch, hw, hw, generator=g)
        al = torch.randn(ch, ch, 10, generator=g)
        yield ("gauss_deriv_conv2d order 3 sigma 2", f"{b}x{ch}x{hw}x{hw}", [xi, al],
               lambda x, a: ops.gauss_deriv_conv2d(x, a, 2.0, order=3),
               lambda x, a: reference.gauss_deriv_conv2d(x, a, 2.0, order=3))


def run(_data, _out_dir, *, quick: bool, seed: int, progress: bool) -> dict:
    rounds = 5 if quick else 9
    rows = []
    for name, shape, inputs, fused, naive in _cases(quick):
        row = {"op": name, "shape": shape}
        for mode in ("fwd", "fwd+bwd"):
            for label, fn in (("fused", fused), ("naive", naive)):
                if mode == "fwd":
                    def step(fn=fn):
                        with torch.no_grad():
                            fn(*inputs)
                else:
                    leaves = [t.clone().requires_grad_(True) for t in inputs]

                    def step(fn=fn, leaves=leaves):
                        fn(*leaves).sum().backward()
                row[f"{label} {mode}"] = _median(step, rounds)
            row[f"speedup {mode}"] = row[f"naive {mode}"] / row[f"fused {mode}"]
        rows.append(row)
    return {"rows": rows, "files": []}
