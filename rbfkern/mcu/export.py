"""Export trained rbfkern RBF models to a C99 header for csrc/mcu (``rbfk.h``): :func:`export_c`
runs the three jobs, each in its own module: :mod:`.extract` (the model's float32 parameters),
:mod:`.quantize` (q15 formats, bit-exact model and error bound), :mod:`.emit` (the C text).
Their public names stay importable from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .emit import c_float, c_identifier, header_f32, header_q15
from .extraction import KINDS, MAX_DIM, METRICS, NetParams, extract
from .quantize import LOG2E, Q15_KINDS, Q15_METRICS, Q15Params, calib_array, q15_error_bound, quantize_q15

__all__ = ["Export", "export_c", "extract", "NetParams", "METRICS", "KINDS", "MAX_DIM", "quantize_q15",
           "q15_error_bound", "Q15Params", "Q15_METRICS", "Q15_KINDS", "LOG2E", "c_float", "header_f32",
           "header_q15"]


@dataclass
class Export:
    """What :func:`export_c` wrote."""

    path: Path
    name: str
    dtype: str
    params: NetParams
    q15: Q15Params | None = None

    @property
    def quant_report(self) -> dict:
        return dict(self.q15.report) if self.q15 is not None else {}


def export_c(model, path, name: str = "model", dtype: str = "f32", calib=None) -> Export:
    """Write one C header with the model's weights as ``const`` arrays and its descriptor.

    Args:
        model: a fitted RBFNetwork, an RBFClassifier (head only) or an ``(RBF, nn.Linear)`` pair.
        path: the header to write (a directory: ``<path>/<name>.h``).
        name: C identifier of the descriptor (``rbfk_net_f32 name`` / ``rbfk_net_q15 name``) and
            the prefix of every array.
        dtype: ``"f32"`` or ``"q15"``.
        calib: optional (N, D) inputs to choose the q15 input/output ranges from (training data).

    Returns an :class:`Export`; for q15 ``.quant_report`` has the chosen formats and the maximum
    quantisation errors (and, with ``calib``, the measured and bounded output error).
    """
    name = c_identifier(name)
    if dtype not in ("f32", "q15"):
        raise ValueError(f"dtype must be 'f32' or 'q15', got {dtype!r}")
    p = extract(model)
    if calib is not None:
        calib = calib_array(calib, p.in_dim)  # checked for f32 too, where it is not used
    path = Path(path)
    if path.is_dir():
        path = path / f"{name}.h"
    q = None
    if dtype == "f32":
        text = header_f32(p, name)
    else:
        q = quantize_q15(p, calib)
        text = header_q15(q, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return Export(path, name, dtype, p, q)
