"""Claim: B-cos contributions localise (bcos-networks.md, Sec. 4, the grid pointing game).

A small fully convolutional B-cos CNN (global average pooling over class maps, so it takes a
2x2 grid of digits as well as one digit) is trained on single 8x8 digits; 2x2 grids of four
correctly and confidently classified test digits of different classes are explained with the
contribution maps of eq. (15), and each cell's class is scored by the share of its positive
contribution inside that cell (:func:`rbfkern.explain.grid_pointing_game`). Chance: 0.25.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import explain
from .. import nn as rnn
from ..demo import train


class _MeanPool(nn.Module):
    """Global average pooling times a fixed positive scale: linear, so W(x) x is still the logit."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x.mean((2, 3)) * self.scale


def bcos_gap_cnn(width: int = 16, classes: int = 10, logit_scale: float = 20.0) -> nn.Module:
    """[v, 1-v] -> three 3x3 B-cos convs (B = 2, MaxOut 2; two of stride 2) -> 1x1 B-cos class
    maps -> mean over positions. An 8x8 digit gives 2x2 class maps, a 2x2 grid of digits 4x4."""
    return nn.Sequential(
        rnn.AddInverse(),
        rnn.BcosConv2d(2, width, 3, padding=1, max_out=2),
        rnn.BcosConv2d(width, 2 * width, 3, stride=2, padding=1, max_out=2),
        rnn.BcosConv2d(2 * width, 2 * width, 3, stride=2, padding=1, max_out=2),
        rnn.BcosConv2d(2 * width, classes, 1, max_out=2),
        _MeanPool(logit_scale),
    )


def run(data, *, seed: int, epochs: int, groups: int, width: int, progress: bool) -> dict:
    """Train on ``data`` (demo.data.Digits), play the pointing game on up to ``groups`` grids."""
    torch.manual_seed(seed)
    model = bcos_gap_cnn(width)
    train.fit(model, data.x_train, data.y_train, epochs=epochs, lr=3e-3, seed=seed, desc=f"b-cos seed {seed}",
              progress=progress)
    acc = train.accuracy(model, data.x_test, data.y_test)
    with torch.no_grad():
        logits = model(data.x_test)
    idx = explain.pointing_game_groups(logits, data.y_test, cells=4, num_groups=groups, seed=seed)
    encode, net = model[0], model[1:]
    images = encode(data.x_test[idx.flatten()]).reshape(*idx.shape, 2, 8, 8)  # explain after the encoding
    scores = explain.grid_pointing_game(net, images, data.y_test[idx])
    return {"accuracy": acc, "pointing_game": float(scores.mean()), "grids": int(idx.shape[0])}
