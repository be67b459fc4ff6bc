"""VisionZip + SToP (SPEC §7): dominant top-k by ã plus merged contextual tokens, per frame.

Vectorized over frames with no host synchronization: every shape follows from (T, N) and the
options. The layout is one kernel on the Triton backend (:mod:`stop_fast.kernels.visionzip_plan`,
twin :func:`stop_fast.torch_backend.visionzip_plan`), the tokens one :func:`stop_fast.merge_tokens`
pass over the features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks as C
from .. import api
from ..dispatch import get
from . import base
from .base import KIND_CONTEXTUAL, KIND_DOMINANT, Selection, Video

__all__ = ["Options", "visionzip_fast", "visionzip_budget", "contextual_targets", "SINK_SKIP_RULES"]

# The Triton layout kernel holds a frame in one block; larger frames use the torch layout.
PLAN_MAX_N = 512
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


def _target_positions(video: Video, opts: Options, n_dom: int, n_ctx: int) -> torch.Tensor:
    """(T, C) positions of the contextual targets in each frame's remaining list (SPEC §7.3),
    a broadcast row when they are the same in every frame (without SToP, and the published
    position rule, which compares positions with sink locations)."""
    sink, dev = video.sink, video.sink.device
    T, N, _ = video.features.shape
    R = N - n_dom
    n = min(opts.num_sink_skip, N)
    if not opts.use_stop or n == 0:
        stride = max(1, R // n_ctx)
        return torch.arange(0, n_ctx * stride, stride, device=dev).expand(T, n_ctx)
    Z = torch.sort(sink, descending=True, stable=True).indices[:n]      # ties: lower location
    if opts.sink_skip == "position":
        is_z = torch.zeros(R + N, dtype=torch.bool, device=dev).scatter_(0, Z, True)
        return contextual_targets(is_z[None, :R], n_ctx, overflow_last=True).expand(T, n_ctx)
    # The intended rule: a target skips past remaining tokens whose *location* is a sink.
    is_dom = torch.zeros(T, N, dtype=torch.bool, device=dev)
    if n_dom:
        dom = api.penalized_topk(video.attention, sink, n_dom, mu_s=opts.mu_s,
                                 backend=video.backend)
        is_dom.scatter_(1, dom, True)
    rem = torch.sort(is_dom.to(torch.uint8), dim=1, stable=True).indices[:, :R]
    is_z = torch.zeros(N, dtype=torch.bool, device=dev).scatter_(0, Z, True)
    return contextual_targets(is_z[rem], n_ctx)


def visionzip_fast(video: Video, opts: Options) -> Selection:
    """(T·S tokens in SPEC §7.4 order: per frame dominant ascending, then contextual).

    Two device steps after the target positions: the per-frame layout (``visionzip_plan``:
    dominant top-k, targets, metric cosines, members; one kernel on the Triton backend) and
    one ``merge_tokens`` pass that reads every feature row once and writes the T·S outputs.
    """
    x, metric, sink = video.features, video.metric, video.sink
    T, N, D = x.shape
    n_dom, n_ctx = visionzip_budget(N, opts.retention_ratio, opts.tokens_per_frame)
    targets = _target_positions(video, opts, n_dom, n_ctx)
    bk = video.backend if video.backend != "triton" or N <= PLAN_MAX_N else "torch"
    rows, weights, offsets, positions, kinds = get("visionzip_plan", bk, x.device)(
        video.attention, sink, opts.mu_s, n_dom, targets, metric, (KIND_DOMINANT, KIND_CONTEXTUAL))
    tokens = get("merge_tokens", video.backend, x.device)(x, rows, weights, offsets, None)
    return Selection(tokens, positions, kinds)
