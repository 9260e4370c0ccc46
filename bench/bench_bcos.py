"""B-cos convolution: ours (rbfkern.ops.bcos_conv2d) vs the official bcos.modules.BcosConv2d vs a
plain F.conv2d with 2*C_out outputs (the same GEMM without the B-cos work), float32, 2 threads,
3x3, stride 1, padding 1, B = 2, max_out = 2 (issue 4).

pytest-benchmark (side by side, one run):   pytest bench/bench_bcos.py --benchmark-only
Ratio + memory table (interleaved rounds):    python bench/bench_bcos.py [--quick] [--rounds 7]

Allocation matters at these sizes: each provider allocates multi-MiB outputs every step, and a
step whose allocation gets fresh pages from the kernel pays their faults (zeroing included), about
as much as a C_in = 16 convolution. glibc's malloc raises its mmap threshold as large blocks are
freed, so which steps fault depends on what else the process allocated: interleaved with the
B-cos layers (which free 4-40 MiB blocks) the plain convolution reuses memory, alone in a loop its
16 MiB output faults every step (shape 3: ~10 ms vs ~34 ms; ours, a direct convolution that never
writes the raw output, allocates only its 8 MiB y and the saved tensors). The table interleaves the
providers in one process.

Saved-for-backward bytes are the distinct storages autograd keeps beyond the input and the weight
(saved_tensors_hooks; both providers also keep x and the weight, which the caller owns anyway).
Peak memory is the peak resident-set growth of a fresh process over one step (inputs built
and one warm-up step run first), so each number is measured alone. Times: median of interleaved rounds, and the minimum
(the machine is shared; the minimum is the least disturbed run).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

from rbfkern.ops import bcos_conv2d

import _peak  # bench/_peak.py

# (N, C_in, H, W, C_out)
CASES = [(32, 64, 32, 32, 64), (8, 128, 16, 16, 128), (64, 16, 32, 32, 32)]
QUICK_CASES = [(4, 16, 16, 16, 16)]
PROVIDERS = ("ours", "official", "plain")
MODES = ("fwd", "fwd+bwd")
B, MAX_OUT = 2.0, 2


def load_official():
    """bcos.modules without running bcos/__init__.py (it imports torchvision)."""
    if "bcos" in sys.modules:
        return importlib.import_module("bcos.modules")
    spec = importlib.util.find_spec("bcos")
    if spec is None:
        return None
    pkg = types.ModuleType("bcos")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["bcos"] = pkg
    return importlib.import_module("bcos.modules")


def make(case, provider, requires_grad):
    """(fn, params): fn() runs one forward and returns the output."""
    n, c, h, w, o = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).requires_grad_(requires_grad)
    weight = (torch.randn(o * MAX_OUT, c, 3, 3, generator=g) * 0.1).requires_grad_(requires_grad)
    if provider == "ours":
        return (lambda: bcos_conv2d(x, weight, b=B, max_out=MAX_OUT, padding=1)), (x, weight)
    if provider == "plain":
        return (lambda: F.conv2d(x, weight, None, 1, 1)), (x, weight)
    if provider == "official":
        mod = load_official().BcosConv2d(c, o, 3, padding=1, b=B, max_out=MAX_OUT)
        with torch.no_grad():
            mod.linear.weight.copy_(weight)
        mod.linear.weight.requires_grad_(requires_grad)
        return (lambda: mod(x)), (x, mod.linear.weight)
    raise ValueError(provider)


def step(case, provider, mode):
    fn, params = make(case, provider, mode != "fwd")
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn()
    else:
        def run():
            for p in params:
                p.grad = None
            fn().sum().backward()
    return run


def saved_bytes(case, provider):
    """Bytes autograd saves for backward beyond the input and the weight."""
    fn, params = make(case, provider, True)
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in skip:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_memory_mb(case, provider, mode):
    return _peak.in_child(__file__, [list(case), provider, mode])


def _peak_child(spec):
    case, provider, mode = json.loads(spec)
    torch.set_num_threads(2)
    run = step(tuple(case), provider, mode)
    run()  # warm-up: lazy imports (the extension, bcos.modules) and first-call set-up
    print(_peak.extra_peak_mib(run))


def table(cases, rounds, memory=True):
    """Median times per provider, rounds interleaved across providers (fair on a busy machine)."""
    torch.set_num_threads(2)
    rows = []
    for case in cases:
        for mode in MODES:
            runs = {p: step(case, p, mode) for p in PROVIDERS}
            for r in runs.values():
                r()  # warm-up
            ts = {p: [] for p in PROVIDERS}
            for _ in range(rounds):
                for p, r in runs.items():
                    t0 = time.perf_counter()
                    r()
                    ts[p].append(time.perf_counter() - t0)
            row = {"case": "N={} C={} H={} W={} O={}".format(*case), "mode": mode}
            row.update({p: statistics.median(v) for p, v in ts.items()})
            row.update({p + "_min": min(v) for p, v in ts.items()})
            if mode != "fwd":
                row.update({p + "_saved": saved_bytes(case, p) for p in ("ours", "official")})
            if memory:
                row.update({p + "_mb": peak_memory_mb(case, p, mode) for p in PROVIDERS})
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(r):
    s = (f"| {r['case']} | {r['mode']} | {r['ours'] * 1e3:.1f} | {r['official'] * 1e3:.1f} | {r['plain'] * 1e3:.1f} "
         f"| {r['ours'] / r['plain']:.2f}x | {r['official'] / r['plain']:.2f}x | {r['official'] / r['ours']:.2f}x "
         f"| {r['ours_min'] / r['plain_min']:.2f}x / {r['official_min'] / r['plain_min']:.2f}x |")
    if "ours_saved" in r:
        s += f" {r['ours_saved'] / 2**20:.1f} / {r['official_saved'] / 2**20:.1f} MiB |"
    else:
        s += " |"
    if "ours_mb" in r:
        s += " " + " / ".join("n/a" if r[p + "_mb"] is None else f"{r[p + '_mb']:.0f}" for p in PROVIDERS) + " |"
    return s


HEADER = ("| case | mode | ours ms | official ms | plain ms | ours/plain | official/plain | official/ours "
          "| min: ours/plain / official/plain | saved for bwd (beyond x, W) ours / official "
          "| peak MiB ours / official / plain |\n|" + "---|" * 11)


# ----------------------------------------------------------------------------------------------
# pytest-benchmark entry points
# ----------------------------------------------------------------------------------------------
try:
    import pytest

    _BENCH_CASES = QUICK_CASES if os.environ.get("RBFKERN_BENCH_QUICK") else CASES

    @pytest.mark.parametrize("provider", PROVIDERS)
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("case", _BENCH_CASES, ids=["x".join(map(str, c)) for c in _BENCH_CASES])
    def test_bcos_conv2d(benchmark, case, mode, provider):
        if provider == "official" and load_official() is None:
            pytest.skip("pip install --no-deps bcos==0.1.3 einops")
        torch.set_num_threads(2)
        benchmark.group = f"bcos_conv2d {'x'.join(map(str, case))} {mode}"
        if mode != "fwd" and provider != "plain":
            benchmark.extra_info["saved_for_backward_bytes"] = saved_bytes(case, provider)
        benchmark.pedantic(step(case, provider, mode), rounds=5, iterations=1, warmup_rounds=1)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--peak", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peak:
        _peak_child(a.peak)
        sys.exit(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} -> 2 threads, float32, B={B}, max_out={MAX_OUT}")
    print(HEADER)
    cases = QUICK_CASES if a.quick else CASES
    rows = table(cases, a.rounds, memory=not a.no_memory)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
