"""Gaussian-derivative cases (truncate 4): ``rbfkern.ops.gauss_deriv_conv2d`` / ``_conv3d`` on the
fused separable path (``RBFKERN_GD_PATH=separable``) vs (a) one dense cuDNN convolution with the
effective filter W = sum_b alpha_b phi_b (built from alpha in every step, so alpha gets its
gradient through it) vs (b) the thesis' layer: a depthwise convolution with the dense basis
phi_b, then a 1x1 convolution with alpha. Where the op's own cost model (``auto``) would pick its
dense path instead, that path is timed too (role ``ours``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import basis, ops
from ...ops import gauss_deriv as gd
from . import DTYPES, Case, Provider, generator, ours_label, torch_peers

TRUNCATE = 4.0
SUMMARY = ("fused separable op; the op's auto path where its cost model picks dense; dense conv of the effective "
           "filter (TF32 off/on); depthwise basis conv + 1x1 conv (TF32 off/on)")


def _c2(sigma, quick=False):
    return Case("gauss_deriv", f"2d-16x64x64x64-to64-order3-sigma{sigma:g}",
                f"2D Gaussian-derivative conv, x (16, 64, 64, 64) -> 64, order 3, sigma {sigma:g}",
                dict(ndim=2, n=16, cin=64, h=64, w=64, cout=64, order=3, sigma=sigma),
                dict(n=1, cin=3, h=12, w=12, cout=4), quick=quick)


def _c3(sigma, quick=False):
    return Case("gauss_deriv", f"3d-2x8x32x32x32-to8-order2-sigma{sigma:g}",
                f"3D Gaussian-derivative conv, x (2, 8, 32, 32, 32) -> 8, order 2, sigma {sigma:g}",
                dict(ndim=3, n=2, cin=8, h=32, w=32, d=32, cout=8, order=2, sigma=sigma),
                dict(n=1, cin=2, h=8, w=8, d=8, cout=2), quick=quick)


CASES = [_c2(1.0), _c2(2.0, quick=True), _c2(4.0), _c3(1.0, quick=True), _c3(2.0)]


def auto_paths(params: dict) -> tuple[str, str]:
    """(forward, backward) path the op's cost model picks when RBFKERN_GD_PATH=auto."""
    k = 2 * basis.radius(params["sigma"], TRUNCATE) + 1
    n, cin, cout, order = params["n"], params["cin"], params["cout"], params["order"]
    if params["ndim"] == 2:
        c = gd.path_costs(n, cin, cout, params["h"], params["w"], params["h"], params["w"], 1, order, k)
        pick = "separable" if c["separable"] < c["dense"] else "dense"
        return pick, pick
    outs = (params["d"], params["h"], params["w"])
    picks = []
    for bwd in (False, True):
        c = gd.path_costs_3d(n, cin, cout, outs, 1, order, k, backward=bwd)
        picks.append("separable" if c["separable"] < c["dense"] else "dense")
    return picks[0], picks[1]


def providers(case: Case, dtype: str, device, params: dict) -> list[Provider]:
    dt, g = DTYPES[dtype], generator(device)
    nd, sigma, order = params["ndim"], params["sigma"], params["order"]
    n, cin, cout = params["n"], params["cin"], params["cout"]
    spatial = (params["h"], params["w"]) if nd == 2 else (params["d"], params["h"], params["w"])
    m = basis.num_basis(order, nd)
    r = basis.radius(sigma, TRUNCATE)
    x = torch.randn(n, cin, *spatial, generator=g, device=device).to(dt).requires_grad_()
    alpha = (torch.randn(cout, cin, m, generator=g, device=device) / (cin * m) ** 0.5).to(dt).requires_grad_()
    leaves = [x, alpha]
    op = ops.gauss_deriv_conv2d if nd == 2 else ops.gauss_deriv_conv3d
    conv = F.conv2d if nd == 2 else F.conv3d
    # The basis in cross-correlation orientation (the weight layout of F.conv2d / conv3d).
    flip = (-1, -2) if nd == 2 else (-1, -2, -3)
    phi = (basis.basis_2d if nd == 2 else basis.basis_3d)(sigma, order, TRUNCATE)[0].flip(flip)
    phi = phi.to(device=device, dtype=dt)  # (M, K, K[, K])
    depthwise = phi[:, None].repeat(cin, *([1] * (nd + 1)))  # (C_in*M, 1, K, ...): channel i*M + b
    eq = "oib,byx->oiyx" if nd == 2 else "oib,bzyx->oizyx"

    def fused():
        return op(x, alpha, sigma, order=order, truncate=TRUNCATE)

    def dense():
        return conv(x, torch.einsum(eq, alpha, phi), padding=r)

    def dw_1x1():
        zeta = conv(x, depthwise, padding=r, groups=cin)
        return conv(zeta, alpha.reshape(cout, cin * m, *([1] * nd)))

    out = [Provider("fused", ours_label(device, f"rbfkern.ops.gauss_deriv_conv{nd}d, separable path"), fused, leaves,
                    role="fused", jit=True, env={"RBFKERN_GD_PATH": "separable"})]
    fwd_path, bwd_path = auto_paths(params)
    if "dense" in (fwd_path, bwd_path):
        out.append(Provider("ours_auto", f"rbfkern.ops.gauss_deriv_conv{nd}d, auto path (fwd {fwd_path}, bwd "
                            f"{bwd_path})", fused, leaves, role="ours", jit=True, env={"RBFKERN_GD_PATH": "auto"},
                            note="the op's cost model (fitted on CPU) picks its dense cuDNN path here"))
    out += torch_peers("dense", f"dense conv{nd}d of the effective filter (K={2 * r + 1})", dense, leaves, dtype)
    out += torch_peers("depthwise_1x1", f"depthwise conv{nd}d with the {m} basis filters + 1x1 conv", dw_1x1,
                       leaves, dtype)
    return out
