"""Command line: ``python -m rbfkern info | demo | reproduce | bench | gpucheck | mcu ...``."""
from __future__ import annotations

import argparse
import sys


def _info(_args) -> int:
    import torch

    import rbfkern
    from rbfkern import _backend

    print(f"rbfkern {rbfkern.__version__}  (torch {torch.__version__})")
    print(f"  C++ extension : {'yes' if _backend.has_cext() else 'NO (reinstall)'}")
    if _backend.has_cext():  # the CPU model alone does not say it; RBFKERN_CPU_ISA caps it
        print(f"  C++ kernels   : {_backend.cpu_isa()} instruction set")
    if _backend.has_triton():
        import triton

        print(f"  triton        : {triton.__version__}{' (interpreter)' if _backend.triton_interpreting() else ''}")
    else:
        print("  triton        : not installed (pip install 'rbfkern[gpu]')")
    cuda = torch.cuda.is_available()
    print(f"  CUDA          : {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    print(f"  CPU threads   : {torch.get_num_threads()}")
    import os

    print(f"  RBFKERN_BACKEND={os.environ.get('RBFKERN_BACKEND', 'auto')}")
    ops = sorted(n for n in dir(torch.ops.rbfkern) if not n.startswith("_") and n not in ("name", "is_packet"))
    ops = [n for n in ops if isinstance(getattr(torch.ops.rbfkern, n), torch._ops.OpOverloadPacket)]
    print("  registered ops: " + ", ".join(f"torch.ops.rbfkern.{n}" for n in ops))
    return 0


def _demo(args) -> int:
    from rbfkern.demo import run

    run(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


def _reproduce(args) -> int:
    from rbfkern.reproduce import run

    run(quick=args.quick, seeds=args.seeds, out=args.out, progress=not args.no_progress, threads=args.threads)
    return 0


def _bench(args) -> int:
    from rbfkern import bench

    return bench.main(quick=args.quick, json_path=args.json, families=args.family)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbfkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, available backends and registered ops").set_defaults(fn=_info)
    demo = sub.add_parser("demo", help="every family on the digits data set, with pictures (a few minutes)")
    demo.add_argument("--out", default="demo_out", help="folder for the pictures (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="fewer epochs: under a minute")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(fn=_demo)
    rep = sub.add_parser("reproduce", help="the papers' claims on the digits, seed-averaged, as a table (minutes)")
    rep.add_argument("--quick", action="store_true", help="fewer seeds, sizes and epochs: under 3 minutes on 2 cores")
    rep.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 3 with --quick, else 5)")
    rep.add_argument("--out", default=None, help="also write reproduce.txt and reproduce.json to this folder")
    rep.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for 8x8 digits)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.set_defaults(fn=_reproduce)
    bench = sub.add_parser("bench", help="headline benchmark cases: fused vs naive vs peers (source checkout)")
    bench.add_argument("--quick", action="store_true", help="small shapes, fewer rounds")
    bench.add_argument("--json", help="also write the rows as JSON to this file")
    bench.add_argument("--family", action="append", help="only this family (repeatable): rbf, 'rbf layers', bcos, gauss_deriv, models")
    bench.set_defaults(fn=_bench)
    from rbfkern.gpucheck.cli import add_parser as add_gpucheck_parser
    from rbfkern.mcu.cli import add_parser as add_mcu_parser

    add_gpucheck_parser(sub)  # `gpucheck --out DIR [--quick|--full] [--dry-run|--rehearse]`
    add_mcu_parser(sub)  # `mcu export|build|run|report|targets`; its leaf parsers set fn
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
