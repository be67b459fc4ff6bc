"""Drop-in SToP for Hugging Face video LLMs, in the style of monkey-patching kernel libraries:
``apply_stop(model, method=..., retention_ratio=...)`` patches instance attributes of one model
(nothing in its class) and ``remove_stop(model)`` restores it exactly.

One module per model family, registered in :data:`MODELS` by model class name (subclasses
match too); the shared patching and prompt-cutting helpers live in :mod:`._common`. Adding a
model = one module with a :class:`~._common.ModelPatch` subclass and one line below. Nothing
here imports transformers until a model module is used.
"""
from __future__ import annotations

import importlib

from ._common import STATE_ATTR, ModelPatch, PruneRecord, make_pruner

__all__ = ["apply_stop", "remove_stop", "last_pruned", "MODELS", "SUPPORTED_MODELS", "PruneRecord"]

# Model class name → "module:ModelPatch subclass".
MODELS = {
    "LlavaOnevisionForConditionalGeneration": ".llava_onevision:LlavaOnevision",
    "Qwen2_5_VLForConditionalGeneration": ".qwen2_5_vl:Qwen2_5_VL",
}
SUPPORTED_MODELS = tuple(MODELS)
_OPTIONS_FROM_MODEL = ("metric", "global_features")


def _patch_class(model) -> type[ModelPatch]:
    for cls in type(model).__mro__:
        if cls.__name__ in MODELS:
            module, name = MODELS[cls.__name__].split(":")
            return getattr(importlib.import_module(module, __name__), name)
    raise TypeError(f"apply_stop supports {', '.join(SUPPORTED_MODELS)}; got a {type(model).__name__}")


def apply_stop(model, method: str = "holitom", retention_ratio: float = 0.1,
               use_stop: bool | None = None, *, global_head=None, **options):
    """Patch ``model`` in place so every video it sees is pruned; returns ``model``.

    Args:
        model: a ``LlavaOnevisionForConditionalGeneration`` or a
            ``Qwen2_5_VLForConditionalGeneration`` (every method; PruneVid needs 196 tokens per
            frame: LLaVA's 14×14 pooled grid, or a Qwen video of 28×28 patches).
        method: a method of :data:`stop_fast.pipelines.METHODS`.
        retention_ratio: fraction of video tokens kept, in (0, 1] (Qwen2.5-VL: of its merged
            tokens).
        use_stop: add the sink-token terms; False runs the host method alone; None: the
            method's default.
        global_head: FastVid on LLaVA only: a module mapping the feature layer's hidden states
            (frames, tokens, C) to one vector per frame, e.g.
            ``torch.nn.Sequential(siglip.post_layernorm, siglip.head)`` of a
            ``SiglipVisionModel`` loaded from the SigLIP so400m checkpoint (SPEC §9; before
            transformers 5 they sit under ``siglip.vision_model``).
            Without it FastVid segments on each frame's mean token, with a one-time warning.
        **options: the method's options (``mu_s``, ``tau``, …, and ``exact_budget``; see
            :func:`stop_fast.prune`).

    The pruner and its settings are validated here, once. Calling again replaces the previous
    settings. Undo with :func:`remove_stop`.
    """
    cls = _patch_class(model)
    for name in _OPTIONS_FROM_MODEL:
        if name in options:
            raise TypeError(f"{name} must not be passed to apply_stop: it is computed from the model")
    pruner = make_pruner(cls.model_class, cls.methods, method, retention_ratio, use_stop, **options)
    if global_head is not None and method != "fastvid":
        raise ValueError(f"global_head is only used by method='fastvid', got method={method!r}")
    if global_head is not None and not callable(global_head):
        raise TypeError(f"global_head must be a module or callable, got {type(global_head).__name__}")
    patch = cls(pruner, extras={"global_head": global_head})
    patch.check(model)
    remove_stop(model)
    patch.install(model)
    setattr(model, STATE_ATTR, patch)
    return model


def remove_stop(model):
    """Undo :func:`apply_stop` (no-op on an unpatched model); returns ``model``."""
    patch = model.__dict__.pop(STATE_ATTR, None)
    if patch is not None:
        patch.unpatch()
    return model


def last_pruned(model) -> list[PruneRecord] | None:
    """The :class:`PruneRecord` of every video of ``model``'s most recent pruned call (pruned
    tokens and positions, the per-frame scores, the token grid), or None before any."""
    patch = model.__dict__.get(STATE_ATTR)
    return None if patch is None else patch.last
