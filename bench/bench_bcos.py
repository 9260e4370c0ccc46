"""B-cos convolution: ours (rbfkern.ops.bcos_conv2d) vs the official bcos.modules.BcosConv2d vs a
plain F.conv2d with 2*C_out outputs (the same GEMM without the B-cos work), float32, 3x3, stride 1,
padding 1, b = B, max_out = MAX_OUT (issue 4); the linear layer likewise (bcos_linear vs the
official BcosLinear vs F.linear with 2*out features).

Table (interleaved rounds, peak memory): python bench/bench_bcos.py [--quick] [--rounds 9]
pytest-benchmark:                         pytest bench/bench_bcos.py --benchmark-only
FLOPs and bytes: rbfkern/gpucheck/model.py.

Allocation matters at these sizes: each provider allocates multi-MiB outputs every step, and a
step whose allocation gets fresh pages from the kernel pays their faults (zeroing included), about
as much as a C_in = 16 convolution. glibc's malloc raises its mmap threshold as large blocks are
freed, so which steps fault depends on what else the process allocated: interleaved with the
B-cos layers the plain convolution reuses memory, alone in a loop its output faults every step.
The harness interleaves the providers in one process.

Saved-for-backward MiB (the notes column) are the distinct storages autograd keeps beyond the
input and the weight (saved_tensors_hooks; both providers also keep x and the weight, which the
caller owns anyway). Peak memory: one step after a warm-up step, in a fresh process.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import _harness as h
from rbfkern.gpucheck.families.bcos import official
from rbfkern.gpucheck.model import cost
from rbfkern.gpucheck.worker import saved_mib
from rbfkern.ops import bcos_conv2d, bcos_linear

# (N, C_in, H, W, C_out)
CASES = [(32, 64, 32, 32, 64), (8, 128, 16, 16, 128), (64, 16, 32, 32, 32)]
QUICK_CASES = [(4, 16, 16, 16, 16)]
# (R rows, in features, out features): a wide layer (torch's GEMM path) and classifier heads of 10
# classes (the C++ GEMM-tile path, rbfkern/ops/bcos_cpp.py), one on ResNet-50's 2048 features
LINEAR_CASES = [(4096, 512, 512), (64, 512, 10), (4096, 512, 10), (64, 2048, 10)]
QUICK_LINEAR_CASES = [(256, 64, 64)]
PROVIDERS = ("ours", "official", "plain")
MODES = ("fwd", "fwd+bwd")
B, MAX_OUT = 2.0, 2


def make_linear(case: h.Case, provider: str, requires_grad: bool):
    """make() of a linear case."""
    r, c, o = (case.params[k] for k in ("r", "cin", "cout"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(r, c, generator=g).requires_grad_(requires_grad)
    weight = (torch.randn(o * MAX_OUT, c, generator=g) * 0.1).requires_grad_(requires_grad)
    if provider == "ours":
        return (lambda: bcos_linear(x, weight, b=B, max_out=MAX_OUT)), (x, weight)
    if provider == "plain":
        return (lambda: F.linear(x, weight)), (x, weight)
    if provider == "official":
        lib, why = official()
        if lib is None:
            raise h.Unavailable(f"official bcos: {why} (pip install --no-deps bcos==0.1.3 einops)")
        mod = lib.BcosLinear(c, o, b=B, max_out=MAX_OUT)
        with torch.no_grad():
            mod.linear.weight.copy_(weight)
        mod.linear.weight.requires_grad_(requires_grad)
        return (lambda: mod(x)), (x, mod.linear.weight)
    raise ValueError(provider)


def make(case: h.Case, provider: str, requires_grad: bool):
    """(fn, params): fn() runs one forward and returns the output."""
    if case.params["kind"] == "linear":
        return make_linear(case, provider, requires_grad)
    n, c, hh, w, o = (case.params[k] for k in ("n", "cin", "h", "w", "cout"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, hh, w, generator=g).requires_grad_(requires_grad)
    weight = (torch.randn(o * MAX_OUT, c, 3, 3, generator=g) * 0.1).requires_grad_(requires_grad)
    if provider == "ours":
        return (lambda: bcos_conv2d(x, weight, b=B, max_out=MAX_OUT, padding=1)), (x, weight)
    if provider == "plain":
        return (lambda: F.conv2d(x, weight, None, 1, 1)), (x, weight)
    if provider == "official":
        lib, why = official()
        if lib is None:
            raise h.Unavailable(f"official bcos: {why} (pip install --no-deps bcos==0.1.3 einops)")
        mod = lib.BcosConv2d(c, o, 3, padding=1, b=B, max_out=MAX_OUT)
        with torch.no_grad():
            mod.linear.weight.copy_(weight)
        mod.linear.weight.requires_grad_(requires_grad)
        return (lambda: mod(x)), (x, mod.linear.weight)
    raise ValueError(provider)


def setup(case: h.Case, provider: str):
    fn, params = make(case, provider, case.mode != "fwd")
    return h.autograd_step(fn, params, case.mode)


def notes(case: h.Case) -> dict:
    """Saved-for-backward MiB of ours and the official layer (the GPU check's measurement)."""
    if case.mode == "fwd":
        return {}
    out = {}
    for p in ("ours", "official"):
        try:
            fn, leaves = make(case, p, True)
        except h.Unavailable:
            continue
        out[f"saved MiB {p}"] = round(saved_mib(SimpleNamespace(fn=fn, leaves=leaves)), 1)
    return out


def cases(args) -> list[h.Case]:
    out = []
    for n, c, hh, w, o in QUICK_CASES if args.quick else CASES:
        params = {"op": "bcos_conv2d", "kind": "conv", "n": n, "cin": c, "h": hh, "w": w, "cout": o, "k": 3}
        out += [_case(params, f"N={n} C={c} H={hh} W={w} O={o}", mode) for mode in MODES]
    for r, c, o in QUICK_LINEAR_CASES if args.quick else LINEAR_CASES:
        params = {"op": "bcos_linear", "kind": "linear", "r": r, "cin": c, "cout": o}
        out += [_case(params, f"R={r} in={c} out={o}", mode) for mode in MODES]
    return out


def _case(params, shape, mode) -> h.Case:
    model = cost("bcos", params, "float32", mode)
    return h.Case(params["op"], shape, PROVIDERS, mode, params, flops=model.flops, bytes=model.bytes)


BENCH = h.Bench("bcos", cases, setup, ours="ours", rounds=7, memory=True, notes=notes,
                ratios=(("ours", "plain"), ("official", "plain"), ("official", "ours")),
                title=lambda a: f"float32; conv 3x3, stride 1, padding 1; b={B:g}, max_out={MAX_OUT}")
test_bcos_conv2d = h.pytest_benchmark(BENCH, rounds=5)

if __name__ == "__main__":
    sys.exit(h.main(BENCH))
