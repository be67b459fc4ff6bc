"""HoliTom + SToP (SPEC §6): DP segmentation, STTP static merge, STSP top-k of dynamic tokens.

Device work is vectorized over frames and segments. The segment layout and every budget
are data-dependent, so the pipeline makes exactly one device→host transfer per video: the
two (T, T) tables of "locations static over frames b … e" (raw cosine for the DP, cosine +
μ_t·s for STTP). Everything after it (DP, r', per-segment counts, output offsets) is host
arithmetic on Python ints, shipped back in one host→device copy.

The DP runs on the host after that transfer. Measured on CPU: 70–110 µs at T = 32 and
0.1–0.3 ms at T = 64 in plain Python (less on videos with motion, see
:func:`segments_from_counts`), against 5–6 ms for the same DP as T rounds of torch ops; on a
GPU those rounds would be T sequential launch chains and the layout would still need a copy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import _checks as C
from .. import api
from ..dispatch import get
from . import base
from .base import KIND_DYNAMIC, KIND_STATIC, Selection, Video
from .dpc_knn import dpc_knn_batched

__all__ = ["Options", "holitom_fast", "pair_counts", "segments_from_counts",
           "holitom_adjusted_ratio", "holitom_budgets"]


@dataclass(frozen=True)
class Options(base.Options):
    """HoliTom settings (SPEC §6, §13). ``mu_t=None`` / ``center_penalty=None`` take 0.07 / 0.3
    with SToP and 0 without; τ is used for both the DP and the STTP test (SPEC §6.2).

    ``retention_ratio`` bounds the dynamic share, it does not mean "keep everything": at 1.0
    static locations of a segment are still merged into one token per location (then
    clustered to round(n_st·r′)), since temporal merging runs before any budget applies."""

    mu_t: float | None = None
    tau: float = 0.8
    beta: float = 0.6
    K: int = 7
    max_window: int | None = None
    center_penalty: float | None = None

    method = "holitom"
    default_mu_s = 0.04
    sink_fields = ("mu_s", "mu_t", "center_penalty")

    def validated(self, given: frozenset[str] = frozenset()) -> "Options":
        out = super().validated(given)
        on = out.use_stop
        mu_t = (0.07 if self.mu_t is None else C.number("mu_t", self.mu_t)) if on else 0.0
        lam = (0.3 if self.center_penalty is None else C.number("center_penalty", self.center_penalty)) \
            if on else 0.0
        if lam < 0:
            raise ValueError(f"center_penalty must be >= 0 (λ of the DPC-KNN centre score), got {lam}")
        return dataclasses.replace(out, mu_t=mu_t, center_penalty=lam)

    def _check_fields(self) -> None:
        C.number("tau", self.tau)
        if not 0.0 <= C.number("beta", self.beta) <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        C.integer("K", self.K, 1, 2**31 - 1)
        if self.max_window is not None:
            C.integer("max_window", self.max_window, 1, 2**31 - 1)


def holitom_adjusted_ratio(r: float, T: int, N: int, reduced: int) -> float:
    """r' = min(r / ((T·N − reduced) / (T·N)), 1) in IEEE float64, in exactly the order the
    published Python evaluates it (SPEC §6.1: e.g. 0.7000000000000001, not 0.7)."""
    total = T * N
    return min(r / ((total - reduced) / total), 1)


def holitom_budgets(n_static: int, n_dynamic: int, r_adj: float) -> tuple[int, int]:
    """(clusters c_n = round(n_st·r'), dynamic per frame k_d = ceil(n_dyn·r')) on the float r'
    (SPEC §6.3–4; round() halves to even, as Python's)."""
    return round(n_static * r_adj), math.ceil(n_dynamic * r_adj)


def pair_counts(steady: torch.Tensor) -> torch.Tensor:
    """(T, T) int: entry [b, e] = #locations with ``steady[t]`` for all t in b … e−1 (b < e).

    steady (T−1, N) bool. Diagonal and lower triangle are 0 (one frame merges nothing).
    """
    breaks = F.pad((~steady).to(torch.int32).cumsum(dim=0), (0, 0, 1, 0))   # (T, N)
    same = breaks[:, None, :] == breaks[None, :, :]                          # (b, e, N)
    return same.sum(dim=-1, dtype=torch.int32).triu(diagonal=1)


def segments_from_counts(by_end: list[list[int]], max_window: int | None,
                         ) -> tuple[list[tuple[int, int]], int]:
    """SPEC §6.1 DP on host ints, the same rule as :func:`stop_fast.reference.holitom_segments`.

    by_end[e][b]: locations static over frames b … e (the transposed :func:`pair_counts`
    table, so the inner loop reads one row). Windows are tried from w = 2 upward and replace
    the best only when strictly greater. Once a window's count is 0 every longer window ending
    at e is 0 too (it contains it) and cannot beat dp[e−1] (dp never decreases), so the scan
    stops there. Returns (segments, total tokens removed).
    """
    T = len(by_end)
    W = T if max_window is None else max_window
    best_upto = [0] * (T + 1)          # best_upto[e + 1] = dp[e], best_upto[0] = dp[−1] = 0
    start = [0] * T
    for e in range(T):
        row = by_end[e]
        best, best_start = best_upto[e], e
        for b in range(e - 1, max(-1, e - W), -1):     # w = e − b + 1 = 2, 3, …, min(e + 1, W)
            n_static = row[b]
            if not n_static:
                break
            cand = best_upto[b] + n_static * (e - b)
            if cand > best:
                best, best_start = cand, b
        best_upto[e + 1], start[e] = best, best_start
    segments, e = [], T - 1
    while e >= 0:
        segments.append((start[e], e))
        e = start[e] - 1
    return segments[::-1], best_upto[T]


def holitom_fast(video: Video, opts: Options) -> Selection:
    """SPEC §6 vectorized; output per segment: static tokens, then dynamic tokens per frame."""
    x, attn, sink, bk = video.features, video.attention, video.sink, video.backend
    T, N, D = x.shape
    dev = x.device

    # 1. Tables for the DP (raw cosine) and STTP (cosine + μ_t·s), same τ for both (SPEC §6.2).
    if T > 1:
        above = api.adjacent_cosine(x, backend=bk) > opts.tau                 # (T−1, N)
        steady = api.static_mask(x, sink, tau=opts.tau, mu_t=opts.mu_t, backend=bk) \
            if opts.mu_t != 0.0 else above
        tables = torch.stack([pair_counts(above).T, pair_counts(steady).T])      # [e][b]
        # The one host sync: segment layout and budgets depend on the data.
        raw_by_end, st_by_end = tables.cpu().tolist()
    else:
        raw_by_end = st_by_end = [[0]]
    segments, reduced = segments_from_counts(raw_by_end, opts.max_window)
    r_adj = holitom_adjusted_ratio(opts.retention_ratio, T, N, reduced)
    plan = _Plan(segments, [st_by_end[e][b] if e > b else 0 for b, e in segments], N, r_adj,
                 opts.K, dev)

    M = plan.total
    out = torch.empty(M + 1, D, dtype=x.dtype, device=dev)      # row M takes unused slots
    pos = torch.empty(M + 1, 2, dtype=torch.int64, device=dev)
    kinds = torch.empty(M + 1, dtype=torch.int8, device=dev)
    # (S, N) static locations of each segment: the same fused test the tables counted.
    # The backend directly: the public op would check the range of bounds, one more sync.
    seg_static = get("segment_static_mask", bk, dev)(x, sink, plan.bounds, opts.tau, opts.mu_t)
    if plan.k_max > 0:
        _dynamic(x, attn, sink, seg_static, plan, opts, bk, (out, pos, kinds))
    if plan.active:
        _static(x, sink, seg_static, plan, opts, (out, pos, kinds))
    return Selection(out[:M], pos[:M], kinds[:M], segments,
                     {"adjusted_ratio": r_adj, "reduced": reduced})


class _Plan:
    """Host-side layout of the output (Python ints) and its one-copy device mirror.

    Output per segment s: its c_n static tokens at seg_base[s], then k_d dynamic tokens per
    frame, frame t's at frame_base[t].
    """

    def __init__(self, segments, n_static, N, r_adj, K, dev):
        budgets = [holitom_budgets(n, N - n, r_adj) for n in n_static]       # (c_n, k_d)
        seg_of, k_frame, frame_base, seg_base, total = [], [], [], [], 0
        for s, (b, e) in enumerate(segments):
            c_n, k_d = budgets[s]
            seg_base.append(total)
            for t in range(b, e + 1):
                seg_of.append(s)
                k_frame.append(k_d)
                frame_base.append(total + c_n + (t - b) * k_d)
            total += c_n + (e - b + 1) * k_d
        self.total, self.k_max = total, max(k_frame)
        self.active = [s for s in range(len(segments)) if budgets[s][0] > 0]  # segments to cluster
        act = self.active
        self.n_pad = max((n_static[s] for s in act), default=0)
        self.c_pad = max((budgets[s][0] for s in act), default=0)
        self.k_pad = max((min(K, budgets[s][0]) for s in act), default=0)
        host = [v for seg in segments for v in seg] + seg_of + k_frame + frame_base + act
        host += [n_static[s] for s in act] + [budgets[s][0] for s in act]
        host += [min(K, budgets[s][0]) for s in act] + [seg_base[s] for s in act]
        flat = torch.tensor(host, dtype=torch.int64)
        if dev.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(dev, non_blocking=True)                                # one H2D copy
        S, T, A = len(segments), len(seg_of), len(act)
        self.bounds = flat[:2 * S].view(S, 2)
        self.seg_of, self.k_frame, self.frame_base = flat[2 * S:2 * S + 3 * T].view(3, T)
        rest = flat[2 * S + 3 * T:].view(5, A)
        self.act, self.act_n, self.act_c, self.act_k, self.act_base = rest


def _dynamic(x, attn, sink, seg_static, plan: _Plan, opts: Options, bk: str, outs) -> None:
    """SPEC §6.3: per frame the top k_d of ã over the segment's dynamic locations, ascending.

    Static locations get a score below every dynamic one (min a − |μ_s| − 1 − μ_s·s < any ã),
    so one top-max(k_d) call over all frames ranks the dynamic locations first everywhere.
    """
    out, pos, kinds = outs
    T, N, D = x.shape
    dev, M, k_max = x.device, plan.total, plan.k_max
    dynamic = ~seg_static[plan.seg_of]                                        # (T, N)
    a = attn.float()
    floor = a.min() - abs(opts.mu_s) - 1.0
    ranked = api.penalized_topk(torch.where(dynamic, a, floor), sink, k_max, mu_s=opts.mu_s,
                                backend=bk)                # (T, k_max)
    rank = torch.arange(k_max, device=dev)
    keep = rank < plan.k_frame[:, None]
    locs = torch.where(keep, ranked, N).sort(dim=1).values.clamp(max=N - 1)   # kept first
    dest = torch.where(keep, plan.frame_base[:, None] + rank, M).flatten()
    frames = torch.arange(T, device=dev)[:, None].expand(T, k_max)
    out.index_copy_(0, dest, x[frames, locs].flatten(0, 1))
    pos.index_copy_(0, dest, torch.stack([frames, locs], dim=-1).flatten(0, 1))
    kinds.index_fill_(0, dest, KIND_DYNAMIC)


def _static(x, sink, seg_static, plan: _Plan, opts: Options, outs) -> None:
    """SPEC §6.2 + §6.4: segment means at static locations, DPC-KNN of every clustering segment
    as one padded batch, each cluster merged to β·centre + (1−β)·mean(members)."""
    out, pos, kinds = outs
    T, N, D = x.shape
    dev, M, A = x.device, plan.total, len(plan.active)
    n_pad, c_pad = plan.n_pad, plan.c_pad
    sb = plan.bounds[plan.act]                                                # (A, 2)
    t = torch.arange(T, device=dev)
    span = ((t >= sb[:, :1]) & (t <= sb[:, 1:])).float()                      # (A, T)
    means = ((span / span.sum(1, keepdim=True)) @ x.float().reshape(T, N * D)).view(A, N, D)
    # Static locations first, ascending (stable sort); rows past the set's count are padding.
    st_locs = torch.sort((~seg_static[plan.act]).to(torch.uint8), dim=1, stable=True).indices
    st_locs = st_locs[:, :n_pad]
    sets = torch.arange(A, device=dev)[:, None]
    tokens = means[sets, st_locs]                                             # (A, n_pad, D)
    lam = opts.center_penalty
    penalty = lam * sink.float()[st_locs] if lam else None
    centers, assign = dpc_knn_batched(tokens, plan.act_n, plan.act_c, c_pad, plan.act_k,
                                      plan.k_pad, penalty)
    # Members: the set's non-centre tokens (padding centres index the spare last column).
    member = F.pad(torch.arange(n_pad, device=dev) < plan.act_n[:, None], (0, 1))
    member = member.scatter_(1, centers, False)[:, :n_pad]
    weight = F.one_hot(assign, c_pad).float() * member[..., None]            # (A, n_pad, C)
    counts = weight.sum(1)
    members_mean = torch.bmm(weight.transpose(1, 2), tokens) / counts.clamp(min=1.0)[..., None]
    ccol = centers.clamp(max=n_pad - 1)
    centre = tokens[sets, ccol]
    beta = opts.beta
    merged = torch.where((counts > 0)[..., None], beta * centre + (1 - beta) * members_mean, centre)
    slot = torch.arange(c_pad, device=dev)
    dest = torch.where(slot < plan.act_c[:, None], plan.act_base[:, None] + slot, M).flatten()
    out.index_copy_(0, dest, merged.to(x.dtype).flatten(0, 1))
    cpos = torch.stack([sb[:, :1].expand(A, c_pad), st_locs.gather(1, ccol)], dim=-1)
    pos.index_copy_(0, dest, cpos.flatten(0, 1))
    kinds.index_fill_(0, dest, KIND_STATIC)
