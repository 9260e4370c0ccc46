"""Part 1: CNN + RBF head with a learned diagonal metric (paper cnn-rbf-similarity-metric).

Training follows the paper: a backbone pre-trained with a softmax head; centres initialised by
k-means of the embeddings (Section III); then backbone and head trained together on
cross-entropy + lam * the unsupervised clustering loss (eq. 14). Figures: retrieval of the most
similar / dissimilar training digits under the learned metric (eq. 16-17, Fig. 6) and the clusters
behind the predicted and runner-up classes (Section VII, Fig. 8).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import nn as rnn
from . import figures, train


def backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )


def build(embed: int = 32, centers: int = 30, classes: int = 10) -> rnn.CNNRBF:
    """Flattened 2x2 maps -> a 32-d embedding, layer-normalised (the recipe of rbfkern.nn.CNNRBF)."""
    return rnn.CNNRBF(backbone(), classes, centers, metric="diag", kind="gaussian", embed_dim=embed,
                      pool="flatten", feature_dim=64 * 2 * 2)


def fit(model: rnn.CNNRBF, data, *, pre_epochs: int, epochs: int, seed: int, progress: bool, lam: float = 0.1,
        on_epoch=None) -> rnn.CNNRBF:
    """The paper's three stages on ``data`` (demo.data.Digits)."""
    # Stage 1: the backbone with a plain softmax head.
    train.fit(model.softmax_model(), data.x_train, data.y_train, epochs=pre_epochs, lr=2e-3, seed=seed,
              desc="cnn-rbf pretrain", progress=progress)
    # Stage 2: k-means centres in the embedding space; widths from the distances to them; the
    # output layer in closed form (eq. 11-13), so eq. 14's cross-entropy steers from the start.
    model.init_centers(data.x_train, data.y_train, seed=seed)

    # Stage 3: everything together on eq. (14).
    def loss_fn(m, xb, yb):
        logits, r2 = m(xb, return_r2=True)
        return m.loss(logits, yb, r2, lam)

    return train.fit(model, data.x_train, data.y_train, epochs=epochs, lr=3e-3, seed=seed + 1, loss_fn=loss_fn,
                     desc="cnn-rbf joint", progress=progress, on_epoch=on_epoch)


def run(data, out_dir, *, quick: bool, seed: int, progress: bool, lam: float = 0.1) -> dict:
    torch.manual_seed(seed)
    model = build()
    unsup = []

    def log_unsup(_epoch):
        with torch.no_grad():
            _, r2 = model(data.x_train, return_r2=True)
            unsup.append(float(rnn.unsupervised_loss(r2)))

    pre_epochs, epochs = (2, 6) if quick else (5, 20)
    fit(model, data, pre_epochs=pre_epochs, epochs=epochs, seed=seed, progress=progress, lam=lam, on_epoch=log_unsup)
    acc = train.accuracy(model, data.x_test, data.y_test)

    bank, queries = model.embeddings(data.x_train), model.embeddings(data.x_test[:5])
    _, near = rnn.similar(queries, bank, 7, metric_module=model.head.rbf)
    _, far = rnn.similar(queries, bank, 7, metric_module=model.head.rbf, largest=True)
    files = [figures.retrieval(out_dir / "retrieval.png", data.x_test[:5], data.x_train, near, far)]

    contrib = rnn.cluster_contributions(model.head, queries[:4])
    with torch.no_grad():
        r2_bank = model.head.rbf(bank, return_r2=True)[1]  # (N_train, C)
    prototype = r2_bank.argmin(0)  # the training digit nearest each centre represents its cluster
    files.append(figures.clusters(out_dir / "clusters.png", data.x_test[:4], data.x_train, prototype, contrib))
    return {"accuracy": acc, "unsupervised_loss": unsup, "files": files}
