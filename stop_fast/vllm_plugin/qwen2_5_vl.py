"""SToP for vLLM's ``Qwen2_5_VLForConditionalGeneration``.

Registered under vLLM's own architecture name by :func:`stop_fast.vllm_plugin.register`.
Without the ``stop_fast`` key both classes below behave exactly as vLLM's. With it:

* the processor writes B placeholders per video (B = ``token_budget`` of the temporal patch
  groups T' and the merged tokens per group N');
* the model says it prunes multimodal embeddings (vLLM's EVS protocol): a hook keeps the last
  full-attention block's post-RoPE q/k and ``cu_seqlens``, the tower's ``reverse_indices``
  undo its window order, the scores are merged 2×2 like the tokens (the helper shared with
  ``apply_stop``), each video is pruned to exactly B tokens, and every kept token carries the
  M-RoPE (t, h, w) of the merged token it stands for. The fourth position channel is the
  unpruned video's largest position + 1, so text after the video keeps the position it has in
  the unpruned prompt and decoding continues after it, as in ``apply_stop``.
"""
from __future__ import annotations

import torch
from vllm.model_executor.models.qwen2_5_vl import (Qwen2_5_VLDummyInputsBuilder,
                                                   Qwen2_5_VLForConditionalGeneration,
                                                   Qwen2_5_VLMultiModalProcessor,
                                                   Qwen2_5_VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from ..integrations._common import source_index
from ..integrations._qwen_vision import group_scores, prune_groups
from . import config as cfg
from ._capture import AttentionInputs, kernel_module

ARCH = "Qwen2_5_VLForConditionalGeneration"


class StopQwen2_5_VLProcessor(Qwen2_5_VLMultiModalProcessor):
    """Placeholder count B per video when pruning is on; vLLM's otherwise."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        settings = cfg.attached(self.info.ctx.model_config)
        if settings is None:
            return updates
        merge = self.info.get_image_processor(**hf_processor_mm_kwargs).merge_size
        vocab = self.info.get_tokenizer().get_vocab()
        video_id = vocab[self.info.get_hf_processor(**hf_processor_mm_kwargs).video_token]

        def replacement(item_idx: int):
            t, h, w = map(int, out_mm_kwargs["video"][item_idx]["video_grid_thw"].data)
            return [video_id] * cfg.budget(settings, t, (h // merge) * (w // merge))

        return [u for u in updates if u.modality != "video"] + [
            PromptReplacement(modality="video", target=[video_id], replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(StopQwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class StopQwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL; with the ``stop_fast`` key every video is pruned to B tokens."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings = cfg.read(vllm_config.additional_config)
        self.stop_pruner = None if settings is None else cfg.make_pruner(settings, ARCH)
        self.stop_last = None        # the PrunedVideo of each video of the latest batch (inspection)
        if self.stop_pruner is not None:
            # Pruned embeddings carry their M-RoPE positions (images too, as vLLM's EVS does);
            # the runner recomputes the prompt's positions from them (stop_fast_prunes).
            self.is_multimodal_pruning_enabled = True
            self.stop_fast_prunes = True
            self._stop_seen = None

    def _process_video_input(self, video_input):
        if self.stop_pruner is None:
            return super()._process_video_input(video_input)
        if video_input["type"] != "pixel_values_videos":
            raise ValueError("stop_fast prunes videos given as pixels; precomputed video_embeds cannot "
                             "be scored (no vision attention runs for them)")
        visual = self.visual
        full = max(visual.fullatt_block_indexes)
        attn = kernel_module(visual.blocks[full].attn)
        meta = {}
        original = visual.prepare_encoder_metadata

        def keep(*args, **kwargs):       # the tower's window order, to undo it on the scores
            meta.update(original(*args, **kwargs))
            return meta

        visual.prepare_encoder_metadata = keep
        try:
            with AttentionInputs(attn) as cap:
                embeds = super()._process_video_input(video_input)
        finally:
            del visual.prepare_encoder_metadata
        q, k = cap.heads()
        self._stop_seen = (q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]), cap.cu_seqlens,
                           attn.scale, meta["reverse_indices"])
        return embeds

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        if self.stop_pruner is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        from ..pipelines import get_method
        q, k, cu, scale, reverse = self._stop_seen
        self._stop_seen = None
        grids = video_input["video_grid_thw"].tolist()
        merge = self.visual.spatial_merge_size
        with_metric = get_method(self.stop_pruner.options.method).needs_metric
        scores, metric = group_scores(q, k, cu, scale, None, grids, merge, reverse, with_metric)
        records = prune_groups(self.stop_pruner, video_embeds_split, scores, metric, grids, merge)
        self.stop_last = [r.pruned for r in records]
        seconds = video_input.get("second_per_grid_ts")
        tps = self.config.vision_config.tokens_per_second
        out = []
        for i, (rec, emb, grid) in enumerate(zip(records, video_embeds_split, grids)):
            t, h, w = grid
            # Seconds per group as a float, as vLLM's unpruned positions use it (its EVS path
            # truncates to whole seconds, which would put every group of a short clip at t = 0).
            spg = 1.0 if seconds is None else float(seconds[i])
            pos = compute_mrope_for_media(grid, merge, tokens_per_second=tps, video_second_per_grid=spg)
            per = (h // merge) * (w // merge)
            kept = pos[source_index(rec.pruned, per).cpu()]
            kept[:, 3] = pos[:, :3].max() + 1          # text after the video: as unpruned (Qwen's rule)
            out.append(torch.cat((rec.pruned.tokens.to(emb.dtype), kept.to(emb.device, emb.dtype)), dim=1))
        return tuple(out)
