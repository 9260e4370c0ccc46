"""Gaussian-derivative basis convolution (structured receptive fields) as torch.library custom ops.

Paper: structured-receptive-fields-thesis.txt, ch. 3 (eq. 20 basis, eq. 23 filters as basis
combinations, Algorithm 1). out = sum_{i, s, (p,q)} alpha[o, i, s*M + b] (x_i * phi_{p,q}(.; s)).

Ops (namespace ``rbfkern``): ``gauss_deriv_conv2d`` -> out, ``gauss_deriv_conv2d_bwd`` -> (gx,
galpha, gsigma); ``gauss_deriv_conv3d`` and ``gauss_deriv_conv3d_bwd`` likewise.

Two evaluation paths give the same values (to rounding):

* ``separable``: the fused kernels (CPU: csrc/cpu/gauss_deriv.h, Triton: rbfkern/gpu/gauss_deriv.py):
  one row pass per order p, one column pass per (p, q), recombination by alpha per tile of output
  rows, no basis maps in memory.
* ``dense``: the effective filters W = sum alpha phi (eq. 23) built once (C_out*C_in*K*K values) and
  one dense ``conv2d``; backward with the conv's weight/input gradients, then the small
  contractions of dW with the 1D kernels give galpha and the kernels' gradient.

:func:`choose_path` is the cost model that picks between them (``RBFKERN_GD_PATH=auto|separable|
dense`` overrides). The sigma gradient is always (gradient w.r.t. the 1D kernels) x (d g / d sigma
in closed form, rbfkern.basis.gauss_kernels_1d_dsigma): the kernels never differentiate the basis
numerically or through autograd. The ``reference`` backend differentiates rbfkern.reference (the
oracle).

The 3D op has the same two paths (three 1D passes x, y, z; or one conv3d), chosen by
:func:`choose_path_3d`, separately for forward and backward (torch's conv3d backward is slow).
The cost model's constants are CPU measurements; on CUDA it compares the same MAC counts.
"""
from __future__ import annotations

import functools
import os
import types
from typing import Sequence

import torch
from torch import Tensor

from .. import _backend, basis, reference
from . import _checks, _eager, _family, _fx, _vmap

_HALF = (torch.float16, torch.bfloat16)
PATHS = ("auto", "separable", "dense")

# Cost model constants: sustained multiply-adds per CPU-second, fitted to forward timings of both
# paths on x (2, 64, 64, 64), C_out 64, order 3, sigma 1/2/4 (the benchmark's shapes at N=2) on the
# development machine (Xeon, AVX-512, float32, 2 threads). Only their ratios matter: the dense
# path is one oneDNN convolution, the separable path is 1D passes plus the recombination GEMM
# (whose rate includes the per-tile overheads).
RATE_DENSE = 22e9
RATE_PASS = 10e9
RATE_GEMM = 7e9
# 3D: the separable path runs at lower rates than in 2D (a third pass over thin tiles), which is
# folded into a higher dense rate: fitted to forward timings of both paths on x (2, 8, 32, 32, 32),
# C_out 8, order 2, sigma 1 and 2 (bench/bench_gauss_deriv.py's 3D rows) and on small problems
# (1-4 channels, sigma 0.5-1, 16-32^3), where the two paths cross. torch's conv3d backward (the
# weight gradient above all) is several times slower per MAC than its forward: the backward
# prices the dense path's 2x MACs at RATE_DENSE3 / DENSE3_BWD_SLOWDOWN against 2.5x the
# separable forward.
RATE_DENSE3 = 44e9
DENSE3_BWD_SLOWDOWN = 5.0


# ---------------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------------


def path_costs(n, cin, cout, h, w, ho, wo, n_scales, order, k, stride=1) -> dict[str, float]:
    """Estimated seconds-per-thread of one forward on each path (2D).

    separable: row pass Ci*S*(order+1)*K MACs per (padded row x output column), column pass
        Ci*S*M*K per output pixel, recombination GEMM Co*Ci*S*M per output pixel;
    dense: Co*Ci*K*K per output pixel, plus building W (Co*Ci*S*M*K*K, once).
    Backward costs about twice each forward on both paths, so the same comparison decides it.
    """
    m = basis.num_basis(order)
    hp = (ho - 1) * stride + k
    rows = n * cin * n_scales * (order + 1) * k * hp * wo
    cols = n * cin * n_scales * m * k * ho * wo
    gemm = n * cout * cin * n_scales * m * ho * wo
    dense = n * cout * cin * k * k * ho * wo
    build = cout * cin * n_scales * m * k * k
    return {
        "separable": (rows + cols) / RATE_PASS + gemm / RATE_GEMM,
        "dense": dense / RATE_DENSE + build / RATE_PASS,
    }


def choose_path(n, cin, cout, h, w, ho, wo, n_scales, order, k, stride=1) -> str:
    """'separable' or 'dense' for a 2D problem: ``RBFKERN_GD_PATH`` if set, else the cheaper by
    :func:`path_costs`."""
    env = _path_env()
    if env != "auto":
        return env
    c = path_costs(n, cin, cout, h, w, ho, wo, n_scales, order, k, stride)
    return "separable" if c["separable"] < c["dense"] else "dense"


def path_costs_3d(n, cin, cout, outs, n_scales, order, k, stride=1, backward=False) -> dict[str, float]:
    """Estimated seconds-per-thread of one 3D forward (or backward) on each path; outs = (Do, Ho, Wo).

    separable: x pass Ci*S*(order+1)*K per (padded z, padded y, output x), y pass Ci*S*M2*K per
        (padded z, output y, output x) with M2 the 2D basis size, z pass Ci*S*M3*K per output voxel,
        recombination GEMM Co*Ci*S*M3 per output voxel;
    dense: Co*Ci*K^3 per output voxel (conv3d, its own rate), plus building W (Co*Ci*S*M3*K^3).
    """
    do, ho, wo = outs
    m2, m3 = basis.num_basis(order, 2), basis.num_basis(order, 3)
    dp, hp = (do - 1) * stride + k, (ho - 1) * stride + k
    vox = n * do * ho * wo
    passes = n * cin * n_scales * k * ((order + 1) * dp * hp * wo + m2 * dp * ho * wo + m3 * do * ho * wo)
    gemm = vox * cout * cin * n_scales * m3
    dense = vox * cout * cin * k ** 3
    build = cout * cin * n_scales * m3 * k ** 3
    sep = passes / RATE_PASS + gemm / RATE_GEMM
    if backward:
        return {"separable": 2.5 * sep, "dense": 2 * dense * DENSE3_BWD_SLOWDOWN / RATE_DENSE3 + 2 * build / RATE_PASS}
    return {"separable": sep, "dense": dense / RATE_DENSE3 + build / RATE_PASS}


def choose_path_3d(n, cin, cout, outs, n_scales, order, k, stride=1, backward=False) -> str:
    """'separable' or 'dense' for a 3D forward (or backward) (``RBFKERN_GD_PATH`` overrides), by
    :func:`path_costs_3d`. The two passes may pick different paths (both give the same values)."""
    env = _path_env()
    if env != "auto":
        return env
    c = path_costs_3d(n, cin, cout, outs, n_scales, order, k, stride, backward)
    return "separable" if c["separable"] < c["dense"] else "dense"


def _path_env() -> str:
    env = os.environ.get("RBFKERN_GD_PATH", "auto").strip().lower() or "auto"
    if env not in PATHS:
        raise ValueError(f"RBFKERN_GD_PATH must be one of {PATHS}, got {env!r}")
    return env


# ---------------------------------------------------------------------------------------------
# Shared pieces: taps, effective filters
# ---------------------------------------------------------------------------------------------


def _sigma_compute(sigma: Tensor) -> Tensor:
    """sigma detached, in the dtype the taps are built in: float32 for the half types (taps and the
    sigma gradient in float16 / bfloat16 lose more than the op's one rounding at the end)."""
    s = sigma.detach()
    return s.float() if s.dtype in _HALF else s


def _tap_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _taps(sigma: Tensor, order: int, truncate: float, radii: Sequence[int], scale_normalized: bool):
    """The 1D kernels g (S, order+1, K) in float32 or float64 (sigma's dtype, half types in
    float32), outside the autograd graph (the sigma gradient comes from :func:`_gsigma`)."""
    return basis.gauss_kernels_1d(_sigma_compute(sigma), order, truncate, radii, scale_normalized)


@functools.lru_cache(maxsize=64)
def _taps_of_values(values: tuple, dtype: torch.dtype, order: int, truncate: float, radii: tuple,
                    scale_normalized: bool) -> Tensor:
    return basis.gauss_kernels_1d(torch.tensor(values, dtype=dtype), order, truncate, radii, scale_normalized)


def _cpu_taps(sigma: Tensor, order: int, truncate: float, radii: Sequence[int], scale_normalized: bool):
    """:func:`_taps` of a plain CPU sigma, kept for the next call with the same scales: building
    the taps takes some 30 small torch ops, about 0.1 ms, more than a small layer's kernels (a
    fixed or evaluated sigma repeats; a trained one changes every step and recomputes). The
    tensor returned is shared between calls: its users only read it."""
    s = _sigma_compute(sigma)
    if type(s) is not Tensor or torch._C._functorch.is_functorch_wrapped_tensor(s):
        return basis.gauss_kernels_1d(s, order, truncate, radii, scale_normalized)
    return _taps_of_values(tuple(s.reshape(-1).tolist()), s.dtype, order, float(truncate),
                           tuple(int(r) for r in radii), bool(scale_normalized))


def _gsigma(gtaps: Tensor, sigma: Tensor, order, truncate, radii, scale_normalized) -> Tensor:
    dg = basis.gauss_kernels_1d_dsigma(_sigma_compute(sigma), order, truncate, radii, scale_normalized)
    return (gtaps.to(dg.dtype) * dg).sum((1, 2)).to(sigma.dtype)


def _pq(order: int, ndim: int = 2):
    return basis.derivative_orders(order) if ndim == 2 else basis.derivative_orders_3d(order)


def effective_weight_from_taps(alpha: Tensor, g: Tensor, order: int, ndim: int = 2) -> Tensor:
    """Dense filters in cross-correlation orientation (the weight of F.conv2d/conv3d).

    alpha (Co, Ci, S*M), g (S, order+1, K) -> (Co, Ci, K, K) or (Co, Ci, K, K, K).
    """
    f = g.flip(-1)
    co, ci = alpha.shape[:2]
    S = g.shape[0]
    pq = _pq(order, ndim)
    a = alpha.reshape(co, ci, S, len(pq))
    if ndim == 2:
        ph = torch.stack([f[:, q, :, None] * f[:, p, None, :] for p, q in pq], 1)  # (S, M, K, K)
        return torch.einsum("oisb,sbyx->oiyx", a, ph.to(alpha.dtype))
    ph = torch.stack([f[:, t, :, None, None] * f[:, q, None, :, None] * f[:, p, None, None, :] for p, q, t in pq], 1)
    return torch.einsum("oisb,sbzyx->oizyx", a, ph.to(alpha.dtype))


class _Dense:
    """The effective-filter path: W = sum alpha phi, one dense convolution (any device)."""

    @staticmethod
    def forward(x, alpha, g, order, stride, pad, ndim=2):
        # the filters built in the taps' dtype (float32 for half inputs), rounded once
        w = effective_weight_from_taps(alpha.to(g.dtype), g, order, ndim).to(x.dtype)
        conv = torch.nn.functional.conv2d if ndim == 2 else torch.nn.functional.conv3d
        return conv(x, w, stride=stride, padding=pad)

    @staticmethod
    def backward(grad, x, alpha, g, order, stride, pad, needs, ndim=2):
        # the contractions with the taps in their dtype (float32 for half inputs)
        f = g.flip(-1)
        w = effective_weight_from_taps(alpha.to(g.dtype), g, order, ndim).to(x.dtype)
        gx = galpha = gg = None
        if needs[0]:
            fn = torch.nn.grad.conv2d_input if ndim == 2 else torch.nn.grad.conv3d_input
            gx = fn(x.shape, w, grad, stride=stride, padding=pad)
        if needs[1] or needs[2]:
            fn = torch.nn.grad.conv2d_weight if ndim == 2 else torch.nn.grad.conv3d_weight
            gw = fn(x, w.shape, grad, stride=stride, padding=pad).to(f.dtype)
            pq = _pq(order, ndim)
            S, co, ci = g.shape[0], alpha.shape[0], alpha.shape[1]
            if needs[1]:
                if ndim == 2:
                    ph = torch.stack([f[:, q, :, None] * f[:, p, None, :] for p, q in pq], 1)
                    galpha = torch.einsum("oiyx,sbyx->oisb", gw, ph)
                else:
                    ph = torch.stack([f[:, t, :, None, None] * f[:, q, None, :, None] * f[:, p, None, None, :]
                                      for p, q, t in pq], 1)
                    galpha = torch.einsum("oizyx,sbzyx->oisb", gw, ph)
                galpha = galpha.reshape(co, ci, S * len(pq))
            if needs[2]:
                a = alpha.to(f.dtype).reshape(co, ci, S, len(pq))
                gf = torch.zeros_like(f)
                if ndim == 2:
                    u = torch.einsum("oisb,oiyx->sbyx", a, gw)
                    for b, (p, q) in enumerate(pq):
                        gf[:, q] += torch.einsum("syx,sx->sy", u[:, b], f[:, p])
                        gf[:, p] += torch.einsum("syx,sy->sx", u[:, b], f[:, q])
                else:
                    u = torch.einsum("oisb,oizyx->sbzyx", a, gw)
                    for b, (p, q, t) in enumerate(pq):
                        gf[:, t] += torch.einsum("szyx,sy,sx->sz", u[:, b], f[:, q], f[:, p])
                        gf[:, q] += torch.einsum("szyx,sz,sx->sy", u[:, b], f[:, t], f[:, p])
                        gf[:, p] += torch.einsum("szyx,sz,sy->sx", u[:, b], f[:, t], f[:, q])
                gg = gf.flip(-1)
        return gx, galpha, gg


class _Cpp:
    """The separable fused kernels of csrc/cpu/gauss_deriv.h (float32/float64); x of rank 5 runs
    the 3D kernels."""

    @staticmethod
    @functools.cache
    def _pq(order, ndim=2):
        pq = torch.tensor(_pq(order, ndim), dtype=torch.int64).numpy()
        pq.flags.writeable = False  # shared between calls
        return pq

    @staticmethod
    def forward(x, alpha, g, order, stride, pad):
        nd = x.dim() - 2
        k = g.shape[-1]
        out = x.new_empty(x.shape[0], alpha.shape[0], *(_out_hw(d, k, stride, pad) for d in x.shape[2:]))
        f = g.flip(-1).to(x.dtype).contiguous()
        a = alpha.reshape(alpha.shape[0], -1).contiguous()
        _backend.cext().gauss_deriv2d_forward(
            _family.numpy_view(x), _family.numpy_view(a), f.numpy(), _Cpp._pq(order, nd),
            stride, pad, out.numpy(), _backend.num_threads(),
        )
        return out

    @staticmethod
    def backward(grad, x, alpha, g, order, stride, pad, needs):
        nd = x.dim() - 2
        f = g.flip(-1).to(x.dtype).contiguous()
        a = alpha.reshape(alpha.shape[0], -1).contiguous()
        gx = torch.empty_like(x) if needs[0] else None
        ga = torch.empty_like(a) if needs[1] else None
        gf = torch.empty_like(f) if needs[2] else None
        np_ = _family.numpy_view
        _backend.cext().gauss_deriv2d_backward(
            np_(grad), np_(x), np_(a), f.numpy(),
            _Cpp._pq(order, nd), stride, pad, np_(gx), np_(ga), np_(gf), _backend.num_threads(),
        )
        return gx, None if ga is None else ga.reshape(alpha.shape), None if gf is None else gf.flip(-1)


def _path_for(x: Tensor, alpha: Tensor, g: Tensor, order: int, stride: int, pad: int, backward=False) -> str:
    k = g.shape[-1]
    n, ci = x.shape[:2]
    sizes = x.shape[2:]
    outs = [_out_hw(d, k, stride, pad) for d in sizes]
    if x.dim() == 5:
        return choose_path_3d(n, ci, alpha.shape[0], tuple(outs), g.shape[0], order, k, stride, backward)
    return choose_path(n, ci, alpha.shape[0], *sizes, *outs, g.shape[0], order, k, stride)


# ---------------------------------------------------------------------------------------------
# Backends: forward(x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized) -> out
#           backward(grad, x, alpha, sigma, ..., scale_normalized, needs) -> (gx, galpha, gsigma)
# 2D or 3D by x's rank; inputs contiguous. _Reference differentiates rbfkern.reference; _Taps
# puts the separable kernels of one backend (C++ or Triton) and the dense path behind the same
# contract: it builds the 1D taps, picks the path and turns the taps' gradient into gsigma.
# ---------------------------------------------------------------------------------------------


class _Reference:
    """rbfkern.reference (the oracle backend)."""

    @staticmethod
    def _fn(x):
        return reference.gauss_deriv_conv2d if x.dim() == 4 else reference.gauss_deriv_conv3d

    @staticmethod
    def forward(x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized):
        return _Reference._fn(x)(x, alpha, sigma, order, truncate, list(radii), stride, padding, scale_normalized)

    @staticmethod
    def backward(grad, x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized, needs):
        def f(x_, a_, s_):
            return _Reference.forward(x_, a_, s_, order, truncate, radii, stride, padding, scale_normalized)

        return tuple(_family.vjp_of(f, (x, alpha, sigma), needs, grad))


class _Taps:
    """The 1D-tap kernels of one backend (``kernels``: _Cpp or rbfkern.gpu.gauss_deriv, both
    ``forward(x, alpha, g, order, stride, pad)`` / ``backward(grad, x, alpha, g, order, stride,
    pad, needs) -> (gx, galpha, gtaps)``) or the dense path, by the cost model."""

    def __init__(self, kernels, cpu: bool, half_as_float32: bool):
        self.kernels = kernels
        self.cpu = cpu  # the C++ kernels
        # half types in float32: the C++ kernels, and the interpreted Triton kernels on CPU tensors
        self.HALF_AS_FLOAT32 = half_as_float32

    def _dense(self, x, alpha, g, order, stride, padding, backward):
        # torch's CPU convolutions split their reductions by thread count: under
        # torch.use_deterministic_algorithms the C++ backend takes the separable kernels (fixed-order sums)
        if self.cpu and torch.are_deterministic_algorithms_enabled():
            return False
        return _path_for(x, alpha, g, order, stride, padding, backward) == "dense"

    def _taps_for(self, x, sigma, order, truncate, radii, scale_normalized):
        taps = _cpu_taps if self.cpu else _taps
        return taps(sigma, order, truncate, radii, scale_normalized).to(_tap_dtype(x))

    def forward(self, x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized):
        g = self._taps_for(x, sigma, order, truncate, radii, scale_normalized)
        if self._dense(x, alpha, g, order, stride, padding, backward=False):
            return _Dense.forward(x, alpha, g, order, stride, padding, ndim=x.dim() - 2)
        return self.kernels.forward(x, alpha, g, order, stride, padding)

    def backward(self, grad, x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized, needs):
        g = self._taps_for(x, sigma, order, truncate, radii, scale_normalized)
        if self._dense(x, alpha, g, order, stride, padding, backward=True):
            gx, ga, gg = _Dense.backward(grad, x, alpha, g, order, stride, padding, needs, ndim=x.dim() - 2)
        else:
            gx, ga, gg = self.kernels.backward(grad, x, alpha, g, order, stride, padding, needs)
        gs = _gsigma(gg, sigma, order, truncate, radii, scale_normalized) if needs[2] else None
        return gx, ga, gs


_CPU_TAPS = _Taps(_Cpp, cpu=True, half_as_float32=True)


@functools.lru_cache(maxsize=None)
def _triton_taps(module, on_cpu: bool):
    return _Taps(module, cpu=False, half_as_float32=on_cpu)


def _impl(device):
    impl = _family.backend("gauss_deriv", device, _CPU_TAPS, _Reference)
    return _triton_taps(impl, device.type == "cpu") if isinstance(impl, types.ModuleType) else impl


# ---------------------------------------------------------------------------------------------
# Custom ops: one body for 2D and 3D (x's rank), registered under both names
# ---------------------------------------------------------------------------------------------


def _out_hw(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _gd_fake(x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized):
    k = 2 * max(radii) + 1
    shape = (x.shape[0], alpha.shape[0], *(_out_hw(d, k, stride, padding) for d in x.shape[2:]))
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_family.conv_memory_format(x))


def _gd_bwd_fake(grad, x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized, needs):
    return tuple(torch.empty_like(t) if n else x.new_empty(0) for t, n in zip((x, alpha, sigma), needs))


def _gd_forward(
    x: Tensor, alpha: Tensor, sigma: Tensor, order: int, truncate: float, radii: list[int],
    stride: int, padding: int, scale_normalized: bool,
) -> Tensor:
    impl = _impl(x.device)
    xc, ac = _family.prepare(impl, x, alpha)
    y = impl.forward(xc, ac, sigma, order, truncate, radii, stride, padding, scale_normalized).to(x.dtype)
    mf = _family.conv_memory_format(x)
    # the kernels write NCDHW / NCHW: a channels-last model gets its layout back, as from conv2d
    return y if mf == torch.contiguous_format else torch.empty(y.shape, dtype=y.dtype, device=y.device,
                                                                memory_format=mf).copy_(y)


def _gd_backward(
    grad: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, order: int, truncate: float, radii: list[int],
    stride: int, padding: int, scale_normalized: bool, needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """(gx, galpha, gsigma); an input not needed gets an empty tensor."""
    impl = _impl(x.device)
    gc, xc, ac = _family.prepare(impl, grad, x, alpha)
    grads = impl.backward(gc, xc, ac, sigma, order, truncate, radii, stride, padding, scale_normalized, needs)
    grads = _family.grads_or_empty(grads, (x, alpha, sigma), needs)
    return tuple(_family.strided_like(g, t) for g, t in zip(grads, (x, alpha, sigma)))


_gd2_op = _family.device_op("gauss_deriv_conv2d", fake=_gd_fake)(_gd_forward)
_gd2_bwd_op = _family.device_op("gauss_deriv_conv2d_bwd", fake=_gd_bwd_fake)(_gd_backward)
_gd3_op = _family.device_op("gauss_deriv_conv3d", fake=_gd_fake)(_gd_forward)
_gd3_bwd_op = _family.device_op("gauss_deriv_conv3d_bwd", fake=_gd_bwd_fake)(_gd_backward)


def _setup(ctx, inputs, output):
    x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized = inputs
    ctx.args = (order, truncate, radii, stride, padding, scale_normalized)
    ctx.save_for_backward(x, alpha, sigma)


def _autograd_backward(bwd_op):
    def backward(ctx, grad):
        x, alpha, sigma = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:3])
        gx, ga, gs = _eager.call(bwd_op, grad, x, alpha, sigma, *ctx.args, needs)
        return (gx if needs[0] else None, ga if needs[1] else None, gs if needs[2] else None) + (None,) * 6

    return backward


_eager.register_autograd(_gd2_op, _autograd_backward(_gd2_bwd_op), _setup)
_eager.register_autograd(_gd3_op, _autograd_backward(_gd3_bwd_op), _setup)
_family.reference_double_backward(_gd2_bwd_op)
_family.reference_double_backward(_gd3_bwd_op)
# rows: x (and grad in the backward); a fold only when neither alpha's nor sigma's gradient is asked for
for _op, _bwd in ((_gd2_op, _gd2_bwd_op), (_gd3_op, _gd3_bwd_op)):
    _vmap.register_rows(_op, rows=(0,), row_outputs=(0,))
    _vmap.register_rows(_bwd, rows=(0, 1), row_outputs=(0,), may_fold=lambda args: not (args[-1][1] or args[-1][2]))


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def check_order_truncate(order, truncate) -> float:
    """The derivative order and truncate checks, shared by the ops and the layers' constructors."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int, got {type(order).__name__}")
    if not 0 <= order <= basis.MAX_ORDER:
        raise ValueError(f"order must be in 0..{basis.MAX_ORDER}, got {order}")
    return _checks.finite_float("truncate", truncate, positive=True)


def _check_args(x, alpha, sigma, order, truncate, stride, padding, ndim, max_sigma=None):
    _checks.tensor("x", x, ndim + 2)
    truncate = check_order_truncate(order, truncate)
    if max_sigma is not None:
        max_sigma = _checks.finite_float("max_sigma", max_sigma, positive=True)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if isinstance(sigma, Tensor):
        _checks.tensor("sigma", sigma, (0, 1))
        _checks.same_device_dtype("x", x, sigma=sigma)
        _checks.values("sigma", sigma, positive=True)
        if sigma.numel() == 0:
            raise ValueError("sigma must hold at least one scale, got shape (0,)")
        sig = sigma.reshape(-1)
        if max_sigma is None and _checks.vmapped(sig):
            raise ValueError("sigma is batched by torch.func.vmap, and without max_sigma each slice would need "
                             "kernels of its own size; pass max_sigma (a bound on every slice's sigma)")
        if max_sigma is None:
            rads = basis.radii(sig, truncate)  # reads sigma's values (not traceable)
        else:
            rads = [basis.radius(max_sigma, truncate)] * sig.numel()
            _checks.at_most("sigma", sig, max_sigma, "max_sigma")
    else:
        vals = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
        if not vals:
            raise ValueError("sigma must hold at least one scale, got an empty sequence")
        vals = [_checks.finite_float("sigma", v, positive=True) for v in vals]
        # float32 (float64 for float64 x), the scales as given; filled on the device, not copied
        # there (a host-to-device copy blocks the host and breaks CUDA graph capture)
        sig = torch.empty(len(vals), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                          device=x.device)
        for i, v in enumerate(vals):
            sig[i] = v
        if max_sigma is None:
            rads = basis.radii(vals, truncate)
        else:
            rads = [basis.radius(max_sigma, truncate)] * len(vals)
        if max_sigma is not None and max(vals) > max_sigma:
            raise ValueError(f"sigma must be <= max_sigma={max_sigma:g}, got max {max(vals):g}")
    S, M = len(rads), basis.num_basis(order, ndim)
    K = 2 * max(rads) + 1
    if K > basis.MAX_KERNEL_SIZE:
        raise ValueError(
            f"the kernel of sigma={max(float(v) for v in sig.detach().tolist()):g} at truncate={truncate:g} has "
            f"{K} taps per side, more than the bound {basis.MAX_KERNEL_SIZE}; use a smaller sigma or truncate"
        )
    _checks.tensor("alpha", alpha, 3)
    _checks.same_device_dtype("x", x, alpha=alpha)
    cin = x.shape[1]
    if alpha.shape[0] < 1 or alpha.shape[1] != cin or alpha.shape[2] != S * M:
        raise ValueError(
            f"alpha must have shape (C_out, {cin}, {S * M}) = (C_out, C_in, S*M) for {S} scale(s) and order {order} "
            f"(M={M}) with C_out >= 1, got {tuple(alpha.shape)}"
        )
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"padding must be 'same' or an int >= 0, got {padding!r}")
        pad = max(rads)
    elif isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be 'same' or an int >= 0, got {padding!r}")
    else:
        pad = padding
    for d in range(2, 2 + ndim):
        if x.shape[d] + 2 * pad < K:
            raise ValueError(
                f"x of shape {tuple(x.shape)} padded by {pad} is smaller than the {K}-tap kernel along dim {d}"
            )
    return sig, rads, truncate, pad


@_fx.traceable
def gauss_deriv_conv2d(x: Tensor, alpha: Tensor, sigma: float | Sequence[float] | Tensor, *, order: int = 3,
                       truncate: float = 4.0, stride: int = 1, padding: int | str = "same",
                       scale_normalized: bool = False, max_sigma: float | None = None) -> Tensor:
    """Gaussian-derivative basis convolution (structured receptive fields, thesis ch. 3 eq. 23).

    out[n, o] = sum_{i, s, b} alpha[o, i, s*M + b] (x[n, i] conv phi_b(.; sigma_s)), where
    phi_b = g_p(x) g_q(y) for (p, q) = rbfkern.basis.derivative_orders(order)[b]. With a one-hot
    alpha selecting (p, q) at scale s, the output is scipy.ndimage.gaussian_filter(x, s,
    order=(q, p), mode="constant", truncate=truncate): the scale-space derivative d^p/dx^p d^q/dy^q.

    Args:
        x: (N, C_in, H, W).
        alpha: (C_out, C_in, S*M), M = (order+1)(order+2)/2, index scale*M + basis index.
        sigma: a positive float, a sequence of S floats, or a (S,) tensor (differentiable).
        order: highest total derivative order, 0..4.
        truncate: each scale's radius is int(truncate * sigma + 0.5).
        stride: output stride.
        padding: "same" (zero padding by the largest radius R: H x W out at stride 1) or an int.
        scale_normalized: use s^m-normalised derivatives.
        max_sigma: an upper bound on sigma (a Python number): every scale then gets the radius
            int(truncate * max_sigma + 0.5) instead of its own, so the kernel size does not depend
            on sigma's values. Pass it with a learnable tensor sigma under torch.compile (the
            default reads sigma's values to size the kernels, which cannot be traced); eager mode
            raises if sigma exceeds it.

    Returns:
        (N, C_out, H', W'), H' = (H + 2 pad - 2R - 1) // stride + 1.

    The kernel radii depend on sigma's values: a tensor sigma is read on every call, which
    torch.compile(fullgraph=True) cannot trace; there pass floats (GaussDerivConv2d does when its
    scales are fixed) or ``max_sigma`` (GaussDerivConv2d does when it learns them).
    """
    sig, rads, truncate, pad = _check_args(x, alpha, sigma, order, truncate, stride, padding, 2, max_sigma)
    return _eager.call(_gd2_op, x, alpha, sig, order, truncate, rads, stride, pad, bool(scale_normalized))


@_fx.traceable
def gauss_deriv_conv3d(x: Tensor, alpha: Tensor, sigma: float | Sequence[float] | Tensor, *, order: int = 2,
                       truncate: float = 4.0, stride: int = 1, padding: int | str = "same",
                       scale_normalized: bool = False, max_sigma: float | None = None) -> Tensor:
    """The 3D op on volumes x (N, C_in, D, H, W): basis phi_{p,q,t} = g_t(z) g_q(y) g_p(x),
    p + q + t <= order (rbfkern.basis.derivative_orders_3d), alpha (C_out, C_in, S*M3),
    M3 = (order+1)(order+2)(order+3)/6. Other arguments as :func:`gauss_deriv_conv2d`.

    Fused separable kernels (x, y, z passes; C++ and Triton) or one dense conv3d, as
    :func:`choose_path_3d` picks (separately for forward and backward).
    """
    sig, rads, truncate, pad = _check_args(x, alpha, sigma, order, truncate, stride, padding, 3, max_sigma)
    return _eager.call(_gd3_op, x, alpha, sig, order, truncate, rads, stride, pad, bool(scale_normalized))


def effective_weight(alpha: Tensor, sigma, *, order: int = 3, truncate: float = 4.0,
                     scale_normalized: bool = False, ndim: int = 2, max_sigma: float | None = None) -> Tensor:
    """The dense filters sum_b alpha phi_b, (C_out, C_in, K, K) (or K, K, K for ndim=3), in the
    cross-correlation orientation of F.conv2d: F.conv2d(x, W, padding=R) equals the op."""
    s = sigma.reshape(-1) if isinstance(sigma, Tensor) else torch.tensor(
        [sigma] if isinstance(sigma, (int, float)) else list(sigma), dtype=torch.float64)
    rads = None if max_sigma is None else [basis.radius(max_sigma, truncate)] * s.numel()
    g = basis.gauss_kernels_1d(s, order, truncate, rads, scale_normalized)
    return effective_weight_from_taps(alpha, g.to(alpha.dtype).to(alpha.device), order, ndim)
