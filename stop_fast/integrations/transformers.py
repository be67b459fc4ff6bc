"""Drop-in SToP for Hugging Face video LLMs: ``apply_stop(model)`` / ``remove_stop(model)``.

Supported: ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision and LLaVA-Video
checkpoints in HF format) and ``Qwen2_5_VLForConditionalGeneration`` (VisionZip only; see
:mod:`._qwen`). For LLaVA-OneVision three instance attributes are patched, nothing in the classes:

* ``model.model.get_video_features`` runs the original (vision tower with its configured
  attention kernel, projector, the model's own 2×2 pooling) while hooks keep the q/k
  projections of the feature layer; it then scores every frame, prunes every video with
  :func:`stop_fast.prune` and returns the pruned tokens (plus each video's newline token);
* ``model.forward`` and ``model.generate`` cut each video's placeholder run in the prompt to
  its pruned length (ids, attention mask, labels and position ids stay consistent), so the
  LLM prefill is shorter. ``generate`` returns the prompt as it was passed, then the new tokens.

Images and text-only calls go through untouched; ``remove_stop`` deletes the instance
attributes again, which restores the original behaviour exactly.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field

import torch

from .. import pipelines
from ._capture import QKCapture, encoder_layers, feature_block, frame_scores
from ._sequence import VideoPlan, fit_prompt

__all__ = ["apply_stop", "remove_stop", "SUPPORTED_MODELS"]

SUPPORTED_MODELS = ("LlavaOnevisionForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
_STATE = "_stop_state"
_NEEDS_METRIC = frozenset({"visionzip"})  # methods whose contextual merging uses ViT keys


@dataclass
class _State:
    method: str
    retention_ratio: float
    use_stop: bool
    options: dict
    patched: list = field(default_factory=list)   # (object, attribute, previous instance value | _MISSING)
    cache: dict | None = None                      # video features of the current call, by pixel tensor
    depth: int = 0

    @contextlib.contextmanager
    def scope(self):
        """Keep computed video features for the duration of one forward/generate call."""
        if self.depth == 0:
            self.cache = {}
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.cache = None


_MISSING = object()


def _supported_classes():
    from transformers import LlavaOnevisionForConditionalGeneration, Qwen2_5_VLForConditionalGeneration
    return (LlavaOnevisionForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)


def _check_model(model) -> bool:
    """Raise TypeError for unsupported models; True for Qwen2.5-VL, False for LLaVA-OneVision."""
    llava, qwen = _supported_classes()
    if isinstance(model, (llava, qwen)):
        return isinstance(model, qwen)
    raise TypeError(f"apply_stop supports {', '.join(SUPPORTED_MODELS)}; got a {type(model).__name__}")


def _check_options(state: "_State", inner) -> None:
    """Validate method, ratio and options now, with the pipeline's own checks, on a dummy video
    of this model's pooled frame size (so e.g. a ratio that keeps no token per frame fails here,
    not in the middle of a generate call)."""
    if "metric" in state.options:
        raise TypeError("metric must not be passed to apply_stop: it is computed from the vision tower")
    grid = inner.config.vision_config.image_size // inner.config.vision_config.patch_size
    device = inner.image_newline.device
    device = torch.device("cpu") if device.type == "meta" else device   # offloaded weights
    dummy = torch.zeros(1, grid * grid, 1, device=device)
    n = inner.apply_pooling(dummy).shape[1]
    zeros = dummy.new_zeros(1, n, 1)
    metric = {"metric": zeros} if state.method in _NEEDS_METRIC else {}
    pipelines.prune(zeros, zeros[..., 0], method=state.method, retention_ratio=state.retention_ratio,
                    use_stop=state.use_stop, **metric, **state.options)


def apply_stop(model, method: str = "holitom", retention_ratio: float = 0.1, use_stop: bool = True,
               **options):
    """Patch ``model`` in place so every video it sees is pruned with SToP; returns ``model``.

    Args:
        model: a ``LlavaOnevisionForConditionalGeneration`` or a
            ``Qwen2_5_VLForConditionalGeneration`` (method "visionzip" only; μ_s defaults to 3.7).
        method: pruning method of :func:`stop_fast.prune` ("holitom", "visionzip", …).
        retention_ratio: fraction of video tokens kept, in (0, 1] (Qwen2.5-VL: of its merged tokens).
        use_stop: add the sink-token terms (False runs the host method alone).
        **options: passed to :func:`stop_fast.prune` (e.g. ``mu_s``, ``tau``).

    Calling it again replaces the previous settings. Undo with :func:`remove_stop`.
    """
    qwen = _check_model(model)
    state = _State(method, retention_ratio, use_stop, dict(options))
    inner = model.model
    if qwen:
        from . import _qwen
        _qwen.check_options(state)
    else:
        _check_options(state, inner)
    if hasattr(model, _STATE):
        remove_stop(model)
    if qwen:
        _qwen.patch(state, model)
    else:
        _patch(state, inner, "get_video_features", _video_features_fn(state, inner))
        _patch(state, model, "forward", _forward_fn(state, model))
        _patch(state, model, "generate", _generate_fn(state, model))
    setattr(model, _STATE, state)
    return model


def remove_stop(model):
    """Undo :func:`apply_stop` (no-op on an unpatched model); returns ``model``."""
    state = model.__dict__.pop(_STATE, None)
    if state is None:
        return model
    for obj, name, old in reversed(state.patched):
        if old is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, old)
    return model


def _patch(state: _State, obj, name: str, fn) -> None:
    state.patched.append((obj, name, obj.__dict__.get(name, _MISSING)))
    setattr(obj, name, fn)


def _bind(fn, args, kwargs) -> dict:
    """All arguments of a call as keywords (so ``input_ids`` may be passed positionally)."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    out = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"unexpected extra positional arguments: {value!r}")
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


# ----------------------------------------------------------------------------- vision side

def _video_features_fn(state: _State, inner):
    original = inner.get_video_features
    pixel_arg = next(iter(inspect.signature(original).parameters))  # pixel_values(_videos)
    config = inner.config

    @functools.wraps(original)
    def get_video_features(*args, **kwargs):
        kw = _bind(original, args, kwargs)
        pixels = kw[pixel_arg]
        layer = kw.get("vision_feature_layer")
        layer = config.vision_feature_layer if layer is None else layer
        strategy = kw.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        want_tuple = kw.pop("return_dict", True) is False
        key = (id(pixels), repr(layer), strategy)
        hit = state.cache.get(key) if state.cache is not None else None
        if hit is not None and hit[0] is pixels:
            out = hit[1]
        else:
            kw.update(vision_feature_layer=layer, vision_feature_select_strategy=strategy)
            out = _pruned_video_features(state, inner, original, kw, pixels, layer, strategy)
            if state.cache is not None:
                state.cache[key] = (pixels, out)
        return out.to_tuple() if want_tuple else out

    return get_video_features


def _pruned_video_features(state: _State, inner, original, kw, pixels, layer, strategy):
    attn = feature_block(encoder_layers(inner.vision_tower), layer)
    with QKCapture(attn) as cap:
        out = original(**kw, return_dict=True)
    feats = out.pooler_output                                  # (B, T·Np [+1], D)
    B, T = pixels.shape[:2]
    need_metric = state.method in _NEEDS_METRIC
    scores, metric = frame_scores(cap, strategy == "default", inner.apply_pooling, need_metric)
    Np = scores.shape[1]
    if feats.shape[1] not in (T * Np, T * Np + 1) or feats.shape[0] != B:
        raise RuntimeError(f"unexpected video feature layout {tuple(feats.shape)} for {B} video(s) of "
                           f"{T} frames × {Np} pooled tokens; this transformers version is not supported")
    with_newline = feats.shape[1] == T * Np + 1   # newer versions append the newline here
    scores = scores.view(B, T, Np)
    metric = metric.view(B, T, Np, -1) if metric is not None else None
    newline = inner.image_newline.to(device=feats.device, dtype=feats.dtype)[None]
    pruned = []
    for b in range(B):  # one pruning per video (a loop over videos, not tokens)
        extra = {"metric": metric[b]} if metric is not None else {}
        pruned.append(pipelines.prune(feats[b, :T * Np].view(T, Np, -1), scores[b], method=state.method,
                                      retention_ratio=state.retention_ratio, use_stop=state.use_stop,
                                      **extra, **state.options))
    runs = [torch.cat((p.tokens.to(feats.dtype), newline)) for p in pruned]
    plan = VideoPlan(full=T * Np + 1, kept=tuple(r.shape[0] for r in runs))
    if len(set(plan.kept)) == 1:
        video = torch.stack(runs)                              # (B, M + 1, D), the model's own layout
    else:
        # Unequal lengths: one row holding every video's run; the placeholders are filled
        # row-major, so this lands each run on its own video's placeholders.
        video = torch.cat(runs)[None]
    if not with_newline:
        video = video[:, :-1]                                  # the model appends one per row
    out.pooler_output = video
    out.stop_pruned = pruned        # the PrunedVideo of each video (tokens, source positions)
    out.stop_plan = plan
    out.stop_newline_included = with_newline
    return out


# ----------------------------------------------------------------------------- prompt side

def _prompt_kwargs(model):
    config = model.config
    gen = getattr(model, "generation_config", None)
    pad = getattr(gen, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(config, "text_config", config), "pad_token_id", None)
    pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    return dict(token_id=config.video_token_id, pad_id=0 if pad is None else int(pad),
                embed=model.get_input_embeddings())


def _video_plan(model, kw):
    """Run (or reuse) the pruned video features of a call → (plan, placeholders they fill), or
    None when the call has no video pruned by this integration."""
    pixels = kw.get("pixel_values_videos")
    if pixels is not None:
        out = model.model.get_video_features(
            pixels, vision_feature_layer=kw.get("vision_feature_layer"),
            vision_feature_select_strategy=kw.get("vision_feature_select_strategy"), return_dict=True)
    else:
        out = (kw.get("mm_encoder_outputs") or {}).get("video")  # pre-encoded, maybe beam-expanded
        if getattr(out, "stop_plan", None) is None:
            return None
    video = out.pooler_output
    # Older transformers append one newline per row of the features themselves.
    fitted = video.numel() // video.shape[-1] + (0 if out.stop_newline_included else video.shape[0])
    return out.stop_plan, fitted


def _forward_fn(state: _State, model):
    original = model.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        kw = _bind(original, args, kwargs)
        if kw.get("pixel_values_videos") is None and kw.get("mm_encoder_outputs") is None:
            return original(*args, **kwargs)
        with state.scope():
            plan = _video_plan(model, kw)
            if plan is not None:
                kw = fit_prompt(kw, *plan, **_prompt_kwargs(model))
            return original(**kw)

    return forward


def _generate_kwargs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """generate()'s arguments with the prompt as ``input_ids`` (it may come positionally, or as
    ``inputs``)."""
    kw = dict(kwargs)
    if args:
        kw["inputs"], args = args[0], args[1:]
    if kw.get("inputs") is not None:
        kw["input_ids"] = kw.pop("inputs")
    return args, kw


def _generate_fn(state: _State, model):
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        if kwargs.get("pixel_values_videos") is None:
            return original(*args, **kwargs)
        args, kw = _generate_kwargs(args, kwargs)
        prompt = kw.get("input_ids")
        with state.scope():
            with torch.no_grad():
                plan, fitted = _video_plan(model, kw)
            _check_expansion(model, kw, plan)
            kw = fit_prompt(kw, plan, fitted, **_prompt_kwargs(model))
            out = original(*args, **kw)
        return _restore_prompt(out, prompt, kw.get("input_ids"))

    return generate


def _check_expansion(model, kw, plan: VideoPlan) -> None:
    # transformers repeats pre-encoded features per row for beams; a single row holding videos of
    # different lengths cannot be repeated that way.
    gen = kw.get("generation_config") or model.generation_config
    expand = max(kw.get("num_beams", gen.num_beams) or 1,
                 kw.get("num_return_sequences", gen.num_return_sequences) or 1)
    if expand > 1 and len(set(plan.kept)) > 1:
        raise ValueError("beam search / num_return_sequences > 1 needs every video of the batch pruned "
                         f"to the same length, got {list(plan.kept)} tokens; generate these videos one "
                         "at a time (or use method='visionzip', which keeps a fixed count)")


def _restore_prompt(out, prompt, fitted):
    """Put the caller's prompt back in front of the generated tokens (they index past it)."""
    if prompt is None or fitted is None or prompt is fitted:
        return out
    seq = out if isinstance(out, torch.Tensor) else getattr(out, "sequences", None)
    if seq is None or seq.shape[0] % prompt.shape[0]:
        return out
    full = torch.cat((prompt.repeat_interleave(seq.shape[0] // prompt.shape[0], 0).to(seq.device),
                      seq[:, fitted.shape[1]:]), dim=1)
    if isinstance(out, torch.Tensor):
        return full
    out.sequences = full
    return out
