"""The one reading of ``TRITON_INTERPRET`` (Triton's CPU interpreter switch).

Triton reads it when a kernel is decorated, so the kernels fix it at import, while dispatch
asks again at every call: both go through :func:`triton_interpret`, hence parse it alike.
Deliberately free of a triton import (importing triton is not free).
"""
from __future__ import annotations

import os

_reads_words: bool | None = None


def _triton_reads_words() -> bool:
    """Triton >= 3.4 parses the variable as a boolean (1/true/on/yes); older ones compare to "1"."""
    global _reads_words
    if _reads_words is None:   # a plain global, not lru_cache: dynamo may trace this
        from importlib.metadata import PackageNotFoundError, version
        try:
            _reads_words = tuple(int(p) for p in version("triton").split(".")[:2]) >= (3, 4)
        except (PackageNotFoundError, ValueError):
            _reads_words = False
    return _reads_words


def triton_interpret() -> bool:
    """True if ``TRITON_INTERPRET`` selects Triton's interpreter, parsed the way Triton does."""
    value = os.environ.get("TRITON_INTERPRET", "0").lower()
    return value == "1" or (value in ("true", "on", "yes") and _triton_reads_words())
