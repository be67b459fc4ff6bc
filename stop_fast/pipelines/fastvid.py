"""FastVid + SToP (SPEC §9): segments from per-frame global vectors, salient top-k per frame,
density-peak anchors that absorb the remaining tokens of their frame or segment.

Shapes: features x (T, N, D) fp32/fp16/bf16; attention a (T, N); sink s (N,) fp32; global
vectors g (T, Dg). Budgets per frame (host ints, :func:`budgets`): R = ⌊N·r⌋ kept, C = ⌊d·R⌋
context, S = R − C salient; n = N − S non-salient tokens U_t per frame.

The published SToP release's choices are reproduced (SPEC §9 notes):

- cuts are the min(c−1, T−1) smallest adjacent global cosines plus every one below τ_seg
  (the release takes exactly c−1 and fails for T < c);
- context anchors of the anchor frames of a multi-frame segment pay the sink penalty twice
  (ψ already holds −λ·s and step 7 subtracts λ·s again: 2λ in all);
- every anchor frame of a segment merges the whole segment's non-salient pool (shared pool:
  each pool token joins one anchor of every anchor frame);
- the anchor keeps weight max(1/(n_a+1), α), i.e. α whenever it has a member;
- K is clamped to N − S (the release fails there).

Only density ties are decided differently: deterministically (lower index) instead of by
random noise.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import _checks as C
from .. import api
from ..dispatch import get
from ._fastvid_merge import ContextPlan, anchor_dots, anchors, context_merge
from .base import Options as _BaseOptions, Selection, Video

__all__ = ["Options", "fastvid_fast", "budgets", "anchor_budget", "global_vectors",
           "DEFAULT_CONTEXT_PENALTY"]

DEFAULT_CONTEXT_PENALTY = 0.3      # λ, hard-coded in the published release (SPEC §9 note 2)


@dataclass(frozen=True)
class Options(_BaseOptions):
    """FastVid settings (SPEC §9 defaults). ``context_penalty`` λ: None → 0.3 when SToP is on
    and ``mu_s`` ≠ 0, else 0 (concrete after :meth:`validated`)."""

    min_segments: int = 8           # c
    tau_seg: float = 0.9            # τ_seg: cut wherever adjacent global cosine < τ_seg
    context_share: float = 0.4      # d: share of the per-frame budget R given to context
    anchor_stride: int = 4          # p: anchor frames e, e−p, … of each segment
    anchor_weight: float = 0.6      # α: floor of the anchor's own weight in its merge
    density_k: int = 4              # k_ρ: neighbours of the DPC-kNN density
    context_penalty: float | None = None

    method: ClassVar[str] = "fastvid"
    default_mu_s: ClassVar[float] = 0.02
    sink_fields: ClassVar[tuple[str, ...]] = ("mu_s", "context_penalty")

    def validated(self, given: frozenset[str] = frozenset()) -> "Options":
        out = super().validated(given)
        lam = out.context_penalty
        if lam is None or not out.use_stop:
            lam = DEFAULT_CONTEXT_PENALTY if out.use_stop and out.mu_s != 0 else 0.0
        return replace(out, context_penalty=float(lam))

    def _check_fields(self) -> None:
        C.integer("min_segments", self.min_segments, 1, 2**31 - 1)
        C.number("tau_seg", self.tau_seg)
        d = C.number("context_share", self.context_share)
        if not 0.0 <= d < 1.0:
            raise ValueError(f"context_share must be in [0, 1) (the share of each frame's budget "
                             f"given to context tokens; salient tokens need the rest), got {d}")
        C.integer("anchor_stride", self.anchor_stride, 1, 2**31 - 1)
        w = C.number("anchor_weight", self.anchor_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"anchor_weight must be in [0, 1] (a merge weight), got {w}")
        C.integer("density_k", self.density_k, 1, 2**31 - 1)
        if self.context_penalty is not None:
            lam = C.number("context_penalty", self.context_penalty)
            if lam < 0:
                raise ValueError(f"context_penalty must be >= 0 (a sink penalty), got {lam}")

    def check_video(self, T: int, N: int, D: int) -> None:
        R, _, _ = budgets(N, self.retention_ratio, self.context_share)
        if R < 1:
            raise ValueError(f"retention_ratio={self.retention_ratio} keeps floor(N·r) = 0 tokens "
                             f"per frame of N={N}; FastVid needs retention_ratio >= 1/N = {1 / N:.4g}")


def budgets(N: int, retention_ratio: float, context_share: float) -> tuple[int, int, int]:
    """(R, S, C) per frame (SPEC §9.1): R = ⌊N·r⌋, C = ⌊d·R⌋, S = R − C (float64 floors)."""
    R = math.floor(N * float(retention_ratio))
    Cb = math.floor(float(context_share) * R)
    return R, R - Cb, Cb


def anchor_budget(C_frame: int, L: int, stride: int) -> tuple[int, int]:
    """(m_L, K_L) of a segment of L frames (SPEC §9.3): ⌈L/p⌉ anchor frames of ⌊C·L/m_L⌋."""
    m = -(-L // stride)
    return m, (C_frame * L) // m


_warned_fallback = False


def global_vectors(video: Video) -> torch.Tensor:
    """g (T, Dg) fp32: the caller's global vectors, or each frame's mean token (one warning)."""
    global _warned_fallback
    if video.global_features is not None:
        return video.global_features.float()
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn("fastvid: no global_features given; segmenting on each frame's mean token "
                      "instead of SigLIP's pooled vector, so segments may differ from the published "
                      "run (SPEC §9)", stacklevel=5)
    return video.features.float().mean(dim=1)


def _segments(cut: list[int], T: int) -> list[tuple[int, int]]:
    starts = [0] + [t + 1 for t in cut]
    ends = cut + [T - 1]
    return list(zip(starts, ends))


def fastvid_fast(video: Video, opts: Options) -> Selection:
    """FastVid + SToP, vectorized over frames (SPEC §9). Returns a :class:`Selection`:
    tokens (M, D) in the features' dtype, positions (M, 2) int64 [t, i] sorted by t·N + i,
    kinds salient/context, the segments, and the per-frame budgets in ``extras``.

    M = T·S + C·#(one-frame segments) + Σ_{L ≥ 2} m_L·min(K_L, N − S) (SPEC §9.8). One host
    sync (the segment boundaries). The features are read three times, each time in one pass
    (:mod:`._fastvid_merge`): distances to each frame's non-salient tokens (density), every
    token's dots with the anchors its pool joins, and the merge of all output tokens.
    """
    x, a, s, bk = video.features, video.attention, video.sink.float(), video.backend
    T, N, D = x.shape
    dev = x.device
    R, S, Cb = budgets(N, opts.retention_ratio, opts.context_share)
    n = N - S
    lam = float(opts.context_penalty)

    # 2. DySeg: cut after the min(c−1, T−1) least similar frame pairs and below τ_seg.
    g = F.normalize(global_vectors(video), dim=-1, eps=1e-12)
    sigma = (g[:-1] * g[1:]).sum(dim=-1)                               # (T−1,)
    cut = sigma < opts.tau_seg
    n_small = min(opts.min_segments - 1, T - 1)
    if n_small > 0:
        cut[torch.sort(sigma, stable=True).indices[:n_small]] = True   # ties: lower t
    # The one host sync: the segment structure fixes every shape below (one copy of T−1 flags;
    # a nonzero first would wait for the device a second time).
    segments = _segments([t for t, c in enumerate(cut.tolist()) if c], T)
    plan = ContextPlan(segments, Cb, opts.anchor_stride, n, anchor_budget).to(dev)

    # 4. Salient tokens: top-S of a − μ_s·s per frame (STSP); U_t the others, ascending.
    sal = api.penalized_topk(a, s, S, mu_s=opts.mu_s, backend=bk)      # (T, S)
    is_sal = torch.zeros(T, N, dtype=torch.bool, device=dev).scatter_(1, sal, True)
    U = torch.sort(is_sal.to(torch.uint8), dim=1, stable=True).indices[:, :n]
    gram = get("frame_gram", bk, dev)
    # The torch backend computes in fp32 from fp32 rows: one copy for all three passes.
    xw = x.float() if bk == "torch" else x
    if plan.F:
        # 5. Density scores of U_t (one distance pass) and ψ = ρ·δ − λ·s.
        rho, delta = get("knn_density", bk, dev)(gram(xw, None, "distance"), U,
                                                   min(opts.density_k, n), 1.0 / D)
        s_u = s[U]
        # 6–7. Anchors, then every pool token's dots with the anchors it may join.
        rows_a = anchors(plan, U, rho * delta - lam * s_u, s_u, lam, N)          # (F, KB)
        pool = anchor_dots(gram, xw, plan, rows_a, U, per_frame_keys=bk != "torch")
    else:
        pool = rows_a = None
    rows, weights, offsets, positions, kinds = context_merge(
        plan, pool, rows_a, U, sal, float(opts.anchor_weight), N)
    tokens = get("merge_tokens", bk, dev)(xw, rows, weights, offsets, x.dtype)
    return Selection(tokens=tokens, positions=positions, kinds=kinds, segments=segments,
                     extras={"salient_per_frame": S, "context_per_frame": Cb})
