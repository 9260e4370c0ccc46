"""What every B-cos backend shares: the geometry of one call and the unit-weight algebra.

A linear layer is the convolution with H = W = Ho = Wo = 1 and a 1x1 window (x [R, C]), so one
geometry type serves both; the C++ bindings take it as the list of 17 ints of ``as_list``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from . import reference

# (eps inside the sqrt, eps after it) of the input norm: conv patches / linear rows, as bcos does.
EPS = {False: (1e-6, 0.0), True: (0.0, 1e-12)}  # keyed by BcosGeometry.linear


def out_hw(H, W, kh, kw, stride, padding, dilation):
    ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


@dataclasses.dataclass(unsafe_hash=True)
class BcosGeometry:
    """Sizes of one B-cos call: batch N (rows R for linear), input channels C, H x W, groups G,
    outputs O with M MaxOut units each, Ho x Wo outputs, the kh x kw window, stride (sh, sw),
    padding (ph, pw), dilation (dh, dw). Treated as immutable (``with_batch`` makes a new one);
    not a frozen dataclass, whose __init__ takes four times as long, and every op call makes one."""

    N: int
    C: int
    H: int
    W: int
    G: int
    O: int
    M: int
    Ho: int
    Wo: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    linear: bool = False

    @classmethod
    def of_conv(cls, x: Tensor, weight: Tensor, max_out, stride, padding, dilation, groups) -> "BcosGeometry":
        N, C, H, W = x.shape
        kh, kw = weight.shape[-2:]
        ho, wo = out_hw(H, W, kh, kw, stride, padding, dilation)
        return cls(N, C, H, W, groups, weight.shape[0] // max_out, max_out, ho, wo, kh, kw,
                   *stride, *padding, *dilation)

    @classmethod
    def of_linear(cls, x: Tensor, weight: Tensor, max_out) -> "BcosGeometry":
        return cls(x.shape[0], x.shape[1], 1, 1, 1, weight.shape[0] // max_out, max_out, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1,
                   linear=True)

    @property
    def P(self):
        """Output pixels per image."""
        return self.Ho * self.Wo

    @property
    def Cg(self):
        return self.C // self.G

    @property
    def Og(self):
        return self.O // self.G

    @property
    def K(self):
        """The reduction length of one output: C/G * kh * kw."""
        return self.Cg * self.kh * self.kw

    @property
    def stride(self):
        return [self.sh, self.sw]

    @property
    def padding(self):
        return [self.ph, self.pw]

    @property
    def dilation(self):
        return [self.dh, self.dw]

    @property
    def eps(self):
        return EPS[self.linear]

    @property
    def y_shape(self):
        """y / lmax / idx: (N, O, Ho, Wo), or (R, O) for linear."""
        return (self.N, self.O) if self.linear else (self.N, self.O, self.Ho, self.Wo)

    @property
    def root_shape(self):
        """The patch-norm root: (N, G, Ho, Wo), or (R, 1) for linear."""
        return (self.N, 1) if self.linear else (self.N, self.G, self.Ho, self.Wo)

    @property
    def raw_shape(self):
        """The raw map l = x * W-hat before MaxOut: (N, O*M, Ho, Wo) or (R, O*M)."""
        return (self.N, self.O * self.M) if self.linear else (self.N, self.O * self.M, self.Ho, self.Wo)

    def with_batch(self, n: int) -> "BcosGeometry":
        # self where n is the batch already (one chunk): dataclasses.replace costs microseconds
        return self if n == self.N else dataclasses.replace(self, N=n)

    def as_list(self) -> list:
        """The 17 sizes in the order of the C++ bindings (csrc/cpu/bcos_bind.cpp)."""
        return [self.N, self.C, self.H, self.W, self.G, self.O, self.M, self.Ho, self.Wo, self.kh, self.kw,
                self.sh, self.sw, self.ph, self.pw, self.dh, self.dw]


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-D tensor is stored channels-last (NHWC) rather than contiguous; a tensor that is
    both (C == 1, or H = W = 1) counts as contiguous. The op's outputs follow this, as conv2d's do."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def weight_norm(weight: Tensor) -> Tensor:
    """||W_row|| (no eps, as bcos), one per filter, shaped to broadcast against the weight."""
    dims = tuple(range(1, weight.dim()))
    return torch.linalg.vector_norm(weight, dim=dims, keepdim=True)


unit_weight = reference.bcos_unit_weight  # W-hat = W / ||W_row||


def unit_weight_backward(weight: Tensor, w_hat: Tensor, g_w_hat: Tensor) -> Tensor:
    """d/dW of W / ||W||_row given d/dW-hat: (g - W-hat <g, W-hat>) / ||W||."""
    dims = tuple(range(1, weight.dim()))
    return (g_w_hat - w_hat * (g_w_hat * w_hat).sum(dims, keepdim=True)) / weight_norm(weight)


def linear_map(geo: BcosGeometry, x: Tensor, w: Tensor, mm=torch.matmul) -> Tensor:
    """The raw map of x under the filters w (conv2d, or x w^T through ``mm`` for linear)."""
    if geo.linear:
        return mm(x, w.T)
    return torch.nn.functional.conv2d(x, w, None, geo.stride, geo.padding, geo.dilation, geo.G)


def linear_map_backward(geo: BcosGeometry, gl: Tensor, x: Tensor, w: Tensor, needs, mm=torch.matmul):
    """(gx, gw) of the raw map given its gradient gl, None where not needed."""
    if geo.linear:
        return (mm(gl, w) if needs[0] else None), (mm(gl.T, x) if needs[1] else None)
    gx, gw, _ = torch.ops.aten.convolution_backward(
        gl, x, w, None, geo.stride, geo.padding, geo.dilation, False, [0, 0], geo.G,
        [bool(needs[0]), bool(needs[1]), False])
    return gx, gw
