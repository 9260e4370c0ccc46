"""The CUDA path of every op, traced on a machine without a GPU (tensors without data).

What torch.compile does with an op on CUDA tensors: AOTAutograd's functionalization decomposes the
``triton_op`` into its body, whose launchers run on fake tensors and record their Triton kernels
(``wrap_triton``). Tracing each forward op and its backward op here checks, before any GPU
session, that the CUDA body is traceable (sizes only: no data reads, no host syncs, no numpy), that
its kernels are visible to the compiler, and that no opaque op is left on the CUDA path.

A CPU-only build of PyTorch cannot run broadcasting ops or autograd on fake CUDA tensors (both ask
for the CUDA runtime), so the traced tensors are on the meta device, which the ops here treat as a
GPU (``_backend.GPU_DEVICE_TYPES``): the same CUDA branch, launchers and kernels run. Each case
calls the forward op, then the backward op its autograd formula calls.

The traces run in one child process without TRITON_INTERPRET (whether a kernel is interpreted is
fixed when its module is imported): there the kernels are the JIT functions a GPU machine has.
"""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch.fx.experimental.proxy_tensor import make_fx

import rbfkern
from rbfkern.gpucheck.op_calls import BIG, CASES, GD_PATHS


def _kernels_and_ops(gm):
    """([(Triton kernel launched, its grid)], rbfkern ops left opaque) in a traced graph."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    kernels, opaque = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if "triton_kernel_wrapper" in name:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            kernels.append((getattr(kernel, "fn", kernel).__name__, [list(map(int, g)) for g in node.kwargs["grid"]]))
        elif "rbfkern" in name:
            opaque.add(name)
    return kernels, opaque


# The Gaussian-derivative ops on both paths (the dense one is a cuDNN conv: no Triton kernel there),
# the others on their one.
CALLS = [(n, p, d) for n in sorted(CASES)
         for p in (GD_PATHS if n.startswith(("gauss", "layer/Gauss")) else ("auto",))
         for d in ("float32", "bfloat16", "float64")]
BIG_CALLS = [(n, "separable" if "gauss" in n else "auto", "float32") for n in sorted(BIG)]


def trace(name, path, dtype):
    """{'kernels': [names], 'opaque': [...], 'convolution': bool} of the traced forward + backward."""
    os.environ["RBFKERN_GD_PATH"] = path
    make, params = {**CASES, **BIG}[name]
    dt = getattr(torch, dtype)
    layer = name.startswith("layer/")
    shapes, step = make(dt) if layer else make(*params)
    args = [None if s is None else torch.empty(s, dtype=dt, device="meta", requires_grad=layer) for s in shapes]
    gm = make_fx(dispatch_functionalize(step), tracing_mode="fake")(*args)
    kernels, opaque = _kernels_and_ops(gm)
    return {"kernels": sorted({k for k, _ in kernels}), "grids": kernels, "opaque": sorted(opaque),
            "convolution": "convolution" in gm.code}


def _child():
    # The kernels' mutation analysis needs a GPU driver; without one torch logs a warning and
    # treats every kernel argument as written, which is all this test needs.
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
    rbfkern._backend.GPU_DEVICE_TYPES = ("cuda", "meta")
    out = {}
    for call in CALLS + BIG_CALLS:
        try:
            out["|".join(call)] = trace(*call)
        except Exception as e:  # reported per case by the parent
            out["|".join(call)] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
    print("@@" + json.dumps(out))


def run_traces():
    """{"name|path|dtype": trace(...)} of every CALL and BIG_CALL, traced in a child process (see the docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RBFKERN_BACKEND")}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][2:])


@pytest.mark.parametrize("name,path,dtype", CALLS, ids=["-".join(c) for c in CALLS])
def test_cuda_path_traces_with_visible_kernels(name, path, dtype, cuda_traces):
    got = cuda_traces["|".join((name, path, dtype))]
    assert "error" not in got, f"{name} ({path}, {dtype}): the CUDA path does not trace: {got.get('error')}"
    if path == "dense":  # one cuDNN convolution and its gradients, no kernel of ours
        assert got["convolution"], f"{name}: the dense path traced no convolution"
    else:
        assert got["kernels"], f"{name}: no Triton kernel visible in the traced forward + backward"
    assert not got["opaque"], f"{name}: ops left opaque on the CUDA path: {got['opaque']}"


# CUDA's launch limits: 2^31 - 1 blocks on grid axis x, 65535 on y and z.
_GRID_LIMITS = (2 ** 31 - 1, 65535, 65535)


@pytest.mark.parametrize("name,path,dtype", CALLS + BIG_CALLS, ids=["-".join(c) for c in CALLS + BIG_CALLS])
def test_launch_grids_fit_cuda_limits(name, path, dtype, cuda_traces):
    got = cuda_traces["|".join((name, path, dtype))]
    assert "error" not in got, f"{name} ({path}, {dtype}): the CUDA path does not trace: {got.get('error')}"
    for kernel, grids in got["grids"]:
        for grid in grids:
            assert all(0 <= g <= lim for g, lim in zip(grid, _GRID_LIMITS)), \
                f"{name}: {kernel} launches grid {tuple(grid)}, over CUDA's limits {_GRID_LIMITS}"


if __name__ == "__main__":
    _child()
