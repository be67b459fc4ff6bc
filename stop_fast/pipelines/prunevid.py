"""PruneVid baseline (SPEC §11): frame clusters → segments, static/dynamic tokens per segment.

PruneVid reads no attention, so SToP has nothing to act on (``use_stop=True`` is an error).
The frame clustering and its contiguity repair are a few dozen host steps on T labels. The
per-segment work is batched: one pass for the static test of every segment, then one padded
DPC-kNN over every static set and every frame's dynamic set. Two host transfers per video:
the frame labels, and the static count of each segment (every cluster count follows from it).

Short videos: the published code asks for int(0.25·T) frame clusters with k = 7 neighbours
and fails for T < 7. The engine uses max(1, int(0.25·T)) clusters and k = min(7, T), which
is the published rule wherever that runs. A one-frame segment has no frame pairs, so no
static location (the published average is 0/0, which no threshold passes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import base
from .base import KIND_DYNAMIC, KIND_STATIC, Selection, to_device
from .dpc_knn import dpc_knn_batched

__all__ = ["Options", "prunevid_fast", "refine_labels", "label_runs", "prunevid_counts",
           "GRID", "THRESHOLD", "K", "PASS_THROUGH", "SLACK"]

GRID = 196            # the published code hard-codes a 14×14 grid
THRESHOLD = 0.8       # static test
K = 7                 # DPC-kNN neighbours everywhere
PASS_THROUGH = 14     # sets of at most this many tokens are not clustered
SLACK = 0.005


@dataclass(frozen=True)
class Options(base.Options):
    """PruneVid settings: only the retention ratio matters (SPEC §11, §13)."""

    method: ClassVar[str] = "prunevid"
    default_use_stop: ClassVar[bool] = False

    def _check_fields(self) -> None:
        if self.use_stop:
            raise ValueError("use_stop=True is not available for prunevid: PruneVid uses no "
                             "attention, so SToP's sink terms have nothing to act on")

    def check_video(self, T: int, N: int, D: int) -> None:
        if N != GRID:
            raise ValueError(f"prunevid needs N = {GRID} tokens per frame (its 14×14 grid, SPEC "
                             f"§11), got N = {N}")


def frame_clustering(T: int) -> tuple[int, int]:
    """(number of frame clusters, k): int(0.25·T) and 7 as published, at least 1 and at most T."""
    return max(1, int(0.25 * T)), min(K, T)


def label_runs(labels: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal labels as (label, first, last)."""
    runs, b = [], 0
    for t in range(1, len(labels) + 1):
        if t == len(labels) or labels[t] != labels[b]:
            runs.append((labels[b], b, t - 1))
            b = t
    return runs


def refine_labels(labels: list[int]) -> list[int]:
    """SPEC §11.2: contiguity repair of the frame labels (−1 marks an unlabelled frame)."""
    out = list(labels)
    runs = label_runs(labels)
    for lab in set(labels):
        lengths = [e - b + 1 for l, b, e in runs if l == lab]
        longest = max(lengths)
        for l, b, e in runs:
            if l == lab and (longest == 1 or e - b + 1 < longest):
                out[b:e + 1] = [-1] * (e - b + 1)
    T, t = len(out), 0
    while t < T:
        if out[t] != -1:
            t += 1
            continue
        b = t
        while t < T and out[t] == -1:
            t += 1
        e = t - 1
        left = right = None
        n_left = n_right = 0
        if b > 0:                      # the sequence as it stands, earlier repairs included
            left, j = out[b - 1], b - 1
            while j >= 0 and out[j] == left:
                j -= 1
            n_left = b - 1 - j
        if e < T - 1:
            right, j = out[e + 1], e + 1
            while j < T and out[j] == right:
                j += 1
            n_right = j - e - 1
        if n_right > n_left:
            new = right
        else:
            new = left if left is not None else right
        out[b:e + 1] = [0 if new is None else new] * (e - b + 1)
    return out


def prunevid_counts(n_static: int, W: int, r: float) -> tuple[float, int, int]:
    """SPEC §11.4 on host floats: (ϱ, static output count, dynamic output count per frame)."""
    rho = min(r * GRID * W / (n_static + (GRID - n_static) * W) + SLACK, 1.0)
    n_dyn = GRID - n_static
    c_s = int(n_static * rho) if n_static > PASS_THROUGH else n_static
    c_d = int(n_dyn * rho) if n_dyn > PASS_THROUGH else n_dyn
    return rho, c_s, c_d


def prunevid_fast(video: base.Video, opts: Options) -> Selection:
    x = video.features
    T, N, D = x.shape
    dev = x.device
    xf = x.float()

    # 1–3. Frame clusters by DPC-kNN over the frame means (labels in centre-score order), then
    # contiguity on the host: the first host transfer (T labels).
    n_frame_c, k_f = frame_clustering(T)
    one = torch.ones(1, dtype=torch.int64, device=dev)
    _, assign = dpc_knn_batched(xf.mean(1)[None], one * T, one * n_frame_c, n_frame_c,
                                one * k_f, k_f, by_score=True)
    labels = refine_labels(assign[0].tolist())
    segs = [(b, e) for _, b, e in label_runs(labels)]
    S = len(segs)
    W = [e - b + 1 for b, e in segs]
    seg_of, Wt = to_device(dev, [s for s, (b, e) in enumerate(segs) for _ in range(b, e + 1)], W)
    Wt = Wt.float()

    # 4. Static locations: Σ_{u≠v} cos = |Σ_u x̂_u|² − Σ_u |x̂_u|² over the segment's frames.
    xn = F.normalize(xf, dim=-1)
    tot = xf.new_zeros(S, N, D).index_add_(0, seg_of, xn)
    self_sim = xf.new_zeros(S, N).index_add_(0, seg_of, xn.square().sum(-1))
    sigma = (tot.square().sum(-1) - self_sim) / (Wt * (Wt - 1)).clamp(min=1)[:, None]
    static = (sigma > THRESHOLD) & (Wt > 1)[:, None]
    # Second host transfer: |S| per segment fixes every cluster count.
    n_static = static.sum(1).tolist()
    counts = [prunevid_counts(n, w, opts.retention_ratio) for n, w in zip(n_static, W)]

    # Sets: the S static sets (segment means of the static locations), then the T dynamic
    # sets (each frame's other locations), each compacted to the front in ascending order.
    smean = xf.new_zeros(S, N, D).index_add_(0, seg_of, xf) / Wt[:, None, None]
    s_loc = torch.sort((~static).to(torch.uint8), dim=1, stable=True).indices
    d_loc = torch.sort(static[seg_of].to(torch.uint8), dim=1, stable=True).indices
    frames = torch.arange(T, device=dev)[:, None]
    sets = torch.cat([smean.gather(1, s_loc[..., None].expand(S, N, D)), xf[frames, d_loc]])
    locs = torch.cat([s_loc, d_loc])
    size = n_static + [GRID - n_static[s] for s, (b, e) in enumerate(segs) for _ in range(b, e + 1)]
    n_out = [c[1] for c in counts] + [counts[s][2] for s, (b, e) in enumerate(segs)
                                      for _ in range(b, e + 1)]
    clus = [sz > PASS_THROUGH and c > 0 for sz, c in zip(size, n_out)]
    # 5. Output order, on host ints: per segment its static set, then its frames' dynamic sets.
    order = [set_id * N + j for s, (b, e) in enumerate(segs)
             for set_id in [s] + [S + t for t in range(b, e + 1)] for j in range(n_out[set_id])]
    # Every host-side layout in one copy (queued behind the device work on CUDA, no sync).
    act, c_counts, c_centers, c_k, seg_start, idx = to_device(
        dev, clus, [sz if a else 0 for sz, a in zip(size, clus)],
        [c if a else 0 for c, a in zip(n_out, clus)], [K if a else 0 for a in clus],
        [b for b, _ in segs], order)
    act = act.bool()
    centers, assign = dpc_knn_batched(sets, c_counts, c_centers, max(n_out + [1]), c_k, K,
                                      by_score=True)
    member = (torch.arange(N, device=dev) < c_counts[:, None]).float()
    sums = torch.zeros_like(sets).scatter_add_(1, assign[..., None].expand_as(sets),
                                               sets * member[..., None])
    num = torch.zeros(S + T, N, device=dev).scatter_add_(1, assign, member)
    means = sums[:, :centers.shape[1]] / num[:, :centers.shape[1], None].clamp(min=1)
    c_loc = locs.gather(1, centers.clamp(max=N - 1))
    width = centers.shape[1]
    out_tok = torch.where(act[:, None, None], F.pad(means, (0, 0, 0, N - width)), sets)
    out_loc = torch.where(act[:, None], F.pad(c_loc, (0, N - width)), locs)
    out_frame = torch.cat([seg_start, frames[:, 0]])
    set_of = idx // N
    positions = torch.stack([out_frame[set_of], out_loc.reshape(-1)[idx]], dim=1)
    kinds = torch.where(set_of < S, KIND_STATIC, KIND_DYNAMIC).to(torch.int8)
    return Selection(out_tok.reshape(-1, D)[idx].to(x.dtype), positions, kinds, segments=segs,
                     extras={"static_counts": n_static})
