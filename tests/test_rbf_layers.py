"""RBF layers: modules vs explicit formulas, k-means vs scikit-learn, retrieval vs brute force, the
classic two-stage network on the TinyML text's worked cases, and a CNN-RBF on the digits data."""
import math
import time

import pytest
import torch
from torch import nn

from rbfkern import reference
from rbfkern.kmeans import init_centers, kmeans
from rbfkern.nn.rbf import RBF, RBFClassifier, cluster_contributions, unsupervised_loss
from rbfkern.nn.rbf_network import RBFNetwork
from rbfkern.ols import ols_select
from rbfkern.retrieval import similar
from rbfkern.ridge import Ridge

from conftest import CPU_BACKENDS, CUDA, device_of

METRICS = ["none", "diag", "shared_diag", "full", "shared_full"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: 2 threads on the shared 2-core box made the digits test 9x slower (174 s vs 19 s)
    yield
    torch.set_num_threads(old)


def randomise(m: RBF, seed=0):
    """Raw parameters far from the identity init (negative raw values included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
        m.log_sigma.copy_(torch.randn(m.log_sigma.shape, generator=g, dtype=torch.float64) * 0.3)
    return m


def explicit_r2(x, centers, m: RBF):
    """(x - c_j)^T R_j (x - c_j) with R_j formed as a dense matrix from the module's metric."""
    c, d = centers.shape
    if m.metric == "none":
        R = torch.eye(d, dtype=x.dtype).expand(c, d, d)
    elif m.metric in ("diag", "shared_diag"):
        R = torch.diag_embed(m.diag_weights().expand(c, d))
    else:
        L = m.tril_factor().expand(c, d, d)
        R = L @ L.transpose(1, 2)
    diff = x[:, None, :] - centers[None]
    return torch.einsum("ncd,cde,nce->nc", diff, R, diff)


# ---------------------------------------------------------------------------------------------
# RBF module
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", ["quadratic", "gaussian", "inverse_multiquadric"])
def test_rbf_forward_matches_explicit_formula(metric, kind):
    torch.manual_seed(0)
    m = randomise(RBF(5, 7, metric=metric, kind=kind, dtype=torch.float64), seed=1)
    x = torch.randn(11, 5, dtype=torch.float64)
    act, r2 = m(x, return_r2=True)
    want_r2 = explicit_r2(x, m.centers, m)
    torch.testing.assert_close(r2, want_r2, rtol=1e-10, atol=1e-10)
    want = reference.rbf_activation(want_r2, kind, m.sigma_values(), m.shape)
    torch.testing.assert_close(act, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(x), act)
    # Leading dimensions are kept, as nn.Linear does.
    torch.testing.assert_close(m(x.reshape(11, 1, 5)).reshape(11, 7), act)


@pytest.mark.parametrize("metric", METRICS)
def test_layer_reads_no_parameter_values_and_matches_the_op(metric, monkeypatch):
    # the layer's metric and sigma are positive by construction: its forward makes no value
    # check (a reduction and, on a GPU, a host sync each); the public op still makes them
    from rbfkern.ops import _checks
    from rbfkern.ops import rbf as rbf_op
    from rbfkern.ops import rbf_r2 as rbf_r2_op

    reads = []
    real = _checks.values
    monkeypatch.setattr(_checks, "values", lambda name, t, **kw: (reads.append(name), real(name, t, **kw))[1])
    m = randomise(RBF(5, 7, metric=metric, kind="gaussian", dtype=torch.float64), seed=3)
    x = torch.randn(9, 5, dtype=torch.float64)
    act, r2 = m(x, return_r2=True)
    r2_only = m.r2(x)
    assert reads == []
    kw = m.metric_kwargs()
    want_act, want_r2 = rbf_op(x, m.centers, sigma=m.sigma_values(), kind="gaussian", shape=m.shape,
                               return_r2=True, **kw)
    assert torch.equal(act, want_act) and torch.equal(r2, want_r2) and torch.equal(r2_only, rbf_r2_op(x, m.centers, **kw))
    assert reads == [*kw, "sigma", *kw]  # rbf: the metric, then sigma; rbf_r2: the metric
    with pytest.raises(ValueError, match="x must have shape"):  # shapes are still checked
        m(torch.randn(9, 4, dtype=torch.float64))


@pytest.mark.parametrize("metric", METRICS)
def test_parametrisation_stays_positive(metric):
    m = randomise(RBF(4, 3, metric=metric), seed=2)
    with torch.no_grad():
        for p in m.parameters():
            p.sub_(5.0)  # strongly negative raw values
    assert (m.sigma_values() > 0).all() and m.sigma_values().shape == (3,)
    w, t = m.diag_weights(), m.tril_factor()
    lead = () if metric.startswith("shared") else (3,)
    if metric.endswith("diag"):
        assert t is None and w.shape == (*lead, 4) and (w > 0).all()
    elif metric.endswith("full"):
        assert w is None and t.shape == (*lead, 4, 4)
        assert torch.equal(t, torch.tril(t))
        assert (torch.diagonal(t, dim1=-2, dim2=-1) > 0).all()
        v = torch.randn(4, 1, dtype=torch.float64)  # v^T R v = ||L^T v||^2 > 0: R = L L^T is positive definite
        assert ((t.double().transpose(-1, -2) @ v) ** 2).sum((-2, -1)).min() > 0
    else:
        assert w is None and t is None


@pytest.mark.parametrize("metric", METRICS)
def test_reset_and_setters(metric):
    m = randomise(RBF(3, 4, metric=metric, sigma=torch.tensor([0.5, 1.0, 2.0, 3.0])))
    m.reset_parameters()
    torch.testing.assert_close(m.sigma_values(), torch.tensor([0.5, 1.0, 2.0, 3.0]))
    if metric.endswith("diag"):
        torch.testing.assert_close(m.diag_weights(), torch.ones_like(m.diag_weights()))
        target = torch.rand_like(m.diag_weights()) + 0.1
        m.set_diag(target)
        torch.testing.assert_close(m.diag_weights(), target)
    if metric.endswith("full"):
        eye = torch.eye(3).expand_as(m.tril_factor())
        torch.testing.assert_close(m.tril_factor(), eye)
        target = torch.tril(torch.randn_like(m.tril_factor()) * 0.3) + 2 * eye
        m.set_tril(target)
        torch.testing.assert_close(m.tril_factor(), target, rtol=1e-5, atol=1e-5)
    m.set_sigma(0.25)
    torch.testing.assert_close(m.sigma_values(), torch.full((4,), 0.25))


@pytest.mark.parametrize("metric", METRICS)
def test_rbf_gradients_reach_every_parameter(metric):
    m = randomise(RBF(4, 5, metric=metric, kind="gaussian", dtype=torch.float64), seed=3)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    act, r2 = m(x, return_r2=True)
    (act.sum() + r2.sum()).backward()
    for name, p in list(m.named_parameters()) + [("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # The module's gradient equals autograd through the explicit formula.
    params = dict(m.named_parameters())
    grads = torch.autograd.grad(m(x).sum(), list(params.values()))
    want_act = reference.rbf_activation(explicit_r2(x, m.centers, m), "gaussian", m.sigma_values())
    want = torch.autograd.grad(want_act.sum(), list(params.values()))
    for n, g, w in zip(params, grads, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10, msg=n)


def _roundtrip(make, model, x):
    fresh = make()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("metric", METRICS)
def test_state_dict_roundtrip(metric):
    x = torch.randn(8, 4)
    m = randomise(RBF(4, 3, metric=metric, learn_sigma=False), seed=4)
    assert "log_sigma" in m.state_dict() and "log_sigma" not in dict(m.named_parameters())
    _roundtrip(lambda: RBF(4, 3, metric=metric, learn_sigma=False), m, x)
    c = RBFClassifier(4, 3, 2, metric=metric)
    randomise(c.rbf, seed=5)
    _roundtrip(lambda: RBFClassifier(4, 3, 2, metric=metric), c, x)


def test_rbf_network_state_dict_roundtrip():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g) * 10 + 5  # labels 5, 15, 25
    net = RBFNetwork(6, metric="diag", task="classification", standardize=True, lam=1e-3).fit(X, y)
    fresh = RBFNetwork(6, metric="diag", task="classification", standardize=True)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), net(X), rtol=0, atol=0)
    assert torch.equal(fresh.predict(X), net.predict(X))
    assert fresh.classes_.tolist() == [5, 15, 25]


@pytest.mark.parametrize("metric", ["diag", "full"])
def test_dtype_and_device_moves(metric):
    torch.manual_seed(0)
    c = RBFClassifier(4, 5, 3, metric=metric, kind="gaussian")
    randomise(c.rbf, seed=6)
    x = torch.randn(9, 4)
    y32 = c(x)
    c64 = c.to(torch.float64)
    assert c64.rbf.centers.dtype == torch.float64 and c64.rbf.sigma_values().dtype == torch.float64
    y64 = c64(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-5, atol=1e-5)
    c.to("cpu", torch.float32)
    assert c.rbf.centers.dtype == torch.float32 and c.out.weight.device.type == "cpu"
    with pytest.raises(TypeError, match="dtype"):
        c(x.double())  # mismatched input dtype is reported by the op, not silently cast


def test_extra_repr():
    r = repr(RBFClassifier(4, 5, 3, metric="shared_full", kind="logistic", shape=0.7))
    for s in ("in_features=4", "num_centers=5", "shared_full", "logistic", "shape=0.7", "out_features=3"):
        assert s in r


# ---------------------------------------------------------------------------------------------
# Losses and interpretability
# ---------------------------------------------------------------------------------------------


def test_unsupervised_loss_and_classifier_loss():
    g = torch.Generator().manual_seed(0)
    r2 = torch.rand(7, 4, generator=g, dtype=torch.float64)
    want = sum(min(row) for row in r2.tolist()) / 7  # eq. (10), averaged over samples
    assert math.isclose(float(unsupervised_loss(r2)), want, rel_tol=1e-12)
    logits = torch.randn(7, 3, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    ce = -sum(float(torch.log_softmax(logits[i], 0)[t]) for i, t in enumerate(target.tolist())) / 7
    got = RBFClassifier.loss(logits, target, r2, lam=0.3)
    assert math.isclose(float(got), ce + 0.3 * want, rel_tol=1e-12)
    assert math.isclose(float(RBFClassifier.loss(logits, target)), ce, rel_tol=1e-12)


def test_cluster_contributions_brute_force():
    torch.manual_seed(0)
    model = RBFClassifier(3, 6, 4, metric="diag", kind="gaussian", dtype=torch.float64)
    randomise(model.rbf, seed=7)
    x = torch.randn(10, 3, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    res = cluster_contributions(model, x, target)
    with torch.no_grad():
        act = model.rbf(x)
        logits = model(x)
    W = model.out.weight.detach()
    for n in range(10):
        t = int(target[n])
        others = [k for k in range(4) if k != t]
        runner = max(others, key=lambda k: float(logits[n, k]))
        assert int(res.runner_up[n]) == runner
        for cls, order, contrib in ((t, res.target_order, res.target_contrib), (runner, res.runner_up_order, res.runner_up_contrib)):
            vals = [float(act[n, j] * W[cls, j]) for j in range(6)]
            assert order[n].tolist() == sorted(range(6), key=lambda j: -vals[j])
            assert math.isclose(sum(contrib[n].tolist()) + float(model.out.bias.detach()[cls]), float(logits[n, cls]), rel_tol=1e-9, abs_tol=1e-12)
    # Default target: the predicted class.
    assert torch.equal(cluster_contributions(model, x).target, logits.argmax(1))


# ---------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------


def _digits():
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float64)


def test_kmeans_matches_sklearn_inertia():
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    X = _digits()
    for k in (10,):
        ours = kmeans(X, k, seed=0)
        sk = KMeans(k, n_init=1, random_state=0).fit(X.numpy())
        assert ours.inertia <= 1.03 * sk.inertia_, (k, ours.inertia, sk.inertia_)
        assert ours.inertia >= 0.97 * sk.inertia_, (k, ours.inertia, sk.inertia_)
        # The reported inertia and labels are those of the returned centres (brute force).
        d2 = ((X[:, None, :] - ours.centers[None]) ** 2).sum(-1)
        assert math.isclose(float(d2.min(1).values.sum()), ours.inertia, rel_tol=1e-9)
        assert torch.equal(d2.argmin(1), ours.labels)
        # Lloyd fixed point: every centre is the mean of its members.
        for j in range(k):
            torch.testing.assert_close(ours.centers[j], X[ours.labels == j].mean(0))
    Xb, _ = make_blobs(3000, 8, centers=6, random_state=1)
    Xb = torch.tensor(Xb)
    sk = KMeans(6, n_init=1, random_state=0).fit(Xb.numpy()).inertia_
    assert math.isclose(kmeans(Xb, 6, seed=0).inertia, sk, rel_tol=1e-3)
    # Mini-batch on a tensor and on an iterable of batches (data that do not fit).
    assert kmeans(Xb, 6, seed=0, batch_size=256).inertia <= 1.03 * sk
    assert kmeans(list(Xb.split(500)), 6, seed=3).inertia <= 1.03 * sk


def test_kmeans_random_init_and_progress(capsys):
    X = _digits()[:400]
    res = kmeans(X, 5, init="random", seed=1, progress=True)
    assert res.centers.shape == (5, 64) and res.n_iter >= 1
    assert "k-means" in capsys.readouterr().err  # the tqdm bar
    # Given initial centres and one iteration: exactly one Lloyd step.
    init = X[:5].clone()
    lab = ((X[:, None] - init[None]) ** 2).sum(-1).argmin(1)
    want = torch.stack([X[lab == j].mean(0) for j in range(5)])
    torch.testing.assert_close(kmeans(X, 5, init=init, max_iter=1).centers, want)


@pytest.mark.parametrize("metric", ["diag", "shared_full"])
def test_init_centers_in_learned_metric(metric):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(500, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    layer = randomise(RBF(4, 6, metric=metric, dtype=torch.float64), seed=8)
    inertia = init_centers(layer, emb, seed=0)
    d2 = explicit_r2(emb, layer.centers.detach(), layer).detach()
    assert math.isclose(float(d2.min(1).values.sum()), inertia, rel_tol=1e-9)
    # It is a k-means solution: no centre moves when recomputed as its members' mean.
    lab = d2.argmin(1)
    for j in range(6):
        if (lab == j).any():
            torch.testing.assert_close(layer.centers.detach()[j], emb[lab == j].mean(0))
    # Through a classifier (uses .rbf) and from a DataLoader-like iterable of (x, y) batches.
    clf = RBFClassifier(4, 6, 2, metric=metric, dtype=torch.float64)
    batches = [(b, torch.zeros(len(b))) for b in emb.split(100)]
    clf.rbf.load_state_dict(layer.state_dict())
    assert init_centers(clf, batches, seed=0, max_iter=20) <= 1.15 * inertia


# ---------------------------------------------------------------------------------------------
# Retrieval (eq. 16-17)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclid", "shared_diag", "diag", "full", "shared_full"])
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("fast", [True, False, "fallback"])
def test_similar_equals_brute_force(metric, largest, fast, monkeypatch):
    if fast == "fallback":  # GEMM path with half the queries uncertified: they go through the op
        from rbfkern import retrieval

        orig = retrieval._gemm_topk

        def half_certified(*args):
            v, i, ok = orig(*args)
            ok[::2] = False
            return v, i, ok

        monkeypatch.setattr(retrieval, "_gemm_topk", half_certified)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(13, 5, generator=g, dtype=torch.float64)
    bank = torch.randn(301, 5, generator=g, dtype=torch.float64)
    module = None
    if metric != "euclid":
        module = randomise(RBF(5, 4, metric=metric, dtype=torch.float64), seed=9)
    r2, idx = similar(q, bank, 7, metric_module=module, largest=largest, chunk_size=37, fast=fast is not False)
    # Brute force: the full (Q, M) distance matrix under R (per query: R of its nearest centre).
    if module is None:
        full = ((q[:, None] - bank[None]) ** 2).sum(-1)
    else:
        with torch.no_grad():
            near = explicit_r2(q, module.centers, module).argmin(1)
            full = torch.stack([explicit_r2(bank, q[i:i + 1], _one_metric(module, int(near[i])))[:, 0] for i in range(13)])
    order = full.argsort(dim=1, descending=largest, stable=True)[:, :7]
    assert torch.equal(idx, order)
    torch.testing.assert_close(r2, full.gather(1, order), rtol=1e-12, atol=1e-12)


def _one_metric(module: RBF, j: int) -> RBF:
    """A one-centre layer holding the metric R_j of ``module`` (shared metrics: the metric itself)."""
    one = RBF(module.in_features, 1, metric="shared_" + module.metric.replace("shared_", ""), dtype=torch.float64)
    with torch.no_grad():
        if module.diag_weights() is not None:
            w = module.diag_weights()
            one.set_diag(w if w.dim() == 1 else w[j])
        else:
            t = module.tril_factor()
            one.set_tril(t if t.dim() == 2 else t[j])
    return one


def test_similar_against_same_op_full_bank():
    """Chunked streaming returns the values of one unchunked op call (float32, default backend)."""
    from rbfkern.ops import rbf_r2

    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(50, 16, generator=g), torch.randn(2000, 16, generator=g)
    r2, idx = similar(q, bank, 10, chunk_size=333, fast=False)
    full = rbf_r2(bank, q).T
    want_v, want_i = full.topk(10, dim=1, largest=False)
    assert torch.equal(idx, want_i)
    torch.testing.assert_close(r2, want_v)
    r2f, idxf = similar(q, bank, 10, chunk_size=333)  # GEMM candidates, exact re-rank
    assert torch.equal(idxf, want_i)
    torch.testing.assert_close(r2f, want_v)


# ---------------------------------------------------------------------------------------------
# Classic RBF network (TinyML text)
# ---------------------------------------------------------------------------------------------

XOR_X = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
XOR_Y = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)


def test_xor_worked_example():
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    net = RBFNetwork(2, kind="gaussian", centers=centers, sigma=1.0).fit(XOR_X, XOR_Y)
    w = torch.cat([net.out.weight.detach().flatten(), net.out.bias.detach()])
    # Least squares solution (the text's [1.26, 1.26, -2.52] is wrong): fits all four targets exactly.
    torch.testing.assert_close(w, torch.tensor([12.918, 12.918, -16.671], dtype=torch.float64), rtol=0, atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(net(XOR_X), XOR_Y, rtol=0, atol=1e-9)
    # The same as the text's normal equation with its column of ones, solved independently.
    H = torch.stack([torch.exp(-((XOR_X - c) ** 2).sum(1) / 2) for c in centers] + [torch.ones(4, dtype=torch.float64)], 1)
    torch.testing.assert_close(w, torch.linalg.lstsq(H, XOR_Y[:, None]).solution.flatten(), rtol=1e-9, atol=1e-9)
    # Classification task: one-hot targets, predict returns the labels.
    labels = torch.tensor([7, 7, 3, 3])
    clf = RBFNetwork(2, centers=centers, sigma=1.0, task="classification").fit(XOR_X, labels)
    assert clf.out.out_features == 2 and clf.classes_.tolist() == [3, 7]
    assert torch.equal(clf.predict(XOR_X), labels)


def _sine(seed, n=50):
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(1, n + 1, dtype=torch.float64) / n
    return x, torch.sin(2 * math.pi * x) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)


SINE_CENTERS = torch.linspace(0, 1, 20, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("lam", [0.0, 1e-3])
def test_closed_form_loo_equals_refits(lam):
    x, y = _sine(0)
    net = RBFNetwork(20, centers=SINE_CENTERS, sigma=0.1, lam=lam)
    loo = net.score_criterion(x, y, "loo")
    errs = []
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        f = RBFNetwork(20, centers=SINE_CENTERS, sigma=0.1, lam=lam).fit(x[keep], y[keep])
        with torch.no_grad():
            errs.append(float(y[i] - f(x[i:i + 1])[0]) ** 2)
    assert math.isclose(loo, sum(errs) / len(errs), rel_tol=1e-6)


def test_gcv_lambda_beats_lambda_zero_on_sine():
    xt = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ft = torch.sin(2 * math.pi * xt)
    for seed in (0, 1):
        x, y = _sine(seed)
        net = RBFNetwork(20, centers=SINE_CENTERS, sigma=0.1).select(x, y, lam_grid=[0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
        assert net.lam > 0 and net.selection_["scores"].shape == (1, 7)
        assert float(net.selection_["scores"].min()) == net.score_criterion(x, y, "gcv")
        net0 = RBFNetwork(20, centers=SINE_CENTERS, sigma=0.1, lam=0.0).fit(x, y)
        with torch.no_grad():
            err_sel, err0 = float(((net(xt) - ft) ** 2).mean()), float(((net0(xt) - ft) ** 2).mean())
        assert err_sel < err0, (seed, net.lam, err_sel, err0)


def test_ridge_against_normal_equation_and_hat_matrix():
    g = torch.Generator().manual_seed(0)
    H = torch.rand(30, 6, generator=g, dtype=torch.float64)
    Y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    Ha = torch.cat([H, torch.ones(30, 1, dtype=torch.float64)], 1)
    pen = torch.diag(torch.tensor([1.0] * 6 + [0.0], dtype=torch.float64))  # the bias is not penalised
    r = Ridge(H, Y)
    for lam in (0.0, 1e-2, 3.0):
        A = Ha.T @ Ha + lam * pen
        wa = torch.linalg.solve(A, Ha.T @ Y)
        w, b = r.weights(lam)
        torch.testing.assert_close(torch.cat([w, b[None]]), wa, rtol=1e-9, atol=1e-10)
        P = Ha @ torch.linalg.solve(A, Ha.T)
        torch.testing.assert_close(r.hat_diag(lam), torch.diagonal(P), rtol=1e-9, atol=1e-12)
        res = Y - P @ Y
        gcv = 30 * float((res ** 2).sum() / 2) / (30 - float(torch.trace(P))) ** 2
        assert math.isclose(r.gcv(lam), gcv, rel_tol=1e-9)
        loo = float(((res / (1 - torch.diagonal(P))[:, None]) ** 2).mean())
        assert math.isclose(r.loo(lam), loo, rel_tol=1e-9)


def test_ols_matches_greedy_least_squares():
    g = torch.Generator().manual_seed(0)
    phi = torch.rand(40, 15, generator=g, dtype=torch.float64)
    y = torch.randn(40, 1, generator=g, dtype=torch.float64)
    idx, err = ols_select(phi, y, 5)
    # Brute force: add, one at a time, the column whose least-squares fit (with bias) has the lowest RSS.
    chosen = []
    for _ in range(5):
        def rss(j):
            A = torch.cat([phi[:, chosen + [j]], torch.ones(40, 1, dtype=torch.float64)], 1)
            return float(((y - A @ torch.linalg.lstsq(A, y).solution) ** 2).sum())
        chosen.append(min((j for j in range(15) if j not in chosen), key=rss))
    assert idx.tolist() == chosen
    assert (err > 0).all() and float(err.sum()) <= 1.0 + 1e-12


@pytest.mark.parametrize("method", ["kmeans", "random", "ols"])
def test_rbf_network_center_methods(method):
    x, y = _sine(2, n=200)
    net = RBFNetwork(12, centers=method, lam=1e-6).fit(x, y)
    assert net.rbf.centers.shape == (12, 1) and (net.rbf.sigma_values() > 0).all()
    with torch.no_grad():
        mse = float(((net(x) - torch.sin(2 * math.pi * x)) ** 2).mean())
    assert mse < 0.01, mse
    if method != "ols":  # nearest-centre heuristic: sigma_j = min_k |c_j - c_k|
        c = net.rbf.centers.detach()[:, 0]
        d = (c[:, None] - c[None]).abs() + torch.eye(12, dtype=c.dtype) * 1e9
        torch.testing.assert_close(net.rbf.sigma_values().detach(), d.min(1).values)


@pytest.mark.parametrize("metric", ["none", "diag", "shared_diag", "full", "shared_full"])
def test_rbf_network_classification_with_metrics(metric):
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X, y = torch.tensor(X), torch.tensor(y)
    net = RBFNetwork(9, metric=metric, task="classification", standardize=True, lam=1e-3).fit(X, y)
    assert net.rbf.metric == metric and net.out.out_features == 3
    assert float((net.predict(X) == y).double().mean()) >= 0.9
    torch.testing.assert_close(net.input_mean, X.mean(0))
    torch.testing.assert_close(net.input_scale, X.std(0, unbiased=False))
    with torch.no_grad():  # forward = out(rbf((x - mean) / scale))
        torch.testing.assert_close(net(X), net.out(net.rbf((X - X.mean(0)) / X.std(0, unbiased=False))))
    res = cluster_contributions(net, X[:5])
    assert res.target_order.shape == (5, 9)


def test_select_grid_over_centres():
    x, y = _sine(3, n=80)
    net = RBFNetwork(5, centers="kmeans").select(x, y, n_centers_grid=[3, 8, 16], lam_grid=[1e-6, 1e-3], criterion="loo")
    scores = net.selection_["scores"]
    i, j = divmod(int(scores.argmin()), 2)
    assert net.num_centers == [3, 8, 16][i] and net.lam == [1e-6, 1e-3][j]
    assert net.num_centers > 3  # three Gaussians cannot follow a full sine period


# ---------------------------------------------------------------------------------------------
# CNN + RBFClassifier on scikit-learn's digits (8x8, bundled)
# ---------------------------------------------------------------------------------------------


def test_digits_cnn_rbf_classifier():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    t0 = time.perf_counter()
    d = load_digits()
    X = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    torch.manual_seed(0)
    dim = 16
    backbone = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, dim), nn.LayerNorm(dim, elementwise_affine=False),
    )
    head = RBFClassifier(dim, 20, 10, metric="diag", kind="quadratic")
    with torch.no_grad():  # k-means initialisation of the centres (Section IV), width from the spread
        emb = backbone(Xtr)
        init_centers(head, emb, seed=0)
        head.rbf.set_sigma(2 * float(head.rbf.r2(emb).mean().sqrt()))
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=3e-3)
    unsup = []
    for _ in range(12):
        perm = torch.randperm(len(Xtr))
        for s in range(0, len(Xtr), 32):
            idx = perm[s:s + 32]
            logits, r2 = head(backbone(Xtr[idx]), return_r2=True)
            loss = head.loss(logits, ytr[idx], r2, lam=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            unsup.append(float(unsupervised_loss(head.rbf.r2(backbone(Xtr)))))
    with torch.no_grad():
        acc = float((head(backbone(Xte)).argmax(1) == yte).float().mean())
    elapsed = time.perf_counter() - t0
    print(f"digits CNN-RBF: test accuracy {acc:.4f} in {elapsed:.1f} s; unsupervised loss per epoch {[round(u, 3) for u in unsup]}")
    assert acc >= 0.95
    # Eq. (10) pulls the embeddings to the centres once the classes have separated.
    assert unsup[-1] < 0.75 * max(unsup) and unsup[-1] < unsup[len(unsup) // 2]


# ---------------------------------------------------------------------------------------------
# Every backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS + [CUDA], indirect=True)
def test_layers_on_every_backend(backend, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(9, 3, generator=g, dtype=torch.float64)
    results = {}
    for name in ("reference", backend):
        dev = device_of(name)
        if name == "cuda":
            monkeypatch.setenv("RBFKERN_BACKEND", "triton" if dev.type == "cpu" else "auto")
        else:
            monkeypatch.setenv("RBFKERN_BACKEND", name)
        x, xor_x, xor_y = x64.to(dev), XOR_X.to(dev), XOR_Y.to(dev)
        out = []
        for metric in METRICS:
            m = randomise(RBF(3, 4, metric=metric, kind="gaussian", dtype=torch.float64), seed=10).to(dev)
            act, r2 = m(x, return_r2=True)
            grads = torch.autograd.grad((act.sum() + r2.sum()), list(m.parameters()))
            out += [act, r2, *grads]
        net = RBFNetwork(2, centers=xor_x[:2].clone(), sigma=1.0).fit(xor_x, xor_y)
        out.append(torch.cat([net.out.weight.flatten(), net.out.bias]).detach())
        out.append(kmeans(x, 3, seed=0).centers)
        out += list(similar(x[:4], x, 3, fast=False))
        results[name] = [t.cpu() for t in out]
    for a, b in zip(results["reference"], results[backend]):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
