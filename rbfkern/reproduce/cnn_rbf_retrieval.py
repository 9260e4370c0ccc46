"""Claim: CNN-RBF's learned metric retrieves better than the Euclidean and the cosine distance on
the same embedding (cnn-rbf-similarity-metric.txt, Section VII, Fig. 7).

The demo's :class:`rbfkern.nn.CNNRBF` is trained as in the paper (backbone pre-trained with a
softmax head, k-means centres, then eq. (14) end to end); the test digits query the training
digits by each distance and precision@k (the share of retrieved digits of the query's class) is
compared. The RBF input is layer-normalised (the recipe of :class:`rbfkern.nn.CNNRBF`), where the
Euclidean and the cosine distance rank alike, so both are also measured on the projection's
output before the normalisation.
"""
from __future__ import annotations

import torch

from ..demo import cnn_rbf as demo_cnn_rbf
from ..demo import train
from ..evaluate import precision_at_k, retrieval_precision


def run(data, *, seed: int, pre_epochs: int, epochs: int, ks, lam: float = 0.1, progress: bool) -> dict:
    torch.manual_seed(seed)
    model = demo_cnn_rbf.fit(demo_cnn_rbf.build(), data, pre_epochs=pre_epochs, epochs=epochs, seed=seed,
                             progress=progress, lam=lam)
    acc = train.accuracy(model, data.x_test, data.y_test)
    bank, query = model.embeddings(data.x_train), model.embeddings(data.x_test)
    prec = retrieval_precision(query, data.y_test, bank, data.y_train, model.head.rbf, ks=tuple(ks))
    # the baselines also on the projection's output before the LayerNorm (the paper has none)
    raw = {}
    with torch.no_grad():
        model.eval()
        raw_bank = model.project(model.pool(model.backbone(data.x_train)))
        raw_query = model.project(model.pool(model.backbone(data.x_test)))
    for metric in ("euclidean", "cosine"):
        raw[metric] = {k: precision_at_k(raw_query, data.y_test, raw_bank, data.y_train, k, metric) for k in ks}
    return {"accuracy": acc, "precision": prec, "precision_before_norm": raw}
