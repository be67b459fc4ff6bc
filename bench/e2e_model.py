"""Randomly initialized LLaVA-OneVision models built from configuration alone (no download).

``full`` is LLaVA-OneVision-7B: SigLIP so400m-patch14-384 (26 layers, 16 heads × 72) and a
Qwen2-7B text model; ``tiny`` keeps the structure at toy widths for CPU smoke runs. Weights
are random, so only timings mean anything; the pixels are near-static frames with one scene
cut so HoliTom's temporal merging has something to merge.
"""
from __future__ import annotations

import torch

IMAGE_TOKEN, VIDEO_TOKEN = 151646, 151647
PREFIX, SUFFIX = 16, 32     # text tokens before / after the video placeholders

FULL_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                   num_attention_heads=16, patch_size=14, image_size=384)
FULL_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152128,
                 max_position_embeddings=32768, rope_theta=1_000_000.0)
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=2, patch_size=14, image_size=378)   # 27×27 → 14×14 pooled, as the 7B
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151680, max_position_embeddings=4096)


def config(tiny: bool):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(**(TINY_VISION if tiny else FULL_VISION), hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6, vision_use_head=False)
    text = dict(TINY_TEXT if tiny else FULL_TEXT)
    rope_theta = text.pop("rope_theta", None)
    text = Qwen2Config(**text, hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False)
    if rope_theta is not None:   # transformers 5 keeps it in rope_parameters; older in rope_theta
        params = getattr(text, "rope_parameters", None)
        if isinstance(params, dict):
            params["rope_theta"] = rope_theta
        else:
            text.rope_theta = rope_theta
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                                video_token_index=VIDEO_TOKEN, vision_feature_layer=-1,
                                vision_feature_select_strategy="full", projector_hidden_act="gelu")


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    """The model, initialized directly on ``device`` in ``dtype`` (7B in bf16: ~16 GB)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration._from_config(
            config(tiny), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def pooled_tokens(model) -> int:
    vc = model.config.vision_config
    side = -(-(vc.image_size // vc.patch_size) // 2)   # the model's 2×2 bilinear pooling, ceil
    return side * side


def video_pixels(frames: int, size: int, device, dtype, seed: int = 0) -> torch.Tensor:
    """(1, T, 3, S, S): two near-static scenes (cut at T/2), small per-frame noise."""
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(2, 3, size, size, generator=g)
    which = (torch.arange(frames) >= frames // 2).long()
    px = scenes[which] + 0.05 * torch.randn(frames, 3, size, size, generator=g)
    return px[None].to(device=device, dtype=dtype)


def prompt_ids(n_video: int, device, prefix: int = PREFIX, suffix: int = SUFFIX, seed: int = 0) -> torch.Tensor:
    """(1, L): text, ``n_video`` video placeholders, text (ids below the special tokens)."""
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(0, 1000, (n,), generator=g)  # noqa: E731
    ids = torch.cat([text(prefix), torch.full((n_video,), VIDEO_TOKEN), text(suffix)])
    return ids[None].to(device)


def set_vision_attention(model, impl: str) -> None:
    """Switch only the vision tower's attention kernel ("eager" / "sdpa")."""
    try:
        model.set_attn_implementation({"vision_config": impl})
    except (AttributeError, TypeError, ValueError):   # versions without per-sub-config switching
        model.model.vision_tower.config._attn_implementation = impl
