"""Loop-based float64 twin of FlashVid + SToP (SPEC §10), written step by step from the text.

Also holds :func:`dpc_knn_ranked`, the literal DPC-kNN of SPEC §8 with the centres listed by
descending score, which the FlashVid and PruneVid twins share. Budgets and the cut rule on
host floats come from :mod:`.flashvid`, so both paths round identically.
"""
from __future__ import annotations

import math

import torch

from ..reference import minmax_power
from .base import KIND_DIVERSE, KIND_MERGED, SINK_EPS, Selection, Video
from .flashvid import Options, cut_segments, flashvid_budget

__all__ = ["flashvid_twin", "dpc_knn_ranked"]


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def dpc_knn_ranked(x: torch.Tensor, n_centers: int, k: int) -> tuple[list[int], list[int]]:
    """SPEC §8 / conventions of §9–§11 in float64: (centres by descending ρ·δ, ties to the
    lower index; assign[i] = position in that list of i's nearest centre, ties to the earlier
    centre, each centre its own). ρ and ρ·δ are compared through their logarithms (the same
    order; ρ = exp(−mean dist²) itself underflows for far-apart tokens)."""
    n, D = x.shape
    xd = x.double()
    dist = torch.cdist(xd, xd, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(D)
    log_rho = -(torch.sort(dist, dim=1).values[:, :k] ** 2).mean(dim=1)
    dmax = dist.max()
    idx = torch.arange(n)
    score = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        denser = (log_rho > log_rho[i]) | ((log_rho == log_rho[i]) & (idx < i))
        delta = dist[i, denser].min() if denser.any() else dmax
        score[i] = log_rho[i] + torch.log(delta)
    centers = sorted(range(n), key=lambda i: (-float(score[i]), i))[:n_centers]
    near = dist[:, centers].argmin(dim=1).tolist()          # first minimum: the earlier centre
    assign = [int(a) for a in near]
    for pos, c in enumerate(centers):
        assign[c] = pos
    return centers, assign


def _adts(xt: torch.Tensor, w: torch.Tensor, n_a: int) -> list[int]:
    N = xt.shape[0]
    u = _unit(xt)
    cos = u @ u.T
    cos.fill_diagonal_(1.0)
    delta = (1.0 - cos) * w[None, :]
    if n_a == 0:
        return []
    col = torch.sort(delta, dim=0).values[min(1, N - 1)]       # second smallest of each column
    picks = [int(torch.argmax(col))]
    while len(picks) < n_a:
        score = delta[picks].min(dim=0).values
        score[picks] = -math.inf                                # never the same token twice
        picks.append(int(torch.argmax(score)))
    return sorted(picks)


def flashvid_twin(video: Video, opts: Options) -> Selection:
    x = video.features.detach().double().cpu()
    a = video.attention.detach().double().cpu()
    T, N, D = x.shape
    B, n_a, n_m = flashvid_budget(N, opts)
    f = _unit(x.mean(dim=1))
    segs = cut_segments([float(f[t] @ f[t + 1]) for t in range(T - 1)], opts.tau_seg,
                        opts.min_segments)
    out = []                                                    # (t·N + i, kind, value)
    for b, e in segs:
        L = e - b + 1
        # a. sink score of the segment (or the video's) and STSP; none for a one-frame video.
        if opts.sink_scope == "segment":
            s = minmax_power(a[b:e + 1].mean(dim=0), opts.gamma, SINK_EPS)
        else:
            s = video.sink.double().cpu()
        mu = opts.mu_s if T > 1 else 0.0
        at = a[b:e + 1] - mu * s
        # b. ADTS per frame.
        g = x[b:e + 1].reshape(-1, D).mean(dim=0)
        picks = {}
        for t in range(b, e + 1):
            picks[t] = _adts(x[t], at[t - b] * (x[t] @ g), n_a)
            out += [(t * N + i, KIND_DIVERSE, x[t, i]) for i in picks[t]]
        if n_m == 0:
            continue
        free = {t: [i for i in range(N) if i not in picks[t]] for t in range(b, e + 1)}
        if L == 1:
            Q = {b: [(i, x[b, i]) for i in range(N)]}
        else:
            # d. best match in the previous frame among its free tokens.
            sig = torch.full((L, N), -1.0, dtype=torch.float64)
            pi = torch.zeros(L, N, dtype=torch.int64)
            for t in range(b + 1, e + 1):
                prev = free[t - 1]
                if not prev:
                    continue
                for i in free[t]:
                    c = _unit(x[t - 1, prev]) @ _unit(x[t, i])
                    j = int(torch.argmax(c))                    # first maximum: lower j
                    sig[t - b, i], pi[t - b, i] = c[j], prev[j]
            merged = sig > opts.merge_threshold
            bound = B * L
            if L * N - int(merged.sum()) < bound:
                if L * N - bound > 0:
                    v = float(torch.sort(sig.flatten(), descending=True).values[L * N - bound - 1])
                    merged = sig > max(v, -1.0 + 1e-6)
                else:
                    merged = torch.zeros_like(merged)
            V = x[b:e + 1].clone()
            n = torch.ones(L, N, dtype=torch.float64)
            for t in range(e, b - 1, -1):
                m = merged[t - b]
                V[t - b, ~m] /= n[t - b, ~m, None]                # kept: divide by the count
                if t > b:                                       # merged: pass the sum, count 1
                    V[t - b - 1].index_add_(0, pi[t - b, m], V[t - b, m])
                    n[t - b - 1].index_add_(0, pi[t - b, m], torch.ones(int(m.sum()),
                                                                         dtype=torch.float64))
            Q = {t: [(i, V[t - b, i]) for i in free[t] if not merged[t - b, i]]
                 for t in range(b, e + 1)}
        # e. spatial merging per frame.
        n_cur = sum(len(q) for q in Q.values())
        if n_cur == 0:
            continue
        q = (n_m * L) / n_cur
        for t, pool in Q.items():
            c_t = math.ceil(len(pool) * q)
            if c_t > 0 and q < 1:
                toks = torch.stack([v for _, v in pool])
                centers, assign = dpc_knn_ranked(toks, c_t, min(c_t, opts.max_k))
                for pos, c in enumerate(centers):
                    members = [m for m in range(len(pool)) if assign[m] == pos]
                    out.append((t * N + pool[c][0], KIND_MERGED, toks[members].mean(dim=0)))
            else:
                out += [(t * N + i, KIND_MERGED, v) for i, v in pool]
    # 4. ascending position, ADTS before merged at an equal position (stable).
    out.sort(key=lambda r: (r[0], r[1] != KIND_DIVERSE))
    dev = video.features.device
    pos = torch.tensor([[p // N, p % N] for p, _, _ in out], dtype=torch.int64).view(-1, 2)
    tokens = torch.stack([v for _, _, v in out]) if out else torch.empty(0, D, dtype=torch.float64)
    return Selection(tokens.to(device=dev, dtype=video.features.dtype), pos.to(dev),
                     torch.tensor([k for _, k, _ in out], dtype=torch.int8, device=dev),
                     segments=segs, extras={"budget": (B, n_a, n_m)})
