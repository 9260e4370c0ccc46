"""What a run does: the profile (quick / default / full, rehearsal or device), its budget and
timer, the test selection, the warm-up jobs and the benchmark units. ``--dry-run`` prints it."""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import pytest_step
from .families import FAMILY_NAMES, all_cases, family

# Seconds. budget: the whole gpucheck run (the build before it is not counted); bench_reserve: kept
# for peaks + timing when the tests and the warm-up are stopped; warmup / rep: do_bench's windows.
PROFILES = {
    "quick": dict(budget=270, bench_reserve=90, warmup_ms=10, rep_ms=40),  # ~100 timed steps
    "default": dict(budget=420, bench_reserve=170, warmup_ms=15, rep_ms=60),  # ~240 timed steps
    "full": dict(budget=540, bench_reserve=190, warmup_ms=25, rep_ms=100),
}
REHEARSAL = dict(budget=150, bench_reserve=60, warmup_ms=0, rep_ms=0, cpu_rep_ms=20)
ROOT = Path(__file__).resolve().parents[2]  # the source checkout (tests/ beside rbfkern/)


@dataclass
class Plan:
    profile: str  # quick | default | full
    rehearse: bool
    out: Path
    budget: float
    bench_reserve: float
    timer: dict
    families: tuple
    jobs: int
    test_workers: int
    tests_cmd: list | None
    tests_skip: str | None
    tests_selection: str
    warm_jobs: list = field(default_factory=list)  # [[(case key, dtype), ...], ...] one list per subprocess
    bench_units: dict = field(default_factory=dict)  # family -> [(case key, dtype), ...]

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"


def _units(cases):
    return [(c.key, dt) for c in cases for dt in c.dtypes]


# Rough JIT cost order for the warm-up queue (the implicit-GEMM B-cos kernels compile slowest).
_WARM_ORDER = {"bcos": 0, "gauss_deriv": 1, "rbf": 2}


def build(args) -> Plan:
    profile = "quick" if args.quick else "full" if args.full else "default"
    base = REHEARSAL if args.rehearse else PROFILES[profile]
    families = tuple(dict.fromkeys(args.family)) if args.family else FAMILY_NAMES
    cpus = os.cpu_count() or 2
    test_workers = args.test_workers if args.test_workers is not None else (1 if args.rehearse else
                                                                          max(1, min(6, cpus // 3)))
    jobs = args.jobs if args.jobs is not None else (min(2, cpus) if args.rehearse else
                                                    max(1, min(8, cpus - test_workers - 2)))
    cases = all_cases(families, quick=args.quick)
    units = _units(cases)
    if args.rehearse:  # one warm-up subprocess per family: the JIT costs nothing on CPU
        warm = [[u for u in units if u[0].startswith(f + "/")] for f in families]
    else:  # one per (case, dtype), slowest compiles first
        warm = [[u] for u in sorted(units, key=lambda u: _WARM_ORDER.get(u[0].split("/")[0], 9))]
    warm = [w for w in warm if w]
    bench_units = {f: [u for u in units if u[0].startswith(f + "/")] for f in families}
    timer = {"warmup_ms": base["warmup_ms"], "rep_ms": base["rep_ms"], "cpu_rep_ms": base.get("cpu_rep_ms", 30)}

    tests_skip, tests_cmd = None, None
    junit = Path(args.out) / "pytest-junit.xml"
    extra = shlex.split(args.pytest_args) if args.pytest_args else []
    if args.no_tests:
        tests_skip, selection = "--no-tests", "-"
    elif not (ROOT / "tests").is_dir():
        tests_skip, selection = f"no tests/ folder beside the package ({ROOT}): run from a source checkout", "-"
    else:
        if args.rehearse:
            markexpr, sel = None, ([] if extra else pytest_step.REHEARSE_SELECTION)
            selection = " ".join(extra or sel) + "  (rehearsal: the CUDA tests need a GPU)"
        else:
            markexpr = pytest_step.FULL_MARKEXPR if args.full else pytest_step.DEFAULT_MARKEXPR
            sel = [] if extra else ["tests"]
            selection = f'-m "{markexpr}"' + (" " + " ".join(extra) if extra else " tests")
        tests_cmd = pytest_step.command(sys.executable, junit, test_workers, markexpr, sel, extra)
    return Plan(profile=profile, rehearse=args.rehearse, out=Path(args.out), budget=float(args.budget or base["budget"]),
                bench_reserve=float(base["bench_reserve"]), timer=timer, families=families, jobs=jobs,
                test_workers=test_workers, tests_cmd=tests_cmd, tests_skip=tests_skip, tests_selection=selection,
                warm_jobs=warm, bench_units=bench_units)


def describe(plan: Plan, cuda_line: str) -> str:
    """The steps a run of ``plan`` takes, as printed by --dry-run."""
    kind = "rehearsal on CPU (tiny shapes, host timer)" if plan.rehearse else "CUDA device"
    n_units = sum(len(v) for v in plan.bench_units.values())
    lines = [f"gpucheck plan: profile {plan.profile}, {kind}, budget {plan.budget:.0f} s",
             f"  {cuda_line}",
             f"  writes {plan.out}/gpucheck.json, gpucheck.md, gpucheck.log, pytest.log, pytest-junit.xml",
             "step 1  env     device name, capability, SMs, memory, driver (nvidia-smi query), torch / triton / CUDA / "
             "cuDNN versions, C++ extension, bcos",
             ]
    if plan.tests_cmd:
        lines.append(f"step 2  tests   {plan.tests_selection}; in the background beside step 3, stopped "
                     f"{min(plan.bench_reserve, plan.budget / 2):.0f} s before the budget ends")
        lines.append("          $ " + shlex.join(plan.tests_cmd))
    else:
        lines.append(f"step 2  tests   skipped: {plan.tests_skip}")
    lines.append(f"step 3  warm    {len(plan.warm_jobs)} subprocesses, {plan.jobs} at a time, one TRITON_CACHE_DIR: "
                 "each runs the fused op's fwd and fwd+bwd once (the Triton JIT compiles)")
    size = "256^3 matmuls, 16 MiB copy" if plan.rehearse else "8192^3 matmuls, 2 GiB copy"
    lines.append(f"step 4  peaks   bf16 matmul, float32 matmul TF32 off and on, device-to-device copy ({size})")
    t = plan.timer
    timer = (f"host clock, ~{t['cpu_rep_ms']} ms per step" if plan.rehearse else
             f"triton.testing.do_bench warmup {t['warmup_ms']} ms, rep {t['rep_ms']} ms, median + 20/80 % quantiles")
    lines.append(f"step 5  bench   {n_units} (case, dtype) units x fwd, fwd+bwd; one subprocess per family, in turn; "
                 f"{timer}")
    for fam in plan.families:
        mod = family(fam)
        for c in mod.CASES:
            dts = [dt for k, dt in plan.bench_units[fam] if k == c.key]
            if not dts:
                continue
            params = c.resolved(plan.rehearse)
            lines.append(f"          {c.key}  [{', '.join(dts)}]  {params}")
        lines.append(f"          {fam} providers: {mod.SUMMARY}")
    lines.append("step 6  report  gpucheck.json + gpucheck.md; exit 1 if a test failed or a fused op raised/crashed")
    return "\n".join(lines)
