"""torch.export of models built on the ops: the exported program equals eager (outputs and
gradients) at batch sizes other than the traced one, survives torch.export.save / load, records
an inference export without the saved-for-backward maps, and compiles with AOTInductor."""
import io

import pytest
import torch
from _util import AllFamilies
from conftest import CUDA_ON_CPU, CUDA_SLOW
from torch.export import Dim

import rbfkern.nn as rn


class _Gauss3d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gauss = rn.GaussDerivConv3d(2, 3, order=1, sigmas=(1.0,), learn_sigma=True)

    def forward(self, x):
        return self.gauss(x).mean((2, 3, 4))


def _model(name, device):
    torch.manual_seed(0)
    if name == "gauss3d":
        return _Gauss3d().to(device), (2, 2, 9, 9, 9)
    return AllFamilies(metric=name).to(device), (2, 3, 12, 12)


def _inputs(shape, n, device, channels_last=False):
    x = torch.randn(n, *shape[1:], device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


_MODELS = ["full", "diag", "none", "gauss3d"]
# the CUDA variants (the triton_op path) only in gpucheck --full: its quick subset checks kernels
_DEVICES = ["cpu", CUDA_SLOW]


@pytest.mark.parametrize("device", _DEVICES, indirect=True)
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("name", _MODELS)
def test_exported_program_matches_eager(name, strict, device):
    model, shape = _model(name, device)
    batch = Dim("batch", min=1, max=32)
    ep = torch.export.export(model, (_inputs(shape, shape[0], device),), dynamic_shapes={"x": {0: batch}},
                             strict=strict)
    exported = ep.module()
    assert dict(exported.named_parameters()).keys() == dict(model.named_parameters()).keys()
    for n in (1, 3):
        x = _inputs(shape, n, device)
        model.zero_grad()
        want = model(x)
        want.square().sum().backward()
        got = exported(x)
        torch.testing.assert_close(got, want)
        got.square().sum().backward()
        for pname, p in exported.named_parameters():
            torch.testing.assert_close(p.grad, dict(model.named_parameters())[pname].grad, msg=pname)


@pytest.mark.parametrize("device", _DEVICES, indirect=True)
def test_exported_program_dynamic_spatial_and_channels_last(device):
    """Height and width dynamic too; a channels-last input takes the op's channels-last path."""
    model, shape = _model("diag", device)
    dims = {0: Dim("batch", min=1, max=16), 2: Dim("h", min=4, max=64), 3: Dim("w", min=4, max=64)}
    ep = torch.export.export(model, (_inputs(shape, 2, device),), dynamic_shapes={"x": dims})
    for n, h, w in ((1, 7, 20), (3, 16, 9)):
        for cl in (False, True):
            x = _inputs((n, 3, h, w), n, device, channels_last=cl)
            torch.testing.assert_close(ep.module()(x), model(x))


def _rbfkern_nodes(ep):
    return [n for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith("rbfkern.")]


@pytest.mark.parametrize("device", _DEVICES, indirect=True)
def test_inference_export_records_no_saved_maps(device):
    """Exported under no_grad, each B-cos op is recorded with save=False (no lmax / idx / root maps
    computed in deployment); exported with gradients, with save=True."""
    model, shape = _model("full", device)
    x = _inputs(shape, 2, device)
    with torch.no_grad():
        ep_infer = torch.export.export(model, (x,))
    ep_train = torch.export.export(model, (x,))
    for ep, save in ((ep_infer, False), (ep_train, True)):
        bcos = [n for n in _rbfkern_nodes(ep) if "bcos" in str(n.target)]
        assert len(bcos) == 2, [str(n.target) for n in _rbfkern_nodes(ep)]
        assert all(n.args[-1] is save for n in bcos), [n.args for n in bcos]
    with torch.no_grad():
        torch.testing.assert_close(ep_infer.module()(x), model(x))


@pytest.mark.parametrize("device", _DEVICES, indirect=True)
def test_export_save_load_round_trip(device):
    model, shape = _model("full", device)
    ep = torch.export.export(model, (_inputs(shape, 2, device),), dynamic_shapes={"x": {0: Dim("batch", max=32)}})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    assert [str(n.target) for n in _rbfkern_nodes(loaded)] == [str(n.target) for n in _rbfkern_nodes(ep)]
    x = _inputs(shape, 5, device)
    torch.testing.assert_close(loaded.module()(x), model(x))


@pytest.mark.skipif(CUDA_ON_CPU, reason="AOTInductor compiles for the device; the rehearsal has none")
@pytest.mark.parametrize("device", _DEVICES, indirect=True)
def test_aot_inductor_package_matches_eager(device, tmp_path):
    """An AOTInductor package of an inference export (it calls back into the registered ops, so
    rbfkern must be imported where it is loaded)."""
    model, shape = _model("full", device)
    model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (_inputs(shape, 2, device),), dynamic_shapes={"x": {0: Dim("batch", max=32)}})
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
    compiled = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        for n in (1, 4):
            x = _inputs(shape, n, device)
            torch.testing.assert_close(compiled(x), model(x))
