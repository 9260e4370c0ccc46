"""One small call of every op, forward and its backward op, per variant (metric, kind, MaxOut, B,
rank), and a training step of every layer: what tests/test_cuda_trace.py traces on meta tensors
and what ``python -m rbfkern.gpucheck.sanitize`` runs under compute-sanitizer.

CASES maps a name to (make, params); ``make(*params)`` gives (input shapes, step) for an op case,
``make(dtype, device)`` (shapes, step) for a layer case ("layer/..."), whose inputs need
``requires_grad``. BIG holds op cases past 2^31 elements or past the 65535 blocks of a grid's y
axis (traced only: no memory on meta).
"""
import torch

ops = torch.ops.rbfkern
GD_PATHS = ("separable", "dense")  # the Gaussian-derivative op's two CUDA paths (RBFKERN_GD_PATH)


def _rbf(metric, kind, n=37, c=19, d=17):
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


def _bcos_conv(max_out, b, x_shape=(2, 4, 11, 9)):
    shapes = [x_shape, (8 * max_out // 2, 2, 3, 3)]
    geo = ([2, 1], [1, 1], [1, 2], 2)

    def step(x, w):
        y, lmax, idx, root = ops.bcos_conv2d(x, w, b, max_out, *geo, False, True)
        return [y, *ops.bcos_conv2d_bwd(y, x, w, lmax, idx, root, b, max_out, *geo, False, [True, True])]

    return shapes, step


def _bcos_linear(max_out, rows=15):
    shapes = [(rows, 17), (6 * max_out, 17)]

    def step(x, w):
        y, lmax, idx, root = ops.bcos_linear(x, w, 2.0, max_out, False, True)
        return [y, *ops.bcos_linear_bwd(y, x, w, lmax, idx, root, 2.0, max_out, False, [True, True])]

    return shapes, step


def _gauss(ndim, x_shape=None):
    order, radii = (2, [3, 5]) if ndim == 2 else (1, [3])
    m = (order + 1) * (order + 2) // 2 if ndim == 2 else (order + 1) * (order + 2) * (order + 3) // 6
    x_shape = x_shape or ((2, 3, 13, 12) if ndim == 2 else (2, 3, 7, 8, 6))
    shapes = [x_shape, (4, x_shape[1], len(radii) * m), (len(radii),)]
    fwd, bwd = (ops.gauss_deriv_conv2d, ops.gauss_deriv_conv2d_bwd) if ndim == 2 else \
        (ops.gauss_deriv_conv3d, ops.gauss_deriv_conv3d_bwd)
    args = (order, 4.0, radii, 1, max(radii), False)

    def step(x, alpha, sigma):
        y = fwd(x, alpha, sigma, *args)
        return [y, *bwd(y, x, alpha, sigma, *args, [True, True, True])]

    return shapes, step


def _layer(build, in_shape):
    """A training step of an nn layer (built on the meta device unless told otherwise): forward, a
    loss, the gradients of the input and every parameter. Traced on meta tensors, any read of a
    tensor's values (a host sync on a GPU; an error inside a CUDA graph capture) fails the trace."""
    def make(dtype, device="meta"):
        module = build().to(device=device, dtype=dtype)
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

# Shapes past 2^31 elements in some tensor or with more blocks than a CUDA grid's y / z axis takes
# (65535): traced on meta tensors (no memory), they show each launch's grid.
BIG = {
    "big/rbf/diag/many_rows": (_rbf, ("diag", "gaussian", 2 ** 26, 19, 33)),
    "big/rbf/diag/many_pairs": (_rbf, ("diag", "gaussian", 2 ** 22, 1024, 64)),
    "big/rbf/tril/many_pairs": (_rbf, ("tril", "gaussian", 2 ** 22, 600, 16)),
    "big/bcos_conv2d/large_image": (_bcos_conv, (2, 2.0, (1, 4, 8192, 8192))),
    "big/bcos_conv2d/many_images": (_bcos_conv, (2, 2.0, (70000, 4, 5, 5))),
    "big/bcos_conv2d/unfused/large_image": (_bcos_conv, (4, 2.0, (1, 4, 8192, 8192))),
    "big/bcos_linear/many_rows": (_bcos_linear, (2, 2 ** 25)),
    "big/bcos_linear/unfused/many_rows": (_bcos_linear, (5, 2 ** 25)),
    "big/gauss_deriv_conv2d": (_gauss, (2, (64, 3, 2048, 2048))),
    "big/gauss_deriv_conv3d": (_gauss, (3, (2, 3, 640, 640, 640))),
}
