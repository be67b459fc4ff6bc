"""FastVid + SToP (SPEC §9): segments from per-frame global vectors, salient top-k per frame,
density-peak anchors that absorb the remaining tokens of their frame or segment.

Shapes: features x (T, N, D) fp32/fp16/bf16; attention a (T, N); sink s (N,) fp32; global
vectors g (T, Dg). Budgets per frame (host ints, :func:`budgets`): R = ⌊N·r⌋ kept, C = ⌊d·R⌋
context, S = R − C salient; n = N − S non-salient tokens U_t per frame.

The published SToP release's choices are reproduced (SPEC §9 notes):

- cuts are the min(c−1, T−1) smallest adjacent global cosines plus every one below τ_seg
  (the release takes exactly c−1 and fails for T < c);
- context anchors of the anchor frames of a multi-frame segment pay the sink penalty twice
  (ψ already holds −λ·s and step 7 subtracts λ·s again: 2λ in all);
- every anchor frame of a segment merges the whole segment's non-salient pool (shared pool:
  each pool token joins one anchor of every anchor frame);
- the anchor keeps weight max(1/(n_a+1), α), i.e. α whenever it has a member;
- K is clamped to N − S (the release fails there).

Only density ties are decided differently: deterministically (lower index) instead of by
random noise.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import _checks as C
from .. import api
from .base import KIND_CONTEXT, KIND_SALIENT, Options as _BaseOptions, Selection, Video, to_device
from .dpc_knn import density_scores

__all__ = ["Options", "fastvid_fast", "budgets", "anchor_budget", "global_vectors",
           "DEFAULT_CONTEXT_PENALTY", "POOL_BLOCK_ELEMS"]

DEFAULT_CONTEXT_PENALTY = 0.3      # λ, hard-coded in the published release (SPEC §9 note 2)
# Largest padded merge pool (segments × tokens × D, fp32 elements) gathered at once in step 7.
POOL_BLOCK_ELEMS = 64 * 2**20


@dataclass(frozen=True)
class Options(_BaseOptions):
    """FastVid settings (SPEC §9 defaults). ``context_penalty`` λ: None → 0.3 when SToP is on
    and ``mu_s`` ≠ 0, else 0 (concrete after :meth:`validated`)."""

    min_segments: int = 8           # c
    tau_seg: float = 0.9            # τ_seg: cut wherever adjacent global cosine < τ_seg
    context_share: float = 0.4      # d: share of the per-frame budget R given to context
    anchor_stride: int = 4          # p: anchor frames e, e−p, … of each segment
    anchor_weight: float = 0.6      # α: floor of the anchor's own weight in its merge
    density_k: int = 4              # k_ρ: neighbours of the DPC-kNN density
    context_penalty: float | None = None

    method: ClassVar[str] = "fastvid"
    default_mu_s: ClassVar[float] = 0.02
    sink_fields: ClassVar[tuple[str, ...]] = ("mu_s", "context_penalty")

    def validated(self, given: frozenset[str] = frozenset()) -> "Options":
        out = super().validated(given)
        lam = out.context_penalty
        if lam is None or not out.use_stop:
            lam = DEFAULT_CONTEXT_PENALTY if out.use_stop and out.mu_s != 0 else 0.0
        return replace(out, context_penalty=float(lam))

    def _check_fields(self) -> None:
        C.integer("min_segments", self.min_segments, 1, 2**31 - 1)
        C.number("tau_seg", self.tau_seg)
        d = C.number("context_share", self.context_share)
        if not 0.0 <= d < 1.0:
            raise ValueError(f"context_share must be in [0, 1) (the share of each frame's budget "
                             f"given to context tokens; salient tokens need the rest), got {d}")
        C.integer("anchor_stride", self.anchor_stride, 1, 2**31 - 1)
        w = C.number("anchor_weight", self.anchor_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"anchor_weight must be in [0, 1] (a merge weight), got {w}")
        C.integer("density_k", self.density_k, 1, 2**31 - 1)
        if self.context_penalty is not None:
            lam = C.number("context_penalty", self.context_penalty)
            if lam < 0:
                raise ValueError(f"context_penalty must be >= 0 (a sink penalty), got {lam}")

    def check_video(self, T: int, N: int, D: int) -> None:
        R, _, _ = budgets(N, self.retention_ratio, self.context_share)
        if R < 1:
            raise ValueError(f"retention_ratio={self.retention_ratio} keeps floor(N·r) = 0 tokens "
                             f"per frame of N={N}; FastVid needs retention_ratio >= 1/N = {1 / N:.4g}")


def budgets(N: int, retention_ratio: float, context_share: float) -> tuple[int, int, int]:
    """(R, S, C) per frame (SPEC §9.1): R = ⌊N·r⌋, C = ⌊d·R⌋, S = R − C (float64 floors)."""
    R = math.floor(N * float(retention_ratio))
    Cb = math.floor(float(context_share) * R)
    return R, R - Cb, Cb


def anchor_budget(C_frame: int, L: int, stride: int) -> tuple[int, int]:
    """(m_L, K_L) of a segment of L frames (SPEC §9.3): ⌈L/p⌉ anchor frames of ⌊C·L/m_L⌋."""
    m = -(-L // stride)
    return m, (C_frame * L) // m


_warned_fallback = False


def global_vectors(video: Video) -> torch.Tensor:
    """g (T, Dg) fp32: the caller's global vectors, or each frame's mean token (one warning)."""
    global _warned_fallback
    if video.global_features is not None:
        return video.global_features.float()
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn("fastvid: no global_features given; segmenting on each frame's mean token "
                      "instead of SigLIP's pooled vector, so segments may differ from the published "
                      "run (SPEC §9)", stacklevel=5)
    return video.features.float().mean(dim=1)


def _segments(cut: list[int], T: int) -> list[tuple[int, int]]:
    starts = [0] + [t + 1 for t in cut]
    ends = cut + [T - 1]
    return list(zip(starts, ends))


def _merge(pool: torch.Tensor, valid: torch.Tensor | None, anchors: torch.Tensor,
           anchor_ok: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Steps 6–7 merge, batched: z (B, G, K, D) fp32.

    pool (B, P, D) fp32 with valid (B, P) bool (None: all valid); anchors (B, G, K, D) fp32 in
    G independent groups (the anchor frames sharing a pool) with anchor_ok (B, G, K) bool.
    In every group each pool token joins the anchor of largest cosine (the earlier anchor on
    ties); padding tokens join nothing and padding anchors attract nothing.
    """
    B, P, D = pool.shape
    G, K = anchors.shape[1:3]
    an = F.normalize(anchors, dim=-1, eps=1e-12).view(B, G * K, D)
    # A pool token's own norm does not change which anchor is most similar to it.
    sim = torch.bmm(pool, an.transpose(1, 2)).view(B, P, G, K)
    if anchor_ok is not None:
        sim = sim.masked_fill(~anchor_ok[:, None], -math.inf)
    onehot = sim.argmax(dim=-1, keepdim=True) == torch.arange(K, device=pool.device)
    if valid is not None:
        onehot &= valid[:, :, None, None]
    onehot = onehot.to(pool.dtype).view(B, P, G * K)                  # (B, P, G·K)
    cnt = onehot.sum(dim=1)                                            # (B, G·K)
    mean = torch.bmm(onehot.transpose(1, 2), pool) / cnt.clamp(min=1)[..., None]
    w = (1.0 / (cnt + 1)).clamp(min=alpha)[..., None]                 # 1 when n_a = 0: z = x_a
    return (w * anchors.view(B, G * K, D) + (1 - w) * mean).view(B, G, K, D)


def _context_plan(segments, C_frame: int, stride: int, n: int):
    """Host plan of steps 6–7 (SPEC §9.3): frames with per-frame context (κ_t = C), and the
    segments whose anchor frames take segment context (κ_t > C) as (b, e, m_L, min(K_L, n))."""
    per_frame, per_segment = [], []
    if C_frame == 0 or n == 0:
        return per_frame, per_segment
    for b, e in segments:
        m, K = anchor_budget(C_frame, e - b + 1, stride)
        if K == C_frame:                         # K_L >= C always: L >= m_L
            per_frame.extend(range(e, b - 1, -stride))
        else:
            per_segment.append((b, e, m, min(K, n)))   # SPEC §9 note 8: clamp to N − S
    return sorted(per_frame), per_segment


def _blocks(plan, n: int, D: int):
    """Split the segment plan (shortest first) so each padded pool fits POOL_BLOCK_ELEMS."""
    out, cur = [], []
    for seg in sorted(plan, key=lambda q: q[1] - q[0]):
        L = seg[1] - seg[0] + 1
        if cur and (len(cur) + 1) * L * n * D > POOL_BLOCK_ELEMS:
            out.append(cur)
            cur = []
        cur.append(seg)
    return out + [cur] if cur else out


def fastvid_fast(video: Video, opts: Options) -> Selection:
    """FastVid + SToP, vectorized over frames (SPEC §9). Returns a :class:`Selection`:
    tokens (M, D) in the features' dtype, positions (M, 2) int64 [t, i] sorted by t·N + i,
    kinds salient/context, the segments, and the per-frame budgets in ``extras``.

    M = T·S + C·#(one-frame segments) + Σ_{L ≥ 2} m_L·min(K_L, N − S) (SPEC §9.8). One host
    sync (the segment boundaries); steps 4–6 batch over all frames, step 7 over all segments.
    """
    x, a, s = video.features, video.attention, video.sink.float()
    T, N, D = x.shape
    dev = x.device
    R, S, Cb = budgets(N, opts.retention_ratio, opts.context_share)
    n = N - S
    lam, p, alpha = float(opts.context_penalty), opts.anchor_stride, float(opts.anchor_weight)

    # 2. DySeg: cut after the min(c−1, T−1) least similar frame pairs and below τ_seg.
    g = F.normalize(global_vectors(video), dim=-1, eps=1e-12)
    sigma = (g[:-1] * g[1:]).sum(dim=-1)                               # (T−1,)
    cut = sigma < opts.tau_seg
    n_small = min(opts.min_segments - 1, T - 1)
    if n_small > 0:
        cut[torch.sort(sigma, stable=True).indices[:n_small]] = True   # ties: lower t
    # The one host sync: the segment structure fixes every shape below (one copy of T−1 flags;
    # a nonzero first would wait for the device a second time).
    segments = _segments([t for t, c in enumerate(cut.tolist()) if c], T)

    # 4. Salient tokens: top-S of a − μ_s·s per frame (STSP).
    sal, sal_tok = api.gather_topk(a, s, S, x, mu_s=opts.mu_s, backend=video.backend)
    frames = torch.arange(T, device=dev)
    keys = [(frames[:, None] * N + sal).flatten()]
    toks = [sal_tok.reshape(-1, D)]
    kinds = [torch.full((T * S,), KIND_SALIENT, dtype=torch.int8, device=dev)]

    per_frame, per_segment = _context_plan(segments, Cb, p, n)
    if per_frame or per_segment:
        # 5. Non-salient locations U_t (ascending) and their density scores, all frames at once.
        is_sal = torch.zeros(T, N, dtype=torch.bool, device=dev).scatter_(1, sal, True)
        U = torch.sort(is_sal.to(torch.uint8), dim=1, stable=True).indices[:, :n].contiguous()
        xu = x.gather(1, U[..., None].expand(T, n, D))
        kq = min(opts.density_k, n)
        cnt = torch.full((T,), n, dtype=torch.int64, device=dev)
        rho, delta = density_scores(xu, cnt, torch.full_like(cnt, kq), kq)
        s_u = s[U]                                                       # (T, n)
        psi = rho * delta - lam * s_u
        pool = xu.float()
        flat = pool.view(T * n, D)

        if per_frame:
            # 6. Top-C anchors of ψ; the frame's own non-salient tokens merge into them.
            f6, = to_device(dev, per_frame)
            top = torch.sort(psi[f6], dim=1, descending=True, stable=True).indices[:, :Cb]
            rows = f6[:, None] * n + top                                # (B6, C)
            z = _merge(pool[f6], None, flat[rows][:, None], None, alpha)[:, 0]
            keys.append((f6[:, None] * N + U.view(-1)[rows]).flatten())
            toks.append(z.reshape(-1, D).to(x.dtype))
            kinds.append(torch.full((rows.numel(),), KIND_CONTEXT, dtype=torch.int8, device=dev))

        # 7. Segment context: anchors by ψ − λ·s (2λ in all, as published); the pool is every
        # non-salient token of the segment, shared by its anchor frames.
        for block in _blocks(per_segment, n, D):
            z, key = _segment_context(block, U, psi, s_u, flat, n, N, p, lam, alpha)
            keys.append(key)
            toks.append(z.to(x.dtype))
            kinds.append(torch.full((key.numel(),), KIND_CONTEXT, dtype=torch.int8, device=dev))

    key = torch.cat(keys)
    order = torch.argsort(key)
    key = key[order]
    positions = torch.stack([key // N, key % N], dim=1)
    return Selection(tokens=torch.cat(toks)[order], positions=positions, kinds=torch.cat(kinds)[order],
                     segments=segments, extras={"salient_per_frame": S, "context_per_frame": Cb})


def _segment_context(block, U, psi, s_u, flat, n, N, p, lam, alpha):
    """Step 7 for a block of segments, padded to its longest pool and most anchor frames.
    Returns (z (M, D) fp32, keys (M,) int64 t·N + i) of the real anchors only."""
    dev = flat.device
    b, e, m, K = (torch.tensor(col, dtype=torch.int64) for col in zip(*block))
    G, Lmax, mmax, Kmax = len(block), int((e - b).max()) + 1, int(m.max()), int(K.max())
    # Host-side layout (no sync): pool rows b·n … (e+1)·n − 1, anchor frames e, e − p, ….
    P = torch.arange(Lmax * n)
    valid = P[None] < ((e - b + 1) * n)[:, None]                        # (G, P)
    rows = torch.minimum(b[:, None] * n + P[None], (e * n + n - 1)[:, None])
    j = torch.arange(mmax)
    frame_ok = j[None] < m[:, None]                                     # (G, mmax)
    fr = torch.where(frame_ok, e[:, None] - j[None] * p, e[:, None])
    ok = frame_ok[..., None] & (torch.arange(Kmax)[None, None] < K[:, None, None])
    keep = torch.nonzero(ok.flatten()).flatten()                      # host tensors: no sync
    valid, rows, fr, ok, keep = to_device(dev, valid, rows, fr, ok, keep)
    valid, ok = valid.bool(), ok.bool()

    score = psi[fr] - lam * s_u[fr]                                     # (G, mmax, n)
    top = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :Kmax]
    arow = fr[..., None] * n + top                                      # (G, mmax, Kmax)
    z = _merge(flat[rows], valid, flat[arow], ok, alpha)                # (G, mmax, Kmax, D)
    key = (fr[..., None] * N + U.view(-1)[arow]).flatten()[keep]
    return z.reshape(-1, flat.shape[1])[keep], key
