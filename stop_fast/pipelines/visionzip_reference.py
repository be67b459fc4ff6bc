"""Loop-based float64 twin of VisionZip + SToP (SPEC §7), written step by step as SPEC says.

The ground truth for :func:`stop_fast.pipelines.visionzip.visionzip_fast`; slow on purpose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference as R
from .base import KIND_CONTEXTUAL, KIND_DOMINANT, Selection, Video
from .visionzip import Options, visionzip_budget

__all__ = ["visionzip_twin"]


def _targets(rem: list[int], n_ctx: int, Z: set[int], rule: str | None) -> list[int]:
    """Contextual target positions in the remaining list ``rem`` (SPEC §7.3)."""
    n_rem = len(rem)
    stride = max(1, n_rem // n_ctx)
    if rule == "location":
        def skipped(p):
            return rem[p] in Z
    elif rule == "position":             # as published: a position compared with locations
        def skipped(p):
            return p in Z
    else:                                # no SToP: plain VisionZip
        return [j * stride for j in range(n_ctx)]
    chosen: list[int] = []
    for j in range(n_ctx):
        p = j * stride
        if rule == "position":
            while p < n_rem and skipped(p):
                p += 1
            if p == n_rem:               # published: indexes one past the end (crash)
                p = n_rem - 1            # engine: keeps the last position
            if p in chosen:              # published would repeat a target: take the next free
                p = next((q for q in range(p + 1, n_rem) if not skipped(q) and q not in chosen),
                         None)
                if p is None:            # none ahead: the last free skipped position
                    p = max(q for q in range(n_rem) if skipped(q) and q not in chosen)
        else:
            while p < n_rem and (skipped(p) or p in chosen):
                p += 1
            if p == n_rem:               # none ahead: the first free skipped position
                p = next(q for q in range(n_rem) if skipped(q) and q not in chosen)
        chosen.append(p)
    return chosen


def visionzip_twin(video: Video, opts: Options) -> Selection:
    """SPEC §7, frame by frame: dominant top-D_n by ã, then contextual targets and merges."""
    features, attention, metric, sink = video.features, video.attention, video.metric, video.sink
    T, N, D = features.shape
    n_dom, n_ctx = visionzip_budget(N, opts.retention_ratio, opts.tokens_per_frame)
    rule = opts.sink_skip if opts.use_stop and opts.num_sink_skip > 0 else None
    Z = set(R.penalized_topk(sink[None], torch.zeros_like(sink), min(opts.num_sink_skip, N),
                             0.0)[0].tolist()) if rule else set()
    rows, positions, kinds = [], [], []
    for t in range(T):
        x = features[t].double()
        dom = sorted(R.penalized_topk(attention[t:t + 1], sink, n_dom, opts.mu_s)[0].tolist()) \
            if n_dom else []
        rem = [i for i in range(N) if i not in dom]
        targets = [rem[p] for p in _targets(rem, n_ctx, Z, rule)]
        mn = F.normalize(metric[t].double(), dim=-1)
        members: list[list[int]] = [[] for _ in targets]
        for i in rem:
            if i not in targets:
                sims = [float(mn[i] @ mn[g]) for g in targets]
                members[sims.index(max(sims))].append(i)      # ties: the earlier target
        for i in dom:
            rows.append(x[i])
            positions.append((t, i))
            kinds.append(KIND_DOMINANT)
        for g, mem in zip(targets, members):
            rows.append(x[g] + x[mem].mean(dim=0) if mem else x[g])
            positions.append((t, g))
            kinds.append(KIND_CONTEXTUAL)
    return Selection(torch.stack(rows), torch.tensor(positions, dtype=torch.int64),
                     torch.tensor(kinds, dtype=torch.int8))
