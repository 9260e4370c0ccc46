"""Command line: ``python -m rbfkern info`` (more commands arrive with their issues)."""
from __future__ import annotations

import argparse
import sys


def _info(_args) -> int:
    import torch

    import rbfkern
    from rbfkern import _backend

    print(f"rbfkern {rbfkern.__version__}  (torch {torch.__version__})")
    print(f"  C++ extension : {'yes' if _backend.has_cext() else 'NO (reinstall)'}")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbfkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, available backends and registered ops").set_defaults(fn=_info)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
