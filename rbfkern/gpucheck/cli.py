"""``python -m rbfkern gpucheck`` arguments and the choice between dry run, rehearsal and device run."""
from __future__ import annotations

import argparse
import sys
import warnings

EXIT_NO_CUDA = 2


def add_parser(sub) -> argparse.ArgumentParser:
    from .families import FAMILY_NAMES

    p = sub.add_parser(
        "gpucheck", help="the prepared CUDA check: tests, benchmarks vs peers, measured peaks -> DIR/gpucheck.{json,md}",
        description="One prepared device check: versions, the CUDA tests, the GPU benchmarks of every family "
                    "(fused vs naive vs the strongest peers) against peaks measured in the run. Writes "
                    "DIR/gpucheck.json and DIR/gpucheck.md; exits 1 if a test failed or a fused op failed, "
                    "2 without CUDA (unless --dry-run or --rehearse).")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for gpucheck.json, gpucheck.md and the logs")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a subset of the benchmark cases (budget 270 s)")
    size.add_argument("--full", action="store_true", help="every CUDA test (-m cuda), longer timing windows (540 s)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--dry-run", action="store_true", help="print the steps and exit 0")
    how.add_argument("--rehearse", action="store_true",
                     help="run the whole harness on CPU with tiny shapes and a host timer (no GPU needed)")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="wall-clock budget of the run; what no longer fits is skipped and recorded "
                        "(default 420, --quick 270, --full 540, --rehearse 150)")
    p.add_argument("--family", action="append", choices=FAMILY_NAMES, help="only this family (repeatable)")
    p.add_argument("--no-tests", action="store_true", help="skip the pytest step")
    p.add_argument("--pytest-args", metavar="ARGS",
                   help="replace the test selection, e.g. \"-m cuda -k bcos\" (shell-quoted words)")
    p.add_argument("--jobs", type=int, help="parallel warm-up subprocesses (default: CPU cores - test workers - 2, <= 8)")
    p.add_argument("--test-workers", type=int, help="pytest-xdist workers (default: CPU cores / 3, <= 6)")
    p.set_defaults(fn=run_cli)
    return p


def run_cli(args) -> int:
    import torch

    from . import orchestrate
    from .plan import build, describe

    with warnings.catch_warnings():  # a CUDA build of torch on a machine without a driver warns here
        warnings.simplefilter("ignore")
        cuda = torch.cuda.is_available()
    plan = build(args)
    if cuda:
        line = f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda})"
    else:
        line = f"CUDA: not available (torch {torch.__version__})"
    if args.dry_run:
        print(describe(plan, line))
        return 0
    if not cuda and not args.rehearse:
        print(f"gpucheck: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "--dry-run prints the steps, --rehearse runs them on CPU", file=sys.stderr)
        return EXIT_NO_CUDA
    return orchestrate.run(plan, getattr(args, "argv", None) or sys.argv[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbfkern")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["gpucheck", *(sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(argv)
    args.argv = argv
    return args.fn(args)
