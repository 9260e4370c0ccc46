"""Fused RBF op vs the naive broadcast PyTorch version vs the GEMM-expanded PyTorch version.

pytest-benchmark (side by side, one run):   pytest bench/bench_rbf.py --benchmark-only
Ratio + peak-memory table (median of rounds): python bench/bench_rbf.py [--quick]
Peak memory is the resident-set growth of a fresh process running one step, so each number is
measured alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from rbfkern import reference
from rbfkern.ops import rbf

import _peak  # bench/_peak.py

# (name, N, C, D, metric)
CASES = [
    ("diag-gaussian", 4096, 512, 128, "diag"),
    ("diag-gaussian", 16384, 1024, 64, "diag"),
    ("tril-gaussian", 4096, 64, 32, "tril"),
]
QUICK_CASES = [("diag-gaussian", 1024, 128, 64, "diag"), ("tril-gaussian", 512, 32, 16, "tril")]
PROVIDERS = ("fused", "naive", "gemm")
MODES = ("fwd", "fwd+bwd")


def make_inputs(n, c, d, metric, requires_grad, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) / d**0.5
    cen = torch.randn(c, d, generator=g) / d**0.5
    diag = torch.rand(c, d, generator=g) + 0.5 if metric == "diag" else None
    tril = torch.randn(c, d, d, generator=g) * 0.2 / d**0.5 + torch.eye(d) if metric == "tril" else None
    sigma = torch.rand(c, generator=g) + 0.5
    ts = [t.to(device).requires_grad_(requires_grad) if t is not None else None for t in (x, cen, diag, tril, sigma)]
    return ts


def provider_fn(provider, metric):
    """A function (x, centers, diag, tril, sigma) -> activations for one provider."""
    if provider == "fused":
        return lambda x, c, dg, tl, s: rbf(x, c, diag=dg, tril=tl, sigma=s, kind="gaussian")
    if provider == "naive":
        return lambda x, c, dg, tl, s: reference.rbf(x, c, dg, tl, s, "gaussian")
    if provider == "gemm":
        if metric == "tril":  # expanded via the per-centre projection x L_j - c_j L_j (batched GEMM)
            def f(x, c, dg, tl, s):
                low = torch.tril(tl)
                u = torch.einsum("nd,cdk->cnk", x, low) - torch.einsum("cd,cdk->ck", c, low)[:, None, :]
                return torch.exp(-(u * u).sum(-1).T / (2 * s * s))
            return f
        return lambda x, c, dg, tl, s: torch.exp(-reference.rbf_r2_expanded(x, c, dg) / (2 * s * s))
    raise ValueError(provider)


def step(provider, metric, mode, inputs):
    fn = provider_fn(provider, metric)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(*inputs)
    else:
        def run():
            for t in inputs:
                if t is not None:
                    t.grad = None
            fn(*inputs).sum().backward()
    return run


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_median(run, rounds, warmup=1):
    for _ in range(warmup):
        run()
    ts = []
    for _ in range(rounds):
        _sync()
        t0 = time.perf_counter()
        run()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def peak_memory_mb(case, provider, mode):
    """Extra resident memory (MiB) of one step in a fresh process, or None if it failed (e.g. OOM)."""
    return _peak.in_child(__file__, [list(case), provider, mode])


def _peak_child(spec):
    (name, n, c, d, metric), provider, mode = json.loads(spec)
    torch.set_num_threads(2)
    # One-time costs (lazy imports behind the first custom-op call) on a tiny input first.
    step(provider, metric, mode, make_inputs(2, 2, d, metric, mode != "fwd"))()
    run = step(provider, metric, mode, make_inputs(n, c, d, metric, mode != "fwd"))
    print(_peak.extra_peak_mib(run))


def table(cases, rounds, providers=PROVIDERS, memory=True, device="cpu"):
    """Median times (and, on CPU, peak extra memory) per provider; ``device="cuda"`` runs the Triton kernels."""
    torch.set_num_threads(2)
    rows = []
    for case in cases:
        name, n, c, d, metric = case
        for mode in MODES:
            inputs = make_inputs(n, c, d, metric, mode != "fwd", device)
            row = {"case": f"{name} N={n} C={c} D={d}", "mode": mode, "device": device}
            for p in providers:
                try:
                    row[p] = time_median(step(p, metric, mode, inputs), rounds)
                except RuntimeError as e:  # out of memory in the naive version
                    row[p] = None
                    print(f"  {p} failed: {str(e)[:80]}", file=sys.stderr)
                if memory and device == "cpu":
                    row[p + "_mb"] = peak_memory_mb(case, p, mode)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(r):
    def ms(v):
        return "   n/a" if v is None else f"{v * 1e3:8.2f}"

    def ratio(a, b):
        return "  n/a" if a is None or b is None else f"{a / b:6.2f}x"

    mem = " ".join(f"{p}:{r.get(p + '_mb'):.0f}MiB" for p in PROVIDERS if r.get(p + "_mb") is not None)
    return (f"{r['case']:<36} {r['mode']:<8} fused {ms(r.get('fused'))} ms  naive {ms(r.get('naive'))} ms  "
            f"gemm {ms(r.get('gemm'))} ms  naive/fused {ratio(r.get('naive'), r.get('fused'))}  "
            f"gemm/fused {ratio(r.get('gemm'), r.get('fused'))}  {mem}")


# ----------------------------------------------------------------------------------------------
# pytest-benchmark entry points
# ----------------------------------------------------------------------------------------------
try:
    import pytest

    _BENCH_CASES = QUICK_CASES if os.environ.get("RBFKERN_BENCH_QUICK") else CASES

    @pytest.mark.parametrize("provider", PROVIDERS)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("case", _BENCH_CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}x{c[3]}" for c in _BENCH_CASES])
    def test_rbf(benchmark, case, mode, provider):
        torch.set_num_threads(2)
        name, n, c, d, metric = case
        benchmark.group = f"rbf {name} {n}x{c}x{d} {mode}"
        run = step(provider, metric, mode, make_inputs(n, c, d, metric, mode != "fwd"))
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--case", choices=("all", "diag", "tril"), default="all",
                    help="run only the cases with this metric")
    ap.add_argument("--json")
    ap.add_argument("--peak", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peak:
        _peak_child(a.peak)
        sys.exit(0)
    cases = [c for c in (QUICK_CASES if a.quick else CASES) if a.case in ("all", c[4])]
    rows = table(cases, a.rounds, memory=not a.no_memory)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
