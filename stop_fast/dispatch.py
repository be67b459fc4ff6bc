"""The single place that chooses a backend for an op.

Backends are modules exposing the same function names with the same (validated, positional)
signatures: ``reference`` (float64 loops), ``torch`` (vectorized, memory-bounded) and
``triton`` (the fused kernels in :mod:`stop_fast.kernels`). ``auto`` picks Triton for CUDA
tensors when it imports, otherwise torch.

:func:`get` runs inside torch.compile traces, so it never imports there: the reference and
torch backends are imported with this module (both are cheap), the kernels (importing triton
is not) on first use in eager mode, or up front where they can run.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

from . import reference, torch_backend
from ._env import triton_interpret

BACKENDS = ("auto", "reference", "torch", "triton")
_MODULES = {"reference": reference, "torch": torch_backend}

_triton_error: str | None = None
_kernels: ModuleType | None = None


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
    if device.type == "cpu" and not triton_interpret():
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
    module = _MODULES[name] if name in _MODULES else _load_kernels()
    fn = getattr(module, op, None)
    if fn is None:
        raise RuntimeError(f"backend={name!r} has no implementation of {op!r}")
    return fn


# Import the kernels up front where they can run, so that the first call inside torch.compile
# finds them imported.
if torch.cuda.is_available() or triton_interpret():
    _load_kernels()
