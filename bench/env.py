"""Where a run happened: device, library versions, date, and the results-directory slug."""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata as md
import platform
import re

import torch


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def metadata(device: torch.device, *, smoke: bool) -> dict:
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "device": device.type,
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "flash_colreduce": _version("flash-colreduce"),
        "python": platform.python_version(),
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "smoke": smoke,
        "cpu_threads": torch.get_num_threads(),
    }


def default_slug(device: torch.device, *, smoke: bool, date: str) -> str:
    return f"{slug(device_name(device))}-{date}" + ("-smoke" if smoke else "")
