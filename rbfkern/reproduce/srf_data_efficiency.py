"""Claim: structured receptive fields need less data than a plain CNN of equal depth (thesis ch. 3,
Sec. 3.4.2 "Small simple domain": an RFNN and the same model as a plain CNN on subsets of MNIST).

The networks are the demo's (:mod:`rbfkern.demo.srf`): equal depth, widths, normalisation,
pooling and head, different spatial layers. Each comparison trains its two networks on the same
class-balanced subset of the digits, from the same seed, for the same number of steps:

* ``fixed``: the 3rd-order SRF vs a 5x5 CNN (equal depth and width), both with batch norm;
* ``params``: the same SRF vs a 3x3 CNN (about equal parameter count);
* ``demo``: the pair the demo compared before (2nd-order basis truncated at 2 sigma, no
  normalisation), to show what the fixes changed.
"""
from __future__ import annotations

import torch
from torch import nn

from ..demo import data as ddata
from ..demo import srf as demo_srf
from ..demo import train

COMPARISONS = {
    "fixed": ("srf", "cnn5"),
    "params": ("srf", "cnn3"),
    "demo": ("srf_old", "cnn_old"),
}
LABELS = {"fixed": "vs 5x5 CNN, same width", "params": "vs 3x3 CNN, ~same params", "demo": "the demo's old pair"}


def fit_steps(model: nn.Module, x, y, *, steps: int, lr: float, seed: int, batch_size: int = 32):
    """Adam for a fixed number of steps on random batches: the same amount of training whatever
    the subset size (epochs would give the smallest subsets the fewest updates)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    return model


def run(data, *, seed: int, sizes, steps: int, kinds=("fixed",), lr: float = 3e-3) -> dict:
    """Test accuracy of every network the comparisons ``kinds`` need, at each subset size
    (n digits per class): ``{"accuracy": {n: {net: acc}}, "parameters": {net: count}}``."""
    for k in kinds:
        if k not in COMPARISONS:
            raise ValueError(f"kinds must be among {tuple(COMPARISONS)}, got {k!r}")
    names = sorted({n for k in kinds for n in COMPARISONS[k]})
    acc, params = {}, {}
    for n in sizes:
        x, y = ddata.per_class(data.x_train, data.y_train, n, seed)  # the same digits for every network
        acc[n] = {}
        for name in names:
            torch.manual_seed(seed)
            net = fit_steps(demo_srf.build(name), x, y, steps=steps, lr=lr, seed=seed)
            acc[n][name] = train.accuracy(net, data.x_test, data.y_test)
            params[name] = sum(p.numel() for p in net.parameters())
    return {"accuracy": acc, "parameters": params}
