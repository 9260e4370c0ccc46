"""rbfkern: fused PyTorch kernels for interpretable layers.

Families: Mahalanobis RBF distance + activation (``rbfkern.ops.rbf``), B-cos, Gaussian-derivative
basis convolutions, and a portable C99 RBF kernel for microcontrollers (``rbfkern.mcu``).
"""

# torch first: it loads libgomp, so the C++ extension's OpenMP binds to the same runtime.
import torch  # noqa: F401

__version__ = "0.1.0"

from . import ops  # noqa: E402,F401  (registers the torch.ops.rbfkern.* custom ops)
from . import reference  # noqa: E402,F401
from . import nn  # noqa: E402,F401
from .ops._checks import set_value_checks  # noqa: E402
from .ops._eager import set_eager_fast_path  # noqa: E402

__all__ = ["nn", "ops", "reference", "set_eager_fast_path", "set_value_checks", "__version__"]
