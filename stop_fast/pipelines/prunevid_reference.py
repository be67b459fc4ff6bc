"""Loop-based float64 twin of the PruneVid baseline (SPEC §11), step by step from the text.

The host rules on ints and floats (contiguity repair, cluster counts, short-video frame
clustering) come from :mod:`.prunevid`, so both paths round identically.
"""
from __future__ import annotations

import torch

from .base import KIND_DYNAMIC, KIND_STATIC, Selection, Video
from .flashvid_reference import dpc_knn_ranked
from .prunevid import (GRID, K, PASS_THROUGH, THRESHOLD, Options, frame_clustering, label_runs,
                       prunevid_counts, refine_labels)

__all__ = ["prunevid_twin"]


def _pair_cosines(v: torch.Tensor) -> torch.Tensor:
    u = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return u @ u.T


def _cluster(tokens: list[tuple[int, torch.Tensor]], n_clusters: int):
    """Plain-mean clusters in descending centre-score order, at their centres' locations."""
    if len(tokens) <= PASS_THROUGH:
        return tokens
    if n_clusters == 0:
        return []
    x = torch.stack([v for _, v in tokens])
    centers, assign = dpc_knn_ranked(x, n_clusters, K)
    return [(tokens[c][0], x[[m for m in range(len(tokens)) if assign[m] == pos]].mean(dim=0))
            for pos, c in enumerate(centers)]


def prunevid_twin(video: Video, opts: Options) -> Selection:
    x = video.features.detach().double().cpu()
    T, N, D = x.shape
    n_c, k = frame_clustering(T)
    centers, assign = dpc_knn_ranked(x.mean(dim=1), n_c, k)
    labels = refine_labels(assign)
    segs = [(b, e) for _, b, e in label_runs(labels)]
    out, n_static = [], []                                 # (frame, location, kind, value)
    for b, e in segs:
        W = e - b + 1
        static = []
        if W > 1:
            for i in range(GRID):
                cos = _pair_cosines(x[b:e + 1, i])
                off_diagonal = cos.sum() - cos.diagonal().sum()        # u ≠ v
                if float(off_diagonal) / (W * (W - 1)) > THRESHOLD:
                    static.append(i)
        n_static.append(len(static))
        _, c_s, c_d = prunevid_counts(len(static), W, opts.retention_ratio)
        merged = _cluster([(i, x[b:e + 1, i].mean(dim=0)) for i in static], c_s)
        out += [(b, i, KIND_STATIC, v) for i, v in merged]
        for t in range(b, e + 1):
            dyn = [(i, x[t, i]) for i in range(GRID) if i not in static]
            out += [(t, i, KIND_DYNAMIC, v) for i, v in _cluster(dyn, c_d)]
    dev = video.features.device
    pos = torch.tensor([[t, i] for t, i, _, _ in out], dtype=torch.int64).view(-1, 2)
    tokens = torch.stack([v for *_, v in out]) if out else torch.empty(0, D, dtype=torch.float64)
    return Selection(tokens.to(device=dev, dtype=video.features.dtype), pos.to(dev),
                     torch.tensor([kd for _, _, kd, _ in out], dtype=torch.int8, device=dev),
                     segments=segs, extras={"static_counts": n_static})
