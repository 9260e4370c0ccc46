"""Naive PyTorch definitions of every rbfkern op: the spec, the test oracle and the benchmark baseline.

Written for clarity, not speed: they materialise broadcast intermediates such as (N, C, D).
Each function cites the paper equation it implements.
"""
from __future__ import annotations

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# Mahalanobis RBF (paper: cnn-rbf-similarity-metric.txt, Section III)
# ----------------------------------------------------------------------------------------------

RBF_KINDS = (
    "linear",
    "gaussian",
    "thin_plate",
    "logistic",
    "inverse_multiquadric",
    "multiquadric",
    "inverse_quadratic",
    "quadratic",
)


def rbf_r2(x: Tensor, centers: Tensor, diag: Tensor | None = None, tril: Tensor | None = None) -> Tensor:
    """Squared distance r2[n, j] = (x_n - c_j)^T R_j (x_n - c_j), eq. (1).

    ``diag`` (C, D) or (D,): R_j = diag(w_j). ``tril`` (C, D, D) or (D, D): R_j = L_j L_j^T with only
    the lower triangle of L_j read, so r2 = ||(x_n - c_j) L_j||^2. Neither: R_j = I (Euclidean).
    Difference form: (x - c) is formed first, so there is no cancellation near a centre.
    """
    diff = x[:, None, :] - centers[None, :, :]  # (N, C, D)
    if diag is not None:
        return (diff * diff * diag).sum(-1)
    if tril is not None:
        low = torch.tril(tril)
        if low.dim() == 2:
            u = diff @ low  # (N, C, D)
        else:
            u = torch.einsum("ncd,cdk->nck", diff, low)
        return (u * u).sum(-1)
    return (diff * diff).sum(-1)


def rbf_activation(r2: Tensor, kind: str, sigma: Tensor | float = 1.0, shape: float = 0.5) -> Tensor:
    """The activation h of eq. (3)-(9) and (15), applied to r2 (s = sigma, a = shape).

    linear r (3); gaussian exp(-r2 / (2 s^2)) (4); thin_plate r2 ln r = 0.5 r2 ln r2, 0 at r2 = 0 (5);
    logistic 1 / (1 + exp((r2 - a^2) / s^2)) (6, a = r0); inverse_multiquadric (r2 + s^2)^(-a) (7);
    multiquadric (r2 + s^2)^a (8); inverse_quadratic 1 / (1 + r2 / s^2) (9); quadratic 1 - r2 / s^2 (15).
    At r2 = 0, linear and thin_plate use the zero subgradient (their derivative in r2 is singular).
    """
    s = sigma
    if kind == "linear":
        pos = r2 > 0
        return torch.where(pos, torch.sqrt(torch.where(pos, r2, torch.ones_like(r2))), torch.zeros_like(r2))
    if kind == "gaussian":
        return torch.exp(-r2 / (2 * s * s))
    if kind == "thin_plate":
        pos = r2 > 0
        safe = torch.where(pos, r2, torch.ones_like(r2))
        return torch.where(pos, 0.5 * r2 * torch.log(safe), torch.zeros_like(r2))
    if kind == "logistic":
        return torch.sigmoid(-(r2 - shape * shape) / (s * s))
    if kind == "inverse_multiquadric":
        return (r2 + s * s) ** (-shape)
    if kind == "multiquadric":
        return (r2 + s * s) ** shape
    if kind == "inverse_quadratic":
        return 1.0 / (1.0 + r2 / (s * s))
    if kind == "quadratic":
        return 1.0 - r2 / (s * s)
    raise ValueError(f"kind must be one of {RBF_KINDS}, got {kind!r}")


def rbf(
    x: Tensor,
    centers: Tensor,
    diag: Tensor | None = None,
    tril: Tensor | None = None,
    sigma: Tensor | float = 1.0,
    kind: str = "gaussian",
    shape: float = 0.5,
) -> Tensor:
    """RBF layer activations h(||x_n - c_j||^2_{R_j}) (eq. 1 composed with eq. 3-9/15), shape (N, C).

    ``sigma`` is a float or a tensor of shape () or (C,) (one width per centre).
    """
    return rbf_activation(rbf_r2(x, centers, diag, tril), kind, sigma, shape)


def rbf_r2_expanded(x: Tensor, centers: Tensor, diag: Tensor | None = None) -> Tensor:
    """GEMM-expanded r2 = x^2 w - 2 x (w c) + w c^2 for none/diag metrics.

    NOT the spec (it cancels catastrophically near a centre): the fast baseline a PyTorch user
    would write, used by the benchmarks.
    """
    if diag is None:
        return (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)
    w = diag.expand_as(centers)
    return (x * x) @ w.T - 2 * x @ (w * centers).T + (w * centers * centers).sum(1)


# ----------------------------------------------------------------------------------------------
# Gaussian-derivative basis convolution (paper: structured-receptive-fields-thesis.txt, ch. 3)
# ----------------------------------------------------------------------------------------------


def _gauss_deriv_conv(x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized):
    """Algorithm 1 of ch. 3 taken literally, for images (x of rank 4) and volumes (rank 5).

    Step 2: every input map is convolved with every basis function (eq. 20: phi_{p,q} =
    g_q(y) g_p(x) in 2D, phi_{p,q,t} = g_t(z) g_q(y) g_p(x) in 3D; rbfkern.basis) at every scale,
    giving C_in*S*M maps zeta; step 3: output map o is sum_{i,b} alpha[o, i, b] zeta_{i,b} (eq. 23).
    Zero padding ``padding`` (default: the largest radius R, "same" at stride 1).
    """
    from . import basis

    nd = x.dim() - 2
    g_phi = (basis.basis_2d if nd == 2 else basis.basis_3d)(sigma, order, truncate, radii, scale_normalized)
    S, M, K = g_phi.shape[:3]  # (S, M, K, K[, K])
    pad = (K - 1) // 2 if padding is None else padding
    cin = x.shape[1]
    # conv is a cross-correlation: flip every spatial axis to convolve.
    spatial = tuple(range(-nd, 0))
    w = g_phi.flip(spatial).reshape(S * M, 1, *(K,) * nd).to(x.dtype).repeat(cin, *(1,) * (nd + 1))
    conv = torch.nn.functional.conv2d if nd == 2 else torch.nn.functional.conv3d
    zeta = conv(x, w, stride=stride, padding=pad, groups=cin)  # (N, C_in*S*M, *out)
    y = alpha.reshape(alpha.shape[0], cin * S * M) @ zeta.flatten(2)  # (N, C_out, prod(out))
    return y.reshape(x.shape[0], alpha.shape[0], *zeta.shape[2:])


def gauss_deriv_conv2d(x: Tensor, alpha: Tensor, sigma: Tensor, order: int, truncate: float = 4.0,
                       radii: list[int] | None = None, stride: int = 1, padding: int | None = None,
                       scale_normalized: bool = False) -> Tensor:
    """Structured-receptive-field convolution (ch. 3, eq. 18-23, Algorithm 1).

    x (N, C_in, H, W), alpha (C_out, C_in, S*M), sigma (S,) -> (N, C_out, H', W'), with the basis
    g_p(x) g_q(y), p + q <= order (rbfkern.basis.basis_2d).
    """
    return _gauss_deriv_conv(x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized)


def gauss_deriv_conv3d(x: Tensor, alpha: Tensor, sigma: Tensor, order: int, truncate: float = 4.0,
                       radii: list[int] | None = None, stride: int = 1, padding: int | None = None,
                       scale_normalized: bool = False) -> Tensor:
    """The 3D version (the thesis' MRI network): x (N, C_in, D, H, W), basis members
    phi_{p,q,t} = g_t(z) g_q(y) g_p(x) with p + q + t <= order (rbfkern.basis.basis_3d),
    alpha (C_out, C_in, S*M3) -> (N, C_out, D', H', W')."""
    return _gauss_deriv_conv(x, alpha, sigma, order, truncate, radii, stride, padding, scale_normalized)


# ----------------------------------------------------------------------------------------------
# B-cos (paper: bcos-networks.md, eq. 3, 9-11, 17; semantics of bcos 0.1.3 BcosConv2d/BcosLinear)
# ----------------------------------------------------------------------------------------------


def _bcos_pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def bcos_unit_weight(weight: Tensor) -> Tensor:
    """W-hat of eq. (9): each output filter (row) divided by its L2 norm over all its other dims (no eps)."""
    dims = tuple(range(1, weight.dim()))
    return weight / torch.linalg.vector_norm(weight, dim=dims, keepdim=True)


def bcos_patch_norm(x: Tensor, kernel_size, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """||a|| of eq. (3) for every conv patch: sqrt(sum of x^2 over the (zero padded, dilated)
    window and the group's input channels + 1e-6), shape (N, groups, H', W')."""
    kh, kw = _bcos_pair(kernel_size)
    ones = x.new_ones(groups, x.shape[1] // groups, kh, kw)
    sq = torch.nn.functional.conv2d(x * x, ones, None, _bcos_pair(stride), _bcos_pair(padding),
                                    _bcos_pair(dilation), groups)
    return (sq + 1e-6).sqrt()


def bcos_scale(l: Tensor, norm: Tensor, b: float, explain: bool = False) -> Tensor:
    """|c|^(B-1) x l of eq. (9)/(11) with c = l / ||a|| (l = W-hat a): ``l * |l|/n`` for B = 2,
    ``l * (|l|/n + 1e-6)^(B-1)`` otherwise, ``l`` for B = 1. With ``explain`` the dynamic factor
    is detached (l and n inside it), so the input gradient is the dynamic linear map of eq. (11)."""
    if b == 1:
        return l
    ld, nd = (l.detach(), norm.detach()) if explain else (l, norm)
    if b == 2:
        return ld.abs() / nd * l
    return ((ld / nd).abs() + 1e-6).pow(b - 1) * l


def bcos_maxout(l: Tensor, max_out: int, dim: int) -> Tensor:
    """MaxOut of eq. (17) over consecutive groups of ``max_out`` channels along ``dim``."""
    if max_out == 1:
        return l
    return l.unflatten(dim, (l.shape[dim] // max_out, max_out)).max(dim=dim + 1 if dim >= 0 else dim).values


def bcos_conv2d(x: Tensor, weight: Tensor, b: float = 2.0, max_out: int = 1, stride=1, padding=0,
                dilation=1, groups=1, explain: bool = False) -> Tensor:
    """B-cos convolution (eq. 3 and 9 applied to every patch, MaxOut of eq. 17 before scaling).

    x (N, C, H, W); weight (O*max_out, C/groups, kh, kw), the raw (unnormalised) weight.
    Returns (N, O, H', W').
    """
    l = torch.nn.functional.conv2d(x, bcos_unit_weight(weight), None, _bcos_pair(stride),
                                   _bcos_pair(padding), _bcos_pair(dilation), groups)
    l = bcos_maxout(l, max_out, 1)
    if b == 1:
        return l
    n = bcos_patch_norm(x, weight.shape[-2:], stride, padding, dilation, groups)
    n = n.repeat_interleave(l.shape[1] // groups, dim=1)
    return bcos_scale(l, n, b, explain)


def bcos_linear(x: Tensor, weight: Tensor, b: float = 2.0, max_out: int = 1, explain: bool = False) -> Tensor:
    """B-cos linear layer (eq. 9 with MaxOut, eq. 17): x (..., C), weight (O*max_out, C) -> (..., O).
    The input norm is ||x||_2 + 1e-12 (eps outside the sqrt)."""
    l = bcos_maxout(torch.nn.functional.linear(x, bcos_unit_weight(weight)), max_out, -1)
    if b == 1:
        return l
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True) + 1e-12
    return bcos_scale(l, n, b, explain)
