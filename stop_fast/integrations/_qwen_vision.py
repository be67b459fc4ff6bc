"""SToP scores of Qwen2.5-VL video tokens, read off its vision tower without changing how it runs.

The tower attends within windows in most blocks and over each whole temporal patch group (one
"frame" of T' = T/2) in the blocks of ``fullatt_block_indexes``; the last of those is scored.
Hooks keep that block's fused qkv projection and the ``cu_seqlens`` / rotary (cos, sin) it is
called with; q and k are then rotated with the model's own ``apply_rotary_pos_emb_vision``,
so the score sees exactly the q/k the attention saw. Tokens run in window order inside the
tower; scores are merged 2×2 (the four patches of one merged token are consecutive) and put
back in the merger's output order with the model's window index. Where it can, the scored block
runs its per-group attention with a kernel that also returns the row log-sum-exp
(:mod:`.attention_lse`), which the score reuses instead of sweeping QKᵀ again.
"""
from __future__ import annotations

import inspect
import sys

import torch
from torch import nn

from ..api import column_mean_attention
from .attention_lse import capture_lse

_PRECOMPUTED = ("window_index", "cu_window_seqlens")   # vision kwargs newer versions accept


def scored_attention(visual: nn.Module) -> nn.Module:
    """The attention module of the last full-attention block of a Qwen2.5-VL vision tower."""
    full = list(getattr(visual, "fullatt_block_indexes", None) or ())
    blocks = getattr(visual, "blocks", None)
    if not full or not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"vision tower {type(visual).__name__} has no full-attention blocks "
                        "(fullatt_block_indexes) to score; expected a Qwen2.5-VL vision tower")
    attn = getattr(blocks[max(full)], "attn", None)
    if attn is None or not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise TypeError(f"vision block {max(full)} has no attn with a fused qkv linear layer")
    return attn


def _rotary_fn(attn: nn.Module):
    fn = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb_vision", None)
    if fn is None:
        raise TypeError(f"cannot find apply_rotary_pos_emb_vision next to {type(attn).__name__}; "
                        "this transformers version is not supported")
    return fn


class QKVCapture:
    """Context manager keeping one vision attention call's qkv output, cu_seqlens and (cos, sin).

    ``lse`` (None: the setting of :mod:`.attention_lse`) also has the block record the row
    log-sum-exp of its attention, chunk by chunk (``cap.lse``, (1, H, L) in window order).
    """

    def __init__(self, attn: nn.Module, lse: bool | None = None):
        self.attn = attn
        self.rotate = _rotary_fn(attn)
        self._sig = inspect.signature(attn.forward)
        self.qkv = self.cu_seqlens = self.rope = None
        self._handles = []
        self._use_lse = lse
        self._lse = None        # (context manager, LSERecord) while inside

    def __enter__(self) -> "QKVCapture":
        self._handles = [self.attn.register_forward_pre_hook(self._inputs, with_kwargs=True),
                         self.attn.qkv.register_forward_hook(self._output)]
        ctx = capture_lse(self.attn, self._use_lse)
        self._lse = (ctx, ctx.__enter__())
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._lse is not None:
            self._lse[0].__exit__(*exc)

    @property
    def lse(self) -> torch.Tensor | None:
        """(1, H, L) row LSE of the latest call (its chunks in order), or None."""
        return None if self._lse is None else self._lse[1].lse

    def _inputs(self, module, args, kwargs):
        bound = self._sig.bind_partial(*args, **kwargs).arguments
        self.cu_seqlens, self.rope = bound.get("cu_seqlens"), bound.get("position_embeddings")

    def _output(self, module, args, output):
        self.qkv = output

    def qk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-RoPE q, k as (L, H, d), in window order, exactly as the attention used them."""
        if self.qkv is None or self.cu_seqlens is None:
            raise RuntimeError("the scored vision block did not run: nothing was captured")
        if not isinstance(self.rope, (tuple, list)) or len(self.rope) != 2:
            raise TypeError("the vision attention was not given position_embeddings=(cos, sin); "
                            "this transformers version is not supported")
        L = self.qkv.shape[0]
        q, k, _ = self.qkv.detach().reshape(L, 3, self.attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = self.rope
        return self.rotate(q, k, cos, sin)


def window_reverse(visual: nn.Module, grid_thw: torch.Tensor, call_kwargs: dict) -> torch.Tensor:
    """argsort of the tower's window index: merged tokens in window order → merger output order."""
    given = {}
    for name in _PRECOMPUTED:        # the caller may pass them precomputed (video_-prefixed or not)
        for key in (f"video_{name}", name):
            if call_kwargs.get(key) is not None:
                given[name] = call_kwargs[key]
    method = getattr(visual, "get_window_index", None)        # transformers 5.0 – 5.x
    if callable(method):
        index = method(grid_thw)[0]
    else:
        fn = getattr(sys.modules[type(visual).__module__], "get_vision_window_index", None)
        if fn is None:
            raise TypeError(f"cannot find the window index of {type(visual).__name__}; "
                            "this transformers version is not supported")
        index = fn(grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
                   patch_size=visual.patch_size, kwargs=given)[0]
    return torch.argsort(index.to(grid_thw.device))


@torch.no_grad()
def merged_scores(cap: QKVCapture, grids: list[list[int]], merge: int, reverse: torch.Tensor,
                  with_metric: bool):
    """:func:`group_scores` of the q/k (and LSE, where recorded) that ``cap`` kept."""
    q, k = cap.qk()
    lse = cap.lse                # None where the block could not run an LSE kernel: recomputed then
    lse = lse[0] if lse is not None and tuple(lse.shape) == (1, q.shape[1], q.shape[0]) else None
    return group_scores(q, k, cap.cu_seqlens, getattr(cap.attn, "scaling", None), lse, grids, merge,
                        reverse, with_metric)


@torch.no_grad()
def group_scores(q: torch.Tensor, k: torch.Tensor, cu_seqlens, scale, lse, grids: list[list[int]],
                 merge: int, reverse: torch.Tensor, with_metric: bool):
    """Column-mean attention per temporal patch group, merged like the tokens (SPEC §14).

    q, k (L, H, d): the scored full-attention block's post-RoPE queries and keys in the tower's
    window order; ``cu_seqlens`` the groups it attended within; ``lse`` (H, L) or None;
    ``reverse`` the argsort of the window index. Returns scores (M,) float32 and metric (M, d)
    float32 (head-mean keys) or None, for the M merged tokens of all videos in the merger's
    output order; each group's merged scores sum to 1/merge². Shared by the transformers
    integration and the vLLM plugin.
    """
    lengths = [h * w for t, h, w in grids for _ in range(t)]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    # One small host copy: the full-attention groups must be the temporal patch groups.
    if [int(c) for c in cu_seqlens.tolist()] != cu:
        raise RuntimeError("the scored vision block does not attend within each temporal patch group "
                           "(unexpected cu_seqlens); this version of the model code is not supported")
    scores, start = [], 0
    for t, h, w in grids:        # one call per video (frames of one video share a size)
        qv, kv = (x[start:start + t * h * w].view(t, h * w, *x.shape[1:]) for x in (q, k))
        lv = None if lse is None else lse[:, start:start + t * h * w].unflatten(1, (t, h * w)).transpose(0, 1)
        scores.append(column_mean_attention(qv, kv, scale=scale, layout="bnhd", lse=lv).flatten())
        start += t * h * w
    unit = merge * merge
    reverse = reverse.to(q.device)
    scores = torch.cat(scores).view(-1, unit).mean(dim=1)[reverse]
    metric = None
    if with_metric:
        metric = k.mean(dim=1, dtype=torch.float32).view(-1, unit, k.shape[-1]).mean(dim=1)[reverse]
    return scores, metric


def prune_groups(pruner, feats, scores: torch.Tensor, metric, grids: list[list[int]], merge: int) -> list:
    """Prune each video's (T', N') merged tokens: feats one (T'·N', D) tensor per video, scores
    (M,) and metric (M, d) or None for all videos (:func:`group_scores`). FastVid's global
    vector of a temporal group is its mean merged token (SPEC §14). Returns one
    :class:`~._common.PruneRecord` per video; the grid is the merged (h, w)."""
    from ..pipelines import get_method
    from ._common import prune_frames
    uses_global = get_method(pruner.options.method).uses_global
    records, start = [], 0
    for (t, h, w), f in zip(grids, feats):        # one pruning per video
        n = t * h * w // merge ** 2
        per = n // t
        x, a = f.view(t, per, -1), scores[start:start + n].view(t, per)
        m = metric[start:start + n].view(t, per, -1) if metric is not None else None
        g = x.float().mean(dim=1) if uses_global else None
        records.append(prune_frames(pruner, x, a, m, g, (h // merge, w // merge)))
        start += n
    return records
