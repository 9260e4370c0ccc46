"""k-means (k-means++ seeding + Lloyd, or mini-batch) on the fused ``rbf_r2`` op, in any RBF metric.

Distances are computed chunk by chunk with :func:`rbfkern.ops.rbf_r2`, so no (N, C, D) tensor is
ever formed. With a Mahalanobis metric R_j the centre update is still the cluster mean (the mean
minimises sum_i (x_i - c)^T R (x_i - c) for any positive definite R), so Lloyd's algorithm
minimises eq. (10) of cnn-rbf-similarity-metric.txt in the learned metric.
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import torch
from torch import Tensor

from . import ops
from ._chunks import rows_per_chunk

try:  # tqdm is optional: progress bars only
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


class KMeansResult(NamedTuple):
    centers: Tensor  # (K, D)
    labels: Tensor  # (N,) int64 (empty for iterable data)
    inertia: float  # sum over samples of the squared distance to the nearest centre
    n_iter: int


def _bar(total, progress, desc):
    if progress and tqdm is not None:
        return tqdm(total=total, desc=desc, leave=False)
    return None


def _metric_rows(diag, tril, idx):
    """Per-centre metric rows idx (or the shared metric) for a subset of centre slots."""
    if diag is not None:
        return {"diag": diag if diag.dim() == 1 else diag[idx]}
    if tril is not None:
        return {"tril": tril if tril.dim() == 2 else tril[idx]}
    return {}


def assign(x: Tensor, centers: Tensor, *, diag: Tensor | None = None, tril: Tensor | None = None,
           chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Nearest centre of every row of x: ``(labels (N,), min_r2 (N,))``, streamed in row chunks."""
    n, d = x.shape
    c = centers.shape[0]
    step = chunk_size or rows_per_chunk(c, d, x.device)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    best = torch.empty(n, dtype=x.dtype, device=x.device)
    for s in range(0, n, step):
        r2 = ops.rbf_r2(x[s:s + step], centers, diag=diag, tril=tril)
        best[s:s + step], labels[s:s + step] = r2.min(dim=1)
    return labels, best


def kmeans_plusplus(x: Tensor, k: int, *, diag: Tensor | None = None, tril: Tensor | None = None,
                    generator: torch.Generator | None = None, n_local_trials: int | None = None,
                    chunk_size: int | None = None) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; 2 + log k trials per step as scikit-learn).

    With a per-centre metric, slot j is seeded with metric j.
    """
    n, d = x.shape
    if n < k:
        raise ValueError(f"embeddings must have at least num_centers={k} rows, got {n}")
    trials = n_local_trials or 2 + int(math.log(k))
    centers = torch.empty(k, d, dtype=x.dtype, device=x.device)
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    centers[0] = x[first]
    _, closest = assign(x, centers[:1], chunk_size=chunk_size, **_metric_rows(diag, tril, slice(0, 1)))
    closest = closest.double()
    for j in range(1, k):
        weights = closest.clamp_min(0)
        if float(weights.sum()) <= 0:  # every point sits on a centre: pick uniformly
            weights = torch.ones_like(weights)
        cand = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator).to(x.device)
        cand_c = x[cand]
        idx = torch.full((trials,), j, dtype=torch.long)
        step = chunk_size or rows_per_chunk(trials, d, x.device)
        pot = torch.zeros(trials, dtype=torch.float64, device=x.device)
        new = []
        for s in range(0, n, step):
            r2 = ops.rbf_r2(x[s:s + step], cand_c, **_metric_rows(diag, tril, idx)).double()
            m = torch.minimum(closest[s:s + step, None], r2)
            pot += m.sum(0)
            new.append(m)
        best = int(pot.argmin())
        centers[j] = cand_c[best]
        closest = torch.cat([m[:, best] for m in new])
    return centers


def _as_batches(data) -> Iterable[Tensor]:
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


def kmeans(
    x: Tensor | Iterable,
    k: int,
    *,
    init: str | Tensor = "kmeans++",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
    diag: Tensor | None = None,
    tril: Tensor | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    progress: bool = False,
) -> KMeansResult:
    """k-means of the rows of ``x`` under the metric ``diag`` / ``tril`` (as in :func:`rbfkern.ops.rbf_r2`).

    Args:
        x: (N, D) tensor, or an iterable of (B, D) batches (e.g. a DataLoader, items may be tuples
            whose first element is the batch) when the data do not fit: mini-batch k-means.
        init: ``kmeans++``, ``random`` (k distinct rows) or a (K, D) tensor of initial centres.
        n_init: restarts with different seeds; the lowest inertia wins.
        max_iter: Lloyd iterations (epochs for mini-batch).
        tol: stop when the squared centre shift is below tol * mean per-feature variance (sklearn's rule).
        batch_size: mini-batch k-means (Sculley 2010) on a tensor when set and smaller than N.
        progress: a tqdm progress bar over iterations.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (num_centers) must be a positive int, got {k!r}")
    if isinstance(init, str) and init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++', 'random' or a (K, D) tensor, got {init!r}")
    if not isinstance(x, Tensor):
        return _kmeans_stream(x, k, init, max_iter, diag, tril, seed, chunk_size, progress)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must have shape (N, D) with N >= 1, got {tuple(x.shape)}")
    if isinstance(init, Tensor) and tuple(init.shape) != (k, x.shape[1]):
        raise ValueError(f"init must have shape ({k}, {x.shape[1]}), got {tuple(init.shape)}")
    best = None
    for r in range(max(1, n_init if not isinstance(init, Tensor) else 1)):
        g = torch.Generator().manual_seed(seed + r)
        c0 = _init(x, k, init, diag, tril, g, chunk_size)
        if batch_size is not None and batch_size < x.shape[0]:
            res = _minibatch(x, c0, max_iter, tol, diag, tril, batch_size, g, chunk_size, progress)
        else:
            res = _lloyd(x, c0, max_iter, tol, diag, tril, chunk_size, progress)
        if best is None or res.inertia < best.inertia:
            best = res
    return best


def _init(x, k, init, diag, tril, g, chunk_size):
    if isinstance(init, Tensor):
        return init.detach().to(x.dtype).clone()
    if x.shape[0] < k:
        raise ValueError(f"embeddings must have at least num_centers={k} rows, got {x.shape[0]}")
    if init == "random":
        return x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)].clone()
    return kmeans_plusplus(x, k, diag=diag, tril=tril, generator=g, chunk_size=chunk_size)


def _update(x, labels, k, centers, min_r2):
    """Cluster means (float64 sums); empty clusters move to the points farthest from their centre."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, labels, x.double())
    counts = torch.bincount(labels, minlength=k)
    new = centers.double().clone()
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    empty = (~full).nonzero().flatten()
    if empty.numel():
        far = min_r2.argsort(descending=True)[: empty.numel()]
        new[empty] = x[far].double()
    return new.to(x.dtype)


def _lloyd(x, centers, max_iter, tol, diag, tril, chunk_size, progress):
    k = centers.shape[0]
    thresh = tol * float(x.double().var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
    bar = _bar(max_iter, progress, "k-means")
    labels = None
    it = 0
    for it in range(1, max_iter + 1):
        new_labels, min_r2 = assign(x, centers, diag=diag, tril=tril, chunk_size=chunk_size)
        if labels is not None and torch.equal(new_labels, labels):
            it -= 1
            break
        labels = new_labels
        new = _update(x, labels, k, centers, min_r2)
        shift = float((new.double() - centers.double()).pow(2).sum())
        centers = new
        if bar is not None:
            bar.update(1)
            bar.set_postfix(inertia=float(min_r2.double().sum()))
        if shift <= thresh:
            break
    if bar is not None:
        bar.close()
    labels, min_r2 = assign(x, centers, diag=diag, tril=tril, chunk_size=chunk_size)
    return KMeansResult(centers, labels, float(min_r2.double().sum()), it)


def _minibatch_step(batch, centers, counts, diag, tril, chunk_size):
    """Sculley's update with per-centre learning rate 1 / count (in place on centers, counts)."""
    k = centers.shape[0]
    lab, _ = assign(batch, centers.to(batch.dtype), diag=diag, tril=tril, chunk_size=chunk_size)
    n_b = torch.bincount(lab, minlength=k).double()
    s_b = torch.zeros_like(centers).index_add_(0, lab, batch.double())
    counts += n_b
    hit = n_b > 0
    centers[hit] += (s_b[hit] - n_b[hit, None] * centers[hit]) / counts[hit, None]


def _minibatch(x, centers, max_iter, tol, diag, tril, batch_size, g, chunk_size, progress):
    k = centers.shape[0]
    c = centers.double().clone()
    counts = torch.zeros(k, dtype=torch.float64, device=x.device)
    thresh = tol * float(x.double().var(0, unbiased=False).mean())
    bar = _bar(max_iter, progress, "mini-batch k-means")
    it = 0
    for it in range(1, max_iter + 1):
        before = c.clone()
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        for s in range(0, x.shape[0], batch_size):
            _minibatch_step(x[perm[s:s + batch_size]], c, counts, diag, tril, chunk_size)
        if bar is not None:
            bar.update(1)
        if float((c - before).pow(2).sum()) <= thresh:
            break
    if bar is not None:
        bar.close()
    centers = c.to(x.dtype)
    labels, min_r2 = assign(x, centers, diag=diag, tril=tril, chunk_size=chunk_size)
    return KMeansResult(centers, labels, float(min_r2.double().sum()), it)


def _kmeans_stream(data, k, init, max_iter, diag, tril, seed, chunk_size, progress):
    """Mini-batch k-means over an iterable of batches, seeded on the first batches (>= 10 k rows)."""
    g = torch.Generator().manual_seed(seed)
    sample, n = [], 0
    for b in _as_batches(data):
        sample.append(b)
        n += b.shape[0]
        if n >= max(10 * k, 1024):
            break
    if not sample:
        raise ValueError("embeddings is an empty iterable")
    first = torch.cat(sample)
    c = _init(first, k, init, diag, tril, g, chunk_size).double()
    counts = torch.zeros(k, dtype=torch.float64, device=first.device)
    bar = _bar(max_iter, progress, "mini-batch k-means")
    it = 0
    for it in range(1, max_iter + 1):
        before = c.clone()
        for b in _as_batches(data):
            _minibatch_step(b, c, counts, diag, tril, chunk_size)
        if bar is not None:
            bar.update(1)
        if float((c - before).pow(2).sum()) <= 1e-12 * float(c.pow(2).sum()):
            break
    if bar is not None:
        bar.close()
    centers = c.to(first.dtype)
    inertia = 0.0
    for b in _as_batches(data):
        inertia += float(assign(b, centers, diag=diag, tril=tril, chunk_size=chunk_size)[1].double().sum())
    return KMeansResult(centers, torch.empty(0, dtype=torch.long), inertia, it)


class _Moved:
    """Re-iterable view of batches moved to the layer's device and dtype."""

    def __init__(self, data, device, dtype):
        self.data, self.device, self.dtype = data, device, dtype

    def __iter__(self):
        for b in _as_batches(self.data):
            yield b.detach().to(self.device, self.dtype)


@torch.no_grad()
def init_centers(module, embeddings, method: str = "kmeans++", *, n_init: int = 1, max_iter: int = 100,
                 tol: float = 1e-4, batch_size: int | None = None, seed: int = 0, progress: bool = False,
                 chunk_size: int | None = None) -> float:
    """Set the centres of an RBF layer (or of ``module.rbf``) by k-means of ``embeddings`` in the
    layer's current metric; returns the inertia (sum of squared distances to the nearest centre).

    ``embeddings``: (N, D) tensor or an iterable of batches (mini-batch k-means). ``method``:
    ``kmeans++`` or ``random`` seeding, followed by Lloyd (or mini-batch) iterations.
    """
    rbf = module.rbf if hasattr(module, "rbf") else module
    if not hasattr(rbf, "set_centers"):
        raise TypeError(f"module must be an RBF layer or have an .rbf RBF layer, got {type(module).__name__}")
    if method not in ("kmeans++", "random"):
        raise ValueError(f"method must be 'kmeans++' or 'random', got {method!r}")
    dev, dt = rbf.centers.device, rbf.centers.dtype
    metric = {k: v.detach() for k, v in rbf.metric_kwargs().items()}
    if isinstance(embeddings, Tensor):
        if embeddings.dim() != 2 or embeddings.shape[1] != rbf.in_features:
            raise ValueError(f"embeddings must have shape (N, {rbf.in_features}), got {tuple(embeddings.shape)}")
        data = embeddings.detach().to(dev, dt)
    else:
        data = _Moved(list(embeddings) if iter(embeddings) is embeddings else embeddings, dev, dt)
    res = kmeans(data, rbf.num_centers, init=method, n_init=n_init, max_iter=max_iter, tol=tol,
                 batch_size=batch_size, seed=seed, chunk_size=chunk_size, progress=progress, **metric)
    rbf.set_centers(res.centers)
    return res.inertia
