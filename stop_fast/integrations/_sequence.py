"""Shrink a prompt's video placeholders to the pruned token counts.

A video processor writes T·N + 1 placeholder tokens per video (N pooled tokens per frame plus
the trailing newline). After pruning video v keeps K_v = M_v + 1 of them: the first K_v of its
run, which the model then fills in order with the pruned tokens and the newline. Every other
token (text, image placeholders, padding) is kept, and rows are re-padded on the side they
were padded on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Per-token (B, L[, …]) inputs that must shrink with the sequence, and their fill values.
_SEQUENCE_INPUTS = {"input_ids": None, "inputs_embeds": 0, "attention_mask": 0, "labels": -100,
                    "token_type_ids": 0, "mm_token_type_ids": 0}


@dataclass(frozen=True)
class VideoPlan:
    """Placeholder counts of a batch of videos: ``full`` per video before pruning, ``kept``
    (one entry per video, in placeholder order) after."""

    full: int
    kept: tuple[int, ...]

    @property
    def full_total(self) -> int:
        return self.full * len(self.kept)


def video_mask(input_ids, inputs_embeds, token_id: int, embed) -> torch.Tensor:
    """(B, L) bool: where the video placeholders are, from ids or (like the model) from embeddings."""
    if input_ids is not None:
        return input_ids == token_id
    ref = embed(torch.full((), token_id, dtype=torch.long, device=inputs_embeds.device))
    return (inputs_embeds == ref).all(-1)


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
    if n == fitted:
        return inputs
    if n != plan.full_total:
        raise ValueError(
            f"the prompt holds {n} video placeholder tokens, expected {plan.full_total} "
            f"({len(plan.kept)} video(s) × {plan.full} tokens, as the processor writes them) "
            f"or {fitted} (already fitted to the pruned videos)")
    return compact(inputs, keep_mask(mask, plan), pad_id)


def keep_mask(mask: torch.Tensor, plan: VideoPlan) -> torch.Tensor:
    """(B, L) bool: every non-video token, and the first K_v placeholders of each video's run."""
    # Placeholders are consumed in row-major order, plan.full per video.
    rank = mask.flatten().cumsum(0).view_as(mask) - 1
    video = (rank // plan.full).clamp(0, len(plan.kept) - 1)
    kept = torch.tensor(plan.kept, device=mask.device)
    return ~mask | ((rank % plan.full) < kept[video])


def compact(inputs: dict, keep: torch.Tensor, pad_id: int = 0) -> dict:
    """Drop the tokens where ``keep`` is False from every per-token input and re-pad the rows."""
    out = dict(inputs)
    B, L = keep.shape
    am = inputs.get("attention_mask")
    if am is not None and am.dim() != 2:
        raise ValueError(f"attention_mask must be a 2D (batch, sequence) mask to prune video tokens, "
                         f"got shape {tuple(am.shape)}")
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
    if am is None and shortest != new_len:               # rows now differ: padding appears
        out["attention_mask"] = torch.ones_like(keep, dtype=torch.long)
    for name, fill in _SEQUENCE_INPUTS.items():
        x = out.get(name)
        if x is None:
            continue
        new = x.new_full((B, new_len + 1, *x.shape[2:]), pad_id if fill is None else fill)
        new[rows, slot] = x
        out[name] = new[:, :new_len]
    if inputs.get("position_ids") is not None:
        # Positions follow the shrunken sequence (as generate derives them from the mask).
        pos = inputs["position_ids"]
        if pos.dim() != 2:
            raise ValueError(f"position_ids must be (batch, sequence) to prune video tokens, "
                             f"got shape {tuple(pos.shape)}")
        m = out.get("attention_mask")
        if m is None:
            out["position_ids"] = torch.arange(new_len, device=pos.device, dtype=pos.dtype).expand(B, -1)
        else:
            out["position_ids"] = (m.long().cumsum(-1) - 1).clamp(min=0).to(pos.dtype).masked_fill(m == 0, 0)
    return out
