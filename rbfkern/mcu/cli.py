"""``python -m rbfkern mcu export|build|run|report|targets`` (entry point: :func:`main`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _load_model(path: str):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _load_inputs(path: str) -> np.ndarray:
    p = Path(path)
    if p.suffix == ".npy":
        return np.load(p)
    if p.suffix in (".pt", ".pth"):
        import torch

        return torch.load(p, map_location="cpu").detach().double().numpy()
    return np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)


def _export(a) -> int:
    from .export import export_c

    calib = _load_inputs(a.calib) if a.calib else None
    ex = export_c(_load_model(a.model), a.output, name=a.name, dtype=a.dtype, calib=calib)
    print(f"wrote {ex.path} ({ex.dtype}: C={ex.params.n_centers}, D={ex.params.in_dim}, K={ex.params.out_dim}, "
          f"metric={ex.params.metric}, kind={ex.params.kind})")
    for k, v in ex.quant_report.items():
        print(f"  {k} = {v}")
    return 0


def _build(a) -> int:
    import tempfile

    from .builder import build, size_of, write_cases_header
    from .export import export_c

    X = _load_inputs(a.inputs)
    work = Path(a.work_dir) if a.work_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        ex = export_c(_load_model(a.model), Path(tmp) / "model.h", name="model", dtype=a.dtype,
                      calib=X if a.dtype == "q15" else None)
        hdr = write_cases_header(Path(tmp) / "cases.h", [(ex, X)] if a.dtype == "f32" else [],
                                 [(ex, X)] if a.dtype == "q15" else [])
        b = build(a.target, hdr, work, selftest=False)
    sz = size_of(b)
    print(b.elf or " ".join(map(str, b.objects)))
    print(f"text {sz['text']}  data {sz['data']}  bss {sz['bss']}  kernel code+tables {sz['kernel_code']}")
    return 0


def _run(a) -> int:
    from .runner import run_on_target

    X = _load_inputs(a.inputs)
    y, res, _ = run_on_target(_load_model(a.model), X, a.target, a.dtype, work_dir=a.work_dir, return_result=True)
    print(f"# {a.target} {a.dtype}: {len(y)} samples")
    for row in y:
        print(" ".join(f"{v:.9g}" for v in row))
    return 0


def _report(a) -> int:
    from .reporting import report

    report(a.targets or None, n=a.n, work_dir=a.work_dir)
    return 0


def _targets(_a) -> int:
    from .toolchains import TARGETS

    for name, t in TARGETS.items():
        miss = t.missing()
        state = "ok" if not miss else "missing " + ", ".join(miss)
        print(f"{name:14s} {t.mode:8s} {state:30s} {t.description}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``mcu`` sub-command to an argparse sub-parser collection (for rbfkern/__main__.py)."""
    p = sub.add_parser("mcu", help="export / build / run / report the C99 RBF kernel on MCU targets")
    _fill(p)
    return p


def _fill(p: argparse.ArgumentParser) -> None:
    s = p.add_subparsers(dest="mcu_command", required=True)
    e = s.add_parser("export", help="write a C header from a saved model (torch.save of the module)")
    e.add_argument("model")
    e.add_argument("-o", "--output", required=True, help="header path (or directory)")
    e.add_argument("--name", default="model")
    e.add_argument("--dtype", choices=("f32", "q15"), default="f32")
    e.add_argument("--calib", help="inputs (.npy/.pt/.csv) to choose the q15 ranges from")
    e.set_defaults(fn=_export)
    for cmd, fn, hlp in (("build", _build, "build the harness with a model for a target"),
                         ("run", _run, "run a model on inputs on a target, print the outputs")):
        b = s.add_parser(cmd, help=hlp)
        b.add_argument("model")
        b.add_argument("inputs", help=".npy, .pt or .csv/.txt (N, D)")
        b.add_argument("--target", default="host")
        b.add_argument("--dtype", choices=("f32", "q15"), default="f32")
        b.add_argument("--work-dir")
        b.set_defaults(fn=fn)
    r = s.add_parser("report", help="digits classifier: instructions/inference, flash, RAM per target")
    r.add_argument("--targets", nargs="*")
    r.add_argument("-n", type=int, default=20, help="inferences per measurement")
    r.add_argument("--work-dir")
    r.set_defaults(fn=_report)
    t = s.add_parser("targets", help="list targets and whether their toolchains are installed")
    t.set_defaults(fn=_targets)


def run_args(args) -> int:
    return args.fn(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rbfkern mcu", description=__doc__)
    _fill(p)
    return run_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
