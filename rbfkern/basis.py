"""Gaussian-derivative (Hermite) kernels: the basis of the structured receptive fields.

Paper: structured-receptive-fields-thesis.txt, ch. 3, eq. 20 (G_m = Hermite polynomial times a
Gaussian envelope) and eq. 23 (a filter is a linear combination of basis functions).

1D kernels, sampled at the integer offsets u = -r..r with r = int(truncate * s + 0.5):

    g_m(u; s) = (-1/s)^m He_m(u/s) exp(-u^2 / (2 s^2)) / sum_{|k|<=r} exp(-k^2 / (2 s^2))

He_m the probabilists' Hermite polynomials. These are exactly the samples
``scipy.ndimage.gaussian_filter1d`` convolves with (the discrete normalisation included), so
filtering with g_m is the m-th scale-space derivative. ``scale_normalized=True`` multiplies g_m by
s^m. The 2D basis is phi_{p,q}(v, u) = g_q(v) g_p(u): p derivatives along x (the last dim), q along
y (dim -2); its members are listed by :func:`derivative_orders`, the one source of that order.

Several scales at once: ``sigma`` is a float or a (S,) tensor; all kernels are returned on the
common support of the largest radius R (taps outside a scale's own radius are zero), shape
(S, order + 1, 2R + 1), tap index R + u. Everything here is plain torch, differentiable in sigma;
:func:`gauss_kernels_1d_dsigma` gives d g_m / d s in closed form for the fused backward kernels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

MAX_ORDER = 4
# Largest kernel side 2R+1 accepted by the ops: beyond it a call would rather be a mistake
# (sigma in the wrong units) than a filter anyone wants, and its buffers could exhaust memory.
MAX_KERNEL_SIZE = 513


def derivative_orders(order: int) -> list[tuple[int, int]]:
    """The 2D basis members (p, q), p + q <= order, by total degree, then p descending.

    order 0..4 -> 1, 3, 6, 10, 15 members: [(0,0)], [(0,0),(1,0),(0,1)], [..., (2,0),(1,1),(0,2)], ...
    """
    _check_order(order)
    return [(n - q, q) for n in range(order + 1) for q in range(n + 1)]


def derivative_orders_3d(order: int) -> list[tuple[int, int, int]]:
    """The 3D basis members (p, q, t): p along x (dim -1), q along y (dim -2), t along z (dim -3),
    p + q + t <= order, by total degree then lexicographically descending in (p, q)."""
    _check_order(order)
    out = []
    for n in range(order + 1):
        for t in range(n + 1):
            for q in range(n - t + 1):
                out.append((n - t - q, q, t))
    # by total degree, then p descending, then q descending
    out.sort(key=lambda m: (sum(m), -m[0], -m[1]))
    return out


def num_basis(order: int, ndim: int = 2) -> int:
    """Number of basis members: (order+1)(order+2)/2 in 2D, (order+1)(order+2)(order+3)/6 in 3D."""
    _check_order(order)
    if ndim == 2:
        return (order + 1) * (order + 2) // 2
    if ndim == 3:
        return (order + 1) * (order + 2) * (order + 3) // 6
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def radius(sigma: float, truncate: float = 4.0) -> int:
    """Kernel radius r = int(truncate * sigma + 0.5) (scipy.ndimage's rule)."""
    return int(float(truncate) * float(sigma) + 0.5)


def radii(sigma, truncate: float = 4.0) -> list[int]:
    """Per-scale radii of a float, a sequence or a (S,) tensor of scales (reads tensor values)."""
    return [radius(s, truncate) for s in _as_list(sigma)]


def hermite(m: int, t: Tensor) -> Tensor:
    """Probabilists' Hermite polynomial He_m(t): He_0 = 1, He_1 = t, He_{k+1} = t He_k - k He_{k-1}."""
    h0, h1 = torch.ones_like(t), t
    if m == 0:
        return h0
    for k in range(1, m):
        h0, h1 = h1, t * h1 - k * h0
    return h1


def _as_list(sigma) -> list[float]:
    if isinstance(sigma, Tensor):
        return [float(v) for v in sigma.detach().reshape(-1).tolist()]
    if isinstance(sigma, (int, float)):
        return [float(sigma)]
    return [float(v) for v in sigma]


def _as_tensor(sigma, dtype=None) -> Tensor:
    if isinstance(sigma, Tensor):
        return sigma.reshape(-1)
    return torch.tensor(_as_list(sigma), dtype=dtype or torch.float64)


def _check_order(order: int) -> None:
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int, got {type(order).__name__}")
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be in 0..{MAX_ORDER}, got {order}")


def _support(sigma: Tensor, truncate: float, rads: Sequence[int] | None):
    """Offsets u (K,), the common radius R and the (S, K) in-support mask."""
    if rads is None:
        rads = radii(sigma, truncate)
    rads = [int(r) for r in rads]
    if len(rads) != sigma.numel():
        raise ValueError(f"radii must have one entry per scale ({sigma.numel()}), got {len(rads)}")
    big = max(rads) if rads else 0
    u = torch.arange(-big, big + 1, dtype=sigma.dtype, device=sigma.device)
    # one comparison per scale with its Python radius: no host-to-device copy of the radii (a
    # host sync, not allowed while a CUDA graph captures)
    mask = torch.stack([u.abs() <= r for r in rads]).to(sigma.dtype) if rads else u.new_zeros(0, u.numel())
    return u, big, mask


def _normalized_gaussian(s: Tensor, order: int, truncate: float, radii):
    """(u, s[:, None], t = u/s, phi = e/Z) of the 1D kernels at scales s: the taps u (K,), the
    normalised Gaussian phi (S, K) that each derivative kernel multiplies."""
    _check_order(order)
    u, _, mask = _support(s, truncate, radii)
    sc = s[:, None]
    t = u[None, :] / sc
    e = torch.exp(-0.5 * t ** 2) * mask  # (S, K)
    return u, sc, t, e / e.sum(-1, keepdim=True)


def _hermite_factors(order: int, t: Tensor, sc: Tensor):
    """(m, He_m(t), c_m = (-1/s)^m He_m(t)) for m = 0..order: g_m = c_m phi."""
    for m in range(order + 1):
        he = hermite(m, t)
        yield m, he, he * (-1.0 / sc) ** m


def gauss_kernels_1d(
    sigma,
    order: int,
    truncate: float = 4.0,
    radii: Sequence[int] | None = None,
    scale_normalized: bool = False,
) -> Tensor:
    """The 1D kernels g_m(u; s) for m = 0..order, shape (S, order+1, 2R+1), tap index R + u.

    Args:
        sigma: float, sequence or (S,) tensor of positive scales (a tensor keeps its dtype, device
            and autograd graph; floats give float64).
        order: highest derivative order, 0..4.
        truncate: the radius of scale s is int(truncate * s + 0.5) unless ``radii`` is given.
        radii: per-scale radii (to avoid reading a tensor's values, e.g. while tracing).
        scale_normalized: multiply g_m by s^m.
    """
    u, sc, t, phi = _normalized_gaussian(_as_tensor(sigma), order, truncate, radii)
    rows = [(c * sc ** m if scale_normalized else c) * phi for m, _, c in _hermite_factors(order, t, sc)]
    return torch.stack(rows, 1)


def gauss_kernels_1d_dsigma(
    sigma,
    order: int,
    truncate: float = 4.0,
    radii: Sequence[int] | None = None,
    scale_normalized: bool = False,
) -> Tensor:
    """d g_m(u; s) / d s in closed form, same shape as :func:`gauss_kernels_1d` (radii held fixed).

    With t = u/s, phi = e/Z, e = exp(-t^2/2), Z = sum_k e(k), c_m = (-1/s)^m He_m(t):
      d c_m/ds = (-1)^m s^(-m-1) (-m He_m(t) - m t He_{m-1}(t))   (He_m' = m He_{m-1})
      d phi/ds = phi (u^2 - <k^2>) / s^3,   <k^2> = sum_k phi(k) k^2
    and scale normalisation adds m s^(m-1) g_m.
    """
    u, sc, t, phi = _normalized_gaussian(_as_tensor(sigma).detach(), order, truncate, radii)
    k2 = (phi * u[None, :] ** 2).sum(-1, keepdim=True)
    dphi = phi * (u[None, :] ** 2 - k2) / sc ** 3
    rows = []
    for m, he, c in _hermite_factors(order, t, sc):
        dc = torch.zeros_like(t) if m == 0 else (-1.0) ** m * sc ** (-m - 1) * (-m * he - m * t * hermite(m - 1, t))
        dg = dc * phi + c * dphi
        if scale_normalized:
            dg = m * sc ** (m - 1) * (c * phi) + sc ** m * dg if m > 0 else dg
        rows.append(dg)
    return torch.stack(rows, 1)


def basis_2d(
    sigma,
    order: int,
    truncate: float = 4.0,
    radii: Sequence[int] | None = None,
    scale_normalized: bool = False,
) -> Tensor:
    """phi_{p,q}(v, u) = g_q(v) g_p(u) for (p, q) in :func:`derivative_orders`, shape
    (S, M, 2R+1, 2R+1), index [s, b, R + v, R + u] (convolution orientation: the filter applied
    as out(y, x) = sum phi(v, u) in(y - v, x - u))."""
    g = gauss_kernels_1d(sigma, order, truncate, radii, scale_normalized)
    pq = derivative_orders(order)
    return torch.stack([g[:, q, :, None] * g[:, p, None, :] for p, q in pq], 1)


def basis_3d(
    sigma,
    order: int,
    truncate: float = 4.0,
    radii: Sequence[int] | None = None,
    scale_normalized: bool = False,
) -> Tensor:
    """phi_{p,q,t}(w, v, u) = g_t(w) g_q(v) g_p(u), shape (S, M3, K, K, K) (see :func:`basis_2d`)."""
    g = gauss_kernels_1d(sigma, order, truncate, radii, scale_normalized)
    pqt = derivative_orders_3d(order)
    return torch.stack([g[:, t, :, None, None] * g[:, q, None, :, None] * g[:, p, None, None, :] for p, q, t in pqt], 1)


def steering_matrix(order: int, theta: float, dtype=torch.float64) -> Tensor:
    """(M, M) matrix T with phi_b(R_theta^-1 z) = sum_c T[b, c] phi_c(z) for the 2D basis.

    The derivative of degree n = p + q along rotated axes is a polynomial in directional
    derivatives: with x' = x cos(t) + y sin(t), y' = -x sin(t) + y cos(t) (axes rotated by t),
    d/dx' = c d/dx + s d/dy and d/dy' = -s d/dx + c d/dy, so
    d^p/dx'^p d^q/dy'^q = (c Dx + s Dy)^p (-s Dx + c Dy)^q expands into degree-n terms (thesis ch. 3
    eq. 22 for Gxx and Gxxx; this is the same expansion for every (p, q)). Rotating a filter mixes
    members of one degree only, so T is block diagonal.
    """
    pq = derivative_orders(order)
    index = {m: i for i, m in enumerate(pq)}
    c, s = math.cos(theta), math.sin(theta)
    T = torch.zeros(len(pq), len(pq), dtype=dtype)
    for b, (p, q) in enumerate(pq):
        # polynomial in (Dx, Dy) as {(a, b): coeff}
        poly = {(0, 0): 1.0}
        for factor in [(c, s)] * p + [(-s, c)] * q:
            new: dict = {}
            for (ax, ay), v in poly.items():
                new[(ax + 1, ay)] = new.get((ax + 1, ay), 0.0) + v * factor[0]
                new[(ax, ay + 1)] = new.get((ax, ay + 1), 0.0) + v * factor[1]
            poly = new
        for m, v in poly.items():
            T[b, index[m]] += v
    return T
