"""Benchmark cases of the GPU check, one module per family, and what they share.

A family module defines ``CASES`` (a list of :class:`Case`) and ``providers(case, dtype, device,
params)``, which builds the inputs once and returns the :class:`Provider` list of that case: the
fused op (role ``fused``, the base of every ratio), other paths of ours (role ``ours``) and the
peers (role ``peer``). A provider that cannot run here carries ``skip``, the reason, and is
recorded as skipped, never dropped.

float32 peers that run on cuBLAS / cuDNN appear twice, keys ending ``_tf32_off`` and
``_tf32_on`` (PyTorch's two TF32 switches set for the step); bfloat16 ones once, without the
suffix (TF32 does not apply). Ours runs with both switches off.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

FAMILY_NAMES = ("rbf", "bcos", "gauss_deriv")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Case:
    """One benchmark shape of a family. ``params`` are the device shapes, ``tiny`` the overrides
    ``--rehearse`` uses on CPU; ``quick`` marks the ``--quick`` subset."""

    family: str
    name: str
    title: str
    params: dict
    tiny: dict
    quick: bool = False
    dtypes: tuple = ("float32", "bfloat16")

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name}"

    def resolved(self, tiny: bool) -> dict:
        return {**self.params, **self.tiny} if tiny else dict(self.params)


@dataclass
class Provider:
    """One implementation of a case. ``fn()`` runs the forward on the inputs built for the case
    and returns the output; ``leaves`` are the tensors whose gradients fwd+bwd computes."""

    key: str
    label: str
    fn: Callable[[], torch.Tensor] | None
    leaves: list = field(default_factory=list)
    role: str = "peer"  # "fused" | "ours" | "peer"
    tf32: bool = False
    env: dict = field(default_factory=dict)  # environment variables set while it runs
    skip: str | dict | None = None  # why it cannot run (all modes, or {mode: reason}): recorded as skipped
    jit: bool = False  # runs Triton kernels: the warm-up step compiles it
    note: str = ""

    def skip_reason(self, mode: str) -> str | None:
        return self.skip.get(mode) if isinstance(self.skip, dict) else self.skip


def family(name: str):
    if name not in FAMILY_NAMES:
        raise ValueError(f"family must be one of {FAMILY_NAMES}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def all_cases(families=FAMILY_NAMES, quick: bool = False) -> list[Case]:
    out = []
    for f in families:
        out += [c for c in family(f).CASES if c.quick or not quick]
    return out


def find_case(key: str) -> Case:
    fam = key.split("/", 1)[0]
    for c in family(fam).CASES:
        if c.key == key:
            return c
    raise KeyError(f"no benchmark case {key!r}")


def generator(device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def ours_label(device, what: str) -> str:
    return f"{what} ({'Triton' if torch.device(device).type == 'cuda' else 'C++'})"


def torch_peers(key: str, label: str, fn, leaves, dtype: str, skip: str | None = None, note: str = "") -> list[Provider]:
    """A cuBLAS / cuDNN peer: twice for float32 (TF32 off, on), once for bfloat16."""
    if dtype != "float32":
        return [Provider(key, label, fn, leaves, skip=skip, note=note)]
    return [Provider(f"{key}_tf32_off", f"{label}, TF32 off", fn, leaves, tf32=False, skip=skip, note=note),
            Provider(f"{key}_tf32_on", f"{label}, TF32 on", fn, leaves, tf32=True, skip=skip, note=note)]


def free_bytes(device) -> int:
    """Memory a new allocation can still get on ``device`` (CPU: MemAvailable)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30
