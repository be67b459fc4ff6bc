"""HoliTom + SToP (SPEC §6): DP segmentation, STTP static merge, STSP top-k of dynamic tokens.

Device work is vectorized over frames and segments. The segment layout and every budget
are data-dependent, so the pipeline makes exactly one device→host transfer per video: the
two (T, T) tables of "locations static over frames b … e" (raw cosine for the DP, cosine +
μ_t·s for STTP), both from one adjacent-cosine pass. Everything after it (DP, r',
per-segment counts, the layout of the two merge passes in :mod:`._holitom_merge`) is host
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
from .base import Selection, Video
from ._holitom_merge import Plan, pass_a, pass_b
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


def _breaks(steady: torch.Tensor) -> torch.Tensor:
    """(…, T, N) int32: non-steady steps before frame t (steady (…, T−1, N) bool)."""
    return F.pad((~steady).to(torch.int32).cumsum(dim=-2), (0, 0, 1, 0))


def _pair_table(breaks: torch.Tensor) -> torch.Tensor:
    same = breaks[..., :, None, :] == breaks[..., None, :, :]                # (…, b, e, N)
    return same.sum(dim=-1, dtype=torch.int32).triu(diagonal=1)


def pair_counts(steady: torch.Tensor) -> torch.Tensor:
    """(T, T) int: entry [b, e] = #locations with ``steady[t]`` for all t in b … e−1 (b < e).

    steady (T−1, N) bool. Diagonal and lower triangle are 0 (one frame merges nothing).
    """
    return _pair_table(_breaks(steady))


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
    """SPEC §6 vectorized; output per segment: static tokens, then dynamic tokens per frame.

    The features are read twice: by the adjacent cosine (one pass, both thresholds and every
    segment's static test come from it) and by pass A of :mod:`._holitom_merge` (the static
    segment means and the kept dynamic tokens); the static clusters are merged from the means.
    """
    x, attn, sink, bk = video.features, video.attention, video.sink, video.backend
    T, N, D = x.shape
    dev = x.device

    # The torch backend computes in fp32 from fp32 rows: one copy for both passes.
    xw = x.float() if bk == "torch" else x
    # 1. Raw cosine for the DP, cosine + μ_t·s for STTP, same τ for both (SPEC §6.2).
    if T > 1:
        cos = api.adjacent_cosine(xw, backend=bk)                              # (T−1, N)
        steady = cos > opts.tau
        if opts.mu_t != 0.0:
            steady = torch.stack([steady, cos + opts.mu_t * sink.float() > opts.tau])
        else:
            steady = steady.expand(2, T - 1, N)
        breaks = _breaks(steady)                                               # (2, T, N)
        # The one host sync: segment layout and budgets depend on the data.
        raw_by_end, st_by_end = _pair_table(breaks).transpose(1, 2).cpu().tolist()
    else:
        raw_by_end = st_by_end = [[0]]
    segments, reduced = segments_from_counts(raw_by_end, opts.max_window)
    r_adj = holitom_adjusted_ratio(opts.retention_ratio, T, N, reduced)
    n_static = [st_by_end[e][b] if e > b else 0 for b, e in segments]
    plan = Plan(segments, n_static, [holitom_budgets(n, N - n, r_adj) for n in n_static], N,
                opts.K, dev)
    extras = {"adjusted_ratio": r_adj, "reduced": reduced}
    if plan.total == 0:
        return Selection(x.new_empty(0, D), torch.empty(0, 2, dtype=torch.int64, device=dev),
                         torch.empty(0, dtype=torch.int8, device=dev), segments, extras)

    # 2. Static locations of each segment: no STTP break in steps b … e−1 (the tables' test).
    b, e = plan.bounds[:, 0], plan.bounds[:, 1]
    if T > 1:
        seg_static = (breaks[1][e] == breaks[1][b]) & (e > b)[:, None]         # (S, N)
    else:
        seg_static = torch.zeros(len(segments), N, dtype=torch.bool, device=dev)

    # 3. Dynamic tokens (SPEC §6.3): per frame the top k_d of ã over the segment's dynamic
    # locations. Static ones score below every dynamic one (min a − |μ_s| − 1 − μ_s·s < ã), so
    # one top-max(k_d) call ranks the dynamic locations first in every frame.
    if plan.k_max:
        a = attn.float()
        score = torch.where(seg_static[plan.seg_of], a.min() - abs(opts.mu_s) - 1.0, a)
        ranked = api.penalized_topk(score, sink, plan.k_max, mu_s=opts.mu_s, backend=bk)
        keep = torch.arange(plan.k_max, device=dev) < plan.k_frame[:, None]
        dyn_locs = torch.where(keep, ranked, N).sort(dim=1).values             # kept first
    else:
        dyn_locs = torch.empty(T, 0, dtype=torch.int64, device=dev)

    # 4. Pass A: static means (fp32, the DPC-KNN input) and the kept dynamic tokens.
    st_locs = torch.sort((~seg_static[plan.act]).to(torch.uint8), dim=1, stable=True).indices
    st_locs = st_locs[:, :plan.n_pad]
    merge = get("merge_tokens", bk, dev)
    rows_a = merge(xw, *pass_a(plan, st_locs, dyn_locs, N), torch.float32)
    if plan.A:
        means = rows_a[:plan.A * plan.n_pad].view(plan.A, plan.n_pad, D)
        lam = opts.center_penalty
        penalty = lam * sink.float()[st_locs] if lam else None
        centers, assign = dpc_knn_batched(means, plan.act_n, plan.act_c, plan.c_pad, plan.act_k,
                                          plan.k_pad, penalty)
    else:
        centers = assign = torch.zeros(0, 0, dtype=torch.int64, device=dev)
    # 5. Pass B: the final tokens from pass A's rows.
    rows, weights, offsets, positions, kinds = pass_b(plan, centers, assign, opts.beta, st_locs,
                                                      dyn_locs, N)
    tokens = merge(rows_a[None], rows, weights, offsets, x.dtype)
    return Selection(tokens, positions, kinds, segments, extras)
