"""FlashVid + SToP (SPEC §10): segments, ADTS diversity picks, tree merge, spatial DPC-kNN.

Device work runs over all frames and segments at once. Two host transfers per video: the
T − 1 frame-mean cosines, from which the segment layout is cut on the host (every later
shape follows from it), and, at the end, the number of merged tokens, which is data-dependent.
The temporal and spatial merges are in :mod:`._flashvid_merge`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import _checks as C
from ..torch_backend import minmax_power
from . import base
from .base import KIND_DIVERSE, KIND_MERGED, SINK_EPS, Selection, to_device
from . import _merge_ops as M
from ._flashvid_merge import merge_tree, pooled_values, spatial_output

__all__ = ["Options", "flashvid_fast", "flashvid_budget", "cut_segments", "SegmentLayout"]


@dataclass(frozen=True)
class Options(base.Options):
    """FlashVid settings (SPEC §10, defaults §13). ``sink_scope``: "segment" recomputes the
    sink score per segment (as published), "video" uses the video-level score of §3."""

    expansion: float = 1.25
    adts_share: float = 0.7
    tau_seg: float = 0.9
    min_segments: int = 8
    merge_threshold: float = 0.8
    max_k: int = 7
    sink_scope: str = "segment"

    method: ClassVar[str] = "flashvid"
    default_mu_s: ClassVar[float] = 0.02
    sink_fields: ClassVar[tuple[str, ...]] = ("mu_s", "sink_scope")

    def _check_fields(self) -> None:
        C.number("expansion", self.expansion, positive=True)
        share = C.number("adts_share", self.adts_share)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"adts_share must be in [0, 1], got {share}")
        C.number("tau_seg", self.tau_seg)
        C.integer("min_segments", self.min_segments, 1, 2**31)
        theta = C.number("merge_threshold", self.merge_threshold)
        # θ ≤ −1 would merge tokens that have no match (σ* = −1); θ ≥ 1 merges nothing, and
        # the published code then divides by zero in step e.
        if not -1.0 < theta < 1.0:
            raise ValueError(f"merge_threshold must be in (-1, 1), got {theta}")
        C.integer("max_k", self.max_k, 1, 2**31)
        if self.sink_scope not in ("segment", "video"):
            raise ValueError(f"sink_scope must be 'segment' or 'video', got {self.sink_scope!r}")

    def check_video(self, T: int, N: int, D: int) -> None:
        B, n_a, _ = flashvid_budget(N, self)
        if n_a > N:
            raise ValueError(f"flashvid: ADTS would pick n_A = ceil(adts_share·B) = {n_a} distinct "
                             f"tokens of a frame with N = {N} (B = ceil(N·r·expansion) = {B}); "
                             "lower retention_ratio, expansion or adts_share")
        if B > N:
            warnings.warn(f"flashvid: the budget B = ceil(N·r·expansion) = {B} exceeds the N = {N} "
                          "tokens of a frame, so the output can be longer than the input; lower "
                          "retention_ratio or expansion", stacklevel=4)


def flashvid_budget(N: int, opts: Options) -> tuple[int, int, int]:
    """SPEC §10.1: (B, n_A, n_M) per frame, float64 with N·r·E evaluated as (N·r)·E."""
    B = math.ceil(N * opts.retention_ratio * opts.expansion)
    n_a = math.ceil(opts.adts_share * B)
    return B, n_a, B - n_a


def cut_segments(sigma: list[float], tau_seg: float, min_segments: int) -> list[tuple[int, int]]:
    """SPEC §10.2 on host floats: cuts where σ_t < τ_seg, completed to min_segments − 1 cuts
    by the smallest σ among the other transitions (ties: lower t); segments as §9 step 2."""
    T = len(sigma) + 1
    cuts = [t for t, s in enumerate(sigma) if s < tau_seg]
    need = min_segments - 1 - len(cuts)
    if need > 0:
        rest = sorted((s, t) for t, s in enumerate(sigma) if not s < tau_seg)
        cuts += [t for _, t in rest[:need]]
    segs, b = [], 0
    for t in sorted(cuts):
        segs.append((b, t))
        b = t + 1
    segs.append((b, T - 1))
    return segs


class SegmentLayout:
    """Frame ↔ segment index tensors built once from the host segment list."""

    def __init__(self, segs: list[tuple[int, int]], device):
        self.segs = segs
        self.lengths = [e - b + 1 for b, e in segs]
        self.lengths_t = [e - b + 1 for b, e in segs for _ in range(b, e + 1)]   # per frame
        self.max_len = max(self.lengths)
        seg_of = [s for s, (b, e) in enumerate(segs) for _ in range(b, e + 1)]
        offset = [t - b for b, e in segs for t in range(b, e + 1)]
        T = len(seg_of)
        self.T = T
        # (S, max_len) frame of each segment offset, T (a padding row) past the segment's end
        frames = [[b + o if b + o <= e else T for o in range(self.max_len)] for b, e in segs]
        (self.seg_of, self.offset, self.len_t, self.length, self.frames,
         self.bounds) = to_device(device, seg_of, offset, [self.lengths[s] for s in seg_of],
                                  self.lengths, frames, segs)

    def seg_sum(self, v: torch.Tensor) -> torch.Tensor:
        """(T, …) → (S, …): sum over each segment's frames."""
        out = torch.zeros((len(self.segs),) + tuple(v.shape[1:]), dtype=v.dtype, device=v.device)
        return out.index_add_(0, self.seg_of, v)


def segment_sink(a: torch.Tensor, lay: SegmentLayout, gamma: float) -> torch.Tensor:
    """SPEC §10.3a: (S, N) minmax(m^γ) of each segment's mean attention (§3 with ε)."""
    return minmax_power(lay.seg_sum(a) / lay.length[:, None], gamma, SINK_EPS)


def adts(x: torch.Tensor, xn: torch.Tensor, w: torch.Tensor, n_a: int,
         backend: str = "torch") -> torch.Tensor:
    """SPEC §10.3b for all frames at once, from the features (for inspection and tests):
    (T, n_A) picks in pick order. ``xn`` is x normalized (only its Gram is used)."""
    G, C, _ = M.frame_grams(xn, backend)
    return M.adts_match(G, C, w.float(), n_a, backend)[0]


def flashvid_fast(video: base.Video, opts: Options) -> Selection:
    x, a = video.features, video.attention
    T, N, D = x.shape
    dev, be = x.device, video.backend
    B, n_a, n_m = flashvid_budget(N, opts)
    # 1. One pass over the features: every frame's Gram, the cross Gram with the previous
    # frame and the frame sums. Every cosine below comes from these.
    xs = M.features(x, be)
    G, C, F_sum = M.frame_grams(xs, be)

    # 2. Segmentation: the one host transfer for the layout (T − 1 floats).
    f = F.normalize(F_sum, dim=-1)
    segs = cut_segments((f[:-1] * f[1:]).sum(-1).tolist(), opts.tau_seg, opts.min_segments)
    lay = SegmentLayout(segs, dev)

    # 3a. STSP with the segment's (or the video's) sink score; none for a one-frame video.
    af = a.float()
    extras = {"budget": (B, n_a, n_m)}
    if opts.mu_s != 0 and T > 1:
        if opts.sink_scope == "segment":     # PrunedVideo.sink stays the video-level score
            extras["segment_sink"] = seg_sink = segment_sink(af, lay, opts.gamma)   # (S, N)
            s = seg_sink[lay.seg_of]
        else:
            s = video.sink.float()[None]
        af = af - opts.mu_s * s

    # 3b. ADTS with w = ã · ⟨x, ḡ⟩, ḡ the segment's mean token (a second pass over the
    # features), and each token's best match among the previous frame's unpicked tokens.
    gbar = lay.seg_sum(F_sum) / (lay.length[:, None] * N)
    w = af * M.project(xs, gbar[lay.seg_of], be)
    picks, pick_row, best, arg = M.adts_match(G, C, w, n_a, be)
    if n_m == 0:
        key = (torch.arange(T, device=dev)[:, None] * N + picks).view(-1)
        tokens = M.merge(x, key, torch.ones(T * n_a, device=dev),
                         torch.arange(T * n_a + 1, device=dev), x.dtype, be)
        key = key * 2
    else:
        # 3d. Temporal tree merge on indices; the pool sizes are the second host transfer.
        tree = merge_tree(best, arg, pick_row, lay, B, opts.merge_threshold, be)
        sizes = tree.sizes.tolist()
        values, own = pooled_values(xs, tree, pick_row, sizes, n_a, be)
        # 3e–4. Spatial DPC-kNN and the output tokens in LLM order, in the features' dtype.
        tokens, key = spatial_output(values, own, tree, picks, sizes, lay, n_m, opts.max_k, D,
                                     x.dtype, be)
    kinds = (key % 2).to(torch.int8) + KIND_DIVERSE          # KIND_MERGED = KIND_DIVERSE + 1
    return Selection(tokens, torch.stack([key // (2 * N), key // 2 % N], dim=1), kinds,
                     segments=segs, extras=extras)
