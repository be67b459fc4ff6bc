"""Read the SToP score inputs off a running ViT without changing how it runs.

Forward hooks on the q/k projections of the layer whose output feeds the projector keep those
two activations while the tower runs as configured (SDPA / FlashAttention): no attention
weights are requested, no eager path is taken, and no N×N matrix is formed. The score is then
one call of :func:`stop_fast.column_mean_attention` on (B, N, H, d) views of the projections.
Where it can, that one block computes its attention with a kernel that also returns the row
log-sum-exp (:mod:`.attention_lse`), which the score then reuses instead of sweeping QKᵀ again.
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import column_mean_attention
from .attention_lse import capture_lse

_LAYER_PATHS = ("encoder.layers", "vision_model.encoder.layers")


def encoder_layers(tower: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a CLIP/SigLIP-style vision tower, across transformers versions."""
    for path in _LAYER_PATHS:
        obj = tower
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise TypeError(f"cannot find the encoder blocks of vision tower {type(tower).__name__}: "
                    f"expected a ModuleList at one of {_LAYER_PATHS}")


def feature_block(layers: nn.ModuleList, vision_feature_layer) -> nn.Module:
    """The block whose output is ``hidden_states[vision_feature_layer]``.

    hidden_states[0] is the patch embedding and hidden_states[i] the output of block i − 1.
    With several feature layers the deepest one is scored (its attention is the latest look
    the tower takes at the tokens the projector receives).
    """
    n = len(layers)
    wanted = vision_feature_layer
    if not isinstance(wanted, (list, tuple)):
        wanted = [wanted]
    idx = []
    for v in wanted:
        if isinstance(v, bool) or not isinstance(v, int) or not -(n + 1) <= v <= n:
            raise ValueError(f"vision_feature_layer must index the {n + 1} hidden states of the vision "
                             f"tower, got {vision_feature_layer!r}")
        idx.append(v % (n + 1))
    if max(idx) == 0:
        raise ValueError("vision_feature_layer selects the patch embeddings (hidden state 0), which have "
                         "no attention to score; SToP needs a transformer block's output")
    attn = getattr(layers[max(idx) - 1], "self_attn", None)
    if attn is None or not all(isinstance(getattr(attn, p, None), nn.Linear) for p in ("q_proj", "k_proj")):
        raise TypeError(f"vision block {max(idx) - 1} has no self_attn with q_proj/k_proj linear layers")
    return attn


class QKCapture:
    """Context manager keeping the last q/k projection outputs of one attention module.

    With ``lse`` left None the module-wide setting of :mod:`.attention_lse` decides whether the
    module also runs an attention kernel that records its row log-sum-exp (``cap.lse``).
    """

    def __init__(self, attn: nn.Module, lse: bool | None = None):
        self.attn = attn
        self.q = self.k = None
        self._handles = []
        self._use_lse = lse
        self._lse = None        # (context manager, LSERecord) while inside

    def __enter__(self) -> "QKCapture":
        self._handles = [self.attn.q_proj.register_forward_hook(self._keep("q")),
                         self.attn.k_proj.register_forward_hook(self._keep("k"))]
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
        """(B, H, N) row LSE of the latest attention call, or None (then the score computes it)."""
        return None if self._lse is None else self._lse[1].lse

    def _keep(self, name: str):
        def hook(module, args, output):
            setattr(self, name, output)
        return hook

    def heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k as (B, N, H, d) views (no copies) of the (B, N, H·d) projections."""
        if self.q is None or self.k is None:
            raise RuntimeError("the scored vision block did not run: no q/k projections were captured")
        d = getattr(self.attn, "head_dim", None)
        if d is None:
            d = self.q.shape[-1] // self.attn.num_heads
        return (self.q.detach().unflatten(-1, (-1, d)), self.k.detach().unflatten(-1, (-1, d)))


@torch.no_grad()
def frame_scores(cap: QKCapture, drop_first: bool, pool, with_metric: bool):
    """:func:`pooled_scores` of the q/k (and LSE, where recorded) that ``cap`` kept."""
    q, k = cap.heads()
    lse = cap.lse          # None where the block could not run an LSE kernel: recomputed then
    if lse is not None and tuple(lse.shape) != (q.shape[0], q.shape[2], q.shape[1]):
        lse = None         # not the call whose q/k were kept (cannot happen with one tower call)
    return pooled_scores(q, k, getattr(cap.attn, "scale", None), lse, drop_first, pool, with_metric)


@torch.no_grad()
def pooled_scores(q: torch.Tensor, k: torch.Tensor, scale, lse, drop_first: bool, pool,
                  with_metric: bool):
    """Per-frame column-mean attention and (optionally) head-mean keys, pooled like the features.

    q, k (BT, N, H, d) as the scored block used them; ``lse`` their (BT, H, N) row log-sum-exp
    or None. Returns scores (BT, Np) float32 and metric (BT, Np, d) float32 or None.
    ``drop_first`` mirrors a feature-select strategy that drops the first (CLS) token; ``pool``
    is the model's own pooling of (BT, N, C) token grids. Shared by the transformers
    integration and the vLLM plugin (SPEC §2).
    """
    scores = column_mean_attention(q, k, scale=scale, layout="bnhd", lse=lse)
    metric = k.mean(dim=2, dtype=torch.float32) if with_metric else None
    if drop_first:
        scores = scores[:, 1:]
        metric = metric[:, 1:] if metric is not None else None
    scores = pool(scores.unsqueeze(-1)).squeeze(-1)
    metric = pool(metric) if metric is not None else None
    return scores, metric
