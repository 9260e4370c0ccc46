"""rbfkern.nn.CNNRBF: shapes, the eq. (14) loss against a direct implementation, gradients, and the
k-means initialisation of the centres from the backbone's features."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rbfkern.nn import CNNRBF


def _backbone():
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))


@pytest.mark.parametrize("pool,feature_dim,embed_dim", [
    ("avg", None, 7), ("max", 5, 7), ("flatten", 5 * 8 * 8, 4), ("avg", 5, None),
], ids=["avg-lazy", "max", "flatten", "no-projection"])
@pytest.mark.parametrize("metric", ["diag", "none", "shared_full"])
def test_shapes(pool, feature_dim, embed_dim, metric):
    torch.manual_seed(0)
    m = CNNRBF(_backbone(), num_classes=3, num_centers=6, metric=metric, kind="gaussian", pool=pool,
               feature_dim=feature_dim, embed_dim=embed_dim)
    x = torch.randn(9, 1, 8, 8)
    logits, r2 = m(x, return_r2=True)
    d = embed_dim or feature_dim
    assert logits.shape == (9, 3) and r2.shape == (9, 6)
    assert m.embed(x).shape == (9, d) and m.embed_dim == d and m.num_classes == 3
    assert torch.equal(m(x), logits)


def test_backbone_returning_vectors():
    m = CNNRBF(nn.Linear(4, 6), 2, 3, pool="none", feature_dim=6, embed_dim=None, embed_norm="none")
    x = torch.randn(5, 4)
    assert torch.allclose(m.embed(x), m.backbone(x))
    assert m(x).shape == (5, 2)


def _eq14_direct(m, x, y, lam):
    """Eq. (14) written out in float64: softmax cross-entropy of eq. (2)'s outputs plus lam times the
    mean over samples of the distance to the nearest centre, (x - c_j)^T R_j (x - c_j), R_j = diag(w_j)."""
    emb = m.embed(x).double()
    c = m.head.rbf.centers.double()
    w = F.softplus(m.head.rbf.raw_diag.double())  # (C, D)
    sigma = m.head.rbf.sigma_values().double()
    r2 = ((emb[:, None, :] - c[None]) ** 2 * w[None]).sum(-1)  # (N, C)
    act = torch.exp(-r2 / (2 * sigma ** 2))  # eq. (4) with r^2
    logits = act @ m.head.out.weight.double().T + m.head.out.bias.double()
    ce = -(logits.log_softmax(1)[torch.arange(len(y)), y]).mean()
    return ce + lam * r2.min(1).values.mean()


@pytest.mark.parametrize("lam", [0.0, 0.1, 2.5])
def test_loss_is_eq14(lam):
    torch.manual_seed(1)
    m = CNNRBF(_backbone(), 4, 5, metric="diag", kind="gaussian", embed_dim=6, feature_dim=5, sigma=1.7)
    with torch.no_grad():
        m.head.rbf.raw_diag.normal_()
    x, y = torch.randn(11, 1, 8, 8), torch.randint(0, 4, (11,))
    logits, r2 = m(x, return_r2=True)
    got = m.loss(logits, y, r2, lam).detach()
    with torch.no_grad():
        want = _eq14_direct(m, x, y, lam)
    assert abs(float(got) - float(want)) < 1e-5 * max(1.0, abs(float(want)))


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    m = CNNRBF(_backbone(), 3, 4, metric="diag", kind="quadratic", embed_dim=5, feature_dim=5, learn_sigma=True)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    logits, r2 = m(x, return_r2=True)
    m.loss(logits, y, r2, 0.3).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_gradcheck_float64():
    from torch.func import functional_call

    torch.manual_seed(3)
    m = CNNRBF(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh()), 3, 3, metric="diag", kind="gaussian",
               embed_dim=3, feature_dim=2, dtype=torch.float64).double()
    x, y = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    names = ["backbone.0.weight", "project.weight", "head.rbf.centers", "head.rbf.raw_diag", "head.out.weight"]
    base = dict(m.named_parameters())

    def f(*vals):
        logits, r2 = functional_call(m, {**base, **dict(zip(names, vals))}, (x,), {"return_r2": True})
        return m.loss(logits, y, r2, 0.5)

    assert torch.autograd.gradcheck(f, [base[n].detach().clone().requires_grad_(True) for n in names])


def test_softmax_model_shares_the_embedding():
    torch.manual_seed(5)
    m = CNNRBF(_backbone(), 3, 4, embed_dim=6)  # lazy projection
    soft = m.softmax_model()
    x = torch.randn(4, 1, 8, 8)
    out = soft(x)
    assert out.shape == (4, 3)
    assert torch.allclose(out, soft[-1](m.embed(x)))
    assert soft[0] is m.backbone and soft[3] is m.project
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
    assert m.backbone[0].weight.grad.abs().sum() > 0 and m.head.rbf.centers.grad is None


def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)
    pts = [mu + 0.5 * torch.randn(25 + 5 * i, 2, generator=g, dtype=torch.float64) for i, mu in enumerate(means)]
    return torch.cat(pts), [p.mean(0) for p in pts]


def _sorted_rows(t):
    return t[torch.argsort(t[:, 0] * 1000 + t[:, 1])]


def test_init_centers_at_cluster_means_of_the_backbone_features():
    x, means = _blobs()
    # The backbone maps the inputs through a fixed invertible linear map: the centres must be the
    # cluster means of its features, not of the raw inputs.
    lin = nn.Linear(2, 2, bias=True, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 1.0], [0.0, -1.0]]))
        lin.bias.copy_(torch.tensor([3.0, 1.0]))
    m = CNNRBF(lin, 2, 4, metric="none", kind="gaussian", pool="none", embed_dim=None, feature_dim=2,
               embed_norm="none", dtype=torch.float64)
    inertia = m.init_centers(x, seed=0)
    want = torch.stack([lin(mu) for mu in means]).detach()
    assert torch.allclose(_sorted_rows(m.head.rbf.centers.detach()), _sorted_rows(want), atol=1e-9)
    feats = lin(x).detach()
    r2 = ((feats[:, None] - m.head.rbf.centers.detach()[None]) ** 2).sum(-1)
    assert abs(inertia - float(r2.min(1).values.sum())) < 1e-6 * inertia
    # the width: root mean squared distance of the features to all centres
    assert torch.allclose(m.head.rbf.sigma_values(), r2.mean().sqrt().expand(4))


def test_init_centers_fits_the_output_layer_in_closed_form():
    x, _ = _blobs(2)
    y = torch.cat([torch.full((25 + 5 * i,), i % 3) for i in range(4)])  # 4 blobs, 3 classes
    m = CNNRBF(nn.Identity(), 3, 4, metric="diag", kind="gaussian", pool="none", embed_dim=None, feature_dim=2,
               embed_norm="none", dtype=torch.float64)
    m.init_centers(x, y, ridge=0.5, seed=0)
    # eq. 11-13 with a ridge term and an unpenalised bias, solved directly
    h = m.head.rbf(x).detach()
    hc, yc = h - h.mean(0), F.one_hot(y, 3).double() - F.one_hot(y, 3).double().mean(0)
    w = torch.linalg.solve(hc.T @ hc + 0.5 * torch.eye(4, dtype=torch.float64), hc.T @ yc)
    b = F.one_hot(y, 3).double().mean(0) - h.mean(0) @ w
    assert torch.allclose(m.head.out.weight, w.T, atol=1e-10) and torch.allclose(m.head.out.bias, b, atol=1e-10)
    assert (m(x).argmax(1) == y).all()  # well-separated blobs: the closed-form head classifies them
    with pytest.raises(ValueError, match="labels"):
        m.init_centers(x, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        m.init_centers(x, y + 5)


def test_init_centers_from_batches_and_mode_restored():
    x, means = _blobs(1)
    m = CNNRBF(nn.Identity(), 2, 4, metric="none", pool="none", embed_dim=None, feature_dim=2, embed_norm="none",
               dropout=0.5, dtype=torch.float64)
    m.train()
    m.init_centers([(x[i:i + 16], None) for i in range(0, len(x), 16)], set_sigma=False, seed=0)
    assert m.training  # eval for the embeddings (dropout off), then back
    assert torch.allclose(_sorted_rows(m.head.rbf.centers.detach()), _sorted_rows(torch.stack(means)), atol=0.5)


def test_layernorm_recipe_fixes_the_embedding_scale():
    # With the default embed_norm, scaling the projection (the backbone's whole output scale)
    # leaves the embedding, and with it the unsupervised term of eq. (14), unchanged.
    torch.manual_seed(4)
    m = CNNRBF(_backbone(), 3, 4, embed_dim=6, feature_dim=5)
    x = torch.randn(6, 1, 8, 8)
    before = m.embed(x)
    with torch.no_grad():
        m.project.weight.mul_(10.0)
        m.project.bias.mul_(10.0)
    assert torch.allclose(m.embed(x), before, atol=1e-3)
    assert torch.allclose(before.pow(2).mean(1), torch.ones(6), atol=1e-3)


@pytest.mark.parametrize("kw,match", [
    (dict(pool="sum"), "pool"), (dict(embed_norm="batch"), "embed_norm"), (dict(dropout=1.0), "dropout"),
    (dict(embed_dim=None), "feature_dim"), (dict(embed_dim=0), "embed_dim"), (dict(metric="cos"), "metric"),
    (dict(kind="relu"), "kind"), (dict(feature_dim=-1), "feature_dim"),
])
def test_bad_arguments(kw, match):
    args = dict(pool="avg", embed_dim=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        CNNRBF(_backbone(), 3, 4, **args)


def test_bad_backbone():
    with pytest.raises(TypeError, match="backbone"):
        CNNRBF(lambda x: x, 3, 4)
    m = CNNRBF(_backbone(), 3, 4, pool="none", embed_dim=4, feature_dim=5)
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        m(torch.randn(2, 1, 8, 8))
