"""The classic two-stage RBF network (tinyml-rbf-networks.md, Sections 2-4).

Stage 1 places the centres (k-means, random rows, orthogonal least squares or given) and sets the
widths (nearest-centre heuristic or given) and, optionally, a Mahalanobis metric estimated from the
clusters; stage 2 solves the output weights by ridge regression in closed form. ``select`` picks
the number of centres and lambda by closed-form GCV or LOO.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from .._chunks import rows_per_chunk
from ..kmeans import assign, kmeans
from ..ols import ols_select
from ..ops import _checks
from ..ridge import Ridge
from .rbf import KINDS, METRICS, RBF, _positive_int, _sigma_tensor

try:  # tqdm is optional: progress bars only
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

TASKS = ("regression", "classification")
CENTER_METHODS = ("kmeans", "random", "ols")
DEFAULT_LAMS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _as_tensor(name: str, a, dtype=None) -> Tensor:
    t = a if isinstance(a, Tensor) else torch.as_tensor(a)
    if dtype is not None:
        t = t.to(dtype)
    return t.detach()


class RBFNetwork(nn.Module):
    """Classic RBF network y = W h(||x - c_j||^2_R) + b, fitted in two stages.

    Args:
        num_centers: C (ignored by ``select``, which tries ``n_centers_grid``).
        kind: activation (see :func:`rbfkern.ops.rbf`); the text uses ``gaussian``.
        metric: ``none`` (Euclidean, widths sigma_j), or ``diag`` / ``shared_diag`` / ``full`` /
            ``shared_full``: R_j is the inverse (per-cluster, shrunk toward the pooled) within-cluster
            covariance.
        centers: ``kmeans``, ``random`` (rows of X), ``ols`` (orthogonal least squares), or a (C, D)
            tensor of centres (in input units).
        sigma: a positive float, a (C,) tensor, or None: nearest-centre heuristic
            sigma_j = width_scale * min_k ||c_k - c_j||_{R_j} (Euclidean for metric ``none``), or
            for ``ols`` a global d_max / sqrt(2 C) (it must be known before the centres are).
        lam: ridge parameter (the bias is not penalised).
        task: ``regression`` (targets (N,) or (N, K)) or ``classification`` (integer labels,
            one-hot encoded; ``predict`` returns labels).
        standardize: fit on (x - mean) / std (buffers ``input_mean``, ``input_scale``).
        max_candidates: OLS candidate pool size (random rows of X).
        progress: tqdm bars for k-means and for the ``select`` grid.

    After :meth:`fit`: ``.rbf`` (an :class:`RBF`), ``.out`` (Linear with bias), ``.classes_``.
    """

    def __init__(self, num_centers: int, kind: str = "gaussian", metric: str = "none", centers="kmeans",
                 sigma: float | Tensor | None = None, lam: float = 0.0, task: str = "regression",
                 standardize: bool = False, width_scale: float = 1.0, shape: float = 0.5, seed: int = 0,
                 max_iter: int = 100, max_candidates: int = 2000, progress: bool = False):
        super().__init__()
        self.num_centers = _positive_int("num_centers", num_centers)
        _checks.choice("kind", kind, KINDS)
        _checks.choice("metric", metric, METRICS)
        _checks.choice("task", task, TASKS)
        if isinstance(centers, Tensor):
            if centers.dim() != 2 or centers.shape[0] != num_centers:
                raise ValueError(f"centers must be a method name {CENTER_METHODS} or a tensor of shape ({num_centers}, D), got shape {tuple(centers.shape)}")
        else:
            _checks.choice("centers", centers, CENTER_METHODS)
        if sigma is not None:
            _sigma_tensor(sigma, num_centers)  # validates
        self.lam = _checks.finite_float("lam", lam)
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        self.kind, self.metric, self.centers, self.sigma, self.task = kind, metric, centers, sigma, task
        self.standardize = bool(standardize)
        self.width_scale = _checks.finite_float("width_scale", width_scale, positive=True)
        self.shape = _checks.finite_float("shape", shape)
        self.seed, self.max_iter, self.max_candidates, self.progress = seed, max_iter, max_candidates, progress
        self.register_buffer("input_mean", torch.zeros(0))
        self.register_buffer("input_scale", torch.ones(0))
        self.classes_: Tensor | None = None
        self._squeeze = False
        self.fitted = False

    # -- state -------------------------------------------------------------------------------------
    def get_extra_state(self):
        return {"task": self.task, "classes": None if self.classes_ is None else self.classes_.tolist(),
                "squeeze": self._squeeze, "fitted": self.fitted, "lam": self.lam}

    def set_extra_state(self, state):
        self.task, self._squeeze, self.fitted, self.lam = state["task"], state["squeeze"], state["fitted"], state["lam"]
        self.classes_ = None if state["classes"] is None else torch.tensor(state["classes"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also loads into an unfitted network: the layers are built from the saved shapes."""
        if "rbf.centers" in state_dict and not hasattr(self, "rbf"):
            c, d = state_dict["rbf.centers"].shape
            self._build(d, c, state_dict["out.weight"].shape[0], state_dict["rbf.centers"].dtype,
                        state_dict["rbf.centers"].device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _build(self, d: int, c: int, k: int, dtype, device) -> None:
        self.num_centers = c
        self.rbf = RBF(d, c, metric=self.metric, kind=self.kind, shape=self.shape, device=device, dtype=dtype)
        self.out = nn.Linear(c, k, device=device, dtype=dtype)
        self.input_mean = torch.zeros(d, dtype=dtype, device=device)
        self.input_scale = torch.ones(d, dtype=dtype, device=device)

    # -- data --------------------------------------------------------------------------------------
    def _prepare(self, X, y):
        X = _as_tensor("X", X)
        if not X.is_floating_point():
            X = X.to(torch.get_default_dtype())
        if X.dim() == 1:
            X = X[:, None]
        if X.dim() != 2 or X.shape[0] < 2:
            raise ValueError(f"X must have shape (N, D) with N >= 2, got {tuple(X.shape)}")
        if not bool(torch.isfinite(X).all()):
            raise ValueError("X must be finite, got NaN or infinite values")
        y = _as_tensor("y", y).to(X.device)
        if y.dim() == 0 or y.shape[0] != X.shape[0] or y.dim() > 2:
            raise ValueError(f"y must have shape ({X.shape[0]},) or ({X.shape[0]}, K) to match X, got {tuple(y.shape)}")
        if self.task == "classification":
            if y.dim() != 1 or y.is_floating_point() and not bool((y == y.round()).all()):
                raise ValueError(f"y must be a (N,) vector of integer class labels for task='classification', got shape {tuple(y.shape)} dtype {y.dtype}")
            classes, inv = torch.unique(y, return_inverse=True)
            T = nn.functional.one_hot(inv, len(classes)).double()
            squeeze = False
        else:
            classes, squeeze = None, y.dim() == 1
            T = y.double().reshape(X.shape[0], -1)
            if not bool(torch.isfinite(T).all()):
                raise ValueError("y must be finite for task='regression', got NaN or infinite values")
        x64 = X.double()
        if self.standardize:
            mean, scale = x64.mean(0), x64.std(0, unbiased=False)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        else:
            mean, scale = torch.zeros(X.shape[1], dtype=torch.float64), torch.ones(X.shape[1], dtype=torch.float64)
        mean, scale = mean.to(X.device), scale.to(X.device)
        return {"X": X, "Z": (x64 - mean) / scale, "T": T, "classes": classes, "squeeze": squeeze,
                "mean": mean, "scale": scale}

    # -- stage 1 -----------------------------------------------------------------------------------
    def _stage1(self, data, c: int) -> dict:
        Z, T = data["Z"], data["T"]
        n, d = Z.shape
        g = torch.Generator().manual_seed(self.seed)
        sigma = self.sigma
        if isinstance(self.centers, Tensor):
            cen = (self.centers.to(Z.device).double() - data["mean"]) / data["scale"]
        elif c > n:
            raise ValueError(f"num_centers={c} exceeds the number of training samples {n}")
        elif self.centers == "random":
            cen = Z[torch.randperm(n, generator=g)[:c].to(Z.device)].clone()
        elif self.centers == "kmeans":
            cen = kmeans(Z, c, seed=self.seed, max_iter=self.max_iter, progress=self.progress).centers
        else:  # ols
            cand = Z[torch.randperm(n, generator=g)[: self.max_candidates].to(Z.device)]
            if sigma is None:
                dmax = float(ops.rbf_r2(cand, cand).max().sqrt())
                sigma = dmax / math.sqrt(2 * c) if dmax > 0 else 1.0
            s_sel = float(_sigma_tensor(sigma, c).mean()) if isinstance(sigma, Tensor) else sigma
            phi = self._design(Z, cand, s_sel, {})
            idx, _ = ols_select(phi, T, c)
            if idx.numel() < c:
                raise ValueError(f"OLS found only {idx.numel()} independent centres, fewer than num_centers={c}")
            cen = cand[idx]
        metric = self._metric(Z, cen)
        if sigma is None:
            sigma = self._width_heuristic(Z, cen, metric)
        return {"centers": cen, "sigma": _sigma_tensor(sigma, c), "metric": metric}

    def _width_heuristic(self, Z: Tensor, cen: Tensor, metric: dict) -> Tensor:
        """sigma_j = width_scale * min_k ||c_k - c_j||_{R_j} (Euclidean for metric none)."""
        c = cen.shape[0]
        if c == 1:
            rms = float(assign(Z, cen, **metric)[1].mean().sqrt())
            return torch.tensor([rms if rms > 0 else 1.0], dtype=torch.float64)
        dist = ops.rbf_r2(cen, cen, **metric).sqrt()  # dist[k, j]: centre k in the metric of centre j
        dist = torch.where(dist > 0, dist, torch.full_like(dist, math.inf))  # self and duplicates
        near = dist.min(0).values
        fallback = float(near[torch.isfinite(near)].mean()) if bool(torch.isfinite(near).any()) else 1.0
        near = torch.where(torch.isfinite(near), near, torch.full_like(near, fallback))
        return self.width_scale * near

    def _metric(self, Z: Tensor, cen: Tensor) -> dict:
        """R_j = inverse within-cluster covariance (per cluster shrunk toward the pooled one)."""
        if self.metric == "none":
            return {}
        c, d = cen.shape
        labels, _ = assign(Z, cen)
        diff = Z - cen[labels]
        counts = torch.bincount(labels, minlength=c).double()
        n = Z.shape[0]
        if self.metric.endswith("diag"):
            pooled = (diff ** 2).sum(0) / n
            pooled = pooled + 1e-6 * float(pooled.mean()) + 1e-12
            if self.metric == "shared_diag":
                return {"diag": 1.0 / pooled}
            m = 2.0
            per = torch.zeros(c, d, dtype=torch.float64, device=Z.device).index_add_(0, labels, diff ** 2)
            return {"diag": (counts[:, None] + m) / (per + m * pooled)}
        outer = diff[:, :, None] * diff[:, None, :]
        pooled = outer.sum(0) / n
        pooled = pooled + (1e-6 * float(torch.diagonal(pooled).mean()) + 1e-12) * torch.eye(d, dtype=torch.float64, device=Z.device)
        if self.metric == "shared_full":
            return {"tril": torch.linalg.cholesky(torch.linalg.inv(pooled))}
        m = d + 1.0
        per = torch.zeros(c, d, d, dtype=torch.float64, device=Z.device).index_add_(0, labels, outer)
        cov = (per + m * pooled) / (counts[:, None, None] + m)
        return {"tril": torch.linalg.cholesky(torch.linalg.inv(cov))}

    def _design(self, Z: Tensor, cen: Tensor, sigma, metric: dict) -> Tensor:
        """H (N, C) in float64, computed by the fused op in row chunks."""
        step = rows_per_chunk(cen.shape[0], Z.shape[1], Z.device)
        return torch.cat([
            ops.rbf(Z[s:s + step], cen, sigma=sigma, kind=self.kind, shape=self.shape, **metric)
            for s in range(0, Z.shape[0], step)
        ])

    # -- fitting -----------------------------------------------------------------------------------
    def _install(self, data, st1, ridge: Ridge, lam: float) -> None:
        X = data["X"]
        w, b = ridge.weights(lam)
        c, d = st1["centers"].shape
        self._build(d, c, w.shape[1], X.dtype, X.device)
        with torch.no_grad():
            self.rbf.set_centers(st1["centers"].to(X.dtype))
            self.rbf.set_sigma(st1["sigma"])
            if "diag" in st1["metric"]:
                self.rbf.set_diag(st1["metric"]["diag"])
            if "tril" in st1["metric"]:
                self.rbf.set_tril(st1["metric"]["tril"])
            self.out.weight.copy_(w.T)
            self.out.bias.copy_(b)
            self.input_mean.copy_(data["mean"])
            self.input_scale.copy_(data["scale"])
        self.classes_, self._squeeze, self.lam, self.fitted = data["classes"], data["squeeze"], lam, True

    def _ridge(self, data, st1) -> Ridge:
        H = self._design(data["Z"], st1["centers"], st1["sigma"], st1["metric"])
        return Ridge(H, data["T"])

    def fit(self, X, y) -> "RBFNetwork":
        """Two-stage fit: centres, widths (and metric), then ridge output weights (eq. 12-13)."""
        data = self._prepare(X, y)
        st1 = self._stage1(data, self.num_centers)
        self._install(data, st1, self._ridge(data, st1), self.lam)
        return self

    def score_criterion(self, X, y, criterion: str = "loo", lam: float | None = None) -> float:
        """Closed-form LOO MSE or GCV score of this configuration on (X, y) (fits nothing)."""
        _checks.choice("criterion", criterion, ("gcv", "loo"))
        data = self._prepare(X, y)
        ridge = self._ridge(data, self._stage1(data, self.num_centers))
        lam = self.lam if lam is None else lam
        return ridge.gcv(lam) if criterion == "gcv" else ridge.loo(lam)

    def select(self, X, y, n_centers_grid=None, lam_grid=DEFAULT_LAMS, criterion: str = "gcv") -> "RBFNetwork":
        """Grid search over (num_centers, lam) by closed-form GCV or LOO; fits the best and returns self.

        ``self.selection_`` holds the grids and the (len(n_centers_grid), len(lam_grid)) scores.
        """
        _checks.choice("criterion", criterion, ("gcv", "loo"))
        if n_centers_grid is None or isinstance(self.centers, Tensor):
            n_centers_grid = [self.num_centers]
        n_centers_grid = [_positive_int("n_centers_grid", int(c)) for c in n_centers_grid]
        lam_grid = [float(v) for v in lam_grid]
        if not lam_grid or any(not math.isfinite(v) or v < 0 for v in lam_grid):
            raise ValueError(f"lam_grid must be a non-empty list of finite values >= 0, got {lam_grid}")
        if self.sigma is not None and isinstance(self.sigma, Tensor) and len(set(n_centers_grid)) > 1:
            raise ValueError("sigma as a (C,) tensor fixes C: pass a float sigma or None to search n_centers_grid")
        data = self._prepare(X, y)
        scores = torch.empty(len(n_centers_grid), len(lam_grid), dtype=torch.float64)
        best = (math.inf, None, None, None)
        grid = enumerate(n_centers_grid)
        if self.progress and tqdm is not None:
            grid = tqdm(grid, total=len(n_centers_grid), desc="RBFNetwork.select", leave=False)
        for i, c in grid:
            st1 = self._stage1(data, c)
            ridge = self._ridge(data, st1)
            for j, lam in enumerate(lam_grid):
                scores[i, j] = ridge.gcv(lam) if criterion == "gcv" else ridge.loo(lam)
                if scores[i, j] < best[0]:
                    best = (float(scores[i, j]), st1, ridge, lam)
        self.selection_ = {"n_centers": n_centers_grid, "lam": lam_grid, "scores": scores, "criterion": criterion}
        self._install(data, best[1], best[2], best[3])
        return self

    # -- inference ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if not self.fitted or not hasattr(self, "rbf"):
            raise RuntimeError("RBFNetwork is not fitted: call fit(X, y) or select(...) first")
        d = self.rbf.in_features
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (N, {d}), got {type(x).__name__}")
        if x.dim() == 1 and d == 1:
            x = x[:, None]
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"x must have shape (N, {d}) (the network was fitted on D={d} features), "
                             f"got {tuple(x.shape)}")
        out = self.out(self.rbf((x - self.input_mean) / self.input_scale))
        return out.squeeze(-1) if self._squeeze else out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class labels (classification) or outputs (regression)."""
        out = self(x)
        if self.task == "classification":
            return self.classes_.to(out.device)[out.argmax(-1)]
        return out

    def extra_repr(self) -> str:
        c = "tensor" if isinstance(self.centers, Tensor) else repr(self.centers)
        return f"num_centers={self.num_centers}, kind={self.kind!r}, metric={self.metric!r}, centers={c}, lam={self.lam}, task={self.task!r}"
