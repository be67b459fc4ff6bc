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

__all__ = ["Tree", "merge_tree", "pooled_values", "layout", "spatial_output", "temporal_merge"]


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


def merge_tree(best: torch.Tensor, arg: torch.Tensor, pick_row: torch.Tensor, lay, B: int,
               theta: float, backend: str = "torch") -> Tree:
    """SPEC §10.3d from the best matches (T − 1, N) of frames 1 … T − 1 and the ADTS rows
    (T, N) (< 0: unpicked) of kernels/adts.py. On ``backend="triton"`` one kernel
    (kernels/flashvid_tree.py), of which this is the twin."""
    if backend == "triton":
        return Tree(*M.kernel("flashvid_tree")(best, arg, pick_row, lay.bounds, B, theta))
    free = pick_row < 0
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
    padded = torch.cat([sig, torch.full((1, N), -math.inf, device=dev)])[lay.frames].flatten(1)
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


def pooled_values(x: torch.Tensor, tree: Tree, pick_row: torch.Tensor, sizes: list[int],
                  n_a: int, backend: str):
    """One pass over x into the rows of the spatial stage: first T·n_a rows for the ADTS
    tokens (row t·n_a + k: frame t's k-th pick; a one-frame segment's picks stay in its pool
    and leave theirs empty), then the pool tokens' tree averages frame by frame (ascending
    location), then, on the torch route, max(sizes) empty rows of slack for
    :func:`._merge_ops.run_grams`.
    Returns (values (rows, D) float32, own (T·N,) int64: the row of each token that has one)."""
    T, N, _ = x.shape
    starts = [T * n_a]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    p_off, = M.to_device(x.device, starts)
    own = torch.where(tree.pool, tree.rank + p_off[:, None], pick_row).view(-1)
    root = tree.root.view(-1)
    # a merged token adds into its root's row, weighted by 1 / (1 + the root's direct children)
    weight = tree.count.view(-1)[root].reciprocal()
    slack = max(sizes) if backend != "triton" else 0
    return M.scatter_rows(x, own[root], weight, T * n_a + sum(sizes) + slack, backend), own


def layout(picks, mloc, assign, own, n_out: list[int], sizes: list[int], clus: list[bool],
           backend: str):
    """SPEC §10.3f, 4: (keys (M,) ascending: 2·(t·N + i), + 1 for merged tokens; and the merge
    list (ptr (M + 1,), members, weights) that builds the tokens from the spatial stage's rows)
    (kernels/flashvid_layout.py, of which this is the torch twin)."""
    T, n_a = picks.shape
    N = own.shape[0] // T
    dev = picks.device
    out_base, pool_base, entry_base = [0] * T, [T * n_a] * T, [0] * T
    for t in range(1, T):
        out_base[t] = out_base[t - 1] + n_a + n_out[t - 1]
        pool_base[t] = pool_base[t - 1] + sizes[t - 1]
        entry_base[t] = entry_base[t - 1] + n_a + sizes[t - 1]
    n_merged, n_pool = sum(n_out), sum(sizes)
    Mo, E = T * n_a + n_merged, T * n_a + n_pool
    tabs = M.to_device(dev, n_out, sizes, clus, out_base, pool_base, entry_base)
    if backend == "triton":
        return M.kernel("flashvid_layout")(picks, mloc, assign, own, *tabs, Mo, E)
    nout_t, size_t, clus_t, _, pool_t, _ = tabs
    frames = torch.arange(T, device=dev)
    m_first = nout_t.cumsum(0) - nout_t
    m_frame = torch.repeat_interleave(frames, nout_t, output_size=n_merged)   # host-known size
    m_rank = torch.arange(n_merged, device=dev) - m_first[m_frame]
    adts_key = (frames[:, None] * N + picks).view(-1)
    keys = torch.cat([adts_key * 2, (m_frame * N + mloc[m_frame, m_rank]) * 2 + 1])
    order = keys.argsort()                    # keys are unique: the order is the stable one
    pos_of = torch.empty_like(order).scatter_(0, order, torch.arange(Mo, device=dev))
    # Members: an ADTS token is its own row; a pooled row goes to its frame's cluster, or
    # passes through as one output.
    p_frame = torch.repeat_interleave(frames, size_t, output_size=n_pool)
    p_rank = torch.arange(n_pool, device=dev) - (size_t.cumsum(0) - size_t)[p_frame]
    p_col = torch.where(clus_t[p_frame] != 0, assign[p_frame, p_rank], p_rank)
    out_of = torch.cat([pos_of[:T * n_a], pos_of[T * n_a + m_first[p_frame] + p_col]])
    src = torch.cat([own[adts_key], pool_t[p_frame] + p_rank])
    by_out = torch.sort(out_of, stable=True)
    ptr = torch.searchsorted(by_out.values, torch.arange(Mo + 1, device=dev))
    # a cluster is the plain mean of its members; copies have one member
    weight = (ptr[1:] - ptr[:-1]).float().reciprocal()[by_out.values]
    return keys[order], ptr, src[by_out.indices], weight


def spatial_output(values, own, tree: Tree, picks, sizes: list[int], lay, n_m: int,
                   max_k: int, dim: int, out_dtype, backend: str):
    """SPEC §10.3e–f and 4. ``sizes``: |Q_t| per frame (host ints). Returns (tokens (M, D) in
    LLM order, keys (M,) int64 ascending: 2·(t·N + i) for ADTS tokens, + 1 for merged ones)."""
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
    R = max(n_out, default=0)
    mloc = tree.loc[:, :R]                    # pass-through: the pool token's own location
    assign = tree.loc                         # (unused where no frame is clustered)
    cf = [t for t in range(T) if clus[t]]
    if cf:
        # DPC-kNN over the pool of every clustered frame at once (consecutive pooled rows).
        # (only the pool rows: the kernel reads what it is given; the torch route needs the
        # slack rows after them)
        end = T * n_a + sum(sizes) if backend == "triton" else None
        pool_rows = values[T * n_a:end]
        starts = [sum(sizes[:t]) for t in cf]
        gram = M.run_grams(pool_rows, starts, [sizes[t] for t in cf], backend)
        frames_c, size_c, c_t = M.to_device(dev, cf, [sizes[t] for t in cf], [n_out[t] for t in cf])
        k_cap = min(max_k, N)
        c_max = max(n_out[t] for t in cf)
        valid = torch.arange(gram.shape[1], device=dev) < size_c[:, None]
        centers, asg = dpc_knn_gram(gram, valid, c_t, c_max, c_t.clamp(max=k_cap), k_cap, dim,
                                    backend)
        # the clustered frames' rows of the tables: centre locations and assignments
        cloc = tree.loc[frames_c[:, None], centers]
        mloc = mloc.index_put((frames_c,), torch.nn.functional.pad(cloc, (0, R - c_max)))
        assign = torch.zeros(T, asg.shape[1], dtype=torch.int64, device=dev).index_put_((frames_c,), asg)
    keys, ptr, members, weights = layout(picks, mloc, assign, own, n_out, sizes, clus, backend)
    return M.merge(values, members, weights, ptr, out_dtype, backend), keys


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
    tree = merge_tree(best, arg, torch.where(free, -1, 0), lay, B, theta)
    pool = tree.pool.reshape(-1)
    own = torch.where(pool, torch.arange(T * N, device=xf.device), -1)
    root = tree.root.view(-1)
    values = M.scatter_rows(xf, torch.where(pool, own, T * N)[root],
                            tree.count.view(-1)[root].reciprocal(), T * N + 1, backend)[:T * N]
    return values.view(T, N, D) * tree.pool[..., None], tree.pool
