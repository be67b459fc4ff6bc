"""The ``stop-fast`` command: ``stop-fast demo`` and ``stop-fast bench``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="stop-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prune a seeded synthetic video with and without SToP")
    demo.add_argument("--frames", type=int, default=16)
    demo.add_argument("--grid", type=int, nargs=2, default=(14, 14), metavar=("H", "W"))
    demo.add_argument("--dim", type=int, default=256, help="feature width D")
    demo.add_argument("--retention", type=float, default=0.10)
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--backends", nargs="+", default=None,
                      help="backends to run (default: every usable one)")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="benchmark suites (see `stop-fast bench --help`)", add_help=False)

    if argv[:1] == ["bench"]:   # the bench engine parses its own arguments
        from stop_fast.bench import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    from stop_fast.demo import run_demo
    return run_demo(frames=args.frames, grid=tuple(args.grid), dim=args.dim,
                    retention=args.retention, device=args.device, backends=args.backends,
                    seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
