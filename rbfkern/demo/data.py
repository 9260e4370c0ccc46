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
    keep = _per_class(y, lambda n: max(1, int(round(fraction * n))), seed)
    return x[keep], y[keep]


def per_class(x: torch.Tensor, y: torch.Tensor, n: int, seed: int):
    """n random samples of every class (all of a class that has fewer)."""
    keep = _per_class(y, lambda _: n, seed)
    return x[keep], y[keep]


def _per_class(y: torch.Tensor, count, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:count(len(idx))]])
    return torch.cat(keep).sort().values
