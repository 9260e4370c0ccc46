"""rbfkern.evaluate: precision@k of the learned metric, Euclidean and cosine retrieval against a
brute-force computation (full distance matrix, argsort)."""
import pytest
import torch

from rbfkern.evaluate import precision_at_k, retrieval_precision
from rbfkern.nn import RBF


def _data(seed=0, q=23, m=57, d=5, classes=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(q, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (q,), generator=g),
            torch.randn(m, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (m,), generator=g))


def _brute(query, yq, bank, yb, k, dist):
    d = dist(query, bank)  # (Q, M), smaller is more similar
    idx = d.argsort(1)[:, :k]
    return float((yb[idx] == yq[:, None]).double().mean())


def _learned_dist(rbf):
    w = rbf.diag_weights().detach().double()  # (C, D): R_j = diag(w_j)
    c = rbf.centers.detach().double()

    def dist(q, b):
        nearest = (((q[:, None] - c[None]) ** 2) * w[None]).sum(-1).argmin(1)  # the query's centre
        return (((q[:, None] - b[None]) ** 2) * w[nearest][:, None]).sum(-1)

    return dist


@pytest.mark.parametrize("k", [1, 4, 10, 57])
def test_precision_matches_brute_force(k):
    q, yq, b, yb = _data()
    torch.manual_seed(0)
    rbf = RBF(5, 3, metric="diag", dtype=torch.float64)
    with torch.no_grad():
        rbf.raw_diag.normal_()
    eucl = lambda x, y: torch.cdist(x, y)  # noqa: E731
    cos = lambda x, y: -(torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T)  # noqa: E731
    assert precision_at_k(q, yq, b, yb, k, "euclidean") == pytest.approx(_brute(q, yq, b, yb, k, eucl), abs=1e-12)
    assert precision_at_k(q, yq, b, yb, k, "cosine") == pytest.approx(_brute(q, yq, b, yb, k, cos), abs=1e-12)
    assert precision_at_k(q, yq, b, yb, k, "learned", rbf) == pytest.approx(
        _brute(q, yq, b, yb, k, _learned_dist(rbf)), abs=1e-12)


def test_metrics_differ_where_they_should():
    # Class is coded in the direction of the first two features, not in their length: cosine
    # retrieves them perfectly; a learned metric that ignores the noisy third feature ranks as
    # the Euclidean distance on the first two.
    g = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 2
    direction = torch.stack([1.0 - y.double(), y.double()], 1)
    scale = torch.rand(40, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    x = torch.cat([direction * scale, 3 * torch.randn(40, 1, generator=g, dtype=torch.float64)], 1)
    q, b, yq, yb = x[:10], x[10:], y[:10], y[10:]
    rbf = RBF(3, 1, metric="shared_diag", dtype=torch.float64)
    rbf.set_diag(torch.tensor([1.0, 1.0, 1e-12], dtype=torch.float64))
    q2, b2 = q[:, :2], b[:, :2]
    assert precision_at_k(q2, yq, b2, yb, 5, "cosine") == 1.0
    want = precision_at_k(q2, yq, b2, yb, 5, "euclidean")
    assert precision_at_k(q, yq, b, yb, 5, "learned", rbf) == pytest.approx(want)


def test_retrieval_precision_table():
    q, yq, b, yb = _data(2)
    rbf = RBF(5, 2, metric="diag", dtype=torch.float64)
    out = retrieval_precision(q, yq, b, yb, rbf, ks=(1, 3))
    assert set(out) == {"learned", "euclidean", "cosine"} and set(out["cosine"]) == {1, 3}
    assert out["euclidean"][3] == precision_at_k(q, yq, b, yb, 3, "euclidean")


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(metric="l1"), ValueError, "metric"),
    (dict(metric="learned"), ValueError, "metric_module"),
    (dict(metric="euclidean", metric_module=RBF(5, 2)), ValueError, "metric_module"),
    (dict(k=0), ValueError, "k must be"),
    (dict(query_labels=torch.zeros(3, dtype=torch.long)), ValueError, "query_labels"),
    (dict(bank_labels=torch.zeros(57)), ValueError, "bank_labels"),
])
def test_bad_input(kwargs, err, match):
    q, yq, b, yb = _data()
    args = dict(query=q, query_labels=yq, bank=b, bank_labels=yb, k=3, metric="euclidean")
    args.update(kwargs)
    with pytest.raises(err, match=match):
        precision_at_k(**args)
