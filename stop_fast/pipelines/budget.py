"""Exact budgets: every method keeps exactly B(T, N, r) tokens (``exact_budget=True``).

A serving engine sizes a video's placeholder run before the vision tower runs, so the tower
must then return exactly that many embeddings. :func:`budget_of` gives B from the validated
settings and the grid (T frames × N tokens) alone (from a method name:
:func:`stop_fast.token_budget`); :func:`fit_budget` is the one post-selection step that brings
a method's :class:`~.base.Selection` to B. It runs after the fast path or the twin alike
(``run`` in :mod:`.entry`), so both keep the same positions.

B per method (float64, products evaluated left to right):

* visionzip: T·S, its published count (S from §7.1); never adjusted.
* fastvid: T·⌊N·r⌋, the published maximum (§9.8: salient + context ≤ R per frame); filled.
* flashvid: T·⌈N·r·E⌉, the published minimum (§10.4); dropped. Capped at T·N.
* holitom, prunevid: max(1, ⌊T·N·r⌋) (their counts land near r·T·N either side).

Fill (the method kept M < B): add the B − M original tokens x[t, i] whose (t, i) is not yet a
kept position, best first: the method's next-ranked candidates by its own STSP score
ã[t, i] = a[t, i] − μ_s·s_i (HoliTom: dynamic locations of their segment before static
ones; PruneVid, which has no score: the tokens least similar to every kept token).
Drop (M > B): remove the M − B lowest-ranked kept tokens: by kind (HoliTom dynamic before
static, FlashVid merged before ADTS picks, FastVid context before salient, VisionZip
contextual before dominant), then by ã at the token's position, lowest first; PruneVid
drops the kept tokens most similar to another kept token. Ties: a drop takes the earlier
token in output order, a fill the lower t·N + i. Kept tokens stay in their order; a filled
token goes right after the last kept token of its frame or an earlier one. No host sync: M is
a shape.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import api
from .base import (KIND_CONTEXT, KIND_CONTEXTUAL, KIND_DIVERSE, KIND_DOMINANT, KIND_DYNAMIC,
                   KIND_MERGED, KIND_SALIENT, Options, Selection, Video, to_device)

__all__ = ["budget_of", "fit_budget", "FILL_KIND", "DROP_FIRST"]

# Kind given to a filled token, per method.
FILL_KIND = {"visionzip": KIND_DOMINANT, "holitom": KIND_DYNAMIC, "fastvid": KIND_SALIENT,
             "flashvid": KIND_DIVERSE, "prunevid": KIND_DYNAMIC}
# Kinds dropped first (lowest-ranked), per method; the other kinds (HoliTom's static tokens,
# FlashVid's ADTS picks, …) after them.
DROP_FIRST = {"visionzip": (KIND_CONTEXTUAL,), "holitom": (KIND_DYNAMIC,),
              "fastvid": (KIND_CONTEXT,), "flashvid": (KIND_MERGED,), "prunevid": ()}


def budget_of(opts: Options, T: int, N: int) -> int:
    """B for validated ``opts`` on a (T, N) grid (see the module docstring)."""
    method, r = opts.method, float(opts.retention_ratio)
    if method == "visionzip":
        from .visionzip import visionzip_budget
        return T * sum(visionzip_budget(N, r, opts.tokens_per_frame))
    if method == "fastvid":
        return T * math.floor(N * r)
    if method == "flashvid":
        from .flashvid import flashvid_budget
        return min(T * flashvid_budget(N, opts)[0], T * N)
    return max(1, math.floor(T * N * r))


def _scores(sel: Selection, video: Video, opts: Options) -> torch.Tensor:
    """(T, N) float32: the method's STSP score ã = a − μ_s·s (FlashVid: its segment sink)."""
    a = video.attention.float()
    if not opts.mu_s:
        return a
    if opts.method == "flashvid" and getattr(opts, "sink_scope", "video") == "segment":
        from .flashvid import SegmentLayout, segment_sink
        lay = SegmentLayout(sel.segments, a.device)
        return a - opts.mu_s * segment_sink(a, lay, opts.gamma)[lay.seg_of]
    return a - opts.mu_s * video.sink.float()[None]


def _similarity(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(P,) largest cosine of each row of ``x`` (P, D) to the rows of ``kept`` (M, D)."""
    sim = F.normalize(x.float(), dim=-1) @ F.normalize(kept.float(), dim=-1).T
    return sim.amax(dim=1)


def fit_budget(sel: Selection, video: Video, opts: Options) -> Selection:
    """``sel`` with exactly :func:`budget_of` tokens (fill or drop as the module says)."""
    T, N, D = video.shape
    B, M = budget_of(opts, T, N), int(sel.tokens.shape[0])
    if M == B:
        return sel
    dev = video.features.device
    pos = sel.positions.to(dev).view(-1, 2)
    flat = pos[:, 0] * N + pos[:, 1]
    scored = video.attention is not None
    score = _scores(sel, video, opts) if scored else None
    extras = dict(sel.extras)
    if M > B:
        if scored:
            rank = score.flatten()[flat]
        else:   # PruneVid: redundancy with the other kept tokens (self excluded)
            xn = F.normalize(sel.tokens.float(), dim=-1)
            sim = (xn @ xn.T).fill_diagonal_(-2.0)
            rank = -sim.amax(dim=1)
        first = torch.zeros(M, dtype=torch.bool, device=dev)
        for kind in DROP_FIRST[opts.method]:
            first |= sel.kinds.to(dev) == kind
        # Lowest rank is dropped: first-dropped kinds below every other kind, then ã.
        key = torch.stack([(~first).double(), rank.double()], 1)
        order = torch.argsort(key[:, 1], stable=True)
        order = order[torch.argsort(key[order, 0], stable=True)]
        keep = torch.ones(M, dtype=torch.bool, device=dev)
        keep[order[:M - B]] = False
        extras["budget_dropped"] = M - B
        return Selection(sel.tokens[keep], sel.positions[keep], sel.kinds[keep], sel.segments, extras)

    # Fill: candidates are the grid positions not kept, best first.
    taken = torch.zeros(T * N, dtype=torch.bool, device=dev)
    taken[flat] = True
    if scored:
        value = score.flatten().double()
    else:
        value = -_similarity(video.features.reshape(T * N, D), sel.tokens).double()
    tier = torch.zeros(T * N, dtype=torch.float64, device=dev)
    if opts.method == "holitom" and sel.segments is not None and T > 1:
        tier = _holitom_static(video, opts, sel.segments).flatten().double()
    value = torch.where(taken, torch.full_like(value, -math.inf), value)
    # Best first: lower tier, higher value, lower index (stable sorts from the last key).
    order = torch.argsort(-value, stable=True)
    order = order[torch.argsort(tier[order], stable=True)]
    new = order[:B - M]
    t_new = new // N
    frames = pos[:, 0]
    mono = torch.cummax(frames, dim=0).values if M else frames
    slot = torch.searchsorted(mono.contiguous(), t_new, right=True)      # insert before this kept row
    key = torch.cat([torch.arange(M, device=dev) * 2 + 1, slot * 2]) * (T * N) \
        + torch.cat([torch.zeros(M, dtype=torch.int64, device=dev), new])
    order = torch.argsort(key, stable=True)
    tokens = torch.cat([sel.tokens, video.features.reshape(T * N, D)[new].to(sel.tokens.dtype)])
    positions = torch.cat([pos, torch.stack([t_new, new % N], 1)])
    kinds = torch.cat([sel.kinds.to(dev).view(-1),
                       torch.full((B - M,), FILL_KIND[opts.method], dtype=torch.int8, device=dev)])
    extras["budget_filled"] = B - M
    return Selection(tokens[order], positions[order], kinds[order], sel.segments, extras)


def _holitom_static(video: Video, opts: Options, segments) -> torch.Tensor:
    """(T, N) bool: location i is static over frame t's segment (HoliTom's STTP test, SPEC §6.2)."""
    T = video.features.shape[0]
    bounds, seg_of = to_device(video.features.device, segments,
                               [s for s, (b, e) in enumerate(segments) for _ in range(b, e + 1)])
    static = api.segment_static_mask(video.features, video.sink, bounds, tau=opts.tau,
                                     mu_t=opts.mu_t, backend=video.backend)
    return static[seg_of].view(T, -1)
