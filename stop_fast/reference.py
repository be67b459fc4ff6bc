"""Pure-PyTorch reference of the SToP algorithms (the contract in SPEC.md, written literally).

Every function here materializes what it needs, may loop, and computes in float64, so it is
the ground truth the fast paths (torch backend, Triton kernels, vectorized pipelines) are
tested against. Nothing here is meant to be fast. Inputs are assumed valid: the public API in
:mod:`stop_fast.api` checks them before dispatching here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "column_mean_attention",
    "sink_score",
    "penalized_topk",
    "gather_topk",
    "adjacent_cosine",
    "static_mask",
    "segment_static_mask",
    "holitom_segments",
    "dpc_knn",
]


def column_mean_attention(q: torch.Tensor, k: torch.Tensor, scale: float | None = None,
                          lse: torch.Tensor | None = None) -> torch.Tensor:
    """SPEC §2: mean over heads and queries of softmax(q kᵀ · scale).

    q (B, H, Nq, d), k (B, H, Nk, d), any float dtype, any strides. ``lse`` is accepted for
    signature parity with the fast paths and ignored: the reference always recomputes the
    softmax. Returns (B, Nk) float32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) * scale
    probs = torch.softmax(scores, dim=-1)
    return probs.mean(dim=(1, 2)).float()


def sink_score(attn: torch.Tensor, gamma: float = 1.1, eps: float = 1e-12) -> torch.Tensor:
    """SPEC §3 (paper Eq. 4): per-location sink score in [0, 1].

    attn (T, N) non-negative. m = mean over frames, m^γ min-max normalized; constant m gives
    zeros. Returns (N,) float32.
    """
    m = attn.double().mean(dim=0)
    p = m.pow(gamma)
    lo, hi = p.min(), p.max()
    return ((p - lo) / (hi - lo + eps)).float()


def _ranked(scores: torch.Tensor) -> torch.Tensor:
    # Stable descending sort: equal scores keep ascending index order (ties to the lower index).
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def penalized_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, mu_s: float) -> torch.Tensor:
    """SPEC §4 (paper Eq. 5): per frame, the k locations with the largest a − μ_s·s.

    attn (T, N), sink (N,). Returns (T, k) int64, by descending penalized score, exact ties
    toward the lower index.
    """
    scores = attn.double() - mu_s * sink.double()
    return _ranked(scores)[:, :k].contiguous()


def gather_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, features: torch.Tensor,
                mu_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`penalized_topk` plus the selected feature rows.

    features (T, N, D). Returns (indices (T, k) int64, tokens (T, k, D) in features' dtype),
    tokens[t, j] = features[t, indices[t, j]].
    """
    idx = penalized_topk(attn, sink, k, mu_s)
    tokens = torch.stack([features[t, idx[t]] for t in range(features.shape[0])])
    return idx, tokens.contiguous()


def adjacent_cosine(x: torch.Tensor) -> torch.Tensor:
    """SPEC §5: c[t, i] = <x̂[t, i], x̂[t+1, i]> with x̂ = x / max(‖x‖₂, 1e-12).

    x (T, N, D). A zero vector has cosine 0 with everything. Returns (T−1, N) float32.
    """
    xn = F.normalize(x.double(), dim=-1, eps=1e-12)
    return (xn[:-1] * xn[1:]).sum(dim=-1).float()


def static_mask(x: torch.Tensor, sink: torch.Tensor, tau: float, mu_t: float) -> torch.Tensor:
    """SPEC §5 (paper Eq. 6): static[t, i] = c[t, i] + μ_t·s_i > τ. Returns (T−1, N) bool."""
    c = adjacent_cosine(x).double()
    return (c + mu_t * sink.double()) > tau


def segment_static_mask(x: torch.Tensor, sink: torch.Tensor, bounds: torch.Tensor, tau: float,
                        mu_t: float) -> torch.Tensor:
    """SPEC §5, segment form: location i is static in [b, e] iff static[t, i] for t = b … e−1.

    bounds (S, 2) int64 rows [b, e] with 0 <= b <= e < T. A length-1 segment (b == e) has
    no static location. Returns (S, N) bool.
    """
    st = static_mask(x, sink, tau, mu_t)
    out = torch.zeros(bounds.shape[0], x.shape[1], dtype=torch.bool)
    for s, (b, e) in enumerate(bounds.tolist()):
        if e > b:
            out[s] = st[b:e].all(dim=0)
    return out.to(x.device)


def holitom_segments(cos: torch.Tensor, tau: float = 0.8, max_window: int | None = None,
                     ) -> tuple[list[tuple[int, int]], int]:
    """SPEC §6.1: HoliTom's temporal segmentation as a dynamic programme (Tango Eq. 2–3).

    cos (T−1, N): adjacent-frame cosine similarity (raw, no sink term). A window of w frames
    merged into one removes g(b, e) = (#locations static over it)·(e − b) tokens. Returns
    (segments, total_reduced): segments are inclusive (start, end) frame pairs in order,
    covering 0 … T−1.
    """
    T = cos.shape[0] + 1
    W = T if max_window is None else max_window
    above = (cos.double() > tau)
    dp = [0] * T          # dp[e]: best reduction for frames 0 … e
    start = [0] * T       # start of the last segment in the best split of 0 … e

    def prev(e: int) -> int:
        return 0 if e < 0 else dp[e]

    for e in range(T):
        best, best_start = prev(e - 1), e
        for w in range(2, min(e + 1, W) + 1):
            b = e - w + 1
            stay = above[b:e].all(dim=0)
            gain = int(stay.sum()) * (e - b)
            cand = prev(b - 1) + gain
            if cand > best:
                best, best_start = cand, b
        dp[e], start[e] = best, best_start
    segments = []
    e = T - 1
    while e >= 0:
        segments.append((start[e], e))
        e = start[e] - 1
    return segments[::-1], dp[T - 1]


def dpc_knn(x: torch.Tensor, n_centers: int, k: int, penalty: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §8: density-peaks clustering with k nearest neighbours.

    x (n, D). dist = cdist(x, x)/√D; ρ_i = exp(−mean of the k smallest dist_i², self
    included); δ_i = min dist to any token of higher density (equal density: the lower index
    counts as higher), or the largest distance overall if there is none. Centres are the
    ``n_centers`` highest ρ·δ − penalty (ties to the lower index); every other token joins
    its nearest centre (ties to the lower centre index), each centre joins itself.

    Returns (centers (c,) int64 sorted ascending, assign (n,) int64 position in ``centers``).
    """
    n, D = x.shape
    xd = x.double()
    # Exact differences, not the matmul shortcut cdist takes for n > 25: identical tokens must
    # be at distance 0 so that their density ties, and ties go to the lower index.
    dist = torch.cdist(xd, xd, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(D)
    knn = torch.sort(dist, dim=-1).values[:, :k]
    rho = torch.exp(-(knn ** 2).mean(dim=-1))
    dmax = dist.max()
    delta = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        higher = [j for j in range(n) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta[i] = dist[i, higher].min() if higher else dmax
    score = rho * delta
    if penalty is not None:
        score = score - penalty.double()
    centers = torch.sort(_ranked(score)[:n_centers]).values
    assign = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        assign[i] = int(torch.argmin(dist[i, centers]))
    assign[centers] = torch.arange(len(centers))
    return centers.to(x.device), assign.to(x.device)


# ---- pipeline twins below (SPEC §6, §7): loop-based, literal ----
# Twins of stop_fast.pipelines: each step of SPEC §6/§7 as written, per frame and per
# segment, in float64, built from the reference primitives above. Budgets come from the same
# host helpers as the fast pipelines, so both round identically.


def _pruned(rows, positions, kinds, sink, features, method, r, **extra):
    from .pipelines.common import PrunedVideo

    dev, D = features.device, features.shape[-1]
    tokens = (torch.stack(rows) if rows else torch.empty(0, D, dtype=torch.float64))
    return PrunedVideo(tokens.to(device=dev, dtype=features.dtype),
                       torch.tensor(positions, dtype=torch.int64).view(-1, 2).to(dev),
                       torch.tensor(kinds, dtype=torch.int8).to(dev), sink.to(dev), method, r, **extra)


def visionzip_prune(features: torch.Tensor, attention: torch.Tensor, metric: torch.Tensor,
                    retention_ratio: float, *, use_stop: bool = True, mu_s: float = 0.03,
                    gamma: float = 1.1, num_sink_skip: int = 20):
    """SPEC §7, frame by frame: dominant top-D_n by ã, then contextual targets and merges.

    Contextual targets: start at j·stride in the remaining list and move forward past sink
    locations (the ``num_sink_skip`` highest sink scores, ties to the lower index) and
    already-taken targets; if none is left ahead, take the lowest not-yet-taken sink position.
    Returns a PrunedVideo (kinds 0 dominant, 1 contextual).
    """
    from .pipelines.common import visionzip_budget

    T, N, D = features.shape
    sink = sink_score(attention, gamma) if use_stop else torch.zeros(N, device=attention.device)
    mu = mu_s if use_stop else 0.0
    n_dom, n_ctx = visionzip_budget(N, retention_ratio)
    skip = set(_ranked(sink.double())[:num_sink_skip].tolist()) if use_stop else set()
    rows, positions, kinds = [], [], []
    for t in range(T):
        x = features[t].double()
        dom = sorted(penalized_topk(attention[t:t + 1], sink, n_dom, mu)[0].tolist()) if n_dom else []
        rem = [i for i in range(N) if i not in dom]
        R, stride = len(rem), max(1, len(rem) // n_ctx)
        chosen: list[int] = []
        for j in range(n_ctx):
            p = j * stride
            while p < R and (rem[p] in skip or p in chosen):
                p += 1
            if p == R:
                p = next(q for q in range(R) if rem[q] in skip and q not in chosen)
            chosen.append(p)
        targets = [rem[p] for p in chosen]
        mn = F.normalize(metric[t].double(), dim=-1)
        members: list[list[int]] = [[] for _ in targets]
        for i in rem:
            if i not in targets:
                sims = [float(mn[i] @ mn[g]) for g in targets]
                members[sims.index(max(sims))].append(i)      # ties: the earlier target
        for i in dom:
            rows.append(x[i])
            positions.append((t, i))
            kinds.append(0)
        for g, mem in zip(targets, members):
            rows.append(x[g] + x[mem].mean(dim=0) if mem else x[g])
            positions.append((t, g))
            kinds.append(1)
    return _pruned(rows, positions, kinds, sink, features, "visionzip", retention_ratio)


def holitom_prune(features: torch.Tensor, attention: torch.Tensor, retention_ratio: float, *,
                  use_stop: bool = True, mu_s: float = 0.04, mu_t: float = 0.07, gamma: float = 1.1,
                  tau: float = 0.8, beta: float = 0.6, K: int = 7, max_window: int | None = None,
                  center_penalty: float = 0.3):
    """SPEC §6, segment by segment: DP segmentation, static merge (DPC-KNN), dynamic top-k.

    Returns a PrunedVideo (kinds 2 static, 3 dynamic) with segments, adjusted_ratio, reduced.
    """
    from .pipelines.common import holitom_adjusted_ratio, holitom_budgets

    T, N, D = features.shape
    sink = sink_score(attention, gamma) if use_stop else torch.zeros(N, device=attention.device)
    mus, mut, lam = (mu_s, mu_t, center_penalty) if use_stop else (0.0, 0.0, 0.0)
    segments, reduced = holitom_segments(adjacent_cosine(features), tau, max_window)
    r_adj = holitom_adjusted_ratio(retention_ratio, T, N, reduced)
    bounds = torch.tensor(segments, dtype=torch.int64)
    static = segment_static_mask(features, sink, bounds, tau, mut).cpu()
    s64 = sink.double()
    rows, positions, kinds = [], [], []
    for s, (b, e) in enumerate(segments):
        st = [i for i in range(N) if static[s, i]]
        dyn = [i for i in range(N) if not static[s, i]]
        c_n, k_d = holitom_budgets(len(st), len(dyn), r_adj)
        if c_n > 0:
            toks = features[b:e + 1, st].double().mean(dim=0)              # (n_st, D)
            centers, assign = dpc_knn(toks, c_n, min(K, c_n), lam * s64[st])
            for ci, c in enumerate(centers.tolist()):
                mem = [j for j in range(len(st)) if int(assign[j]) == ci and j != c]
                merged = beta * toks[c] + (1 - beta) * toks[mem].mean(dim=0) if mem else toks[c]
                rows.append(merged)
                positions.append((b, st[c]))
                kinds.append(2)
        for t in range(b, e + 1):
            if k_d == 0:
                continue
            pick = penalized_topk(attention[t, dyn][None], sink[dyn], k_d, mus)[0].tolist()
            for i in sorted(dyn[p] for p in pick):
                rows.append(features[t, i].double())
                positions.append((t, i))
                kinds.append(3)
    return _pruned(rows, positions, kinds, sink, features, "holitom", retention_ratio,
                   segments=segments, adjusted_ratio=float(r_adj), reduced=reduced)
