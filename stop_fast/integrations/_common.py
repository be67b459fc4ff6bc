"""What every model integration shares: the patch bookkeeping (:class:`ModelPatch`), argument
binding, and shrinking a prompt's video placeholders to the pruned token counts.

A video processor writes F_v placeholder tokens for video v (LLaVA-OneVision: T·N pooled
tokens plus the trailing newline; Qwen2.5-VL: T'·N' merged tokens). After pruning video v keeps
K_v of them: the first K_v of its run, which the model then fills in order with the pruned
tokens. Every other token (text, image placeholders, padding) is kept, and rows are re-padded
on the side they were padded on. :func:`source_columns` tells which unpruned token each kept
one stands for, so per-token positions (Qwen2.5-VL's M-RoPE ids) can follow their tokens.
"""
from __future__ import annotations

import abc
import contextlib
import functools
import inspect
from dataclasses import dataclass, field

import torch

from ..pipelines import PrunedVideo
from ..pipelines.entry import Pruner

# Per-token (B, L[, …]) inputs that must shrink with the sequence, and their fill values.
_SEQUENCE_INPUTS = {"input_ids": None, "inputs_embeds": 0, "attention_mask": 0, "labels": -100,
                    "token_type_ids": 0, "mm_token_type_ids": 0}


@dataclass(frozen=True)
class VideoPlan:
    """Placeholder counts of a batch of videos: ``full`` before pruning (one int shared by every
    video, or one entry per video), ``kept`` (one entry per video, in placeholder order) after."""

    full: int | tuple[int, ...]
    kept: tuple[int, ...]

    @property
    def fulls(self) -> tuple[int, ...]:
        return self.full if isinstance(self.full, tuple) else (self.full,) * len(self.kept)

    @property
    def full_total(self) -> int:
        return sum(self.fulls)

    def describe(self) -> str:
        full = list(self.full) if isinstance(self.full, tuple) else self.full
        return f"{len(self.kept)} video(s) × {full} tokens"


def video_mask(input_ids, inputs_embeds, token_id: int, embed) -> torch.Tensor:
    """(B, L) bool: where the video placeholders are, from ids or (like the model) from embeddings."""
    if input_ids is not None:
        return input_ids == token_id
    ref = embed(torch.full((), token_id, dtype=torch.long, device=inputs_embeds.device))
    return (inputs_embeds == ref).all(-1)


def check_count(n: int, plan: VideoPlan, fitted: int) -> bool:
    """True when a prompt with ``n`` placeholders still needs fitting, False when it already holds
    the pruned count; ValueError when it matches neither layout."""
    if n == fitted:
        return False
    if n != plan.full_total:
        raise ValueError(
            f"the prompt holds {n} video placeholder tokens, expected {plan.full_total} "
            f"({plan.describe()}, as the processor writes them) "
            f"or {fitted} (already fitted to the pruned videos)")
    return True


def fit_prompt(inputs: dict, plan: VideoPlan, fitted: int, token_id: int, pad_id: int, embed) -> dict:
    """Return ``inputs`` with each video's placeholder run cut to its pruned length.

    ``fitted`` is the number of placeholders the pruned features fill as they will be used
    (``generate`` may have repeated them for beams). Prompts that already hold that many (as
    ``generate`` passes them on to ``forward``) come back unchanged. Raises ValueError when the
    placeholder count matches neither the full nor the pruned layout.
    """
    ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
    if ids is None and embeds is None:
        raise ValueError("videos need a prompt: pass input_ids (or inputs_embeds) with the video "
                         "placeholder tokens, got neither")
    mask = video_mask(ids, embeds, token_id, embed)
    n = int(mask.sum())  # host sync: the shrunken prompt's length depends on it
    if not check_count(n, plan, fitted):
        return inputs
    return compact(inputs, keep_mask(mask, plan), pad_id)


def _placeholder_index(mask: torch.Tensor, plan: VideoPlan):
    """(rank, video, offset), each (B, L) int64: a placeholder's index in row-major order (the
    order the model fills them in), its video, and its index in that video's run. Off the
    placeholders the values are meaningless."""
    rank = mask.flatten().cumsum(0).view_as(mask) - 1
    fulls = torch.tensor(plan.fulls, device=mask.device)
    starts = fulls.cumsum(0) - fulls
    video = (torch.searchsorted(starts, rank, right=True) - 1).clamp(0, len(plan.kept) - 1)
    return rank, video, rank - starts[video]


def keep_mask(mask: torch.Tensor, plan: VideoPlan) -> torch.Tensor:
    """(B, L) bool: every non-video token, and the first K_v placeholders of each video's run."""
    _, video, offset = _placeholder_index(mask, plan)
    kept = torch.tensor(plan.kept, device=mask.device)
    return ~mask | (offset < kept[video])


def source_columns(mask: torch.Tensor, plan: VideoPlan, sources: list[torch.Tensor]) -> torch.Tensor:
    """(B, L) int64: for each token of the unpruned prompt, the column of the token whose place
    it takes. Kept placeholder o of video v stands for the unpruned token ``sources[v][o]`` (an
    index into the video's own run of F_v placeholders); every other token stands for itself.

    Assumes each video's placeholders lie in one row (as processors write them).
    """
    B, L = mask.shape
    dev = mask.device
    rank = mask.flatten().cumsum(0).view_as(mask) - 1
    starts = [sum(plan.fulls[:v]) for v in range(len(plan.fulls))]
    # lookup[r] = rank of the placeholder that the placeholder of rank r stands for.
    lookup = torch.arange(plan.full_total, device=dev)
    at = torch.cat([s + torch.arange(src.numel(), device=dev) for s, src in zip(starts, sources)])
    lookup[at] = torch.cat([s + src.to(dev) for s, src in zip(starts, sources)])
    # Flat positions of the placeholders in rank order (the count is known: no sync).
    flat = torch.sort((~mask).flatten().to(torch.uint8), stable=True).indices[:plan.full_total]
    target = flat[lookup[rank.clamp(0, plan.full_total - 1)]] % L
    cols = torch.arange(L, device=mask.device).expand(B, L)
    return torch.where(mask, target, cols)


@dataclass(frozen=True)
class Slots:
    """Where each kept token of a (B, L) prompt lands in the compacted (B, new_len) one."""

    rows: torch.Tensor
    slot: torch.Tensor          # (B, L): target column; dropped tokens go to a spare column new_len
    new_len: int
    ragged: bool                # rows now have different lengths (padding appears)

    def apply(self, x: torch.Tensor, fill) -> torch.Tensor:
        """Compact a (B, L, …) per-token tensor, filling new padding with ``fill``."""
        B = x.shape[0]
        new = x.new_full((B, self.new_len + 1, *x.shape[2:]), fill)
        new[self.rows, self.slot] = x
        return new[:, :self.new_len]


def slots(keep: torch.Tensor, attention_mask=None) -> Slots:
    """Compute :class:`Slots` for dropping the tokens where ``keep`` is False (one host sync)."""
    B, L = keep.shape
    am = attention_mask
    lengths = keep.sum(1)
    right = (am[:, -1] == 0).any() if am is not None else keep.new_zeros(())
    # One host sync: the new width is data-dependent (and so are the padding side and whether
    # rows of different lengths now need a mask).
    new_len, shortest, right = torch.stack((lengths.max(), lengths.min(), right.long())).tolist()
    slot = keep.long().cumsum(1) - 1
    if not right:
        slot = slot + (new_len - lengths)[:, None]
    slot = slot.masked_fill(~keep, new_len)             # dropped tokens go to a spare last column
    rows = torch.arange(B, device=keep.device)[:, None].expand(B, L)
    return Slots(rows, slot, new_len, shortest != new_len)


def compact(inputs: dict, keep: torch.Tensor, pad_id: int = 0, layout: Slots | None = None) -> dict:
    """Drop the tokens where ``keep`` is False from every per-token input and re-pad the rows.

    2D ``position_ids`` are recomputed from the new mask; pass ``layout`` (from :func:`slots`)
    to reuse a layout already computed for this ``keep``.
    """
    out = dict(inputs)
    B, L = keep.shape
    am = inputs.get("attention_mask")
    if am is not None and am.dim() != 2:
        raise ValueError(f"attention_mask must be a 2D (batch, sequence) mask to prune video tokens, "
                         f"got shape {tuple(am.shape)}")
    layout = slots(keep, am) if layout is None else layout
    if am is None and layout.ragged:                     # rows now differ: padding appears
        out["attention_mask"] = torch.ones_like(keep, dtype=torch.long)
    for name, fill in _SEQUENCE_INPUTS.items():
        x = out.get(name)
        if x is None:
            continue
        out[name] = layout.apply(x, pad_id if fill is None else fill)
    if inputs.get("position_ids") is not None:
        # Positions follow the shrunken sequence (as generate derives them from the mask).
        pos = inputs["position_ids"]
        if pos.dim() != 2:
            raise ValueError(f"position_ids must be (batch, sequence) to prune video tokens, "
                             f"got shape {tuple(pos.shape)}")
        m = out.get("attention_mask")
        new_len = layout.new_len
        if m is None:
            out["position_ids"] = torch.arange(new_len, device=pos.device, dtype=pos.dtype).expand(B, -1)
        else:
            out["position_ids"] = (m.long().cumsum(-1) - 1).clamp(min=0).to(pos.dtype).masked_fill(m == 0, 0)
    return out


# ----------------------------------------------------------------------------- patching

_MISSING = object()
STATE_ATTR = "_stop_state"


@dataclass
class PruneRecord:
    """One video of the last call: what was kept, from which scores, on which grid."""

    pruned: PrunedVideo
    attention: torch.Tensor | None     # (T, N) float32 pooled per-frame score (None if unused)
    grid: tuple[int, int]              # (h, w) of the pooled / merged token grid, h·w = N


@dataclass
class ModelPatch(abc.ABC):
    """The instance attributes one ``apply_stop`` replaced, and the state its wrappers share.

    ``pruner`` is built (and its settings validated) once, at ``apply_stop`` time. ``cache``
    keeps the pruned video features for the duration of one forward/generate call, so the
    tower runs once per call. ``last`` holds the :class:`PruneRecord` of every video of the
    most recent call (for inspection and pictures).
    """

    pruner: Pruner
    extras: dict = field(default_factory=dict)
    patched: list = field(default_factory=list)   # (object, attribute, previous value | _MISSING)
    cache: dict | None = None
    depth: int = 0
    last: list[PruneRecord] | None = None

    def check(self, model) -> None:
        """Fail at ``apply_stop`` time on settings that cannot work for ``model``."""

    @abc.abstractmethod
    def install(self, model) -> None:
        """Replace the model's instance attributes (through :meth:`patch`)."""

    @abc.abstractmethod
    def fit_generate(self, kw: dict) -> dict:
        """generate()'s keyword arguments with the videos pruned and the prompt cut to fit."""

    def generate(self, *args, **kwargs):
        """The patched ``generate``: prune and cut the prompt once, then generate; returns the
        caller's prompt followed by the new tokens."""
        if kwargs.get("pixel_values_videos") is None:
            return self.orig_generate(*args, **kwargs)
        args, kw = generate_kwargs(args, kwargs)
        prompt = kw.get("input_ids")
        with self.scope():
            with torch.no_grad():
                kw = self.fit_generate(kw)
            out = self.orig_generate(*args, **kw)
        return restore_prompt(out, prompt, kw.get("input_ids"))

    @property
    def method(self) -> str:
        return self.pruner.options.method

    @property
    def spec(self):
        from ..pipelines import get_method
        return get_method(self.method)

    @contextlib.contextmanager
    def scope(self):
        if self.depth == 0:
            self.cache = {}
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.cache = None

    def patch(self, obj, name: str, impl) -> None:
        """Replace ``obj.name`` by a wrapper around ``impl`` that keeps the original's metadata."""
        original = getattr(obj, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return impl(*args, **kwargs)

        self.patched.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, wrapper)

    def unpatch(self) -> None:
        for obj, name, old in reversed(self.patched):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        self.patched.clear()


def bind(fn, args, kwargs) -> dict:
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


def prompt_kwargs(model) -> dict:
    """The placeholder token id, a padding id and the embedding of ``model``'s prompt."""
    config = model.config
    gen = getattr(model, "generation_config", None)
    pad = getattr(gen, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(config, "text_config", config), "pad_token_id", None)
    pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    return dict(token_id=config.video_token_id, pad_id=0 if pad is None else int(pad),
                embed=model.get_input_embeddings())


def generate_kwargs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """generate()'s arguments with the prompt as ``input_ids`` (it may come positionally, or as
    ``inputs``)."""
    kw = dict(kwargs)
    if args:
        kw["inputs"], args = args[0], args[1:]
    if kw.get("inputs") is not None:
        kw["input_ids"] = kw.pop("inputs")
    return args, kw


def restore_prompt(out, prompt, fitted):
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


def check_pixels(name: str, pixels: torch.Tensor) -> None:
    """NaN/Inf in the model's video input, named as the caller knows it (one sync)."""
    from .. import _checks as C
    if isinstance(pixels, torch.Tensor) and pixels.is_floating_point():
        try:
            C.finite(**{name: pixels})
        except ValueError as exc:
            raise ValueError(f"{exc} (the video passed to the model)") from None


# ----------------------------------------------------------------------------- shared by every host

def make_pruner(model_class: str, methods: tuple[str, ...], method, retention_ratio, use_stop=None,
                **options) -> Pruner:
    """The pruner of one model, validated once (the same errors as :func:`stop_fast.prune`).
    ``metric`` and ``global_features`` are computed from the model, never passed."""
    for name in ("metric", "global_features"):
        if name in options:
            raise TypeError(f"{name} must not be passed: it is computed from the model")
    from ..pipelines import get_method
    get_method(method)              # an unknown name: the error stop_fast.prune gives
    if method not in methods:
        raise ValueError(f"method={method!r} is not supported for {model_class}; expected one of "
                         f"{methods}")
    return Pruner(method, retention_ratio, use_stop=use_stop, **options)


def prune_frames(pruner: Pruner, feats: torch.Tensor, scores: torch.Tensor, metric, glob,
                 grid: tuple[int, int]) -> PruneRecord:
    """Prune one video: feats (T, N, D), scores (T, N), metric (T, N, d) or None, glob (T, Dg) or
    None (FastVid: the method's fallback), each read only where the method needs it."""
    spec = pruner.options
    from ..pipelines import get_method
    m = get_method(spec.method)
    pruned = pruner(feats, scores if m.uses_attention else None,
                    metric=metric if m.needs_metric else None,
                    global_features=glob if m.uses_global else None)
    return PruneRecord(pruned, scores, grid)


def source_index(pruned: PrunedVideo, per_frame: int) -> torch.Tensor:
    """(M,) int64: the index t·N + i, in the video's unpruned token run, of the token each kept
    row stands for (a merged token: its anchor / first frame and centre). Per-token positions
    (Qwen2.5-VL's M-RoPE ids) follow their tokens through it."""
    return pruned.positions[:, 0] * per_frame + pruned.positions[:, 1]
