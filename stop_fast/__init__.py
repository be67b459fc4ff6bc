"""stop_fast: fused kernels and pipelines for Sink-Token-aware Pruning (SToP) of video tokens.

The primitives (``column_mean_attention``, ``sink_score``, ``penalized_topk``, …) live in
:mod:`stop_fast.api`; pipelines (``prune``, ``VisionZip``, ``HoliTom``) in
:mod:`stop_fast.pipelines`; the transformers integration (``apply_stop``, ``remove_stop``) in
:mod:`stop_fast.integrations.transformers`. The latter two import lazily.
"""
from __future__ import annotations

import importlib

from ._checks import set_finite_checks
from .api import (
    adjacent_cosine,
    column_mean_attention,
    gather_topk,
    penalized_topk,
    segment_static_mask,
    sink_score,
    static_mask,
)
from .dispatch import BACKENDS

__version__ = "0.1.0"

_LAZY = {
    "prune": "stop_fast.pipelines",
    "PrunedVideo": "stop_fast.pipelines",
    "VisionZip": "stop_fast.pipelines",
    "HoliTom": "stop_fast.pipelines",
    "apply_stop": "stop_fast.integrations.transformers",
    "remove_stop": "stop_fast.integrations.transformers",
}

__all__ = [
    "BACKENDS",
    "adjacent_cosine",
    "column_mean_attention",
    "gather_topk",
    "penalized_topk",
    "segment_static_mask",
    "set_finite_checks",
    "sink_score",
    "static_mask",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stop_fast' has no attribute {name!r}")
