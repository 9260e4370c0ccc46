"""Structured-receptive-field layers: Gaussian-derivative basis convolutions (thesis ch. 3, 4).

``GaussDerivConv2d`` learns alpha, the weights of a fixed, steerable basis (eq. 23); its filters
are smooth by construction and can be inspected (``effective_weight``) and rotated analytically
(``steer``, eq. 22 of ch. 3 extended to every order). The thesis' RFNiN network and its unit
are in :mod:`rbfkern.nn.rfnin`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import basis, ops
from ..ops.gauss_deriv import check_order_truncate as _check_order_truncate
from ..ops.gauss_deriv import effective_weight as _effective_weight



class _GaussDerivBase(nn.Module):
    ndim = 2

    def __init__(self, in_channels: int, out_channels: int, order: int, sigmas: float | Sequence[float],
                 learn_sigma: bool, truncate: float, stride: int, padding, scale_normalized: bool,
                 device=None, dtype=None, max_sigma: float | None = None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        truncate = _check_order_truncate(order, truncate)
        sig = [float(sigmas)] if isinstance(sigmas, (int, float)) else [float(s) for s in sigmas]
        if not sig or any(not (s > 0 and math.isfinite(s)) for s in sig):
            raise ValueError(f"sigmas must be one or more finite positive scales, got {sigmas!r}")
        # Refuse kernels the op would refuse, now rather than at the first forward.
        widest = max(sig)
        if learn_sigma:  # a learnable sigma gets the support of max_sigma (checked below)
            widest = 1.5 * widest if max_sigma is None else max(widest, float(max_sigma))
            if not math.isfinite(widest):
                raise ValueError(f"max_sigma must be finite and >= the largest scale {max(sig)}, got {max_sigma!r}")
        taps = 2 * basis.radius(widest, truncate) + 1
        if taps > basis.MAX_KERNEL_SIZE:
            raise ValueError(f"sigmas={sigmas!r} at truncate={truncate:g} need {taps} taps per side, more than the "
                             f"bound {basis.MAX_KERNEL_SIZE}; use smaller scales or truncate")
        self.in_channels, self.out_channels, self.order = in_channels, out_channels, order
        self.truncate, self.stride, self.padding = float(truncate), stride, padding
        self.scale_normalized, self.learn_sigma = bool(scale_normalized), bool(learn_sigma)
        m = basis.num_basis(order, self.ndim)
        self._init_sigmas = tuple(sig)
        self.alpha = nn.Parameter(torch.empty(out_channels, in_channels, len(sig) * m, device=device, dtype=dtype))
        if learn_sigma:
            self.sigma = nn.Parameter(torch.empty(len(sig), device=device, dtype=dtype))
            # The kernel size is static, as nn.Conv2d's: every scale gets the support of max_sigma
            # (default 1.5x the largest initial scale), so the layer traces under torch.compile.
            self.max_sigma = float(max_sigma) if max_sigma is not None else 1.5 * max(sig)
            if not (self.max_sigma >= max(sig) and math.isfinite(self.max_sigma)):
                raise ValueError(f"max_sigma must be finite and >= the largest scale {max(sig)}, got {max_sigma!r}")
        else:
            # Fixed scales stay Python floats: the kernel radii are then static (torch.compile-friendly).
            self._sigmas = tuple(sig)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """alpha ~ N(0, 2 / fan_in) (He, fan_in = C_in x the basis size), a learned sigma back to
        the initial scales; what a module built on the meta device needs after ``to_empty``."""
        with torch.no_grad():
            self.alpha.normal_(0.0, math.sqrt(2.0 / (self.alpha.shape[1] * self.alpha.shape[2])))
            init = getattr(self, "_init_sigmas", None)  # absent from a layer pickled before it was kept
            if self.learn_sigma and init is not None:
                self.sigma.copy_(torch.tensor(init, dtype=self.sigma.dtype))

    @property
    def sigmas(self):
        return self.sigma if self.learn_sigma else self._sigmas

    @property
    def num_scales(self) -> int:
        return len(self.sigma) if self.learn_sigma else len(self._sigmas)

    def _kw(self):
        return dict(order=self.order, truncate=self.truncate, stride=self.stride, padding=self.padding,
                    scale_normalized=self.scale_normalized, max_sigma=self.max_sigma if self.learn_sigma else None)

    def effective_weight(self) -> Tensor:
        """The dense filters W = sum_b alpha_b phi_b, (C_out, C_in, K, K) (K, K, K in 3D), in the
        cross-correlation orientation of F.conv2d, so ``F.conv2d(x, W, padding=R)`` equals the
        layer (stride 1, same padding). W[..., R + v, R + u] is the filter's value at offset
        (-v, -u); ``W.flip(-1, -2)`` is the filter as a function on the grid."""
        s = self.sigma.detach() if self.learn_sigma else torch.tensor(self._sigmas, dtype=torch.float64)
        return _effective_weight(self.alpha.detach(), s, order=self.order, truncate=self.truncate,
                                 scale_normalized=self.scale_normalized, ndim=self.ndim,
                                 max_sigma=self.max_sigma if self.learn_sigma else None)

    def extra_repr(self) -> str:
        s = self.sigma.detach().tolist() if self.learn_sigma else list(self._sigmas)
        return (f"{self.in_channels}, {self.out_channels}, order={self.order}, sigmas={s}, "
                f"learn_sigma={self.learn_sigma}, stride={self.stride}, padding={self.padding!r}")


class GaussDerivConv2d(_GaussDerivBase):
    """Gaussian-derivative basis convolution, a drop-in for a KxK ``nn.Conv2d`` (no bias).

    Args:
        in_channels, out_channels: channel counts.
        order: highest derivative order 0..4 (M = 1, 3, 6, 10, 15 basis functions per scale).
        sigmas: one or more scales; ``learn_sigma=True`` makes them a parameter.
        truncate, stride, padding, scale_normalized: as in :func:`rbfkern.ops.gauss_deriv_conv2d`.
        max_sigma: with ``learn_sigma``, the bound that sizes the kernels (radius
            int(truncate * max_sigma + 0.5) for every scale; default 1.5x the largest initial
            scale): the kernel size stays fixed while sigma trains, so the layer runs under
            torch.compile(fullgraph=True); a scale growing past it raises in eager mode.

    Parameters: ``alpha`` (C_out, C_in, S*M), and ``sigma`` (S,) when learned.
    """

    ndim = 2

    def __init__(self, in_channels: int, out_channels: int, order: int = 3, sigmas=(1.0,),
                 learn_sigma: bool = False, truncate: float = 4.0, stride: int = 1, padding="same",
                 scale_normalized: bool = False, device=None, dtype=None, max_sigma: float | None = None):
        super().__init__(in_channels, out_channels, order, sigmas, learn_sigma, truncate, stride, padding,
                         scale_normalized, device, dtype, max_sigma)

    def forward(self, x: Tensor) -> Tensor:
        return ops.gauss_deriv_conv2d(x, self.alpha, self.sigmas, **self._kw())

    def steer(self, theta: float) -> Tensor:
        """alpha of the filters rotated by ``theta`` (radians): with the returned alpha' the filter
        F'(x, y) = F(x cos t - y sin t, x sin t + y cos t) (x = column, y = row offset), which is
        eq. 22 of ch. 3 (Gxx^t = cos^2 Gxx - 2 cos sin Gxy + sin^2 Gyy, ...) generalised to every
        (p, q). Filtering an image with F' equals filtering the image rotated by ``theta`` about the
        output point with F. Exact for the continuous basis; the sampled one is steerable up to
        its discretisation (small for sigma >= 1)."""
        t = basis.steering_matrix(self.order, -float(theta)).to(self.alpha)  # (M, M)
        co, ci = self.alpha.shape[:2]
        a = self.alpha.detach().reshape(co, ci, self.num_scales, -1)
        return torch.einsum("oisb,bc->oisc", a, t).reshape(self.alpha.shape)


class GaussDerivConv3d(_GaussDerivBase):
    """The 3D layer (the thesis' MRI network) on (N, C, D, H, W): basis g_t(z) g_q(y) g_p(x),
    p + q + t <= order. Parameters and arguments as :class:`GaussDerivConv2d`."""

    ndim = 3

    def __init__(self, in_channels: int, out_channels: int, order: int = 2, sigmas=(1.0,),
                 learn_sigma: bool = False, truncate: float = 4.0, stride: int = 1, padding="same",
                 scale_normalized: bool = False, device=None, dtype=None, max_sigma: float | None = None):
        super().__init__(in_channels, out_channels, order, sigmas, learn_sigma, truncate, stride, padding,
                         scale_normalized, device, dtype, max_sigma)

    def forward(self, x: Tensor) -> Tensor:
        return ops.gauss_deriv_conv3d(x, self.alpha, self.sigmas, **self._kw())


__all__ = ["GaussDerivConv2d", "GaussDerivConv3d"]

