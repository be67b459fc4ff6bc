"""FlashVid's merges (SPEC §10.3d–f) on Gram matrices, batched over all frames and segments.

Temporal: each free token's best match in the previous frame comes from the cross Gram
(kernels/adts.py); here the per-segment lower bound picks the merged tokens, and the merge
trees are resolved on indices only: every token's root by pointer jumping, every root's count
1 + its direct children (note 5). A root's value, its subtree's sum over that count, is then
one gather-sum over the features, which also copies the ADTS tokens: the only pass over the
features after the Grams. Spatial: DPC-kNN over each frame's pool from the Gram of the pooled
values, and the output tokens (cluster means, pass-through and ADTS tokens) gathered in LLM
order in the features' dtype, in one more gather-sum over the pooled values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _merge_ops as M
from .dpc_knn import dpc_knn_gram

__all__ = ["Tree", "merge_tree", "pooled_values", "spatial_output", "temporal_merge"]


@dataclass
class Tree:
    """The temporal merge of a video, on indices (all (T, N) but ``sizes`` (T,)): pool; root
    (the token number of each token's tree root); count (1 + direct merged children); rank
    (place among the frame's pool, −1 off it); loc (the pool's locations ascending, then −1);
    sizes |Q_t|."""

    pool: torch.Tensor
    root: torch.Tensor
    count: torch.Tensor
    rank: torch.Tensor
    loc: torch.Tensor
    sizes: torch.Tensor


def merge_tree(best: torch.Tensor, arg: torch.Tensor, free: torch.Tensor, lay, B: int,
               theta: float, backend: str = "torch") -> Tree:
    """SPEC §10.3d from the best matches (T − 1, N) of frames 1 … T − 1 (kernels/adts.py). On
    ``backend="triton"`` one kernel (kernels/flashvid_tree.py), of which this is the twin."""
    if backend == "triton":
        return Tree(*M.kernel("flashvid_tree")(best, arg, free, lay.bounds, B, theta))
    T, N = free.shape
    dev = free.device
    sig = torch.full((T, N), -1.0, device=dev)
    pi = torch.zeros(T, N, dtype=torch.int64, device=dev)
    if T > 1:
        # σ* = −1 for picked tokens, a segment's first frame, and no free token to match
        ok = free[1:] & (lay.offset[1:, None] > 0) & torch.isfinite(best)
        sig[1:] = torch.where(ok, best, -1.0)
        pi[1:] = arg
    # Lower bound Λ = B·L kept tokens: else threshold at the (L·N − Λ)-th largest σ* of the
    # segment (as published, which keeps Λ + 1 with distinct values).
    kept = lay.seg_sum((sig <= theta).sum(1))                             # (S,)
    bound = B * lay.length
    kth = lay.length * N - bound
    padded = torch.cat([sig, sig.new_full((1, N), -math.inf)])[lay.frames].flatten(1)
    v = padded.sort(dim=1, descending=True).values.gather(1, (kth - 1).clamp(min=0)[:, None])
    low_thr = torch.where(kth > 0, v[:, 0].clamp(min=-1.0 + 1e-6), math.inf)
    thr = torch.where(kept < bound, low_thr, theta)
    merged = sig > thr[lay.seg_of][:, None]
    pool = (free & ~merged) | (lay.len_t == 1)[:, None]
    # Roots: a merged token's parent is its match in the previous frame; chains are at most
    # max_len − 1 long, so ⌈log2⌉ rounds of pointer jumping reach every root.
    tok = torch.arange(T * N, device=dev)
    flat = merged.reshape(-1)
    parent = torch.where(flat, tok - N - tok % N + pi.reshape(-1), tok)
    root = parent
    for _ in range(max(0, math.ceil(math.log2(max(lay.max_len - 1, 1))))):
        root = root[root]
    count = torch.ones(T * N + 1, device=dev).scatter_add_(
        0, torch.where(flat, parent, T * N), torch.ones(T * N, device=dev))[:T * N]
    sizes = pool.sum(1)
    rank = torch.where(pool, pool.cumsum(1) - 1, -1)
    loc = torch.sort((~pool).to(torch.uint8), dim=1, stable=True).indices
    loc = torch.where(torch.arange(N, device=dev) < sizes[:, None], loc, -1)
    return Tree(pool, root.view(T, N), count.view(T, N), rank, loc, sizes)


def pooled_values(x: torch.Tensor, tree: Tree, free: torch.Tensor, sizes: list[int], lay,
                  n_a: int, backend: str):
    """One pass over x: the tree averages of the pool tokens (frame by frame, ascending
    location), then the ADTS tokens of multi-frame segments (their own values; a one-frame
    segment's ADTS tokens are in its pool). Returns (values (rows, D) float32, own (T·N,)
    int64: the row of each token that has one, −1 elsewhere)."""
    T, N, _ = x.shape
    n_pool = sum(sizes)
    p_start, a_start = [0] * T, [0] * T
    # (rows: the pool, the ADTS tokens, then max(sizes) zero rows of slack for run_grams)
    for t in range(1, T):
        p_start[t] = p_start[t - 1] + sizes[t - 1]
        a_start[t] = a_start[t - 1] + (n_a if lay.lengths_t[t - 1] > 1 else 0)
    rows = n_pool + a_start[-1] + (n_a if lay.lengths_t[-1] > 1 else 0) + max(sizes)
    p_off, a_off = M.to_device(x.device, p_start, [n_pool + a - N for a in a_start])
    # ADTS tokens of multi-frame segments: rank among the frame's picks, after the pool rows
    a_rank = torch.where(free | (lay.len_t == 1)[:, None], -1 - a_off[:, None],
                         (~free).cumsum(1) + (N - 1))
    own = torch.where(tree.pool, tree.rank + p_off[:, None], a_rank + a_off[:, None]).view(-1)
    root = tree.root.view(-1)
    # a merged token adds into its root's row, weighted by 1 / (1 + the root's direct children)
    weight = tree.count.view(-1)[root].reciprocal()
    return M.scatter_rows(x, own[root], weight, rows, backend), own


def spatial_output(values, own, tree: Tree, picks, sizes: list[int], lay, n_m: int,
                   max_k: int, dim: int, out_dtype, backend: str):
    """SPEC §10.3e–f and 4. ``sizes``: |Q_t| per frame (host ints); pooled rows of frame t
    start at Σ sizes[:t]. Returns (tokens (M, D) in LLM order, keys (M,) int64 ascending:
    2·(t·N + i) for ADTS tokens, + 1 for merged ones)."""
    T, N = tree.pool.shape
    n_a = picks.shape[1]
    dev = values.device
    # Host budgets in float64, as published: q = n_M·L / n_cur per segment, c_t = ⌈|Q_t|·q⌉.
    n_out, clus = [], []
    for (b, e), L in zip(lay.segs, lay.lengths):
        n_cur = sum(sizes[b:e + 1])
        q = (n_m * L) / n_cur if n_cur else 1.0
        for t in range(b, e + 1):
            c = math.ceil(sizes[t] * q)
            clus.append(c > 0 and q < 1)
            n_out.append(c if clus[-1] else sizes[t])
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    n_pool, n_merged, R = sum(sizes), sum(n_out), max(n_out, default=0)
    cf = [t for t in range(T) if clus[t]]
    out_loc = tree.loc[:, :R]                 # pass-through: the pool token's own location
    n_max = max(sizes, default=0)
    assign = tree.loc.new_zeros(T, n_max)
    if cf:
        # DPC-kNN over the pool of every clustered frame at once (consecutive pooled rows).
        gram = M.run_grams(values, [starts[t] for t in cf], [sizes[t] for t in cf], backend)
        frames_c, size_c, c_t = M.to_device(dev, cf, [sizes[t] for t in cf],
                                            [n_out[t] for t in cf])
        k_cap = min(max_k, N)
        c_max = max(n_out[t] for t in cf)
        valid = torch.arange(gram.shape[1], device=dev) < size_c[:, None]
        centers, asg = dpc_knn_gram(gram, valid, c_t, c_max, c_t.clamp(max=k_cap), k_cap, dim,
                                    backend)
        assign[frames_c, :asg.shape[1]] = asg
        out_loc = out_loc.clone()
        out_loc[frames_c, :c_max] = tree.loc[frames_c].gather(1, centers.clamp(max=N - 1))
    # Outputs before sorting: the T·n_A ADTS tokens, then each frame's merged tokens (frame
    # by frame; clusters in descending centre score, pass-through tokens ascending).
    nout_t, m_first, size_t, start_t, clus_t = M.to_device(
        dev, n_out, [T * n_a + sum(n_out[:t]) for t in range(T)], sizes, starts, clus)
    frames = torch.arange(T, device=dev)
    m_frame = torch.repeat_interleave(frames, nout_t, output_size=n_merged)   # host-known size
    m_rank = torch.arange(T * n_a, T * n_a + n_merged, device=dev) - m_first[m_frame]
    adts_key = (frames[:, None] * N + picks).view(-1)
    keys = torch.cat([adts_key * 2, (m_frame * N + out_loc[m_frame, m_rank]) * 2 + 1])
    order = keys.argsort()                    # keys are unique: the order is the stable one
    pos_of = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=dev))
    # Members: an ADTS token is its own pooled row; a pooled row goes to its frame's cluster,
    # or passes through as one output.
    p_frame = torch.repeat_interleave(frames, size_t, output_size=n_pool)
    p_rank = torch.arange(n_pool, device=dev) - start_t[p_frame]
    p_out = m_first[p_frame] + torch.where(clus_t.bool()[p_frame], assign[p_frame, p_rank], p_rank)
    out_of = torch.cat([pos_of[:T * n_a], pos_of[p_out]])
    src_row = torch.cat([own[adts_key], torch.arange(n_pool, device=dev)])
    by_out = torch.sort(out_of, stable=True)
    ptr = torch.searchsorted(by_out.values, torch.arange(order.shape[0] + 1, device=dev))
    # a cluster is the plain mean of its members; copies have one member
    weight = (ptr[1:] - ptr[:-1]).float().reciprocal()[by_out.values]
    tokens = M.merge(values, src_row[by_out.indices], weight, ptr, out_dtype, backend)
    return tokens, keys[order]


def temporal_merge(xf, xn, free, lay, B: int, theta: float, backend: str = "torch"):
    """SPEC §10.3d straight from the features (for inspection and tests): (values (T, N, D)
    float32, the tree averages at the pool tokens and 0 elsewhere; pool (T, N) bool)."""
    T, N, D = xf.shape
    G, C, _ = M.frame_grams(xf, backend)
    best = arg = None
    if T > 1:
        u = 1.0 / G.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt().clamp_min(1e-12)
        cc = (C * u[1:, :, None] * u[:-1, None, :]).masked_fill_(~free[:-1, None, :], -math.inf)
        best, arg = cc.max(-1)
    tree = merge_tree(best, arg, free, lay, B, theta)
    pool = tree.pool.reshape(-1)
    own = torch.where(pool, torch.arange(T * N, device=xf.device), -1)
    root = tree.root.view(-1)
    values = M.scatter_rows(xf, torch.where(pool, own, T * N)[root],
                            tree.count.view(-1)[root].reciprocal(), T * N + 1, backend)[:T * N]
    return values.view(T, N, D) * tree.pool[..., None], tree.pool
