"""CNN-RBF: a convolutional backbone with an RBF classifier on top (paper: cnn-rbf-similarity-metric.txt,
Section IV, Fig. 1).

    x -> backbone -> pooling -> [dropout] -> projection (fully connected, no activation)
      -> [embedding normalisation] -> RBF (eq. 1, activations eq. 3-9, 15) -> linear logits (eq. 2)

The loss is eq. (14): cross-entropy + lam * the k-means objective (eq. 10) in the learned metric.

**Recipe: keep eq. (14) from shrinking or collapsing the embedding.** The unsupervised term is a squared distance,
and nothing in eq. (1)-(2) fixes the scale it is measured in: the backbone can scale every
embedding and centre by s < 1, which multiplies the term by s^2 while a wider activation (or the
output layer) keeps the decisions. Trained as the paper says (a plain linear projection), the
embedding does shrink during joint training and the accuracy suffers. What helps:

1. ``embed_norm="layernorm"`` (default): a LayerNorm without affine parameters after the
   projection puts every embedding at zero mean and unit variance over its D features
   (||x||^2 = D), so only the centres and the metric R can move the distances.
2. The metric and a learned width have the same freedom in principle (R -> s R with
   sigma^2 -> s sigma^2 leaves every activation but the ``linear`` and ``thin_plate`` ones
   unchanged and scales the term by s); where the metric's scale drifts down during training,
   fix the width (``learn_sigma=False``).
3. Collapse onto the centres: with a random output layer the cross-entropy's first gradients
   carry little, and the unsupervised term can pull every embedding onto a centre within the
   first epoch (the distances to the nearest centre near 0, the cross-entropy stuck at log K).
   ``init_centers(data, labels)`` fits the output layer in closed form first (eq. 11-13).

A consequence for retrieval: on layer-normalised embeddings the Euclidean and the cosine
distance rank identically (every row has zero mean and norm sqrt(D)).

Training as in Section III-IV: pre-train the backbone (e.g. :meth:`softmax_model`), call
:meth:`init_centers` (k-means of the embeddings, Section III / IV "Initialization"), then train
everything on :meth:`loss`. ``similar`` (eq. 16-17) and :func:`rbfkern.evaluate.retrieval_precision`
(Fig. 7) use :meth:`embed` and ``.head.rbf``.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kmeans import init_centers as _init_centers
from ..ops import _checks
from ..ridge import Ridge
from .rbf import RBFClassifier, _positive_int

POOLS = ("avg", "max", "flatten", "none")
EMBED_NORMS = ("layernorm", "none")


class _GlobalPool(nn.Module):
    """(N, F, *spatial) -> (N, F) by mean or max over the spatial dims; (N, F) passes through."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, f: Tensor) -> Tensor:
        if f.dim() <= 2:
            return f
        dims = tuple(range(2, f.dim()))
        return f.mean(dims) if self.mode == "avg" else f.amax(dims)

    def extra_repr(self) -> str:
        return self.mode


def _pool(mode: str) -> nn.Module:
    if mode in ("avg", "max"):
        return _GlobalPool(mode)
    return nn.Flatten() if mode == "flatten" else nn.Identity()


class CNNRBF(nn.Module):
    """A backbone with an RBF classifier head (Fig. 1 of the CNN-RBF paper).

    Args:
        backbone: any module mapping the input to features (N, F) or feature maps (N, F, *spatial).
        num_classes: K, the number of classes.
        num_centers: C, the number of RBF centres (cluster centres c_j).
        metric: the learned distance R_j of eq. (1), as in :class:`rbfkern.nn.RBF`: ``none``,
            ``diag`` (the paper's Mahalanobis diagonal), ``shared_diag``, ``full``, ``shared_full``.
        kind: the activation h: ``quadratic`` (eq. 15, the paper's kernel) or any of eq. (3)-(9).
        embed_dim: D, the size of the RBF input. With an int, a fully connected projection
            F -> D without activation sits between backbone and RBF (as in the paper). None: no
            projection, the pooled features go to the RBF directly (``feature_dim`` must be given).
        feature_dim: F, the size of the pooled features; None with ``embed_dim`` set: inferred at
            the first forward (a lazy linear layer; call :meth:`init_centers` or a forward before
            building the optimiser).
        pool: ``avg`` (global average pooling, the paper's), ``max``, ``flatten`` or ``none``
            (the backbone already returns (N, F)).
        dropout: dropout rate after the backbone, before the projection (the paper's only
            dropout; its Fig. 5 found 0 best).
        embed_norm: ``layernorm`` (an affine-free LayerNorm on the embedding; see the recipe in
            the module docstring) or ``none``.
        sigma: the initial width (:meth:`init_centers` can set it from the data).
        learn_sigma: train sigma (see item 2 of the recipe).
        shape: the logistic r0 / (inverse) multiquadric exponent.

    Attributes: ``backbone``, ``pool``, ``dropout``, ``project``, ``norm``, ``head`` (an
    :class:`rbfkern.nn.RBFClassifier`; ``head.rbf`` is the metric module for ``similar``).

    Shape: input whatever the backbone takes; output (N, K) logits, with ``return_r2=True``
    also the (N, C) squared distances of eq. (1) for the loss.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, num_centers: int, metric: str = "diag",
                 kind: str = "quadratic", *, embed_dim: int | None = 64, feature_dim: int | None = None,
                 pool: str = "avg", dropout: float = 0.0, embed_norm: str = "layernorm", sigma: float = 1.0,
                 learn_sigma: bool = True, shape: float = 0.5, device=None, dtype=None):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if embed_norm not in EMBED_NORMS:
            raise ValueError(f"embed_norm must be one of {EMBED_NORMS}, got {embed_norm!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if feature_dim is not None:
            _positive_int("feature_dim", feature_dim)
        fk = {"device": device, "dtype": dtype}
        if embed_dim is None:
            if feature_dim is None:
                raise ValueError("feature_dim is required when embed_dim is None (no projection: the RBF "
                                 "input size is the backbone's feature size)")
            d = feature_dim
            project = nn.Identity()
        else:
            d = _positive_int("embed_dim", embed_dim)
            project = nn.Linear(feature_dim, d, **fk) if feature_dim is not None else nn.LazyLinear(d, **fk)
        self.backbone = backbone
        self.pool = _pool(pool)
        self.dropout = nn.Dropout(float(dropout)) if dropout else nn.Identity()
        self.project = project
        self.norm = nn.LayerNorm(d, elementwise_affine=False, **fk) if embed_norm == "layernorm" else nn.Identity()
        self.head = RBFClassifier(d, num_centers, num_classes, metric=metric, kind=kind, sigma=sigma,
                                  learn_sigma=learn_sigma, shape=shape, **fk)

    @property
    def embed_dim(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def embed(self, x: Tensor) -> Tensor:
        """The RBF input (N, D): backbone, pooling, dropout, projection, normalisation."""
        f = self.pool(self.backbone(x))
        if f.dim() != 2:
            raise ValueError(f"the pooled backbone output must be (N, F), got shape {tuple(f.shape)}; "
                             f"use pool='avg', 'max' or 'flatten' for feature maps")
        return self.norm(self.project(self.dropout(f)))

    def forward(self, x: Tensor, return_r2: bool = False):
        return self.head(self.embed(x), return_r2=return_r2)

    def softmax_model(self) -> nn.Module:
        """The embedding with a new linear softmax classifier (D -> K) on it, sharing the backbone,
        projection and normalisation with this model: the paper's pre-training stage, before
        :meth:`init_centers`. Its output is (N, K) logits for ``cross_entropy``."""
        return nn.Sequential(self.backbone, self.pool, self.dropout, self.project, self.norm,
                             nn.Linear(self.embed_dim, self.num_classes, device=self.head.out.weight.device,
                                       dtype=self.head.out.weight.dtype))

    @staticmethod
    def loss(logits: Tensor, target: Tensor, r2: Tensor | None = None, lam: float = 0.0) -> Tensor:
        """Eq. (14): cross-entropy(logits, target) + lam * mean_n min_j r2[n, j] (eq. 10 averaged)."""
        return RBFClassifier.loss(logits, target, r2, lam)

    @torch.no_grad()
    def embeddings(self, data: Tensor | Iterable, batch_size: int = 512) -> Tensor:
        """:meth:`embed` in eval mode without gradients, over a tensor (in batches of
        ``batch_size``) or an iterable of batches (items may be (x, y) tuples). The module's
        train/eval mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            if isinstance(data, Tensor):
                parts = [self.embed(data[i:i + batch_size]) for i in range(0, len(data), batch_size)]
            else:
                parts = [self.embed(b[0] if isinstance(b, (tuple, list)) else b) for b in data]
        finally:
            self.train(was_training)
        if not parts:
            raise ValueError("data must hold at least one sample")
        return torch.cat(parts)

    @torch.no_grad()
    def init_centers(self, data: Tensor | Iterable, labels: Tensor | None = None, *, method: str = "kmeans++",
                     set_sigma: bool = True, ridge: float = 1e-3, seed: int = 0, n_init: int = 1,
                     max_iter: int = 100, batch_size: int = 512) -> float:
        """k-means of the backbone's embeddings of ``data`` (a tensor of inputs or an iterable of
        batches) places the centres (Section III, Section IV "Initialization"); returns the
        inertia.

        ``set_sigma``: also set the width to the root mean squared distance of the embeddings to
        the centres, so the activations start in their sensitive range. ``labels`` ((N,) classes
        of ``data``): also fit the output layer in closed form, ridge regression of the one-hot
        labels on the activations (eq. 11-13, with ``ridge`` for alpha; the bias unpenalised)
        instead of leaving it random. The paper skips this at ImageNet scale; where it fits, it
        gives the cross-entropy of eq. 14 an informative gradient from the first step, before
        the unsupervised term can pull every embedding onto the centres.
        """
        emb = self.embeddings(data, batch_size=batch_size)
        rbf = self.head.rbf
        inertia = _init_centers(rbf, emb, method, seed=seed, n_init=n_init, max_iter=max_iter)
        if set_sigma:
            rbf.set_sigma(float(rbf.r2(emb).mean().clamp_min(1e-12).sqrt()))
        if labels is not None:
            self._fit_output(rbf(emb), labels, ridge)
        return inertia

    def _fit_output(self, act: Tensor, labels, ridge: float) -> None:
        y = torch.as_tensor(labels, device=act.device)
        k = self.num_classes
        if y.is_floating_point() or tuple(y.shape) != (act.shape[0],) or bool(((y < 0) | (y >= k)).any()):
            raise ValueError(f"labels must be ({act.shape[0]},) classes in [0, {k}) (one per sample of data), "
                             f"got shape {tuple(y.shape)} dtype {y.dtype}")
        w, b = Ridge(act, F.one_hot(y.long(), k)).weights(_checks.finite_float("ridge", ridge, positive=True))
        out = self.head.out
        out.weight.copy_(w.T.to(out.weight))
        out.bias.copy_(b.to(out.bias))


__all__ = ["CNNRBF"]
