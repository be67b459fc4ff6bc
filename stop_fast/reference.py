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
    "dpc_knn",
    "merge_tokens",
    "frame_gram",
    "knn_density",
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
    return minmax_power(attn.double().mean(dim=0), gamma, eps).float()


def minmax_power(m: torch.Tensor, gamma: float, eps: float = 1e-12) -> torch.Tensor:
    """SPEC §3's min-max normalization of m^γ along the last dim of (…, N) m, in float64.

    Exact as SPEC requires: every location takes the power computed for the first location
    with the same m (so equal m give bitwise equal scores, whichever lanes of a vectorized
    ``pow`` they fall in), and the ends are decided on m, where the power is monotone:
    minimum → 0, maximum → 1 when m varies.
    """
    m = m.double()
    first = (m.unsqueeze(-1) == m.unsqueeze(-2)).to(torch.uint8).argmax(dim=-1)
    p = m.pow(gamma).gather(-1, first)
    p_lo = p.gather(-1, m.argmin(dim=-1, keepdim=True))
    p_hi = p.gather(-1, m.argmax(dim=-1, keepdim=True))
    s = (p - p_lo) / (p_hi - p_lo + eps)
    s = torch.where(m == m.amax(dim=-1, keepdim=True), 1.0, s)
    return torch.where(m == m.amin(dim=-1, keepdim=True), 0.0, s)


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
    st = static_mask(x, sink, tau, mu_t)                                # (T−1, N)
    step = torch.arange(st.shape[0], device=st.device)[:, None]
    out = torch.zeros(bounds.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
    for s in range(bounds.shape[0]):
        b, e = bounds[s, 0], bounds[s, 1]
        # static at every step t = b … e−1 (steps outside [b, e) do not count); b = e: none.
        # Tensor bounds, no .tolist(): the literal loop also traces under torch.compile.
        out[s] = (st | (step < b) | (step >= e)).all(dim=0) & (e > b)
    return out


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


def merge_tokens(x: torch.Tensor, members: torch.Tensor, weights: torch.Tensor,
                 offsets: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Weighted merge: out[m] = Σ_{e in [offsets[m], offsets[m+1])} weights[e] · row(members[e])
    in float64, row(r) = x[r // n, r % n] of x (B, n, D). Returns (M, D) in ``out_dtype`` (x's
    dtype if None); an output without members is zero. (No host ints: it also traces under
    torch.compile.)"""
    B, n, D = x.shape
    M, E = offsets.shape[0] - 1, members.shape[0]
    # Entry e belongs to the output m with offsets[m] <= e < offsets[m + 1].
    owner = torch.searchsorted(offsets, torch.arange(E, device=x.device), right=True) - 1
    rows = x.double().reshape(B * n, D)[members]
    out = torch.zeros(M, D, dtype=torch.float64, device=x.device)
    return out.index_add_(0, owner, weights.double()[:, None] * rows).to(out_dtype or x.dtype)


def frame_gram(x: torch.Tensor, keys: torch.Tensor | None = None, mode: str = "dot",
               ) -> torch.Tensor:
    """out[t, i, k] = ⟨x[t, i], row(keys[t, k])⟩ ("dot"), ‖x[t, i] − row(keys[t, k])‖²
    ("distance") or ⟨x[t, i], row(keys[t, k])⟩ / max(‖row(keys[t, k])‖, 1e-12) ("unit_keys"),
    in float64; row(r) = x[r // N, r % N]; keys None: the frame's own rows; a negative key
    gives 0 (−inf for "unit_keys"). Returns (T, N, K) float32."""
    T, N, D = x.shape
    q = x.double()
    k = q if keys is None else q.reshape(T * N, D)[keys.clamp(min=0)]
    if mode == "distance":
        out = ((q[:, :, None, :] - k[:, None, :, :]) ** 2).sum(-1)
    else:
        if mode == "unit_keys":
            k = k / k.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        out = torch.einsum("tid,tkd->tik", q, k)
    if keys is not None:
        out = torch.where((keys >= 0)[:, None, :], out, -math.inf if mode == "unit_keys" else 0.0)
    return out.float()


def knn_density(d2: torch.Tensor, members: torch.Tensor, k: int, scale: float = 1.0,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §8 density peaks of member sets, in float64: for set b with members m = members[b]
    (−1: padding), ρ_i = exp(−scale · mean of the k smallest d2[b, m_i, ·] over the set, self
    included), δ_i = sqrt(scale · min d2 to a denser member) (denser: larger ρ, or equal ρ and
    a lower position), or of the set's largest d2 if none. Returns (ρ, δ) (B, n) float32, 0
    on padding. (Tensor ops only: it also traces under torch.compile.)"""
    B, n = members.shape
    ok = members >= 0
    m = members.clamp(min=0)
    sub = d2.double()[torch.arange(B, device=d2.device)[:, None, None], m[:, :, None], m[:, None, :]]
    pair = ok[:, :, None] & ok[:, None, :]
    low = torch.where(pair, sub, math.inf).sort(dim=-1).values[..., :k]
    rho = torch.where(ok, torch.exp(-scale * torch.where(ok[..., None], low, 0.0).mean(dim=-1)), 0.0)
    pos = torch.arange(n, device=d2.device)
    denser = (rho[:, None, :] > rho[:, :, None]) | ((rho[:, None, :] == rho[:, :, None])
                                                    & (pos[None, None, :] < pos[None, :, None]))
    near = torch.where(pair & denser, sub, math.inf).amin(dim=-1)
    dmax = torch.where(pair, sub, 0.0).amax(dim=(1, 2))
    delta = torch.where(torch.isinf(near), dmax[:, None], near)
    return rho.float(), torch.where(ok, (scale * delta).sqrt(), 0.0).float()
