"""Tiny random checkpoints with their processor files, and short MP4s, built offline.

``save_llava(dir)`` / ``save_qwen(dir)`` write a randomly initialized
LlavaOnevisionForConditionalGeneration / Qwen2_5_VLForConditionalGeneration in HF format with
everything ``stop-fast run`` (and ``AutoProcessor``) loads from a checkpoint: a word-level
tokenizer with the model's special tokens, a chat template, and processor_config.json holding
the image and video processor settings (the nested layout transformers ≥ 5 saves).

LLaVA-OneVision: SigLIP tower on 56 px frames, patch 7 → 8×8 patches, pooled by the model to
4×4 = 16 tokens per frame; Qwen2 LLM of width 32, 2 layers. Qwen2.5-VL: patch 4, temporal
patch 2, 2×2 merge (factor 8), so a 64×48 frame stays 64×48 → 16×12 patches → 8×6 = 48 merged
tokens per pair of frames. Vocabulary: 64 words.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

PAD, UNK, IM_START, IM_END, USER, ASSISTANT = range(6)
LLAVA_VIDEO, LLAVA_IMAGE = 63, 62
QWEN_VIDEO, QWEN_IMAGE, QWEN_VS, QWEN_VE = 60, 61, 58, 59
SPECIAL = {IM_START: "<|im_start|>", IM_END: "<|im_end|>", LLAVA_VIDEO: "<video>", LLAVA_IMAGE: "<image>",
           QWEN_VIDEO: "<|video_pad|>", QWEN_IMAGE: "<|image_pad|>", QWEN_VS: "<|vision_start|>",
           QWEN_VE: "<|vision_end|>"}
WORDS = ["what", "happens", "in", "the", "video", "?", "describe", "a", "red", "square", "moves", "left",
         "right", "up", "down", "it", "is", "there", "and", "of", "on", "blue", "green", "background",
         "yes", "no", "one", "two", "fast", "slow", "object", "corner", "top", "bottom", "frame", "camera",
         "static", "moving", "bright", "dark", "small", "large", "near", "far", "first", "then", "after",
         "before", "x", "y", "z", "."]

LLAVA_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }} {% for c in m.content %}"
                  "{% if c.type == 'video' %}<video> {% elif c.type == 'text' %}{{ c.text }}{% endif %}"
                  "{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant "
                  "{% endif %}")
QWEN_TEMPLATE = LLAVA_TEMPLATE.replace("<video> ", "<|vision_start|><|video_pad|><|vision_end|> ")
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def tokenizer():
    """A 64-word WordLevel tokenizer with the chat and multimodal special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": PAD, "[UNK]": UNK, "user": USER, "assistant": ASSISTANT, **{v: k for k, v in SPECIAL.items()}}
    free = [i for i in range(64) if i not in vocab.values()]
    vocab.update({w: i for w, i in zip(WORDS, free)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="<|im_end|>", additional_special_tokens=list(SPECIAL.values()))


def _save_processor(out: Path, template: str, processor: dict) -> None:
    tokenizer().save_pretrained(out)
    (out / "chat_template.jinja").write_text(template)
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))


def save_llava(out, seed: int = 0, *, width: int = 32, image_size: int = 56, patch_size: int = 7) -> Path:
    """``width``: the LLM's hidden size (2 heads; vLLM's CPU attention needs a head dim ≥ 32,
    so width 64 there); ``image_size``/``patch_size``: the SigLIP frame (378/14 gives
    LLaVA-OneVision's 27×27 patches pooled to 14×14 = 196 tokens)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    out = Path(out)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    text = dict(model_type="qwen2", hidden_size=width, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, vocab_size=64, max_position_embeddings=2048,
                eos_token_id=IM_END, pad_token_id=PAD)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=LLAVA_IMAGE,
                               video_token_id=LLAVA_VIDEO, vision_feature_layer=-1,
                               vision_feature_select_strategy="full",
                               image_grid_pinpoints=[[image_size, image_size]])
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = IM_END
    model.save_pretrained(out)
    common = dict(do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True, resample=3,
                  rescale_factor=1 / 255, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                  size={"height": image_size, "width": image_size})
    _save_processor(out, LLAVA_TEMPLATE, {
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": (image_size // patch_size) ** 2,
        "vision_feature_select_strategy": "full", "image_token": "<image>", "video_token": "<video>",
        "image_processor": {**common, "image_processor_type": "LlavaOnevisionImageProcessor",
                            "do_pad": True, "image_grid_pinpoints": [[image_size, image_size]]},
        "video_processor": {**common, "video_processor_type": "LlavaOnevisionVideoProcessor",
                            "do_sample_frames": False}})
    return out


def save_qwen(out, seed: int = 0, *, width: int = 32, max_pixels: int = 64 * 64) -> Path:
    """``width``: the LLM's hidden size (2 heads; 64 for vLLM's CPU attention);
    ``max_pixels``: the processor's largest frame (112·112 keeps a 112×112 frame: 28×28
    patches, 14×14 = 196 merged tokens)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=3, hidden_size=32, out_hidden_size=width, num_heads=2, intermediate_size=64,
                           patch_size=4, temporal_patch_size=2, spatial_merge_size=2, window_size=16,
                           fullatt_block_indexes=[0, 1], tokens_per_second=2),
        text_config=dict(hidden_size=width, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=64, intermediate_size=64, bos_token_id=None, eos_token_id=IM_END,
                         pad_token_id=PAD, max_position_embeddings=2048,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3] if width == 32
                                       else [4, 6, 6]}),
        image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO, vision_start_token_id=QWEN_VS,
        vision_end_token_id=QWEN_VE)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = IM_END
    model.save_pretrained(out)
    common = dict(do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True, resample=3,
                  rescale_factor=1 / 255, image_mean=CLIP_MEAN, image_std=CLIP_STD, patch_size=4,
                  temporal_patch_size=2, merge_size=2, size={"shortest_edge": 8 * 8 * 4, "longest_edge": max_pixels})
    _save_processor(out, QWEN_TEMPLATE, {
        "processor_class": "Qwen2_5_VLProcessor",
        "image_processor": {**common, "image_processor_type": "Qwen2VLImageProcessor"},
        "video_processor": {**common, "video_processor_type": "Qwen2VLVideoProcessor",
                            "do_sample_frames": False, "cap_pixels_per_frame": False}})
    return out


def frames(num: int = 12, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """(num, H, W, 3) uint8: a textured static background, a bright fixed corner block and a
    square moving left to right."""
    g = np.random.default_rng(seed)
    bg = (g.random((height // 8, width // 8, 3)) * 120 + 40).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    out = np.repeat(bg[None], num, 0)
    out[:, :8, :8] = 250
    for t in range(num):
        x = 4 + (width - 20) * t // max(1, num - 1)
        out[t, 16:32, x:x + 16] = (220, 30, 30)
    return out


def write_mp4(path, video: np.ndarray | None = None, fps: int = 8) -> Path:
    """Encode (T, H, W, 3) uint8 frames as MPEG-4 Part 2 in an .mp4 (an encoder every FFmpeg
    build has), high quality so decoded frames stay close to the originals."""
    import av

    video = frames() if video is None else video
    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        s.bit_rate = 8_000_000
        for f in video:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path
