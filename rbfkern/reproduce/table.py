"""Seed statistics and the claims table of ``python -m rbfkern reproduce``.

Every comparison is paired by seed (same data split, same training subset, same seed for both
models), so the verdict looks at the per-seed differences d: "no difference" when |mean d| is below
``min_effect`` (half a percentage point by default: smaller gaps are not worth a claim), else the
claim "holds" when mean d is more than two standard errors above 0, "fails" when it is more than
two below, and is "unclear" otherwise (with one seed: the sign only, marked as such).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("values must hold at least one number")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3) -> str:
    """'mean ± std' of the values."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def verdict(better: Sequence[float], worse: Sequence[float], min_effect: float = 0.005) -> str:
    """Whether ``better`` beats ``worse`` across the paired seeds (see the module docstring)."""
    if len(better) != len(worse) or len(better) == 0:
        raise ValueError(f"better and worse must be paired per seed, got {len(better)} and {len(worse)} values")
    d = np.asarray(better, dtype=np.float64) - np.asarray(worse, dtype=np.float64)
    if abs(d.mean()) < min_effect:
        return "no difference"
    if d.size == 1:
        return ("holds" if d[0] > 0 else "fails" if d[0] < 0 else "unclear") + " (1 seed)"
    se = d.std(ddof=1) / math.sqrt(d.size)
    m = d.mean()
    if m > 2 * se and m > 0:
        return "holds"
    if m < -2 * se and m < 0:
        return "fails"
    return "unclear"


@dataclass
class Row:
    """One line of the table: the paper's claim, what was measured and the numbers."""

    claim: str
    measure: str
    result: str
    verdict: str
    details: list[str] = field(default_factory=list)


def render(rows: Sequence[Row], title: str) -> str:
    """A plain-text table (fixed-width columns), with each row's details indented below it."""
    head = ("claim (paper)", "measure", "result (mean ± std over seeds)", "verdict")
    cols = [[r.claim, r.measure, r.result, r.verdict] for r in rows]
    widths = [max(len(head[i]), *(len(c[i]) for c in cols)) for i in range(4)]

    def line(cells):
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [title, line(head), "-+-".join("-" * w for w in widths)]
    for r, c in zip(rows, cols):
        out.append(line(c))
        out += [f"    {d}" for d in r.details]
    return "\n".join(out)
