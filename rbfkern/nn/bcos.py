"""B-cos layers (paper: bcos-networks.md, eq. 3, 9-11, 16, 17, Sec. 3.3 and 4).

``BcosConv2d`` / ``BcosLinear`` compute exactly what ``bcos.modules.BcosConv2d`` /
``BcosLinear`` (bcos 0.1.3) compute and load their state dicts (``linear.weight``), but hold the
raw weight directly in ``.weight`` and run the fused ``rbfkern.ops.bcos_*`` ops.
``convert_to_bcos`` turns a conventional CNN into a B-cos network (Sec. 3.3), ``AddInverse`` is
the [x, 1 - x] image encoding of Sec. 4, ``LogitLayer`` the logit temperature and bias of eq. 16.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import operator
import warnings

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


class LogitLayer(nn.Module):
    """The logits of eq. (16) as the official models make them (``bcos.modules.LogitLayer``):
    x / logit_temperature + logit_bias, each skipped when None. The official models use
    logit_bias = -log(C - 1) for C classes (a zero logit then has sigmoid probability 1 / C)."""

    def __init__(self, logit_temperature: float | None = None, logit_bias: float | None = None):
        super().__init__()
        for name, v in (("logit_temperature", logit_temperature), ("logit_bias", logit_bias)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
                raise ValueError(f"{name} must be None or a finite number, got {v!r}")
        if logit_temperature is not None and logit_temperature == 0:
            raise ValueError("logit_temperature must be non-zero (the logits are divided by it), got 0")
        self.logit_temperature, self.logit_bias = logit_temperature, logit_bias

    def forward(self, x: Tensor) -> Tensor:
        if self.logit_temperature is not None:
            x = x / self.logit_temperature
        if self.logit_bias is not None:
            x = x + self.logit_bias
        return x

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in ("logit_temperature", "logit_bias")
                         if getattr(self, k) is not None)


_REMOVED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardswish,
            nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU, nn.RReLU, nn.Tanh, nn.Sigmoid,
            nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_FUNCTIONAL_MODES = ("raise", "replace", "ignore")


def _bcos_replacement(name, child, b, max_out, widen):
    """The module that replaces ``child`` in a B-cos network, or None to look inside it."""
    if isinstance(child, nn.Conv2d):
        if child.padding_mode != "zeros" or isinstance(child.padding, str):
            raise ValueError(f"convert_to_bcos: {name} uses padding {child.padding!r} / mode "
                             f"{child.padding_mode!r}; only explicit zero padding is supported")
        c_in = child.in_channels
        if widen:
            if child.groups != 1:
                raise ValueError(f"convert_to_bcos: add_inverse widens the first convolution ({name}) to "
                                 f"2 x {c_in} input channels, which needs groups=1, got groups={child.groups}")
            c_in *= 2
        return BcosConv2d(c_in, child.out_channels, child.kernel_size, child.stride, child.padding,
                          child.dilation, child.groups, b=b, max_out=max_out,
                          device=child.weight.device, dtype=child.weight.dtype)
    if isinstance(child, nn.Linear):
        return BcosLinear(child.in_features, child.out_features, b=b, max_out=max_out,
                          device=child.weight.device, dtype=child.weight.dtype)
    if isinstance(child, _REMOVED):
        return nn.Identity()
    if isinstance(child, nn.MaxPool2d):
        k, s, p = _pair(child.kernel_size), _pair(child.stride or child.kernel_size), _pair(child.padding)
        if k == (1, 1) and s == (1, 1) and p == (0, 0):
            return nn.Identity()
        if _pair(child.dilation) != (1, 1) or child.return_indices:
            raise ValueError(f"convert_to_bcos: {name} is a dilated MaxPool2d or returns indices; it has no "
                             f"average equivalent")
        return nn.AvgPool2d(k, s, p, ceil_mode=child.ceil_mode)
    if isinstance(child, nn.AdaptiveMaxPool2d):
        if child.return_indices:
            raise ValueError(f"convert_to_bcos: {name} returns indices; it has no average equivalent")
        return nn.AdaptiveAvgPool2d(child.output_size)
    return None


def _plan_bcos(model, prefix, b, max_out, first_conv, edits):
    for name, child in model.named_children():
        path = prefix + name
        new = _bcos_replacement(path, child, b, max_out, child is first_conv)
        if new is not None:
            edits.append((model, name, new))
        elif not isinstance(child, (_Explainable, AddInverse, LogitLayer)):
            _plan_bcos(child, path + ".", b, max_out, first_conv, edits)


def _functional_graph(model, functional):
    """The fx graph of ``model`` with its functional calls rewritten (mode "replace"), None for
    "raise" (after checking there are none) and "ignore"; raises before the model is touched."""
    from . import _bcos_fx  # torch.fx only where it is used
    if functional == "ignore":
        return None
    try:
        graph = _bcos_fx.trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds for untraceable Python
        if functional == "replace":
            raise ValueError(f"convert_to_bcos(functional='replace'): torch.fx cannot trace {type(model).__name__} "
                             f"({type(e).__name__}: {e})") from e
        warnings.warn(f"convert_to_bcos: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}); "
                      f"activations called as functions in forward (F.relu, x.relu(), ...) were not checked. "
                      f"Pass functional='ignore' if there are none.", stacklevel=3)
        return None
    calls = _bcos_fx.functional_calls(graph)
    linear = [_bcos_fx.describe(n) for n, k in calls if k == "linear"]
    if linear:
        raise ValueError("convert_to_bcos: linear maps called as functions cannot become B-cos layers (use "
                         "nn.Conv2d / nn.Linear modules): " + "; ".join(linear))
    if functional == "raise":
        if calls:
            raise ValueError("convert_to_bcos: forward calls non-linearities / pooling / dropout as functions, "
                             "which module replacement cannot remove: " +
                             "; ".join(_bcos_fx.describe(n) for n, _ in calls) +
                             ". Pass functional='replace' to get a torch.fx GraphModule without them.")
        return None
    _bcos_fx.rewrite(graph, calls)
    return graph


def convert_to_bcos(model: nn.Module, b: float = 2.0, max_out: int = 2, *, functional: str = "raise",
                    add_inverse: bool = False, logit_bias: float | None = None,
                    logit_temperature: float | None = None) -> nn.Module:
    """Turn a conventional network into a B-cos network (Sec. 3.3) and return it.

    Modules, in place:

    - every ``nn.Conv2d`` becomes a :class:`BcosConv2d` of the same geometry (bias dropped,
      zero padding only) and every ``nn.Linear`` a :class:`BcosLinear`, with ``max_out`` MaxOut
      units (2 in the paper) and exponent ``b``; weights are freshly initialised (a B-cos filter
      with MaxOut has a different shape and meaning, so the old weights do not carry over);
    - non-linearities (ReLU, GELU, SiLU, tanh, sigmoid and friends), batch norm and dropout are
      removed (``nn.Identity``);
    - max pooling is removed too; where a pooling layer changes the spatial size it becomes the
      average pooling of the same window (a linear map, so the model is still summarised exactly
      by W(x), eq. 13, and every later layer keeps its input shape); ``AdaptiveMaxPool2d``
      becomes ``AdaptiveAvgPool2d``.

    Calls inside ``forward`` (``F.relu(x)``, ``torch.tanh(x)``, ``x.relu()``, ``F.max_pool2d``,
    ``F.dropout``, ``F.batch_norm``, ...) cannot be rewritten in place; the model is traced with
    torch.fx to find them (``functional``):

    - ``"raise"`` (default): a ValueError naming each call and the module whose forward makes it;
      a model torch.fx cannot trace (data-dependent control flow) gets a warning instead;
    - ``"replace"``: the result is a ``torch.fx.GraphModule`` of the converted model with those
      calls removed / max pooling made average pooling (the same submodules and parameters,
      state-dict keys unchanged; ``model`` itself is converted in place as well, calls kept);
    - ``"ignore"``: no check.

    Linear maps called as functions (``F.conv2d(x, self.w)``, ``F.linear``) always raise: they
    have no module to replace. Not handled (the result is then not a pure B-cos network): other
    normalisation layers (``nn.LayerNorm``, ``nn.GroupNorm``: kept), ``nn.Conv1d/3d``, a bias
    added by hand, activations reached through other names (``x.clamp(min=0)``, custom functions).

    Args:
        model: the network; its modules are replaced in place.
        b, max_out: exponent B (eq. 3) and MaxOut units (eq. 17) of every new layer.
        functional: ``"raise"``, ``"replace"`` or ``"ignore"``, see above.
        add_inverse: widen the first ``nn.Conv2d`` (in registration order, ``model.modules()``;
            groups=1) to 2x its input channels, for the [x, 1 - x] encoding of Sec. 4: feed
            ``AddInverse()(x)``, or use ``nn.Sequential(AddInverse(), result)``.
        logit_bias, logit_temperature: when either is given, the result is
            ``nn.Sequential(model, LogitLayer(logit_temperature, logit_bias))`` (state-dict keys
            gain the prefix ``0.``), as the official models end; -log(C - 1) is their bias.

    Returns:
        ``model``, or the GraphModule / Sequential holding it (see ``functional``, ``logit_bias``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if functional not in _FUNCTIONAL_MODES:
        raise ValueError(f"functional must be one of {_FUNCTIONAL_MODES}, got {functional!r}")
    b = _check_b_max_out(b, max_out)
    logit = LogitLayer(logit_temperature, logit_bias) if logit_bias is not None or logit_temperature is not None \
        else None
    first_conv = None
    if add_inverse:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is None:
            raise ValueError("convert_to_bcos: add_inverse=True widens the first nn.Conv2d, but the model has none")
    graph = _functional_graph(model, functional)
    edits = []
    _plan_bcos(model, "", b, max_out, first_conv, edits)
    for parent, name, new in edits:
        setattr(parent, name, new)
    if graph is not None:
        model = torch.fx.GraphModule(model, graph, class_name=type(model).__name__ + "Bcos")
    return model if logit is None else nn.Sequential(model, logit)
