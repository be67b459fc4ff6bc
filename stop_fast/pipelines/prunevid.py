"""PruneVid baseline (SPEC §11): frame clusters → segments, static/dynamic tokens per segment.

PruneVid reads no attention, so SToP has nothing to act on (``use_stop=True`` is an error).
The frame clustering and its contiguity repair are a few dozen host steps on T labels. The
features are read three times: once for every frame's Gram matrix and the frame sums, once
for the static test and the segment means of every segment, and once for the output tokens,
each the mean of its members, written straight into LLM order. DPC-kNN runs on Gram matrices
(the frames' for the dynamic sets, the segment means' for the static sets), all sets at
once. Two host transfers per video: the frame labels, and the static count of each segment
(every cluster count follows from it).

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

from . import _merge_ops as M
from . import base
from .base import KIND_DYNAMIC, KIND_STATIC, Selection, to_device
from .dpc_knn import dpc_knn_gram

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
    dev, be = x.device, video.backend

    # 1. One pass over the features: every frame's Gram (the dynamic sets' distances) and the
    # frame sums. Frame clusters by DPC-kNN over the frame means (their Gram, centred: the same
    # distances, fewer digits lost; the 1/N of the means goes into the distance scale), labels
    # in centre-score order; contiguity on the host: the first host transfer (T labels).
    xs = M.features(x, be)
    G, _, F_sum = M.frame_grams(xs, be, cross=False)
    fc = F_sum - F_sum.mean(0)
    n_frame_c, k_f = frame_clustering(T)
    n_fc, k_fc = to_device(dev, [n_frame_c], [k_f])
    _, assign = dpc_knn_gram((fc @ fc.T)[None], torch.ones(1, T, dtype=torch.bool, device=dev),
                             n_fc, n_frame_c, k_fc, k_f, D * N * N, be)
    labels = refine_labels(assign[0].tolist())
    segs = [(b, e) for _, b, e in label_runs(labels)]
    S = len(segs)
    W = [e - b + 1 for b, e in segs]
    seg_of = [s for s, (b, e) in enumerate(segs) for _ in range(b, e + 1)]
    bounds, seg_t, pairs = to_device(dev, segs, seg_of, [[max(w * (w - 1), 1)] for w in W])

    # 4. Static locations: Σ_{u≠v} cos over the segment's frames, from a second pass that also
    # gives the segment means of every location. (W = 1: no pair, never static.)
    norms = G.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt()
    mean, cos_sum = M.segment_stats(xs, norms, bounds, be)
    static = cos_sum / pairs > THRESHOLD
    # Second host transfer: |S| per segment fixes every cluster count.
    n_static = static.sum(1).tolist()
    counts = [prunevid_counts(n, w, opts.retention_ratio) for n, w in zip(n_static, W)]

    # Sets: the S static sets (segment means at the static locations), then the T dynamic
    # sets (each frame's other locations); members in ascending location order.
    size = n_static + [GRID - n_static[s] for s in seg_of]
    n_out = [c[1] for c in counts] + [counts[s][2] for s in seg_of]
    clus = [sz > PASS_THROUGH and c > 0 for sz, c in zip(size, n_out)]
    # 5. Output rows, on host ints: per segment its static set, then its frames' dynamic sets;
    # a set of more than PASS_THROUGH tokens without clusters sends its tokens to a spare row.
    order = [g for s in range(S) for g in [s] + [S + t for t in range(segs[s][0], segs[s][1] + 1)]]
    base = [0] * (S + T)
    total = 0
    for g in order:
        base[g] = total
        total += n_out[g]
    base = [total if not c and sz > PASS_THROUGH else b for b, c, sz in zip(base, clus, size)]
    frame_of = [segs[g][0] if g < S else g - S for g in order for _ in range(n_out[g])]
    kind_of = [KIND_STATIC if g < S else KIND_DYNAMIC for g in order for _ in range(n_out[g])]
    slot_of = [g * N + j for g in order for j in range(n_out[g])]
    act, n_cen, k_set, base_t, wdiv, frame_t, kind_t, slot_t = to_device(
        dev, clus, [c if a else 0 for c, a in zip(n_out, clus)], [K if a else 0 for a in clus],
        base, [[W[g] if g < S else 1] for g in range(S + T)], frame_of, kind_of, slot_of)
    act = act.bool()
    is_static = static[seg_t]
    valid = torch.cat([static, ~is_static])                            # (S + T, N)
    c_max = max(n_out + [1])
    # DPC-kNN of the static sets (Gram of the segment means) and the dynamic sets (the frames'
    # Grams), each set on its own valid locations.
    gram_s = M.frame_grams(mean, be, cross=False)[0]
    if be == "triton":      # two launches each, rather than a copy of every Gram
        cen_s, asg_s = dpc_knn_gram(gram_s, static, n_cen[:S], c_max, k_set[:S], K, D, be)
        cen_d, asg_d = dpc_knn_gram(G, ~is_static, n_cen[S:], c_max, k_set[S:], K, D, be)
        cen, asg = torch.cat([cen_s, cen_d]), torch.cat([asg_s, asg_d])
    else:                   # one set of ops for all sets, at the price of that copy
        cen, asg = dpc_knn_gram(torch.cat([gram_s, G]), valid, n_cen, c_max, k_set, K, D, be)
    # Each token's output row and weight: a cluster mean, or a pass-through token; static
    # tokens also average over the segment's W frames.
    rank = valid.cumsum(1) - 1
    col = torch.where(act[:, None], asg, rank).clamp(min=0)
    size_of = torch.zeros(S + T, N + 1, device=dev).scatter_add_(
        1, torch.where(valid, col, N), torch.ones(S + T, N, device=dev))
    weight = (size_of.gather(1, col) * wdiv).reciprocal().view(-1)
    out_row = torch.where(base_t[:, None] < total, base_t[:, None] + col, total).view(-1)
    set_of = torch.where(is_static, seg_t[:, None], S + torch.arange(T, device=dev)[:, None])
    tok = (set_of * N + torch.arange(N, device=dev)).view(-1)         # (set, location) of each token
    tokens = M.scatter_rows(xs, out_row[tok], weight[tok], total + 1, be, x.dtype)[:total]
    # Locations: a cluster's centre, or the pass-through token's own location.
    loc = torch.zeros(S + T, N + 1, dtype=torch.int64, device=dev).scatter_(
        1, torch.where(valid, rank, N), torch.arange(N, device=dev).expand(S + T, N))
    out_loc = torch.where(act[:, None], F.pad(cen, (0, N - c_max)), loc[:, :N]).view(-1)
    positions = torch.stack([frame_t, out_loc[slot_t]], dim=1)
    return Selection(tokens, positions, kind_t.to(torch.int8), segments=segs,
                     extras={"static_counts": n_static})
