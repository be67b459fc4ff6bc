"""HoliTom's output layout after the segment sync (SPEC §6.2–§6.5), as two merge passes.

The host knows every count once the segments are fixed (static locations per segment, c_n,
k_d), so it lays out both passes in Python ints and ships them in one non-blocking copy:

- pass A (``merge_tokens`` over the features, fp32 out): the mean over its segment's frames of
  every static location of every segment that clusters (padded to ``n_pad`` per segment, the
  input of the batched DPC-KNN), then a copy of every kept dynamic token;
- pass B (``merge_tokens`` over pass A's rows, the features' dtype out): the final tokens in
  SPEC order, each static cluster β·centre + (1−β)·mean(members) of the means, each dynamic
  token a copy.

So the features are read by the cosine pass and pass A only, and the static tokens are merged
from the (much smaller) means.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import KIND_DYNAMIC, KIND_STATIC

__all__ = ["Plan"]


class Plan:
    """Host layout of one video and its device mirror (one host→device copy)."""

    def __init__(self, segments, n_static, budgets, N, K, dev):
        T = segments[-1][1] + 1
        seg_of, k_frame, frame_base, seg_base, total = [], [], [], [], 0
        for s, (b, e) in enumerate(segments):
            c_n, k_d = budgets[s]
            seg_base.append(total)
            for t in range(b, e + 1):
                seg_of.append(s)
                k_frame.append(k_d)
                frame_base.append(total + c_n + (t - b) * k_d)
            total += c_n + (e - b + 1) * k_d
        self.total, self.k_max = total, max(k_frame)
        act = [s for s in range(len(segments)) if budgets[s][0] > 0]     # segments that cluster
        self.A = A = len(act)
        self.n_pad = n_pad = max((n_static[s] for s in act), default=0)
        self.c_pad = max((budgets[s][0] for s in act), default=0)
        self.k_pad = max((min(K, budgets[s][0]) for s in act), default=0)
        # Pass A: static means (entries: frame, slot; weight 1/L), then kept dynamic copies.
        e_frame, e_slot, e_len, offsets = [], [], [], [0]
        for a, s in enumerate(act):
            b, e = segments[s]
            for k in range(n_pad):
                if k < n_static[s]:
                    e_frame += range(b, e + 1)
                    e_slot += [a * n_pad + k] * (e - b + 1)
                    e_len += [e - b + 1] * (e - b + 1)
                offsets.append(len(e_frame))
        kept = [t * self.k_max + r for t in range(T) for r in range(k_frame[t])]
        dest = [frame_base[t] + r for t in range(T) for r in range(k_frame[t])]
        self.n_dyn = len(kept)
        offsets += range(len(e_frame) + 1, len(e_frame) + self.n_dyn + 1)
        self.n_means = len(e_frame)
        self.n_static_total = sum(n_static[s] for s in act)
        host = dict(bounds=[v for seg in segments for v in seg], seg_of=seg_of, k_frame=k_frame,
                    act=act, act_n=[n_static[s] for s in act], act_c=[budgets[s][0] for s in act],
                    act_k=[min(K, budgets[s][0]) for s in act], act_base=[seg_base[s] for s in act],
                    act_b=[segments[s][0] for s in act], e_frame=e_frame, e_slot=e_slot,
                    e_len=e_len + [1] * self.n_dyn, offsets_a=offsets, kept=kept, dest=dest)
        flat = torch.tensor([v for vals in host.values() for v in vals], dtype=torch.int64)
        if dev.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(dev, non_blocking=True)                           # the one H2D copy
        parts = flat.split([len(v) for v in host.values()])
        for name, part in zip(host, parts):
            setattr(self, name, part)
        self.bounds = self.bounds.view(-1, 2)


def pass_a(plan: Plan, st_locs: torch.Tensor, dyn_locs: torch.Tensor, N: int):
    """(rows, weights, offsets) of pass A: static means, then the kept dynamic tokens.
    st_locs (A, n_pad) static locations of each clustering segment (ascending first);
    dyn_locs (T, k_max) kept dynamic locations per frame (the first k_frame[t] of each row)."""
    T = dyn_locs.shape[0]
    means = plan.e_frame * N + st_locs.flatten()[plan.e_slot]
    frames = torch.arange(T, device=dyn_locs.device)[:, None] * N
    dyn = (frames + dyn_locs).flatten()[plan.kept]
    return torch.cat([means, dyn]), 1.0 / plan.e_len, plan.offsets_a


def pass_b(plan: Plan, centers, assign, beta: float, st_locs, dyn_locs, N: int):
    """(rows, weights, offsets, positions, kinds) of pass B over pass A's rows: the final
    tokens in SPEC §6.5 order. centers (A, c_pad) ascending token indices (n_pad = padding),
    assign (A, n_pad) index into the centre row."""
    dev = assign.device
    A, n_pad, M = plan.A, plan.n_pad, plan.total
    slot = torch.arange(n_pad, device=dev)
    valid = slot < plan.act_n[:, None]                                     # (A, n_pad)
    member = valid & (slot != centers.gather(1, assign))
    counts = torch.zeros(A, plan.c_pad, device=dev).scatter_add_(1, assign, member.float())
    n_of = counts.gather(1, assign)
    w_static = torch.where(member, (1.0 - beta) / n_of.clamp(min=1.0),
                           torch.where(n_of > 0, beta, 1.0))
    out = plan.act_base[:, None] + assign                                  # final output index
    key = torch.where(valid, out * 2 + member, 2 * M + 2).flatten()
    key = torch.cat([key, plan.dest * 2])
    order = torch.sort(key, stable=True).indices[:plan.n_static_total + plan.n_dyn]
    weights = torch.cat([w_static.flatten(), torch.ones(plan.n_dyn, device=dev)])[order]
    # Output sizes: 1 + members for a static cluster, 1 for a dynamic token (a padding cluster
    # writes the spare last slot).
    cslot = torch.arange(plan.c_pad, device=dev)
    cvalid = cslot < plan.act_c[:, None]
    where = torch.where(cvalid, plan.act_base[:, None] + cslot, M).flatten()
    sizes = torch.ones(M + 1, dtype=torch.int64, device=dev).scatter_(
        0, where, (counts.to(torch.int64) + 1).flatten())[:M]
    offsets = F.pad(sizes.cumsum(0), (1, 0))
    # Position and kind of each output: those of its first entry (the centre, or the copy).
    T, k_max = dyn_locs.shape
    frames = torch.arange(T, device=dev)[:, None].expand(T, k_max)
    pos_a = torch.cat([torch.stack([plan.act_b[:, None].expand(A, n_pad), st_locs], -1).view(-1, 2),
                       torch.stack([frames, dyn_locs], -1).view(-1, 2)[plan.kept]])
    kind_a = torch.cat([torch.full((A * n_pad,), KIND_STATIC, dtype=torch.int8, device=dev),
                        torch.full((plan.n_dyn,), KIND_DYNAMIC, dtype=torch.int8, device=dev)])
    first = order[offsets[:-1]]
    return order, weights, offsets, pos_a[first], kind_a[first]
