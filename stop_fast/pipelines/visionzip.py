"""VisionZip + SToP (SPEC §7): dominant top-k by ã plus merged contextual tokens, per frame.

Vectorized over frames with no host synchronization: every shape follows from (T, N) and the
options. Dominant tokens come from the public :func:`stop_fast.gather_topk`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import _checks as C
from .. import api
from . import base
from .base import KIND_CONTEXTUAL, KIND_DOMINANT, Selection, Video

__all__ = ["Options", "visionzip_fast", "visionzip_budget", "contextual_targets", "SINK_SKIP_RULES"]

# VisionZip's published per-frame budgets for 196 pooled tokens (SPEC §7.1).
TABLE_196 = {0.10: 20, 0.15: 30, 0.20: 40, 0.25: 50}
SINK_SKIP_RULES = ("position", "location")


@dataclass(frozen=True)
class Options(base.Options):
    """VisionZip settings (SPEC §7, §13).

    sink_skip: how a contextual target skips sinks: "position" (as published: the target's
        position in the remaining list is compared with the sink locations) or "location" (the
        intended rule: the target's location is compared). num_sink_skip: |Z|, the number of
        highest-sink locations skipped. tokens_per_frame: S, overriding the budget rule.
    """

    sink_skip: str = "position"
    num_sink_skip: int = 20
    tokens_per_frame: int | None = None

    method = "visionzip"
    default_mu_s = 0.03
    sink_fields = ("mu_s", "num_sink_skip", "sink_skip")

    def _check_fields(self) -> None:
        if self.sink_skip not in SINK_SKIP_RULES:
            raise ValueError(f"sink_skip must be one of {SINK_SKIP_RULES}, got {self.sink_skip!r}")
        C.integer("num_sink_skip", self.num_sink_skip, 0, 2**31 - 1)
        if self.tokens_per_frame is not None:
            C.integer("tokens_per_frame", self.tokens_per_frame, 1, 2**31 - 1)

    def check_video(self, T: int, N: int, D: int) -> None:
        visionzip_budget(N, self.retention_ratio, self.tokens_per_frame)


def visionzip_budget(N: int, r: float, tokens_per_frame: int | None = None) -> tuple[int, int]:
    """(dominant D_n, contextual C_n) tokens per frame (SPEC §7.1).

    S = ``tokens_per_frame`` if given, else the published table at N = 196 (int(196·r) off the
    table), else int(N·r); D_n = int(S·54/64) (exact: S·54/64 is a dyadic fraction).
    """
    if tokens_per_frame is not None:
        if tokens_per_frame > N:
            raise ValueError(f"tokens_per_frame must be at most N = {N} tokens per frame, got "
                             f"{tokens_per_frame}")
        S = tokens_per_frame
    elif N == 196:
        S = TABLE_196.get(r, int(196 * r))
    else:
        S = int(N * r)
    if S < 1:
        raise ValueError(f"retention_ratio={r} keeps int(N*r) = {S} of N={N} tokens per frame; "
                         f"expected a ratio of at least 1/N = {1 / N:.4g} (or set tokens_per_frame)")
    dominant = S * 54 // 64
    return dominant, S - dominant


def contextual_targets(skip: torch.Tensor, n_targets: int, overflow_last: bool = False,
                       ) -> torch.Tensor:
    """Positions (in the remaining-token list) of the contextual targets, per frame (SPEC §7.3).

    skip (T, R) bool marks the positions a target must move past. Target j starts at j·stride
    and moves forward to the next position that is neither skipped nor taken. Targets then
    increase: target j is the u_j-th unskipped position, u_j = max(r(p_j), u_{j−1} + 1) with
    r(p) = unskipped positions before p, i.e. u_j = j + max_{i≤j}(r(p_i) − i), a cumulative
    max. Past the last unskipped position, targets take the skipped positions: ascending, or
    with ``overflow_last`` descending, so the first overflow keeps the last position (the
    published rule's crash case, SPEC §7.3). u_j ≤ R − 1 always: every target exists and all
    are distinct (where the published rule would repeat a target, the next free one is taken).
    """
    T, R = skip.shape
    dev = skip.device
    stride = max(1, R // n_targets)
    j = torch.arange(n_targets, device=dev)
    start = j * stride                                                   # (C,)
    free = (~skip).to(torch.int64)
    before = free.cumsum(dim=1) - free                                   # unskipped before p
    u = j + torch.cummax(before[:, start] - j, dim=1).values             # (T, C)
    # Unskipped positions ascending, then the skipped ones (ascending or descending).
    key = skip.to(torch.int64) * (2 * R)
    if overflow_last:
        key = key + torch.where(skip, R - 1 - torch.arange(R, device=dev), 0)
    prefer = torch.sort(key, dim=1, stable=True).indices
    return prefer.gather(1, u)


def _skip_mask(sink: torch.Tensor, rem: torch.Tensor, opts: Options) -> torch.Tensor | None:
    """(T, R) positions of the remaining list that a target moves past, or None (no skip)."""
    n = min(opts.num_sink_skip, sink.shape[0])
    if not opts.use_stop or n == 0:
        return None
    Z = torch.sort(sink, descending=True, stable=True).indices[:n]      # ties: lower location
    if opts.sink_skip == "location":
        is_sink = torch.zeros(sink.shape[0], dtype=torch.bool, device=sink.device)
        return is_sink.scatter_(0, Z, True)[rem]
    # As published: a *position* p of the remaining list is skipped if p equals a sink location.
    T, R = rem.shape
    pos = torch.zeros(R + sink.shape[0], dtype=torch.bool, device=sink.device).scatter_(0, Z, True)
    return pos[:R].expand(T, R)


def visionzip_fast(video: Video, opts: Options) -> Selection:
    """(T·S tokens in SPEC §7.4 order: per frame dominant ascending, then contextual)."""
    x, attn, metric, sink = video.features, video.attention, video.metric, video.sink
    T, N, D = x.shape
    dev = x.device
    n_dom, n_ctx = visionzip_budget(N, opts.retention_ratio, opts.tokens_per_frame)
    R = N - n_dom
    frames = torch.arange(T, device=dev)[:, None]

    # 2. Dominant: top-D_n by ã, emitted in ascending location order.
    if n_dom > 0:
        dom = api.penalized_topk(attn, sink, n_dom, mu_s=opts.mu_s, backend=video.backend)
        dom = dom.sort(dim=1).values
    else:
        dom = torch.empty(T, 0, dtype=torch.int64, device=dev)
    is_dom = torch.zeros(T, N, dtype=torch.bool, device=dev).scatter_(1, dom, True)
    # Remaining locations in ascending order (stable sort puts the non-dominant first).
    rem = torch.sort(is_dom.to(torch.uint8), dim=1, stable=True).indices[:, :R]

    # 3. Contextual targets: a stride over the remaining list, skipping sinks (SPEC §7.3).
    skip = _skip_mask(sink, rem, opts) if n_ctx else None
    if skip is not None:
        pos = contextual_targets(skip, n_ctx, overflow_last=opts.sink_skip == "position")
    else:
        pos = (torch.arange(n_ctx, device=dev) * max(1, R // max(n_ctx, 1))).expand(T, n_ctx)
    tgt = rem.gather(1, pos)                                             # (T, C) locations

    # Every other remaining token joins its most similar target (cosine of the metric; ties to
    # the earlier target); the contextual token is target + mean(members).
    mn = F.normalize(metric.float(), dim=-1)
    sim = torch.bmm(mn, mn[frames, tgt].transpose(1, 2))                 # (T, N, C)
    member = ~is_dom & ~torch.zeros_like(is_dom).scatter_(1, tgt, True)
    weight = F.one_hot(sim.argmax(dim=2), n_ctx).float() * member[..., None]
    counts = weight.sum(dim=1)                                           # (T, C)
    sums = torch.bmm(weight.transpose(1, 2), x.float())                  # (T, C, D)

    # 4. Per frame: dominant tokens, then contextual tokens in target order.
    tokens = torch.empty(T, n_dom + n_ctx, D, dtype=x.dtype, device=dev)
    tokens[:, :n_dom] = x[frames, dom]
    tokens[:, n_dom:] = x[frames, tgt].float() + sums / counts.clamp(min=1.0)[..., None]
    locs = torch.cat([dom, tgt], dim=1)
    positions = torch.stack([frames.expand_as(locs), locs], dim=-1).reshape(-1, 2)
    kinds = torch.cat([torch.full((n_dom,), KIND_DOMINANT, dtype=torch.int8, device=dev),
                       torch.full((n_ctx,), KIND_CONTEXTUAL, dtype=torch.int8, device=dev)])
    return Selection(tokens.view(-1, D), positions, kinds.repeat(T))
