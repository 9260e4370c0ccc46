"""Where the C sources live: inside the package (wheel) or in the source tree (editable/dev)."""
from __future__ import annotations

import os
from pathlib import Path


def csrc_dir() -> Path:
    """The directory holding rbfk.h, rbfk_*.c and targets/.

    Order: ``$RBFKERN_MCU_SRC``; ``rbfkern/mcu/csrc`` (installed by CMake into a wheel); the source
    tree's ``csrc/mcu`` (editable install / checkout).
    """
    env = os.environ.get("RBFKERN_MCU_SRC")
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    cands += [here / "csrc", here.parents[1] / "csrc" / "mcu"]
    for c in cands:
        if (c / "rbfk.h").is_file():
            return c
    raise FileNotFoundError(
        "rbfk.h not found (looked in " + ", ".join(str(c) for c in cands) + "); set RBFKERN_MCU_SRC to csrc/mcu"
    )


def library_sources() -> list[Path]:
    return sorted(csrc_dir().glob("rbfk_*.c"))
