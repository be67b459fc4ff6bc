"""SToP pipelines: VisionZip + SToP (spatial, SPEC §7) and HoliTom + SToP (temporal + spatial, §6).

``prune(features, attention, method=..., retention_ratio=...)`` or the class-style
``VisionZip(r)(features, attention, metric)`` / ``HoliTom(r)(features, attention)`` return a
:class:`PrunedVideo`. The loop-based twins they are tested against live in
:mod:`stop_fast.reference` (``visionzip_prune``, ``holitom_prune``; ``backend="reference"``).
"""
from .common import (
    KIND_CONTEXTUAL,
    KIND_DOMINANT,
    KIND_DYNAMIC,
    KIND_NAMES,
    KIND_STATIC,
    METHODS,
    PrunedVideo,
)
from .dpc_knn import dpc_knn
from .entry import HoliTom, VisionZip, prune

__all__ = [
    "prune", "PrunedVideo", "VisionZip", "HoliTom", "dpc_knn", "METHODS",
    "KIND_DOMINANT", "KIND_CONTEXTUAL", "KIND_STATIC", "KIND_DYNAMIC", "KIND_NAMES",
]
