"""The demo's pictures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _img(ax, x, title=None, cmap="gray_r", **kw):
    ax.imshow(x.detach().reshape(x.shape[-2], x.shape[-1]).cpu().numpy(), cmap=cmap, **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def retrieval(path, queries, bank, near, far) -> str:
    """Each row: a test digit, its 7 most similar and 7 most dissimilar training digits (Fig. 6)."""
    q, k = near.shape
    fig, axes = plt.subplots(q, 2 * k + 1, figsize=(2 * k + 1, q * 1.1))
    for i in range(q):
        _img(axes[i, 0], queries[i], "query" if i == 0 else None, cmap="Blues")
        for j in range(k):
            _img(axes[i, 1 + j], bank[near[i, j]], "similar" if i == 0 and j == k // 2 else None)
            _img(axes[i, 1 + k + j], bank[far[i, j]], "dissimilar" if i == 0 and j == k // 2 else None, cmap="Reds")
    fig.suptitle("retrieval under the learned metric (eq. 16-17)", fontsize=9)
    return _save(fig, path)


def clusters(path, queries, bank, prototype, contrib, top: int = 3) -> str:
    """Each row: a test digit, then the prototypes of its top clusters for the predicted class and
    for the runner-up class, with their contributions act * w (Fig. 8)."""
    n = queries.shape[0]
    fig, axes = plt.subplots(n, 2 * top + 1, figsize=(2 * top + 1, n * 1.25))
    for i in range(n):
        _img(axes[i, 0], queries[i], f"pred {int(contrib.target[i])}", cmap="Blues")
        for j in range(top):
            c = int(contrib.target_order[i, j])
            _img(axes[i, 1 + j], bank[prototype[c]], f"c{c} {float(contrib.target_contrib[i, j]):+.2f}")
            c = int(contrib.runner_up_order[i, j])
            _img(axes[i, 1 + top + j], bank[prototype[c]],
                 f"{int(contrib.runner_up[i])}: c{c} {float(contrib.runner_up_contrib[i, j]):+.2f}", cmap="Reds")
    fig.suptitle("clusters for the predicted (grey) and runner-up (red) class", fontsize=9)
    return _save(fig, path)


def contribution_maps(path, images, maps, pred) -> str:
    """Each column: a test digit and the contribution map of its predicted class (eq. 15)."""
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(n * 1.1, 2.4))
    for i in range(n):
        _img(axes[0, i], images[i], f"pred {int(pred[i])}")
        m = maps[i]
        lim = float(m.abs().max()) or 1.0
        _img(axes[1, i], m, None, cmap="bwr", vmin=-lim, vmax=lim)
    axes[1, 0].set_ylabel("contrib.", fontsize=7)
    fig.suptitle("B-cos contribution maps: red for, blue against the predicted class", fontsize=9)
    return _save(fig, path)


def basis(path, phi, names, filters) -> str:
    """Top: the Gaussian-derivative basis; bottom: learned effective filters of the first layer."""
    m, f = phi.shape[0], filters.shape[0]
    cols = max(m, f)
    fig, axes = plt.subplots(2, cols, figsize=(cols * 1.1, 2.6))
    for j in range(cols):
        for r in range(2):
            axes[r, j].axis("off")
    for j in range(m):
        axes[0, j].axis("on")
        _img(axes[0, j], phi[j], names[j], cmap="bwr")
    for j in range(f):
        axes[1, j].axis("on")
        _img(axes[1, j], filters[j].flip(-1, -2), f"filter {j}", cmap="bwr")
    fig.suptitle("Gaussian-derivative basis (sigma 2) and learned filters", fontsize=9)
    return _save(fig, path)
