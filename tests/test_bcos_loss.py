"""rbfkern.nn.bcos_bce_loss / BcosBCELoss (eq. 16) against the official bcos.modules.losses
(bcos 0.1.3) in float64: values and gradients over their options, and bad input."""
import math

import pytest
import torch

from rbfkern import _official_bcos
from rbfkern.nn import BcosBCELoss, bcos_bce_loss

F64 = torch.float64


official = _official_bcos.find("modules.losses")
needs_official = pytest.mark.skipif(official is None, reason="pip install --no-deps bcos==0.1.3")


def _data(n=6, c=5, seed=0, dense=False):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=F64) * 3).requires_grad_(True)
    if dense:  # mixed labels: two classes per row
        target = torch.rand(n, c, generator=g, dtype=F64)
        target = target / target.sum(1, keepdim=True)
    else:
        target = torch.randint(0, c, (n,), generator=g)
    return logits, target


def _value_and_grad(fn, logits, target):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, target)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def _assert_same(ours, theirs, logits, target):
    (lo, go), (lt, gt) = _value_and_grad(ours, logits, target), _value_and_grad(theirs, logits, target)
    torch.testing.assert_close(lo, lt, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(go, gt, rtol=1e-13, atol=1e-15)


@needs_official
@pytest.mark.parametrize("dense", [False, True], ids=["indices", "dense"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing,threshold", [(0.0, None), (0.1, None), (0.3, None), (0.1, 0.2), (0.0, 0.5)])
@pytest.mark.parametrize("logit_bias", [None, -1.5, "auto"])
def test_matches_binary_cross_entropy_loss(logit_bias, smoothing, threshold, reduction, dense):
    """Ours with logit bias b on f equals the official BinaryCrossEntropyLoss on f + b (the official
    models add b in their LogitLayer)."""
    logits, target = _data(dense=dense)
    b = {None: 0.0, "auto": -math.log(logits.shape[1] - 1)}.get(logit_bias, logit_bias)
    theirs = official.BinaryCrossEntropyLoss(smoothing=smoothing, target_threshold=threshold, reduction=reduction)
    ours = BcosBCELoss(logit_bias=logit_bias, smoothing=smoothing, target_threshold=threshold, reduction=reduction)
    _assert_same(ours, (lambda x, t: theirs(x + b, t)) if b else theirs, logits, target)


@needs_official
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_weight_and_pos_weight(reduction):
    logits, target = _data(c=4, seed=3)
    g = torch.Generator().manual_seed(4)
    weight, pos_weight = torch.rand(4, generator=g, dtype=F64) + 0.5, torch.rand(4, generator=g, dtype=F64) * 3
    theirs = official.BinaryCrossEntropyLoss(smoothing=0.2, weight=weight, pos_weight=pos_weight, reduction=reduction)
    ours = BcosBCELoss(smoothing=0.2, weight=weight, pos_weight=pos_weight, reduction=reduction)
    _assert_same(ours, theirs, logits, target)
    assert set(ours.state_dict()) == {"weight", "pos_weight"}


@needs_official
@pytest.mark.parametrize("dense", [False, True], ids=["indices", "dense"])
@pytest.mark.parametrize("off_label", ["uniform", 0.01, 0.3])
def test_matches_uniform_off_labels_loss(off_label, dense):
    """UniformOffLabelsBCEWithLogitsLoss (the official ImageNet training loss): off_label=None there is 1 / C."""
    logits, target = _data(n=5, c=7, seed=1, dense=dense)
    theirs = official.UniformOffLabelsBCEWithLogitsLoss(off_label=None if off_label == "uniform" else off_label)
    _assert_same(lambda x, t: bcos_bce_loss(x, t, off_label=off_label), theirs, logits, target)


def test_eq16_by_hand():
    """One sample, C = 3, target class 0, b = -log 2: -log s(f0 + b) - log(1 - s(f1 + b)) - log(1 - s(f2 + b)), / 3."""
    f = torch.tensor([[2.0, -1.0, 0.5]], dtype=F64)
    b = -math.log(2)
    s = torch.sigmoid(f[0] + b)
    want = -(math.log(s[0]) + math.log(1 - s[1]) + math.log(1 - s[2])) / 3
    assert bcos_bce_loss(f, torch.tensor([0]), logit_bias="auto").item() == pytest.approx(want, rel=1e-14)
    assert bcos_bce_loss(f, torch.tensor([0]), logit_bias=b).item() == pytest.approx(want, rel=1e-14)


def test_off_label_zero_is_zero():
    # the official class reads off_label=0 as 1 / C (`off_label or 1 / C`); here 0 leaves the targets alone
    logits, target = _data()
    torch.testing.assert_close(bcos_bce_loss(logits, target, off_label=0.0), bcos_bce_loss(logits, target))


@pytest.mark.parametrize("kwargs,match", [
    (dict(logit_bias="none"), "logit_bias must be None, 'auto' or a finite number"),
    (dict(logit_bias=float("inf")), "logit_bias must be None, 'auto' or a finite number"),
    (dict(smoothing=1.0), r"smoothing must be a number in \[0, 1\)"),
    (dict(off_label=1.5), "off_label must be None, 'uniform' or a number"),
    (dict(target_threshold="x"), "target_threshold must be None or a number"),
    (dict(reduction="avg"), "reduction must be one of"),
])
def test_bad_options(kwargs, match):
    logits, target = _data()
    with pytest.raises(ValueError, match=match):
        bcos_bce_loss(logits, target, **kwargs)
    with pytest.raises(ValueError, match=match):
        BcosBCELoss(**kwargs)


def test_bad_input():
    logits, target = _data(n=4, c=3)
    with pytest.raises(ValueError, match=r"class-index targets must have shape \(4,\)"):
        bcos_bce_loss(logits, target[:3])
    with pytest.raises(ValueError, match=r"target class indices must be in \[0, 3\), got 3"):
        bcos_bce_loss(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"expected shape \(4, 3\), got \(4, 2\)"):
        bcos_bce_loss(logits, torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"logits must be a floating \(N, C\) tensor"):
        bcos_bce_loss(logits[0], target)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        bcos_bce_loss(logits, [0, 1, 2, 0])
    with pytest.raises(TypeError, match="got dtype torch.bool"):
        bcos_bce_loss(logits, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs C >= 2"):
        bcos_bce_loss(logits[:, :1], torch.zeros(4, dtype=torch.long), logit_bias="auto")
