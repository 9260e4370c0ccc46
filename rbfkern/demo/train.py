"""A small, deterministic training loop shared by the demo parts."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def batches(n: int, batch_size: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def fit(model: nn.Module, x, y, *, epochs: int, lr: float, seed: int, loss_fn: Callable | None = None,
        batch_size: int = 64, desc: str = "train", progress: bool = True, on_epoch: Callable | None = None):
    """Adam on (x, y); ``loss_fn(model, xb, yb)`` defaults to cross-entropy of ``model(xb)``."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = loss_fn or (lambda m, xb, yb: nn.functional.cross_entropy(m(xb), yb))
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        total = 0.0
        for idx in batches(len(x), batch_size, g):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x[idx], y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        bar.set_postfix(loss=f"{total / len(x):.3f}")
        if on_epoch is not None:
            on_epoch(epoch)
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())
