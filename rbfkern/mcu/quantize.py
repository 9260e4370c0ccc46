"""q15 quantisation: fixed-point formats chosen from the weights (and calibration inputs), the
integer parameters of ``rbfk_net_q15``, a bit-exact Python model of the C kernel, and the error bound.

q15 error bound (:func:`q15_error_bound`, per sample and output): first-order propagation of every
rounding in the fixed-point pipeline (input and centre quantisation 2^-(x_frac+1), metric weight
quantisation, the rounded |dx| w / 2^15 products, the gain mantissa (2^-15 relative), z rounding,
the activation (``EXP2_ERR_LSB`` for the exp2 table, ``DIV_ERR_LSB`` for the division), output
weight and bias quantisation and the final rounding), evaluated at the sample, times
``BOUND_SAFETY``, plus ``BOUND_SLACK_LSB`` output LSB. It holds while the standardised inputs stay
inside the representable range +-2^(15 - x_frac) (the export picks x_frac from the centres and, if
given, calibration inputs); outside it, inputs saturate and the bound is reported as inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .extraction import NetParams

Q15_METRICS = ("none", "diag", "shared_diag")
Q15_KINDS = ("gaussian", "inverse_quadratic", "quadratic")
LOG2E = 1.0 / math.log(2.0)
EXP2_ERR_LSB = 1.2  # error of the C exp2 table + polynomial, in hidden LSB
DIV_ERR_LSB = 1.0  # error of the C inverse-quadratic division, in hidden LSB
BOUND_SAFETY = 1.25  # factor on the first-order bound
BOUND_SLACK_LSB = 2  # output LSB added to it


@dataclass
class Q15Params:
    """Integer parameters of rbfk_net_q15 plus the float model they came from."""

    src: NetParams
    x_frac: int
    w_frac: int
    h_frac: int
    wo_frac: int
    y_frac: int
    centers: np.ndarray  # int16 (C, D)
    metric_w: np.ndarray | None  # int16
    gain_m: np.ndarray  # int16 (C,)
    gain_sh: np.ndarray  # int8 (C,)
    weight: np.ndarray  # int16 (K, C)
    bias: np.ndarray | None  # int32 (K,)
    report: dict = field(default_factory=dict)

    def quantize_inputs(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(int16 inputs for the C kernel, bool mask of samples whose inputs were in range)."""
        z = self.src.standardise(X) * 2.0 ** self.x_frac
        q = np.rint(z)
        ok = np.all(np.abs(q) <= 2 ** 14, axis=-1)
        return np.clip(q, -32768, 32767).astype(np.int16), ok

    def dequantize_outputs(self, Y) -> np.ndarray:
        return np.asarray(Y, np.float64) * 2.0 ** -self.y_frac

    def simulate(self, X) -> np.ndarray:
        """Bit-exact Python model of rbfk_net_forward_q15 (int16 outputs), for tests and the report."""
        xq, _ = self.quantize_inputs(X)
        p = self.src
        C, D, K = p.n_centers, p.in_dim, p.out_dim
        out = np.empty((len(xq), K), np.int64)
        w = None
        if self.metric_w is not None:
            w = self.metric_w.astype(np.int64).reshape(-1, D)
            w = np.broadcast_to(w, (C, D))
        c = self.centers.astype(np.int64)
        for n, x in enumerate(xq.astype(np.int64)):
            adx = np.minimum(np.abs(x[None, :] - c), 32767)
            if w is None:
                acc = (adx * adx).sum(1)
            else:
                acc = (((adx * w + 16384) >> 15) * adx).sum(1)
            h = np.empty(C, np.int64)
            for j in range(C):
                zz = int(acc[j]) * int(self.gain_m[j])
                sh = int(self.gain_sh[j])
                if sh > 0:
                    zz = (zz >> sh) + ((zz >> (sh - 1)) & 1)
                z = min(zz, 0xFFFFFFFF)
                h[j] = _hidden_q(z, p.kind, self.h_frac)
            for k in range(K):
                a = int(self.bias[k]) if self.bias is not None else 0
                a += int((self.weight[k].astype(np.int64) * h).sum())
                sh = self.wo_frac + self.h_frac - self.y_frac
                out[n, k] = _sat16(_rshift_round(a, sh)) if sh >= 0 else _sat16(a * 2 ** (-sh))
        return out.astype(np.int16)


_EXP2_TAB = [65536, 62757, 60097, 57549, 55109, 52773, 50535, 48393, 46341, 44376, 42495, 40693, 38968, 37316,
             35734, 34219]


def _exp2_neg_q15(t: int) -> int:
    n, f = t >> 16, t & 0xFFFF
    if n >= 16:
        return 0
    u30 = ((f & 0xFFF) * 181704) >> 4
    u15 = (u30 + (1 << 14)) >> 15
    p30 = (1 << 30) - u30 + ((u15 * u15) >> 1) - (((u15 * u15 * u15) >> 15) // 6)
    p15 = (p30 + (1 << 14)) >> 15
    prod = _EXP2_TAB[f >> 12] * p15
    sh = 16 + n
    return min((prod + (1 << (sh - 1))) >> sh, 32767)


def _rshift_round(v: int, sh: int) -> int:
    mag = abs(v)
    if sh > 0:
        mag = (mag >> sh) + ((mag >> (sh - 1)) & 1)
    return -mag if v < 0 else mag


def _sat16(v: int) -> int:
    return max(-32768, min(32767, v))


def _hidden_q(z: int, kind: str, h_frac: int) -> int:
    if kind == "gaussian":
        return _exp2_neg_q15(z)
    if kind == "inverse_quadratic":
        if z >= 0xFFFF0000:
            return 0
        den = 65536 + z
        return min(((1 << 31) + (den >> 1)) // den, 32767)
    return _sat16(_rshift_round(65536 - z, 16 - h_frac))


def _frac_for(maxabs: float, limit: float, lo: int, hi: int) -> int:
    """Largest frac in [lo, hi] with maxabs * 2^frac <= limit."""
    if maxabs <= 0:
        return hi
    return int(max(lo, min(hi, math.floor(math.log2(limit / maxabs)))))


def calib_array(calib, d: int) -> np.ndarray:
    """calib as a float64 (N, D) array, checked: N >= 1, D the network's input width, finite."""
    try:
        a = calib.detach().cpu().to(torch.float64).numpy() if isinstance(calib, torch.Tensor) else np.asarray(calib)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"calib must be an (N, {d}) array or tensor of numbers, got {type(calib).__name__}") from e
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"calib must be an (N, {d}) array or tensor of numbers, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise TypeError(f"calib must be real, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 1 and d == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != d or a.shape[0] < 1:
        raise ValueError(f"calib must have shape (N, {d}) with N >= 1 (the model's input width D={d}), "
                         f"got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("calib must be finite, got NaN or infinite values")
    return a


def quantize_q15(p: NetParams, calib=None) -> Q15Params:
    """Choose the fixed-point formats from the weights (and optional calibration inputs) and quantise."""
    if p.metric not in Q15_METRICS:
        raise ValueError(f"q15 export supports metric in {Q15_METRICS}, got {p.metric!r} (export dtype='f32' instead)")
    if p.kind not in Q15_KINDS:
        raise ValueError(f"q15 export supports kind in {Q15_KINDS}, got {p.kind!r} (export dtype='f32' instead)")
    C, D, K = p.n_centers, p.in_dim, p.out_dim
    if calib is not None:
        calib = calib_array(calib, D)
    # inputs and centres share x_frac; keep |x|, |c| <= 2^14 LSB so x - c never saturates
    R = float(np.abs(p.centers).max())
    Z = None
    if calib is not None:
        Z = p.standardise(calib)
        R = max(R, float(np.abs(Z).max()))
    else:
        R = 2.0 * R  # no data: allow inputs up to twice the farthest centre coordinate
    x_frac = _frac_for(R, 2 ** 14, -15, 15)
    cq = np.clip(np.rint(p.centers * 2.0 ** x_frac), -32768, 32767).astype(np.int16)
    w_frac, wq = 0, None
    if p.diag is not None:
        w_frac = _frac_for(float(p.diag.max()), 32767, -30, 30)
        wq = np.clip(np.rint(p.diag * 2.0 ** w_frac), 0, 32767).astype(np.int16)
        acc_frac = 2 * x_frac + w_frac - 15
    else:
        acc_frac = 2 * x_frac
    g = (LOG2E / (2.0 * p.sigma ** 2)) if p.kind == "gaussian" else 1.0 / p.sigma ** 2
    G = g * 2.0 ** (16 - acc_frac)
    e = np.floor(np.log2(G)).astype(np.int64)
    m = np.rint(G * 2.0 ** (14 - e)).astype(np.int64)
    carry = m >= 32768
    m[carry] //= 2
    e[carry] += 1
    sh = 14 - e
    if np.any(sh < 0) or np.any(sh > 62):
        raise ValueError(f"sigma out of the q15 range for these input scales (gain shifts {sh.min()}..{sh.max()} "
                         "must be in 0..62): export dtype='f32' instead")
    # hidden format
    if p.kind == "quadratic":
        if Z is not None:
            zmax = float((_r2_float(p, Z) * g[None, :]).max()) * 1.5
        else:
            wmax = float(p.diag.max()) if p.diag is not None else 1.0
            zmax = float(D * wmax * (2.0 ** (15 - x_frac)) ** 2 * g.max())
        h_frac = _frac_for(max(1.0, zmax - 1.0), 32767, 0, 15)
        hmax = max(1.0, zmax - 1.0)
    else:
        h_frac, hmax = 15, 1.0
    wo_frac = _frac_for(float(np.abs(p.weight).max()), 32767, -30, 30)
    bias_q = None
    if p.bias is not None:
        while wo_frac > -30 and float(np.abs(p.bias).max()) * 2.0 ** (wo_frac + h_frac) > 2 ** 31 - 1:
            wo_frac -= 1
        bias_q = np.rint(p.bias * 2.0 ** (wo_frac + h_frac)).astype(np.int64)
        if np.abs(bias_q).max() > 2 ** 31 - 1:
            raise ValueError("bias too large for the q15 accumulator format")
        bias_q = bias_q.astype(np.int32)
    woq = np.clip(np.rint(p.weight * 2.0 ** wo_frac), -32768, 32767).astype(np.int16)
    if Z is not None:
        ymax = float(np.abs(p.reference(calib)).max()) * 1.5
    else:
        ymax = float((np.abs(p.weight).sum(1) * hmax + (np.abs(p.bias) if p.bias is not None else 0)).max())
    y_frac = _frac_for(max(ymax, 2.0 ** -30), 32767, -30, 30)
    y_frac = max(y_frac, wo_frac + h_frac - 62)
    q = Q15Params(p, x_frac, w_frac, h_frac, wo_frac, y_frac, cq, wq, m.astype(np.int16), sh.astype(np.int8), woq,
                  bias_q)
    q.report = {
        "x_frac": x_frac, "w_frac": w_frac, "h_frac": h_frac, "wo_frac": wo_frac, "y_frac": y_frac,
        "input_range": 2.0 ** (15 - x_frac), "y_lsb": 2.0 ** -y_frac,
        "max_err_centers": float(np.abs(cq * 2.0 ** -x_frac - p.centers).max()),
        "max_err_metric": float(np.abs(wq * 2.0 ** -w_frac - p.diag).max()) if wq is not None else 0.0,
        "max_rel_err_gain": float(np.abs(m * 2.0 ** -sh.astype(np.float64) / G - 1).max()),
        "max_err_weight": float(np.abs(woq * 2.0 ** -wo_frac - p.weight).max()),
    }
    if calib is not None:
        b = q15_error_bound(q, calib)
        yq = q.dequantize_outputs(q.simulate(calib))
        q.report["calib_max_abs_err"] = float(np.abs(yq - p.reference(calib)).max())
        q.report["calib_max_bound"] = float(b.max())
    return q


def _r2_float(p: NetParams, Z) -> np.ndarray:
    d = Z[:, None, :] - p.centers[None]
    w = 1.0 if p.diag is None else p.diag
    return (d * d * w).sum(-1)


def q15_error_bound(q: Q15Params, X) -> np.ndarray:
    """(N, K) a-priori bound on |y_q15 - y_float64| for each sample (see the module docstring)."""
    p = q.src
    Z = p.standardise(X)
    xf = q.x_frac
    lsb_x = 2.0 ** -xf
    dx = np.abs(Z[:, None, :] - p.centers[None])  # (N, C, D)
    if p.diag is None:
        w = np.ones(p.in_dim)
        dr2 = (2 * dx * lsb_x + lsb_x ** 2).sum(-1)
    else:
        w = p.diag
        prod_lsb = 0.5 * 2.0 ** (15 - q.w_frac) * lsb_x  # rounding of |dx| w / 2^15, times |dx|
        dr2 = ((prod_lsb + 2 * w * lsb_x) * (dx + lsb_x) + 2.0 ** -(q.w_frac + 1) * dx ** 2 + w * lsb_x ** 2).sum(-1)
    r2 = (dx * dx * w).sum(-1)
    g = (LOG2E / (2.0 * p.sigma ** 2)) if p.kind == "gaussian" else 1.0 / p.sigma ** 2
    z = r2 * g
    dz = g * dr2 + z * 2.0 ** -15 + 2.0 ** -17
    h = p.hidden(X) if p.kind != "gaussian" else np.exp2(-z)
    if p.kind == "gaussian":
        zlo = np.maximum(z - dz, 0)
        dh = math.log(2) * np.exp2(-zlo) * dz + EXP2_ERR_LSB * 2.0 ** -15
    elif p.kind == "inverse_quadratic":
        zlo = np.maximum(z - dz, 0)
        dh = dz / (1 + zlo) ** 2 + DIV_ERR_LSB * 2.0 ** -15
    else:
        dh = dz + 2.0 ** -(q.h_frac + 1)
    hmag = np.abs(h) + dh
    Wabs = np.abs(p.weight)
    err = dh @ Wabs.T + hmag @ np.full_like(Wabs.T, 2.0 ** -(q.wo_frac + 1))
    err += 2.0 ** -(q.wo_frac + q.h_frac + 1) + 2.0 ** -(q.y_frac + 1)
    bound = BOUND_SAFETY * err + BOUND_SLACK_LSB * 2.0 ** -q.y_frac
    _, ok = q.quantize_inputs(X)
    bound[~ok] = np.inf
    return bound
