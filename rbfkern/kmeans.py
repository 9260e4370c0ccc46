"""k-means (k-means++ seeding + Lloyd, or mini-batch) on the fused ``rbf_r2`` op, in any RBF metric.

Distances are computed chunk by chunk with :func:`rbfkern.ops.rbf_r2`, so no (N, C, D) tensor is
ever formed. With a Mahalanobis metric R_j the centre update is still the cluster mean (the mean
minimises sum_i (x_i - c)^T R (x_i - c) for any positive definite R), so Lloyd's algorithm
minimises eq. (10) of cnn-rbf-similarity-metric.txt in the learned metric.

Distributed mode (``distributed=True``, as ``DistributedSampler``/``SyncBatchNorm``: explicit opt-in
and an optional ``process_group``): each rank holds a shard of the rows; per-iteration cluster sums
and counts are all-reduced, so every rank runs Lloyd's algorithm on the union of the shards and
ends with the same centres.
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _backend, ops
from ._chunks import rows_per_chunk
from .ops.rbf import _check_common as _check_rbf_inputs

try:  # tqdm is optional: progress bars only
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


class KMeansResult(NamedTuple):
    centers: Tensor  # (K, D)
    labels: Tensor  # (N,) int64 (empty for iterable data)
    inertia: float  # sum over samples of the squared distance to the nearest centre
    n_iter: int


# Rows gathered for seeding in distributed mode (k-means++ / random run on this sample of the union;
# below it the sample is the union itself, so seeding equals the single-process one).
SEED_ROWS = 1 << 16


class _Comm:
    """The collectives distributed k-means needs over one process group. Inactive (one process),
    every method is the identity, so the single-process and distributed runs share one code path."""

    def __init__(self, distributed: bool = False, process_group=None):
        self.active, self.group, self.rank, self.size = bool(distributed), process_group, 0, 1
        if not self.active:
            if process_group is not None:
                raise ValueError("process_group is only used with distributed=True")
            return
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed=True needs an initialised process group "
                             "(call torch.distributed.init_process_group first)")
        self.rank = dist.get_rank(process_group)
        if self.rank < 0:
            raise ValueError("process_group does not contain this process")
        self.size = dist.get_world_size(process_group)
        self.src = dist.get_global_rank(dist.group.WORLD if process_group is None else process_group, 0)

    def sum_(self, t: Tensor) -> Tensor:
        if self.active:
            dist.all_reduce(t, group=self.group)
        return t

    def broadcast_(self, t: Tensor) -> Tensor:
        """Rank 0's values on every rank (so all ranks agree bitwise)."""
        if self.active:
            dist.broadcast(t, self.src, group=self.group)
        return t

    def gather_rows(self, t: Tensor) -> Tensor:
        """The (n_r, *rest) tensors of all ranks concatenated in rank order (n_r may differ)."""
        if not self.active:
            return t
        n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
        ns = [torch.empty_like(n) for _ in range(self.size)]
        dist.all_gather(ns, n, group=self.group)
        ns = [int(v) for v in ns]
        pad = t.new_zeros((max(ns),) + tuple(t.shape[1:]))
        pad[: t.shape[0]] = t
        parts = [torch.empty_like(pad) for _ in range(self.size)]
        dist.all_gather(parts, pad, group=self.group)
        return torch.cat([p[:m] for p, m in zip(parts, ns)])

    def agree(self, err: str | None, device) -> None:
        """Raise ValueError(err) here and on every other rank when any rank has an error, so a
        bad shard on one rank never leaves the others waiting in a collective."""
        if self.active:
            flag = self.sum_(torch.tensor([float(err is not None)], device=device))
            if err is None and float(flag) > 0:
                raise ValueError("invalid input (embeddings or init) on another rank of the process group; "
                                 "the error raised there names the argument")
        if err is not None:
            raise ValueError(err)

    def shard_sizes(self, n: int, d: int, device) -> list[int]:
        """Rows per rank; every rank raises if the shards' widths D differ or all are empty."""
        table = self.gather_rows(torch.tensor([[n, d]], dtype=torch.long, device=device)).tolist()
        if any(row[1] != d for row in table):
            raise ValueError(f"embeddings must have the same number of columns on every rank, got "
                             f"{[row[1] for row in table]}")
        sizes = [row[0] for row in table]
        if sum(sizes) == 0:
            raise ValueError("embeddings must have at least one row in total, every rank has 0")
        return sizes

    def farthest(self, x: Tensor, min_r2: Tensor, e: int) -> Tensor:
        """The e rows (of the union) farthest from their centre, float64 (empty-cluster reseeding)."""
        top = min_r2.argsort(descending=True)[:e]
        if not self.active:
            return x[top].double()
        cand = self.gather_rows(torch.cat([min_r2[top, None].double(), x[top].double()], 1))
        return cand[cand[:, 0].argsort(descending=True)[:e], 1:]

    def seed_pool(self, x: Tensor, sizes: list[int], k: int, seed: int) -> Tensor:
        """The rows seeding runs on: the union when it has at most max(SEED_ROWS, 16 k) rows, else
        a uniform sample of about that many, each rank contributing in proportion to its shard."""
        if not self.active:
            return x
        total, cap = sum(sizes), max(SEED_ROWS, 16 * k)
        if total > cap:
            g = torch.Generator().manual_seed(seed * 1_000_003 + self.rank)
            m = cap * x.shape[0] // total
            x = x[torch.randperm(x.shape[0], generator=g)[:m].sort().values.to(x.device)]
        return self.gather_rows(x)


def _bar(total, progress, desc, comm=None):
    if progress and tqdm is not None and (comm is None or comm.rank == 0):
        return tqdm(total=total, desc=desc, leave=False)
    return None


def _metric_rows(diag, tril, idx):
    """Per-centre metric rows idx (or the shared metric) for a subset of centre slots."""
    if diag is not None:
        return {"diag": diag if diag.dim() == 1 else diag[idx]}
    if tril is not None:
        return {"tril": tril if tril.dim() == 2 else tril[idx]}
    return {}


def _cpp_metric(x: Tensor, centers: Tensor, diag: Tensor | None, tril: Tensor | None):
    """``(metric array, metric_kind, shared)`` for the C++ passes of k-means (rbf_nearest,
    rbf_min_with), or None where they do not apply: not CPU float32/float64 tensors of one dtype
    under the cpp backend, no centres, or a gradient is wanted (the op path keeps autograd)."""
    ts = [t for t in (x, centers, diag, tril) if t is not None]
    if (not _backend.cpp_takes(x) or centers.shape[0] == 0
            or any(t.dtype != x.dtype or t.device != x.device for t in ts)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in ts))):
        return None
    _check_rbf_inputs(x, centers, diag, tril)  # rbf_r2's checks: shapes, one metric, its values
    metric, kind = (diag, 1) if diag is not None else ((tril, 2) if tril is not None else (x.new_empty(0), 0))
    shared = kind != 0 and metric.dim() == (1 if kind == 1 else 2)
    return metric.detach().contiguous().numpy(), kind, shared


def _fused_nearest(x: Tensor, centers: Tensor, diag: Tensor | None, tril: Tensor | None):
    """``assign`` by the C++ kernel that reduces each row's distances as it computes them (no (N, C)
    matrix; the same values as ``rbf_r2(...).min(1)``), or None where it does not apply."""
    args = _cpp_metric(x, centers, diag, tril)
    if args is None:
        return None
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    best = x.new_empty(x.shape[0])
    _backend.cext().rbf_nearest(x.detach().contiguous().numpy(), centers.detach().contiguous().numpy(), *args,
                                labels.numpy(), best.numpy(), _backend.num_threads())
    return labels, best


def _candidate_floor(x: Tensor, cand: Tensor, metric: dict, closest: Tensor, chunk_size: int | None,
                     m: Tensor) -> Tensor:
    """m (N, t) float64 = min(closest, r2 to candidate t): each row's distance to its nearest centre
    if candidate t joins (k-means++). On CPU one C++ pass, elsewhere rbf_r2 in row chunks + minimum."""
    n, t = x.shape[0], cand.shape[0]
    args = _cpp_metric(x, cand, metric.get("diag"), metric.get("tril"))
    if args is not None:
        _backend.cext().rbf_min_with(x.detach().contiguous().numpy(), cand.detach().contiguous().numpy(), *args,
                                     closest.contiguous().numpy(), m.numpy(), _backend.num_threads())
        return m
    step = chunk_size or rows_per_chunk(t, x.shape[1], x.device)
    for s in range(0, n, step):
        torch.minimum(closest[s:s + step, None], ops.rbf_r2(x[s:s + step], cand, **metric), out=m[s:s + step])
    return m


def assign(x: Tensor, centers: Tensor, *, diag: Tensor | None = None, tril: Tensor | None = None,
           chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Nearest centre of every row of x: ``(labels (N,), min_r2 (N,))``: on CPU one fused C++ pass,
    elsewhere (or when a gradient is wanted) ``rbf_r2`` streamed in row chunks + ``min``."""
    fused = _fused_nearest(x, centers, diag, tril)
    if fused is not None:
        return fused
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
    m = torch.empty(n, trials, dtype=torch.float64, device=x.device)  # reused: fresh pages cost more than the pass
    for j in range(1, k):
        weights = closest.clamp_min(0)
        if float(weights.sum()) <= 0:  # every point sits on a centre: pick uniformly
            weights = torch.ones_like(weights)
        cand = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator).to(x.device)
        cand_c = x[cand]
        _candidate_floor(x, cand_c, _metric_rows(diag, tril, torch.full((trials,), j, dtype=torch.long)),
                         closest, chunk_size, m)
        best = int(m.sum(0).argmin())
        centers[j] = cand_c[best]
        closest = m[:, best].clone()  # m is the next step's output buffer
    return centers


# Elements per isfinite pass: bounds the temporary bool mask of the finiteness check.
_FINITE_CHUNK = 1 << 24


def _all_finite(x: Tensor) -> bool:
    """Whether every element of x is finite: one pass over x and one host sync, chunked so the
    temporary mask stays small for large inputs."""
    if x.numel() <= _FINITE_CHUNK or x.dim() == 0:
        return bool(torch.isfinite(x).all())
    rows = max(1, _FINITE_CHUNK // max(1, x[0].numel()))
    flags = torch.stack([torch.isfinite(x[s:s + rows]).all() for s in range(0, x.shape[0], rows)])
    return bool(flags.all())


def _int_arg(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def _batch_error(b, d: int | None) -> str | None:
    """Why a streamed batch is unusable (None when it is fine): not a (B, D) floating tensor, or non-finite."""
    if not isinstance(b, Tensor) or b.dim() != 2 or (d is not None and b.shape[1] != d):
        want = "(B, D)" if d is None else f"(B, {d})"
        return f"embeddings batches must be tensors of shape {want}, got {getattr(b, 'shape', type(b).__name__)}"
    if not _all_finite(b):
        return "embeddings (x) must be finite: a batch has NaN or infinite values"
    return None


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
    distributed: bool = False,
    process_group=None,
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
        distributed: ``x`` is this rank's shard of the data (any number of rows, 0 included) and
            every rank of ``process_group`` (default: the world) calls ``kmeans`` with the same
            arguments. Cluster sums and counts are all-reduced each iteration, so the result is
            k-means of the union of the shards, the same on every rank (centres bitwise). Seeding
            (``kmeans++`` / ``random``) runs on the gathered union (a uniform sample of
            ``max(SEED_ROWS, 16 k)`` rows when larger); an ``init`` tensor is taken from rank 0.
            Mini-batch steps combine one batch of every rank. ``labels`` are this shard's,
            ``inertia`` is the total.
        process_group: the ``torch.distributed`` group (only with ``distributed=True``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (num_centers) must be a positive int, got {k!r}")
    if isinstance(init, str) and init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++', 'random' or a (K, D) tensor, got {init!r}")
    if not isinstance(init, (str, Tensor)):
        raise TypeError(f"init must be 'kmeans++', 'random' or a (K, D) tensor, got {type(init).__name__}")
    n_init = _int_arg("n_init", n_init, 1)
    max_iter = _int_arg("max_iter", max_iter, 0)
    if batch_size is not None:
        _int_arg("batch_size", batch_size, 1)
    if chunk_size is not None:
        _int_arg("chunk_size", chunk_size, 1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    comm = _Comm(distributed, process_group)
    if not isinstance(x, Tensor):
        return _kmeans_stream(x, k, init, max_iter, diag, tril, seed, chunk_size, progress, comm)
    err = None
    if x.dim() != 2 or (x.shape[0] == 0 and not comm.active):
        err = f"embeddings must have shape (N, D) with N >= 1, got {tuple(x.shape)}"
    elif isinstance(init, Tensor) and tuple(init.shape) != (k, x.shape[1]):
        err = f"init must have shape ({k}, {x.shape[1]}), got {tuple(init.shape)}"
    elif not _all_finite(x):
        err = "embeddings (x) must be finite, got NaN or infinite values"
    elif isinstance(init, Tensor) and not _all_finite(init.detach()):
        err = "init must be finite, got NaN or infinite values"
    comm.agree(err, x.device)
    sizes = comm.shard_sizes(x.shape[0], x.shape[1], x.device) if comm.active else [x.shape[0]]
    best = None
    for r in range(max(1, n_init if not isinstance(init, Tensor) else 1)):
        g = torch.Generator().manual_seed(seed + r)
        c0 = _init(x, k, init, diag, tril, g, chunk_size, comm, sizes, seed + r)
        if batch_size is not None and batch_size < sum(sizes):
            res = _minibatch(x, c0, max_iter, tol, diag, tril, batch_size, g, chunk_size, progress, comm, sizes)
        else:
            res = _lloyd(x, c0, max_iter, tol, diag, tril, chunk_size, progress, comm)
        if best is None or res.inertia < best.inertia:
            best = res
    return best


def _init(x, k, init, diag, tril, g, chunk_size, comm, sizes, seed):
    if isinstance(init, Tensor):
        return comm.broadcast_(init.detach().to(x.device, x.dtype).clone())
    pool = comm.seed_pool(x, sizes, k, seed)
    if pool.shape[0] < k:
        raise ValueError(f"embeddings must have at least num_centers={k} rows, got {pool.shape[0]}")
    if init == "random":
        c = pool[torch.randperm(pool.shape[0], generator=g)[:k].to(x.device)].clone()
    else:
        c = kmeans_plusplus(pool, k, diag=diag, tril=tril, generator=g, chunk_size=chunk_size)
    return comm.broadcast_(c)


def _mean_var(x, comm):
    """Mean per-feature variance of the rows (of the union), for the stopping threshold."""
    if not comm.active:
        return float(x.double().var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
    xd = x.double()
    s = comm.sum_(torch.cat([xd.sum(0), xd.new_tensor([x.shape[0]])]))
    n = float(s[-1])
    ss = comm.sum_((xd - s[:-1] / n).pow(2).sum(0))
    return float((ss / n).mean()) if n > 1 else 0.0


def _sums_into(buf: Tensor, x: Tensor, labels: Tensor, k: int) -> None:
    """buf[:k*d] = per-cluster float64 sums (K, D) of the rows of x, buf[k*d:k*d+k] = counts: on CPU
    one C++ pass (each cluster's rows added in row order), elsewhere index_add_ + bincount."""
    d = x.shape[1]
    sums, counts = buf[: k * d].view(k, d), buf[k * d: k * d + k]
    if _backend.cpp_takes(x):
        _backend.cext().rbf_cluster_sums(x.detach().contiguous().numpy(), labels.contiguous().numpy(), k,
                                         sums.numpy(), counts.numpy(), _backend.num_threads())
        return
    sums.zero_().index_add_(0, labels, x.double())
    counts.copy_(torch.bincount(labels, minlength=k))


def _cluster_sums(x, labels, k, changed, comm):
    """Per-cluster float64 sums (K, D), counts (K,) and whether any rank's labels changed."""
    d = x.shape[1]
    buf = torch.empty(k * d + k + 1, dtype=torch.float64, device=x.device)
    _sums_into(buf, x, labels, k)
    buf[-1] = float(changed)
    comm.sum_(buf)
    return buf[: k * d].view(k, d), buf[k * d: -1], bool(buf[-1] > 0)


def _update(x, sums, counts, centers, min_r2, comm):
    """Cluster means; empty clusters move to the points farthest from their centre."""
    new = centers.double().clone()
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    empty = (~full).nonzero().flatten()
    if empty.numel():
        new[empty] = comm.farthest(x, min_r2, empty.numel())
    return new.to(x.dtype)


def _lloyd(x, centers, max_iter, tol, diag, tril, chunk_size, progress, comm):
    k = centers.shape[0]
    thresh = tol * _mean_var(x, comm)
    bar = _bar(max_iter, progress, "k-means", comm)
    labels = None
    it = 0
    for it in range(1, max_iter + 1):
        new_labels, min_r2 = assign(x, centers, diag=diag, tril=tril, chunk_size=chunk_size)
        changed = labels is None or not torch.equal(new_labels, labels)
        sums, counts, changed = _cluster_sums(x, new_labels, k, changed, comm)
        if not changed:
            it -= 1
            break
        labels = new_labels
        new = _update(x, sums, counts, centers, min_r2, comm)
        shift = float((new.double() - centers.double()).pow(2).sum())
        centers = new
        if bar is not None:
            bar.update(1)
            bar.set_postfix(inertia=float(min_r2.double().sum()))
        if shift <= thresh:
            break
    if bar is not None:
        bar.close()
    centers = comm.broadcast_(centers)
    labels, min_r2 = assign(x, centers, diag=diag, tril=tril, chunk_size=chunk_size)
    return KMeansResult(centers, labels, float(comm.sum_(min_r2.double().sum())), it)


def _minibatch_step(batch, centers, counts, diag, tril, chunk_size, comm):
    """Sculley's update with per-centre learning rate 1 / count (in place on centers, counts);
    distributed, the batch is the union of one batch per rank."""
    k = centers.shape[0]
    lab, _ = assign(batch, centers.to(batch.dtype), diag=diag, tril=tril, chunk_size=chunk_size)
    d = centers.shape[1]
    buf = torch.empty(k * d + k, dtype=torch.float64, device=centers.device)
    _sums_into(buf, batch, lab, k)
    comm.sum_(buf)
    s_b, n_b = buf[: k * d].view(k, d), buf[k * d:]
    counts += n_b
    hit = n_b > 0
    centers[hit] += (s_b[hit] - n_b[hit, None] * centers[hit]) / counts[hit, None]


def _minibatch(x, centers, max_iter, tol, diag, tril, batch_size, g, chunk_size, progress, comm, sizes):
    k = centers.shape[0]
    c = centers.double().clone()
    counts = torch.zeros(k, dtype=torch.float64, device=x.device)
    thresh = tol * _mean_var(x, comm)
    bar = _bar(max_iter, progress, "mini-batch k-means", comm)
    it = 0
    for it in range(1, max_iter + 1):
        before = c.clone()
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        for s in range(0, max(sizes), batch_size):  # lockstep: every rank takes as many steps
            _minibatch_step(x[perm[s:s + batch_size]], c, counts, diag, tril, chunk_size, comm)
        if bar is not None:
            bar.update(1)
        if float((c - before).pow(2).sum()) <= thresh:
            break
    if bar is not None:
        bar.close()
    centers = comm.broadcast_(c.to(x.dtype))
    labels, min_r2 = assign(x, centers, diag=diag, tril=tril, chunk_size=chunk_size)
    return KMeansResult(centers, labels, float(comm.sum_(min_r2.double().sum())), it)


def _lockstep(data, comm, like):
    """The batches of ``data``; distributed, empty batches after this rank's last until every
    rank is done, so all ranks take the same number of (collective) steps."""
    d = like.shape[1]
    if not comm.active:
        for b in _as_batches(data):
            err = _batch_error(b, d)
            if err is not None:
                raise ValueError(err)
            yield b
        return
    it = _as_batches(data)
    while True:
        b = next(it, None)
        err = None if b is None else _batch_error(b, d)
        flags = comm.sum_(torch.tensor([float(b is not None), float(err is not None)], device=like.device)).tolist()
        if flags[1]:
            raise ValueError(err or "invalid embeddings batch on another rank of the process group; "
                             "the error raised there names the problem")
        if not flags[0]:
            return
        yield b if b is not None else like[:0]


def _kmeans_stream(data, k, init, max_iter, diag, tril, seed, chunk_size, progress, comm):
    """Mini-batch k-means over an iterable of batches, seeded on the first batches (>= 10 k rows
    on each rank)."""
    g = torch.Generator().manual_seed(seed)
    sample, n = [], 0
    for b in _as_batches(data):
        sample.append(b)
        n += b.shape[0]
        if n >= max(10 * k, 1024):
            break
    err = None
    if not sample:
        err = "embeddings is an empty iterable"
    elif any(not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != sample[0].shape[1] for b in sample):
        err = f"embeddings batches must have shape (B, D), got {[tuple(getattr(b, 'shape', ())) for b in sample]}"
    else:
        err = next((e for e in (_batch_error(b, None) for b in sample) if e is not None), None)
    if not comm.active:
        comm.agree(err, None)
        first = torch.cat(sample)
        sizes = [first.shape[0]]
    else:  # every rank checks the others, so a bad shard raises everywhere instead of hanging
        dev = sample[0].device if sample else torch.device("cpu")
        comm.agree(err, dev)
        first = torch.cat(sample)
        sizes = comm.shard_sizes(first.shape[0], first.shape[1], dev)
    c = _init(first, k, init, diag, tril, g, chunk_size, comm, sizes, seed).double()
    counts = torch.zeros(k, dtype=torch.float64, device=first.device)
    bar = _bar(max_iter, progress, "mini-batch k-means", comm)
    it = 0
    for it in range(1, max_iter + 1):
        before = c.clone()
        for b in _lockstep(data, comm, first):
            _minibatch_step(b, c, counts, diag, tril, chunk_size, comm)
        if bar is not None:
            bar.update(1)
        if float((c - before).pow(2).sum()) <= 1e-12 * float(c.pow(2).sum()):
            break
    if bar is not None:
        bar.close()
    centers = comm.broadcast_(c.to(first.dtype))
    # inertia and a bad-batch count, summed over ranks in one collective at the end
    acc = torch.zeros(2, dtype=torch.float64, device=first.device)
    err = None
    for b in _as_batches(data):
        e = _batch_error(b, first.shape[1])
        if e is not None:
            err = err or e
            acc[1] += 1
            continue
        acc[0] += assign(b, centers, diag=diag, tril=tril, chunk_size=chunk_size)[1].double().sum()
    acc = comm.sum_(acc)
    if float(acc[1]):
        raise ValueError(err or "invalid embeddings batch on another rank of the process group; "
                         "the error raised there names the problem")
    return KMeansResult(centers, torch.empty(0, dtype=torch.long), float(acc[0]), it)


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
                 chunk_size: int | None = None, distributed: bool = False, process_group=None) -> float:
    """Set the centres of an RBF layer (or of ``module.rbf``) by k-means of ``embeddings`` in the
    layer's current metric; returns the inertia (sum of squared distances to the nearest centre).

    ``embeddings``: (N, D) tensor or an iterable of batches (mini-batch k-means). ``method``:
    ``kmeans++`` or ``random`` seeding, followed by Lloyd (or mini-batch) iterations.
    ``distributed=True``: ``embeddings`` is this rank's shard, every rank of ``process_group``
    (default: the world) calls ``init_centers`` and all end with the same centres, those of
    k-means on the union of the shards (see :func:`kmeans`); the layer's metric must be the
    same on every rank (as after DDP's initial broadcast).
    """
    rbf = module.rbf if hasattr(module, "rbf") else module
    if not hasattr(rbf, "set_centers"):
        raise TypeError(f"module must be an RBF layer or have an .rbf RBF layer, got {type(module).__name__}")
    if method not in ("kmeans++", "random"):
        raise ValueError(f"method must be 'kmeans++' or 'random', got {method!r}")
    comm = _Comm(distributed, process_group)
    dev, dt = rbf.centers.device, rbf.centers.dtype
    metric = {k: v.detach() for k, v in rbf.metric_kwargs().items()}
    if isinstance(embeddings, Tensor):
        err = None
        if embeddings.dim() != 2 or embeddings.shape[1] != rbf.in_features:
            err = f"embeddings must have shape (N, {rbf.in_features}), got {tuple(embeddings.shape)}"
        comm.agree(err, dev)
        data = embeddings.detach().to(dev, dt)
    else:
        data = _Moved(list(embeddings) if iter(embeddings) is embeddings else embeddings, dev, dt)
    res = kmeans(data, rbf.num_centers, init=method, n_init=n_init, max_iter=max_iter, tol=tol,
                 batch_size=batch_size, seed=seed, chunk_size=chunk_size, progress=progress,
                 distributed=distributed, process_group=process_group, **metric)
    rbf.set_centers(res.centers)
    return res.inertia
