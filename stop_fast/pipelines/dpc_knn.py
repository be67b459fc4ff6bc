"""DPC-KNN (SPEC §8), batched over independent token sets, distances in bounded blocks.

Matches :func:`stop_fast.reference.dpc_knn` including its deterministic tie rules (equal
density: the lower index counts as higher; equal centre scores and equal centre distances:
the lower index wins). Computes in fp32 on the input's device. HoliTom clusters the static
tokens of every segment at once as one padded batch. When the batch's n×n distances fit in
``DIST_BLOCK_ELEMS`` fp32 values (HoliTom's sets always do), they all come from one Gram matrix
per set, so the tokens are read three times in all (mean, centring, Gram); beyond that they are
produced block by block, so thousands of tokens per set do not need an n×n matrix in memory.
"""
from __future__ import annotations

import math

import torch

from .. import _checks as C

__all__ = ["dpc_knn", "dpc_knn_batched", "dpc_knn_gram", "gram_sq_dist", "density_scores",
           "DIST_BLOCK_ELEMS"]

# Largest block of pairwise squared distances held at once (fp32 elements, 64 MiB).
DIST_BLOCK_ELEMS = 16 * 2**20


def dpc_knn(x: torch.Tensor, n_centers: int, k: int, penalty: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` (n, D) into ``n_centers`` density peaks.

    Density ρ uses the ``k`` nearest neighbours (self included); centre score ρ·δ − penalty.
    Returns (centers (c,) int64 ascending, assign (n,) int64 index into ``centers``), exactly
    like :func:`stop_fast.reference.dpc_knn`.
    """
    C.tensor("x", x, 2, "(n, D)")
    C.nonempty("x", x, (0, 1), "(n, D)")
    n = x.shape[0]
    n_centers = C.integer("n_centers", n_centers, 1, n)
    k = C.integer("k", k, 1, n)
    if penalty is not None:
        C.tensor("penalty", penalty, 1, "(n,)")
        if penalty.shape[0] != n:
            raise ValueError(f"penalty must have shape (n,) = ({n},), got {tuple(penalty.shape)}")
        C.same_device(x=x, penalty=penalty)
        penalty = penalty[None]
    C.finite(x=x, penalty=penalty)
    ints = torch.tensor([[n, n_centers, k]], device=x.device)
    centers, assign = dpc_knn_batched(x[None], ints[:, 0], ints[:, 1], n_centers, ints[:, 2], k,
                                      penalty)
    return centers[0], assign[0]


def _plan(B: int, n: int, budget: int) -> tuple[int, int]:
    """(sets, rows) per distance block so that sets·rows·n <= budget (at least one row)."""
    sets = max(1, min(B, budget // max(1, n * n)))
    rows = max(1, min(n, budget // max(1, sets * n)))
    return sets, rows


def _centred(x: torch.Tensor, counts: torch.Tensor):
    """(valid (B, n), xc (B, n, D) fp32 centred on each set's mean, zero on padding, |xc|²)."""
    n = x.shape[1]
    valid = torch.arange(n, device=x.device) < counts[:, None]
    xf = x.float()
    # Centring each set on its mean leaves distances unchanged and makes the Gram form
    # |a|² + |b|² − 2ab lose far fewer digits to cancellation.
    mean = (xf * valid[..., None]).sum(1) / counts.clamp(min=1)[:, None].float()
    xc = (xf - mean[:, None]) * valid[..., None]
    return valid, xc, xc.square().sum(-1)


def density_scores(x: torch.Tensor, counts: torch.Tensor, k: torch.Tensor, max_k: int,
                   block: int = DIST_BLOCK_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """Density ρ and distance-to-denser δ (SPEC §8) of B padded token sets, no host sync.

    x (B, n, D): set b is x[b, :counts[b]]; k (B,) int64 with 1 <= k[b] <= counts[b] (or 0
    for an unused set), ``max_k`` a host int >= every k. Token j is denser than i if
    ρ_j > ρ_i, or equal and j < i; δ is the set's largest distance when none is denser.
    Returns (rho (B, n) fp32, delta (B, n) fp32); padding entries are unspecified.
    """
    valid, xc, sq = _centred(x, counts)
    mean_sq, delta = _density(xc, sq, valid, k, max_k, block)
    return torch.exp(-mean_sq), delta


def _density(xc, sq, valid, k, max_k, block, log_domain=False, d2=None):
    """(mean squared distance to the k nearest, δ). Denser = larger exp(−mean_sq) in fp32, as
    the reference's ρ; ``log_domain`` compares −mean_sq itself, the same order without the
    underflow of exp for far-apart tokens (every ρ 0 in fp32 would make all of them tie).
    ``d2``: all the batch's squared distances, already made (:func:`_whole_distances`)."""
    B, n, D = xc.shape
    dev = xc.device
    col = torch.arange(n, device=dev)
    inv_d = 1.0 / D
    sets, rows = (B, n) if d2 is not None else _plan(B, n, block)
    blocks = [(b0, min(B, b0 + sets), r0, min(n, r0 + rows))
              for b0 in range(0, B, sets) for r0 in range(0, n, rows)]

    def d2_block(b0, b1, r0, r1):
        if d2 is not None:
            return d2
        # dist² = |xi − xj|² / D (SPEC §8: cdist / √D), self exactly 0, padding columns +inf.
        g = torch.baddbmm(sq[b0:b1, r0:r1, None] + sq[b0:b1, None, :], xc[b0:b1, r0:r1],
                          xc[b0:b1].transpose(1, 2), alpha=-2.0)
        g = g.clamp_min_(0.0).mul_(inv_d)
        r = torch.arange(r1 - r0, device=dev)
        g[:, r, r + r0] = 0.0
        return g.masked_fill_(~valid[b0:b1, None, :], math.inf)

    # Pass 1: density from the k nearest (k varies per set: mask the first max_k) and the
    # largest distance of each set.
    cache = {}
    mean_sq = torch.empty(B, n, device=dev)
    dmax2 = torch.zeros(B, device=dev)
    kk = torch.arange(max_k, device=dev)
    for b0, b1, r0, r1 in blocks:
        g = d2_block(b0, b1, r0, r1)
        if len(blocks) == 1:
            cache["g"] = g
        near = g.topk(max_k, dim=-1, largest=False).values            # ascending
        use = kk < k[b0:b1, None, None]
        mean_sq[b0:b1, r0:r1] = (torch.where(use, near, 0.0).sum(-1)
                                 / k[b0:b1, None].clamp(min=1).float())
        finite = g.masked_fill(~valid[b0:b1, r0:r1, None] | torch.isinf(g), 0.0)
        dmax2[b0:b1] = torch.maximum(dmax2[b0:b1], finite.amax(dim=(1, 2)))

    # Pass 2: δ = distance to the nearest token of higher density (ties: lower index is higher).
    rho = -mean_sq if log_domain else torch.exp(-mean_sq)
    delta = torch.empty(B, n, device=dev)
    for b0, b1, r0, r1 in blocks:
        g = cache["g"] if cache else d2_block(b0, b1, r0, r1)
        ri, rj = rho[b0:b1, r0:r1, None], rho[b0:b1, None, :]
        lower_idx = col[None, None, :] < torch.arange(r0, r1, device=dev)[None, :, None]
        higher = (rj > ri) | ((rj == ri) & lower_idx)
        near2 = g.masked_fill(~higher, math.inf).amin(-1)
        delta[b0:b1, r0:r1] = torch.where(torch.isinf(near2), dmax2[b0:b1, None], near2).sqrt()
    cache.clear()
    return mean_sq, delta


def dpc_knn_batched(x: torch.Tensor, counts: torch.Tensor, n_centers: torch.Tensor,
                    max_centers: int, k: torch.Tensor, max_k: int,
                    penalty: torch.Tensor | None = None, block: int = DIST_BLOCK_ELEMS,
                    by_score: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN of B padded token sets at once, without host synchronization.

    x (B, n, D): set b is x[b, :counts[b]] (rows beyond are padding and ignored).
    counts, n_centers, k: (B,) int64 on x's device with 1 <= k[b], n_centers[b] <= counts[b]
    (or all three 0 for an unused set); ``max_centers``/``max_k`` are host ints bounding them.
    penalty: None or (B, n). Returns (centers (B, max_centers) int64: the set's centres in
    ascending order — or, with ``by_score``, by descending centre score (ties: lower index) —
    then n as padding; assign (B, n) int64 index into the centre row, 0 on padding rows).
    Assignment ties go to the earlier entry of the centre row. ``by_score`` (FlashVid,
    PruneVid; no penalty) ranks ρ·δ by its logarithm −mean_sq + log δ: the same order, but
    tree-merged sums and raw LLM-width features are far enough apart that ρ underflows fp32.
    """
    B, n, D = x.shape
    if by_score and penalty is not None:
        raise ValueError("by_score ranks in the log domain and takes no penalty")
    sets, rows = _plan(B, n, block)
    whole = sets >= B and rows >= n
    # One block (the usual case): every distance from one Gram matrix per set, the rows read
    # three times (mean, centring, Gram) instead of once per pass; else bounded blocks.
    valid, xc, sq, d2 = _whole_distances(x, counts) if whole else (*_centred(x, counts), None)
    mean_sq, delta = _density(xc, sq, valid, k, max_k, block, log_domain=by_score, d2=d2)
    score = delta.log() - mean_sq if by_score else torch.exp(-mean_sq) * delta
    if penalty is not None:
        score = score - penalty.float()
    score = score.masked_fill(~valid, -math.inf)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :max_centers]
    ranks = torch.arange(max_centers, device=x.device)
    cvalid = ranks < n_centers[:, None]
    centers = torch.where(cvalid, order, n)                            # n = padding
    if not by_score:
        centers = centers.sort(dim=1).values
    if whole:
        return centers, _assign_whole(d2, valid, centers, cvalid)
    return centers, _assign(xc, sq, centers, cvalid, 1.0 / D, sets, rows).masked_fill_(~valid, 0)


def _whole_distances(x: torch.Tensor, counts: torch.Tensor):
    """(valid, xc, None, d2) for :func:`_density` from one Gram per set: xc centred on each
    set's mean (padding rows not zeroed: only their masked entries see them), d2 (B, n, n)
    the squared distances / D (:func:`gram_sq_dist`: symmetric, self 0), padding columns +inf."""
    B, n, D = x.shape
    valid = torch.arange(n, device=x.device) < counts[:, None]
    xf = x.float()
    mean = torch.bmm(valid.to(xf.dtype)[:, None, :], xf) / counts.clamp(min=1)[:, None, None]
    xc = xf - mean
    d2 = gram_sq_dist(torch.bmm(xc, xc.mT), D).masked_fill_(~valid[:, None, :], math.inf)
    return valid, xc, None, d2


def _assign_whole(d2, valid, centers, cvalid):
    """:func:`_assign` from the batch's distances: each token's nearest centre (ties: lower
    centre), each centre itself, 0 on padding rows. (:func:`gram_assign` would make the same
    distances again from the Gram; these are already there.)"""
    B, n, _ = d2.shape
    c = centers.shape[1]
    dc = d2.gather(2, centers.clamp(max=n - 1)[:, None, :].expand(B, n, c))
    assign = torch.zeros(B, n + 1, dtype=torch.int64, device=d2.device)
    assign[:, :n] = dc.masked_fill_(~cvalid[:, None, :], math.inf).argmin(-1).masked_fill_(~valid, 0)
    own = torch.arange(c, device=d2.device).expand(B, c)
    return assign.scatter_(1, centers, own)[:, :n]


def _assign(xc, sq, centers, cvalid, inv_d, sets, rows):
    """Nearest centre of every token (ties: lower centre); each centre joins itself."""
    B, n, _ = xc.shape
    c = centers.shape[1]
    cidx = centers.clamp(max=n - 1)
    xcen = xc.gather(1, cidx[..., None].expand(-1, -1, xc.shape[2]))
    sqc = sq.gather(1, cidx)
    assign = torch.empty(B, n + 1, dtype=torch.int64, device=xc.device)
    for b0 in range(0, B, sets):
        b1 = min(B, b0 + sets)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            d2 = torch.baddbmm(sq[b0:b1, r0:r1, None] + sqc[b0:b1, None, :], xc[b0:b1, r0:r1],
                               xcen[b0:b1].transpose(1, 2), alpha=-2.0)
            d2 = d2.clamp_min_(0.0).mul_(inv_d).masked_fill_(~cvalid[b0:b1, None, :], math.inf)
            assign[b0:b1, r0:r1] = d2.argmin(-1)
    # Padding centres (index n) all write the spare last column, which is dropped.
    own = torch.arange(c, device=xc.device).expand(B, c)
    assign.scatter_(1, centers, own)
    return assign[:, :n]


def gram_sq_dist(gram: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, n, n) squared distances ‖a − b‖² / dim from Gram matrices (SPEC §8: cdist / √D).

    (G_ii + G_jj) − (G_ij + G_ji) is the same float either way round, so the result is exactly
    symmetric (mutual nearest neighbours tie, as with exact differences); self is exactly 0."""
    sq = gram.diagonal(dim1=1, dim2=2)
    d2 = (sq[:, :, None] + sq[:, None, :]).sub_(gram + gram.mT).clamp_min_(0.0).mul_(1.0 / dim)
    d2.diagonal(dim1=1, dim2=2).fill_(0.0)
    return d2


def gram_scores(gram: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, max_k: int,
                dim: int) -> torch.Tensor:
    """(B, n) centre scores log δ − mean_sq of padded sets from their Gram matrices, −inf off
    the set (the torch twin of ``kernels/dpc.py``'s ``dpc_scores``; SPEC §8 tie rules)."""
    n = gram.shape[1]
    off = ~valid
    d2 = gram_sq_dist(gram, dim)
    # the largest distance within each set (invalid rows and columns count 0)
    dmax2 = d2.masked_fill(off[:, :, None] | off[:, None, :], 0.0).amax(dim=(1, 2))
    d2.masked_fill_(off[:, None, :], math.inf)
    kk = max(1, min(max_k, n))
    near = d2.topk(kk, dim=-1, largest=False).values                   # ascending
    mean_sq = near.cumsum(-1).gather(2, (k - 1).clamp(min=0)[:, None, None].expand(-1, n, 1))
    mean_sq = mean_sq[..., 0] / k.clamp(min=1)[:, None]
    # denser = earlier in the stable descending order of log ρ = −mean_sq (ties: lower index)
    rank = torch.sort(mean_sq, dim=1, stable=True).indices.argsort(dim=1)
    near2 = d2.masked_fill_(rank[:, None, :] >= rank[:, :, None], math.inf).amin(-1)
    delta = torch.where(torch.isinf(near2), dmax2[:, None], near2).sqrt()
    return (delta.log() - mean_sq).masked_fill_(off, -math.inf)


def gram_assign(gram: torch.Tensor, centers: torch.Tensor, n_centers: torch.Tensor,
                dim: int) -> torch.Tensor:
    """(B, n) index into each set's centre list (its first n_centers[b] entries) of every
    token's nearest centre (ties: the earlier centre; a centre itself). Torch twin of
    ``kernels/dpc.py``'s ``dpc_assign``."""
    B, n, _ = gram.shape
    c = centers.shape[1]
    cpos = torch.arange(c, device=gram.device)
    cvalid = cpos < n_centers[:, None]
    sq = gram.diagonal(dim1=1, dim2=2)
    g_c = gram.gather(2, centers[:, None, :].expand(B, n, c))
    g_ct = gram.gather(1, centers[:, :, None].expand(B, c, n)).mT
    dc = (sq[:, :, None] + sq.gather(1, centers)[:, None, :]).sub_(g_c + g_ct)
    dc = dc.clamp_min_(0.0).mul_(1.0 / dim).masked_fill_(~cvalid[:, None, :], math.inf)
    assign = torch.zeros(B, n + 1, dtype=torch.int64, device=gram.device)
    assign[:, :n] = dc.argmin(-1)                  # first minimum: the earlier centre
    # each centre joins itself (unused centre slots write the spare column)
    return assign.scatter_(1, torch.where(cvalid, centers, n), cpos.expand(B, c))[:, :n]


def dpc_knn_gram(gram: torch.Tensor, valid: torch.Tensor, n_centers: torch.Tensor,
                 max_centers: int, k: torch.Tensor, max_k: int, dim: int,
                 backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN of B padded token sets given their Gram matrices, ranked like ``by_score``.

    gram (B, n, n) float32: inner products of each set's tokens (only entries between valid
    tokens are read); valid (B, n) bool: the set's members, in index order (any subset, not
    only a prefix); n_centers, k (B,) int64 with 1 <= k, n_centers <= members (or 0 for an
    unused set); ``dim`` the feature width of the distances. Same tie rules and log-domain
    centre score as :func:`dpc_knn_batched` with ``by_score=True``. Returns (centers
    (B, max_centers) int64 indices into n by descending score, of which the first
    n_centers[b] are set b's centres (the rest unspecified); assign (B, n) int64 index into
    the centre row; invalid tokens unspecified). No host sync. On
    ``backend="triton"`` the scores and the assignment are the kernels of ``kernels/dpc.py``.
    """
    kern = _kernels() if backend == "triton" else None
    score = (kern.dpc_scores if kern else gram_scores)(gram, valid, k, max_k, dim)
    # the first n_centers of each row are the centres; the assignment ignores the rest
    centers = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :max_centers]
    assign = (kern.dpc_assign if kern else gram_assign)(gram, centers, n_centers, dim)
    return centers, assign


def _kernels():
    from .. import dispatch
    return dispatch._load_kernels()
