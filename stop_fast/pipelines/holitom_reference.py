"""Loop-based float64 twin of HoliTom + SToP (SPEC §6), written step by step as SPEC says.

The ground truth for :func:`stop_fast.pipelines.holitom.holitom_fast`; slow on purpose.
Budgets come from the same host helpers as the fast path, so both round identically.
"""
from __future__ import annotations

import torch

from .. import reference as R
from .base import KIND_DYNAMIC, KIND_STATIC, Selection, Video
from .holitom import Options, holitom_adjusted_ratio, holitom_budgets

__all__ = ["holitom_twin", "holitom_segments"]


def holitom_segments(cos: torch.Tensor, tau: float = 0.8, max_window: int | None = None,
                     ) -> tuple[list[tuple[int, int]], int]:
    """SPEC §6.1: HoliTom's temporal segmentation as a dynamic programme (Tango Eq. 2–3).

    cos (T−1, N): adjacent-frame cosine similarity (raw, no sink term). A window of w frames
    merged into one removes g(b, e) = (#locations static over it)·(e − b) tokens. Returns
    (segments, total_reduced): inclusive (start, end) frame pairs in order, covering 0 … T−1.
    """
    T = cos.shape[0] + 1
    W = T if max_window is None else max_window
    above = cos.double() > tau
    dp = [0] * T          # dp[e]: best reduction for frames 0 … e
    start = [0] * T       # start of the last segment in the best split of 0 … e

    def prev(e: int) -> int:
        return 0 if e < 0 else dp[e]

    for e in range(T):
        best, best_start = prev(e - 1), e
        for w in range(2, min(e + 1, W) + 1):
            b = e - w + 1
            gain = int(above[b:e].all(dim=0).sum()) * (e - b)
            cand = prev(b - 1) + gain
            if cand > best:
                best, best_start = cand, b
        dp[e], start[e] = best, best_start
    segments, e = [], T - 1
    while e >= 0:
        segments.append((start[e], e))
        e = start[e] - 1
    return segments[::-1], dp[T - 1]


def holitom_twin(video: Video, opts: Options) -> Selection:
    """SPEC §6, segment by segment: DP segmentation, static merge (DPC-KNN), dynamic top-k."""
    features, attention, sink = video.features, video.attention, video.sink
    T, N, D = features.shape
    cos = R.adjacent_cosine(features) if T > 1 else features.new_zeros(0, N)
    segments, reduced = holitom_segments(cos, opts.tau, opts.max_window)
    r_adj = holitom_adjusted_ratio(opts.retention_ratio, T, N, reduced)
    bounds = torch.tensor(segments, dtype=torch.int64)
    static = R.segment_static_mask(features, sink, bounds, opts.tau, opts.mu_t).cpu()
    s64 = sink.double().cpu()
    rows, positions, kinds = [], [], []
    for s, (b, e) in enumerate(segments):
        st = [i for i in range(N) if static[s, i]]
        dyn = [i for i in range(N) if not static[s, i]]
        c_n, k_d = holitom_budgets(len(st), len(dyn), r_adj)
        if c_n > 0:
            toks = features[b:e + 1, st].double().mean(dim=0).cpu()        # (n_st, D)
            centers, assign = R.dpc_knn(toks, c_n, min(opts.K, c_n), opts.center_penalty * s64[st])
            for ci, c in enumerate(centers.tolist()):
                mem = [j for j in range(len(st)) if int(assign[j]) == ci and j != c]
                merged = (opts.beta * toks[c] + (1 - opts.beta) * toks[mem].mean(dim=0)
                          if mem else toks[c])
                rows.append(merged)
                positions.append((b, st[c]))
                kinds.append(KIND_STATIC)
        for t in range(b, e + 1):
            if k_d == 0:
                continue
            pick = R.penalized_topk(attention[t, dyn][None], sink[dyn], k_d, opts.mu_s)[0].tolist()
            for i in sorted(dyn[p] for p in pick):
                rows.append(features[t, i].double().cpu())
                positions.append((t, i))
                kinds.append(KIND_DYNAMIC)
    tokens = torch.stack(rows) if rows else torch.empty(0, D, dtype=torch.float64)
    return Selection(tokens, torch.tensor(positions, dtype=torch.int64).view(-1, 2),
                     torch.tensor(kinds, dtype=torch.int8), segments,
                     {"adjusted_ratio": r_adj, "reduced": reduced})
