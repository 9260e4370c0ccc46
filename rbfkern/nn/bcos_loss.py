"""The B-cos training loss (paper: bcos-networks.md, eq. 16, Sec. 3.2.2): binary cross-entropy on
sigmoid(f(x) + b), the logits plus a fixed logit bias b, against one-hot (or soft) targets.

Matches the official ``bcos.modules.losses`` (bcos 0.1.3): ``BinaryCrossEntropyLoss`` (label
smoothing as ``nn.CrossEntropyLoss`` does it, target threshold, weight, pos_weight) and
``UniformOffLabelsBCEWithLogitsLoss`` (off-targets raised to 1 / C, the official ImageNet
training loss) are both this loss with the matching options; the official models add the bias
in their ``LogitLayer`` instead, which is ``logit_bias=None`` here.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["bcos_bce_loss", "BcosBCELoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_options(logit_bias, smoothing, off_label, target_threshold, reduction):
    if not (logit_bias is None or (isinstance(logit_bias, str) and logit_bias == "auto") or
            (isinstance(logit_bias, numbers.Real) and not isinstance(logit_bias, bool) and math.isfinite(logit_bias))):
        raise ValueError(f"logit_bias must be None, 'auto' or a finite number, got {logit_bias!r}")
    if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    if not (off_label is None or (isinstance(off_label, str) and off_label == "uniform") or
            (isinstance(off_label, numbers.Real) and not isinstance(off_label, bool) and 0 <= off_label < 1)):
        raise ValueError(f"off_label must be None, 'uniform' or a number in [0, 1), got {off_label!r}")
    if target_threshold is not None and (isinstance(target_threshold, bool) or
                                         not isinstance(target_threshold, numbers.Real)):
        raise ValueError(f"target_threshold must be None or a number, got {target_threshold!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _dense_target(logits: Tensor, target: Tensor) -> Tensor:
    """(N, C) targets in the logits' dtype: one-hot rows for class indices, soft ones as given."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    n, c = logits.shape
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"a floating target holds one value per logit: expected shape {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        return target.to(logits.dtype)
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must be integer class indices or floating (N, C) targets, got dtype {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"class-index targets must have shape ({n},) for logits of shape {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if n and (bool((target < 0).any()) or bool((target >= c).any())):
        bad = target[(target < 0) | (target >= c)][0].item()
        raise ValueError(f"target class indices must be in [0, {c}), got {bad}")
    return F.one_hot(target.long(), num_classes=c).to(logits.dtype)


def bcos_bce_loss(logits: Tensor, target: Tensor, *, logit_bias=None, smoothing: float = 0.0, off_label=None,
                  target_threshold: float | None = None, weight: Tensor | None = None,
                  pos_weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of sigmoid(logits + b) against the targets, eq. (16).

    Args:
        logits: (N, C) model outputs f(x).
        target: (N,) class indices (made one-hot), or (N, C) floating targets (e.g. mixed labels).
        logit_bias: b of eq. (16). None: no bias (the model adds it, as the official models'
            ``LogitLayer`` does); ``"auto"``: -log(C - 1), the official models' default (a zero
            logit then has probability sigmoid(b) = 1 / C, the uniform prior); a number: that b.
        smoothing: label smoothing s, as ``nn.CrossEntropyLoss``: t * (1 - s) + s / C.
        off_label: raise every target below this value to it (after smoothing and thresholding):
            ``"uniform"`` is 1 / C (``UniformOffLabelsBCEWithLogitsLoss()``), a number in [0, 1)
            that value (its ``off_label``; the official class takes 0 as 1 / C, here 0 is 0).
        target_threshold: targets become 1.0 where > threshold, else 0.0 (after smoothing).
        weight, pos_weight, reduction: as ``F.binary_cross_entropy_with_logits``.

    Returns:
        The loss (a scalar, or (N, C) for ``reduction="none"``).
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point() or logits.dim() != 2:
        raise ValueError(f"logits must be a floating (N, C) tensor, got shape {tuple(logits.shape)} "
                         f"and dtype {logits.dtype}")
    _check_options(logit_bias, smoothing, off_label, target_threshold, reduction)
    c = logits.shape[1]
    t = _dense_target(logits, target)
    if smoothing > 0.0:
        t = t * (1 - smoothing) + smoothing / c
    if target_threshold is not None:
        t = t.gt(target_threshold).to(dtype=t.dtype)
    if off_label is not None:
        t = t.clamp(min=1.0 / c if isinstance(off_label, str) else float(off_label))
    if isinstance(logit_bias, str):  # "auto"
        if c < 2:
            raise ValueError(f"logit_bias='auto' is -log(C - 1) and needs C >= 2 classes, got logits of shape "
                             f"{tuple(logits.shape)}")
        logit_bias = -math.log(c - 1)
    if logit_bias is not None:
        logits = logits + logit_bias
    return F.binary_cross_entropy_with_logits(logits, t, weight, pos_weight=pos_weight, reduction=reduction)


class BcosBCELoss(nn.Module):
    """:func:`bcos_bce_loss` as a module (``weight`` and ``pos_weight`` are buffers: they move
    with ``.to()`` and are saved in the state dict, as in the official losses)."""

    def __init__(self, logit_bias=None, smoothing: float = 0.0, off_label=None, target_threshold: float | None = None,
                 weight: Tensor | None = None, pos_weight: Tensor | None = None, reduction: str = "mean"):
        super().__init__()
        _check_options(logit_bias, smoothing, off_label, target_threshold, reduction)
        self.logit_bias, self.smoothing, self.off_label = logit_bias, smoothing, off_label
        self.target_threshold, self.reduction = target_threshold, reduction
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return bcos_bce_loss(logits, target, logit_bias=self.logit_bias, smoothing=self.smoothing,
                             off_label=self.off_label, target_threshold=self.target_threshold, weight=self.weight,
                             pos_weight=self.pos_weight, reduction=self.reduction)

    def extra_repr(self) -> str:
        opts = [f"reduction={self.reduction}"]
        for k in ("logit_bias", "smoothing", "off_label", "target_threshold"):
            v = getattr(self, k)
            if v is not None and not (k == "smoothing" and v == 0.0):
                opts.append(f"{k}={v}")
        return ", ".join(opts)
