"""RBF cases (gaussian activation): ``rbfkern.ops.rbf`` vs the GEMM-expanded torch version
(``reference.rbf_r2_expanded``; for tril the per-centre projection x L_j - c_j L_j as a batched
GEMM) vs ``torch.cdist`` where one metric serves all centres vs the naive broadcast reference
(skipped, with the reason, when its (N, C, D) intermediates would not fit in free memory)."""
from __future__ import annotations

import torch

from ... import ops, reference
from . import DTYPES, Case, Provider, free_bytes, generator, ours_label, torch_peers

SUMMARY = ("fused rbfkern.ops.rbf (and its difference-form forward); naive broadcast reference (skipped where its (N, C, D) intermediates do not "
           "fit); GEMM-expanded torch (TF32 off/on); torch.cdist (the shared-diag case only)")

CASES = [
    Case("rbf", "diag-16384x1024x64", "per-centre diag metric, gaussian, (N, C, D) = (16384, 1024, 64)",
         dict(metric="diag", n=16384, c=1024, d=64), dict(n=96, c=24, d=16), quick=True),
    Case("rbf", "diag-65536x4096x128", "per-centre diag metric, gaussian, (N, C, D) = (65536, 4096, 128)",
         dict(metric="diag", n=65536, c=4096, d=128), dict(n=128, c=32, d=32)),
    Case("rbf", "tril-8192x256x32", "per-centre tril metric, gaussian, (N, C, D) = (8192, 256, 32)",
         dict(metric="tril", n=8192, c=256, d=32), dict(n=64, c=8, d=8), quick=True),
    Case("rbf", "shared_diag-16384x1024x64", "one diag metric for all centres (torch.cdist expresses it), "
         "gaussian, (N, C, D) = (16384, 1024, 64)",
         dict(metric="shared_diag", n=16384, c=1024, d=64), dict(n=96, c=24, d=16)),
]

# Live (N, C, D) intermediates of the naive reference at its peak (diff, its square, the weighted
# square; fwd+bwd also keeps what autograd saved and the gradients of those): an estimate.
NAIVE_LIVE = {"fwd": 3, "fwd+bwd": 6}


def naive_skip(n, c, d, itemsize, device) -> dict | None:
    """{mode: reason} for the modes whose naive intermediates would not fit, or None."""
    free, out = free_bytes(device), {}
    for mode, live in NAIVE_LIVE.items():
        need = live * n * c * d * itemsize
        if need > 0.9 * free:
            out[mode] = (f"naive reference needs ~{need / 2**30:.0f} GiB ({live} live (N, C, D) = {n}x{c}x{d} "
                         f"intermediates for {mode}), {free / 2**30:.0f} GiB free")
    return out or None


def providers(case: Case, dtype: str, device, params: dict) -> list[Provider]:
    metric, n, c, d = params["metric"], params["n"], params["c"], params["d"]
    dt, g = DTYPES[dtype], generator(device)

    def leaf(t):
        return t.to(dt).requires_grad_()

    x = leaf(torch.randn(n, d, generator=g, device=device) / d**0.5)
    cen = leaf(torch.randn(c, d, generator=g, device=device) / d**0.5)
    sigma = leaf(torch.rand(c, generator=g, device=device) + 0.5)
    diag = tril = None
    if metric == "diag":
        diag = leaf(torch.rand(c, d, generator=g, device=device) + 0.5)
    elif metric == "shared_diag":
        diag = leaf(torch.rand(d, generator=g, device=device) + 0.5)
    elif metric == "tril":
        eye = torch.eye(d, device=device)
        tril = leaf(torch.randn(c, d, d, generator=g, device=device) * (0.2 / d**0.5) + eye)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    leaves = [t for t in (x, cen, diag, tril, sigma) if t is not None]

    def fused():
        return ops.rbf(x, cen, diag=diag, tril=tril, sigma=sigma, kind="gaussian")

    def naive():
        return reference.rbf(x, cen, diag, tril, sigma, "gaussian")

    if tril is not None:
        def gemm():
            low = torch.tril(tril)
            u = torch.einsum("nd,cdk->cnk", x, low) - torch.einsum("cd,cdk->ck", cen, low)[:, None, :]
            return torch.exp(-(u * u).sum(-1).T / (2 * sigma * sigma))
        gemm_label = "GEMM-expanded torch: einsum x L_j - c_j L_j"
    else:
        def gemm():
            return torch.exp(-reference.rbf_r2_expanded(x, cen, diag) / (2 * sigma * sigma))
        gemm_label = "GEMM-expanded torch: (x*x)@w.T - 2 x@(w*c).T + (w*c*c).sum"

    cdist_skip = None
    if metric != "shared_diag":
        cdist_skip = f"torch.cdist has one metric for all centres; this case has a per-centre {metric} metric"

    def cdist():
        sw = diag.sqrt()
        return torch.exp(-torch.cdist(x * sw, cen * sw).square() / (2 * sigma * sigma))

    item = torch.empty((), dtype=dt).element_size()
    diff_skip = ("tril has one forward kernel" if tril is not None else
                 None if torch.device(device).type == "cuda" else "RBFKERN_RBF_FWD/BWD pick Triton kernels (CUDA only)")
    out = [Provider("fused", ours_label(device, "rbfkern.ops.rbf"), fused, leaves, role="fused", jit=True),
           Provider("diff_form", ours_label(device, "rbfkern.ops.rbf") + ", difference-form forward and backward "
                    "(RBFKERN_RBF_FWD=diff RBFKERN_RBF_BWD=diff, the kernels before the tensor-core GEMM form)",
                    fused, leaves, role="ours", jit=True, env={"RBFKERN_RBF_FWD": "diff", "RBFKERN_RBF_BWD": "diff"},
                    skip=diff_skip),
           Provider("naive", "naive broadcast reference (rbfkern.reference.rbf)", naive, leaves,
                    skip=naive_skip(n, c, d, item, device))]
    out += torch_peers("gemm", gemm_label, gemm, leaves, dtype)
    out += torch_peers("cdist", "torch.cdist(x sqrt(w), c sqrt(w))", cdist, leaves, dtype, skip=cdist_skip)
    return out
