"""Environment variables set for the duration of a block (the backend and path switches are
read from the environment on every call)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Mapping


def _assign(values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextmanager
def environ(values: Mapping[str, str | None]):
    """Set each variable to its value (None: unset it) inside the block; restore the old values after."""
    old = {k: os.environ.get(k) for k in values}
    try:
        _assign(values)
        yield
    finally:
        _assign(old)
