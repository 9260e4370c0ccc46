"""Run harness builds natively or under QEMU (semihosting), parse their output, count instructions."""
from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._paths import csrc_dir
from .builder import Build, BuildError, build, default_work_dir, write_cases_header
from .export import export_c
from .toolchains import get_target


class RunError(RuntimeError):
    pass


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    f32: dict = field(default_factory=dict)  # case -> {sample: (status, uint32 array)}
    q15: dict = field(default_factory=dict)  # case -> {sample: (status, int16 array)}
    errors: dict = field(default_factory=dict)  # name -> status
    math: dict = field(default_factory=dict)  # name -> checksum
    failures: int | None = None
    counts: dict | None = None  # from the instruction-count plugin

    def f32_outputs(self, case: int) -> np.ndarray:
        rows = self.f32[case]
        return np.stack([rows[s][1] for s in sorted(rows)]).view(np.float32)

    def q15_outputs(self, case: int) -> np.ndarray:
        rows = self.q15[case]
        return np.stack([rows[s][1] for s in sorted(rows)])

    def statuses(self, dtype: str, case: int) -> list:
        rows = (self.f32 if dtype == "f32" else self.q15)[case]
        return [rows[s][0] for s in sorted(rows)]

    @property
    def inference_insns(self) -> float | None:
        """Mean instructions per inference, marker overhead (the harness's first, empty region) removed."""
        c = self.counts
        if not c or c.get("regions", 0) < 2:
            return None
        over = c["region_first"]
        return (c["region_sum"] - over) / (c["regions"] - 1) - over


def parse_output(text: str) -> dict:
    out = {"f32": {}, "q15": {}, "errors": {}, "math": {}, "failures": None}
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "F" and len(f) >= 4:
            case, sample, st = int(f[1]), int(f[2]), int(f[3])
            out["f32"].setdefault(case, {})[sample] = (st, np.array([int(v, 16) for v in f[4:]], np.uint32))
        elif f[0] == "Q" and len(f) >= 4:
            case, sample, st = int(f[1]), int(f[2]), int(f[3])
            out["q15"].setdefault(case, {})[sample] = (st, np.array([int(v, 16) for v in f[4:]], np.uint16).view(np.int16))
        elif f[0] == "E" and len(f) == 3:
            out["errors"][f[1]] = int(f[2])
        elif f[0] == "M" and len(f) == 3:
            out["math"][f[1]] = f[2]
        elif f[0] == "END":
            out["failures"] = int(f[1])
    return out


def plugin_path(out_dir=None) -> Path:
    """Build (once) and return the QEMU instruction-count plugin."""
    src = csrc_dir() / "targets" / "qemu_plugin" / "rbfk_icount.c"
    out = Path(out_dir) if out_dir is not None else default_work_dir()
    import hashlib

    so = out / f"librbfk_icount-{hashlib.sha256(src.read_bytes()).hexdigest()[:12]}.so"
    if not so.exists():
        r = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O2",
                            "-fvisibility=hidden", "-o", str(so) + ".tmp", str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"plugin build failed:\n{r.stderr}")
        Path(str(so) + ".tmp").replace(so)
    return so


def _symbol_addr(b: Build, name: str) -> int:
    r = subprocess.run([b.target.nm_tool, str(b.elf)], capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) == 3 and f[2] == name:
            addr = int(f[0], 16)
            return addr & ~1 if b.target.name.startswith("cortex") else addr  # Thumb bit
    raise RunError(f"symbol {name} not in {b.elf}")


def run_build(b: Build, timeout: float = 60, count: bool = False) -> RunResult:
    """Run a harness build (natively or under QEMU, always with a timeout) and parse its output."""
    t = b.target
    if b.elf is None:
        raise RunError(f"target {t.name} is compile-only")
    if t.mode == "native":
        cmd = [str(b.elf)]
    else:
        cmd = t.qemu_command(b.elf)
    counts_file = None
    if count and t.mode == "qemu":
        counts_file = Path(tempfile.mkstemp(prefix="rbfk-icount-", suffix=".txt")[1])
        beg, end = _symbol_addr(b, "rbfk_bench_begin"), _symbol_addr(b, "rbfk_bench_end")
        cmd[1:1] = ["-plugin", f"{plugin_path()},begin={beg:#x},end={end:#x},out={counts_file}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RunError(f"{t.name}: timed out after {timeout} s: {' '.join(cmd)}") from e
    # rdimon (ARM) prints to QEMU's stdout, picolibc semihost (RISC-V) to its stderr: parse both
    res = RunResult(r.returncode, r.stdout, r.stderr, **parse_output(r.stdout + "\n" + r.stderr))
    if counts_file is not None:
        try:
            res.counts = {k: int(v) for k, v in (ln.split() for ln in counts_file.read_text().splitlines() if ln)}
        finally:
            counts_file.unlink(missing_ok=True)
    return res


def run_on_target(model, X, target: str = "host", dtype: str = "f32", *, calib=None, work_dir=None,
                  timeout: float = 120, return_result: bool = False):
    """Export ``model``, build it for ``target``, run it on the inputs ``X`` (N, D) and return the
    (N, K) outputs as a float numpy array (q15 outputs are dequantised).

    Runs under QEMU with semihosting (``host``: natively). ``calib``: inputs for the q15 ranges
    (default: X itself). ``return_result=True`` returns ``(outputs, RunResult, Export)``.
    """
    t = get_target(target)
    if not t.runnable:
        from .toolchains import targets

        raise ValueError(f"target {t.name} is compile-only; runnable here: {targets()}")
    X = np.asarray(X.detach().cpu().double().numpy() if hasattr(X, "detach") else X, np.float64)
    if X.ndim == 1:
        X = X[:, None]
    work = Path(work_dir) if work_dir is not None else default_work_dir()
    import hashlib

    name = "rbfk_model"
    with tempfile.TemporaryDirectory(prefix="export-", dir=work) as tmp:
        tmp = Path(tmp)
        ex = export_c(model, tmp / f"{name}.h", name=name, dtype=dtype,
                      calib=(X if calib is None else calib) if dtype == "q15" else None)
        key = hashlib.sha256(ex.path.read_bytes() + X.tobytes()).hexdigest()[:12]
        hdr = write_cases_header(tmp / f"cases-{key}.h", [(ex, X)] if dtype == "f32" else [],
                                 [(ex, X)] if dtype == "q15" else [])
        b = build(t, hdr, work, selftest=False)
    res = run_build(b, timeout=timeout)
    if res.failures is None or res.returncode != 0:
        raise RunError(f"{t.name}: run failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    if dtype == "f32":
        y = res.f32_outputs(0).astype(np.float64)
    else:
        y = ex.q15.dequantize_outputs(res.q15_outputs(0))
    return (y, res, ex) if return_result else y
