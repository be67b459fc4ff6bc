"""The tiny cases the vLLM tests run: checkpoints, one video per family, the prompt, and the same
greedy generation through vLLM + the plugin and through transformers + ``apply_stop``.

LLaVA-OneVision: SigLIP 27×27 patches pooled to 14×14 = 196 tokens per frame (PruneVid's grid),
4 frames of 378×378. Qwen2.5-VL: 112×112 frames, 28×28 patches merged to 196 tokens per pair of
frames, 8 frames (4 temporal groups) at 8 fps. Both LLMs have width 64 and 2 heads: vLLM's CPU
attention needs a head dim of at least 32.
"""
from __future__ import annotations

import gc
import warnings

import numpy as np
import torch

import _workarounds
import tiny_models as TM

FRAMES = {"llava": 4, "qwen": 8}
SIZE = {"llava": 378, "qwen": 112}
FPS = 8.0
PLACEHOLDER = {"llava": "<video>", "qwen": "<|vision_start|><|video_pad|><|vision_end|>"}
N = 196                      # tokens per frame (LLaVA) / per temporal group (Qwen)
GROUPS = {"llava": 4, "qwen": 4}
MAX_NEW = 6


def save_checkpoints(root) -> dict:
    llava = TM.save_llava(root / "llava", width=64, image_size=378, patch_size=14)
    _workarounds.siglip_names_transformers_5(llava)
    qwen = TM.save_qwen(root / "qwen", width=64, max_pixels=112 * 112)
    return {"llava": str(llava), "qwen": str(qwen)}


def video(family: str) -> np.ndarray:
    return TM.frames(FRAMES[family], SIZE[family], SIZE[family])


def metadata(family: str) -> dict:
    """vLLM takes a decoded clip as (frames, metadata): without the dict its processors cannot
    tell the frame rate (Qwen's temporal positions) and reject a bare array."""
    T = FRAMES[family]
    return {"fps": FPS, "total_num_frames": T, "duration": T / FPS, "frames_indices": list(range(T)),
            "video_backend": "pyav", "do_sample_frames": False}


def prompt(family: str) -> str:
    return f"<|im_start|>user {PLACEHOLDER[family]} what happens in the video ?<|im_end|> <|im_start|>assistant "


def settings_of(method, use_stop, ratio=0.2):
    if method is None:
        return None
    return {"method": method, "retention_ratio": ratio, **({} if use_stop is None else {"use_stop": use_stop})}


def make_llm(ckpt: str, settings: dict | None, **kw):
    from vllm import LLM
    extra = {} if settings is None else {"additional_config": {"stop_fast": settings}}
    return LLM(model=ckpt, dtype="float32", enforce_eager=True, distributed_executor_backend="uni",
               max_model_len=1024, limit_mm_per_prompt={"video": 1, "image": 0}, seed=0,
               skip_mm_profiling=True, **extra, **kw)


def run_vllm(ckpt: str, family: str, settings: dict | None):
    """(prompt token count, new tokens, kept positions (M, 2) or None)."""
    from vllm import SamplingParams
    llm = make_llm(ckpt, settings)
    try:
        with warnings.catch_warnings():          # FastVid's frame-mean fallback warns
            warnings.simplefilter("ignore", UserWarning)
            out = llm.generate({"prompt": prompt(family),
                                "multi_modal_data": {"video": (video(family), metadata(family))}},
                               SamplingParams(max_tokens=MAX_NEW, temperature=0), use_tqdm=False)
        last = llm.apply_model(lambda m: None if m.stop_last is None else [p.positions.cpu() for p in m.stop_last])
        kinds = llm.apply_model(lambda m: type(m).__name__)
    finally:
        del llm
        gc.collect()
    pos = None if last[0] is None else last[0][0]
    return len(out[0].prompt_token_ids), list(out[0].outputs[0].token_ids), pos, kinds[0]


def run_transformers(ckpt: str, family: str, settings: dict | None):
    """The same through transformers + apply_stop(..., exact_budget=True)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.video_utils import VideoMetadata

    from stop_fast import apply_stop, last_pruned
    proc = AutoProcessor.from_pretrained(ckpt)
    kw = {}
    if family == "qwen":
        m = metadata(family)
        kw["video_metadata"] = [VideoMetadata(total_num_frames=m["total_num_frames"], fps=FPS,
                                              duration=m["duration"], frames_indices=m["frames_indices"])]
    inputs = proc(text=prompt(family), videos=[video(family)], return_tensors="pt", **kw)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    if settings is not None:
        apply_stop(model, **settings, exact_budget=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    pos = None if settings is None else last_pruned(model)[0].pruned.positions.cpu()
    return new, pos, int(inputs["input_ids"].shape[1])
