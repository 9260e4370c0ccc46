"""Stage 2 of a classic RBF network: ridge output weights and closed-form LOO / GCV
(tinyml-rbf-networks.md, Sections 2.2 and 3.3).

The bias is not penalised: it is solved exactly by centring H and Y, so the problem is
min ||Y - H W - 1 b^T||^2 + lam ||W||^2 and, with lam = 0, the normal equation (H^T H) w = H^T y
with H's column of ones. One SVD of the centred H serves every lam: with Hc = U S V^T,
W = V diag(s / (s^2 + lam)) U^T Yc, and the hat matrix is P = 11^T / N + U diag(s^2 / (s^2 + lam)) U^T.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Ridge:
    """Ridge regression of Y (N, K) on the design matrix H (N, C) plus an unpenalised bias (float64)."""

    def __init__(self, H: Tensor, Y: Tensor):
        if H.dim() != 2 or Y.dim() != 2 or H.shape[0] != Y.shape[0]:
            raise ValueError(f"H must be (N, C) and Y (N, K) with the same N, got {tuple(H.shape)} and {tuple(Y.shape)}")
        H, Y = H.double(), Y.double()
        self.n = H.shape[0]
        self.h_mean, self.y_mean = H.mean(0), Y.mean(0)
        self.yc = Y - self.y_mean
        u, s, vh = torch.linalg.svd(H - self.h_mean, full_matrices=False)
        keep = s > (s[0] if s.numel() else 0) * max(H.shape) * torch.finfo(torch.float64).eps
        self.u, self.s, self.vh = u[:, keep], s[keep], vh[keep]
        self.uty = self.u.T @ self.yc  # (r, K)

    def _shrink(self, lam: float) -> Tensor:
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        return self.s ** 2 / (self.s ** 2 + lam)

    def weights(self, lam: float) -> tuple[Tensor, Tensor]:
        """(W (C, K), b (K,)) minimising ||Y - H W - b||^2 + lam ||W||^2 (minimum norm at lam = 0)."""
        f = self._shrink(lam) / self.s
        w = self.vh.T @ (f[:, None] * self.uty)
        return w, self.y_mean - self.h_mean @ w

    def residuals(self, lam: float) -> Tensor:
        return self.yc - self.u @ (self._shrink(lam)[:, None] * self.uty)

    def hat_diag(self, lam: float) -> Tensor:
        """P_ii, the leverages of the N training samples."""
        return 1.0 / self.n + (self.u ** 2) @ self._shrink(lam)

    def dof(self, lam: float) -> float:
        """tr(P), the effective number of parameters (bias included)."""
        return 1.0 + float(self._shrink(lam).sum())

    def loo(self, lam: float) -> float:
        """Closed-form leave-one-out MSE: mean_i,k ((y_ik - f_k(x_i)) / (1 - P_ii))^2."""
        den = 1.0 - self.hat_diag(lam)
        r = self.residuals(lam) / den[:, None]
        r = torch.where(den[:, None] > 1e-12, r, torch.full_like(r, float("inf")))
        return float((r ** 2).mean())

    def gcv(self, lam: float) -> float:
        """GCV = N * RSS / (N - tr P)^2, RSS averaged over the K outputs."""
        rss = float((self.residuals(lam) ** 2).sum()) / self.yc.shape[1]
        den = self.n - self.dof(lam)
        return self.n * rss / den ** 2 if den > 1e-12 else float("inf")
