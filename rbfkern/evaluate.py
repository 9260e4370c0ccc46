"""Retrieval evaluation of embeddings (cnn-rbf-similarity-metric.txt, Section VII, Fig. 7).

The paper compares the training images that the learned metric (eq. 16), the Euclidean distance
and the cosine distance rank as most similar to a test image. ``precision_at_k`` turns that
comparison into a number: the share of the k retrieved bank rows that have the query's label,
averaged over the queries. The search itself is :func:`rbfkern.retrieval.similar`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .retrieval import similar

METRICS = ("learned", "euclidean", "cosine")


def _labels(name: str, y, n: int, device) -> Tensor:
    t = torch.as_tensor(y, device=device)
    if t.is_floating_point() or t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be ({n},) integer labels, got shape {tuple(t.shape)} dtype {t.dtype}")
    return t


@torch.no_grad()
def precision_at_k(query: Tensor, query_labels, bank: Tensor, bank_labels, k: int, metric: str = "euclidean",
                   metric_module=None) -> float:
    """Mean over queries of |{retrieved rows with the query's label}| / k.

    Args:
        query: (Q, D) embeddings of the queries (e.g. test images).
        query_labels: (Q,) their class labels.
        bank: (M, D) embeddings searched (e.g. the training set); it should not contain the queries.
        bank_labels: (M,) their labels.
        k: results per query, 1 <= k <= M.
        metric: ``learned`` (||b - q||^2_R of eq. 16 with ``metric_module``'s R, via ``similar``),
            ``euclidean`` or ``cosine`` (rows scaled to unit length, then Euclidean: the same
            ranking as the cosine similarity).
        metric_module: an :class:`rbfkern.nn.RBF` or a module with ``.rbf`` (``learned`` only).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    for name, t in (("query", query), ("bank", bank)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor (rows, D), got {getattr(t, 'shape', type(t).__name__)}")
    yq = _labels("query_labels", query_labels, query.shape[0], query.device)
    yb = _labels("bank_labels", bank_labels, bank.shape[0], bank.device)
    if metric == "learned":
        if metric_module is None:
            raise ValueError("metric='learned' needs metric_module (an RBF layer or a module with .rbf)")
        _, idx = similar(query, bank, k, metric_module=metric_module)
    else:
        if metric_module is not None:
            raise ValueError(f"metric_module is only used with metric='learned', got metric={metric!r}")
        if metric == "cosine":
            query = torch.nn.functional.normalize(query, dim=1)
            bank = torch.nn.functional.normalize(bank, dim=1)
        _, idx = similar(query, bank, k)
    return float((yb[idx] == yq[:, None]).double().mean())


def retrieval_precision(query: Tensor, query_labels, bank: Tensor, bank_labels, metric_module,
                        ks=(1, 5, 10)) -> dict:
    """The Fig. 7 comparison as numbers: ``{metric: {k: precision@k}}`` for the learned metric of
    ``metric_module``, the Euclidean and the cosine distance on the same embeddings."""
    out = {}
    for metric in METRICS:
        mod = metric_module if metric == "learned" else None
        out[metric] = {k: precision_at_k(query, query_labels, bank, bank_labels, k, metric, mod) for k in ks}
    return out


__all__ = ["precision_at_k", "retrieval_precision"]
