"""``python -m rbfkern demo``: every rbfkern family on scikit-learn's bundled digits, with pictures.

Parts (each its own module): CNN-RBF head with a learned metric (``cnn_rbf``), a B-cos CNN and
its contribution maps (``bcos_cnn``), structured receptive fields vs a plain CNN on little data
(``srf``), the classic RBF network on microcontrollers (``mcu``), and a speed table (``speed``).
"""
from .run import run

__all__ = ["run"]
