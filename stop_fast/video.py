"""From a video file to model inputs: PyAV decoding, uniform frame sampling and the
preprocessing the checkpoint's saved video-processor config prescribes.

The preprocessing is done here, with torch only, instead of through transformers' video
processors because those require torchvision; the steps are the processors' own
(LLaVA-OneVision: resize → rescale → normalize; Qwen2.5-VL: smart-resize → rescale →
normalize → temporal patches → patchify), and a test checks equality with the HF processor
wherever torchvision is installed. The prompt is rendered with the tokenizer's chat template
and its single video placeholder expanded to the count the processor would write.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VideoError", "VideoInfo", "probe", "sample_indices", "read_frames", "FAMILIES", "family_of",
           "processor_config", "chat_template", "prompt_ids", "llava_pixels", "qwen_pixels",
           "ModelInputs", "prepare_inputs"]

# model_type of the HF config → the integration family (LLaVA-Video checkpoints in HF format
# are llava_onevision too).
FAMILIES = {"llava_onevision": "llava", "qwen2_5_vl": "qwen"}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# Class defaults of the HF video processors, for keys a saved config leaves out.
_DEFAULTS = {
    "llava": dict(size={"height": 384, "width": 384}, resample=3, do_resize=True, do_rescale=True,
                  rescale_factor=1 / 255, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD),
    "qwen": dict(size={"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}, resample=3,
                 do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                 image_mean=CLIP_MEAN, image_std=CLIP_STD, patch_size=14, temporal_patch_size=2,
                 merge_size=2, cap_pixels_per_frame=False, max_video_tokens=128000),
}
_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}   # PIL resample codes the processors use


class VideoError(ValueError):
    """A problem with the user's video or checkpoint, worded for one line on stderr."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int          # decodable frames (container metadata, else counted packets)
    fps: float
    width: int
    height: int


def _open(path):
    import av
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a video PyAV can decode ({exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream")
    return container


def probe(path) -> VideoInfo:
    """Frame count, frame rate and size of the first video stream."""
    import av
    with _open(path) as c:
        s = c.streams.video[0]
        total = s.frames
        try:
            if not total:   # some containers carry no count: count packets (no decoding)
                total = sum(1 for p in c.demux(s) if p.size)
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: cannot read the video stream ({exc})") from None
        fps = float(s.average_rate or s.guessed_rate or 0.0)
        return VideoInfo(int(total), fps, s.codec_context.width, s.codec_context.height)


def sample_indices(total: int, num: int, rounding: str = "floor") -> list[int]:
    """``num`` frame indices spread uniformly over [0, total − 1], first and last included.

    ``rounding="floor"`` is LLaVA-OneVision's ``np.linspace(0, total-1, num, dtype=int)``;
    ``"round"`` is Qwen2.5-VL's (qwen-vl-utils) ``linspace(...).round()``.
    """
    if num < 1 or num > total:
        raise VideoError(f"cannot sample {num} frames from a video of {total} frames")
    lin = np.linspace(0, total - 1, num)
    return [int(i) for i in (lin.round() if rounding == "round" else lin).astype(np.int64)]


def read_frames(path, num: int, rounding: str = "floor",
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[int], VideoInfo]:
    """Decode ``num`` uniformly sampled frames → ((num, H, W, 3) uint8 RGB, indices, info).

    Decodes sequentially up to the last sampled frame (no seeking: exact frame indices);
    ``progress(done, total)`` is called per decoded frame.
    """
    import av
    info = probe(path)
    if info.frames < num:
        raise VideoError(f"{path} has {info.frames} frames, fewer than the {num} asked for (use --frames {info.frames} "
                         "or fewer)")
    idx = sample_indices(info.frames, num, rounding)
    want, last, out = set(idx), idx[-1], {}
    with _open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        try:
            for i, frame in enumerate(c.decode(s)):
                if i in want:
                    out[i] = frame.to_ndarray(format="rgb24")
                if progress:
                    progress(i + 1, last + 1)
                if i >= last:
                    break
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: decoding failed after {len(out)} frames ({exc})") from None
    if len(out) < len(want):
        raise VideoError(f"{path}: only {len(out)} of the {num} sampled frames could be decoded (the file "
                         f"announces {info.frames} frames)")
    return np.stack([out[i] for i in idx]), idx, info


# ----------------------------------------------------------------------------- checkpoint files

def _file(model: str, name: str) -> Path | None:
    local = Path(model)
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    from transformers.utils import cached_file
    found = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
    return Path(found) if found else None


def processor_config(model: str, family: str) -> dict:
    """The video-processor settings transformers would load for ``model`` (nested in
    processor_config.json, else video_preprocessor_config.json, else preprocessor_config.json),
    over the processor class defaults."""
    cfg = None
    if (p := _file(model, "processor_config.json")) is not None:
        cfg = json.loads(p.read_text()).get("video_processor")
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if cfg is None and (p := _file(model, name)) is not None:
            cfg = json.loads(p.read_text())
    if cfg is None:
        raise VideoError(f"{model}: no video processor config (processor_config.json, "
                         "video_preprocessor_config.json or preprocessor_config.json)")
    out = {**_DEFAULTS[family], **{k: v for k, v in cfg.items() if v is not None}}
    if family == "qwen":   # legacy keys, as Qwen2VLVideoProcessor.__init__ maps them
        size = dict(out["size"])
        size["shortest_edge"] = cfg.get("min_pixels", size.get("shortest_edge"))
        size["longest_edge"] = cfg.get("max_pixels", size.get("longest_edge"))
        out["size"] = size
    return out


def chat_template(model: str, tokenizer) -> str:
    """The tokenizer's chat template, else the processor's (chat_template.jinja / .json)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    if (p := _file(model, "chat_template.jinja")) is not None:
        return p.read_text()
    if (p := _file(model, "chat_template.json")) is not None:
        return json.loads(p.read_text())["chat_template"]
    raise VideoError(f"{model}: no chat template in the tokenizer or the processor files")


def prompt_ids(tokenizer, template: str, prompt: str, video_token_id: int, count: int) -> list[int]:
    """Token ids of one user turn (video, then ``prompt``) with the video placeholder repeated
    ``count`` times, as the HF processor expands it."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if ids.count(video_token_id) != 1:
        raise VideoError(f"the chat template wrote {ids.count(video_token_id)} video placeholders "
                         f"(token id {video_token_id}) for one video, expected 1")
    i = ids.index(video_token_id)
    return ids[:i] + [video_token_id] * count + ids[i + 1:]


# ----------------------------------------------------------------------------- pixels

def _resize(x: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """torchvision's tensor resize (antialiased; uint8 natively on CPU for bicubic, and for
    bilinear on AVX2/AVX512/ARM CPUs, else in float32 with clamp and round)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = _MODES.get(int(resample))
    if mode is None:
        raise VideoError(f"unsupported resample mode {resample} in the video processor config")
    smooth = mode in ("bilinear", "bicubic")
    native = x.device.type == "cpu" and (mode == "bicubic" or mode == "nearest-exact" or (
        mode == "bilinear" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")))
    y = x if native else x.float()
    y = F.interpolate(y, size=list(size), mode=mode, antialias=smooth, align_corners=False if smooth else None)
    if not native:
        y = (y.clamp_(0, 255) if mode == "bicubic" else y).round_().to(torch.uint8)
    return y


def _normalize(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Fused rescale + normalize exactly as the HF torch backend does it (float32)."""
    if cfg["do_normalize"]:
        scale = 1.0 / cfg["rescale_factor"] if cfg["do_rescale"] else 1.0
        mean = (torch.tensor(cfg["image_mean"]) * scale).to(x.device)[:, None, None]
        std = (torch.tensor(cfg["image_std"]) * scale).to(x.device)[:, None, None]
        return x.to(torch.float32).sub(mean).div(std)
    return x * cfg["rescale_factor"] if cfg["do_rescale"] else x.to(torch.float32)


def llava_pixels(frames: np.ndarray, cfg: dict) -> torch.Tensor:
    """(T, H, W, 3) uint8 → pixel_values_videos (1, T, 3, h, w) float32."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    if cfg.get("do_center_crop"):
        raise VideoError("video processor configs with do_center_crop are not supported")
    if cfg["do_resize"]:
        size = cfg["size"]
        if "height" in size and "width" in size:
            hw = (size["height"], size["width"])
        elif "shortest_edge" in size:   # short side to s, long side scaled (no square default)
            h, w, s = x.shape[-2], x.shape[-1], size["shortest_edge"]
            hw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        else:
            raise VideoError(f"unsupported size {size} in the video processor config")
        x = _resize(x, hw, cfg["resample"])
    return _normalize(x, cfg)[None]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's size rule: both sides multiples of ``factor``, area in [min, max], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise VideoError(f"aspect ratio {max(height, width) / min(height, width):.0f} is above Qwen's limit of 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def qwen_pixels(frames: np.ndarray, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, H, W, 3) uint8 → (pixel_values_videos (t·h·w, 3·tp·p·p) float32, video_grid_thw (1, 3)).

    The last frame is repeated up to a multiple of the temporal patch size tp, as the HF
    processor does; patches are ordered (t, h/m, w/m, m, m) with merge size m.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    p, tp, m = cfg["patch_size"], cfg["temporal_patch_size"], cfg["merge_size"]
    if cfg["do_resize"]:
        size, max_pixels = cfg["size"], cfg["size"]["longest_edge"]
        if cfg.get("cap_pixels_per_frame"):   # the per-frame share of a whole-video budget
            budget = int(cfg["max_video_tokens"] * (p * m) ** 2 * 0.9)
            max_pixels = max(min(max_pixels, budget * tp // x.shape[0]), int(size["shortest_edge"] * 1.05))
        hw = smart_resize(x.shape[-2], x.shape[-1], p * m, size["shortest_edge"], max_pixels)
        x = _resize(x, hw, cfg["resample"])
    x = _normalize(x, cfg)
    if pad := -x.shape[0] % tp:
        x = torch.cat((x, x[-1:].expand(pad, -1, -1, -1)))
    T, C, H, W = x.shape
    t, h, w = T // tp, H // p, W // p
    x = x.view(t, tp, C, h // m, m, p, w // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * h * w, C * tp * p * p), torch.tensor([[t, h, w]])


# ----------------------------------------------------------------------------- everything

@dataclass
class ModelInputs:
    """What ``model.generate`` receives, plus what the report and the figures need.

    inputs: input_ids (1, L), attention_mask, pixel tensors (and Qwen's video_grid_thw,
    second_per_grid_ts, mm_token_type_ids where the model takes them). frames: the sampled
    (T, H, W, 3) uint8 frames; frame_step: sampled frames per pruning row (Qwen's temporal
    patch, else 1); video_tokens: placeholders of the unpruned prompt.
    """

    inputs: dict
    frames: np.ndarray
    frame_step: int
    video_tokens: int
    indices: list[int] = field(default_factory=list)


def prepare_inputs(family: str, frames: np.ndarray, info: VideoInfo, config, cfg: dict, tokenizer,
                   template: str, prompt: str, takes_token_types: bool = False) -> ModelInputs:
    """Pixels and prompt ids for one video and one question (batch of 1)."""
    if family == "llava":
        pixels = llava_pixels(frames, cfg)
        vc = config.vision_config
        side = math.ceil(vc.image_size // vc.patch_size / 2)   # the model pools to ceil(g/2)²
        count = frames.shape[0] * side * side + 1             # + the trailing newline token
        inputs, step = {"pixel_values_videos": pixels}, 1
    else:
        pixels, grid = qwen_pixels(frames, cfg)
        count = int(grid.prod()) // cfg["merge_size"] ** 2
        step = cfg["temporal_patch_size"]
        fps = info.fps or 24.0   # transformers' fallback when the container has no rate
        sampled_fps = frames.shape[0] / info.frames * fps
        inputs = {"pixel_values_videos": pixels, "video_grid_thw": grid,
                  "second_per_grid_ts": torch.tensor([step / sampled_fps])}
    ids = torch.tensor([prompt_ids(tokenizer, template, prompt, config.video_token_id, count)])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **inputs}
    if takes_token_types:   # Qwen: 1 marks image placeholders, 2 video ones
        inputs["mm_token_type_ids"] = 2 * (ids == config.video_token_id).long() + (ids == config.image_token_id).long()
    return ModelInputs(inputs, frames, step, count)
