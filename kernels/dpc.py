"""DPC-kNN (SPEC §8) of padded token sets from their Gram matrices: centre scores, then the
nearest centre of every token.

    d²[i, j] = max((G_ii + G_jj) − (G_ij + G_ji), 0) / dim      (self 0; exactly symmetric)
    −mean_sq[i] = log ρ_i:  mean of the k smallest d²[i, ·] over the set (self included)
    δ_i = √ min d²[i, j] over j denser (log ρ_j > log ρ_i, or equal and j < i), else the
          set's largest d²
    score[i] = log δ_i − mean_sq[i]      (log of ρ·δ: the same order, no underflow)
    assign[i] = the first centre c of the list with the smallest d²[i, c]; a centre itself

Shapes and dtypes: gram (B, n, n) float32, valid (B, n) bool (the set's members, any subset,
in index order), k (B,) int64 (1 ≤ k ≤ members, or 0 for an unused set) → score (B, n)
float32 (−inf off the set). centers (B, c) int64 indices of which the first n_centers[b] are
set b's centres (the rest are not read) → assign (B, n) int64 (0 off the set). The arithmetic is that of the torch twins
(:func:`stop_fast.pipelines.dpc_knn.dpc_knn_gram`), so both rank identically.

One launch each, one program per set (scores: two sweeps over row tiles, the densities of
the first kept in the output buffer between them) or per (set, row tile) (assign).
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

TILE = 16384 if INTERPRET else 4096      # elements of one (rows × n) tile


@triton.jit
def _d2_tile(g, oi, oj, mi, mj, n, s_gi, s_gj, inv_dim):
    gij = tl.load(g + oi[:, None] * s_gi + oj[None, :] * s_gj, mask=mi[:, None] & mj[None, :],
                  other=0.0)
    gji = tl.load(g + oj[None, :] * s_gi + oi[:, None] * s_gj, mask=mi[:, None] & mj[None, :],
                  other=0.0)
    sqi = tl.load(g + oi * (s_gi + s_gj), mask=mi, other=0.0)
    sqj = tl.load(g + oj * (s_gi + s_gj), mask=mj, other=0.0)
    d2 = tl.maximum((sqi[:, None] + sqj[None, :]) - (gij + gji), 0.0) * inv_dim
    return tl.where(oi[:, None] == oj[None, :], 0.0, d2)


@triton.jit
def _score_kernel(gram, valid, k, score, n, s_gb, s_gi, s_gj, s_vb, s_sb, inv_dim,
                  MAX_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    g = gram + b * s_gb
    kb = tl.load(k + b)
    oj = tl.arange(0, BLOCK_N)
    vj = tl.load(valid + b * s_vb + oj, mask=oj < n, other=0) != 0
    dmax = tl.zeros([BLOCK_N], tl.float32)
    # Sweep 1: density (mean of the k smallest d², self included) and the largest distance.
    for i0 in range(0, n, BLOCK_I):
        oi = i0 + tl.arange(0, BLOCK_I)
        mi = oi < n
        vi = tl.load(valid + b * s_vb + oi, mask=mi, other=0) != 0
        d2 = _d2_tile(g, oi, oj, mi, oj < n, n, s_gi, s_gj, inv_dim)
        dmax = tl.maximum(dmax, tl.max(tl.where(vi[:, None] & vj[None, :], d2, 0.0), 0))
        d2 = tl.where(vj[None, :], d2, float("inf"))
        acc = tl.zeros([BLOCK_I], tl.float32)
        for r in tl.static_range(MAX_K):         # the k smallest, ascending
            m = tl.min(d2, 1)
            acc += tl.where(r < kb, m, 0.0)
            first = tl.argmin(d2, 1)
            d2 = tl.where(oj[None, :] == first[:, None], float("inf"), d2)
        mean_sq = acc / tl.maximum(kb, 1).to(tl.float32)
        tl.store(score + b * s_sb + oi, mean_sq, mask=mi)
    tl.debug_barrier()
    dmax2 = tl.max(dmax, 0)
    msq_j = tl.load(score + b * s_sb + oj, mask=oj < n, other=0.0)
    rho_j = -msq_j
    tl.debug_barrier()
    # Sweep 2: δ = distance to the nearest denser token (equal density: lower index wins).
    for i0 in range(0, n, BLOCK_I):
        oi = i0 + tl.arange(0, BLOCK_I)
        mi = oi < n
        vi = tl.load(valid + b * s_vb + oi, mask=mi, other=0) != 0
        msq_i = tl.load(score + b * s_sb + oi, mask=mi, other=0.0)
        rho_i = -msq_i
        d2 = _d2_tile(g, oi, oj, mi, oj < n, n, s_gi, s_gj, inv_dim)
        higher = (rho_j[None, :] > rho_i[:, None]) | ((rho_j[None, :] == rho_i[:, None])
                                                     & (oj[None, :] < oi[:, None]))
        near2 = tl.min(tl.where(higher & vj[None, :], d2, float("inf")), 1)
        delta = tl.sqrt(tl.where(near2 == float("inf"), dmax2, near2))
        # log δ; δ = 0 (duplicate tokens) scores −inf, without evaluating log(0)
        logd = tl.where(delta > 0, tl.log(tl.where(delta > 0, delta, 1.0)), -float("inf"))
        sc = tl.where(vi, logd - msq_i, -float("inf"))
        tl.debug_barrier()
        tl.store(score + b * s_sb + oi, sc, mask=mi)


@triton.jit
def _assign_kernel(gram, centers, n_centers, assign, n, c, s_gb, s_gi, s_gj, s_cb, s_ab,
                   inv_dim, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    oi = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mi = oi < n
    g = gram + b * s_gb
    oc = tl.arange(0, BLOCK_C)
    nc = tl.load(n_centers + b)
    mc = oc < nc
    cen = tl.load(centers + b * s_cb + oc, mask=mc, other=0)
    d2 = _d2_tile(g, oi, cen, mi, mc, n, s_gi, s_gj, inv_dim)
    d2 = tl.where(oi[:, None] == cen[None, :], 0.0, d2)
    d2 = tl.where(mc[None, :], d2, float("inf"))
    a = tl.argmin(d2, 1)                                  # first minimum: the earlier centre
    own = tl.max(tl.where((oi[:, None] == cen[None, :]) & mc[None, :], oc[None, :], -1), 1)
    tl.store(assign + b * s_ab + oi, tl.where(own >= 0, own, a).to(tl.int64), mask=mi)


def launch_scores(gram, valid, k, max_k, dim):
    B, n, _ = gram.shape
    score = torch.empty(B, n, dtype=torch.float32, device=gram.device)
    if B == 0 or n == 0:
        return score
    block_n = max(16, triton.next_power_of_2(n))
    block_i = max(1, min(block_n, TILE // block_n))
    _score_kernel[(B,)](gram, valid.view(torch.uint8), k, score, n, *gram.stride(),
                        valid.stride(0), score.stride(0), 1.0 / dim, MAX_K=max(1, min(max_k, n)),
                        BLOCK_N=block_n, BLOCK_I=block_i, num_warps=1 if INTERPRET else 4)
    return score


def launch_assign(gram, centers, n_centers, dim):
    B, n, _ = gram.shape
    c = centers.shape[1]
    assign = torch.empty(B, n, dtype=torch.int64, device=gram.device)
    if B == 0 or n == 0:
        return assign
    block_c = max(16, triton.next_power_of_2(c))
    block_i = max(1, min(triton.next_power_of_2(n), TILE // block_c))
    _assign_kernel[(B, triton.cdiv(n, block_i))](
        gram, centers, n_centers, assign, n, c, *gram.stride(), centers.stride(0),
        assign.stride(0), 1.0 / dim, BLOCK_C=block_c, BLOCK_I=block_i,
        num_warps=1 if INTERPRET else 4)
    return assign


def _scores_fake(gram, valid, k, max_k, dim):
    return gram.new_empty(gram.shape[:2])


def _assign_fake(gram, centers, n_centers, dim):
    return gram.new_empty(gram.shape[:2], dtype=torch.int64)


@kernel_op("dpc_scores", "(Tensor gram, Tensor valid, Tensor k, int max_k, int dim) -> Tensor",
           fake=_scores_fake)
def dpc_scores(gram: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, max_k: int,
               dim: int) -> torch.Tensor:
    """(B, n) float32 centre scores log δ − mean_sq (−inf off the set)."""
    return launch_scores(gram, valid, k, max_k, dim)


@kernel_op("dpc_assign", "(Tensor gram, Tensor centers, Tensor n_centers, int dim) -> Tensor",
           fake=_assign_fake)
def dpc_assign(gram: torch.Tensor, centers: torch.Tensor, n_centers: torch.Tensor,
               dim: int) -> torch.Tensor:
    """(B, n) int64 index into each set's centre list of every token's nearest centre."""
    return launch_assign(gram, centers, n_centers, dim)
