"""Model extraction: the float32-rounded parameters of a trained rbfkern RBF model, checked.

Supported models: an :class:`~rbfkern.nn.RBFNetwork` (with its input standardisation), an
``(RBF, nn.Linear)`` pair, and an :class:`~rbfkern.nn.RBFClassifier` (the head only: its inputs
are embeddings). Every metric and activation of :data:`METRICS` / :data:`KINDS` is extracted; which
of them the q15 export takes is in :mod:`rbfkern.mcu.quantize`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# metric / activation -> its rbfk.h enum name
METRICS = {"none": "RBFK_METRIC_NONE", "diag": "RBFK_METRIC_DIAG", "shared_diag": "RBFK_METRIC_SHARED_DIAG",
           "full": "RBFK_METRIC_FULL", "shared_full": "RBFK_METRIC_SHARED_FULL"}
KINDS = {"linear": "RBFK_LINEAR", "gaussian": "RBFK_GAUSSIAN", "thin_plate": "RBFK_THIN_PLATE",
         "logistic": "RBFK_LOGISTIC", "inverse_multiquadric": "RBFK_INVERSE_MULTIQUADRIC",
         "multiquadric": "RBFK_MULTIQUADRIC", "inverse_quadratic": "RBFK_INVERSE_QUADRATIC",
         "quadratic": "RBFK_QUADRATIC"}
MAX_DIM = 4096  # rbfk.h RBFK_MAX_DIM: the largest C, D and K the C kernel accepts


def _f32(t) -> np.ndarray:
    """float32-rounded copy as float64 numpy (the exact values the C code sees)."""
    if t is None:
        return None
    a = t.detach().cpu().to(torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)
    return a.astype(np.float32).astype(np.float64)


@dataclass
class NetParams:
    """Float network parameters, float32-rounded, stored as float64 numpy (C, D, K as in rbfk.h)."""

    centers: np.ndarray  # (C, D)
    metric: str
    kind: str
    shape: float
    sigma: np.ndarray  # (C,)
    weight: np.ndarray  # (K, C)
    bias: np.ndarray | None  # (K,)
    diag: np.ndarray | None = None  # (C, D) / (D,)
    tril: np.ndarray | None = None  # (C, D, D) / (D, D), lower triangle
    mean: np.ndarray | None = None  # (D,)
    scale: np.ndarray | None = None  # (D,)
    task: str = "regression"

    @property
    def in_dim(self) -> int:
        return self.centers.shape[1]

    @property
    def n_centers(self) -> int:
        return self.centers.shape[0]

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    def standardise(self, X) -> np.ndarray:
        X = np.asarray(X, np.float64)
        return X if self.mean is None else (X - self.mean) / self.scale

    def hidden(self, X) -> np.ndarray:
        """(N, C) activations in float64 through rbfkern.reference (the spec)."""
        from rbfkern import reference

        x = torch.as_tensor(self.standardise(X), dtype=torch.float64)
        t = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        h = reference.rbf(x, t(self.centers), t(self.diag), t(self.tril), t(self.sigma), self.kind, self.shape)
        return h.numpy()

    def reference(self, X) -> np.ndarray:
        """(N, K) float64 outputs: reference.rbf then the linear layer, all in float64."""
        y = self.hidden(X) @ self.weight.T
        return y + self.bias if self.bias is not None else y


def _find_rbf_linear(model):
    """(rbf, linear, mean, scale, task) from the supported model forms, or a clear error."""
    if isinstance(model, (tuple, list)) and len(model) == 2:
        rbf, lin = model
        mean = scale = None
        task = "regression"
    elif hasattr(model, "rbf") and hasattr(model, "out"):
        rbf, lin = model.rbf, model.out
        mean, scale = getattr(model, "input_mean", None), getattr(model, "input_scale", None)
        task = getattr(model, "task", "classification" if type(model).__name__ == "RBFClassifier" else "regression")
    else:
        raise TypeError(
            "model must be an RBFNetwork (fitted), an RBFClassifier or an (RBF, nn.Linear) pair, got "
            f"{type(model).__name__} (an RBFNetwork that has no .rbf is not fitted yet: call fit first)"
        )
    for attr in ("centers", "metric", "kind", "sigma_values"):
        if not hasattr(rbf, attr):
            raise TypeError(f"the RBF layer must have .{attr} (an rbfkern.nn.RBF), got {type(rbf).__name__}")
    if not isinstance(lin, nn.Linear):
        raise TypeError(f"the output layer must be an nn.Linear, got {type(lin).__name__}")
    return rbf, lin, mean, scale, task


def extract(model) -> NetParams:
    """The float32-rounded parameters of a supported model (see the module docstring)."""
    rbf, lin, mean, scale, task = _find_rbf_linear(model)
    if rbf.metric not in METRICS:
        raise ValueError(f"metric must be one of {tuple(METRICS)}, got {rbf.metric!r}")
    if rbf.kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {rbf.kind!r}")
    with torch.no_grad():
        centers = _f32(rbf.centers)
        C, D = centers.shape
        if lin.in_features != C:
            raise ValueError(f"the linear layer must have in_features = {C} (the number of centres), got {lin.in_features}")
        s = torch.as_tensor(rbf.sigma_values()).detach().reshape(-1)
        sigma = _f32(s.expand(C) if s.numel() == 1 else s)
        diag = _f32(rbf.diag_weights()) if rbf.metric in ("diag", "shared_diag") else None
        tril = _f32(rbf.tril_factor()) if rbf.metric in ("full", "shared_full") else None
        if tril is not None:
            tril = np.tril(tril)
        p = NetParams(centers, rbf.metric, rbf.kind, float(np.float32(getattr(rbf, "shape", 0.5))), sigma,
                      _f32(lin.weight), _f32(lin.bias), diag, tril, task=task)
        if mean is not None and scale is not None and mean.numel() == D and scale.numel() == D:
            m, s = _f32(mean).reshape(D), _f32(scale).reshape(D)
            if not (np.all(m == 0) and np.all(s == 1)):
                p.mean, p.scale = m, s
    _validate(p)
    return p


def _validate(p: NetParams) -> None:
    C, D = p.centers.shape
    shapes = {"sigma": (p.sigma, (C,)), "weight": (p.weight, (p.out_dim, C))}
    if p.diag is not None:
        shapes["diag_weights"] = (p.diag, (C, D) if p.metric == "diag" else (D,))
    if p.tril is not None:
        shapes["tril_factor"] = (p.tril, (C, D, D) if p.metric == "full" else (D, D))
    for name, (a, want) in shapes.items():
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want} for metric={p.metric!r}, got {a.shape}")
    for name, a in [("centers", p.centers), ("sigma", p.sigma), ("weight", p.weight), ("bias", p.bias),
                    ("diag_weights", p.diag), ("tril_factor", p.tril), ("input_mean", p.mean), ("input_scale", p.scale)]:
        if a is not None and not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite values (after rounding to float32): cannot export")
    if not np.all(p.sigma > 0):
        raise ValueError("sigma must be > 0 for every centre")
    if p.diag is not None and not np.all(p.diag >= 0):
        raise ValueError("diag metric weights must be >= 0")
    if p.scale is not None and not np.all(p.scale > 0):
        raise ValueError("input_scale must be > 0")
    if max(C, D, p.out_dim) > MAX_DIM:
        raise ValueError(f"dimensions must be <= {MAX_DIM} (RBFK_MAX_DIM), got C={C}, D={D}, K={p.out_dim}")
