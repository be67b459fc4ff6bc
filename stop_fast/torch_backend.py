"""Vectorized PyTorch implementations of the SToP primitives (the "torch" backend).

Used on CPU, on machines without Triton, and as the baseline of the kernels. fp16/bf16
inputs are accumulated in fp32. Functions take already-validated inputs (see
:mod:`stop_fast.api`); signatures mirror :mod:`stop_fast.reference`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Largest score block held at once by column_mean_attention, in fp32 elements (64 MiB).
SCORE_BLOCK_ELEMS = 64 * 2**20 // 4


def plan_chunks(B: int, H: int, Nq: int, Nk: int, budget: int | None = None) -> tuple[int, int]:
    """(batch rows, query rows) per block so one (b, H, q, Nk) fp32 score block fits ``budget``
    elements (default ``SCORE_BLOCK_ELEMS``)."""
    budget = SCORE_BLOCK_ELEMS if budget is None else budget
    per_batch_row = H * Nk
    b = max(1, min(B, budget // max(1, per_batch_row)))
    q = max(1, min(Nq, budget // max(1, b * per_batch_row)))
    return b, q


def column_mean_attention(q: torch.Tensor, k: torch.Tensor, scale: float,
                          lse: torch.Tensor | None = None) -> torch.Tensor:
    """Memory-bounded mean over heads and queries of softmax(q kᵀ·scale).

    q (B, H, Nq, d), k (B, H, Nk, d) any strides; lse None or (B, H, Nq). Only one score block
    of at most ``SCORE_BLOCK_ELEMS`` fp32 values (per :func:`plan_chunks`) lives at a time.
    Returns (B, Nk) float32.
    """
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    bc, qc = plan_chunks(B, H, Nq, Nk)
    out = torch.empty(B, Nk, dtype=torch.float32, device=q.device)
    for b0 in range(0, B, bc):
        kf = k[b0:b0 + bc].float().transpose(-1, -2)        # (b, H, d, Nk)
        acc = torch.zeros(kf.shape[0], H, Nk, dtype=torch.float32, device=q.device)
        for q0 in range(0, Nq, qc):
            s = torch.matmul(q[b0:b0 + bc, :, q0:q0 + qc].float(), kf).mul_(scale)
            row = s.logsumexp(dim=-1) if lse is None else lse[b0:b0 + bc, :, q0:q0 + qc].float()
            acc += s.sub_(row.unsqueeze(-1)).exp_().sum(dim=2)   # in place: one block alive
        out[b0:b0 + bc] = acc.sum(dim=1) / (H * Nq)
    return out


def sink_score(attn: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    # Frame mean accumulated in fp64 (no fp32 copy of attn): fp32 sums depend on the frame
    # order, and min-max normalization over a tiny range magnifies that noise.
    return minmax_power(attn.mean(dim=0, dtype=torch.float64), gamma, eps).float()


def minmax_power(m: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    """SPEC §3's normalization along the last dim: (m^γ − min m^γ) / (max m^γ − min m^γ + ε),
    exact at the ends. (…, N) float → (…, N) in m's dtype.

    CPU ``pow`` runs vectorized code on a vector's body and scalar code on its tail, which can
    round one ulp apart, and ε = 1e-12 turns a 1-ulp range into a score. So the power is taken
    once per distinct value (m sorted; every location reads the power of its value's first
    occurrence, found by ``searchsorted``), and the ends are decided on m, where the power is
    monotone: the minimum gets exactly 0, the maximum exactly 1 when the range is nonzero.
    No host sync.
    """
    ms = m.sort(dim=-1).values
    ps = ms.pow(gamma)
    # clamp: with the finite checks off, a NaN sorts last and searches past the end
    p = ps.gather(-1, torch.searchsorted(ms, m).clamp_(max=m.shape[-1] - 1))
    s = ((p - ps[..., :1]) / (ps[..., -1:] - ps[..., :1] + eps)).clamp(0.0, 1.0)
    s = torch.where(m == ms[..., -1:], 1.0, s)
    return torch.where(m == ms[..., :1], 0.0, s)


def _ranked_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    # Stable descending sort makes exact ties go to the lower index, like the reference.
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k].contiguous()


def penalized_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, mu_s: float) -> torch.Tensor:
    return _ranked_topk(attn.float() - mu_s * sink.float(), k)


def gather_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, features: torch.Tensor,
                mu_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    idx = penalized_topk(attn, sink, k, mu_s)
    tokens = torch.gather(features, 1, idx.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
    return idx, tokens.contiguous()


# Frames per batched Gram in adjacent_cosine (windows overlap by one frame).
COSINE_WINDOW = 32


def adjacent_cosine(x: torch.Tensor) -> torch.Tensor:
    """⟨x_t, x_t+1⟩ / (max(‖x_t‖, ε)·max(‖x_t+1‖, ε)), the kernel's formula, from batched Grams
    per location over windows of ``COSINE_WINDOW`` frames: (N, W, D) @ (N, D, W) reads each row
    once per window (once in all for T ≤ W), where normalize-then-multiply reads and writes
    x several times. fp16/bf16 rows are copied to fp32 first (matmul would round its output
    to the input dtype)."""
    T = x.shape[0]
    xs = x.float().transpose(0, 1)                                    # (N, T, D), a view
    parts = []
    for t0 in range(0, T - 1, COSINE_WINDOW - 1):
        w = xs[:, t0:t0 + COSINE_WINDOW]
        g = torch.bmm(w, w.transpose(1, 2))                           # (N, W, W)
        norm = g.diagonal(dim1=1, dim2=2).sqrt().clamp(min=1e-12)
        parts.append(g.diagonal(offset=1, dim1=1, dim2=2) / (norm[:, :-1] * norm[:, 1:]))
    if not parts:                                                     # one frame: no pair
        return x.new_empty(0, x.shape[1], dtype=torch.float32)
    return torch.cat(parts, dim=1).T.contiguous() if len(parts) > 1 else parts[0].T.contiguous()


def static_mask(x: torch.Tensor, sink: torch.Tensor, tau: float, mu_t: float) -> torch.Tensor:
    return (adjacent_cosine(x) + mu_t * sink.float()) > tau


def segment_static_mask(x: torch.Tensor, sink: torch.Tensor, bounds: torch.Tensor, tau: float,
                        mu_t: float) -> torch.Tensor:
    # Prefix counts of non-static steps: [b, e] is static at i iff no break in steps b … e−1.
    breaks = (~static_mask(x, sink, tau, mu_t)).to(torch.int32)
    csum = F.pad(breaks.cumsum(dim=0), (0, 0, 1, 0))          # (T, N), csum[t] = breaks before t
    b, e = bounds[:, 0], bounds[:, 1]
    return (csum[e] - csum[b] == 0) & (e > b).unsqueeze(-1)



# ---- Twins of FlashVid's / PruneVid's kernels (kernels/gram.py, adts.py, project.py): the
# same signatures and fp32 arithmetic. The pipelines use them on the torch backend, except
# where a layout known on the host allows a cheaper route (see pipelines/_merge_ops.py).

def _token_rows(src: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (token numbers, any shape) of a (T, N, D) or (R, D) source."""
    if src.dim() == 3:
        n_per = max(src.shape[1], 1)
        return src[rows // n_per, rows % n_per]
    return src[rows]


def set_gram(src: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor, n_max: int,
             cross: bool, sums: bool):
    """Gram of each run of rows, zero-padded to ``n_max``; with ``cross`` each run against
    the previous one; with ``sums`` the runs' row sums as (S, 1, D) (the kernel returns
    partial sums over row blocks: callers sum dim 1)."""
    S, D = starts.shape[0], src.shape[-1]
    ar = torch.arange(n_max, device=src.device)
    valid = ar < counts[:, None]
    rows = torch.where(valid, starts[:, None] + ar, 0)
    xs = _token_rows(src, rows).float() * valid[..., None]
    gram = torch.bmm(xs, xs.mT)
    gram = (gram + gram.mT) * 0.5
    crs = torch.bmm(xs[1:], xs[:-1].mT) if cross else torch.zeros(0, n_max, n_max, device=src.device)
    sm = xs.sum(1, keepdim=True) if sums else torch.zeros(0, 1, D, device=src.device)
    return gram, crs, sm


def _inv_norm(gram: torch.Tensor) -> torch.Tensor:
    return 1.0 / gram.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt().clamp_min(1e-12)


def adts_match(gram: torch.Tensor, cross: torch.Tensor, w: torch.Tensor, n_a: int):
    """FlashVid's ADTS picks (T, n_a) ascending and each token's ADTS row (T, N) (t·n_a + its
    rank among the frame's picks, −1 if not picked) from the frames' Gram matrices, and the best match (T − 1, N) / its argument of frame t + 1's tokens among
    frame t's unpicked tokens (kernels/adts.py)."""
    T, N, _ = gram.shape
    u = _inv_norm(gram)
    cos = gram * u[:, :, None] * u[:, None, :]
    cos.diagonal(dim1=1, dim2=2).fill_(1.0)
    delta = (1.0 - cos).mul_(w.float()[:, None, :])
    rows = torch.arange(T, device=gram.device)
    picked = []
    if n_a > 0:
        # first pick: largest second-smallest column entry (with multiplicity)
        j = delta.topk(min(2, N), dim=1, largest=False).values[:, -1, :].argmax(1)
        picked.append(j)
        # Δ[j, j] = −inf from here on: folding in row j then rules column j out for good
        delta.diagonal(dim1=1, dim2=2).fill_(-torch.inf)
        colmin = delta[rows, j]
        for _ in range(1, n_a):           # greedy steps, all frames at once
            j = colmin.argmax(1)
            picked.append(j)
            colmin = torch.minimum(colmin, delta[rows, j])
    picks = (torch.stack(picked, 1).sort(dim=1).values if picked
             else torch.empty(T, 0, dtype=torch.int64, device=gram.device))
    pick_row = torch.full((T, N), -1, dtype=torch.int64, device=gram.device)
    pick_row.scatter_(1, picks, torch.arange(T * n_a, device=gram.device).view(T, n_a))
    free = pick_row < 0
    if T < 2:
        empty = gram.new_empty(0, N)
        return picks, pick_row, empty, empty.long()
    cc = (cross * u[1:, :, None] * u[:-1, None, :]).masked_fill_(~free[:-1, None, :], -torch.inf)
    best, arg = cc.max(-1)               # first maximum: the lower j
    return picks, pick_row, best, arg


def project(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(T, N) float32: ⟨x[t, i], v[t]⟩ (kernels/project.py)."""
    return torch.bmm(x.float(), v.float()[:, :, None])[..., 0]


def _row_table(x: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, n, D) as a (B·n, D) table of rows and the members' indices into it, without a
    copy where the layout allows: a (n, B, D) buffer viewed as (B, n, D) (a permuted batch)
    is read through its own row order, b·n + j → j·B + b."""
    B, n, D = x.shape
    if x.stride(0) == n * x.stride(1) or B == 1 or n == 1:
        return x.reshape(B * n, D), members
    if x.stride(1) == B * x.stride(0):
        return x.transpose(0, 1).reshape(B * n, D), (members % n) * B + members // n
    return x.reshape(B * n, D), members


def merge_tokens(x: torch.Tensor, members: torch.Tensor, weights: torch.Tensor,
                 offsets: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Weighted merge as one ``embedding_bag`` (sum mode with per-row weights) over an fp32
    table: each member row is read once, weights and sums stay fp32. fp16/bf16 rows are first
    copied to fp32 (embedding_bag would round the weights to the input dtype, and with
    cancelling weights that error is not bounded by the output's rounding)."""
    out_dtype = out_dtype or x.dtype
    table, rows = _row_table(x, members)
    M = offsets.shape[0] - 1
    if M == 0:
        return x.new_empty(0, x.shape[2], dtype=out_dtype)
    out = F.embedding_bag(rows, table.float(), offsets[:-1], mode="sum",
                          per_sample_weights=weights.float())
    return out.to(out_dtype)


def segment_stats(x: torch.Tensor, norms: torch.Tensor, bounds: torch.Tensor):
    """Per segment [b, e] and location: the mean over the frames (S, N, D), and
    Σ_{u≠v} ⟨x̂_u, x̂_v⟩ with x̂ = x / max(norms, 1e-12) as (S, N, 1)
    (kernels/segment_stats.py returns partial sums over chunks of D: callers sum the last
    dim)."""
    T = x.shape[0]
    t = torch.arange(T, device=x.device)
    member = ((t >= bounds[:, :1]) & (t <= bounds[:, 1:])).float()            # (S, T)
    xf = x.float()
    mean = torch.einsum("st,tnd->snd", member / member.sum(1, keepdim=True), xf)
    # Σ_{u≠v} ⟨x̂_u, x̂_v⟩ from each location's Gram over the frames
    xt = xf.transpose(0, 1)                                                  # (N, T, D)
    inv = 1.0 / norms.float().clamp_min(1e-12).T                            # (N, T)
    cos = torch.bmm(xt, xt.mT) * inv[:, :, None] * inv[:, None, :]
    cos.diagonal(dim1=1, dim2=2).zero_()
    sq = torch.einsum("su,nuv,sv->sn", member, cos, member)
    return mean, sq[..., None]


def visionzip_plan(attn: torch.Tensor, sink: torch.Tensor, mu_s: float, n_dom: int,
                   targets: torch.Tensor, metric: torch.Tensor, kinds: tuple[int, int],
                   ) -> tuple[torch.Tensor, ...]:
    """VisionZip's per-frame layout (SPEC §7) as a :func:`merge_tokens` plan.

    attn (T, N), sink (N,), mu_s: the dominant tokens are the ``n_dom`` largest
    attn − mu_s·sink per frame (ties to the lower index). targets (T, C) int64: positions of
    the contextual targets in each frame's remaining list (non-dominant locations, ascending);
    metric (T, N, Dk). Every other remaining token joins the target of highest metric cosine
    (ties: the earlier target). Returns, with S = n_dom + C outputs per frame and the entries
    of frame t at t·N … t·N + N − 1:
    rows (T·N,) int64 flat rows t·N + i, weights (T·N,) fp32 (1 for a dominant token or a
    target, 1/|members| for a member), offsets (T·S + 1,) int64 (per frame: the dominant
    tokens ascending, then target c with its members ascending), positions (T·S, 2) int64
    [t, location], kinds (T·S,) int8 (``kinds`` = (dominant code, contextual code)).
    """
    T, N, _ = metric.shape
    C = targets.shape[1]
    S, dev = n_dom + C, metric.device
    frames = torch.arange(T, device=dev)[:, None]
    is_dom = torch.zeros(T, N, dtype=torch.bool, device=dev)
    if n_dom:
        is_dom.scatter_(1, penalized_topk(attn, sink, n_dom, mu_s), True)
    # Non-dominant locations ascending, then the dominant ones ascending (stable sort).
    order = torch.sort(is_dom.to(torch.uint8), dim=1, stable=True).indices
    tgt = order.gather(1, targets)                                        # (T, C) locations
    mn = F.normalize(metric.float(), dim=-1)
    assign = torch.bmm(mn, mn[frames, tgt].transpose(1, 2)).argmax(dim=2)  # (T, N)
    c_of = torch.full((T, N), -1, dtype=torch.int64, device=dev).scatter_(
        1, tgt, torch.arange(C, device=dev).expand(T, C))
    member = ~is_dom & (c_of < 0)
    # Output slot of every location; a target sorts before its members (key parity).
    slot = torch.where(is_dom, is_dom.cumsum(dim=1) - 1, n_dom + torch.where(member, assign, c_of))
    entry = torch.sort(slot * 2 + member, dim=1, stable=True).indices       # (T, N)
    counts = torch.zeros(T, C, dtype=torch.int64, device=dev).scatter_add_(1, assign, member.long())
    w = torch.where(member, 1.0 / counts.gather(1, assign).clamp(min=1), 1.0)
    sizes = torch.cat([torch.ones(T, n_dom, dtype=torch.int64, device=dev), counts + 1], dim=1)
    offsets = F.pad(sizes.flatten().cumsum(0), (1, 0))
    locs = torch.cat([order[:, N - n_dom:], tgt], dim=1)
    positions = torch.stack([frames.expand(T, S), locs], dim=-1).reshape(-1, 2)
    kind = torch.where(torch.arange(S, device=dev) < n_dom, kinds[0], kinds[1])
    return ((frames * N + entry).flatten(), w.gather(1, entry).flatten(), offsets, positions,
            kind.to(torch.int8).repeat(T))


def frame_gram(x: torch.Tensor, keys: torch.Tensor | None, mode: str) -> torch.Tensor:
    """(T, N, K) fp32 of every token against its frame's tokens (keys None) or the key rows
    keys (T, K) (flat t·N + i; negative: padding): "dot" (one batched matmul), "distance"
    (``cdist`` on exact differences: a row is at distance 0 from itself) or "unit_keys" (dots
    with unit-norm keys). Padding gives 0 (−inf for "unit_keys"). fp16/bf16 rows are copied
    to fp32 first."""
    T, N, D = x.shape
    q = x.float()
    if keys is None:
        k = q
    else:
        table, rows = _row_table(x, keys.clamp(min=0).flatten())
        k = table[rows].float().view(T, -1, D)
    if mode == "distance":
        out = torch.cdist(q, k, compute_mode="donot_use_mm_for_euclid_dist").square_()
    elif mode == "unit_keys":
        out = torch.bmm(q, F.normalize(k, dim=-1, eps=1e-12).transpose(1, 2))
    else:
        out = torch.bmm(q, k.transpose(1, 2))
    if keys is None:
        return out
    return out.masked_fill_((keys < 0)[:, None, :], -math.inf if mode == "unit_keys" else 0.0)


def knn_density(d2: torch.Tensor, members: torch.Tensor, k: int, scale: float,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Density peaks (ρ, δ) (B, n) of member sets from squared distances d2 (B, R, R): the
    members' (n, n) block of each set is gathered once; ρ from the k smallest (mean, then
    scaled), δ from the nearest denser member (ties: lower position), the set's largest
    distance if none (SPEC §8). Padding members (−1) give 0."""
    B, n = members.shape
    ok = members >= 0
    m = members.clamp(min=0)
    sub = d2[torch.arange(B, device=d2.device)[:, None, None], m[:, :, None], m[:, None, :]]
    pair = ok[:, :, None] & ok[:, None, :]
    low = sub.masked_fill(~pair, math.inf).topk(k, dim=-1, largest=False).values
    rho = torch.exp(-(low.masked_fill(~ok[..., None], 0.0).sum(-1) / k * scale))
    rho = rho.masked_fill(~ok, 0.0)
    # j is denser than i iff it comes first by descending ρ, ties to the lower position.
    order = torch.sort(rho.masked_fill(~ok, -math.inf), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=d2.device).expand(B, n))
    near = torch.where(pair & (rank[:, None, :] < rank[:, :, None]), sub, math.inf).amin(dim=-1)
    dmax = torch.where(pair, sub, 0.0).amax(dim=(1, 2))
    delta = torch.where(torch.isinf(near), dmax[:, None], near).mul(scale).sqrt()
    return rho, delta.masked_fill(~ok, 0.0)
