"""Benchmark suites of stop_fast (``stop-fast bench``); see bench/README.md."""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``stop-fast bench ARGS``: returns the process exit code."""
    from .cli import main as _main
    return _main(argv)


__all__ = ["main"]
