"""Fused RBF op vs the naive broadcast PyTorch version vs the GEMM-expanded PyTorch version.

Table (interleaved rounds, peak memory): python bench/bench_rbf.py [--quick] [--case diag|tril|head] [--device cuda]
pytest-benchmark:                         pytest bench/bench_rbf.py --benchmark-only
FLOPs and bytes: rbfkern/gpucheck/model.py (the difference-form work of the fused kernels).
"""
from __future__ import annotations

import sys

import torch

import _harness as h
from rbfkern import reference
from rbfkern.gpucheck.model import cost
from rbfkern.ops import rbf, rbf_r2

# (name, N, C, D, metric): "<metric>-gaussian" times rbf(kind="gaussian"), "<metric>-r2" rbf_r2
CASES = [
    ("diag-gaussian", 4096, 512, 128, "diag"),
    ("diag-gaussian", 16384, 1024, 64, "diag"),
    ("tril-gaussian", 4096, 64, 32, "tril"),
    ("diag-r2", 4096, 512, 128, "diag"),
]
# RBF heads on a batch: the per-call cost of the op (argument checks, dispatch, autograd) weighs as
# much as its arithmetic here
HEAD_CASES = [("diag-gaussian", 64, 32, 16, "diag"), ("diag-gaussian", 256, 10, 64, "diag")]
QUICK_CASES = [("diag-gaussian", 1024, 128, 64, "diag"), ("tril-gaussian", 512, 32, 16, "tril"),
               ("diag-r2", 1024, 128, 64, "diag")]
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


def provider_fn(provider, metric, op="rbf"):
    """A function (x, centers, diag, tril, sigma) -> activations (op "rbf") or squared distances
    (op "rbf_r2") for one provider."""
    if op == "rbf_r2":
        return {"fused": lambda x, c, dg, tl, s: rbf_r2(x, c, diag=dg, tril=tl),
                "naive": lambda x, c, dg, tl, s: reference.rbf_r2(x, c, dg, tl),
                "gemm": lambda x, c, dg, tl, s: reference.rbf_r2_expanded(x, c, dg)}[provider]
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


def setup(case: h.Case, provider: str):
    p = case.params
    fn = provider_fn(provider, p["metric"], p["op"])
    inputs = make_inputs(p["n"], p["c"], p["d"], p["metric"], case.mode != "fwd", case.device)
    if p["op"] == "rbf_r2":
        inputs[4] = None  # no sigma
    return h.autograd_step(lambda: fn(*inputs), inputs, case.mode)


def make_case(name, n, c, d, metric, mode, device="cpu") -> h.Case:
    params = {"op": "rbf_r2" if name.endswith("-r2") else "rbf", "n": n, "c": c, "d": d, "metric": metric}
    model = cost("rbf", params, "float32", mode)
    return h.Case(name, f"N={n} C={c} D={d}", PROVIDERS, mode, params, device, model.flops, model.bytes)


def cases(args) -> list[h.Case]:
    if args.case == "head":
        chosen = HEAD_CASES
    else:
        chosen = [c for c in (QUICK_CASES if args.quick else CASES + HEAD_CASES) if args.case in ("all", c[4])]
    return [make_case(*c, mode, args.device) for c in chosen for mode in MODES]


def warmup_case(case: h.Case) -> h.Case:
    """Two points and two centres: one-time costs (lazy imports behind the first custom-op call)."""
    return make_case(case.name, 2, 2, case.params["d"], case.params["metric"], case.mode, case.device)


def add_arguments(ap):
    ap.add_argument("--case", choices=("all", "diag", "tril", "head"), default="all",
                    help="only the cases with this metric, or only the small RBF-head shapes")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the Triton kernels")


BENCH = h.Bench("rbf", cases, setup, ours="fused", rounds=5, memory=True, warmup_case=warmup_case,
                add_arguments=add_arguments, title=lambda a: "float32, kind gaussian")
test_rbf = h.pytest_benchmark(BENCH, rounds=5)

if __name__ == "__main__":
    sys.exit(h.main(BENCH))
