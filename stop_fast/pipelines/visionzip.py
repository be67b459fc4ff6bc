"""VisionZip + SToP (SPEC §7): dominant top-k by ã plus merged contextual tokens, per frame.

Vectorized over frames with no host synchronization: every shape follows from (T, N) and the
retention ratio. The backend primitives are called through :func:`stop_fast.dispatch.get`
because :func:`stop_fast.pipelines.prune` has already validated the inputs (the public
wrappers would re-check finiteness, one sync each).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import get
from .common import KIND_CONTEXTUAL, KIND_DOMINANT, Config, visionzip_budget

__all__ = ["visionzip_fast", "contextual_targets"]


def contextual_targets(rem_is_sink: torch.Tensor, n_targets: int) -> torch.Tensor:
    """Positions (in the remaining-token list) of the contextual targets, per frame (SPEC §7.3).

    rem_is_sink (T, R) bool marks sink locations among the R remaining tokens. Target j starts
    at j·stride and moves forward to the next position that is neither a sink nor taken. Since
    targets then increase, target j is the u_j-th non-sink with u_j = max(r(p_j), u_{j−1} + 1),
    r(p) = number of non-sinks before p, i.e. u_j = j + max_{i≤j}(r(p_i) − i): a cumulative max.
    Past the last non-sink, targets take the sink positions in ascending order (u_j ≤ R − 1
    always, so every target exists and all are distinct).
    """
    T, R = rem_is_sink.shape
    dev = rem_is_sink.device
    stride = max(1, R // n_targets)
    j = torch.arange(n_targets, device=dev)
    start = j * stride                                                  # (C,)
    nonsink = (~rem_is_sink).to(torch.int64)
    before = nonsink.cumsum(dim=1) - nonsink                            # non-sinks before p
    u = j + torch.cummax(before[:, start] - j, dim=1).values            # (T, C)
    # Non-sink positions ascending, then sink positions ascending.
    prefer = torch.sort(rem_is_sink.to(torch.uint8), dim=1, stable=True).indices
    return prefer.gather(1, u)


def visionzip_fast(x: torch.Tensor, attn: torch.Tensor, metric: torch.Tensor, sink: torch.Tensor,
                   cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (T·S, D), positions (T·S, 2), kinds (T·S,)) in SPEC §7.4 order."""
    T, N, D = x.shape
    dev = x.device
    n_dom, n_ctx = visionzip_budget(N, cfg.retention_ratio)
    R = N - n_dom

    # 2. Dominant: top-D_n by ã, emitted in ascending location order.
    if n_dom > 0:
        dom = get("penalized_topk", cfg.backend, dev)(attn, sink, n_dom, cfg.mu_s)
        dom = dom.sort(dim=1).values
    else:
        dom = torch.empty(T, 0, dtype=torch.int64, device=dev)
    is_dom = torch.zeros(T, N, dtype=torch.bool, device=dev).scatter_(1, dom, True)
    # Remaining locations in ascending order (stable sort puts the non-dominant first).
    rem = torch.sort(is_dom.to(torch.uint8), dim=1, stable=True).indices[:, :R]

    # 3. Contextual targets: a stride over the remaining list, skipping the highest-sink locations.
    skip = min(cfg.options["num_sink_skip"], N) if cfg.use_stop else 0
    if skip > 0:
        top_sink = torch.sort(sink, descending=True, stable=True).indices[:skip]
        is_sink = torch.zeros(N, dtype=torch.bool, device=dev).scatter_(0, top_sink, True)
        pos = contextual_targets(is_sink[rem], n_ctx)
    else:
        pos = (torch.arange(n_ctx, device=dev) * max(1, R // n_ctx)).expand(T, n_ctx)
    tgt = rem.gather(1, pos)                                            # (T, C) locations

    # Every other remaining token joins its most similar target (cosine of the metric; ties to
    # the earlier target) and the contextual token is target + mean(members).
    frames = torch.arange(T, device=dev)[:, None]
    mn = F.normalize(metric.float(), dim=-1)
    sim = torch.bmm(mn, mn[frames, tgt].transpose(1, 2))                     # (T, N, C)
    member = ~is_dom & ~torch.zeros_like(is_dom).scatter_(1, tgt, True)
    weight = F.one_hot(sim.argmax(dim=2), n_ctx).float() * member[..., None]
    counts = weight.sum(dim=1)                                          # (T, C)
    sums = torch.bmm(weight.transpose(1, 2), x.float())                 # (T, C, D)

    # 4. Per frame: dominant tokens, then contextual tokens in target order.
    tokens = torch.empty(T, n_dom + n_ctx, D, dtype=x.dtype, device=dev)
    tokens[:, :n_dom] = x[frames, dom]
    tokens[:, n_dom:] = x[frames, tgt].float() + sums / counts.clamp(min=1.0)[..., None]
    locs = torch.cat([dom, tgt], dim=1)
    positions = torch.stack([frames.expand_as(locs), locs], dim=-1).reshape(-1, 2)
    kinds = torch.cat([torch.full((n_dom,), KIND_DOMINANT, dtype=torch.int8, device=dev),
                       torch.full((n_ctx,), KIND_CONTEXTUAL, dtype=torch.int8, device=dev)])
    return tokens.view(-1, D), positions, kinds.repeat(T)
