"""Pieces of CI's sanitizer/fuzz stage (.ci/sanitize) that must keep working between CI runs:
the RBFKERN_EXT override that loads the sanitized extension, and the MCU fuzz harness
(csrc/fuzz) with its seeds from real exported models, replayed under gcc's ASan/UBSan.
The stage itself (sanitized builds, libFuzzer for 60 s) runs in .ci/run, not here."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "csrc" / "fuzz"
MCU = ROOT / "csrc" / "mcu"


def _py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_ext_override_loads_that_file(tmp_path):
    import rbfkern._C as installed

    # a copy elsewhere: proves the file named by RBFKERN_EXT is the one loaded
    copy = tmp_path / Path(installed.__file__).name
    shutil.copy(installed.__file__, copy)
    code = ("import torch, rbfkern\nfrom rbfkern import _backend\n"
            "print(_backend.cext().__file__)\n"
            "x = torch.randn(4, 3); c = torch.randn(5, 3)\n"
            "torch.testing.assert_close(rbfkern.ops.rbf(x, c), rbfkern.reference.rbf(x, c))\n")
    r = _py(code, RBFKERN_EXT=str(copy), RBFKERN_BACKEND="cpp")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(copy)


def test_ext_override_bad_path_is_an_import_error(tmp_path):
    r = _py("from rbfkern import _backend\n_backend.cext()", RBFKERN_EXT=str(tmp_path / "missing.so"))
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "missing.so" in r.stderr


@pytest.fixture(scope="module")
def fuzz_bins(tmp_path_factory):
    """Exported models -> seeds (rbfk_seed), and the harness with the gcc replay main, sanitized."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("fuzz")
    sys.path.insert(0, str(FUZZ))
    try:
        import export_models
    finally:
        sys.path.pop(0)
    export_models.main(out / "cases")
    libs = sorted(str(p) for p in MCU.glob("rbfk_*.c"))
    inc = ["-I", str(MCU), "-I", str(FUZZ)]
    subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", *inc, "-I", str(out / "cases"),
                    str(FUZZ / "rbfk_seed.c"), "-o", str(out / "seed")], check=True, timeout=120)
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
    subprocess.run(["gcc", "-std=c99", "-O0", "-Wall", "-Wextra", "-Werror", *san, *inc, str(FUZZ / "rbfk_replay.c"),
                    str(FUZZ / "rbfk_fuzz.c"), *libs, "-lm", "-o", str(out / "replay")], check=True, timeout=300)
    corpus = out / "corpus"
    corpus.mkdir()
    subprocess.run([str(out / "seed"), str(corpus)], check=True, timeout=60, capture_output=True)
    return out


def _replay(fuzz_bins, files, trace=True):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "halt_on_error=1"}
    if trace:
        env["RBFK_FUZZ_TRACE"] = "1"
    return subprocess.run([str(fuzz_bins / "replay"), *map(str, files)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_seeds_are_valid_models(fuzz_bins):
    """Every seed from an exported header passes the checks and runs (the fuzzer starts from there)."""
    seeds = sorted((fuzz_bins / "corpus").iterdir())
    names = {p.name for p in seeds}
    assert {"seed_f32_digits", "seed_q15_digits_q", "seed_f32_g_full_multiquadric", "seed_f32_sine", "seed_math_helpers"} <= names
    r = _replay(fuzz_bins, seeds)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "check=" in ln]
    assert len(lines) == len(seeds) - 1  # the math seed prints nothing
    assert all(ln.endswith("check=0 forward=0 predict=0") for ln in lines), lines


def test_malformed_seeds_are_rejected_not_crashing(fuzz_bins, tmp_path):
    """Bytes of a real model with one field broken: the checks reject it, nothing reads out of bounds."""
    base = (fuzz_bins / "corpus" / "seed_f32_g_diag_thin_plate").read_bytes()
    off = 1 + 2  # op, nulls; then in_dim, n_centers, out_dim, metric, kind, shape (4 bytes each)
    cases = {
        "zero_in_dim": (off, (0).to_bytes(4, "little", signed=True), -2),
        "huge_centers": (off + 4, (4097).to_bytes(4, "little", signed=True), -2),
        "neg_out_dim": (off + 8, (-3).to_bytes(4, "little", signed=True), -2),
        "bad_metric": (off + 12, (9).to_bytes(4, "little", signed=True), -3),
        "bad_kind": (off + 16, (-1).to_bytes(4, "little", signed=True), -4),
        "nan_shape": (off + 20, bytes.fromhex("0000c07f"), -6),
    }
    files = []
    for name, (pos, val, _) in cases.items():
        p = tmp_path / name
        p.write_bytes(base[:pos] + val + base[pos + len(val):])
        files.append(p)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(base[:40])  # missing bytes read as zeros: sigma 0 etc.
    r = _replay(fuzz_bins, files + [truncated])
    assert r.returncode == 0, r.stderr
    got = [int(ln.split()[1].split("=")[1]) for ln in r.stderr.splitlines() if "check=" in ln]
    assert got[:-1] == [want for _, _, want in cases.values()]
    assert got[-1] < 0
