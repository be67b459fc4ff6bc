"""The single place that chooses a backend for an op.

Backends are modules exposing the same function names with the same (validated, positional)
signatures: ``reference`` (float64 loops), ``torch`` (vectorized, memory-bounded) and
``triton`` (the fused kernels in :mod:`stop_fast.kernels`). ``auto`` picks Triton for CUDA
tensors when it imports, otherwise torch.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "reference", "torch", "triton")

_triton_error: str | None = None
_kernels: ModuleType | None = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def _load_kernels() -> ModuleType | None:
    """Import the Triton kernels once; remember why if that fails."""
    global _kernels, _triton_error
    if _kernels is None and _triton_error is None:
        try:
            _kernels = importlib.import_module("stop_fast.kernels")
        except Exception as exc:  # ImportError, or a Triton without a usable driver
            _triton_error = f"{type(exc).__name__}: {exc}"
    return _kernels


def triton_usable(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton backend can run on ``device``, and if not, why."""
    if device.type == "cpu" and not _interpreting():
        return False, ("Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 set before "
                       "triton is imported to run them on CPU through Triton's interpreter")
    if device.type not in ("cpu", "cuda"):
        return False, f"Triton kernels run on CUDA devices, got a tensor on {device}"
    if _load_kernels() is None:
        return False, f"the Triton kernels could not be imported ({_triton_error})"
    return True, ""


def resolve(backend: str, device: torch.device) -> str:
    """Turn ``backend`` (maybe "auto") into a concrete backend name, or raise."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_usable(device)[0] else "torch"
    if backend == "triton":
        ok, why = triton_usable(device)
        if not ok:
            raise RuntimeError(f"backend='triton' is unavailable: {why}; use backend='torch' or 'auto'")
    return backend


def get(op: str, backend: str, device: torch.device):
    """The implementation of ``op`` for ``backend`` on ``device``."""
    name = resolve(backend, device)
    if name == "reference":
        module = importlib.import_module("stop_fast.reference")
    elif name == "torch":
        module = importlib.import_module("stop_fast.torch_backend")
    else:
        module = _load_kernels()
    fn = getattr(module, op, None)
    if fn is None:
        raise RuntimeError(f"backend={name!r} has no implementation of {op!r}")
    return fn


# Import the kernels up front where they can run, so that the first call inside torch.compile
# does not trace an import (the import itself is lazy elsewhere: importing triton is not free).
if torch.cuda.is_available() or _interpreting():
    _load_kernels()
