"""Public ops. Each is a ``torch.ops.rbfkern.*`` custom op with fake impl and autograd."""
from .rbf import rbf, rbf_r2
from .bcos import bcos_conv2d, bcos_linear
from .gauss_deriv import gauss_deriv_conv2d, gauss_deriv_conv3d
from . import _autocast  # noqa: E402,F401  (after the ops: registers their float32 autocast policy)

__all__ = ["rbf", "rbf_r2", "bcos_conv2d", "bcos_linear", "gauss_deriv_conv2d", "gauss_deriv_conv3d"]
