"""What every host method shares: token kinds, the options base class, the inputs a pipeline
receives (:class:`Video`), what it returns (:class:`Selection`) and the result type
(:class:`PrunedVideo`, built in one place, :func:`build_result`).

A method module defines an ``Options`` subclass (its typed settings and their defaults), a
fast path ``fast(video, opts) -> Selection`` and, in ``<method>_reference.py``, a loop-based
float64 twin with the same signature; :mod:`.registry` ties the three together.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .. import _checks as C
from ..dispatch import BACKENDS

__all__ = [
    "KIND_DOMINANT", "KIND_CONTEXTUAL", "KIND_STATIC", "KIND_DYNAMIC", "KIND_SALIENT",
    "KIND_CONTEXT", "KIND_DIVERSE", "KIND_MERGED", "KIND_NAMES",
    "Options", "Video", "Selection", "PrunedVideo", "build_result", "to_device", "SINK_EPS",
]

# Codes of PrunedVideo.kinds (int8); KIND_NAMES[code] is the readable name.
KIND_DOMINANT, KIND_CONTEXTUAL = 0, 1          # VisionZip
KIND_STATIC, KIND_DYNAMIC = 2, 3               # HoliTom, PruneVid
KIND_SALIENT, KIND_CONTEXT = 4, 5              # FastVid
KIND_DIVERSE, KIND_MERGED = 6, 7               # FlashVid (ADTS picks; temporal/spatial merges)
KIND_NAMES = ("dominant", "contextual", "static", "dynamic", "salient", "context", "diverse",
              "merged")

SINK_EPS = 1e-12   # SPEC §3


@dataclass(frozen=True)
class Options:
    """Settings every method shares. Subclasses add their own fields (all with defaults) and
    may override :meth:`_check_fields` to validate them.

    ``use_stop=None`` and ``mu_s=None`` take the method's defaults (SPEC §13); after
    :meth:`validated` they are concrete (``mu_s`` is 0 without SToP). ``exact_budget=True``
    brings every selection to exactly :func:`~.budget.token_budget` tokens (off by default:
    the published selection).
    """

    retention_ratio: float
    use_stop: bool | None = None
    mu_s: float | None = None
    gamma: float = 1.1
    backend: str = "auto"
    exact_budget: bool = False

    method: ClassVar[str] = ""
    default_use_stop: ClassVar[bool] = True
    default_mu_s: ClassVar[float] = 0.0
    # Fields that are sink terms: given explicitly with use_stop=False they raise.
    sink_fields: ClassVar[tuple[str, ...]] = ("mu_s",)

    def validated(self, given: frozenset[str] = frozenset()) -> "Options":
        """A checked copy with defaults filled in. ``given``: names the caller set explicitly
        (a sink term set with ``use_stop=False`` is an error, not silently dropped)."""
        r = C.number("retention_ratio", self.retention_ratio)
        if not 0.0 < r <= 1.0:
            raise ValueError(f"retention_ratio must be in (0, 1], got {r}")
        use_stop = self.default_use_stop if self.use_stop is None else self.use_stop
        if not isinstance(use_stop, bool):
            raise TypeError(f"use_stop must be a bool, got {type(use_stop).__name__}")
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        gamma = C.number("gamma", self.gamma, positive=True)
        if not isinstance(self.exact_budget, bool):
            raise TypeError(f"exact_budget must be a bool, got {type(self.exact_budget).__name__}")
        if not use_stop:
            for name in self.sink_fields:
                value = getattr(self, name)
                if name not in given or value is None or value == 0 or value is False:
                    continue
                if name.startswith("mu_"):
                    raise ValueError(f"{name}={value} has no effect with use_stop=False (the plain "
                                     f"host method uses no sink term); leave {name} unset or set "
                                     "use_stop=True")
                raise ValueError(f"{name}={value!r} is a sink term, which use_stop=False turns off; "
                                 "drop it or set use_stop=True")
        mu_s = self.default_mu_s if self.mu_s is None else C.number("mu_s", self.mu_s)
        out = dataclasses.replace(self, retention_ratio=r, use_stop=use_stop, gamma=gamma,
                                  mu_s=mu_s if use_stop else 0.0)
        out._check_fields()
        return out

    def _check_fields(self) -> None:
        """Validate the subclass's own fields (raise ValueError/TypeError naming them)."""

    def without_stop(self) -> "Options":
        """The same settings as the plain host method (every sink term off), validated."""
        nulls = {f.name: None for f in dataclasses.fields(self)
                 if f.name in self.sink_fields and f.default is None}
        return dataclasses.replace(self, use_stop=False, **nulls).validated()

    def replace(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Video:
    """The inputs of one video, validated, as a pipeline receives them.

    features (T, N, D) float; attention (T, N) non-negative score (None for methods that use
    none); sink (N,) float32, zeros when SToP is off or T = 1 (SPEC §3); metric (T, N, Dk)
    (VisionZip); global_features (T, Dg) (FastVid; None: the method's fallback). ``backend``
    is the resolved backend name the public primitives are called with.
    """

    features: torch.Tensor
    attention: torch.Tensor | None
    sink: torch.Tensor
    metric: torch.Tensor | None = None
    global_features: torch.Tensor | None = None
    backend: str = "torch"

    @property
    def shape(self) -> tuple[int, int, int]:
        T, N, D = self.features.shape
        return T, N, D


@dataclass
class Selection:
    """What a fast path or twin returns: the kept tokens in the order the LLM receives them.

    tokens (M, D) in the features' dtype; positions (M, 2) int64 [frame, location] of the token
    each row represents; kinds (M,) int8 codes. ``segments``: inclusive (first, last) frame
    ranges for temporal methods. ``extras``: method-specific host values (e.g. HoliTom's
    ``adjusted_ratio`` and ``reduced``).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    kinds: torch.Tensor
    segments: list[tuple[int, int]] | None = None
    extras: dict = field(default_factory=dict)


@dataclass
class PrunedVideo:
    """The pruned token sequence of one video, in the order the LLM receives it.

    tokens: (M, D) in the features' dtype. positions: (M, 2) int64 rows [frame, location] of
    the token each row represents (a merged token: its segment's first frame or anchor frame,
    and its centre's / target's location). kinds: (M,) int8, ``KIND_NAMES[code]``.
    sink: (N,) float32 video-level sink score (SPEC §3; zeros when no sink term was applied).
    FlashVid's default ``sink_scope="segment"`` uses per-segment scores instead, kept in
    ``extras["segment_sink"]`` (S, N).
    segments: temporal methods' inclusive (first, last) frame ranges; None for spatial ones.
    adjusted_ratio / reduced: HoliTom's r' (SPEC §6.1) and tokens its temporal DP removes.
    single_frame: True when the video had one frame, so the sink terms were off (SPEC §3).
    options: the validated settings that produced it. extras: other method-specific values.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    kinds: torch.Tensor
    sink: torch.Tensor
    method: str
    retention_ratio: float
    segments: list[tuple[int, int]] | None = None
    adjusted_ratio: float | None = None
    reduced: int | None = None
    single_frame: bool = False
    options: Options | None = None
    extras: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def kind_counts(self) -> dict[str, int]:
        """Number of output tokens of each kind (one host sync; for inspection, not hot paths)."""
        counts = torch.bincount(self.kinds.long().cpu(), minlength=len(KIND_NAMES)).tolist()
        return {name: n for name, n in zip(KIND_NAMES, counts) if n}


def build_result(sel: Selection, video: Video, opts: Options, single_frame: bool) -> PrunedVideo:
    """The one place a :class:`PrunedVideo` is made (fast paths and twins alike)."""
    extras = dict(sel.extras)
    adjusted = extras.pop("adjusted_ratio", None)
    reduced = extras.pop("reduced", None)
    dev = video.features.device
    return PrunedVideo(
        tokens=sel.tokens.to(device=dev, dtype=video.features.dtype),
        positions=sel.positions.to(device=dev, dtype=torch.int64).view(-1, 2),
        kinds=sel.kinds.to(device=dev, dtype=torch.int8).view(-1),
        sink=video.sink.to(device=dev, dtype=torch.float32),
        method=opts.method, retention_ratio=opts.retention_ratio, segments=sel.segments,
        adjusted_ratio=None if adjusted is None else float(adjusted),
        reduced=None if reduced is None else int(reduced),
        single_frame=single_frame, options=opts, extras=extras)



def to_device(device: torch.device, *host) -> list[torch.Tensor]:
    """Host integers (lists, nested lists or CPU tensors) as int64 tensors on ``device``, in
    one copy. On CUDA the copy is pinned and non-blocking, so it queues behind the kernels
    already launched; a pageable copy (``torch.tensor(list, device=cuda)``) would wait for
    them, a host sync. Shapes are kept; bool inputs come back as 0/1 (use ``.bool()``)."""
    parts = [torch.as_tensor(h, dtype=torch.int64) for h in host]
    flat = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.empty(0, dtype=torch.int64)
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    return [f.view(p.shape) for f, p in zip(flat.split([p.numel() for p in parts]), parts)]
