"""Mahalanobis RBF layers (paper: cnn-rbf-similarity-metric.txt, Sections III-VII).

``RBF`` is the hidden layer of eq. (1) with one of the activations of eq. (3)-(9), (15);
``RBFClassifier`` adds the linear output layer of eq. (2) and the loss of eq. (14);
``unsupervised_loss`` is eq. (10) in the learned metric; ``cluster_contributions`` ranks the
clusters behind a decision (Section VII, Fig. 8).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import _checks, _fx
from ..ops.rbf import layer_rbf, layer_rbf_r2
from ..reference import RBF_KINDS as KINDS

METRICS = ("none", "diag", "shared_diag", "full", "shared_full")


def inverse_softplus(w: Tensor) -> Tensor:
    """raw with softplus(raw) == w, for w > 0 (stable for small and large w)."""
    return w + torch.log(-torch.expm1(-w))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _sigma_tensor(sigma, c: int, dtype=None) -> Tensor:
    """sigma (a positive float, or a tensor of shape () / (1,) / (C,)) as a (C,) float64 tensor."""
    if isinstance(sigma, Tensor):
        if sigma.dim() > 1 or sigma.numel() not in (1, c):
            raise ValueError(f"sigma must be a float or a tensor of shape () or ({c},), got shape {tuple(sigma.shape)}")
        s = sigma.detach().to(torch.float64).reshape(-1).expand(c).clone()
    else:
        s = torch.full((c,), _checks.finite_float("sigma", sigma, positive=True), dtype=torch.float64)
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"sigma must be finite and > 0, got {s.tolist() if c <= 8 else 'min %g' % s.min()}")
    return s if dtype is None else s.to(dtype)


class RBF(nn.Module):
    """RBF hidden layer: act[n, j] = h(r2[n, j]), r2 = (x_n - c_j)^T R_j (x_n - c_j)  (eq. 1).

    Args:
        in_features: D, the size of each input sample.
        num_centers: C, the number of centres (cluster centres c_j).
        metric: the trainable distance R_j: ``none`` (Euclidean), ``diag`` (per-centre diagonal),
            ``shared_diag`` (one diagonal), ``full`` (per-centre R_j = L_j L_j^T) or ``shared_full``.
            Diagonal weights are softplus of a raw parameter; a full metric keeps a lower-triangular
            factor whose diagonal is softplus of a raw parameter, so R_j stays positive definite.
        kind: the activation h (see :func:`rbfkern.ops.rbf`); ``quadratic`` is eq. (15).
        sigma: initial width, a positive float or a (C,) tensor; stored as log(sigma).
        learn_sigma: train sigma (a Parameter) or keep it fixed (a buffer).
        shape: the logistic r0 / (inverse) multiquadric exponent.

    Shape: input ``(*, D)``, output ``(*, C)``.
    """

    def __init__(
        self,
        in_features: int,
        num_centers: int,
        metric: str = "diag",
        kind: str = "quadratic",
        sigma: float | Tensor = 1.0,
        learn_sigma: bool = True,
        shape: float = 0.5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.num_centers = _positive_int("num_centers", num_centers)
        _checks.choice("metric", metric, METRICS)
        _checks.choice("kind", kind, KINDS)
        self.metric = metric
        self.kind = kind
        self.shape = _checks.finite_float("shape", shape, positive=kind in ("inverse_multiquadric", "multiquadric"))
        self.learn_sigma = bool(learn_sigma)
        self._init_sigma = _sigma_tensor(sigma, num_centers)
        fk = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}
        c, d = num_centers, in_features
        self.centers = nn.Parameter(torch.empty(c, d, **fk))
        lead = () if metric.startswith("shared") else (c,)
        if metric in ("diag", "shared_diag"):
            self.raw_diag = nn.Parameter(torch.empty(*lead, d, **fk))
        elif metric in ("full", "shared_full"):
            self.raw_tril = nn.Parameter(torch.empty(*lead, d, d, **fk))
        log_sigma = torch.empty(c, **fk)
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Centres ~ N(0, 1); identity metric; sigma as given at construction."""
        with torch.no_grad():
            nn.init.normal_(self.centers)
            one = inverse_softplus(torch.tensor(1.0, dtype=torch.float64)).item()
            if self.metric in ("diag", "shared_diag"):
                self.raw_diag.fill_(one)
            elif self.metric in ("full", "shared_full"):
                eye = torch.eye(self.in_features, dtype=self.raw_tril.dtype, device=self.raw_tril.device)
                self.raw_tril.copy_((eye * one).expand_as(self.raw_tril))
            self.log_sigma.copy_(self._init_sigma.log())

    # -- the values actually passed to the op ---------------------------------------------------
    def diag_weights(self) -> Tensor | None:
        """The positive (C, D) or (D,) diagonal metric weights, or None for other metrics."""
        return F.softplus(self.raw_diag) if self.metric in ("diag", "shared_diag") else None

    def tril_factor(self) -> Tensor | None:
        """The (C, D, D) or (D, D) lower factor L (R = L L^T) with positive diagonal, or None."""
        if self.metric not in ("full", "shared_full"):
            return None
        raw = self.raw_tril
        return torch.tril(raw, -1) + torch.diag_embed(F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1)))

    def sigma_values(self) -> Tensor:
        """The (C,) positive widths."""
        return self.log_sigma.exp()

    # -- setters (used by k-means / two-stage fitting; they invert the parametrisations) ---------
    @torch.no_grad()
    def set_centers(self, centers: Tensor) -> None:
        if not isinstance(centers, Tensor) or tuple(centers.shape) != tuple(self.centers.shape):
            got = tuple(centers.shape) if isinstance(centers, Tensor) else type(centers).__name__
            raise ValueError(f"centers must be a tensor of shape {tuple(self.centers.shape)}, got {got}")
        self.centers.copy_(centers)

    @torch.no_grad()
    def set_sigma(self, sigma: float | Tensor) -> None:
        self.log_sigma.copy_(_sigma_tensor(sigma, self.num_centers).log())

    @torch.no_grad()
    def set_diag(self, weights: Tensor) -> None:
        """Set positive diagonal weights ((C, D) for ``diag``, (D,) for ``shared_diag``)."""
        if self.metric not in ("diag", "shared_diag"):
            raise ValueError(f"set_diag needs metric diag or shared_diag, this layer has metric={self.metric!r}")
        w = weights.detach().to(torch.float64)
        if tuple(w.shape) != tuple(self.raw_diag.shape) or not bool((w > 0).all()):
            raise ValueError(f"weights must be positive with shape {tuple(self.raw_diag.shape)}, got {tuple(w.shape)}")
        self.raw_diag.copy_(inverse_softplus(w))

    @torch.no_grad()
    def set_tril(self, factor: Tensor) -> None:
        """Set the lower factor L ((C, D, D) or (D, D)); its diagonal must be positive."""
        if self.metric not in ("full", "shared_full"):
            raise ValueError(f"set_tril needs metric full or shared_full, this layer has metric={self.metric!r}")
        low = torch.tril(factor.detach().to(torch.float64))
        dg = torch.diagonal(low, dim1=-2, dim2=-1)
        if tuple(low.shape) != tuple(self.raw_tril.shape) or not bool((dg > 0).all()):
            raise ValueError(f"factor must have shape {tuple(self.raw_tril.shape)} and a positive diagonal, got {tuple(low.shape)}")
        self.raw_tril.copy_(torch.tril(low, -1) + torch.diag_embed(inverse_softplus(dg)))

    def metric_kwargs(self) -> dict:
        """``{"diag": ...}`` / ``{"tril": ...}`` / ``{}``: the metric arguments of the ops."""
        w = self.diag_weights()
        if w is not None:
            return {"diag": w}
        t = self.tril_factor()
        return {"tril": t} if t is not None else {}

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, return_r2: bool = False):
        return _layer_forward(x, self.centers, self.diag_weights(), self.tril_factor(), self.sigma_values(),
                              self.kind, self.shape, return_r2)

    def r2(self, x: Tensor) -> Tensor:
        """Squared distances (*, C) in the learned metric (no activation)."""
        lead = x.shape[:-1]
        r2 = layer_rbf_r2(x.reshape(-1, self.in_features), self.centers, self.diag_weights(), self.tril_factor())
        return r2.reshape(*lead, self.num_centers)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, num_centers={self.num_centers}, metric={self.metric!r}, kind={self.kind!r}"
        if self.kind in ("logistic", "inverse_multiquadric", "multiquadric"):
            s += f", shape={self.shape}"
        return s + f", learn_sigma={self.learn_sigma}"


@_fx.traceable  # one FX node: the body reads x's shape
def _layer_forward(x, centers, diag, tril, sigma, kind, shape, return_r2):
    """:meth:`RBF.forward` on (*, D) inputs."""
    d = centers.shape[1]
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(f"x must have shape (*, {d}) (in_features={d}), got {tuple(x.shape)}")
    flat = x.dim() == 2  # rows already: no reshapes (each a view node in autograd's graph)
    out = layer_rbf(x if flat else x.reshape(-1, d), centers, diag, tril, sigma, kind, shape, return_r2)
    if not flat:
        lead = (*x.shape[:-1], centers.shape[0])
        out = tuple(t.reshape(lead) for t in out) if return_r2 else out.reshape(lead)
    return out


def unsupervised_loss(r2: Tensor) -> Tensor:
    """Eq. (10) averaged over samples: mean_n min_j r2[n, j] (the k-means objective in the metric)."""
    if not isinstance(r2, Tensor) or r2.dim() < 1:
        raise ValueError(f"r2 must be a tensor of shape (*, C), got {getattr(r2, 'shape', type(r2).__name__)}")
    return r2.reshape(-1, r2.shape[-1]).min(dim=1).values.mean()


class RBFClassifier(nn.Module):
    """Eq. (2): an :class:`RBF` layer (``.rbf``) followed by a linear output layer with bias (``.out``).

    ``forward(x)`` returns logits (*, num_classes); ``forward(x, return_r2=True)`` returns
    ``(logits, r2)`` for :meth:`loss`. Keyword arguments go to :class:`RBF`.
    """

    def __init__(self, in_features: int, num_centers: int, num_classes: int, metric: str = "diag",
                 kind: str = "quadratic", sigma: float | Tensor = 1.0, learn_sigma: bool = True,
                 shape: float = 0.5, device=None, dtype=None):
        super().__init__()
        _positive_int("num_classes", num_classes)
        self.rbf = RBF(in_features, num_centers, metric, kind, sigma, learn_sigma, shape, device=device, dtype=dtype)
        self.out = nn.Linear(num_centers, num_classes, device=device, dtype=dtype)

    @property
    def in_features(self) -> int:
        return self.rbf.in_features

    @property
    def num_classes(self) -> int:
        return self.out.out_features

    def reset_parameters(self) -> None:
        self.rbf.reset_parameters()
        self.out.reset_parameters()

    def forward(self, x: Tensor, return_r2: bool = False):
        act, r2 = self.rbf(x, return_r2=True)
        logits = self.out(act)
        return (logits, r2) if return_r2 else logits

    @staticmethod
    def loss(logits: Tensor, target: Tensor, r2: Tensor | None = None, lam: float = 0.0) -> Tensor:
        """Eq. (14): cross-entropy + lam * unsupervised_loss(r2)."""
        lam = _checks.finite_float("lam", lam)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        if lam == 0.0:
            return ce
        if r2 is None:
            raise ValueError("r2 is required when lam != 0 (call forward(x, return_r2=True))")
        return ce + lam * unsupervised_loss(r2)


class Contributions(NamedTuple):
    """Per sample (N rows): the target and runner-up classes and the clusters ranked for each.

    ``*_order[n]`` lists cluster indices by decreasing contribution act[n, j] * W[class, j];
    ``*_contrib[n]`` the contributions in that order; ``r2`` the (N, C) distances to the centres.
    """

    target: Tensor
    target_order: Tensor
    target_contrib: Tensor
    runner_up: Tensor
    runner_up_order: Tensor
    runner_up_contrib: Tensor
    r2: Tensor


@torch.no_grad()
def cluster_contributions(model: nn.Module, x: Tensor, target: Tensor | None = None) -> Contributions:
    """Rank the clusters behind each decision (Section VII, Fig. 8).

    ``model`` has ``.rbf`` (an :class:`RBF`) and ``.out`` (a Linear), e.g. :class:`RBFClassifier`
    or a fitted classification :class:`RBFNetwork`. ``target`` defaults to the predicted class; the
    runner-up is the most confident class other than the target. Contributions are
    act[n, j] * W[k, j] (the bias is common to all clusters).
    """
    if not (hasattr(model, "rbf") and hasattr(model, "out")):
        raise TypeError(f"model must have .rbf and .out (RBFClassifier or a fitted RBFNetwork), got {type(model).__name__}")
    if hasattr(model, "input_mean"):
        x = (x - model.input_mean) / model.input_scale
    act, r2 = model.rbf(x, return_r2=True)
    logits = model.out(act)
    k = logits.shape[-1]
    if k < 2:
        raise ValueError(f"cluster_contributions needs at least 2 output classes, model has {k}")
    if target is None:
        target = logits.argmax(1)
    else:
        target = torch.as_tensor(target, device=logits.device).long().reshape(-1)
        if target.shape[0] != logits.shape[0] or bool(((target < 0) | (target >= k)).any()):
            raise ValueError(f"target must have shape ({logits.shape[0]},) with values in [0, {k}), got {tuple(target.shape)}")
    masked = logits.masked_fill(F.one_hot(target, k).bool(), -math.inf)
    runner = masked.argmax(1)
    w = model.out.weight  # (K, C)

    def ranked(cls):
        contrib = act * w[cls]
        val, idx = contrib.sort(dim=1, descending=True)
        return idx, val

    t_idx, t_val = ranked(target)
    r_idx, r_val = ranked(runner)
    return Contributions(target, t_idx, t_val, runner, r_idx, r_val, r2)
