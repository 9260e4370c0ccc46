"""Similar / dissimilar sample retrieval under a learned RBF metric (cnn-rbf-similarity-metric.txt,
eq. 16-17), streamed over the bank with a running top-k: memory O(Q * k + chunk * Q).

Per-centre metrics and ``largest=True`` stream the fused ``rbf_r2`` op. Euclidean and shared
metrics map to Euclidean coordinates, take GEMM candidates (on CPU a fused C++ search:
:mod:`rbfkern.knn_candidates`) and re-rank them exactly (certified per query by a rounding bound;
uncertified queries fall back to the op), as fast as a GEMM search."""
from __future__ import annotations

import torch
from torch import Tensor

from . import knn_candidates, ops
from ._chunks import rows_per_chunk, running_topk
from .ops import _checks


def _layer(metric_module, d: int, device: torch.device):
    """The RBF layer whose metric is used (None for Euclidean), checked against D."""
    if metric_module is None:
        return None
    rbf = metric_module.rbf if hasattr(metric_module, "rbf") else metric_module
    if not hasattr(rbf, "metric_kwargs"):
        raise TypeError(f"metric_module must be an RBF layer or have an .rbf RBF layer, got {type(metric_module).__name__}")
    if rbf.in_features != d:
        raise ValueError(f"metric_module has in_features={rbf.in_features} but query and bank have D={d}")
    if rbf.centers.device != device:
        raise ValueError(f"metric_module is on {rbf.centers.device} but query and bank are on {device}; "
                         "move them to one device")
    return rbf


def _euclidean_coords(rbf, query: Tensor, bank: Tensor):
    """(query, bank) mapped so that the layer's shared metric becomes Euclidean, or None when the
    metric is per-centre (x -> x * sqrt(w) for a diagonal, x -> x L for a factor L)."""
    if rbf is None:
        return query, bank
    if rbf.metric not in ("none", "shared_diag", "shared_full"):
        return None
    kw = {k: v.detach().to(query.dtype) for k, v in rbf.metric_kwargs().items()}
    if "diag" in kw:
        s = kw["diag"].sqrt()
        return query * s, bank * s
    if "tril" in kw:
        low = torch.tril(kw["tril"])
        return query @ low, bank @ low
    return query, bank


def _gemm_topk(query: Tensor, bank: Tensor, k: int, step: int | None):
    """Exact k nearest rows for the queries it can certify (Euclidean coordinates).

    Candidates: the kk = 2k + 16 smallest GEMM-expanded values |b|^2 - 2 q.b per query
    (:mod:`rbfkern.knn_candidates`: the fused C++ search on CPU, addmm + sort elsewhere; fast, but
    the expansion cancels), re-ranked by the difference form |q - b|^2. A query is certified when
    every non-candidate is provably farther than its k-th result: its kk-th expanded value less the
    expansion's rounding bound exceeds the k-th exact distance (``knn_candidates.certified``).
    ``step``: bank rows per step (None: the search's default). Returns (r2, index, ok).
    """
    q, m = query.shape[0], bank.shape[0]
    kk = min(m, 2 * k + 16)
    if kk == m:  # every row is a candidate
        best_i = torch.arange(m, device=query.device).expand(q, m)
    else:
        best_v, best_i, bmax, g = knn_candidates.candidates(query, bank, kk, step)
    ev, ei = _rerank(query, bank, best_i.clamp(min=0), k)  # -1 (unfilled): never certified
    if kk == m:
        return ev, ei, torch.ones(q, dtype=torch.bool, device=query.device)
    return ev, ei, knn_candidates.certified(query, best_v, best_i, bmax, g, ev)


def _rerank(query: Tensor, bank: Tensor, cand: Tensor, k: int):
    """The k nearest of each query's candidate rows ``cand`` (Q, kk) by the difference form,
    in blocks of queries that keep the (rows, kk, D) differences near 4M values."""
    q, kk, d = query.shape[0], cand.shape[1], query.shape[1]
    rows = max(1, (1 << 22) // max(1, kk * d))
    ev, ei = [], []
    for s in range(0, q, rows):
        c = cand[s:s + rows]
        exact = ((query[s:s + rows, None, :] - bank[c]) ** 2).sum(-1)
        v, pos = exact.topk(k, dim=1, largest=False, sorted=True)
        ev.append(v)
        ei.append(c.gather(1, pos))
    if not ev:
        return query.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=query.device)
    return torch.cat(ev), torch.cat(ei)


def _metric_for_queries(rbf, query: Tensor) -> dict:
    """Metric arguments for rbf_r2(bank, query, ...): the layer's shared metric, or, for a
    per-centre metric, the metric of each query's nearest centre (one R per query)."""
    if rbf is None:
        return {}
    kw = {k: v.detach().to(query.dtype) for k, v in rbf.metric_kwargs().items()}
    if rbf.metric in ("none", "shared_diag", "shared_full"):
        return kw
    nearest = ops.rbf_r2(query, rbf.centers.detach().to(query.dtype), **kw).argmin(1)
    return {name: t[nearest] for name, t in kw.items()}


@torch.no_grad()
def similar(
    query: Tensor,
    bank: Tensor,
    k: int,
    metric_module=None,
    largest: bool = False,
    chunk_size: int | None = None,
    fast: bool = True,
) -> tuple[Tensor, Tensor]:
    """The k most similar (or, with ``largest=True``, most dissimilar) rows of ``bank`` per query.

    Args:
        query: (Q, D) embeddings (the RBF inputs of the test samples).
        bank: (M, D) embeddings to search (e.g. the training set).
        k: results per query, 1 <= k <= M.
        metric_module: an :class:`rbfkern.nn.RBF` (or a module with ``.rbf``) whose learned metric
            R defines ||b - q||^2_R (eq. 16-17); a per-centre metric uses the R_j of the query's
            nearest centre. A module with ``input_mean``/``input_scale`` (a fitted RBFNetwork)
            standardises both sides first. None: Euclidean.
        largest: return the most dissimilar rows (eq. 17) instead.
        chunk_size: bank rows per step, which bounds the extra memory (default: about 4M distances
            per step for the fused op; the CPU candidate search packs about 1 MiB of bank per step,
            memory ~ (chunk_size + Q) * (D + 1) values beside the (Q, 2k + 16) candidates).
        fast: for Euclidean and shared metrics (``largest=False``), find candidates with a GEMM and
            re-rank them exactly, falling back to the fused op for any query whose result the
            rounding bound cannot certify; False: always stream the fused ``rbf_r2`` op.

    Returns:
        ``(r2, index)``, both (Q, k): squared distances sorted ascending (descending with
        ``largest``) and the bank row of each.
    """
    for name, t in (("query", query), ("bank", bank)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor (rows, D), got {getattr(t, 'shape', type(t).__name__)}")
    if query.shape[1] != bank.shape[1]:
        raise ValueError(f"bank must have shape (M, {query.shape[1]}) to match query, got {tuple(bank.shape)}")
    _checks.tensor("query", query)
    _checks.tensor("bank", bank)
    _checks.same_device_dtype("query", query, bank=bank)  # a mix only where autocast merges dtypes
    if bank.dtype != query.dtype:
        dt = torch.promote_types(query.dtype, bank.dtype)
        query, bank = query.to(dt), bank.to(dt)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be an int in [1, {bank.shape[0]}] (the bank size), got {k!r}")
    rbf = _layer(metric_module, query.shape[1], query.device)
    if metric_module is not None and hasattr(metric_module, "input_mean"):
        mean, scale = metric_module.input_mean.to(query.dtype), metric_module.input_scale.to(query.dtype)
        query, bank = (query - mean) / scale, (bank - mean) / scale
    coords = None if largest or not fast else _euclidean_coords(rbf, query, bank)
    if coords is None:
        return _stream_topk(query, bank, k, _metric_for_queries(rbf, query), largest, chunk_size)
    # Shared metric: GEMM candidates + exact re-rank, certified per query; the rest use the op.
    v, i, ok = _gemm_topk(*coords, k, chunk_size)
    if not bool(ok.all()):
        rest = (~ok).nonzero().flatten()
        metric = _metric_for_queries(rbf, query[rest])
        v[rest], i[rest] = _stream_topk(query[rest], bank, k, metric, False, chunk_size)
    return v, i


def _stream_topk(query: Tensor, bank: Tensor, k: int, metric: dict, largest: bool, chunk_size: int | None):
    """Running top-k over bank chunks of the fused rbf_r2 op."""
    q, m = query.shape[0], bank.shape[0]
    step = chunk_size or rows_per_chunk(q, query.shape[1], query.device)
    chunks = ((s, ops.rbf_r2(bank[s:s + step], query, **metric).T) for s in range(0, m, step))  # (Q, B) each
    return running_topk(chunks, query, k, largest)
