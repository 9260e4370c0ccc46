"""One contract per family (issue 17): every backend of a family has the same forward / backward
signatures, and every public op is registered everywhere the project keeps a list of ops (the
representative calls of tests/_util.op_cases, the autocast policy, the ahead-of-time compile of
its Triton kernels, the benchmark registry), and has second-order gradients."""
import functools
import importlib
import inspect

import pytest
import torch

from rbfkern.ops import _autocast, bcos_cpp

from _util import op_cases
from conftest import HAS_TRITON

# the modules (rbfkern.ops.rbf etc. are also the public functions' names)
rbf_ops = importlib.import_module("rbfkern.ops.rbf")
bcos_ops = importlib.import_module("rbfkern.ops.bcos")
gd_ops = importlib.import_module("rbfkern.ops.gauss_deriv")

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the Triton backends need triton")


def _gpu(family):
    return importlib.import_module(f"rbfkern.gpu.{family}")


# (family, [(backend name, object with forward / backward)]); the Triton modules only where triton is.
FAMILIES = {
    "rbf": lambda: [("C++", rbf_ops._Cpp), ("reference", rbf_ops._Reference)]
    + ([("Triton", _gpu("rbf"))] if HAS_TRITON else []),
    "bcos": lambda: [("C++", bcos_cpp), ("reference", bcos_ops._Reference)]
    + ([("Triton", _gpu("bcos"))] if HAS_TRITON else []),
    # the op level: the separable kernels or the dense path (one object per kernel set), the reference
    "gauss_deriv": lambda: [("kernels + dense path", gd_ops._CPU_TAPS), ("reference", gd_ops._Reference)],
    # the kernel level below it, the taps already built
    "gauss_deriv kernels": lambda: [("C++", gd_ops._Cpp)] + ([("Triton", _gpu("gauss_deriv"))] if HAS_TRITON else []),
}


def _params(fn):
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", ["forward", "backward"])
def test_backends_share_one_signature(family, method):
    backends = FAMILIES[family]()
    assert len(backends) >= 2
    want_name, want_obj = backends[0]
    want = _params(getattr(want_obj, method))
    for name, obj in backends[1:]:
        got = _params(getattr(obj, method))
        assert got == want, f"{family}: {name}.{method}{tuple(got)} differs from {want_name}.{method}{tuple(want)}"
    if method == "backward":
        assert want[-1] == "needs", f"{family}: backward's last argument says which gradients are needed"


def _public_ops():
    names = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("rbfkern::")}
    return sorted(n for n in names if not n.endswith(("_cpu", "_bwd")))


def test_public_ops_are_the_exported_functions():
    import rbfkern.ops

    assert _public_ops() == sorted(rbfkern.ops.__all__)


@pytest.mark.parametrize("op", _public_ops())
def test_op_has_a_representative_call(op):
    assert op in {name.split("/")[0] for name in op_cases()}, f"{op} is missing from tests/_util.op_cases"


@pytest.mark.parametrize("op", _public_ops())
def test_op_and_its_backward_have_an_autocast_policy(op):
    bwd = {"rbf_r2": "rbf_bwd"}.get(op, f"{op}_bwd")
    assert op in _autocast.PUBLIC_OPS and bwd in _autocast.PUBLIC_OPS, f"{op} / {bwd} missing from ops/_autocast.py"


def _traced_kernels(cuda_traces, op):
    """Kernel names of the CUDA traces (tests/test_cuda_trace.py) that call ``op``."""
    out = set()
    for key, got in cuda_traces.items():
        case = key.split("|")[0]
        calls = case.split("/")[0] if not case.startswith("rbf/none") else "rbf_r2"
        if calls == op:
            assert "error" not in got, f"{key}: {got.get('error')}"
            out |= set(got["kernels"])
    return out


@needs_triton
@pytest.mark.parametrize("op", _public_ops())
def test_op_kernels_are_compiled_ahead_of_time(op, cuda_traces):
    # every Triton kernel the op's CUDA path launches (forward and backward) is in an AOT list,
    # so `python -m rbfkern.gpu.aot` (and tests/test_aot.py) compiles it for sm_80 / sm_90
    from rbfkern.gpu import aot

    aot_names = {spec[1].fn.__name__ for fam in aot.FAMILIES for spec in _gpu(fam).aot_specs()}
    kernels = _traced_kernels(cuda_traces, op)
    assert kernels, f"{op}: no traced CUDA call launches a Triton kernel"
    assert kernels <= aot_names, f"{op}: kernels missing from the AOT lists: {sorted(kernels - aot_names)}"



@needs_triton
def test_every_compiled_kernel_is_launched_by_some_op_call(cuda_traces):
    # the reverse: rbfkern.gpucheck.op_calls (what the CUDA traces and `python -m
    # rbfkern.gpucheck.sanitize` run) launches every kernel of the AOT lists, so the
    # compute-sanitizer pass covers every kernel
    from rbfkern.gpu import aot

    aot_names = {spec[1].fn.__name__ for fam in aot.FAMILIES for spec in _gpu(fam).aot_specs()}
    traced = {k for got in cuda_traces.values() if "error" not in got for k in got["kernels"]}
    assert aot_names <= traced, f"kernels no op call launches: {sorted(aot_names - traced)}"

@pytest.mark.parametrize("case", sorted(op_cases()))
def test_double_backward_passes_gradgradcheck(case):
    # the backward ops' own backward: the vjp of their body on the reference backend
    # (_family.reference_double_backward), checked against finite differences of the fused backward
    fn, tensors = op_cases(torch.float64)[case]
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


@functools.lru_cache(maxsize=None)
def _benched_ops():
    """{op: bench module} over the bench files of `python -m rbfkern bench` (rbfkern/bench.py), every
    case their command lines can select (the --quick ones; a file's flags that pick other rows)."""
    from rbfkern import bench

    h = bench._harness()
    out = {}
    for fam in bench.FAMILIES.values():
        mod = bench._load(fam.module)
        extra = [["--3d"]] if "--3d" in h.parser(mod.BENCH).format_help() else []
        for argv in [[]] + extra:
            for case in mod.BENCH.cases(h.options(mod.BENCH, ["--quick", *argv])):
                if "op" in case.params:
                    out.setdefault(case.params["op"], fam.module)
    return out


@pytest.mark.parametrize("op", _public_ops())
def test_op_is_in_the_bench_registry(op):
    assert op in _benched_ops(), f"{op}: no case of the bench files in rbfkern/bench.py FAMILIES times it"
