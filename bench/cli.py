"""``stop-fast bench``: run the suites, print a table, write results.json / results.md / PNGs."""
from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from pathlib import Path

import torch

from . import env, report
from .record import SuiteResult

SUITES = ("kernels", "pipelines", "e2e", "traffic")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stop-fast bench",
        description="Benchmark stop_fast against its baselines, side by side in one run.")
    p.add_argument("--suite", choices=(*SUITES, "all"), default="all",
                   help="which suite to run (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes and a tiny model: checks that everything runs, in seconds; "
                        "the timings mean nothing")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="results directory (default: bench/results/<device>-<date>[-smoke]/)")
    p.add_argument("--published", type=Path, default=None, metavar="PATH",
                   help="traffic suite: a checkout of the published SToP release, whose pruning "
                        "functions are loaded from it at run time and metered beside stop_fast "
                        "(default: $STOP_FAST_PUBLISHED; none: not measured)")
    return p


def default_root() -> Path:
    """``bench/results`` in a source checkout; ``./bench-results`` for an installed package."""
    here = Path(__file__).resolve().parent / "results"
    return here if here.is_dir() else Path.cwd() / "bench-results"


def _unwritable(out: Path) -> str | None:
    """Why ``out`` cannot take the results (created if missing), or None."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def run_suite(name: str, device: torch.device, smoke: bool, published: Path | None = None,
              ) -> SuiteResult:
    mod = importlib.import_module(f"stop_fast.bench.suite_{name}")
    try:
        if name == "traffic":
            return mod.run(device, smoke, published=published)
        return mod.run(device, smoke)
    except Exception as exc:  # noqa: BLE001 - record it; the other suites still run
        return SuiteResult(name, status="error", reason=f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = _parser().parse_args(argv)
    console = Console()
    if args.device == "cuda" and not torch.cuda.is_available():
        console.print("[red]--device cuda requested but torch sees no CUDA device[/red]")
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    meta = env.metadata(device, smoke=args.smoke)
    out = args.out or default_root() / env.default_slug(device, smoke=args.smoke, date=meta["date"])
    if args.suite in ("traffic", "all"):
        from .published import checkout
        try:
            checkout(args.published)
        except ValueError as exc:          # say so now, not after the other suites ran
            console.print(f"[red]{exc}[/red]")
            return 2
    problem = _unwritable(out)
    if problem:   # say so now, not after the whole suite has run
        console.print(f"[red]--out {out}: cannot write results there ({problem})[/red]")
        return 2

    import stop_fast
    meta["finite_checks"] = False
    suites: dict[str, SuiteResult] = {}
    with stop_fast.input_checks(False):      # timing the ops, not the input validation syncs
        for name in SUITES if args.suite == "all" else (args.suite,):
            t0 = time.perf_counter()
            console.print(f"[bold]suite {name}[/bold] on {meta['device_name']} …")
            suites[name] = run_suite(name, device, args.smoke, args.published)
            suites[name].notes.append(f"suite wall time {time.perf_counter() - t0:.1f} s")

    report.print_tables(suites, console, smoke=args.smoke)
    files = report.write_all(out, meta, suites)
    console.print(f"wrote {files['json']}, {files['md']} and {len(files['png'])} plots to {out}")
    failed = [f"{n}: {s.reason}" for n, s in suites.items() if s.status == "error"]
    failed += [f"{n}: {m}" for n, s in suites.items() for m in s.ours_failed()]
    for f in failed:
        console.print(f"[red]failed[/red] {f}")
    return 1 if failed else 0
