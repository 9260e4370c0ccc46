"""B-cos layers (paper: bcos-networks.md, eq. 3, 9-11, 17, Sec. 3.3 and 4).

``BcosConv2d`` / ``BcosLinear`` compute exactly what ``bcos.modules.BcosConv2d`` /
``BcosLinear`` (bcos 0.1.3) compute and load their state dicts (``linear.weight``), but hold the
raw weight directly in ``.weight`` and run the fused ``rbfkern.ops.bcos_*`` ops.
``convert_to_bcos`` turns a conventional CNN into a B-cos network (Sec. 3.3), ``AddInverse`` is
the [x, 1 - x] image encoding of Sec. 4.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import operator

import torch
from torch import Tensor, nn

from .. import ops
from ..ops import _checks
from ..ops.bcos import _pair as _check_pair


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _positive_int(name: str, v) -> int:
    try:
        if isinstance(v, bool):
            raise TypeError
        v = operator.index(v)  # ints and int-likes (numpy integers)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def _check_b_max_out(b, max_out) -> float:
    """b: finite and > 0 (as the ops; the paper uses B >= 1, B < 1 is still a well-defined transform)."""
    if isinstance(b, numbers.Real) and not isinstance(b, bool):
        b = float(b)  # numpy floats too
    b = _checks.finite_float("b", b, positive=True)
    if isinstance(max_out, bool) or not isinstance(max_out, int) or not 1 <= max_out <= 255:
        raise ValueError(f"max_out must be an int in [1, 255], got {max_out!r}")
    return b


class _Explainable(nn.Module):
    """Explanation mode: the dynamic scale |cos|^(B-1) is a constant in backward, so input
    gradients are rows of the dynamic linear map W(x) (eq. 11-13)."""

    def __init__(self):
        super().__init__()
        self.explain = False

    def set_explanation_mode(self, activate: bool = True) -> None:
        """Turn explanation mode on or off for this module and every explainable submodule."""
        for m in self.modules():
            if isinstance(m, _Explainable):
                m.explain = bool(activate)

    @property
    def is_in_explanation_mode(self) -> bool:
        return self.explain

    def explanation_mode(self):
        """Context manager: explanation mode on inside, the previous modes restored after."""
        return explanation_mode(self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The official modules keep the raw weight in a NormedConv2d / NormedLinear: linear.weight.
        old = prefix + "linear.weight"
        if old in state_dict and prefix + "weight" not in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@contextlib.contextmanager
def explanation_mode(model: nn.Module):
    """Context manager: every rbfkern B-cos module in ``model`` (and any module with a
    ``set_explanation_mode`` such as the official ones) is in explanation mode inside."""
    saved = []
    for m in model.modules():
        if isinstance(m, _Explainable):
            saved.append((m, "explain", m.explain))
            m.explain = True
        elif hasattr(m, "set_explanation_mode") and hasattr(m, "detach") and isinstance(m.detach, bool):
            saved.append((m, "detach", m.detach))
            m.detach = True
    try:
        yield model
    finally:
        for m, attr, v in saved:
            setattr(m, attr, v)


class BcosConv2d(_Explainable):
    """B-cos convolution: ``rbfkern.ops.bcos_conv2d`` with a learnable raw weight.

    Args:
        in_channels, out_channels, kernel_size, stride, padding (zeros), dilation, groups: as
            ``nn.Conv2d`` (no bias).
        b: the exponent B of eq. (3).
        max_out: MaxOut units per output channel (eq. 17); ``weight`` holds
            ``out_channels * max_out`` filters of shape (in_channels / groups, kh, kw).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 groups: int = 1, b: float = 2.0, max_out: int = 1, device=None, dtype=None):
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        out_channels = _positive_int("out_channels", out_channels)
        groups = _positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        b = _check_b_max_out(b, max_out)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = tuple(_check_pair("kernel_size", kernel_size, 1))
        self.stride = tuple(_check_pair("stride", stride, 1))
        self.padding = tuple(_check_pair("padding", padding, 0))
        self.dilation = tuple(_check_pair("dilation", dilation, 1))
        self.groups, self.b, self.max_out = groups, b, max_out
        self.weight = nn.Parameter(torch.empty(out_channels * max_out, in_channels // groups, *self.kernel_size,
                                               device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Conv2d

    def forward(self, x: Tensor) -> Tensor:
        return ops.bcos_conv2d(x, self.weight, b=self.b, max_out=self.max_out, stride=self.stride,
                               padding=self.padding, dilation=self.dilation, groups=self.groups,
                               explain=self.explain)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, B={self.b}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.max_out > 1:
            s += f", max_out={self.max_out}"
        return s


class BcosLinear(_Explainable):
    """B-cos linear layer: ``rbfkern.ops.bcos_linear`` with a learnable raw weight
    of shape (out_features * max_out, in_features); no bias."""

    def __init__(self, in_features: int, out_features: int, b: float = 2.0, max_out: int = 1, device=None,
                 dtype=None):
        super().__init__()
        in_features = _positive_int("in_features", in_features)
        out_features = _positive_int("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.b, self.max_out = _check_b_max_out(b, max_out), max_out
        self.weight = nn.Parameter(torch.empty(out_features * max_out, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        return ops.bcos_linear(x, self.weight, b=self.b, max_out=self.max_out, explain=self.explain)

    def extra_repr(self) -> str:
        s = f"{self.in_features}, {self.out_features}, B={self.b}"
        return s + (f", max_out={self.max_out}" if self.max_out > 1 else "")


class AddInverse(nn.Module):
    """The image encoding of Sec. 4: [x, 1 - x] along ``dim`` (channels), so (N, 3, H, W) RGB in
    [0, 1] becomes (N, 6, H, W) [r, g, b, 1-r, 1-g, 1-b]."""

    def __init__(self, dim: int = -3):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, 1 - x], dim=self.dim)


_REMOVED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid,
            nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)


def convert_to_bcos(model: nn.Module, b: float = 2.0, max_out: int = 2) -> nn.Module:
    """Turn a conventional network into a B-cos network in place (Sec. 3.3) and return it.

    - every ``nn.Conv2d`` becomes a :class:`BcosConv2d` of the same geometry (bias dropped,
      zero padding only) and every ``nn.Linear`` a :class:`BcosLinear`, with ``max_out`` MaxOut
      units (2 in the paper) and exponent ``b``; weights are freshly initialised (a B-cos filter
      with MaxOut has a different shape and meaning, so the old weights do not carry over);
    - non-linearities (ReLU and friends), batch norm and dropout are removed (``nn.Identity``);
    - max pooling is removed too; where a pooling layer changes the spatial size it becomes the
      average pooling of the same window (a linear map, so the model is still summarised exactly
      by W(x), eq. 13, and every later layer keeps its input shape); ``AdaptiveMaxPool2d``
      becomes ``AdaptiveAvgPool2d``.
    """
    for name, child in list(model.named_children()):
        new = None
        if isinstance(child, nn.Conv2d):
            if child.padding_mode != "zeros" or isinstance(child.padding, str):
                raise ValueError(f"convert_to_bcos: {name} uses padding {child.padding!r} / mode "
                                 f"{child.padding_mode!r}; only explicit zero padding is supported")
            new = BcosConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                             child.dilation, child.groups, b=b, max_out=max_out,
                             device=child.weight.device, dtype=child.weight.dtype)
        elif isinstance(child, nn.Linear):
            new = BcosLinear(child.in_features, child.out_features, b=b, max_out=max_out,
                             device=child.weight.device, dtype=child.weight.dtype)
        elif isinstance(child, _REMOVED):
            new = nn.Identity()
        elif isinstance(child, nn.MaxPool2d):
            k, s, p = _pair(child.kernel_size), _pair(child.stride or child.kernel_size), _pair(child.padding)
            if k == (1, 1) and s == (1, 1) and p == (0, 0):
                new = nn.Identity()
            else:
                if _pair(child.dilation) != (1, 1):
                    raise ValueError(f"convert_to_bcos: {name} is a dilated MaxPool2d, which has no average equivalent")
                new = nn.AvgPool2d(k, s, p, ceil_mode=child.ceil_mode)
        elif isinstance(child, nn.AdaptiveMaxPool2d):
            new = nn.AdaptiveAvgPool2d(child.output_size)
        if new is not None:
            setattr(model, name, new)
        else:
            convert_to_bcos(child, b=b, max_out=max_out)
    return model
