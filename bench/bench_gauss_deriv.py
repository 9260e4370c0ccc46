"""Gaussian-derivative basis convolution: ours (rbfkern.ops.gauss_deriv_conv2d, the path its cost
model picks) vs (a) the dense effective-filter conv2d (W = sum alpha phi built in torch, one F.conv2d)
vs (b) the thesis' basis layer: depthwise conv with the dense KxK basis, then a 1x1 conv.
float32, 2 threads, x (16, 64, 64, 64), C_out 64, order 3, truncate 4, sigma 1/2/4 (issue 5).

pytest-benchmark (side by side, one run):   pytest bench/bench_gauss_deriv.py --benchmark-only
Table with peak memory:                     python bench/bench_gauss_deriv.py [--quick] [--n 16]

3D rows (python bench/bench_gauss_deriv.py --3d): x (2, 8, 32, 32, 32), C_out 8, order 2, sigma 1
and 2: ours (rbfkern.ops.gauss_deriv_conv3d, the path its 3D cost model picks) vs the dense
effective-filter conv3d.

Peak memory is the resident-set growth of a fresh process running one step, so each number is
measured alone; the table's times are the median of the timed steps in that process (one step
where a step takes more than 5 s).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from rbfkern import basis
from rbfkern.ops import gauss_deriv as gd
from rbfkern.ops import gauss_deriv_conv2d, gauss_deriv_conv3d

N, C_IN, H, W, C_OUT, ORDER, TRUNCATE = 16, 64, 64, 64, 64, 3, 4.0
SIGMAS = (1.0, 2.0, 4.0)
PROVIDERS = ("ours", "dense", "depthwise+1x1")
# 3D rows
N3, C3, S3, O3, ORDER3 = 2, 8, 32, 8, 2
SIGMAS3 = (1.0, 2.0)
PROVIDERS3 = ("ours3d", "dense3d")
MODES = ("fwd", "fwd+bwd")


def make(provider, sigma, requires_grad, n=N, c=C_IN, o=C_OUT, h=H, w=W):
    """(fn, params): fn() runs one forward; every provider computes the same output."""
    g = torch.Generator().manual_seed(0)
    m = basis.num_basis(ORDER)
    x = torch.randn(n, c, h, w, generator=g).requires_grad_(requires_grad)
    alpha = (torch.randn(o, c, m, generator=g) / (c * m) ** 0.5).requires_grad_(requires_grad)
    r = basis.radius(sigma, TRUNCATE)
    if provider == "ours":
        return (lambda: gauss_deriv_conv2d(x, alpha, sigma, order=ORDER, truncate=TRUNCATE)), (x, alpha)
    phi = basis.basis_2d(sigma, ORDER, TRUNCATE).to(torch.float32)[0].flip(-1, -2)  # (M, K, K) correlation form
    if provider == "dense":
        def fn():
            weight = torch.einsum("oib,byx->oiyx", alpha, phi)
            return F.conv2d(x, weight, padding=r)
        return fn, (x, alpha)
    if provider == "depthwise+1x1":
        dw = phi[:, None].repeat(c, 1, 1, 1)  # (C*M, 1, K, K)

        def fn():
            zeta = F.conv2d(x, dw, padding=r, groups=c)
            return F.conv2d(zeta, alpha.reshape(o, c * m, 1, 1))
        return fn, (x, alpha)
    raise ValueError(provider)


def make3d(provider, sigma, requires_grad, n=N3, c=C3, o=O3, size=S3):
    """3D: (fn, params) for ours (cost-model path) or the dense effective-filter conv3d."""
    g = torch.Generator().manual_seed(0)
    m = basis.num_basis(ORDER3, 3)
    x = torch.randn(n, c, size, size, size, generator=g).requires_grad_(requires_grad)
    alpha = (torch.randn(o, c, m, generator=g) / (c * m) ** 0.5).requires_grad_(requires_grad)
    if provider == "ours3d":
        return (lambda: gauss_deriv_conv3d(x, alpha, sigma, order=ORDER3, truncate=TRUNCATE)), (x, alpha)
    if provider == "dense3d":
        r = basis.radius(sigma, TRUNCATE)

        def fn():
            weight = gd.effective_weight(alpha, sigma, order=ORDER3, truncate=TRUNCATE, ndim=3)
            return F.conv3d(x, weight, padding=r)
        return fn, (x, alpha)
    raise ValueError(provider)


def step(provider, sigma, mode, **shape):
    maker = make3d if provider in PROVIDERS3 else make
    fn, params = maker(provider, sigma, mode != "fwd", **shape)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn()
    else:
        def run():
            for p in params:
                p.grad = None
            out = fn()
            out.backward(torch.ones_like(out))
            return out
    return run


# ---------------------------------------------------------------------------------------------
# pytest-benchmark
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sigma", SIGMAS, ids=[f"sigma{s:g}" for s in SIGMAS])
def test_gauss_deriv(benchmark, sigma, provider, mode):
    torch.set_num_threads(2)
    step(provider, sigma, mode, n=1, c=2, o=2)()  # one-time costs (lazy imports, oneDNN setup)
    run = step(provider, sigma, mode)
    benchmark.group = f"gauss_deriv sigma={sigma:g} {mode}"
    benchmark.extra_info.update(provider=provider, sigma=sigma, mode=mode, path=chosen_path(sigma))
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS3)
@pytest.mark.parametrize("sigma", SIGMAS3, ids=[f"sigma{s:g}" for s in SIGMAS3])
def test_gauss_deriv_3d(benchmark, sigma, provider, mode):
    torch.set_num_threads(2)
    step(provider, sigma, mode, n=1, c=1, o=1, size=2 * basis.radius(sigma, TRUNCATE) + 1)()
    run = step(provider, sigma, mode)
    benchmark.group = f"gauss_deriv 3D sigma={sigma:g} {mode}"
    benchmark.extra_info.update(provider=provider, sigma=sigma, mode=mode)
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)


def chosen_path_3d(sigma, backward=False) -> str:
    k = 2 * basis.radius(sigma, TRUNCATE) + 1
    return gd.choose_path_3d(N3, C3, O3, (S3,) * 3, 1, ORDER3, k, backward=backward)


def chosen_path(sigma, n=N) -> str:
    k = 2 * basis.radius(sigma, TRUNCATE) + 1
    return gd.choose_path(n, C_IN, C_OUT, H, W, H, W, 1, ORDER, k)


# ---------------------------------------------------------------------------------------------
# Table: one fresh process per cell (time + peak resident-set growth)
# ---------------------------------------------------------------------------------------------


def _cell(provider, sigma, mode, n):
    torch.set_num_threads(2)
    # One-time costs (lazy imports behind the first custom-op call, oneDNN setup) on a tiny input first.
    k = 2 * basis.radius(sigma, TRUNCATE) + 1
    if provider in PROVIDERS3:
        step(provider, sigma, mode, n=1, c=1, o=1, size=k)()
        run = step(provider, sigma, mode)
    else:
        step(provider, sigma, mode, n=1, c=2, o=2, h=k, w=k)()
        run = step(provider, sigma, mode, n=n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    while times[0] < 5.0 and len(times) < 4:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return {"time_s": statistics.median(steady), "peak_mib": peak / 1024}


def table(n, sigmas):
    rows = []
    for sigma in sigmas:
        for mode in MODES:
            cells = {}
            for provider in PROVIDERS:
                out = subprocess.run(
                    [sys.executable, __file__, "--cell", provider, str(sigma), mode, str(n)],
                    capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"},
                )
                cells[provider] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((sigma, mode, cells))
            best_peer = min(cells["dense"]["time_s"], cells["depthwise+1x1"]["time_s"])
            print(
                f"| {sigma:g} | {mode} | {chosen_path(sigma, n)} | "
                + " | ".join(f"{cells[p]['time_s'] * 1e3:.0f} ms ({cells[p]['peak_mib']:.0f} MiB)" for p in PROVIDERS)
                + f" | {cells['dense']['time_s'] / cells['ours']['time_s']:.1f}x"
                + f" | {best_peer / cells['ours']['time_s']:.1f}x |",
                flush=True,
            )
    return rows


def table3d(sigmas):
    print(f"x ({N3}, {C3}, {S3}, {S3}, {S3}), C_out {O3}, order {ORDER3}, truncate {TRUNCATE:g}, float32, 2 threads")
    print("| sigma | mode | ours: path (fwd/bwd) | ours | dense conv3d | vs dense |")
    print("|---|---|---|---|---|---|")
    for sigma in sigmas:
        for mode in MODES:
            cells = {}
            for provider in PROVIDERS3:
                out = subprocess.run(
                    [sys.executable, __file__, "--cell", provider, str(sigma), mode, str(N3)],
                    capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"},
                )
                cells[provider] = json.loads(out.stdout.strip().splitlines()[-1])
            paths = f"{chosen_path_3d(sigma)}/{chosen_path_3d(sigma, True)}"
            print(f"| {sigma:g} | {mode} | {paths} | "
                  + " | ".join(f"{cells[p]['time_s'] * 1e3:.0f} ms ({cells[p]['peak_mib']:.0f} MiB)" for p in PROVIDERS3)
                  + f" | {cells['dense3d']['time_s'] / cells['ours3d']['time_s']:.1f}x |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N=2 instead of 16")
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--sigmas", type=float, nargs="*", default=list(SIGMAS))
    ap.add_argument("--cell", nargs=4, metavar=("PROVIDER", "SIGMA", "MODE", "N"))
    ap.add_argument("--3d", dest="three", action="store_true", help="the 3D rows only")
    a = ap.parse_args()
    if a.cell:
        p, s, m, n = a.cell
        print(json.dumps(_cell(p, float(s), m, int(n))))
        return
    if a.three:
        table3d(SIGMAS3)
        return
    n = 2 if a.quick else a.n
    print(f"x ({n}, {C_IN}, {H}, {W}), C_out {C_OUT}, order {ORDER}, truncate {TRUNCATE:g}, float32, 2 threads, "
          f"torch {torch.__version__}")
    print("| sigma | mode | ours: path | ours | (a) dense | (b) depthwise+1x1 | vs (a) | vs best of (a),(b) |")
    print("|---|---|---|---|---|---|---|---|")
    table(n, a.sigmas)


if __name__ == "__main__":
    main()
