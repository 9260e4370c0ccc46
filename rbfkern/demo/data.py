"""scikit-learn's bundled 8x8 handwritten digits (1797 images, ships with the package: no download)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Digits:
    x_train: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def load(seed: int = 0, test_size: float = 0.3) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_size, stratify=d.target, random_state=seed)
    t = torch.from_numpy
    return Digits(t(xtr), t(ytr).long(), t(xte), t(yte).long())


def subset(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    """A class-balanced random fraction of (x, y)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        n = max(1, int(round(fraction * len(idx))))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    keep = torch.cat(keep).sort().values
    return x[keep], y[keep]
