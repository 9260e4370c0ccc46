"""One timing / table / JSON scaffold for every bench file (bench/bench_*.py).

A bench file states only its cases, its providers and its FLOP / byte models:

    import _harness as h

    def cases(args) -> list[h.Case]:          # args: the parsed command line (args.quick, your flags)
        return [h.Case("my-op", "N=1024", providers=("fused", "naive"), mode="fwd",
                       params={"n": 1024}, flops=..., bytes=...)]

    def setup(case, provider):                # builds inputs; returns the timed step: a callable, or
        ...                                   # (run, check) with check(result) -> dict of quality figures;
        return h.autograd_step(fwd, leaves, case.mode)  # fwd / fwd+bwd of an op. Raise
                                              # h.Unavailable("why") where a peer is not installed

    BENCH = h.Bench("my-op", cases, setup, ours="fused", rounds=5, memory=True)
    test_my_op = h.pytest_benchmark(BENCH)    # pytest bench/bench_my_op.py --benchmark-only

    if __name__ == "__main__":
        sys.exit(h.main(BENCH))               # [--quick] [--rounds N] [--threads N] [--json FILE] ...

What the harness does with that: every provider of a case runs in one process with interleaved
rounds (one warm-up step each, then round after round of one step per provider, so load changes hit
all providers alike); the QUANTILES (median and spread) and minimum over rounds; ratios of medians
(each provider over ``ours`` unless the bench names its own pairs); GFLOP/s, GB/s and % of this
machine's measured float32 peak (bench/_machine.py) where the case declares ``flops`` / ``bytes``
(every provider is credited with the same count, the conventions of rbfkern/gpucheck/model.py);
peak extra memory of each provider in a fresh process (bench/_memory.py) where ``memory`` is on;
machine metadata (CPU, cores, threads, versions, commit, date) in the table header and the JSON.
``params`` and everything else in a Case must be JSON values: a Case crosses to the memory child.

Optional fields of Bench: ``warmup_case`` (a small case run once before a memory measurement and a
pytest-benchmark test, so lazy imports and first-call set-up do not count), ``slow_s``, ``notes``
(untimed figures per case: saved-for-backward bytes, the path a cost model picks), ``ratios``,
``add_arguments`` and ``title``. FLOP / byte models: ``rbfkern.gpucheck.model.cost`` for the op
families (one place for the GPU and the CPU tables), a function in the bench file otherwise. To put
a file's headline cases in ``python -m rbfkern bench``, add a ``Family`` to rbfkern/bench.py naming
its fused, naive and peer providers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch

import _machine
import _memory

DEFAULT_THREADS = 2
QUICK_ENV = "RBFKERN_BENCH_QUICK"  # set: pytest-benchmark runs the --quick cases
QUANTILES = (0.2, 0.5, 0.8)


class Unavailable(Exception):
    """Raised by a setup whose provider cannot run here (a peer library not installed)."""


@dataclass(frozen=True)
class Case:
    """One row: a shape (and mode) and the providers timed on it."""

    name: str  # what is measured, e.g. "diag-gaussian"
    shape: str  # e.g. "N=4096 C=512 D=128"
    providers: tuple
    mode: str = ""  # "fwd", "fwd+bwd" or "" where the step has no backward
    params: dict = field(default_factory=dict)  # whatever setup needs
    device: str = "cpu"
    flops: float | None = None  # of one step, by the bench file's model
    bytes: float | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        return cls(**{**d, "providers": tuple(d["providers"])})


class Step(NamedTuple):
    run: Callable
    check: Callable | None = None


@dataclass
class Bench:
    """What a bench file declares (see the module docstring)."""

    name: str
    cases: Callable  # (args) -> list[Case]
    setup: Callable  # (case, provider) -> run | (run, check)
    ours: str  # the provider the ratios and the GFLOP/s column are about
    ratios: tuple = ()  # (numerator, denominator) pairs; a tuple numerator: the fastest of those
    rounds: int = 5
    memory: bool = False  # measure peak memory by default
    warmup_case: Callable | None = None  # (case) -> a small case run first where one-time costs must not count
    slow_s: float | None = None  # a warm-up step longer than this is the only sample
    notes: Callable | None = None  # (case) -> dict of untimed figures shown beside the row
    add_arguments: Callable | None = None  # (argparse parser) -> None: the file's own flags
    title: Callable | None = None  # (args) -> a line above the table (fixed settings of the cases)

    @property
    def file(self) -> str:
        return self.setup.__code__.co_filename

    def ratio_pairs(self, case: Case):
        """The declared pairs whose providers the case has (default: every other provider over ours)."""
        if not self.ratios:
            return tuple((p, self.ours) for p in case.providers if p != self.ours)
        names = lambda n: n if isinstance(n, tuple) else (n,)  # noqa: E731
        return tuple((a, b) for a, b in self.ratios if set(names(a)) | {b} <= set(case.providers))


def autograd_step(forward: Callable, leaves, mode: str) -> Callable:
    """The timed step of a differentiable op: ``forward()`` under no_grad for "fwd"; for "fwd+bwd"
    the forward and a backward of ones into ``leaves`` (their gradients cleared first)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return forward()
    else:
        def run():
            for t in leaves:
                if t is not None:
                    t.grad = None
            out = forward()
            out.backward(torch.ones_like(out))
            return out
    return run


def make_step(bench: Bench, case: Case, provider: str) -> Step:
    out = bench.setup(case, provider)
    return Step(*out) if isinstance(out, tuple) else Step(out)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(run):
    _sync()
    t0 = time.perf_counter()
    result = run()
    _sync()
    return time.perf_counter() - t0, result


def _ratio_label(num, den) -> str:
    return (f"best({','.join(num)})" if isinstance(num, tuple) else num) + "/" + den


def _stats(ts, flops, nbytes, peak) -> dict:
    p20, med, p80 = (float(v) for v in np.quantile(ts, QUANTILES))
    out = {"median_s": med, "p20_s": p20, "p80_s": p80, "min_s": min(ts), "rounds": len(ts)}
    if flops:
        out["gflops"] = flops / med / 1e9
        out["pct_peak"] = 100.0 * out["gflops"] / peak if peak else None
    if nbytes:
        out["gbps"] = nbytes / med / 1e9
    return out


def measure_case(bench: Bench, case: Case, rounds: int, memory: bool = False, threads: int = DEFAULT_THREADS,
                 peak_gflops: float | None = None) -> dict:
    """One row: interleaved rounds over the case's providers, their statistics, ratios and memory."""
    steps, errors, times, last = {}, {}, {}, {}
    for p in case.providers:
        try:
            steps[p] = make_step(bench, case, p)
        except Unavailable as e:
            errors[p] = f"unavailable: {e}"
    done = set()
    for rnd in range(rounds + 1):  # round 0 is the warm-up
        for p, step in steps.items():
            if p in done or p in errors:
                continue
            try:
                t, last[p] = _timed(step.run)
            except (RuntimeError, MemoryError) as e:  # out of memory in a naive version
                errors[p] = f"{type(e).__name__}: {str(e)[:120]}"
                print(f"  {p} failed: {errors[p]}", file=sys.stderr)
                continue
            if rnd > 0:
                times.setdefault(p, []).append(t)
            elif bench.slow_s is not None and t > bench.slow_s:
                times[p] = [t]
                done.add(p)
    peak = peak_gflops if case.device == "cpu" else None
    results = {}
    for p in case.providers:
        if p not in times:
            results[p] = None
            continue
        results[p] = _stats(times[p], case.flops, case.bytes, peak)
        if steps[p].check is not None:
            results[p].update(steps[p].check(last[p]))
    del steps, last
    if memory and case.device == "cpu":
        for p in case.providers:
            if not errors.get(p, "").startswith("unavailable"):
                results[p] = {**(results[p] or {}), "peak_mib": _memory.in_child(bench.file, case, p, threads)}
    ratios = {}
    for num, den in bench.ratio_pairs(case):
        nums = [results.get(n) for n in (num if isinstance(num, tuple) else (num,))]
        nums = [r["median_s"] for r in nums if r and "median_s" in r]
        d = results.get(den)
        ratios[_ratio_label(num, den)] = min(nums) / d["median_s"] if nums and d and "median_s" in d else None
    return {"bench": bench.name, "case": case.name, "shape": case.shape, "mode": case.mode, "device": case.device,
            "params": case.params, "flops": case.flops, "bytes": case.bytes,
            "notes": bench.notes(case) if bench.notes else {}, "results": results, "ratios": ratios,
            "errors": errors}


def measure(bench: Bench, cases, rounds: int, memory: bool = False, threads: int = DEFAULT_THREADS,
            progress: bool = True) -> list[dict]:
    """Every case's row (see :func:`measure_case`); a progress line per row on stderr."""
    torch.set_num_threads(threads)
    pk = _machine.peak(threads) if any(c.flops for c in cases) else None
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        row = measure_case(bench, case, rounds, memory, threads, pk["gflops"] if pk else None)
        rows.append(row)
        if progress:
            cells = ", ".join(f"{p} {_ms(r.get('median_s') if r else None)} ms" for p, r in row["results"].items())
            print(f"  {bench.name} {case.name} {case.shape} {case.mode}: {cells} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------


def _ms(v) -> str:
    if v is None:
        return "-"
    ms = v * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3g}"


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}%" if v < 10 else f"{v:.0f}%"


def render(header: list[str], body: list[list[str]], fmt: str = "md") -> str:
    """A Markdown table, or plain text with aligned columns."""
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in [header, *body])


def table(bench: Bench, rows: list[dict], fmt: str = "md") -> str:
    providers = list(dict.fromkeys(p for r in rows for p in r["results"]))
    ratio_labels = list(dict.fromkeys(k for r in rows for k in r["ratios"]))
    has_flops = any(r["flops"] for r in rows)
    has_mem = any(c and "peak_mib" in c for r in rows for c in r["results"].values())
    header = ["case", "shape", "mode"] + [f"{p} ms (p20-p80)" for p in providers] + ratio_labels
    if has_flops:
        header += [f"{bench.ours} GFLOP/s", "% of peak"]
    if has_mem:
        header += ["peak MiB " + " / ".join(providers)]
    has_notes = any(r["notes"] or any(_extra(c) for c in r["results"].values()) for r in rows)
    if has_notes:
        header += ["notes"]
    body = []
    for r in rows:
        cells = [r["case"], r["shape"], r["mode"] or "-"]
        for p in providers:
            c = r["results"].get(p)
            if p not in r["results"]:
                cells.append("")
            elif not c or "median_s" not in c:
                cells.append("failed" if p in r["errors"] else "-")
            else:
                cells.append(f"{_ms(c['median_s'])} ({_ms(c['p20_s'])}-{_ms(c['p80_s'])})")
        cells += ["-" if r["ratios"].get(k) is None else f"{r['ratios'][k]:.2f}x" for k in ratio_labels]
        ours = r["results"].get(bench.ours) or {}
        if has_flops:
            cells += ["-" if ours.get("gflops") is None else f"{ours['gflops']:.3g}", _pct(ours.get("pct_peak"))]
        if has_mem:
            mib = [(r["results"].get(p) or {}).get("peak_mib") for p in providers]
            cells.append(" / ".join("-" if v is None else f"{v:.0f}" for v in mib))
        if has_notes:
            notes = [f"{k}={_num(v)}" for k, v in r["notes"].items()]
            notes += [f"{p}: " + " ".join(f"{k}={_num(v)}" for k, v in _extra(c).items())
                      for p, c in r["results"].items() if _extra(c)]
            cells.append("; ".join(notes))
        body.append(cells)
    return render(header, body, fmt)


_STAT_KEYS = {"median_s", "p20_s", "p80_s", "min_s", "rounds", "gflops", "pct_peak", "gbps", "peak_mib"}


def _extra(cell) -> dict:
    """A provider's quality figures (its check's dict), without the timing statistics."""
    return {k: v for k, v in (cell or {}).items() if k not in _STAT_KEYS}


# ---------------------------------------------------------------------------------------------
# Command line, JSON
# ---------------------------------------------------------------------------------------------


def parser(bench: Bench) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"{bench.name} benchmark: providers side by side (bench/_harness.py)")
    ap.add_argument("--quick", action="store_true", help="small shapes (the CI-sized run)")
    ap.add_argument("--rounds", type=int, default=bench.rounds, help="timed rounds after one warm-up")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads (and FMA-peak threads)")
    ap.add_argument("--json", help="also write {machine, rows} to this file")
    ap.add_argument("--format", choices=("md", "plain"), default="md")
    if bench.memory:
        ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    if bench.add_arguments:
        bench.add_arguments(ap)
    return ap


def options(bench: Bench, argv=()) -> argparse.Namespace:
    """The parsed options of ``bench`` (defaults for what ``argv`` leaves out)."""
    return parser(bench).parse_args(list(argv))


def write_json(path, meta: dict, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"machine": meta, "rows": rows}, f, indent=1)


def main(bench: Bench, argv=None) -> int:
    args = parser(bench).parse_args(argv)
    cases = bench.cases(args)
    meta = _machine.describe(args.threads, measure_peak=any(c.flops for c in cases))
    rows = measure(bench, cases, args.rounds, bench.memory and not args.no_memory, args.threads)
    print(_machine.header(meta))
    if bench.title:
        print(bench.title(args))
    print(table(bench, rows, args.format))
    if args.json:
        write_json(args.json, meta, rows)
    return 0


# ---------------------------------------------------------------------------------------------
# pytest-benchmark
# ---------------------------------------------------------------------------------------------


def pytest_benchmark(bench: Bench, rounds: int = 5, warmup_rounds: int = 1, argv=()):
    """A test function over (case, provider) for pytest-benchmark: the cases of ``argv`` (plus --quick
    where $RBFKERN_BENCH_QUICK is set)."""
    try:
        import pytest
    except ImportError:  # running a bench file as a script without pytest
        return None
    cases = bench.cases(options(bench, [*argv, *(["--quick"] if os.environ.get(QUICK_ENV) else [])]))
    items = [(c, p) for c in cases for p in c.providers]
    ids = [f"{c.name}-{c.shape}-{c.mode}-{p}".replace(" ", "-").strip("-") for c, p in items]

    @pytest.mark.parametrize("case,provider", items, ids=ids)
    def test(benchmark, case, provider):
        torch.set_num_threads(DEFAULT_THREADS)
        try:
            if bench.warmup_case:
                make_step(bench, bench.warmup_case(case), provider).run()
            step = make_step(bench, case, provider)
        except Unavailable as e:
            pytest.skip(str(e))
        benchmark.group = f"{bench.name} {case.name} {case.shape} {case.mode}".strip()
        benchmark.extra_info.update(bench.notes(case) if bench.notes else {})
        if case.flops:
            benchmark.extra_info["flops"] = case.flops
        result = benchmark.pedantic(step.run, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
        if step.check is not None:
            benchmark.extra_info.update(step.check(result))

    return test
