"""Shrink a prompt's video placeholders to the pruned token counts.

A video processor writes F_v placeholder tokens for video v (LLaVA-OneVision: T·N pooled
tokens plus the trailing newline; Qwen2.5-VL: T'·N' merged tokens). After pruning video v keeps
K_v of them: the first K_v of its run, which the model then fills in order with the pruned
tokens. Every other token (text, image placeholders, padding) is kept, and rows are re-padded
on the side they were padded on. :func:`source_columns` tells which unpruned token each kept
one stands for, so per-token positions (Qwen2.5-VL's M-RoPE ids) can follow their tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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
