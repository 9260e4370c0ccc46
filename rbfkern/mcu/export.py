"""Export trained rbfkern RBF models to a C99 header for csrc/mcu (``rbfk.h``).

Supported models: an :class:`~rbfkern.nn.RBFNetwork` (with its input standardisation), an
``(RBF, nn.Linear)`` pair, and an :class:`~rbfkern.nn.RBFClassifier` (the head only: its inputs
are embeddings). The float export (``dtype="f32"``) supports every metric and activation; the
fixed-point export (``dtype="q15"``) supports metric none / diag / shared_diag and the gaussian,
inverse_quadratic and quadratic activations.

q15 error bound (:func:`q15_error_bound`, per sample and output): first-order propagation of every
rounding in the fixed-point pipeline (input and centre quantisation 2^-(x_frac+1), metric weight
quantisation, the rounded |dx| w / 2^15 products, the gain mantissa (2^-15 relative), z rounding,
the activation (exp2 table: 1.2 LSB; division 1 LSB), output weight and bias quantisation and the
final rounding), evaluated at the sample, times a safety factor 1.25, plus 2 output LSB. It holds
while the standardised inputs stay inside the representable range +-2^(15 - x_frac) (the export
picks x_frac from the centres and, if given, calibration inputs); outside it, inputs saturate and
the bound is reported as inf.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

METRICS = {"none": "RBFK_METRIC_NONE", "diag": "RBFK_METRIC_DIAG", "shared_diag": "RBFK_METRIC_SHARED_DIAG",
           "full": "RBFK_METRIC_FULL", "shared_full": "RBFK_METRIC_SHARED_FULL"}
KINDS = {"linear": "RBFK_LINEAR", "gaussian": "RBFK_GAUSSIAN", "thin_plate": "RBFK_THIN_PLATE",
         "logistic": "RBFK_LOGISTIC", "inverse_multiquadric": "RBFK_INVERSE_MULTIQUADRIC",
         "multiquadric": "RBFK_MULTIQUADRIC", "inverse_quadratic": "RBFK_INVERSE_QUADRATIC",
         "quadratic": "RBFK_QUADRATIC"}
Q15_METRICS = ("none", "diag", "shared_diag")
Q15_KINDS = ("gaussian", "inverse_quadratic", "quadratic")
LOG2E = 1.0 / math.log(2.0)


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
    if max(C, D, p.out_dim) > 4096:
        raise ValueError(f"dimensions must be <= 4096 (RBFK_MAX_DIM), got C={C}, D={D}, K={p.out_dim}")


# ---------------------------------------------------------------------------------------------
# C text
# ---------------------------------------------------------------------------------------------

def c_float(v: float) -> str:
    """A C float literal that round-trips the float32 value exactly."""
    f = np.float32(v)
    s = f"{float(f):.9g}"
    if "e" not in s and "." not in s and "n" not in s:
        s += ".0"
    assert np.float32(float(s)) == f or (f == 0)
    return s + "f"


def _c_array(ctype: str, name: str, values, fmt, per_line: int = 8, comment: str = "") -> str:
    vals = [fmt(v) for v in np.asarray(values).reshape(-1)]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    body = ",\n    ".join(lines)
    c = f"/* {comment} */\n" if comment else ""
    return f"{c}const {ctype} {name}[{len(vals)}] = {{\n    {body}\n}};\n"


def _ident(name: str) -> str:
    if not name or not (name[0].isalpha() or name[0] == "_") or not all(ch.isalnum() or ch == "_" for ch in name):
        raise ValueError(f"name must be a C identifier, got {name!r}")
    return name


def _stamp() -> str:
    import rbfkern

    return f"rbfkern {getattr(rbfkern, '__version__', '?')}, torch {torch.__version__}"


def header_f32(p: NetParams, name: str) -> str:
    N = name.upper()
    C, D, K = p.n_centers, p.in_dim, p.out_dim
    parts = [_c_array("float", f"{name}_centers", p.centers, c_float, comment=f"({C}, {D}) centres")]
    metric_ref = "NULL"
    if p.diag is not None:
        parts.append(_c_array("float", f"{name}_metric", p.diag, c_float, comment=f"{p.metric} weights {p.diag.shape}"))
        metric_ref = f"{name}_metric"
    elif p.tril is not None:
        L = p.tril if p.tril.ndim == 3 else p.tril[None]
        idx = np.tril_indices(D)
        packed = np.stack([l_[idx] for l_ in L]).reshape(-1)
        parts.append(_c_array("float", f"{name}_metric", packed, c_float,
                              comment=f"{p.metric}: packed lower triangles, L[d][k] at d(d+1)/2+k"))
        metric_ref = f"{name}_metric"
    parts.append(_c_array("float", f"{name}_sigma", p.sigma, c_float, comment="(C,) widths"))
    parts.append(_c_array("float", f"{name}_weight", p.weight, c_float, comment=f"({K}, {C}) output weights"))
    bias_ref = mean_ref = scale_ref = "NULL"
    if p.bias is not None:
        parts.append(_c_array("float", f"{name}_bias", p.bias, c_float, comment="(K,) bias"))
        bias_ref = f"{name}_bias"
    if p.mean is not None:
        parts.append(_c_array("float", f"{name}_in_mean", p.mean, c_float, comment="(D,) input mean"))
        parts.append(_c_array("float", f"{name}_in_scale", p.scale, c_float, comment="(D,) input scale"))
        mean_ref, scale_ref = f"{name}_in_mean", f"{name}_in_scale"
    scratch = (D if p.mean is not None else 0) + (D if p.tril is not None else 0)
    desc = (f"const rbfk_net_f32 {name} = {{\n    {D}, {C}, {K}, {METRICS[p.metric]}, {KINDS[p.kind]}, "
            f"{c_float(p.shape)},\n    {name}_centers, {metric_ref}, {name}_sigma, {name}_weight, {bias_ref}, "
            f"{mean_ref}, {scale_ref}\n}};\n")
    return _wrap(name, f"float32 RBF network: metric {p.metric}, activation {p.kind}", [
        f"#define {N}_IN_DIM {D}", f"#define {N}_N_CENTERS {C}", f"#define {N}_OUT_DIM {K}",
        f"#define {N}_SCRATCH_FLOATS {scratch} /* = rbfk_net_scratch_size_f32(&{name}) */",
    ], f"extern const rbfk_net_f32 {name};", "\n".join(parts) + "\n" + desc)


def _wrap(name: str, what: str, defines: list[str], decl: str, body: str) -> str:
    N = name.upper()
    return (
        f"/*\n * {name}.h - {what}.\n * Generated by rbfkern.mcu.export_c ({_stamp()}); do not edit.\n"
        f" * Include it in ONE .c file to define the model (arrays are const: flash); elsewhere\n"
        f" * #define {N}_DECLARE_ONLY before including it.\n */\n"
        f"#ifndef {N}_H\n#define {N}_H\n\n#include \"rbfk.h\"\n\n" + "\n".join(defines) + "\n\n"
        f"#ifdef {N}_DECLARE_ONLY\n{decl}\n#else\n{body}#endif\n\n#endif /* {N}_H */\n"
    )


# ---------------------------------------------------------------------------------------------
# q15
# ---------------------------------------------------------------------------------------------

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


def _calib_array(calib, d: int) -> np.ndarray:
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
        calib = _calib_array(calib, D)
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
        dh = math.log(2) * np.exp2(-zlo) * dz + 1.2 * 2.0 ** -15
    elif p.kind == "inverse_quadratic":
        zlo = np.maximum(z - dz, 0)
        dh = dz / (1 + zlo) ** 2 + 1.0 * 2.0 ** -15
    else:
        dh = dz + 2.0 ** -(q.h_frac + 1)
    hmag = np.abs(h) + dh
    Wabs = np.abs(p.weight)
    err = dh @ Wabs.T + hmag @ np.full_like(Wabs.T, 2.0 ** -(q.wo_frac + 1))
    err += 2.0 ** -(q.wo_frac + q.h_frac + 1) + 2.0 ** -(q.y_frac + 1)
    bound = 1.25 * err + 2 * 2.0 ** -q.y_frac
    _, ok = q.quantize_inputs(X)
    bound[~ok] = np.inf
    return bound


def header_q15(q: Q15Params, name: str) -> str:
    p = q.src
    N = name.upper()
    C, D, K = p.n_centers, p.in_dim, p.out_dim
    i16 = lambda v: str(int(v))  # noqa: E731
    parts = [_c_array("int16_t", f"{name}_centers", q.centers, i16, 16, f"({C}, {D}) centres, {q.x_frac} frac bits")]
    metric_ref = "NULL"
    if q.metric_w is not None:
        parts.append(_c_array("int16_t", f"{name}_metric", q.metric_w, i16, 16, f"{p.metric} weights, {q.w_frac} frac bits"))
        metric_ref = f"{name}_metric"
    parts.append(_c_array("int16_t", f"{name}_gain_m", q.gain_m, i16, 16, "activation gain mantissas"))
    parts.append(_c_array("int8_t", f"{name}_gain_sh", q.gain_sh, i16, 16, "activation gain shifts"))
    parts.append(_c_array("int16_t", f"{name}_weight", q.weight, i16, 16, f"({K}, {C}) output weights, {q.wo_frac} frac bits"))
    bias_ref = "NULL"
    if q.bias is not None:
        parts.append(_c_array("int32_t", f"{name}_bias", q.bias, lambda v: f"{int(v)}L" if abs(int(v)) > 32767 else str(int(v)),
                              8, f"bias, {q.wo_frac + q.h_frac} frac bits"))
        bias_ref = f"{name}_bias"
    desc = (f"const rbfk_net_q15 {name} = {{\n    {D}, {C}, {K}, {METRICS[p.metric]}, {KINDS[p.kind]},\n"
            f"    {q.x_frac}, {q.w_frac}, {q.h_frac}, {q.wo_frac}, {q.y_frac},\n"
            f"    {name}_centers, {metric_ref}, {name}_gain_m, {name}_gain_sh, {name}_weight, {bias_ref}\n}};\n")
    rep = "\n".join(f" *   {k} = {v:.4g}" if isinstance(v, float) else f" *   {k} = {v}" for k, v in q.report.items())
    mean_note = ("inputs: standardise x' = (x - mean) / scale (mean/scale below), then round(x' * 2^"
                 f"{q.x_frac}) saturated to int16") if p.mean is not None else f"inputs: round(x * 2^{q.x_frac}) saturated"
    defines = [f"#define {N}_IN_DIM {D}", f"#define {N}_N_CENTERS {C}", f"#define {N}_OUT_DIM {K}",
               f"#define {N}_X_FRAC {q.x_frac}", f"#define {N}_Y_FRAC {q.y_frac}",
               f"/* {mean_note}; outputs: y = y_q * 2^-{q.y_frac}\n * quantisation report:\n{rep}\n */"]
    body = "\n".join(parts) + "\n"
    if p.mean is not None:
        body += _c_array("float", f"{name}_in_mean", p.mean, c_float, comment="(D,) input mean (host-side standardisation)")
        body += _c_array("float", f"{name}_in_scale", p.scale, c_float, comment="(D,) input scale")
    return _wrap(name, f"q15 RBF network: metric {p.metric}, activation {p.kind}", defines,
                 f"extern const rbfk_net_q15 {name};", body + desc)


@dataclass
class Export:
    """What :func:`export_c` wrote."""

    path: Path
    name: str
    dtype: str
    params: NetParams
    q15: Q15Params | None = None

    @property
    def quant_report(self) -> dict:
        return dict(self.q15.report) if self.q15 is not None else {}


def export_c(model, path, name: str = "model", dtype: str = "f32", calib=None) -> Export:
    """Write one C header with the model's weights as ``const`` arrays and its descriptor.

    Args:
        model: a fitted RBFNetwork, an RBFClassifier (head only) or an ``(RBF, nn.Linear)`` pair.
        path: the header to write (a directory: ``<path>/<name>.h``).
        name: C identifier of the descriptor (``rbfk_net_f32 name`` / ``rbfk_net_q15 name``) and
            the prefix of every array.
        dtype: ``"f32"`` or ``"q15"``.
        calib: optional (N, D) inputs to choose the q15 input/output ranges from (training data).

    Returns an :class:`Export`; for q15 ``.quant_report`` has the chosen formats and the maximum
    quantisation errors (and, with ``calib``, the measured and bounded output error).
    """
    name = _ident(name)
    if dtype not in ("f32", "q15"):
        raise ValueError(f"dtype must be 'f32' or 'q15', got {dtype!r}")
    p = extract(model)
    if calib is not None:
        calib = _calib_array(calib, p.in_dim)  # checked for f32 too, where it is not used
    path = Path(path)
    if path.is_dir():
        path = path / f"{name}.h"
    q = None
    if dtype == "f32":
        text = header_f32(p, name)
    else:
        q = quantize_q15(p, calib)
        text = header_q15(q, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return Export(path, name, dtype, p, q)
