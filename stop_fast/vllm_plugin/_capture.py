"""Read the scored ViT block's queries and keys inside vLLM, where attention returns no weights.

A forward pre-hook on the block's attention kernel module (vLLM's ``MMEncoderAttention``) sees
``query`` / ``key`` exactly as the kernel gets them (after rotary embedding where the model
applies one) and ``cu_seqlens`` where the kernel attends within variable-length groups. The
score is then recomputed from them as column means (:func:`stop_fast.column_mean_attention`,
through the helpers shared with the transformers integration), never as an N×N map.
"""
from __future__ import annotations

import torch
from torch import nn

_NAMES = ("query", "key", "value", "cu_seqlens")


class AttentionInputs:
    """Context manager keeping the inputs of the latest call of one attention module."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.query = self.key = self.cu_seqlens = None
        self._handle = None

    def __enter__(self) -> "AttentionInputs":
        self._handle = self.module.register_forward_pre_hook(self._keep, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _keep(self, module, args, kwargs):
        seen = dict(zip(_NAMES, args))
        seen.update({k: kwargs[k] for k in _NAMES if k in kwargs})
        self.query, self.key, self.cu_seqlens = seen.get("query"), seen.get("key"), seen.get("cu_seqlens")

    def heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k as (..., N, H, d) views, whether the kernel got them split into heads or not."""
        if self.query is None or self.key is None:
            raise RuntimeError("the scored vision block did not run: no query/key were captured")
        H, d = self.module.num_heads, self.module.head_size
        q, k = self.query.detach(), self.key.detach()
        if q.shape[-1] == H * d and (q.dim() < 2 or q.shape[-2] != H):
            q, k = q.unflatten(-1, (H, d)), k.unflatten(-1, (H, d))
        return q, k


def kernel_module(attention: nn.Module) -> nn.Module:
    """The attention kernel module (``.attn``) inside a vLLM vision attention block."""
    inner = getattr(attention, "attn", None)
    if not isinstance(inner, nn.Module) or not hasattr(inner, "num_heads") or not hasattr(inner, "head_size"):
        raise TypeError(f"cannot find the attention kernel module of {type(attention).__name__}; this "
                        "vLLM version is not supported by stop_fast")
    return inner
