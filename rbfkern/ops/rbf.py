"""Mahalanobis RBF distance and activation as torch.library custom ops.

Ops (namespace ``rbfkern``): ``rbf_r2`` -> r2, ``rbf`` -> (act, r2), ``rbf_bwd`` -> all gradients.
Each body picks a backend at call time (``rbfkern._backend.choose``): the C++ extension for CPU
tensors, Triton for CUDA tensors (or CPU tensors under ``RBFKERN_BACKEND=triton
TRITON_INTERPRET=1``), or the reference. Autograd calls ``rbf_bwd``, a fused backward kernel on
every backend; the reference backend differentiates the reference (it is the oracle).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _backend, reference
from . import _checks, _eager, _family, _fx, _vmap

KINDS = reference.RBF_KINDS
_KIND_ID = {"none": -1, **{k: i for i, k in enumerate(KINDS)}}


# ---------------------------------------------------------------------------------------------
# Backends: forward(x, centers, diag, tril, sigma, kind, shape, need_act) -> (act | None, r2)
#           backward(grad_act, grad_r2, x, centers, diag, tril, sigma, r2, kind, shape, needs)
#               -> (gx, gc, gdiag, gtril, gsigma), None where not needed
# Inputs are contiguous, one dtype; sigma is a (C,) tensor.
# ---------------------------------------------------------------------------------------------


_np = _family.numpy_view


class _Cpp:
    """The C++ kernels of csrc/cpu/rbf.h / rbf_kernels.h (float32/float64; half types are computed in float32)."""

    HALF_AS_FLOAT32 = True

    @staticmethod
    def _metric(x: Tensor, diag: Tensor | None, tril: Tensor | None):
        if diag is not None:
            return diag, 1, diag.dim() == 1
        if tril is not None:
            return tril, 2, tril.dim() == 2
        return x.new_empty(0), 0, False

    @staticmethod
    def forward(x, centers, diag, tril, sigma, kind, shape, need_act, need_r2=True):
        metric, mk, shared = _Cpp._metric(x, diag, tril)
        n, c = x.shape[0], centers.shape[0]
        r2 = x.new_empty(n, c) if need_r2 or not need_act else None
        act = x.new_empty(n, c) if need_act else None
        _backend.cext().rbf_forward(
            _np(x), _np(centers), _np(metric), mk, shared, _np(sigma),
            _KIND_ID[kind], float(shape), _np(act), _np(r2), _backend.num_threads(),
        )
        return act, r2

    @staticmethod
    def backward(grad_act, grad_r2, x, centers, diag, tril, sigma, r2, kind, shape, needs):
        metric, mk, shared = _Cpp._metric(x, diag, tril)
        gx = torch.empty_like(x) if needs[0] else None
        gc = torch.empty_like(centers) if needs[1] else None
        gm = torch.empty_like(metric) if (needs[2] or needs[3]) and mk else None
        gs = torch.empty_like(sigma) if needs[4] and grad_act is not None else None
        _backend.cext().rbf_backward(
            _np(grad_act), _np(grad_r2), _np(x), _np(centers), _np(metric), mk, shared, _np(sigma),
            _np(r2), _KIND_ID[kind], float(shape), _np(gx), _np(gc), _np(gm), _np(gs),
            _backend.num_threads(),
        )
        if gs is None and needs[4]:
            gs = torch.zeros_like(sigma)
        return gx, gc, gm if mk == 1 else None, gm if mk == 2 else None, gs


class _Reference:
    """rbfkern.reference, differentiated by autograd (the oracle backend)."""

    @staticmethod
    def forward(x, centers, diag, tril, sigma, kind, shape, need_act, need_r2=True):
        r2 = reference.rbf_r2(x, centers, diag, tril)
        act = reference.rbf_activation(r2, kind, sigma, shape) if need_act else None
        return act, r2

    @staticmethod
    def backward(grad_act, grad_r2, x, centers, diag, tril, sigma, r2, kind, shape, needs):
        def f(x_, centers_, diag_, tril_, sigma_):
            r2_ = reference.rbf_r2(x_, centers_, diag_, tril_)
            act = r2_ if kind == "none" else reference.rbf_activation(r2_, kind, sigma_, shape)
            return act, r2_

        return tuple(_family.vjp_of(f, (x, centers, diag, tril, sigma), needs, (grad_act, grad_r2)))


def _impl(device: torch.device):
    return _family.backend("rbf", device, _Cpp, _Reference)


def _run_forward(x, centers, diag, tril, sigma, kind, shape, need_act, need_r2=True):
    """(act, r2) in x's dtype; act None unless need_act. need_r2=False (with need_act) lets a backend
    skip writing r2 (the C++ one keeps it per block of rows): r2 may then come back None."""
    impl = _impl(x.device)
    act, r2 = impl.forward(*_family.prepare(impl, x, centers, diag, tril, sigma), kind, shape, need_act, need_r2)
    return tuple(None if t is None else _family.as_dtype(t, x.dtype) for t in (act, r2))


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------


def _rbf_r2_fake(x, centers, diag, tril):
    return x.new_empty(x.shape[0], centers.shape[0])


@_family.device_op("rbf_r2", fake=_rbf_r2_fake)
def _rbf_r2_op(x: Tensor, centers: Tensor, diag: Optional[Tensor], tril: Optional[Tensor]) -> Tensor:
    sigma = x.new_ones(centers.shape[0])
    return _run_forward(x, centers, diag, tril, sigma, "none", 0.0, False)[1]


def _rbf_fake(x, centers, diag, tril, sigma, kind, shape):
    n, c = x.shape[0], centers.shape[0]
    return x.new_empty(n, c), x.new_empty(n, c)


@_family.device_op("rbf", fake=_rbf_fake)
def _rbf_op(
    x: Tensor, centers: Tensor, diag: Optional[Tensor], tril: Optional[Tensor], sigma: Tensor,
    kind: str, shape: float,
) -> tuple[Tensor, Tensor]:
    return _run_forward(x, centers, diag, tril, sigma, kind, shape, True)


def _rbf_bwd_fake(grad_act, grad_r2, x, centers, diag, tril, sigma, r2, kind, shape, needs):
    out = []
    for need, like in zip(needs, (x, centers, diag, tril, sigma)):
        out.append(torch.empty_like(like) if need and like is not None else x.new_empty(0))
    return tuple(out)


@_family.device_op("rbf_bwd", fake=_rbf_bwd_fake)
def _rbf_bwd_op(
    grad_act: Optional[Tensor], grad_r2: Optional[Tensor], x: Tensor, centers: Tensor,
    diag: Optional[Tensor], tril: Optional[Tensor], sigma: Tensor, r2: Tensor, kind: str,
    shape: float, needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, centers, diag, tril, sigma); an input not needed gets an empty tensor."""
    impl = _impl(x.device)
    ts = _family.prepare(impl, grad_act, grad_r2, x, centers, diag, tril, sigma, r2)
    grads = impl.backward(*ts, kind, shape, tuple(needs))
    # gradients in x's dtype (sigma and the metric share it), empty where not computed, each in the
    # layout of its input's empty_like (the fake's)
    grads = _family.grads_or_empty(grads, (x,) * 5, [g is not None for g in grads])
    return tuple(g if t is None else _family.strided_like(g, t) for g, t in zip(grads, (x, centers, diag, tril, sigma)))


def _grads_or_none(grads, needs):
    return tuple(g if n else None for g, n in zip(grads, needs))


def _setup_r2(ctx, inputs, output):
    x, centers, diag, tril = inputs
    ctx.save_for_backward(x, centers, diag, tril, output)


def _backward_r2(ctx, grad_r2):
    x, centers, diag, tril, r2 = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:4]) + [False]
    sigma = torch.ones(centers.shape[0], dtype=x.dtype, device=x.device)  # not batched under vmap
    grads = _eager.call(_rbf_bwd_op, None, grad_r2, x, centers, diag, tril, sigma, r2, "none", 0.0, needs)
    return _grads_or_none(grads[:4], needs[:4])


def _setup_rbf(ctx, inputs, output):
    x, centers, diag, tril, sigma, kind, shape = inputs
    ctx.kind, ctx.shape = kind, shape
    # r2 is often not used (rbf() returns act alone): its gradient stays None, not an (N, C) zeros
    # tensor the backward kernel would read
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, centers, diag, tril, sigma, output[1])


def _backward_rbf(ctx, grad_act, grad_r2):
    x, centers, diag, tril, sigma, r2 = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    grads = _eager.call(_rbf_bwd_op, grad_act, grad_r2, x, centers, diag, tril, sigma, r2, ctx.kind, ctx.shape, needs)
    return _grads_or_none(grads, needs) + (None, None)


def _rbf_act(x, centers, diag, tril, sigma, kind, shape):
    # the op's act alone (outside autograd): no (N, C) r2 to allocate and write
    return _run_forward(x, centers, diag, tril, sigma, kind, shape, need_act=True, need_r2=False)[0]


_eager.register_part(_rbf_op, _rbf_act)
_eager.register_autograd(_rbf_r2_op, _backward_r2, _setup_r2)
_eager.register_autograd(_rbf_op, _backward_rbf, _setup_rbf)
_family.reference_double_backward(_rbf_bwd_op)
# rows: x (and in the backward grad_act, grad_r2, r2); a fold only when no shared gradient is asked for
_vmap.register_rows(_rbf_r2_op, rows=(0,), row_outputs=(0,))
_vmap.register_rows(_rbf_op, rows=(0,), row_outputs=(0, 1))
_vmap.register_rows(_rbf_bwd_op, rows=(0, 1, 2, 7), row_outputs=(0,), may_fold=lambda args: not any(args[10][1:]))


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def _check_common(x, centers, diag, tril, read_values=True):
    _checks.tensor("x", x, 2)
    _checks.tensor("centers", centers, 2)
    n, d = x.shape
    c, dc = centers.shape
    if dc != d:
        raise ValueError(f"centers must have shape (C, {d}) to match x of shape {tuple(x.shape)}, got {tuple(centers.shape)}")
    if diag is not None and tril is not None:
        raise ValueError("pass at most one of diag and tril, got both")
    if diag is not None:
        _checks.tensor("diag", diag, (1, 2))
        _checks.shape_in("diag", diag, [(c, d), (d,)])
        if read_values:
            _checks.values("diag", diag, nonnegative=True)
    if tril is not None:
        _checks.tensor("tril", tril, (2, 3))
        _checks.shape_in("tril", tril, [(c, d, d), (d, d)])
        if read_values:
            _checks.values("tril", tril)
    _checks.same_device_dtype("x", x, centers=centers, diag=diag, tril=tril)
    return c


_SIGMA_FREE_KINDS = ("linear", "thin_plate")


def _check_sigma_range(s: float, dtype: torch.dtype, kind: str) -> None:
    """A float sigma must be stored in x's dtype (finite, non-zero) and, for the kinds that use it,
    sigma**2 must be a normal finite number in the compute dtype (float64 for float64 inputs, else
    float32): the kernels divide by sigma**2, which must neither overflow nor underflow to 0."""
    fi = torch.finfo(dtype)
    if not fi.tiny <= s <= fi.max:
        raise ValueError(f"sigma must be representable in the dtype of x ({dtype}: "
                         f"{fi.tiny:g} <= sigma <= {fi.max:g}), got {s!r}")
    if kind in _SIGMA_FREE_KINDS:
        return
    cf = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32)
    lo, hi = math.sqrt(cf.tiny), math.sqrt(cf.max)
    if not lo <= s <= hi:
        raise ValueError(f"sigma**2 must be finite and non-zero in the compute dtype "
                         f"({cf.dtype}: {lo:g} <= sigma <= {hi:g}), got sigma={s!r}")


@_fx.traceable
def rbf_r2(x: Tensor, centers: Tensor, *, diag: Tensor | None = None, tril: Tensor | None = None) -> Tensor:
    """Squared Mahalanobis distances r2[n, j] = (x_n - c_j)^T R_j (x_n - c_j) (eq. 1), shape (N, C).

    Args:
        x: (N, D) inputs.
        centers: (C, D) centres.
        diag: optional (C, D) per-centre or (D,) shared non-negative weights, R_j = diag(w_j).
        tril: optional (C, D, D) per-centre or (D, D) shared factor L_j (only its lower triangle is
            read), R_j = L_j L_j^T: r2 = ||(x_n - c_j) L_j||^2, positive semi-definite by construction.
            At most one of ``diag`` and ``tril``; neither means Euclidean.

    Differentiable in every tensor argument; computed in the difference form (no cancellation).
    """
    _check_common(x, centers, diag, tril)
    return _eager.call(_rbf_r2_op, x, centers, diag, tril)


@_fx.traceable
def layer_rbf_r2(x: Tensor, centers: Tensor, diag: Tensor | None, tril: Tensor | None) -> Tensor:
    """:func:`rbf_r2` for a layer whose metric comes from its own parametrisation (see
    :func:`layer_rbf`): every check but the read of the metric's values."""
    _check_common(x, centers, diag, tril, read_values=False)
    return _eager.call(_rbf_r2_op, x, centers, diag, tril)


@_fx.traceable
def rbf(
    x: Tensor,
    centers: Tensor,
    *,
    diag: Tensor | None = None,
    tril: Tensor | None = None,
    sigma: float | Tensor = 1.0,
    kind: str = "gaussian",
    shape: float = 0.5,
    return_r2: bool = False,
):
    """RBF activations h(r2) of the Mahalanobis distance to each centre (eq. 1 with eq. 3-9, 15).

    Args:
        x, centers, diag, tril: as in :func:`rbf_r2`.
        sigma: width, a positive float or a tensor of shape () or (C,) (differentiable).
        kind: one of ``linear`` r, ``gaussian`` exp(-r2/(2 s^2)), ``thin_plate`` 0.5 r2 ln r2,
            ``logistic`` 1/(1+exp((r2-a^2)/s^2)), ``inverse_multiquadric`` (r2+s^2)^-a,
            ``multiquadric`` (r2+s^2)^a, ``inverse_quadratic`` 1/(1+r2/s^2), ``quadratic`` 1-r2/s^2.
        shape: the parameter a of logistic (r0) and the (inverse) multiquadric exponent.
        return_r2: also return r2.

    Returns:
        (N, C) activations, or ``(act, r2)`` with ``return_r2=True``.
    """
    return _rbf(x, centers, diag, tril, sigma, kind, shape, return_r2, True)


@_fx.traceable
def layer_rbf(x: Tensor, centers: Tensor, diag: Tensor | None, tril: Tensor | None, sigma: Tensor, kind: str,
              shape: float, return_r2: bool = True):
    """``rbf(..., return_r2=return_r2)`` for a layer whose metric and sigma come from its own
    parametrisation (softplus, exp; ``rbfkern.nn.RBF``): their signs hold by construction, so their
    values are not read (two reductions and, on a GPU, two host syncs per forward). Shapes, dtypes,
    devices and the arguments are checked as in :func:`rbf`; non-finite parameters give non-finite
    outputs, as in torch's own layers."""
    return _rbf(x, centers, diag, tril, sigma, kind, shape, return_r2, False)


def _rbf(x, centers, diag, tril, sigma, kind, shape, return_r2, read_values):
    c = _check_common(x, centers, diag, tril, read_values)
    _checks.choice("kind", kind, KINDS)
    shape = _checks.finite_float("shape", shape, positive=kind in ("inverse_multiquadric", "multiquadric"))
    if isinstance(sigma, Tensor):
        _checks.tensor("sigma", sigma, (0, 1))
        if sigma.dim() == 1:
            _checks.shape_in("sigma", sigma, [(c,), (1,)])
        _checks.same_device_dtype("x", x, sigma=sigma)
        if read_values:
            _checks.values("sigma", sigma, positive=True)
        # a (C,) sigma goes in as it is: a reshape and an expand would add two autograd nodes
        sigma_c = sigma if sigma.dim() == 1 and sigma.shape[0] == c else sigma.reshape(-1).expand(c)
    else:
        s = _checks.finite_float("sigma", sigma, positive=True)
        if not torch.compiler.is_compiling():
            _check_sigma_range(s, x.dtype, kind)
        sigma_c = torch.full((c,), s, dtype=x.dtype, device=x.device)  # not batched under vmap
    args = (x, centers, diag, tril, sigma_c, kind, shape)
    return _eager.call(_rbf_op, *args) if return_r2 else _eager.call_first(_rbf_op, *args)
