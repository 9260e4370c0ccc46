"""Model-inherent explanations of B-cos networks (paper: bcos-networks.md, eq. 13-15, Sec. 4).

A B-cos network computes f(x) = W(x) x (eq. 13) with an input-dependent linear map W(x). In
explanation mode (the dynamic factors are constants in backward) the input gradient of an output
is exactly its row of W(x), so

    dynamic_linear_map(model, x, target)  ->  [W(x)]_target, shaped like x
    dynamic_linear_maps(model, x, targets) -> the same for T targets per input, one forward pass
    contributions(model, x, target)       ->  eq. (15) summed over channels per pixel; the sum
                                              over all pixels is the target logit (no bias)
    explanation_image(image, linear_map)  ->  the RGBA visualisation of Sec. 4 (optionally a PNG)
    grid_pointing_game(model, images, t)  ->  the localisation metric of Sec. 4 on G x G grids

Works for any model whose layers are B-cos layers, linear maps or explanation-aware modules:
``rbfkern.nn`` modules and the official ``bcos`` ones (anything with ``set_explanation_mode``).
"""
from __future__ import annotations

import contextlib
import struct
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn.bcos import explanation_mode

__all__ = ["dynamic_linear_map", "dynamic_linear_maps", "contributions", "explanation_image", "save_png", "image_grid",
           "grid_shares", "grid_pointing_game", "pointing_game_groups"]


def _integer_tensor(value, name: str, what: str) -> Tensor:
    """``value`` as a tensor of integers; a TypeError naming ``name`` (``what`` it must be) otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, got bool")
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}") from e
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be {what}, got dtype {t.dtype}")
    return t


def _targets(target, n: int, k: int, device) -> Tensor:
    """target as N class indices in [0, k) (k: the model's number of outputs)."""
    t = _integer_tensor(target, "target", "an int or integer class indices")
    t = t.to(device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target must be an int or have one entry per input ({n}), got {t.numel()}")
    if n and (bool((t < 0).any()) or bool((t >= k).any())):
        bad = t[(t < 0) | (t >= k)][0].item()
        raise ValueError(f"target must be class indices in [0, {k}) (the model has {k} outputs), got {bad}")
    return t


@contextlib.contextmanager
def _parameters_frozen(model: nn.Module):
    """The model's parameters set not to require grad for the explanation's pass, then restored.
    ``torch.autograd.grad(out, x)`` does not tell a custom op's backward which of its inputs are
    wanted (it sees only ``requires_grad`` at forward time), so each layer would compute a weight
    gradient nobody reads."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _explained_pass(model: nn.Module, xb: Tensor, columns):
    """(maps, out): one forward pass of the batch ``xb`` in explanation mode, then for each entry
    of ``columns`` (a ``target`` as :func:`dynamic_linear_map` takes it, checked against the
    model's K outputs) the input gradient of those outputs, a backward pass through the same graph
    (retained between them). maps: a list, one per column."""
    xb = xb.detach().clone().requires_grad_(True)
    maps = []
    with explanation_mode(model), _parameters_frozen(model), torch.enable_grad():
        out = model(xb)
        if out.dim() != 2 or out.shape[0] != xb.shape[0]:
            raise ValueError(f"the model must return (N, K) outputs, got shape {tuple(out.shape)}")
        cols = [_targets(col, out.shape[0], out.shape[1], out.device) for col in columns]
        for k, t in enumerate(cols):
            (w,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xb, retain_graph=k + 1 < len(cols))
            maps.append(w)
    return maps, out.detach()


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
    xb = x.unsqueeze(0) if single else x
    (w,), out = _explained_pass(model, xb, [target])
    if single:
        w, out = w[0], out[0]
    return (w, out) if return_output else w


def dynamic_linear_maps(model: nn.Module, x: Tensor, targets, return_output: bool = False):
    """:func:`dynamic_linear_map` for T targets of each input (top-k classes, every class of a
    pointing-game grid): one forward pass and T backward passes through its graph, where T calls
    would run the forward T times.

    Args:
        model, x: as in :func:`dynamic_linear_map` ((N, *in) inputs, or one (C, H, W) image).
        targets: (N, T) class indices, T per input; for one image, T class indices.
        return_output: also return the model output.

    Returns:
        (N, T, *in) W rows ((T, *in) for one image), and the output when ``return_output``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    single = x.dim() == 3
    xb = x.unsqueeze(0) if single else x
    t = _target_matrix(targets, xb.shape[0], single)
    maps, out = _explained_pass(model, xb, t.unbind(1))
    w = torch.stack(maps, 1) if maps else xb.new_empty(xb.shape[0], 0, *xb.shape[1:])
    if single:
        w, out = w[0], out[0]
    return (w, out) if return_output else w


def _target_matrix(targets, n: int, single: bool) -> Tensor:
    """targets as an (N, T) integer tensor (values are checked against K later)."""
    t = _integer_tensor(targets, "targets", "integer class indices")
    if single and t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] != n:
        want = "(T,) for one image" if single else f"({n}, T), T targets per input"
        raise ValueError(f"targets must have shape {want}, got {tuple(t.shape)}")
    return t


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


# -- the grid pointing game (Sec. 4, "Evaluating explanations") ------------------------------------

def image_grid(images: Tensor) -> Tensor:
    """Tile G*G images into one G x G grid image, cell k at row k // G, column k % G.

    ``images``: (G*G, C, H, W) -> (C, G*H, G*W), or a batch (B, G*G, C, H, W) -> (B, C, G*H, G*W)."""
    if not isinstance(images, Tensor) or images.dim() not in (4, 5):
        got = getattr(images, "shape", type(images).__name__)
        raise ValueError(f"images must be (G*G, C, H, W) or (B, G*G, C, H, W), got {got}")
    single = images.dim() == 4
    x = images.unsqueeze(0) if single else images
    b, cells, c, h, w = x.shape
    g = _grid_side(cells)
    out = x.reshape(b, g, g, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * h, g * w)
    return out[0] if single else out


def _grid_side(cells: int) -> int:
    g = int(round(cells ** 0.5))
    if cells < 1 or g * g != cells:
        raise ValueError(f"the number of grid cells must be a square G*G >= 1, got {cells}")
    return g


def grid_shares(maps: Tensor, grid: int, smooth: int = 0) -> Tensor:
    """The share of the positive attribution that falls in each cell of a ``grid`` x ``grid`` image.

    ``maps``: (..., G*H, G*W) attribution maps (e.g. :func:`contributions` of a grid image).
    ``smooth``: an odd box-filter size applied first (stride 1, zero padding; the paper smooths
    by 15 on ImageNet, 3 on CIFAR-10, to account for small negative attributions), 0: none.
    Negative values are then set to 0 and each cell's sum is divided by the total; a map without
    positive attribution gets shares 0. Returns (..., G*G) in the cell order of :func:`image_grid`.
    """
    if not isinstance(maps, Tensor) or maps.dim() < 2:
        raise ValueError(f"maps must be a tensor (..., G*H, G*W), got {getattr(maps, 'shape', type(maps).__name__)}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an int >= 1 (cells per side), got {grid!r}")
    hh, ww = maps.shape[-2:]
    if hh % grid or ww % grid or hh == 0 or ww == 0:
        raise ValueError(f"maps' last two dims must be divisible by grid={grid}, got {tuple(maps.shape[-2:])}")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0 or (smooth and smooth % 2 == 0):
        raise ValueError(f"smooth must be 0 or an odd box size, got {smooth!r}")
    lead = maps.shape[:-2]
    m = maps.detach().reshape(-1, 1, hh, ww)
    if smooth > 1:
        m = F.avg_pool2d(m, smooth, stride=1, padding=smooth // 2)
    m = m.clamp(min=0)
    cell = m.reshape(-1, grid, hh // grid, grid, ww // grid).sum((2, 4)).reshape(-1, grid * grid)
    total = cell.sum(1, keepdim=True)
    share = torch.where(total > 0, cell / total.clamp_min(torch.finfo(cell.dtype).tiny), torch.zeros_like(cell))
    return share.reshape(*lead, grid * grid)


def grid_pointing_game(model: nn.Module, images: Tensor, targets, smooth: int = 0) -> Tensor:
    """The grid pointing game of the B-cos paper (Sec. 4, after CoDA-Nets): each G x G grid of
    images of different classes goes through the model once per cell; the contribution map
    (eq. 15) of the cell's class is scored by the share of its positive contribution that falls
    in that cell (:func:`grid_shares`). A perfect localisation scores 1, a uniform one 1 / G^2.

    Args:
        model: a B-cos model (or any model :func:`contributions` explains) mapping grid images
            (N, C, G*H, G*W) to (N, K) logits (fully convolutional, or built for the grid size).
        images: (B, G*G, C, H, W): B groups of G*G images, one class per cell (see
            :func:`pointing_game_groups`).
        targets: (B, G*G) the class of each cell.
        smooth: box-filter size of :func:`grid_shares`.

    Returns:
        (B, G*G) scores; ``.mean()`` is the localisation metric.

    All B * G*G explanations run as one batch: for large images pass a few groups per call.
    """
    grids = image_grid(images)
    if grids.dim() == 3:  # one group
        grids, images = grids.unsqueeze(0), images.unsqueeze(0)
    b, cells = images.shape[:2]
    t = torch.as_tensor(targets, device=images.device)
    allowed = [(b, cells)] + ([(cells,)] if b == 1 else [])
    if t.is_floating_point() or t.dtype == torch.bool or tuple(t.shape) not in allowed:
        raise ValueError(f"targets must be ({b}, {cells}) integer classes, got shape {tuple(t.shape)} dtype {t.dtype}")
    t = t.reshape(b, cells)
    if bool((t.sort(1).values.diff(dim=1) == 0).any()):
        raise ValueError("each grid's cells must hold different classes (targets has a repeated class in a row)")
    maps = (dynamic_linear_maps(model, grids, t) * grids[:, None]).sum(2)  # (b, cells, G*H, G*W)
    shares = grid_shares(maps, _grid_side(cells), smooth).reshape(b, cells, cells)
    return shares.diagonal(dim1=1, dim2=2)


@torch.no_grad()
def pointing_game_groups(logits: Tensor, labels, cells: int = 4, num_groups: int | None = None,
                         seed: int = 0) -> Tensor:
    """Pick the images for the pointing game, as the paper's protocol: only correctly classified
    images, per class in order of decreasing confidence (the logit of the class); each group takes
    ``cells`` different classes drawn at random among those with images left, and the next most
    confident image of each.

    Args:
        logits: (N, K) the model's outputs on the candidate images.
        labels: (N,) their classes.
        cells: images per group (G*G).
        num_groups: at most this many groups (None: as many as the images allow).
        seed: the class draws.

    Returns:
        (B, cells) indices into the candidates; ``labels[idx]`` are the targets.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be (N, K), got {getattr(logits, 'shape', type(logits).__name__)}")
    y = torch.as_tensor(labels, device=logits.device)
    if y.is_floating_point() or tuple(y.shape) != (logits.shape[0],):
        raise ValueError(f"labels must be ({logits.shape[0]},) integer classes, got shape {tuple(y.shape)}")
    _grid_side(cells)
    correct = logits.argmax(1) == y
    queues = {}
    for c in y[correct].unique().tolist():
        idx = (correct & (y == c)).nonzero().flatten()
        queues[c] = idx[logits[idx, c].argsort(descending=True)].tolist()
    g = np.random.default_rng(seed)
    groups = []
    while num_groups is None or len(groups) < num_groups:
        alive = sorted(c for c, q in queues.items() if q)
        if len(alive) < cells:
            break
        pick = g.choice(alive, size=cells, replace=False)
        groups.append([queues[int(c)].pop(0) for c in pick])
    return torch.tensor(groups, dtype=torch.long).reshape(-1, cells)
