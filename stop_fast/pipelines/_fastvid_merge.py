"""FastVid's context tokens (SPEC §9 steps 5–8) from two Gram passes and one merge pass.

- Density (step 5): one distance pass (:func:`stop_fast.frame_gram`) and the density peaks
  of each frame's non-salient tokens U_t from it (:func:`stop_fast.knn_density`, the
  conventions of SPEC §8 and :mod:`.dpc_knn`: self at distance 0, equal ρ: the lower index is
  denser, δ the largest distance when none is denser).
- Anchors (steps 6–7): every *anchor frame* f (an anchor frame of a segment with segment
  context, or a frame with per-frame context) takes the top K_f of its score (ψ, or ψ − λ·s
  for segment context) over U_f. Every frame's pool tokens join, for each anchor frame of
  their pool, the anchor of largest cosine; the raw dots come from a second Gram pass of
  every token against the anchors its frame needs (the key rows).
- Output (step 8): salient copies and z_a = w·x_a + (1 − w)·mean(members), w =
  max(1/(n_a + 1), α), as one :func:`stop_fast.merge_tokens` plan sorted by t·N + i.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import KIND_CONTEXT, KIND_SALIENT, to_device

__all__ = ["ContextPlan", "anchors", "anchor_dots", "context_merge"]


class ContextPlan:
    """Host layout of the anchor frames: which frames pick anchors (frame, K, segment kind)
    and, for every frame, the anchor frames its pool tokens join (SPEC §9.3 routing)."""

    def __init__(self, segments, C: int, stride: int, n: int, anchor_budget):
        T = segments[-1][1] + 1
        af_t, af_k, af_seg, af_block, frame_afs = [], [], [], [], [[] for _ in range(T)]
        if C > 0 and n > 0:
            for b, e in segments:
                m, K = anchor_budget(C, e - b + 1, stride)
                frames = list(range(e, b - 1, -stride))
                ids = list(range(len(af_t), len(af_t) + len(frames)))
                segment = K != C                        # K_L > C: segment context (step 7)
                for j, t in enumerate(frames):
                    af_t.append(t)
                    af_k.append(min(K, n) if segment else C)   # SPEC §9 note 8: K ≤ N − S
                    af_seg.append(int(segment))
                    af_block.append(j if segment else 0)     # its place in its frame's list
                    if not segment:
                        frame_afs[t] = [ids[j]]          # step 6: the frame's own pool
                if segment:
                    for t in range(b, e + 1):
                        frame_afs[t] = ids
        self.F = len(af_t)
        self.KB = max(af_k, default=0)
        self.MB = max((len(f) for f in frame_afs), default=0)
        self.n_anchors = sum(af_k)
        self.n_members = n * sum(len(f) for f in frame_afs)
        self.host = (af_t, af_k, af_seg, af_block,
                     [f + [-1] * (self.MB - len(f)) for f in frame_afs])

    def to(self, dev) -> "ContextPlan":
        """Ship the tables to the device (one non-blocking copy)."""
        self.af_t, self.af_k, self.af_seg, self.af_block, self.frame_afs = to_device(dev, *self.host)
        return self


def anchors(plan: ContextPlan, U: torch.Tensor, psi: torch.Tensor, s_u: torch.Tensor, lam: float,
            N: int) -> torch.Tensor:
    """(F, KB) flat rows t·N + i of each anchor frame's anchors, by descending score (ties:
    lower location), −1 past its K. Segment context scores ψ − λ·s (2λ in all, as published)."""
    score = psi[plan.af_t] - (lam * plan.af_seg)[:, None] * s_u[plan.af_t]
    top = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :plan.KB]
    rows = plan.af_t[:, None] * N + U[plan.af_t].gather(1, top)
    return rows.masked_fill(torch.arange(plan.KB, device=U.device) >= plan.af_k[:, None], -1)


def anchor_dots(gram, x: torch.Tensor, plan: ContextPlan, anchor_rows: torch.Tensor,
                U: torch.Tensor, per_frame_keys: bool) -> torch.Tensor:
    """(T, n or N, MB·KB): every pool token's (or every token's) dot with each unit-norm
    anchor of its frame's anchor frames, −inf for padding (SPEC §9 steps 6–7 rank anchors by
    cosine; a token's own norm does not change its most similar anchor).
    ``per_frame_keys``: one pass with each frame's own key list (the kernel gathers key rows
    as it goes); otherwise every token against every anchor, the video as one frame of T·N
    rows (the torch backend would copy each frame's key rows)."""
    T, N, D = x.shape
    KB, dev = plan.KB, x.device
    afs = plan.frame_afs.clamp(min=0)
    if per_frame_keys:
        keys = anchor_rows[afs].masked_fill((plan.frame_afs < 0)[..., None], -1).view(T, -1)
        return gram(x, keys, "unit_keys")                                    # (T, N, MB·KB)
    dots = gram(x.reshape(1, T * N, D), anchor_rows.view(1, -1), "unit_keys")[0]  # (T·N, F·KB)
    key_cols = (afs[:, :, None] * KB + torch.arange(KB, device=dev)).view(T, 1, -1)
    frames = torch.arange(T, device=dev)[:, None]
    pool = dots[(frames * N + U)[:, :, None], key_cols]
    return pool.masked_fill_((plan.frame_afs < 0).repeat_interleave(KB, dim=1)[:, None], -math.inf)


def context_merge(plan: ContextPlan, pool, anchor_rows: torch.Tensor, U, sal, alpha: float,
                  N: int):
    """(rows, weights, offsets, positions, kinds) of the output: salient copies and context
    tokens, sorted by t·N + i. pool: :func:`anchor_dots`; ``anchor_rows`` (F, KB) flat rows,
    −1 padding."""
    T, n = U.shape
    dev, F_, KB, MB = U.device, plan.F, plan.KB, plan.MB
    frames = torch.arange(T, device=dev)[:, None]
    if F_ == 0:                                       # no context token: the salient ones, sorted
        out_rows = (frames * N + sal.sort(dim=1).values).flatten()
        M = out_rows.numel()
        return (out_rows, torch.ones(M, device=dev), torch.arange(M + 1, device=dev),
                torch.stack([out_rows // N, out_rows % N], dim=1),
                torch.full((M,), KIND_SALIENT, dtype=torch.int8, device=dev))
    a_rows = anchor_rows.flatten()                                               # (F·KB,)
    afs = plan.frame_afs                                                         # (T, MB)
    pick = pool.view(T, -1, MB, KB).argmax(dim=-1)                              # (T, n|N, MB)
    if pick.shape[1] != n:                            # every token's pick: keep the pool's
        pick = pick.gather(1, U[:, :, None].expand(T, n, MB))
    anchor = afs.clamp(min=0)[:, None, :] * KB + pick                            # into (F·KB)
    joins = (afs >= 0)[:, None, :].expand(T, n, MB)
    count = torch.zeros(F_ * KB, device=dev).index_add_(0, anchor.flatten(), joins.flatten().float())
    w = torch.clamp(1.0 / (count + 1.0), min=alpha)
    # Entries: salient copies, anchors (weight w), members ((1 − w)/n_a); key = out·2 + member.
    sal_rows = (frames * N + sal).flatten()
    mem_rows = (frames * N + U)[:, :, None].expand(T, n, MB).flatten()
    mem_out = a_rows[anchor.flatten()]
    big = 2 * T * N + 2
    keys = torch.cat([sal_rows * 2, torch.where(a_rows >= 0, a_rows * 2, big),
                      torch.where(joins.flatten(), mem_out * 2 + 1, big)])
    weights = torch.cat([torch.ones(sal_rows.numel(), device=dev), w,
                         (1.0 - w[anchor.flatten()]) / count[anchor.flatten()].clamp(min=1.0)])
    all_rows = torch.cat([sal_rows, a_rows, mem_rows])
    E = sal_rows.numel() + plan.n_anchors + plan.n_members
    order = torch.sort(keys, stable=True).indices[:E]
    # Offsets: entries per output, in output (t·N + i) order.
    sizes = torch.zeros(T * N + 1, dtype=torch.int64, device=dev)
    sizes.index_fill_(0, sal_rows, 1)
    sizes.scatter_(0, torch.where(a_rows >= 0, a_rows, T * N), count.to(torch.int64) + 1)
    M = sal_rows.numel() + plan.n_anchors
    out_rows = torch.sort(torch.cat([sal_rows, torch.where(a_rows >= 0, a_rows, big)])).values[:M]
    offsets = F.pad(sizes[:T * N].cumsum(0)[out_rows], (1, 0))
    positions = torch.stack([out_rows // N, out_rows % N], dim=1)
    is_sal = torch.zeros(T * N, dtype=torch.bool, device=dev).index_fill_(0, sal_rows, True)
    kinds = torch.where(is_sal[out_rows], KIND_SALIENT, KIND_CONTEXT).to(torch.int8)
    return all_rows[order], weights[order], offsets, positions, kinds
