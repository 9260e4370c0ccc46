"""Model-inherent explanations of B-cos networks (paper: bcos-networks.md, eq. 13-15, Sec. 4).

A B-cos network computes f(x) = W(x) x (eq. 13) with an input-dependent linear map W(x). In
explanation mode (the dynamic factors are constants in backward) the input gradient of an output
is exactly its row of W(x), so

    dynamic_linear_map(model, x, target)  ->  [W(x)]_target, shaped like x
    contributions(model, x, target)       ->  eq. (15) summed over channels per pixel; the sum
                                              over all pixels is the target logit (no bias)
    explanation_image(image, linear_map)  ->  the RGBA visualisation of Sec. 4 (optionally a PNG)

Works for any model whose layers are B-cos layers, linear maps or explanation-aware modules:
``rbfkern.nn`` modules and the official ``bcos`` ones (anything with ``set_explanation_mode``).
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn.bcos import explanation_mode

__all__ = ["dynamic_linear_map", "contributions", "explanation_image", "save_png"]


def _targets(target, n: int, k: int, device) -> Tensor:
    """target as N class indices in [0, k) (k: the model's number of outputs)."""
    if isinstance(target, bool):
        raise TypeError("target must be an int or integer class indices, got bool")
    try:
        t = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"target must be an int or integer class indices, got {type(target).__name__}") from e
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"target must be an int or integer class indices, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target must be an int or have one entry per input ({n}), got {t.numel()}")
    if n and (bool((t < 0).any()) or bool((t >= k).any())):
        bad = t[(t < 0) | (t >= k)][0].item()
        raise ValueError(f"target must be class indices in [0, {k}) (the model has {k} outputs), got {bad}")
    return t


def dynamic_linear_map(model: nn.Module, x: Tensor, target, return_output: bool = False):
    """Rows of W(x) (eq. 13) for the ``target`` outputs: the gradient of model(x)[i, target[i]]
    w.r.t. x[i] in explanation mode.

    Args:
        model: maps (N, *in) to (N, K).
        x: (N, *in) inputs, or one input (*in) with ``model`` taking a batch (C, H, W) -> (1, C, H, W).
        target: an int or N class indices.
        return_output: also return the model output (N, K), computed in the same pass.

    Returns:
        W rows shaped like ``x`` (and the output when ``return_output``).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    single = x.dim() == 3
    xb = (x.unsqueeze(0) if single else x).detach().clone().requires_grad_(True)
    with explanation_mode(model), torch.enable_grad():
        out = model(xb)
        if out.dim() != 2 or out.shape[0] != xb.shape[0]:
            raise ValueError(f"the model must return (N, K) outputs, got shape {tuple(out.shape)}")
        t = _targets(target, out.shape[0], out.shape[1], out.device)
        (w,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xb)
    if single:
        w, out = w[0], out[0]
    return (w, out.detach()) if return_output else w


def contributions(model: nn.Module, x: Tensor, target) -> Tensor:
    """Contribution maps of eq. (15) summed over the channels: (N, H, W) for images (N, C, H, W)
    ((H, W) for one image (C, H, W)), the per-feature contributions W(x) * x for (N, D) inputs.
    For a model without bias, the sum over a map equals the target output."""
    w = dynamic_linear_map(model, x, target)
    s = w * x.detach()
    return s.sum(-3) if x.dim() >= 3 else s


def explanation_image(image: Tensor, linear_map: Tensor, *, smooth: int = 15, alpha_percentile: float = 99.5,
                      path: str | None = None) -> np.ndarray:
    """The RGBA visualisation of W(x) (Sec. 4, "Visualisation details"), as bcos.common.gradient_to_image.

    Args:
        image: (6, H, W) encoded input [r, g, b, 1-r, 1-g, 1-b] (see ``rbfkern.nn.AddInverse``).
        linear_map: (6, H, W) the row of W(x), e.g. ``dynamic_linear_map(model, image, c)``.
        smooth: box filter size for the opacity (0: none; the paper uses 15 on ImageNet).
        alpha_percentile: opacity = min(||w_xy|| / p, 1) with p this percentile of the norms.
        path: also write the image there as an 8-bit RGBA PNG.

    Returns:
        (H, W, 4) float array in [0, 1]. Colour: each pixel's weights are scaled so the largest
        magnitude is 1, negatives clipped, and each pair (c, 1-c) normalised to sum to 1, which
        keeps the angle of the pair (angle-preserving); only pixels with a positive contribution
        (sum_c w x > 0) are opaque.
    """
    for name, t in (("image", image), ("linear_map", linear_map)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if image.dim() != 3 or image.shape[0] != 6 or linear_map.shape != image.shape:
        raise ValueError(f"image and linear_map must both have shape (6, H, W), got {tuple(image.shape)} "
                         f"and {tuple(linear_map.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image must have at least one pixel, got shape {tuple(image.shape)}")
    if linear_map.device != image.device:
        raise ValueError(f"linear_map is on {linear_map.device} but image is on {image.device}")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, np.integer)):
        raise TypeError(f"smooth must be an int (box filter size, 0: none), got {type(smooth).__name__}")
    smooth = int(smooth)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0 (box filter size, 0: none), got {smooth}")
    if isinstance(alpha_percentile, bool) or not isinstance(alpha_percentile, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha_percentile must be a number in (0, 100], got {type(alpha_percentile).__name__}")
    alpha_percentile = float(alpha_percentile)
    if not 0 < alpha_percentile <= 100:  # NaN fails too
        raise ValueError(f"alpha_percentile must be in (0, 100], got {alpha_percentile!r}")
    image, w = image.detach(), linear_map.detach()
    if w.dtype in (torch.float16, torch.bfloat16) or image.dtype != w.dtype:  # quantile wants one float32/64
        dt = torch.promote_types(torch.promote_types(image.dtype, w.dtype), torch.float32)
        image, w = image.to(dt), w.to(dt)
    contrib = (image * w).sum(0, keepdim=True)
    rgb = (w / (w.abs().max(0, keepdim=True).values + 1e-12)).clamp(min=0)
    rgb = rgb[:3] / (rgb[:3] + rgb[3:] + 1e-12)
    alpha = torch.linalg.vector_norm(w, dim=0, keepdim=True)
    alpha = torch.where(contrib < 0, torch.full_like(alpha, 1e-12), alpha)
    if smooth % 2:
        alpha = F.avg_pool2d(alpha, smooth, stride=1, padding=(smooth - 1) // 2)
    elif smooth:  # even size: the extra zero row/column after (the output keeps the image size)
        lo, hi = (smooth - 1) // 2, smooth // 2
        alpha = F.avg_pool2d(F.pad(alpha, (lo, hi, lo, hi)), smooth, stride=1)
    # an all-zero map has percentile 0: 0 / 0 -> transparent, not NaN
    alpha = (alpha / torch.quantile(alpha, q=alpha_percentile / 100)).nan_to_num(0.0, 1.0, 0.0).clip(0, 1)
    out = torch.cat([rgb, alpha], 0).permute(1, 2, 0).cpu().numpy()
    if path is not None:
        save_png(out, path)
    return out


def save_png(rgba: np.ndarray, path: str) -> None:
    """Write an (H, W, 4) float array in [0, 1] as an 8-bit RGBA PNG (no imaging library needed)."""
    a = np.asarray(rgba, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 4:
        raise ValueError(f"rgba must have shape (H, W, 4), got {a.shape}")
    px = (np.nan_to_num(a).clip(0, 1) * 255 + 0.5).astype(np.uint8)
    h, w = px.shape[:2]
    raw = b"".join(b"\x00" + px[i].tobytes() for i in range(h))  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))
