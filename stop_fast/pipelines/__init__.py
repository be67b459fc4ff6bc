"""SToP pipelines: one module per host method behind one registry (:data:`METHODS`).

``prune(features, attention, method=..., retention_ratio=...)`` or the class-style pruners
(``VisionZip(r)(features, attention, metric)``, ``HoliTom(r)(features, attention)``, …) return
a :class:`PrunedVideo`. Each method module ``<method>.py`` holds its ``Options`` dataclass and
fast path; ``<method>_reference.py`` holds the loop-based float64 twin it is tested against
(``backend="reference"``). Adding a method = its module(s) and one line in :mod:`.registry`.
"""
from .base import (
    KIND_CONTEXT,
    KIND_CONTEXTUAL,
    KIND_DIVERSE,
    KIND_DOMINANT,
    KIND_DYNAMIC,
    KIND_MERGED,
    KIND_NAMES,
    KIND_SALIENT,
    KIND_STATIC,
    Options,
    PrunedVideo,
    Selection,
    Video,
)
from .dpc_knn import dpc_knn
from .entry import (FastVid, FlashVid, HoliTom, PruneVid, Pruner, VisionZip, make_options, prune, run,
                    token_budget)
from .registry import METHODS, Method, get_method

__all__ = [
    "prune", "run", "make_options", "PrunedVideo", "Options", "Video", "Selection", "Pruner",
    "VisionZip", "HoliTom", "FastVid", "FlashVid", "PruneVid", "dpc_knn", "METHODS", "Method",
    "get_method", "token_budget", "KIND_DOMINANT", "KIND_CONTEXTUAL", "KIND_STATIC", "KIND_DYNAMIC",
    "KIND_SALIENT", "KIND_CONTEXT", "KIND_DIVERSE", "KIND_MERGED", "KIND_NAMES",
]
