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

ops = torch.ops.rbfkern


def _rbf(metric, kind):
    n, c, d = 37, 19, 17
    shapes = [(n, d), (c, d), {"diag": (c, d), "shared_diag": (d,)}.get(metric),
              {"tril": (c, d, d), "shared_tril": (d, d)}.get(metric), (c,)]

    def step(x, cen, diag, tril, sigma):
        if kind == "none":
            r2 = ops.rbf_r2(x, cen, diag, tril)
            act = None
        else:
            act, r2 = ops.rbf(x, cen, diag, tril, sigma, kind, 0.6)
        needs = [True, True, diag is not None, tril is not None, kind != "none"]
        grads = ops.rbf_bwd(act, r2, x, cen, diag, tril, sigma, r2, kind, 0.6, needs)
        return [r2, *grads]

    return shapes, step


def _bcos_conv(max_out, b):
    shapes = [(2, 4, 11, 9), (8 * max_out // 2, 2, 3, 3)]
    geo = ([2, 1], [1, 1], [1, 2], 2)

    def step(x, w):
        y, lmax, idx, root = ops.bcos_conv2d(x, w, b, max_out, *geo, False, True)
        return [y, *ops.bcos_conv2d_bwd(y, x, w, lmax, idx, root, b, max_out, *geo, False, [True, True])]

    return shapes, step


def _bcos_linear(max_out):
    shapes = [(15, 17), (6 * max_out, 17)]

    def step(x, w):
        y, lmax, idx, root = ops.bcos_linear(x, w, 2.0, max_out, False, True)
        return [y, *ops.bcos_linear_bwd(y, x, w, lmax, idx, root, 2.0, max_out, False, [True, True])]

    return shapes, step


def _gauss(ndim):
    order, radii = (2, [3, 5]) if ndim == 2 else (1, [3])
    m = (order + 1) * (order + 2) // 2 if ndim == 2 else (order + 1) * (order + 2) * (order + 3) // 6
    spatial = (13, 12) if ndim == 2 else (7, 8, 6)
    shapes = [(2, 3, *spatial), (4, 3, len(radii) * m), (len(radii),)]
    fwd, bwd = (ops.gauss_deriv_conv2d, ops.gauss_deriv_conv2d_bwd) if ndim == 2 else \
        (ops.gauss_deriv_conv3d, ops.gauss_deriv_conv3d_bwd)
    args = (order, 4.0, radii, 1, max(radii), False)

    def step(x, alpha, sigma):
        y = fwd(x, alpha, sigma, *args)
        return [y, *bwd(y, x, alpha, sigma, *args, [True, True, True])]

    return shapes, step


def _layer(build, in_shape):
    """A training step of an nn layer built on the meta device: forward, a loss, the gradients of
    the input and every parameter. Traced on meta tensors, any read of a tensor's values (a host
    sync on a GPU; an error inside a CUDA graph capture) fails the trace."""
    def make(dtype):
        module = build().to(device="meta", dtype=dtype)
        names = [n for n, _ in module.named_parameters()]
        shapes = [in_shape] + [tuple(p.shape) for _, p in module.named_parameters()]

        def step(x, *params):
            out = torch.func.functional_call(module, dict(zip(names, params)), (x,))
            loss = out.float().square().mean()
            return [loss, *torch.autograd.grad(loss, [x, *params])]

        return shapes, step
    return make


def _layers():
    from rbfkern import nn as rnn

    return {
        **{f"layer/RBF/{m}": (_layer(lambda m=m: rnn.RBF(17, 19, metric=m, kind="gaussian"), (37, 17)), ())
           for m in ("none", "diag", "shared_diag", "full", "shared_full")},
        "layer/BcosConv2d": (_layer(lambda: rnn.BcosConv2d(4, 6, 3, padding=1, max_out=2), (2, 4, 11, 9)), ()),
        "layer/BcosLinear": (_layer(lambda: rnn.BcosLinear(17, 6, max_out=2), (15, 17)), ()),
        "layer/GaussDerivConv2d": (_layer(lambda: rnn.GaussDerivConv2d(3, 4, order=2, sigmas=(1.0, 1.5),
                                                                       learn_sigma=True), (2, 3, 13, 12)), ()),
        "layer/GaussDerivConv3d": (_layer(lambda: rnn.GaussDerivConv3d(3, 4, order=1, sigmas=(1.0,),
                                                                       learn_sigma=True), (2, 3, 7, 8, 6)), ()),
    }

CASES = {
    **{f"rbf/{m}/{k}": (_rbf, (m, k)) for m, k in [("none", "none"), ("diag", "gaussian"), ("shared_diag", "logistic"),
                                                    ("tril", "gaussian"), ("shared_tril", "multiquadric")]},
    "bcos_conv2d/fused": (_bcos_conv, (2, 2.0)), "bcos_conv2d/b1.5": (_bcos_conv, (2, 1.5)),
    "bcos_conv2d/unfused": (_bcos_conv, (4, 2.0)),
    "bcos_linear/fused": (_bcos_linear, (2,)), "bcos_linear/unfused": (_bcos_linear, (5,)),
    "gauss_deriv_conv2d": (_gauss, (2,)), "gauss_deriv_conv3d": (_gauss, (3,)),
    **_layers(),
}


def _kernels_and_ops(gm):
    """(names of the Triton kernels launched, rbfkern ops left opaque) in a traced graph."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    kernels, opaque = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if "triton_kernel_wrapper" in name:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            kernels.append(getattr(kernel, "fn", kernel).__name__)
        elif "rbfkern" in name:
            opaque.add(name)
    return kernels, opaque


# The Gaussian-derivative ops on both paths (the dense one is a cuDNN conv: no Triton kernel there),
# the others on their one.
CALLS = [(n, p, d) for n in sorted(CASES)
         for p in (("separable", "dense") if n.startswith(("gauss", "layer/Gauss")) else ("auto",))
         for d in ("float32", "bfloat16", "float64")]


def trace(name, path, dtype):
    """{'kernels': [names], 'opaque': [...], 'convolution': bool} of the traced forward + backward."""
    os.environ["RBFKERN_GD_PATH"] = path
    make, params = CASES[name]
    dt = getattr(torch, dtype)
    layer = name.startswith("layer/")
    shapes, step = make(dt) if layer else make(*params)
    args = [None if s is None else torch.empty(s, dtype=dt, device="meta", requires_grad=layer) for s in shapes]
    gm = make_fx(dispatch_functionalize(step), tracing_mode="fake")(*args)
    kernels, opaque = _kernels_and_ops(gm)
    return {"kernels": sorted(set(kernels)), "opaque": sorted(opaque), "convolution": "convolution" in gm.code}


def _child():
    # The kernels' mutation analysis needs a GPU driver; without one torch logs a warning and
    # treats every kernel argument as written, which is all this test needs.
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
    rbfkern._backend.GPU_DEVICE_TYPES = ("cuda", "meta")
    out = {}
    for call in CALLS:
        try:
            out["|".join(call)] = trace(*call)
        except Exception as e:  # reported per case by the parent
            out["|".join(call)] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
    print("@@" + json.dumps(out))


def run_traces():
    """{"name|path|dtype": trace(...)} of every CALL, traced in a child process (see the docstring)."""
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


if __name__ == "__main__":
    _child()
