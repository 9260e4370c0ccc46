"""One small call of every differentiable op: name -> (function, float64/float32 inputs that
require grad). A case is named after its op, then what it varies."""
import torch

from rbfkern.ops import (
    bcos_conv2d,
    bcos_linear,
    gauss_deriv_conv2d,
    gauss_deriv_conv3d,
    rbf,
    rbf_r2,
)


def op_cases(dtype, device="cpu"):
    g = torch.Generator().manual_seed(0)

    def r(*shape, pos=False):
        t = torch.randn(*shape, generator=g, dtype=dtype)
        return (t.abs() + 0.5 if pos else t).to(device).requires_grad_()

    return {
        "rbf_r2_none": (lambda x, c: rbf_r2(x, c), (r(9, 5), r(4, 5))),
        "rbf_r2_diag": (lambda x, c, d: rbf_r2(x, c, diag=d), (r(9, 20), r(4, 20), r(4, 20, pos=True))),
        "rbf_gaussian_diag": (lambda x, c, d, s: rbf(x, c, diag=d, sigma=s, return_r2=True),
                              (r(9, 5), r(4, 5), r(5, pos=True), r(4, pos=True))),
        "rbf_imq_tril": (lambda x, c, t: rbf(x, c, tril=t, kind="inverse_multiquadric", sigma=1.5),
                         (r(9, 3), r(4, 3), r(4, 3, 3))),
        "bcos_conv2d": (lambda x, w: bcos_conv2d(x, w, max_out=2, padding=1), (r(2, 3, 6, 6), r(8, 3, 3, 3))),
        "bcos_linear_b3": (lambda x, w: bcos_linear(x, w, b=3.0), (r(2, 3, 7), r(5, 7))),
        "gauss_deriv_conv2d": (lambda x, a, s: gauss_deriv_conv2d(x, a, s, order=2),
                               (r(2, 3, 9, 9), r(4, 3, 6), torch.tensor([1.2], dtype=dtype, device=device, requires_grad=True))),
        "gauss_deriv_conv3d": (lambda x, a: gauss_deriv_conv3d(x, a, 0.8, order=1), (r(1, 2, 6, 6, 6), r(3, 2, 4))),
    }
