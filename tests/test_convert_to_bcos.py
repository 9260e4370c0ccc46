"""convert_to_bcos: activations / pooling called as functions in forward (found with torch.fx:
raise or rewrite), the widened first convolution for [x, 1 - x] inputs, the logit layer
(against the official LogitLayer), and that a failed conversion leaves the model untouched."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from rbfkern import _official_bcos, explain
from rbfkern.nn import AddInverse, BcosConv2d, BcosLinear, LogitLayer, convert_to_bcos

from conftest import DEVICES

F64 = torch.float64


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return torch.tanh(F.relu(self.conv(x), inplace=True)) + x.sigmoid()


class _Functional(nn.Module):
    """A CNN whose non-linearities and pooling are calls in forward, nested one module deep."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blk = _Block()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.max_pool2d(F.gelu(self.stem(x)), 2)
        x = F.dropout(self.blk(x).relu(), 0.5, self.training)
        return self.head(torch.flatten(F.adaptive_max_pool2d(x, 1), 1))


class _Clean(nn.Module):
    """_Functional as convert_to_bcos(functional='replace') should leave it, written by hand."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blk = nn.Module()
        self.blk.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.avg_pool2d(self.stem(x), 2)
        x = self.blk.conv(x) + x
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_functional_calls_raise_and_name_the_module():
    model = _Functional()
    with pytest.raises(ValueError) as e:
        convert_to_bcos(model)
    msg = str(e.value)
    for call in ("F.gelu() in the model's forward", "F.max_pool2d() in the model's forward", "F.relu() in blk.forward",
                 "torch.tanh() in blk.forward", "Tensor.sigmoid() in blk.forward", "Tensor.relu() in the model's",
                 "F.dropout()", "F.adaptive_max_pool2d()", "functional='replace'"):
        assert call in msg, (call, msg)
    assert isinstance(model.stem, nn.Conv2d) and isinstance(model.blk.conv, nn.Conv2d), "the model must be untouched"


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_functional_replace_equals_the_hand_written_b_cos_net(device):
    torch.manual_seed(0)
    gm = convert_to_bcos(_Functional(), functional="replace").to(F64).to(device)
    assert isinstance(gm, fx.GraphModule)
    targets = {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")}
    assert targets.isdisjoint({F.relu, F.gelu, torch.tanh, F.max_pool2d, F.dropout, F.adaptive_max_pool2d, "relu",
                               "sigmoid"}), targets
    assert isinstance(gm.blk.conv, BcosConv2d) and isinstance(gm.head, BcosLinear)
    clean = convert_to_bcos(_Clean()).to(F64).to(device)
    assert gm.state_dict().keys() == clean.state_dict().keys()
    clean.load_state_dict(gm.state_dict())
    x = torch.rand(2, 3, 8, 8, dtype=F64, device=device)
    torch.testing.assert_close(gm(x), clean(x), rtol=1e-12, atol=1e-12)
    # a pure B-cos network again: W(x) x is the output (eq. 13); tanh / gelu would break this
    logits = gm(x)
    torch.testing.assert_close(explain.contributions(gm, x, 2).sum((1, 2)), logits[:, 2], rtol=1e-9, atol=1e-11)


def test_untraceable_model_warns_or_raises():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -x

    with pytest.warns(UserWarning, match="torch.fx cannot trace DataDependent .*were not checked"):
        assert isinstance(convert_to_bcos(DataDependent()).conv, BcosConv2d)
    model = DataDependent()
    with pytest.raises(ValueError, match=r"functional='replace'\): torch.fx cannot trace DataDependent"):
        convert_to_bcos(model, functional="replace")
    assert isinstance(model.conv, nn.Conv2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_to_bcos(DataDependent(), functional="ignore")


def test_functional_linear_maps_raise():
    class ByHand(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.w)

    for mode in ("raise", "replace"):
        with pytest.raises(ValueError, match=r"linear maps called as functions .*F.conv2d\(\) in the model's forward"):
            convert_to_bcos(ByHand(), functional=mode)


def test_more_module_activations_removed():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GELU(), nn.Mish(), nn.Hardswish(), nn.PReLU(), nn.Dropout2d(),
                          nn.SELU(), nn.Conv2d(4, 4, 1))
    convert_to_bcos(model)
    assert [type(m).__name__ for m in model] == ["BcosConv2d"] + ["Identity"] * 6 + ["BcosConv2d"]


def test_add_inverse_widens_the_first_conv():
    torch.manual_seed(0)
    model = convert_to_bcos(nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), nn.Conv2d(8, 4, 3),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten()), add_inverse=True).to(F64)
    assert model[0][0].weight.shape == (16, 6, 3, 3) and model[1].weight.shape == (8, 8, 3, 3)
    x = torch.rand(2, 3, 6, 6, dtype=F64)
    wrapped = nn.Sequential(AddInverse(), model)
    torch.testing.assert_close(wrapped(x), model(AddInverse()(x)))
    with pytest.raises(ValueError, match=r"input channels, which needs groups=1, got groups=2"):
        convert_to_bcos(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), add_inverse=True)
    with pytest.raises(ValueError, match="the model has none"):
        convert_to_bcos(nn.Sequential(nn.Linear(3, 2)), add_inverse=True)


def _official_logit_layer():
    mod = _official_bcos.find("modules.logitlayer")
    return None if mod is None else mod.LogitLayer


@pytest.mark.parametrize("temperature,bias", [(None, None), (None, -math.log(9)), (0.5, None), (2.0, -1.25)])
def test_logit_layer_matches_official(temperature, bias):
    official = _official_logit_layer()
    if official is None:
        pytest.skip("pip install --no-deps bcos==0.1.3")
    x = torch.randn(3, 10, dtype=F64)
    torch.testing.assert_close(LogitLayer(temperature, bias)(x), official(temperature, bias)(x), rtol=0, atol=0)


def test_logit_layer_added():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(5, 3))
    model = convert_to_bcos(body, logit_bias=-math.log(2), logit_temperature=0.5).to(F64)
    assert isinstance(model, nn.Sequential) and model[0] is body and isinstance(model[1], LogitLayer)
    assert list(model.state_dict()) == ["0.0.weight"]
    x = torch.randn(4, 5, dtype=F64)
    torch.testing.assert_close(model(x), body(x) / 0.5 - math.log(2))
    with pytest.raises(ValueError, match="logit_temperature must be non-zero"):
        LogitLayer(logit_temperature=0.0)
    with pytest.raises(ValueError, match="logit_bias must be None or a finite number"):
        convert_to_bcos(nn.Linear(2, 2), logit_bias=float("nan"))


def test_bad_arguments_and_failed_conversion_changes_nothing():
    with pytest.raises(ValueError, match="functional must be one of"):
        convert_to_bcos(nn.Linear(2, 2), functional="drop")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        convert_to_bcos(None)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="1 uses padding"):
        convert_to_bcos(model)
    assert isinstance(model[0], nn.Conv2d), "a failed conversion must change nothing"
