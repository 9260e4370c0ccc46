"""Process-wide on/off settings that work as a call or as a context manager, like
``torch.set_grad_enabled`` (rbfkern.set_value_checks, rbfkern.set_eager_fast_path)."""
from __future__ import annotations


class Switch:
    """A subclass holds its setting in the class attribute ``enabled`` (on by default).
    ``Sub(flag)`` sets it; leaving ``with Sub(flag):`` restores the value it had before."""

    enabled = True

    def __init__(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        cls = type(self)
        self.prev, cls.enabled = cls.enabled, enabled

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        type(self).enabled = self.prev
