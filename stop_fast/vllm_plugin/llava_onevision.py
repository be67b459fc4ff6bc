"""SToP for vLLM's ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision, LLaVA-Video).

Registered under vLLM's own architecture name by :func:`stop_fast.vllm_plugin.register`.
Without the ``stop_fast`` key both classes below behave exactly as vLLM's. With it:

* the processor writes B + 1 placeholders per video (B = ``token_budget`` of the frames and
  the pooled grid, plus the trailing newline) instead of T·N + 1;
* the model runs the tower as configured while a hook keeps the feature layer's q/k, scores
  and pools them like the features (the helper shared with ``apply_stop``), prunes each video
  with the pruner built once at start-up (exact budget), and returns its B tokens plus the
  newline. Positions are 1-D and contiguous, as in ``apply_stop``'s shortened prompt.

FastVid has no SigLIP pooling head here (the tower drops it), so it segments on each frame's
mean token with a one-time warning, as ``apply_stop`` without ``global_head`` does.
"""
from __future__ import annotations

import math

import torch
from vllm.model_executor.models.llava_onevision import (LlavaOnevisionDummyInputsBuilder,
                                                        LlavaOnevisionForConditionalGeneration,
                                                        LlavaOnevisionMultiModalProcessor,
                                                        LlavaOnevisionProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import VideoProcessorItems
from vllm.multimodal.processing import PromptReplacement

from ..integrations._capture import pooled_scores
from ..integrations._common import prune_frames
from . import config as cfg
from ._capture import AttentionInputs, kernel_module

ARCH = "LlavaOnevisionForConditionalGeneration"


def pooled_tokens(model_config) -> int:
    """N: pooled tokens per frame (ceil(grid / 2)², as the model pools)."""
    vc = model_config.hf_config.vision_config
    side = math.ceil((vc.image_size // vc.patch_size) / getattr(model_config.hf_config, "spatial_pool_stride", 2))
    return side * side


class StopLlavaOnevisionProcessor(LlavaOnevisionMultiModalProcessor):
    """Placeholder count B + 1 per video when pruning is on; vLLM's otherwise."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        settings = cfg.attached(self.info.ctx.model_config)
        if settings is None:
            return updates
        video_id = self.info.get_hf_config().video_token_index
        N = pooled_tokens(self.info.ctx.model_config)

        def replacement(item_idx: int):
            videos = mm_items.get_items("video", VideoProcessorItems)
            return [video_id] * (cfg.budget(settings, videos.get_num_frames(item_idx), N) + 1)

        return [u for u in updates if u.modality != "video"] + [
            PromptReplacement(modality="video", target=[video_id], replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(StopLlavaOnevisionProcessor, info=LlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class StopLlavaOnevision(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision; with the ``stop_fast`` key every video is pruned to B tokens."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings = cfg.read(vllm_config.additional_config)
        self.stop_pruner = None if settings is None else cfg.make_pruner(settings, ARCH)
        self.stop_last = None        # the PrunedVideo of each video of the latest batch (inspection)

    def _process_video_pixels(self, inputs):
        if self.stop_pruner is None:
            return super()._process_video_pixels(inputs)
        pixels = inputs["pixel_values_videos"]
        videos = list(pixels)            # (V, T, C, H, W) tensor or a list of (T_v, C, H, W)
        frames = [v.shape[0] for v in videos]
        layers = self.vision_tower.vision_model.encoder.layers
        attn = kernel_module(layers[-1].self_attn)      # the tower is cut at the feature layer
        with AttentionInputs(attn) as cap:
            feats = self._video_pixels_to_features(self.vision_tower, torch.cat(videos))   # (ΣT, N, D)
        q, k = cap.heads()
        spec = self.stop_pruner.options
        from ..pipelines import get_method
        scores, metric = pooled_scores(q, k, attn.scale, None,
                                       self.config.vision_feature_select_strategy == "default",
                                       self.apply_pooling, get_method(spec.method).needs_metric)
        N = feats.shape[1]
        side = round(N ** 0.5)
        newline = self.image_newline[None].to(feats.dtype)
        out, start, self.stop_last = [], 0, []
        for T in frames:                 # one pruning per video (a loop over videos, not tokens)
            sl = slice(start, start + T)
            rec = prune_frames(self.stop_pruner, feats[sl], scores[sl],
                               None if metric is None else metric[sl], None, (side, N // side))
            self.stop_last.append(rec.pruned)
            out.append(torch.cat((rec.pruned.tokens.to(feats.dtype), newline)))
            start += T
        return out
