"""Timers of the GPU check: ``triton.testing.do_bench`` on CUDA (CUDA events, the L2 flushed before
each run), a host clock on CPU (``--rehearse``). Both return the per-run samples, summarised the
same way: median and the 20 % / 80 % quantiles (linear interpolation, as torch.quantile)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

QUANTILES = (0.2, 0.8)


def quantile(samples, q: float) -> float:
    """The q-quantile of ``samples`` by linear interpolation between order statistics."""
    xs = sorted(samples)
    if not xs:
        raise ValueError("no samples")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int
    timer: str

    @classmethod
    def of(cls, samples_ms, timer: str) -> "Timing":
        return cls(statistics.median(samples_ms), quantile(samples_ms, 0.2), quantile(samples_ms, 0.8),
                   len(samples_ms), timer)


class CudaTimer:
    """do_bench(fn, warmup, rep, return_mode="all"): warm-up and repetition windows in ms. A step
    slower than ``slow_ms`` is timed ``slow_runs`` times with CUDA events instead (do_bench would
    spend 7 runs for one sample)."""

    def __init__(self, warmup_ms: float, rep_ms: float, slow_ms: float = 150.0, slow_runs: int = 3):
        self.warmup_ms, self.rep_ms, self.slow_ms, self.slow_runs = warmup_ms, rep_ms, slow_ms, slow_runs
        self.name = f"triton.testing.do_bench(warmup={warmup_ms:g} ms, rep={rep_ms:g} ms), CUDA events"

    @staticmethod
    def sync():
        import torch

        torch.cuda.synchronize()

    def once_ms(self, fn) -> float:
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def estimate_s(self, once_ms: float) -> float:
        """Wall seconds the measurement of a step of ``once_ms`` will take (for the budget)."""
        if once_ms >= self.slow_ms:
            return self.slow_runs * once_ms / 1e3
        return (7 * once_ms + 1.6 * (self.warmup_ms + self.rep_ms)) / 1e3 + 0.05

    def __call__(self, fn, once_ms: float) -> Timing:
        if once_ms >= self.slow_ms:
            samples = [once_ms] + [self.once_ms(fn) for _ in range(self.slow_runs - 1)]
            return Timing.of(samples, f"CUDA events, {len(samples)} runs (a step over {self.slow_ms:g} ms)")
        from triton.testing import do_bench

        try:
            samples = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="all")
        except (TypeError, AssertionError):  # an older do_bench without return_mode="all"
            med, p20, p80 = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=[0.5, *QUANTILES])
            return Timing(med, p20, p80, 0, self.name + " (quantiles only)")
        return Timing.of(list(samples), self.name)


class CpuTimer:
    """Host clock: at least ``min_runs`` runs, more while under ``rep_ms`` (at most ``max_runs``)."""

    def __init__(self, rep_ms: float = 30.0, min_runs: int = 3, max_runs: int = 15):
        self.rep_ms, self.min_runs, self.max_runs = rep_ms, min_runs, max_runs
        self.name = f"host clock (time.perf_counter), >= {min_runs} runs in ~{rep_ms:g} ms"

    @staticmethod
    def sync():
        pass

    @staticmethod
    def once_ms(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def estimate_s(self, once_ms: float) -> float:
        return max(self.min_runs * once_ms, self.rep_ms) / 1e3 + 0.01

    def __call__(self, fn, once_ms: float) -> Timing:
        samples, t_end = [], time.perf_counter() + self.rep_ms / 1e3
        while len(samples) < self.min_runs or (len(samples) < self.max_runs and time.perf_counter() < t_end):
            samples.append(self.once_ms(fn))
        return Timing.of(samples, self.name)
