"""Part 3: structured receptive fields (thesis ch. 3): Gaussian-derivative basis layers vs a plain
CNN of the same width, both trained on a small fraction of the training set (the small-data claim)."""
from __future__ import annotations

import torch
from torch import nn

from .. import basis
from .. import nn as rnn
from . import data as ddata
from . import figures, train


def srf_net(width: int = 16, classes: int = 10) -> nn.Module:
    kw = dict(order=2, sigmas=(1.0,), truncate=2.0)
    return nn.Sequential(
        rnn.GaussDerivConv2d(1, width, **kw), nn.ReLU(), nn.MaxPool2d(2),
        rnn.GaussDerivConv2d(width, 2 * width, **kw), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 4, classes),
    )


def plain_net(width: int = 16, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 5, padding=2, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 5, padding=2, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 4, classes),
    )


def run(data, out_dir, *, quick: bool, seed: int, progress: bool, fraction: float = 0.1) -> dict:
    x, y = ddata.subset(data.x_train, data.y_train, fraction, seed)
    epochs = 20 if quick else 60
    res = {"train_samples": len(x)}
    nets = {}
    for name, make in (("srf", srf_net), ("cnn", plain_net)):
        torch.manual_seed(seed)
        net = make()
        train.fit(net, x, y, epochs=epochs, lr=3e-3, seed=seed, batch_size=32, desc=name, progress=progress)
        res[f"{name}_accuracy"] = train.accuracy(net, data.x_test, data.y_test)
        res[f"{name}_parameters"] = sum(p.numel() for p in net.parameters())
        nets[name] = net
    first = nets["srf"][0]
    phi = basis.basis_2d([2.0], order=2)[0]  # (M, K, K) at a scale large enough to see
    names = [f"d{p}x d{q}y" for p, q in basis.derivative_orders(2)]
    res["files"] = [figures.basis(out_dir / "basis.png", phi, names, first.effective_weight()[:8, 0])]
    return res
