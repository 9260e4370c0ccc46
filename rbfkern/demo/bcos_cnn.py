"""Part 2: a B-cos CNN (paper bcos-networks): [v, 1-v] input encoding, B = 2, MaxOut 2, no ReLU,
no BatchNorm, no bias. Its logits are W(x) x (eq. 13), so the contribution maps of eq. (15)
sum exactly to the (scaled) logit of the class they explain."""
from __future__ import annotations

import torch
from torch import nn

from .. import explain
from .. import nn as rnn
from . import figures, train


class Scale(nn.Module):
    """A fixed positive logit scale: linear, so W(x) x still equals the logit."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BcosCNN(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10, logit_scale: float = 20.0):
        super().__init__()
        self.encode = rnn.AddInverse()  # [v, 1 - v]: affine, so explanations start after it
        self.net = nn.Sequential(
            rnn.BcosConv2d(2, width, 3, padding=1, max_out=2),                      # 8x8
            rnn.BcosConv2d(width, 2 * width, 3, stride=2, padding=1, max_out=2),    # 4x4
            rnn.BcosConv2d(2 * width, 2 * width, 3, stride=2, padding=1, max_out=2),  # 2x2
            rnn.BcosConv2d(2 * width, classes, 2, max_out=2),                       # 1x1
            nn.Flatten(),
            Scale(logit_scale),
        )

    def forward(self, x):
        return self.net(self.encode(x))


def run(data, out_dir, *, quick: bool, seed: int, progress: bool) -> dict:
    torch.manual_seed(seed)
    model = BcosCNN()
    train.fit(model, data.x_train, data.y_train, epochs=6 if quick else 20, lr=3e-3, seed=seed, desc="b-cos",
              progress=progress)
    acc = train.accuracy(model, data.x_test, data.y_test)
    x = data.x_test[:8]
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    maps = explain.contributions(model.net, model.encode(x), pred)  # (8, 8, 8), eq. (15) over both channels
    gap = float((maps.sum((1, 2)) - logits.gather(1, pred[:, None])[:, 0]).abs().max())
    files = [figures.contribution_maps(out_dir / "bcos_explanations.png", x, maps, pred)]
    return {"accuracy": acc, "contribution_sum_error": gap, "files": files}
