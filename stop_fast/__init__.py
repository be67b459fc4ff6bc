"""stop_fast: fused kernels and pipelines for Sink-Token-aware Pruning (SToP) of video tokens.

The primitives (``column_mean_attention``, ``sink_score``, ``penalized_topk``, …) live in
:mod:`stop_fast.api`; pipelines (``prune``, ``VisionZip``, ``HoliTom``) in
:mod:`stop_fast.pipelines`; the transformers integration (``apply_stop``, ``remove_stop``) in
:mod:`stop_fast.integrations`. The latter two import lazily.
"""
from __future__ import annotations

import importlib

from ._checks import input_checks, set_finite_checks
from .api import (
    adjacent_cosine,
    column_mean_attention,
    frame_gram,
    gather_topk,
    knn_density,
    merge_tokens,
    penalized_topk,
    segment_static_mask,
    sink_score,
    static_mask,
)
from .dispatch import BACKENDS

__version__ = "0.1.0"

_LAZY = {
    **{name: "stop_fast.pipelines" for name in (
        "prune", "PrunedVideo", "METHODS", "Pruner", "VisionZip", "HoliTom", "FastVid",
        "FlashVid", "PruneVid", "token_budget")},
    **{name: "stop_fast.integrations" for name in ("apply_stop", "remove_stop", "last_pruned")},
}

__all__ = [
    "BACKENDS",
    "adjacent_cosine",
    "column_mean_attention",
    "frame_gram",
    "gather_topk",
    "input_checks",
    "knn_density",
    "merge_tokens",
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
