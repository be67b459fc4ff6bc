"""Timers shared by every suite: one measurement = median / min / max ms (+ peak memory).

On CUDA, functions that take less than ``SLOW_MS`` run under ``triton.testing.do_bench``
(CUDA events, L2 flushed between runs); slower ones (whole-model prefill, the float64
reference pipelines) under a wall-clock loop with a device synchronize around every call,
where do_bench's fixed minimum of ~8 calls would cost minutes and event timing adds
nothing. On CPU (do_bench needs a GPU) everything uses the wall-clock loop.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

SLOW_MS = 200.0


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    reps: int
    timer: str            # "do_bench" or "wallclock"

    def as_dict(self) -> dict:
        return asdict(self)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once_ms(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def wallclock(fn: Callable[[], object], device: torch.device, *, warmup: int = 1,
              min_reps: int = 3, max_reps: int = 50, budget_ms: float = 500.0) -> Timing:
    """Median of repeated synchronized wall-clock runs, as many as fit ``budget_ms``."""
    first = _once_ms(fn, device)            # also the first warmup (compiles, caches)
    for _ in range(warmup - 1):
        first = _once_ms(fn, device)
    reps = int(min(max_reps, max(min_reps, budget_ms // max(first, 1e-3))))
    times = [_once_ms(fn, device) for _ in range(reps)]
    return Timing(statistics.median(times), min(times), max(times), reps, "wallclock")


def do_bench(fn: Callable[[], object], *, warmup_ms: int = 25, rep_ms: int = 100) -> Timing:
    """triton.testing.do_bench asked for the 0.5 / 0 / 1 quantiles (same call in triton>=3.2)."""
    from triton.testing import do_bench as _do_bench

    med, lo, hi = _do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.0, 1.0])
    return Timing(float(med), float(lo), float(hi), -1, "do_bench")


def measure(fn: Callable[[], object], device: torch.device, *, smoke: bool = False) -> Timing:
    """Time ``fn`` on ``device`` (see the module docstring for which timer is used)."""
    if device.type == "cuda":
        probe = _once_ms(fn, device)        # warm (autotune, compile) and estimate
        if probe < SLOW_MS:
            return do_bench(fn)
        return wallclock(fn, device, warmup=1, min_reps=3, max_reps=5, budget_ms=0)
    if smoke:
        return wallclock(fn, device, warmup=1, min_reps=2, max_reps=5, budget_ms=50)
    return wallclock(fn, device)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak device memory allocated by one call above what was live before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
