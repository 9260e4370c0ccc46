"""Gaussian-derivative basis convolution: ours (rbfkern.ops.gauss_deriv_conv2d, the path its cost
model picks) vs (a) the dense effective-filter conv2d (W = sum alpha phi built in torch, one F.conv2d)
vs (b) the thesis' basis layer: depthwise conv with the dense KxK basis, then a 1x1 conv (issue 5).

Table (interleaved rounds, peak memory): python bench/bench_gauss_deriv.py [--quick] [--n N] [--sigmas ...]
3D rows:                                  python bench/bench_gauss_deriv.py --3d
pytest-benchmark:                         pytest bench/bench_gauss_deriv.py --benchmark-only
FLOPs and bytes: rbfkern/gpucheck/model.py (the separable work of the fused kernels).

3D: ours (rbfkern.ops.gauss_deriv_conv3d, the path its 3D cost model picks) vs the dense
effective-filter conv3d. Shapes, order and truncation: the constants below. A step slower than
SLOW_S is timed once (its warm-up is the sample).
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import _harness as h
from rbfkern import basis
from rbfkern.gpucheck.model import cost
from rbfkern.ops import gauss_deriv as gd
from rbfkern.ops import gauss_deriv_conv2d, gauss_deriv_conv3d

N, C_IN, H, W, C_OUT, ORDER, TRUNCATE = 16, 64, 64, 64, 64, 3, 4.0
QUICK_N = 2
SIGMAS = (1.0, 2.0, 4.0)
PROVIDERS = ("ours", "dense", "depthwise+1x1")
# 3D rows
N3, C3, S3, O3, ORDER3 = 2, 8, 32, 8, 2
SIGMAS3 = (1.0, 2.0)
PROVIDERS3 = ("ours", "dense")
MODES = ("fwd", "fwd+bwd")
SLOW_S = 5.0


def make(provider, sigma, requires_grad, n, c, o, h, w):
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


def make3d(provider, sigma, requires_grad, n, c, o, size):
    """3D: (fn, params) for ours (cost-model path) or the dense effective-filter conv3d."""
    g = torch.Generator().manual_seed(0)
    m = basis.num_basis(ORDER3, 3)
    x = torch.randn(n, c, size, size, size, generator=g).requires_grad_(requires_grad)
    alpha = (torch.randn(o, c, m, generator=g) / (c * m) ** 0.5).requires_grad_(requires_grad)
    if provider == "ours":
        return (lambda: gauss_deriv_conv3d(x, alpha, sigma, order=ORDER3, truncate=TRUNCATE)), (x, alpha)
    if provider == "dense":
        r = basis.radius(sigma, TRUNCATE)

        def fn():
            weight = gd.effective_weight(alpha, sigma, order=ORDER3, truncate=TRUNCATE, ndim=3)
            return F.conv3d(x, weight, padding=r)
        return fn, (x, alpha)
    raise ValueError(provider)


def setup(case: h.Case, provider: str):
    p, grad = case.params, case.mode != "fwd"
    if p["ndim"] == 3:
        fn, params = make3d(provider, p["sigma"], grad, p["n"], p["cin"], p["cout"], p["d"])
    else:
        fn, params = make(provider, p["sigma"], grad, p["n"], p["cin"], p["cout"], p["h"], p["w"])
    return h.autograd_step(fn, params, case.mode)


def chosen_path(sigma, n=N) -> str:
    k = 2 * basis.radius(sigma, TRUNCATE) + 1
    return gd.choose_path(n, C_IN, C_OUT, H, W, H, W, 1, ORDER, k)


def chosen_path_3d(sigma, backward=False) -> str:
    k = 2 * basis.radius(sigma, TRUNCATE) + 1
    return gd.choose_path_3d(N3, C3, O3, (S3,) * 3, 1, ORDER3, k, backward=backward)


def make_case(ndim, sigma, mode, n, cin, cout, size) -> h.Case:
    order = ORDER3 if ndim == 3 else ORDER
    params = {"op": f"gauss_deriv_conv{ndim}d", "ndim": ndim, "order": order, "n": n, "cin": cin, "cout": cout, "sigma": sigma, "h": size, "w": size}
    if ndim == 3:
        params["d"] = size
    model = cost("gauss_deriv", params, "float32", mode)
    shape = f"N={n} C={cin} {'x'.join([str(size)] * ndim)} O={cout}"
    return h.Case(f"gauss_deriv_conv{ndim}d sigma={sigma:g}", shape, PROVIDERS3 if ndim == 3 else PROVIDERS, mode,
                  params, flops=model.flops, bytes=model.bytes)


def cases(args) -> list[h.Case]:
    if args.three:
        return [make_case(3, s, m, N3, C3, O3, S3) for s in SIGMAS3 for m in MODES]
    n = QUICK_N if args.quick else args.n
    return [make_case(2, s, m, n, C_IN, C_OUT, H) for s in args.sigmas for m in MODES]


def warmup_case(case: h.Case) -> h.Case:
    """The smallest input of the same filter: one-time costs (lazy imports, oneDNN set-up)."""
    p = case.params
    k = 2 * basis.radius(p["sigma"], TRUNCATE) + 1
    small = make_case(p["ndim"], p["sigma"], case.mode, 1, 1 if p["ndim"] == 3 else 2, 1 if p["ndim"] == 3 else 2, k)
    return small


def notes(case: h.Case) -> dict:
    p = case.params
    if p["ndim"] == 3:
        return {"path fwd/bwd": f"{chosen_path_3d(p['sigma'])}/{chosen_path_3d(p['sigma'], True)}"}
    return {"path": chosen_path(p["sigma"], p["n"])}


def add_arguments(ap):
    ap.add_argument("--n", type=int, default=N, help=f"batch of the 2D rows (--quick: {QUICK_N})")
    ap.add_argument("--sigmas", type=float, nargs="*", default=list(SIGMAS))
    ap.add_argument("--3d", dest="three", action="store_true", help="the 3D rows only")


def title(args) -> str:
    if args.three:
        return f"x ({N3}, {C3}, {S3}, {S3}, {S3}), C_out {O3}, order {ORDER3}, truncate {TRUNCATE:g}, float32"
    return f"x (N, {C_IN}, {H}, {W}), C_out {C_OUT}, order {ORDER}, truncate {TRUNCATE:g}, float32"


BENCH = h.Bench("gauss_deriv", cases, setup, ours="ours", rounds=3, memory=True, warmup_case=warmup_case,
                slow_s=SLOW_S, notes=notes, add_arguments=add_arguments, title=title,
                ratios=(("dense", "ours"), ("depthwise+1x1", "ours"), (("dense", "depthwise+1x1"), "ours")))
test_gauss_deriv = h.pytest_benchmark(BENCH, rounds=1, warmup_rounds=0)
test_gauss_deriv_3d = h.pytest_benchmark(BENCH, rounds=1, warmup_rounds=0, argv=["--3d"])

if __name__ == "__main__":
    sys.exit(h.main(BENCH))
