"""Part 2: a B-cos CNN (paper bcos-networks): [v, 1-v] input encoding, B = 2, MaxOut 2, no ReLU,
no BatchNorm, no bias. Its logits are W(x) x (eq. 13), so the contribution maps of eq. (15)
sum exactly to the (scaled) logit of the class they explain."""
from __future__ import annotations

import torch
from torch import nn

from .. import explain
from .. import nn as rnn
from . import figures, train


class BcosCNN(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10, logit_scale: float = 20.0):
        super().__init__()
        self.features = nn.Sequential(
            rnn.AddInverse(),                                                   # (2, 8, 8)
            rnn.BcosConv2d(2, width, 3, padding=1, max_out=2),                  # 8x8
            rnn.BcosConv2d(width, 2 * width, 3, stride=2, padding=1, max_out=2),  # 4x4
            rnn.BcosConv2d(2 * width, 2 * width, 3, stride=2, padding=1, max_out=2),  # 2x2
            rnn.BcosConv2d(2 * width, classes, 2, max_out=2),                   # 1x1
            nn.Flatten(),
        )
        # A fixed positive scale keeps the model linear in W(x) (contributions still sum to the logit).
        self.logit_scale = logit_scale

    def forward(self, x):
        return self.features(x) * self.logit_scale


def run(data, out_dir, *, quick: bool, seed: int, progress: bool) -> dict:
    torch.manual_seed(seed)
    model = BcosCNN()
    train.fit(model, data.x_train, data.y_train, epochs=8 if quick else 25, lr=3e-3, seed=seed, desc="b-cos",
              progress=progress)
    acc = train.accuracy(model, data.x_test, data.y_test)
    x = data.x_test[:8]
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    maps = explain.contributions(model, x, pred)  # (8, 8, 8)
    gap = float((maps.sum((1, 2)) - logits.gather(1, pred[:, None])[:, 0]).abs().max())
    files = [figures.contribution_maps(out_dir / "bcos_explanations.png", x, maps, pred)]
    return {"accuracy": acc, "contribution_sum_error": gap, "files": files}
