"""Integrations of SToP into model libraries.

:mod:`stop_fast.integrations.transformers` patches Hugging Face video LLMs in place:
``apply_stop(model, method=..., retention_ratio=...)`` and ``remove_stop(model)``. It is
imported on first use so that ``import stop_fast`` does not import transformers.
"""
from __future__ import annotations

import importlib

__all__ = ["apply_stop", "remove_stop"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".transformers", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
