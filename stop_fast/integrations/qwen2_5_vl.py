"""SToP for ``Qwen2_5_VLForConditionalGeneration``: every host method (+ SToP) on the merged
tokens of each temporal patch group (SPEC §14; the paper evaluates VisionZip and FastVid here). Four instance attributes are patched, nothing in the classes:

* ``model.model.get_video_features`` runs the tower as configured while hooks keep the last
  full-attention block's q/k (:mod:`._qwen_vision`), scores each temporal patch group, prunes
  each video's (T', N') merged tokens with the pruner built at ``apply_stop`` time and returns
  the kept tokens;
* ``model.forward`` / ``model.generate`` cut each video's placeholder run to its kept count;
* ``model.model.get_rope_index``, asked about the shrunken prompt of the current call, answers
  with the M-RoPE ids its tokens had in the unpruned prompt (computed by the original
  ``get_rope_index`` on that prompt): a kept video token keeps the (t, h, w) of the merged token
  it came from, text after a video keeps its position, and decoding continues after the
  unpruned prompt. Every other call goes to the original.

μ_s defaults to the attention-scale values (VisionZip 0.03, FastVid 0.02): the scores are the
same kind of column-mean attention as LLaVA's. The published wrapper's 3.7 belongs to its
feature-norm proxy score and would make top-k keep the least-attended tokens (SPEC §4, §14).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ._common import (ModelPatch, VideoPlan, bind, check_count, check_pixels, compact, keep_mask,
                      prompt_kwargs, slots, source_columns, source_index)
from ._qwen_vision import QKVCapture, merged_scores, prune_groups, scored_attention, window_reverse

__all__ = ["Qwen2_5_VL"]

_POS_FILL = 1          # position id written at new padding (masked out anyway)


@dataclass
class _Rope:
    """M-RoPE ids of one shrunken prompt: (3, B, L') ids, (B, 1) deltas for decoding."""

    ids: torch.Tensor
    positions: torch.Tensor
    deltas: torch.Tensor

    def lookup(self, ids):
        """(positions, deltas) for ``ids`` when they are this prompt (maybe repeated per row for
        beams, maybe followed by generated tokens, which continue the last position); else None."""
        B, L = self.ids.shape
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] % B or ids.shape[1] < L:
            return None
        k = ids.shape[0] // B
        ref = self.ids.repeat_interleave(k, 0) if k > 1 else self.ids
        if not torch.equal(ids[:, :L], ref.to(ids.device)):   # one sync per prefill
            return None
        pos = self.positions.repeat_interleave(k, 1) if k > 1 else self.positions
        extra = ids.shape[1] - L
        if extra:
            step = torch.arange(1, extra + 1, device=pos.device, dtype=pos.dtype)
            pos = torch.cat((pos, pos[..., -1:] + step), dim=-1)
        return pos.to(ids.device), (self.deltas.repeat_interleave(k, 0) if k > 1 else self.deltas)


class Qwen2_5_VL(ModelPatch):
    """The patch of one Qwen2.5-VL model (every method on the merged tokens, SPEC §14)."""

    model_class = "Qwen2_5_VLForConditionalGeneration"
    methods = ("visionzip", "holitom", "fastvid", "flashvid", "prunevid")

    def check(self, model) -> None:
        """Nothing beyond the pruner's own validation: the merged-token count per group depends
        on each video's resolution, so per-frame budgets are checked per call."""

    def install(self, model) -> None:
        self.model, self.inner = model, model.model
        self.orig_features = self.inner.get_video_features
        self.orig_rope = self.inner.get_rope_index
        self.orig_forward = model.forward
        self.orig_generate = model.generate
        self.rope_params = inspect.signature(self.orig_rope).parameters
        self.patch(self.inner, "get_video_features", self.video_features)
        self.patch(self.inner, "get_rope_index", self.rope_index)
        self.patch(model, "forward", self.forward)
        self.patch(model, "generate", self.generate)

    # ------------------------------------------------------------------ vision side

    def video_features(self, *args, **kwargs):
        kw = bind(self.orig_features, args, kwargs)
        pixels, grid = kw.get("pixel_values_videos"), kw.get("video_grid_thw")
        if pixels is None or grid is None:
            raise ValueError("pruning Qwen2.5-VL videos needs pixel_values_videos and video_grid_thw, got "
                             f"{'no pixel_values_videos' if pixels is None else 'no video_grid_thw'}")
        want_tuple = kw.pop("return_dict", True) is False
        cache = self.cache
        key = ("qwen_video", id(pixels), id(grid))
        hit = cache.get(key) if cache is not None else None
        if hit is not None and hit[0] is pixels and hit[1] is grid:
            out = hit[2]
        else:
            out = self._pruned_features(kw, grid)
            if cache is not None:
                cache[key] = (pixels, grid, out)
        return out.to_tuple() if want_tuple else out

    def _pruned_features(self, kw, grid):
        visual = self.inner.visual
        check_pixels("pixel_values_videos", kw.get("pixel_values_videos"))
        with QKVCapture(scored_attention(visual)) as cap:
            out = self.orig_features(**kw, return_dict=True)
        grids = grid.tolist()                 # host copy (the model makes the same one)
        merge = visual.spatial_merge_size
        scores, metric = merged_scores(cap, grids, merge, window_reverse(visual, grid, kw),
                                       self.spec.needs_metric)
        feats = out.pooler_output
        sizes = [t * h * w // merge ** 2 for t, h, w in grids]
        if isinstance(feats, torch.Tensor):
            feats = torch.split(feats, sizes)
        if [f.shape[0] for f in feats] != sizes:
            raise RuntimeError(f"unexpected video feature sizes {[tuple(f.shape) for f in feats]} for grids "
                               f"{grids}; this transformers version is not supported")
        records = prune_groups(self.pruner, feats, scores, metric, grids, merge)
        self.last = records
        pruned = [r.pruned for r in records]
        out.pooler_output = tuple(p.tokens.to(f.dtype) for p, f in zip(pruned, feats))
        out.stop_pruned = pruned        # the PrunedVideo of each video (tokens, source positions)
        out.stop_plan = VideoPlan(full=tuple(sizes), kept=tuple(p.tokens.shape[0] for p in pruned))
        # Index of each kept token's source in its video's placeholder run (t'·N' + location).
        out.stop_sources = [source_index(p, n // t) for p, n, (t, _, _) in zip(pruned, sizes, grids)]
        return out

    # ------------------------------------------------------------------ prompt side

    def rope_index(self, *args, **kwargs):
        rope = (self.cache or {}).get("rope")
        if rope is not None:
            hit = rope.lookup(args[0] if args else kwargs.get("input_ids"))
            if hit is not None:
                return hit
        return self.orig_rope(*args, **kwargs)

    def forward(self, *args, **kwargs):
        kw = bind(self.orig_forward, args, kwargs)
        if kw.get("pixel_values_videos") is None and _pruned_output(kw) is None:
            return self.orig_forward(*args, **kwargs)
        with self.scope():
            return self.orig_forward(**self._fit(kw))

    def fit_generate(self, kw: dict) -> dict:
        return self._fit(kw)

    def _fit(self, kw: dict) -> dict:
        """The call's inputs with each video's placeholders cut to its kept count, and the M-RoPE
        ids of the shrunken prompt (given ``position_ids`` are moved along; otherwise they are
        left for ``get_rope_index`` to answer)."""
        pixels = kw.get("pixel_values_videos")
        if pixels is not None:
            out = self.inner.get_video_features(pixels, kw.get("video_grid_thw"), return_dict=True)
        else:
            out = _pruned_output(kw)
        plan = out.stop_plan
        fitted = sum(int(f.shape[0]) for f in out.pooler_output)   # maybe repeated for beams
        ids = kw.get("input_ids")
        if ids is None:
            raise ValueError("pruning Qwen2.5-VL videos needs input_ids (the M-RoPE positions of the kept "
                             "tokens are computed from them), got only inputs_embeds")
        mask = ids == self.model.config.video_token_id
        n = int(mask.sum())  # host sync: the shrunken prompt's length depends on it
        placed = kw.get("position_ids") is not None or (self.cache or {}).get("rope") is not None
        if n == fitted and placed:
            return kw                      # fitted earlier in this call (generate passes it on)
        if n == fitted and n != plan.full_total:
            raise ValueError("the prompt already holds the pruned number of video placeholders, so the "
                             "positions of its tokens are unknown; pass the prompt as the processor wrote it")
        check_count(n, plan, fitted)       # ValueError unless n is the full count
        keep = keep_mask(mask, plan)
        src = source_columns(mask, plan, out.stop_sources)
        layout = slots(keep, kw.get("attention_mask"))
        pad_id = prompt_kwargs(self.model)["pad_id"]
        new = compact({k: v for k, v in kw.items() if k != "position_ids"}, keep, pad_id, layout)
        if kw.get("position_ids") is not None:
            new["position_ids"] = _move_positions(kw["position_ids"], src, layout, new.get("attention_mask"))
        else:
            self.cache["rope"] = self._rope(kw, new, src, layout)
        return new

    def _rope(self, kw: dict, new: dict, src, layout) -> _Rope:
        call = {}
        for name, p in self.rope_params.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if kw.get(name) is not None:
                call[name] = kw[name]
            elif p.default is p.empty:
                raise ValueError(f"{name} is needed to compute the M-RoPE positions of the prompt (pass it "
                                 "as the processor returns it), got none")
        full, _ = self.orig_rope(**call)                               # (3, B, L) unpruned
        pos = full.gather(2, src.to(full.device).expand_as(full))
        pos = layout.apply(pos.permute(1, 2, 0), _POS_FILL).permute(2, 0, 1).contiguous()
        # Decoding continues at the unpruned prompt's last position + 1. The original's text-only
        # answer for the shrunken prompt gives this version's delta convention (it counts padding
        # or not): delta = text-only delta + (max + 1 − real length).
        ids, am = new["input_ids"], new.get("attention_mask")
        probe = {"input_ids": ids}
        if "attention_mask" in self.rope_params:
            probe["attention_mask"] = am
        if "mm_token_type_ids" in self.rope_params:
            probe["mm_token_type_ids"] = torch.zeros_like(ids, dtype=torch.int32)
        _, text_delta = self.orig_rope(**probe)
        length = am.sum(1) if am is not None else torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        top = full.amax(dim=(0, 2)).to(length.device)
        deltas = text_delta + (top + 1 - length).to(text_delta.device, text_delta.dtype)[:, None]
        return _Rope(ids, pos.to(full.dtype), deltas)


def _pruned_output(kw: dict):
    """Pre-encoded video features pruned by this integration, or None."""
    out = (kw.get("mm_encoder_outputs") or {}).get("video")
    return out if getattr(out, "stop_plan", None) is not None else None


def _move_positions(pos: torch.Tensor, src, layout, mask) -> torch.Tensor:
    """Given position ids ((B, L), (3, B, L) or (4, B, L) with text positions first) follow their
    tokens; text positions (row 0 of 4) are renumbered along the shrunken sequence."""
    if pos.dim() not in (2, 3) or pos.shape[-2:] != src.shape:
        raise ValueError(f"position_ids must be (batch, sequence) or (3 or 4, batch, sequence) with "
                         f"(batch, sequence) = {tuple(src.shape)}, got shape {tuple(pos.shape)}")
    moved = pos.gather(-1, src.to(pos.device).expand_as(pos))
    if pos.dim() == 2:
        return layout.apply(moved, _POS_FILL)
    moved = layout.apply(moved.permute(1, 2, 0), _POS_FILL).permute(2, 0, 1).contiguous()
    if moved.shape[0] == 4:
        B, L = moved.shape[1:]
        text = (mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(mask == 0, 0) if mask is not None \
            else torch.arange(L, device=moved.device).expand(B, L)
        moved[0] = text.to(moved.device, moved.dtype)
    return moved
