"""What a suite produces: cases holding one measurement per implementation, side by side.

A case is one shape/setting. ``results`` maps an implementation name to either a
measurement (``status == "ok"``: median/min/max ms, peak memory, extras) or the reason it
has none (``"skipped"``: not installed / not applicable, ``"oom"``, ``"error"``). The
speedup of ``ours`` against each baseline is baseline median / ours median.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from .timing import is_oom, measure, peak_memory_mib

OURS = "ours"


def skipped(reason: str, status: str = "skipped") -> dict:
    return {"status": status, "reason": reason}


def run_impl(fn: Callable[[], object], device: torch.device, *, smoke: bool,
             memory: bool = True, timer: Callable | None = None) -> dict:
    """Time ``fn`` (then its peak memory); failures become a recorded status, not a crash."""
    try:
        t = (timer or measure)(fn, device, smoke=smoke)
        out = {"status": "ok", **t.as_dict()}
        out["peak_mem_mib"] = peak_memory_mib(fn, device) if memory else None
        return out
    except Exception as exc:  # noqa: BLE001 - one failing implementation must not end the run
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if is_oom(exc):
            return skipped(f"out of memory: {str(exc).splitlines()[0][:200]}", "oom")
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return skipped(tb[:500], "error")


@dataclass
class Case:
    suite: str
    group: str                      # cases of one group share a plot (x = frames)
    name: str
    x: int                          # frames (B for kernels, T for ops/pipelines/e2e)
    params: dict
    results: dict[str, dict] = field(default_factory=dict)

    def speedup(self) -> dict[str, float | None]:
        ours = self.results.get(OURS, {})
        out = {}
        for impl, r in self.results.items():
            if impl == OURS:
                continue
            ok = ours.get("status") == "ok" and r.get("status") == "ok" and ours["median_ms"] > 0
            out[impl] = r["median_ms"] / ours["median_ms"] if ok else None
        return out

    def as_dict(self) -> dict:
        return {"suite": self.suite, "group": self.group, "name": self.name, "x": self.x,
                "params": self.params, "results": self.results, "speedup": self.speedup()}


@dataclass
class SuiteResult:
    name: str
    status: str = "ok"              # "ok", "skipped" (whole suite), or "error"
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    # A suite that measures something other than time gives its own tables (title, header,
    # rows) and no latency plots.
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    plot: bool = True

    def ours_failed(self) -> list[str]:
        """Our implementations ("ours", or "ours <variant>") that raised."""
        return [f"{c.group} {c.name} {impl}: {r.get('reason')}" for c in self.cases
                for impl, r in c.results.items()
                if (impl == OURS or impl.startswith(OURS + " ")) and r.get("status") == "error"]

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "notes": self.notes,
                "cases": [c.as_dict() for c in self.cases]}
