"""Structured receptive field Network in Network (RFNiN), thesis ch. 3 (structured-receptive-fields-thesis.txt).

Sec. 3.3.4: NiN alternates one spatial convolution with 1x1 convolutions and pooling; RFNiN
replaces each spatial convolution by a Gaussian-derivative basis layer whose outputs are
recombined linearly (alpha of eq. 23; no nonlinearity between basis and recombination), followed
by the 1x1 layers, each with a rectifier. The final pooling is a global average.

Schedules (the defaults of :class:`RFNiN`):

* 2D, Sec. 3.3.4 and 3.4.1 ("RFNiN-Scale 3rd-order", the champion of Table 1): four blocks of
  widths 96/256/384/1024 (the NiN of the Caffe model zoo it is built on), a 3rd-order basis
  (M = 10 per scale), scales sigma = 1, 2, 4, 8 in the first block, 1, 2, 4 in the second, 1, 2
  in the third and 1 in the fourth, two 1x1 layers per block, 3x3 max pooling with stride 2
  after the first three blocks, a 1x1 class layer and global average pooling. The scales of a
  block are in pixels of its own input: after a 2x pooling sigma = 1 covers what sigma = 2 did
  before, so dropping the largest scale per block here is the thesis' "discard the lowest scale"
  measured at the input resolution.
* 3D, Sec. 3.4.4 (the MRI network): three blocks of widths 128/96/96, a 3rd-order basis at
  scales 1, 4, 16 in every block, one 1x1 layer per block, global average pooling. The thesis
  does not give the pooling between the 3D blocks: 2x2x2 max pooling here.

Choices of ours, not the thesis': the class layer is an extra 1x1 convolution after the last
block (NiN's last 1x1 layer plays that role in 2D: there it replaces the block's second 1x1), it
has no rectifier (the logits may be negative), and ``batch_norm`` (off by default; NiN of 2014 has
none) adds a BatchNorm before each rectifier. Parameter counts differ: the thesis' Table 1 counts
(6.8M for the 2D network on 100 classes) are the basis weights alpha (6.65M here) plus only
0.1-0.35M, less than NiN's 1x1 layers (2.6M here); the text does not say how they were trimmed.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .gauss_deriv import GaussDerivConv2d, GaussDerivConv3d

SCHEDULES = {
    2: {"widths": (96, 256, 384, 1024), "scales": ((1.0, 2.0, 4.0, 8.0), (1.0, 2.0, 4.0), (1.0, 2.0), (1.0,)),
        "mlp_layers": 2, "order": 3},
    3: {"widths": (128, 96, 96), "scales": ((1.0, 4.0, 16.0),) * 3, "mlp_layers": 1, "order": 3},
}


def _layers(ndim: int):
    if ndim == 2:
        return GaussDerivConv2d, nn.Conv2d, nn.BatchNorm2d
    if ndim == 3:
        return GaussDerivConv3d, nn.Conv3d, nn.BatchNorm3d
    raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")


class RFNiNBlock(nn.Sequential):
    """One RFNiN unit (thesis Sec. 3.3.4): the basis layer with its linear recombination alpha
    (eq. 23), a rectifier, then ``mlp_layers`` 1x1 convolutions, each with a rectifier.

    Args:
        in_channels, out_channels: channels in and out.
        order, sigmas: the Gaussian-derivative basis (order 0..4, one or more scales).
        ndim: 2 (images) or 3 (volumes).
        mlp_layers: the number of 1x1 layers (NiN: 2; the thesis' 3D network: 1).
        batch_norm: a BatchNorm before every rectifier (the 1x1 layers then have no bias).
        stride: the basis layer's stride.
        **kw: more arguments of :class:`GaussDerivConv2d` / ``3d`` (truncate, learn_sigma, ...).
    """

    def __init__(self, in_channels: int, out_channels: int, order: int = 3, sigmas=(1.0,), *, ndim: int = 2,
                 mlp_layers: int = 2, batch_norm: bool = True, stride: int = 1, **kw):
        basis, conv, bn = _layers(ndim)
        if isinstance(mlp_layers, bool) or not isinstance(mlp_layers, int) or mlp_layers < 0:
            raise ValueError(f"mlp_layers must be an int >= 0, got {mlp_layers!r}")
        layers: list[nn.Module] = [basis(in_channels, out_channels, order=order, sigmas=sigmas, stride=stride, **kw)]
        for i in range(mlp_layers + 1):
            if i:
                layers.append(conv(out_channels, out_channels, 1, bias=not batch_norm))
            if batch_norm:
                layers.append(bn(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class RFNiN(nn.Module):
    """The RFNiN network (thesis ch. 3): :class:`RFNiNBlock` s with pooling between them, a 1x1
    class layer and global average pooling. Defaults follow the thesis' schedule for ``ndim``
    (2D: Sec. 3.3.4 / 3.4.1, 3D: Sec. 3.4.4; see the module docstring); every piece can be set.

    Args:
        in_channels: input channels (3 for RGB, 1 for MRI volumes).
        num_classes: K, the outputs.
        ndim: 2 (N, C, H, W) or 3 (N, C, D, H, W).
        widths: the output channels of each block (its basis layer and 1x1 layers).
        scales: one sequence of sigmas per block (len(scales) == len(widths)).
        order: the basis order (3: M = 10 in 2D, 20 in 3D).
        mlp_layers: 1x1 layers per block.
        pool: ``max`` (3x3 stride 2 in 2D, NiN's; 2x2x2 stride 2 in 3D) or ``avg`` (same windows)
            after every block but the last, or ``none``.
        batch_norm: a BatchNorm before every rectifier (off in the thesis' NiN).
        dropout: dropout before the last block (NiN uses 0.5 there on ImageNet), 0: none.
        stride: the first basis layer's stride (NiN's first layer has 4 on 224x224 images).
        **kw: more arguments of the basis layers (e.g. ``truncate``, ``learn_sigma``).

    Parameters: block l has W_l * C_{l-1} * S_l * M basis weights (alpha), ``mlp_layers`` 1x1
    layers of W_l * W_l weights (+ W_l biases without batch norm, 2 W_l batch-norm parameters per
    rectifier with it); the class layer has W_L * K + K.

    Attributes: ``features`` (the blocks and pooling layers, an ``nn.Sequential``), ``classifier``
    (the 1x1 class layer).

    Shape: (N, in_channels, *spatial) -> (N, num_classes).
    """

    def __init__(self, in_channels: int, num_classes: int, *, ndim: int = 2, widths: Sequence[int] | None = None,
                 scales: Sequence[Sequence[float]] | None = None, order: int | None = None,
                 mlp_layers: int | None = None, pool: str = "max", batch_norm: bool = False, dropout: float = 0.0,
                 stride: int = 1, **kw):
        _, conv, _ = _layers(ndim)
        sched = SCHEDULES[ndim]
        widths = tuple(sched["widths"] if widths is None else widths)
        scales = tuple(tuple(s) for s in (sched["scales"] if scales is None else scales))
        order = sched["order"] if order is None else order
        mlp_layers = sched["mlp_layers"] if mlp_layers is None else mlp_layers
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be one or more ints >= 1, got {widths!r}")
        if len(scales) != len(widths):
            raise ValueError(f"scales must give one sequence of sigmas per block ({len(widths)} blocks), "
                             f"got {len(scales)}")
        if pool not in ("max", "avg", "none"):
            raise ValueError(f"pool must be 'max', 'avg' or 'none', got {pool!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        c = in_channels
        for i, (w, s) in enumerate(zip(widths, scales)):
            last = i == len(widths) - 1
            if last and dropout:
                layers.append(nn.Dropout(float(dropout)))
            layers.append(RFNiNBlock(c, w, order, s, ndim=ndim, mlp_layers=mlp_layers, batch_norm=batch_norm,
                                     stride=stride if i == 0 else 1, **kw))
            if not last and pool != "none":
                layers.append(_pool_layer(pool, ndim))
            c = w
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.classifier = conv(c, num_classes, 1)
        self.ndim, self.widths, self.scales, self.order = ndim, widths, scales, order

    def forward(self, x: Tensor) -> Tensor:
        y = self.classifier(self.features(x))
        return y.mean(tuple(range(2, y.dim())))  # global average pooling of the class maps

    def basis_layers(self) -> list[nn.Module]:
        """The Gaussian-derivative layers, block by block."""
        return [m for m in self.modules() if isinstance(m, (GaussDerivConv2d, GaussDerivConv3d))]


def _pool_layer(kind: str, ndim: int) -> nn.Module:
    if ndim == 2:
        return nn.MaxPool2d(3, 2, padding=1) if kind == "max" else nn.AvgPool2d(3, 2, padding=1)
    return nn.MaxPool3d(2, 2) if kind == "max" else nn.AvgPool3d(2, 2)


__all__ = ["RFNiN", "RFNiNBlock", "SCHEDULES"]
