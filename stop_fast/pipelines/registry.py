"""One registry from method name to its options, fast path and loop-based twin.

``prune``, the class-style pruners, the demo, the benchmarks and the integrations all read
:data:`METHODS`. Adding a method = its module(s) and one line below. Modules are imported on
first use, so a method's code costs nothing until it runs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["Method", "METHODS", "get_method", "method_names"]


@dataclass(frozen=True)
class Method:
    """A host method: where its code lives and which inputs it reads.

    ``fast``/``twin`` are "module:function" paths of ``fn(video, opts) -> Selection``;
    ``options`` is "module:Class" of its :class:`~stop_fast.pipelines.base.Options` subclass.
    """

    name: str
    options_path: str
    fast_path: str
    twin_path: str
    needs_metric: bool = False        # VisionZip: head-averaged keys for contextual merging
    uses_global: bool = False         # FastVid: per-frame global vectors for segmentation
    uses_attention: bool = True       # PruneVid: none
    temporal: bool = False            # produces segments
    summary: str = ""

    @staticmethod
    def _load(path: str):
        module, name = path.split(":")
        return getattr(importlib.import_module(module, __package__), name)

    @property
    def options(self) -> type:
        return self._load(self.options_path)

    @property
    def fast(self) -> Callable:
        return self._load(self.fast_path)

    @property
    def twin(self) -> Callable:
        return self._load(self.twin_path)


def _m(name, module, fast, twin, **kw) -> tuple[str, Method]:
    return name, Method(name, f".{module}:Options", f".{module}:{fast}",
                        f".{module}_reference:{twin}", **kw)


METHODS: dict[str, Method] = dict([
    _m("visionzip", "visionzip", "visionzip_fast", "visionzip_twin", needs_metric=True,
       summary="spatial: dominant top-k + merged contextual tokens (SPEC §7)"),
    _m("holitom", "holitom", "holitom_fast", "holitom_twin", temporal=True,
       summary="temporal DP segments, static merge + dynamic top-k (SPEC §6)"),
    _m("fastvid", "fastvid", "fastvid_fast", "fastvid_twin", uses_global=True, temporal=True,
       summary="segments by global vectors, salient top-k + density anchors (SPEC §9)"),
    _m("flashvid", "flashvid", "flashvid_fast", "flashvid_twin", temporal=True,
       summary="segments, ADTS diversity picks, tree merge + DPC-kNN (SPEC §10)"),
    _m("prunevid", "prunevid", "prunevid_fast", "prunevid_twin", uses_attention=False,
       temporal=True, summary="baseline without attention or SToP (SPEC §11)"),
])


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name) -> Method:
    """The registered method ``name``, or a ValueError listing the known ones."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    return METHODS[name]
