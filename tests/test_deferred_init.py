"""Deferred initialisation, as FSDP and large-model loading use it: every layer built on the meta
device runs its forward and backward there (shapes only), and after ``to_empty`` its
``reset_parameters`` gives what building it directly gives, bit for bit under the same seed."""
import pytest
import torch

import rbfkern.nn as rn

_LAYERS = {
    "RBF-full": (lambda **kw: rn.RBF(5, 7, metric="full", kind="gaussian", **kw), (4, 5), (4, 7)),
    "RBF-diag": (lambda **kw: rn.RBF(5, 7, metric="diag", sigma=0.5, **kw), (4, 5), (4, 7)),
    "RBFClassifier": (lambda **kw: rn.RBFClassifier(5, 7, 3, metric="shared_full", **kw), (4, 5), (4, 3)),
    "BcosConv2d": (lambda **kw: rn.BcosConv2d(3, 4, 3, padding=1, max_out=2, **kw), (2, 3, 6, 6), (2, 4, 6, 6)),
    "BcosLinear": (lambda **kw: rn.BcosLinear(6, 4, max_out=3, **kw), (2, 5, 6), (2, 5, 4)),
    "GaussDerivConv2d": (lambda **kw: rn.GaussDerivConv2d(3, 4, order=2, sigmas=(1.0, 2.0), learn_sigma=True, **kw),
                         (2, 3, 9, 9), (2, 4, 9, 9)),
    "GaussDerivConv3d": (lambda **kw: rn.GaussDerivConv3d(2, 3, order=1, **kw), (1, 2, 5, 5, 5), (1, 3, 5, 5, 5)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(_LAYERS))
def test_meta_then_reset_equals_direct_construction(name, dtype):
    make, x_shape, y_shape = _LAYERS[name]
    torch.manual_seed(7)
    direct = make(dtype=dtype)
    meta = make(device="meta", dtype=dtype)
    x = torch.randn(x_shape, device="meta", dtype=dtype, requires_grad=True)
    y = meta(x)
    assert y.shape == y_shape and y.device.type == "meta"
    y.sum().backward()
    assert x.grad.shape == x.shape
    meta.to_empty(device="cpu")
    torch.manual_seed(7)
    meta.reset_parameters()
    got, want = meta.state_dict(), direct.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k
    xc = torch.randn(x_shape, dtype=dtype)
    torch.testing.assert_close(meta(xc), direct(xc))


def test_gauss_deriv_reset_restores_the_initial_scales():
    layer = rn.GaussDerivConv2d(2, 3, order=1, sigmas=(1.0, 3.0), learn_sigma=True)
    with torch.no_grad():
        layer.sigma.mul_(1.7)
    layer.reset_parameters()
    assert layer.sigma.tolist() == [1.0, 3.0]


def test_gauss_deriv_reset_of_a_layer_pickled_before_init_sigmas():
    layer = rn.GaussDerivConv2d(2, 3, order=1, sigmas=(1.0, 3.0), learn_sigma=True)
    with torch.no_grad():
        layer.sigma.mul_(1.5)
    del layer._init_sigmas  # as unpickled from an older rbfkern
    alpha = layer.alpha.detach().clone()
    layer.reset_parameters()
    assert layer.sigma.tolist() == [1.5, 4.5] and not torch.equal(layer.alpha, alpha)
