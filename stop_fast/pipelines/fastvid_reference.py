"""Loop-based float64 twin of FastVid + SToP (SPEC §9), written step by step as the spec reads.

Frame by frame and segment by segment, with the reference primitives of
:mod:`stop_fast.reference`; budgets come from :mod:`.fastvid` so the twin and the fast path
round identically. Ties: top-k and ranked lists take the lower location first; argmax over an
anchor list takes the earlier anchor; a token is denser than another if its ρ is larger, or
equal and it comes first in U_t.
"""
from __future__ import annotations

import math

import torch

from .. import reference as R
from .base import KIND_CONTEXT, KIND_SALIENT, Selection, Video
from .fastvid import Options, anchor_budget, budgets, global_vectors

__all__ = ["fastvid_twin"]


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _density(xs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §8 conventions: ρ, δ (float64) of the token set xs (n, D)."""
    n, D = xs.shape
    dist = torch.cdist(xs, xs, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(D)
    rho = torch.exp(-(torch.sort(dist, dim=1).values[:, :k] ** 2).mean(dim=1))
    # denser[i, j]: token j is denser than token i (larger ρ, or equal ρ and j < i).
    j_before_i = torch.arange(n)[None, :] < torch.arange(n)[:, None]
    denser = (rho[None, :] > rho[:, None]) | ((rho[None, :] == rho[:, None]) & j_before_i)
    nearest = dist.masked_fill(~denser, math.inf).min(dim=1).values
    delta = torch.where(denser.any(dim=1), nearest, dist.max())
    return rho, delta


def _ranked(values: dict[int, float], k: int) -> list[int]:
    """The k keys with the largest values, by descending value (ties: lower key first)."""
    return sorted(values, key=lambda u: (-values[u], u))[:k]


def _context(anchors, anchor_x, pool, alpha):
    """Each pool token joins the anchor of largest cosine (earlier anchor on ties); the anchor's
    token becomes z_a = w·x_a + (1 − w)·mean(members), w = max(1/(n_a + 1), α), μ_a = 0 if n_a = 0."""
    best = torch.argmax(_unit(pool) @ _unit(anchor_x).T, dim=1)        # first maximum
    z = {}
    for j, a in enumerate(anchors):
        members = pool[best == j]
        n_a = members.shape[0]
        mu = members.mean(dim=0) if n_a else torch.zeros_like(anchor_x[j])
        w = max(1.0 / (n_a + 1), alpha)
        z[a] = w * anchor_x[j] + (1 - w) * mu
    return z


def fastvid_twin(video: Video, opts: Options) -> Selection:
    x = video.features.double().cpu()
    a = video.attention.double().cpu()
    s = video.sink.double().cpu()
    s_list = s.tolist()
    T, N, D = x.shape
    _, S, Cb = budgets(N, opts.retention_ratio, opts.context_share)
    lam, p, alpha = opts.context_penalty, opts.anchor_stride, opts.anchor_weight

    # 2. Segmentation on the global vectors.
    g = global_vectors(video).double().cpu()
    g = g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)
    sigma = [float(g[t] @ g[t + 1]) for t in range(T - 1)]
    smallest = sorted(range(T - 1), key=lambda t: (sigma[t], t))[:min(opts.min_segments - 1, T - 1)]
    cuts = sorted(set(smallest) | {t for t in range(T - 1) if sigma[t] < opts.tau_seg})
    segments = list(zip([0] + [t + 1 for t in cuts], cuts + [T - 1]))

    # 3. Anchor frames and their context budget κ_t.
    kappa, seg_of = [0] * T, [None] * T
    for b, e in segments:
        _, K = anchor_budget(Cb, e - b + 1, p)
        for t in range(e, b - 1, -p):
            kappa[t] = K
        for t in range(b, e + 1):
            seg_of[t] = (b, e)

    # 4. Salient tokens.
    P = R.penalized_topk(a, s, S, opts.mu_s).cpu()
    out = {}                                   # t·N + i -> (token, kind)
    for t in range(T):
        for i in P[t].tolist():
            out[t * N + i] = (x[t, i], KIND_SALIENT)

    # 5. Context scores over the non-salient tokens of each frame.
    U, Ut_rows, psi = [], [], []
    for t in range(T):
        Ut = sorted(set(range(N)) - set(P[t].tolist()))
        U.append(Ut)
        Ut_rows.append(torch.tensor(Ut, dtype=torch.int64))
        if Ut:
            rho, delta = _density(x[t, Ut_rows[t]], min(opts.density_k, len(Ut)))
            score = (rho * delta - lam * s[Ut_rows[t]]).tolist()
            psi.append(dict(zip(Ut, score)))
        else:
            psi.append({})

    for t in range(T):
        if Cb == 0 or not U[t] or kappa[t] < Cb:
            continue
        if kappa[t] == Cb:
            # 6. Per-frame context.
            anchors = _ranked(psi[t], Cb)
            pool = x[t, Ut_rows[t]]
        else:
            # 7. Segment context: penalty subtracted again; pool = the whole segment.
            b, e = seg_of[t]
            K = min(kappa[t], len(U[t]))
            anchors = _ranked({u: v - lam * s_list[u] for u, v in psi[t].items()}, K)
            pool = torch.cat([x[tt, Ut_rows[tt]] for tt in range(b, e + 1)])
        z = _context(anchors, x[t, anchors], pool, alpha)
        for u in anchors:
            out[t * N + u] = (z[u], KIND_CONTEXT)

    keys = sorted(out)
    dev, dt = video.features.device, video.features.dtype
    tokens = torch.stack([out[k][0] for k in keys]).to(device=dev, dtype=dt)
    positions = torch.tensor([[k // N, k % N] for k in keys], dtype=torch.int64, device=dev)
    kinds = torch.tensor([out[k][1] for k in keys], dtype=torch.int8, device=dev)
    return Selection(tokens=tokens, positions=positions, kinds=kinds, segments=segments,
                     extras={"salient_per_frame": S, "context_per_frame": Cb})
