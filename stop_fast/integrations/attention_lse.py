"""Run the one scored ViT attention with a fused kernel that also hands out each row's log-sum-exp.

:func:`stop_fast.column_mean_attention` skips its first QKᵀ sweep when given ``lse`` (B, H, Nq):
the natural-log log-sum-exp of each *scaled* score row. The tower's fused attention computes
exactly that and throws it away; here the scored block runs one of PyTorch's SDPA kernels that
return it (conventions checked against float64 in the tests; all give float32 for 16/32-bit
inputs, natural log, scale applied):

* CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` → (out, lse (B, H, N), stored
  (B, N, H)-major: a strided view, which the score kernels read as is).
* CUDA, fp16/bf16, head dim a multiple of 8 and ≤ 256 (72 and 80 are):
  ``aten._scaled_dot_product_flash_attention`` → lse (B, H, N).
* CUDA otherwise (fp32 has no flash kernel): ``aten._scaled_dot_product_efficient_attention``
  with ``compute_log_sumexp=True`` → lse (B, H, ⌈N/32⌉·32), the padding sliced off.
* CUDA, if both refuse and the ``flash_attn`` package is installed: ``flash_attn_func(...,
  return_attn_probs=True)`` → softmax_lse (B, H, N). Not exercised by this project's tests.

Anything else — a mask, dropout, causal or packed attention, grouped KV heads, another device, a
missing op — gives ``None``: the block runs its configured attention and the score kernel
computes its own LSE (results identical, one sweep slower). Switch the whole mechanism off with
:func:`set_attention_lse` or ``STOP_FAST_ATTENTION_LSE=0``.

Only the scored module is rerouted: :func:`capture_lse` swaps that module's ``config`` for a
view whose ``_attn_implementation`` names the function registered here, which computes (out,
lse) and records lse; every other block keeps reading the shared config and runs as configured.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch
from torch import nn

NAME = "stop_fast_lse"
_enabled = os.environ.get("STOP_FAST_ATTENTION_LSE", "1") not in ("0", "false", "False")
# Arguments that change the attention math beyond plain softmax(q kᵀ·scale) v.
_UNSUPPORTED = ("position_bias", "softcap", "s_aux", "sinks", "sliding_window", "cache", "head_mask",
                "cu_seq_lens_q", "cu_seq_lens_k")
_warned: set[str] = set()


def set_attention_lse(enabled: bool) -> None:
    """Turn the reuse of the scored block's LSE on (default) or off, process-wide."""
    global _enabled
    _enabled = bool(enabled)


def attention_lse_enabled() -> bool:
    return _enabled


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _cpu(q, k, v, scale):
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return None if op is None else op(q, k, v, 0.0, False, scale=scale)[:2]


def _cuda_flash(q, k, v, scale):
    d = q.shape[-1]
    if q.dtype not in (torch.float16, torch.bfloat16) or d % 8 or d > 256:
        return None
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]


def _flash_attn_package(q, k, v, scale):
    # Untested here (the package needs a CUDA build); flash_attn takes and returns (B, N, H, d).
    if q.dtype not in (torch.float16, torch.bfloat16):
        return None
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    out, lse, _ = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0,
                                  softmax_scale=scale, causal=False, return_attn_probs=True)
    return out.transpose(1, 2), lse


def _cuda_efficient(q, k, v, scale):
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                  scale=scale)[:2]


_BACKENDS = {"cpu": (_cpu,), "cuda": (_cuda_flash, _flash_attn_package, _cuda_efficient)}


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """Non-causal, unmasked softmax(q kᵀ·scale) v and its row LSE, or None where no kernel fits.

    q, k, v (B, H, N, d) with a unit last stride (the views a ViT's projections give). Returns
    (out (B, H, Nq, d) in q's dtype, lse (B, H, Nq), natural log of the scaled rows).
    """
    if q.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3] or v.shape[:3] != k.shape[:3]:
        return None            # grouped KV heads or odd shapes: not the plain SDPA case
    if q.dtype != k.dtype or q.dtype != v.dtype:
        return None
    B, H, Nq, _ = q.shape
    for backend in _BACKENDS.get(q.device.type, ()):
        try:
            got = backend(q, k, v, scale)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError) as e:   # this kernel refuses the input: next one
            _warn_once(backend.__name__, f"stop_fast: {backend.__name__} attention with LSE failed on "
                                         f"{q.dtype} head dim {q.shape[-1]} ({e}); trying the next kernel")
            continue
        if got is None:
            continue
        out, lse = got
        if lse.dim() != 3 or tuple(lse.shape[:2]) != (B, H) or lse.shape[2] < Nq:
            _warn_once("shape", f"stop_fast: {backend.__name__} returned a log-sum-exp of shape "
                                f"{tuple(lse.shape)}, expected (B, H, ≥Nq) = ({B}, {H}, ≥{Nq}); not reused")
            return out, None
        return out, lse[..., :Nq]
    return None


class LSERecord:
    """The row LSE of the latest call of one attention module, chunk by chunk.

    A module may call its attention function once per packed sequence (Qwen2.5-VL does, per
    temporal patch group); ``chunks`` then hold one (B, H, Ni) each, in call order. ``lse``
    is None when any call of the latest forward ran without an LSE.
    """

    def __init__(self):
        self.chunks: list[torch.Tensor] = []
        self.complete = False

    def reset(self) -> None:
        self.chunks, self.complete = [], True

    def add(self, lse: torch.Tensor | None) -> None:
        if lse is None:
            self.complete = False
        elif self.complete:
            self.chunks.append(lse.detach())

    @property
    def lse(self) -> torch.Tensor | None:
        """All chunks of the latest call concatenated over queries, or None."""
        if not self.complete or not self.chunks:
            return None
        return self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks, dim=-1)


class _ConfigView:
    """The module's config with only ``_attn_implementation`` changed; the rest reads through."""

    def __init__(self, base, record: LSERecord, original: str | None, fallback):
        self.__dict__.update(_base=base, _attn_implementation=NAME, stop_record=record,
                             stop_original=original, stop_fallback=fallback)

    def __getattr__(self, name):
        return getattr(self.__dict__["_base"], name)

    def __setattr__(self, name, value):
        setattr(self._base, name, value)


def _lse_attention_forward(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """Attention interface for the scored module: (out (B, N, H, d), None), recording the LSE."""
    view = module.config
    plain = (attention_mask is None and not dropout and not is_causal and not kwargs.get("output_attentions")
             and all(kwargs.get(name) is None for name in _UNSUPPORTED))
    got = attention_with_lse(query, key, value, scaling) if plain else None
    if got is None:
        view.stop_record.add(None)
        return view.stop_fallback(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=is_causal, **kwargs)
    out, lse = got
    view.stop_record.add(lse)
    return out.transpose(1, 2).contiguous(), None      # like SDPA's: (B, N, H, d)


def _interface(module: nn.Module):
    """The attention registry the module's modeling file dispatches through, and its eager path."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    except ImportError:
        return None
    home = sys.modules.get(type(module).__module__)
    registry = getattr(home, "ALL_ATTENTION_FUNCTIONS", ALL_ATTENTION_FUNCTIONS)
    eager = getattr(home, "eager_attention_forward", None)
    if eager is None or not isinstance(registry, AttentionInterface):
        return None
    if NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, _lse_attention_forward)
    return registry, eager


@contextlib.contextmanager
def capture_lse(module: nn.Module, enabled: bool | None = None):
    """Within the block, ``module`` computes its attention with an LSE kernel where it can.

    Yields an :class:`LSERecord` (its ``lse`` stays None if disabled, if the module does not
    dispatch through transformers' attention registry, or if a call could not use the kernel).
    The module's own ``config`` attribute is restored on exit.
    """
    record = LSERecord()
    enabled = _enabled if enabled is None else enabled
    config = getattr(module, "config", None)
    found = _interface(module) if enabled and config is not None else None
    original = getattr(config, "_attn_implementation", None)
    if found is None or original == NAME or not isinstance(original, str):
        yield record
        return
    registry, eager = found
    fallback = registry.get_interface(original, eager)
    handle = module.register_forward_pre_hook(lambda *_: record.reset())
    module.config = _ConfigView(config, record, original, fallback)
    try:
        yield record
    finally:
        module.config = config
        handle.remove()
