"""FLOP and byte models of the benchmark cases (the one place they are stated) and the rates and
percentages of the measured peaks derived from them.

Conventions, the same for every family:

* FLOPs count the useful arithmetic of the operation as the fused kernels do it, a multiply-add
  as 2. Every provider of a case is credited with the same count, so TFLOP/s compare providers on
  equal terms: a peer that does more work (the dense Gaussian-derivative filter, the naive
  broadcast) shows a lower rate, not a higher one. Activations, norms and epilogues count a few
  FLOPs per output element.
* Bytes are the fewest a step must move through device memory: the forward reads each input once
  and writes the output once; the backward reads the inputs and the output gradient once and
  writes one gradient per differentiated input. Intermediates and saved tensors are not counted.
* fwd+bwd = forward + backward (the backward multiple of each family is stated below).
* % of peak: FLOP/s over the measured matmul rate that matches the provider's precision
  (bfloat16 inputs: the bf16 matmul; float32 with TF32 off: the float32 matmul with TF32 off;
  float32 with TF32 on: the float32 matmul with TF32 on), GB/s over the measured device-to-device
  copy. ``pct_roofline`` is the larger of the two floors (FLOPs / peak, bytes / bandwidth) over the
  measured time: 100 % means the step ran at the device's limit for its model.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import basis

ITEMSIZE = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float
    flops_model: str
    bytes_model: str


def _rbf(p, s, mode):
    n, c, d, metric = p["n"], p["c"], p["d"], p["metric"]
    if metric == "tril":
        pair = d * (d + 1) + 3 * d  # (x - c), u = (x - c) L over the lower triangle (D(D+1)/2 MACs), ||u||^2
        metric_elems = c * d * (d + 1) // 2
        fwd = n * c * (pair + 8)
        bwd = 3 * n * c * d * (d + 1) + 10 * n * c  # u recomputed, g u L^T (grad x and c), grad L
        fm = "fwd N*C*(D(D+1) + 3D + 8); bwd 3*N*C*D(D+1) + 10*N*C (u again, u L^T for grad x / c, grad L)"
    else:
        metric_elems = c * d if metric == "diag" else d
        # the GEMM forms (rbfkern/gpu/rbf_gemm.py, rbf_gemm_bwd.py): one N*C*D multiply-add per GEMM
        # (a per-centre metric adds one for x'^2 w_j in the forward and x' (G W) for grad x)
        per_centre = 1 if metric == "diag" else 0
        fwd = n * c * (2 * d * (1 + per_centre) + 8)  # cross term [+ x'^2 w_j]; r2, test, exp per pair
        bwd = 2 * n * c * d * (3 + per_centre) + 10 * n * c  # G (w c') [+ G W], G^T x', G^T x'^2; G per pair
        fm = ("fwd N*C*(2D(1 + p) + 8); bwd 2*N*C*D*(3 + p) + 10*N*C, p = 1 for a per-centre metric "
              "(the GEMM forms: cross term [+ x'^2 w_j]; G (w c') [+ G W], G^T x', G^T x'^2)")
    ins = n * d + c * d + metric_elems + c  # x, centres, metric, sigma
    fwd_b = s * (ins + n * c)
    bwd_b = s * (ins + n * c + ins)
    bm = "fwd (N*D + C*D + metric + C) read + N*C written; bwd the inputs + grad out read, their grads written"
    return fwd, bwd, fwd_b, bwd_b, fm, bm


def _bcos(p, s, mode):
    mo = 2  # MaxOut units per output channel (families/bcos.py MAX_OUT)
    if p["kind"] == "conv":
        n, cin, h, w, cout, k = p["n"], p["cin"], p["h"], p["w"], p["cout"], p["k"]
        pix, red = n * h * w, cin * k * k  # stride 1, "same" padding: H' = H, W' = W
        x_el, w_el, y_el = n * cin * h * w, mo * cout * red, n * cout * h * w
        fm = ("fwd 2*P*(2 C_out)*(C_in k^2) GEMM + 2*P*C_in k^2 patch norms + 8*P*C_out epilogue (P = N*H*W); "
              "bwd 2 GEMMs (grad x, grad W) + 4*P*C_in k^2 norm grad + 8*P*C_out")
    else:
        pix, red, cout = p["r"], p["cin"], p["cout"]
        x_el, w_el, y_el = p["r"] * red, mo * cout * red, p["r"] * cout
        fm = ("fwd 2*R*(2 out)*in GEMM + 2*R*in norms + 8*R*out epilogue; bwd 2 GEMMs (grad x, grad W) + "
              "4*R*in + 8*R*out")
    gemm = 2 * pix * mo * cout * red
    fwd = gemm + 2 * pix * red + 8 * pix * cout
    bwd = 2 * gemm + 4 * pix * red + 8 * pix * cout
    fwd_b = s * (x_el + w_el + y_el)
    bwd_b = s * (x_el + w_el + y_el + x_el + w_el)
    bm = "fwd x + W read, y written; bwd x + W + grad y read, grad x + grad W written"
    return fwd, bwd, fwd_b, bwd_b, fm, bm


def _gauss(p, s, mode):
    nd, order, n, cin, cout = p["ndim"], p["order"], p["n"], p["cin"], p["cout"]
    k = 2 * basis.radius(p["sigma"], 4.0) + 1
    m = basis.num_basis(order, nd)
    if nd == 2:
        h, w = p["h"], p["w"]
        hp = h - 1 + k
        passes = n * cin * k * ((order + 1) * hp * w + m * h * w)  # row pass per order, column pass per (p, q)
        vox = n * h * w
        fm = ("separable: fwd 2*(N C_in K ((order+1)(H+K-1) W + M H W) + N C_out C_in M H W); bwd 2 x fwd "
              "(grad x is a forward with C_in, C_out swapped; grad alpha the basis maps x grad out)")
    else:
        dd, h, w = p["d"], p["h"], p["w"]
        dp, hp = dd - 1 + k, h - 1 + k
        m2 = basis.num_basis(order, 2)
        passes = n * cin * k * ((order + 1) * dp * hp * w + m2 * dp * h * w + m * dd * h * w)  # x, y, z passes
        vox = n * dd * h * w
        fm = ("separable: fwd 2*(N C_in K ((order+1) D' H' W + M2 D' H W + M3 D H W) + N C_out C_in M3 D H W), "
              "D' = D+K-1, H' = H+K-1; bwd 2 x fwd")
    fwd = 2 * (passes + vox * cout * cin * m)
    bwd = 2 * fwd
    x_el, a_el, y_el = vox * cin, cout * cin * m, vox * cout
    fwd_b = s * (x_el + a_el + y_el)
    bwd_b = s * (x_el + a_el + y_el + x_el + a_el)
    bm = "fwd x + alpha read, y written; bwd x + alpha + grad y read, grad x + grad alpha written"
    return fwd, bwd, fwd_b, bwd_b, fm, bm


_MODELS = {"rbf": _rbf, "bcos": _bcos, "gauss_deriv": _gauss}


def cost(family: str, params: dict, dtype: str, mode: str) -> Cost:
    """The FLOPs and bytes of one step of a case (``mode`` "fwd" or "fwd+bwd")."""
    fwd, bwd, fwd_b, bwd_b, fm, bm = _MODELS[family](params, ITEMSIZE[dtype], mode)
    if mode == "fwd":
        return Cost(float(fwd), float(fwd_b), fm, bm)
    if mode == "fwd+bwd":
        return Cost(float(fwd + bwd), float(fwd_b + bwd_b), fm, bm)
    raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")


def peak_key(dtype: str, tf32: bool) -> str:
    """The measured peak (see peaks.py) a provider's FLOP/s is compared with."""
    if dtype == "bfloat16":
        return "bf16_matmul"
    return "fp32_matmul_tf32" if tf32 else "fp32_matmul"


def rates(c: Cost, median_ms: float | None, dtype: str, tf32: bool, peaks: dict) -> dict:
    """TFLOP/s, GB/s and % of the measured peaks of one timed step (None where unknown)."""
    out = {"tflops": None, "gbps": None, "peak_flops_key": peak_key(dtype, tf32), "pct_peak_flops": None,
           "pct_peak_bw": None, "pct_roofline": None}
    if not median_ms or median_ms <= 0:
        return out
    t = median_ms * 1e-3
    out["tflops"] = c.flops / t / 1e12
    out["gbps"] = c.bytes / t / 1e9
    pf = (peaks.get(out["peak_flops_key"]) or {}).get("tflops")
    pb = (peaks.get("copy") or {}).get("gbps")
    if pf:
        out["pct_peak_flops"] = 100.0 * out["tflops"] / pf
    if pb:
        out["pct_peak_bw"] = 100.0 * out["gbps"] / pb
    if pf and pb:
        floor = max(c.flops / (pf * 1e12), c.bytes / (pb * 1e9))
        out["pct_roofline"] = 100.0 * floor / t
    return out


def describe() -> dict:
    """The model text of each family (recorded in the JSON beside the numbers)."""
    samples = {
        "rbf": [dict(n=1, c=1, d=1, metric="diag"), dict(n=1, c=1, d=1, metric="tril")],
        "bcos": [dict(kind="conv", n=1, cin=1, h=1, w=1, cout=1, k=3), dict(kind="linear", r=1, cin=1, cout=1)],
        "gauss_deriv": [dict(ndim=2, order=3, n=1, cin=1, cout=1, sigma=1.0, h=1, w=1),
                        dict(ndim=3, order=2, n=1, cin=1, cout=1, sigma=1.0, d=1, h=1, w=1)],
    }
    out = {"conventions": __doc__.split("Conventions, the same for every family:", 1)[1].strip()}
    for fam, ps in samples.items():
        texts = []
        for p in ps:
            *_, fm, bm = _MODELS[fam](p, 4, "fwd+bwd")
            texts.append({"flops": fm, "bytes": bm})
        out[fam] = texts
    return out
