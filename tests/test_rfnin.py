"""rbfkern.nn.RFNiN (thesis ch. 3): the layer/scale schedule, shapes in 2D and 3D, the parameter
count formula, and one training step."""
import pytest
import torch
from torch import nn

from rbfkern import basis
from rbfkern.nn import GaussDerivConv2d, GaussDerivConv3d, RFNiN, RFNiNBlock


def _count(in_ch, k, widths, scales, order, mlp, bn, ndim):
    """The documented formula, written independently of the module."""
    m = basis.num_basis(order, ndim)
    total, c = 0, in_ch
    for w, s in zip(widths, scales):
        total += w * c * len(s) * m  # alpha
        total += mlp * (w * w + (0 if bn else w))  # 1x1 layers (a bias without batch norm)
        total += (mlp + 1) * 2 * w if bn else 0  # a BatchNorm before every rectifier
        c = w
    return total + c * k + k  # the 1x1 class layer


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_default_2d_schedule_is_the_thesis():
    net = RFNiN(3, 100)
    layers = net.basis_layers()
    assert [tuple(layer._sigmas) for layer in layers] == [(1, 2, 4, 8), (1, 2, 4), (1, 2), (1,)]
    assert [layer.out_channels for layer in layers] == [96, 256, 384, 1024]
    assert all(layer.order == 3 for layer in layers) and all(isinstance(b, GaussDerivConv2d) for b in layers)
    blocks = [b for b in net.features if isinstance(b, RFNiNBlock)]
    assert [sum(isinstance(m, nn.Conv2d) for m in b) for b in blocks] == [2, 2, 2, 2]  # two 1x1 per block
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == 3
    assert _params(net) == _count(3, 100, (96, 256, 384, 1024), ((1,) * 4, (1,) * 3, (1,) * 2, (1,)), 3, 2, False, 2)


def test_default_3d_schedule_is_the_thesis():
    net = RFNiN(1, 2, ndim=3)
    layers = net.basis_layers()
    assert [tuple(layer._sigmas) for layer in layers] == [(1, 4, 16)] * 3
    assert [layer.out_channels for layer in layers] == [128, 96, 96]
    assert all(isinstance(b, GaussDerivConv3d) and b.order == 3 for b in layers)
    assert _params(net) == _count(1, 2, (128, 96, 96), ((1,) * 3,) * 3, 3, 1, False, 3)


@pytest.mark.parametrize("ndim,order,mlp,bn", [(2, 2, 2, False), (2, 1, 1, True), (3, 1, 1, False), (3, 2, 0, True)])
def test_parameter_count_formula(ndim, order, mlp, bn):
    widths, scales = (5, 7, 3), ((1.0, 2.0), (1.0,), (0.5, 1.0, 1.5))
    net = RFNiN(2, 4, ndim=ndim, widths=widths, scales=scales, order=order, mlp_layers=mlp, batch_norm=bn, truncate=2.0)
    assert _params(net) == _count(2, 4, widths, scales, order, mlp, bn, ndim)


@pytest.mark.parametrize("shape,ndim", [((2, 3, 17, 20), 2), ((2, 1, 9, 8, 10), 3)], ids=["2d", "3d"])
def test_shapes(shape, ndim):
    torch.manual_seed(0)
    net = RFNiN(shape[1], 5, ndim=ndim, widths=(4, 6), scales=((1.0, 2.0), (1.0,)), truncate=2.0)
    assert net(torch.randn(*shape)).shape == (2, 5)
    feats = net.features[:2](torch.randn(*shape))  # first block + pooling: halves every spatial size
    half = [(s + 1) // 2 if ndim == 2 else s // 2 for s in shape[2:]]  # 3x3 stride 2 pad 1 / 2x2x2 stride 2
    assert list(feats.shape[2:]) == half


def test_trains_a_step():
    torch.manual_seed(1)
    net = RFNiN(1, 3, widths=(6, 8), scales=((1.0, 2.0), (1.0,)), batch_norm=True, truncate=2.0)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        for layer in net.basis_layers():
            assert layer.alpha.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_block_structure():
    b = RFNiNBlock(2, 4, order=1, sigmas=(1.0,), mlp_layers=1, batch_norm=False, truncate=2.0)
    kinds = [type(m).__name__ for m in b]
    assert kinds == ["GaussDerivConv2d", "ReLU", "Conv2d", "ReLU"]  # no nonlinearity between basis and alpha
    b = RFNiNBlock(2, 4, ndim=3, order=1, mlp_layers=2, truncate=2.0)
    assert [type(m).__name__ for m in b] == ["GaussDerivConv3d", "BatchNorm3d", "ReLU", "Conv3d", "BatchNorm3d",
                                             "ReLU", "Conv3d", "BatchNorm3d", "ReLU"]


@pytest.mark.parametrize("kw,match", [
    (dict(ndim=4), "ndim"), (dict(widths=(4, 0), scales=((1.0,), (1.0,))), "widths"),
    (dict(widths=(4, 5), scales=((1.0,),)), "scales"), (dict(pool="lp"), "pool"), (dict(dropout=1.5), "dropout"),
    (dict(mlp_layers=-1), "mlp_layers"),
])
def test_bad_arguments(kw, match):
    args = dict(widths=(4,), scales=((1.0,),), truncate=2.0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        RFNiN(1, 2, **args)
