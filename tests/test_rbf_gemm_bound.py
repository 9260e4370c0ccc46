"""The certificate of the GEMM-form RBF forward (rbfkern/gpu/rbf_gemm_bound.py), checked on an
emulation of the kernel's arithmetic in NumPy with tensor cores as bad as the model allows: 3xTF32
operands split as Triton does (rna hi, the MMA reading lo truncated), every product off by
MMA_UNIT and every MMA instruction's accumulation off by MMA_UNIT times the sum of |terms| so far,
all in the same direction. Every pair the test accepts must be within tau of the exact r2; with
the test's xi and zeta a tenth of their value some accepted pair is not (the data reach the
bound's edge, so this check can fail)."""
import math

import numpy as np
import pytest

from rbfkern.gpu.rbf_gemm_bound import ABS_L1, MMA_K, MMA_UNIT, gemm_bound

F32 = np.float32
BK = 16  # the GEMM kernel's K chunk (rbf_gemm.pick_blocks)


def _tf32(a, rna):
    bits = a.astype(F32).view(np.uint32)
    if rna:
        bits = bits + np.uint32(0x1000)
    return (bits & np.uint32(0xFFFFE000)).view(F32)


def _mma_chain(a, b, k_pad):
    """sum_k a[:, k] b[:, k] per pair ([N, K] x [C, K] -> [N, C]) as the worst case of the model:
    per K chunk, the passes lo*hi, hi*lo, hi*hi in MMA_K-product instructions into one float32
    accumulator, every error in the same direction."""
    a_hi, b_hi = _tf32(a, True), _tf32(b, True)
    a_lo, b_lo = _tf32(a - a_hi, False), _tf32(b - b_hi, False)
    acc = np.zeros((a.shape[0], b.shape[0]))
    mag = np.zeros_like(acc)
    for k0 in range(0, k_pad, BK):
        for pa, pb in ((a_lo, b_hi), (a_hi, b_lo), (a_hi, b_hi)):
            for k1 in range(k0, min(k0 + BK, a.shape[1]), MMA_K):
                sl = slice(k1, min(k1 + MMA_K, a.shape[1]))
                t = pa[:, None, sl].astype(np.float64) * pb[None, :, sl].astype(np.float64)
                ta = np.abs(t).sum(-1)
                mag += ta
                acc = (acc + t.sum(-1) + MMA_UNIT * ta + MMA_UNIT * mag).astype(F32).astype(np.float64)
    return acc.astype(F32)


def _emulate(x, c, w, per_centre, scale_xz=1.0):
    """(r2^, accepted, tau) of the GEMM kernel's arithmetic on float32 x [N, D], c [C, D], w None /
    [D] / [C, D]."""
    N, D = x.shape
    b = gemm_bound(D, BK, per_centre)
    k_pad = math.ceil(D / BK) * BK
    mu = c.astype(np.float64).mean(0).astype(F32)
    xs, cs = (x - mu).astype(F32), (c - mu).astype(F32)
    wc = np.ones_like(c) if w is None else np.broadcast_to(w, c.shape).astype(F32)
    B = (F32(-2) * (wc * cs)).astype(F32)
    cn = (wc.astype(np.float64) * cs.astype(np.float64) ** 2).sum(1).astype(F32)
    theta_c = ABS_L1 * np.abs(B).sum(1) + b.abs_const
    l1 = np.abs(xs).sum(1)
    S = _mma_chain(xs, B, k_pad)
    if per_centre:
        X = _mma_chain((xs * xs).astype(F32), wc, k_pad)
        theta_c = theta_c + ABS_L1 * np.abs(wc).sum(1)
        l1 = l1 + (xs * xs).sum(1)
    else:
        wv = np.ones(D, F32) if w is None else w.astype(F32)
        X = np.broadcast_to(((wv * xs) * xs).astype(F32).sum(1, dtype=F32)[:, None], S.shape)
    r2h = ((S + X).astype(F32) + cn[None, :]).astype(F32)
    gam = (F32(b.zeta * scale_xz) * cn + theta_c.astype(F32)).astype(F32)
    rhs = F32(b.xi * scale_xz) * X + gam[None, :] + (F32(ABS_L1) * l1.astype(F32))[:, None]
    ok = (F32(b.alpha) * r2h >= rhs) & (r2h <= np.finfo(F32).max)
    return r2h, ok, b.tau


def _data(n, c, d, metric, seed):
    """Rows near centres at every distance from 1e-1 to 1e-7 of the spread, and far rows."""
    g = np.random.default_rng(seed)
    cen = 300.0 + 50.0 * g.standard_normal((c, d))
    x = cen[g.integers(0, c, n)] + 50.0 * 10.0 ** -g.uniform(0, 7, (n, 1)) * g.standard_normal((n, d))
    x[: n // 4] = 300.0 + 50.0 * g.standard_normal((n // 4, d))
    w = {"none": None, "shared_diag": 0.5 + g.random(d), "diag": 0.5 + g.random((c, d))}[metric]
    return x.astype(F32), cen.astype(F32), None if w is None else w.astype(F32)


def _exact(x, c, w):
    diff = x.astype(np.float64)[:, None, :] - c.astype(np.float64)[None, :, :]
    return ((1.0 if w is None else w.astype(np.float64)) * diff * diff).sum(-1)


@pytest.mark.parametrize("metric", ["none", "shared_diag", "diag"])
@pytest.mark.parametrize("d", [16, 17, 64])
def test_accepted_pairs_are_within_tau_under_the_worst_mma_model(d, metric):
    x, c, w = _data(96, 40, d, metric, seed=d)
    exact = _exact(x, c, w)
    r2h, ok, tau = _emulate(x, c, w, metric == "diag")
    err = np.abs(r2h.astype(np.float64) - exact)
    assert ok.mean() > 0.3  # the far rows pass: the test is not "recompute everything"
    assert not ok.all()  # the near rows do not
    worst = float((err[ok] / r2h[ok]).max())
    assert worst <= tau, f"accepted pair off by {worst:.3g} relative, tau {tau:.3g}"


@pytest.mark.parametrize("metric", ["none", "diag"])
def test_a_weaker_test_accepts_pairs_beyond_tau(metric):
    """The same data and model with xi, zeta / 10: some accepted pair misses tau."""
    d = 64
    x, c, w = _data(96, 40, d, metric, seed=d)
    exact = _exact(x, c, w)
    r2h, ok, tau = _emulate(x, c, w, metric == "diag", scale_xz=0.1)
    err = np.abs(r2h.astype(np.float64) - exact)
    assert bool((err[ok] > tau * r2h[ok]).any())
