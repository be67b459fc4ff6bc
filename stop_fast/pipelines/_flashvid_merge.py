"""FlashVid's merges (SPEC §10.3d–e), batched over all frames and segments.

Temporal: every free token's best match among the free tokens of the previous frame of its
segment, the per-segment lower bound on kept tokens, and the tree averaging as a reverse scan
over frame offsets. Spatial: one padded DPC-kNN over every frame's pool of kept tokens.
"""
from __future__ import annotations

import math

import torch

from .dpc_knn import dpc_knn_batched

__all__ = ["temporal_merge", "spatial_merge"]


def temporal_merge(xf: torch.Tensor, xn: torch.Tensor, free: torch.Tensor, lay, B: int,
                   theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §10.3d. Returns (values (T, N, D) fp32 after tree averaging, pool (T, N) bool: the
    tokens Q_t that go on to step e; all N tokens of a one-frame segment)."""
    T, N, D = xf.shape
    dev = xf.device
    sig = torch.full((T, N), -1.0, device=dev)
    pi = torch.zeros(T, N, dtype=torch.int64, device=dev)
    if T > 1:
        # σ*[t, i] = max over free j of frame t−1; rows of a segment's first frame stay −1.
        cos = torch.bmm(xn[1:], xn[:-1].transpose(1, 2))                  # (T−1, N, N)
        cos.masked_fill_(~free[:-1, None, :], -math.inf)
        best, arg = cos.max(-1)                                           # first max: lower j
        ok = free[1:] & (lay.offset[1:, None] > 0) & torch.isfinite(best)
        sig[1:] = torch.where(ok, best, -1.0)
        pi[1:] = arg
    # Lower bound Λ = B·L kept tokens: else threshold at the (L·N − Λ)-th largest σ* of the
    # segment (as published, which keeps Λ + 1 with distinct values).
    merged = sig > theta
    kept = lay.seg_sum((~merged).sum(1))                                 # (S,)
    bound = B * lay.length
    kth = lay.length * N - bound
    padded = torch.cat([sig, sig.new_full((1, N), -math.inf)])[lay.frames].flatten(1)
    v = padded.sort(dim=1, descending=True).values.gather(1, (kth - 1).clamp(min=0)[:, None])
    low_thr = torch.where(kth > 0, v[:, 0].clamp(min=-1.0 + 1e-6), math.inf)
    thr = torch.where(kept < bound, low_thr, theta)
    merged = sig > thr[lay.seg_of][:, None]

    # Tree averaging. Parents only gain from the next frame, so scanning offsets from the
    # longest segment's end down to 1, with every segment at once, lets each merged token pass
    # on a finished sum; n counts direct children only (note 5). Kept tokens divide at the end.
    V = torch.cat([xf.reshape(T * N, D), xf.new_zeros(1, D)])           # last row: discard
    n = torch.ones(T * N + 1, device=dev)
    loc = torch.arange(N, device=dev)
    flat_merged = merged.reshape(-1)
    for o in range(lay.max_len - 1, 0, -1):
        fr = lay.at_offset[o]
        rows = (fr[:, None] * N + loc).reshape(-1)
        tgt = ((fr - 1)[:, None] * N + pi[fr]).reshape(-1)
        tgt = torch.where(flat_merged[rows], tgt, T * N)
        V.index_add_(0, tgt, V[rows])
        n.index_add_(0, tgt, torch.ones_like(tgt, dtype=n.dtype))
    values = (V[:-1] / n[:-1, None]).view(T, N, D)
    pool = (free & ~merged) | (lay.len_t == 1)[:, None]
    return values, pool


def spatial_merge(values: torch.Tensor, pool: torch.Tensor, lay, n_m: int, max_k: int,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPEC §10.3e. Returns per frame N output slots: (tokens (T, N, D) fp32, locations (T, N)
    int64, used (T, N) bool). Clustered frames fill slots 0 … c_t − 1 with the cluster means
    in descending centre-score order; pass-through frames fill 0 … |Q_t| − 1 ascending."""
    T, N, D = values.shape
    dev = values.device
    size = pool.sum(1)                                                    # |Q_t|
    n_cur = lay.seg_sum(size)
    # q and c_t in float64 like the host formula; a segment with an empty pool keeps nothing.
    q = (n_m * lay.length).double() / n_cur.clamp(min=1).double()
    q_t = q[lay.seg_of]
    c = torch.ceil(size.double() * q_t).long()
    clus = (c > 0) & (q_t < 1)
    # The pool of each frame compacted to the front, ascending (stable sort puts it first).
    loc = torch.sort((~pool).to(torch.uint8), dim=1, stable=True).indices
    tok = values.gather(1, loc[..., None].expand(T, N, D))
    k_cap = min(max_k, N)
    counts = torch.where(clus, size, 0)
    centers, assign = dpc_knn_batched(tok, counts, torch.where(clus, c, 0), N,
                                      torch.where(clus, c.clamp(max=k_cap), 0), k_cap,
                                      by_score=True)
    member = (torch.arange(N, device=dev) < counts[:, None]).float()
    sums = torch.zeros_like(tok).scatter_add_(1, assign[..., None].expand(T, N, D),
                                              tok * member[..., None])
    num = torch.zeros(T, N, device=dev).scatter_add_(1, assign, member)
    means = sums / num.clamp(min=1)[..., None]
    c_loc = loc.gather(1, centers.clamp(max=N - 1))
    out_tok = torch.where(clus[:, None, None], means, tok)
    out_loc = torch.where(clus[:, None], c_loc, loc)
    used = torch.arange(N, device=dev) < torch.where(clus, c, size)[:, None]
    return out_tok, out_loc, used
