"""Input validation shared by the public API.

Every check raises before any kernel launch, with a message naming the argument, what it
received and what was expected. Finiteness checks need one device→host sync per call; they
can be switched off for production serving with :func:`set_finite_checks` (or the
environment variable ``STOP_FAST_CHECK_FINITE=0``) and are skipped while torch.compile traces.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_check_finite = os.environ.get("STOP_FAST_CHECK_FINITE", "1") not in ("0", "false", "False")


def set_finite_checks(enabled: bool) -> None:
    """Turn the NaN/Inf checks of inputs on or off (on by default; each costs one sync)."""
    global _check_finite
    _check_finite = bool(enabled)


def finite_checks_enabled() -> bool:
    return _check_finite


@contextlib.contextmanager
def input_checks(enabled: bool):
    """Turn the NaN/Inf checks on or off for a block of code, then restore the previous setting.

    ``with stop_fast.input_checks(False): ...`` is what serving loops and benchmarks use once
    their inputs are known to be finite (each check costs one device→host sync). Process-wide,
    like :func:`set_finite_checks`: not meant for threads that want different settings.
    """
    global _check_finite
    old, _check_finite = _check_finite, bool(enabled)
    try:
        yield
    finally:
        _check_finite = old


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def tensor(name: str, t, ndim: int, what: str, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """Check that ``t`` is a tensor of rank ``ndim`` (described as ``what``) with an allowed dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {what}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {what} ({ndim} dims), got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).replace('torch.', '')}")
    return t


def nonempty(name: str, t: torch.Tensor, dims: tuple[int, ...], what: str) -> None:
    for d in dims:
        if t.shape[d] == 0:
            raise ValueError(f"{name} must have a non-empty dim {d} in shape {what}, got shape {tuple(t.shape)}")


def same_device(**tensors: torch.Tensor | None) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for n, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{n} is on {t.device} but {first_name} is on {first.device}; "
                             "all inputs must be on the same device")


def finite(**tensors: torch.Tensor | None) -> dict[str, tuple[float, float]] | None:
    """Raise if any named tensor holds NaN/Inf; return each one's (min, max), or None if skipped.

    One device→host sync for all of them (the only way to know). aminmax is a single read pass
    without a full-size temporary: NaN propagates to both ends and ±Inf shows at one. Skipped
    when checks are off (:func:`set_finite_checks`) or while torch.compile traces.
    """
    # Meta tensors have no values to check (shape-only tracing, offloaded weights).
    named = [(n, t) for n, t in tensors.items() if t is not None and t.device.type != "meta"]
    if not _check_finite or _compiling() or not named:
        return None
    ends = torch.stack([v.float() for _, t in named for v in torch.aminmax(t)]).tolist()
    out = {}
    for i, (name, _) in enumerate(named):
        lo, hi = ends[2 * i], ends[2 * i + 1]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or Inf values; expected finite values")
        out[name] = (lo, hi)
    return out


def _scalar(v):
    """A 0-dim tensor as the NumPy scalar of its dtype (bf16/fp16 read as float32), so it is
    checked like one; anything else unchanged."""
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_complex():
        v = v.detach().cpu()
        if v.dtype in (torch.bfloat16, torch.float16):
            v = v.float()
        return v.numpy()[()]
    return v


def number(name: str, v, *, positive: bool = False) -> float:
    """A real number (Python, NumPy or 0-dim tensor scalars alike) as a float."""
    v = _scalar(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if getattr(getattr(v, "dtype", None), "itemsize", 8) < 8:
        # A NumPy float32/float16 scalar means the decimal it prints as (float32 0.1 is 0.1,
        # not 0.10000000149…), so budget tables keyed by ratio still match.
        v = float(str(v))
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def integer(name: str, v, lo: int, hi: int) -> int:
    """An integer (Python, NumPy or 0-dim integer tensor) in [lo, hi] as an int."""
    v = _scalar(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v
