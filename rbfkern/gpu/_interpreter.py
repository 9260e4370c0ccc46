"""Workarounds for bugs of Triton's interpreter (``TRITON_INTERPRET=1``) in the supported versions.

Nothing here changes a compiled kernel: ``apply()`` patches the interpreter only when it is on,
and only in the versions that have the bug. Each family module calls it on import.
"""
from __future__ import annotations

import os

import numpy as np
import triton


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _numpy_refuses_1d_scalars() -> bool:
    try:
        int(np.zeros(1, dtype=np.int32))
    except TypeError:
        return True
    return False


def _fix_index_of_1d_handles() -> None:
    # triton <= 3.6: the interpreter's tensor.__index__ is int(handle.data) on the shape-(1,) array
    # that holds a scalar argument; NumPy >= 2.4 refuses that ("only 0-dimensional arrays can be
    # converted to Python scalars"), so every `range(0, D, BD)` over a runtime D fails. triton 3.7
    # squeezes the array first; so does this wrapper.
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_rbfkern_fixed", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor._rbfkern_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def apply() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    if _version(triton.__version__) < (3, 7) and _numpy_refuses_1d_scalars():
        _fix_index_of_1d_handles()
