"""Public ops. Each is a ``torch.ops.rbfkern.*`` custom op with fake impl and autograd."""
from .rbf import rbf, rbf_r2

__all__ = ["rbf", "rbf_r2"]
