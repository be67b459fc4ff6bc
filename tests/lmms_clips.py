"""The offline lmms-eval test set-up: two short MP4s, a JSON-lines data set naming them, and the
tiny checkpoints of :mod:`tiny_models`, written into one folder that the tasks of
``tests/lmms_eval_tasks`` (passed with ``--include_path``) read ``clips.jsonl`` from (the
working directory of the run).
"""
from __future__ import annotations

import json
from pathlib import Path

import tiny_models as tm

TASKS = Path(__file__).resolve().parent / "lmms_eval_tasks"
GEN, MC, FRAME_LIST = "stop_fast_clips_gen", "stop_fast_clips_mc", "stop_fast_clips_frames"
FRAMES = {"a.mp4": 12, "b.mp4": 10}
QUESTIONS = [
    dict(video="a.mp4", question="what moves in the video ?", answer="a red square", choices=["left", "right"],
         label=1),
    dict(video="b.mp4", question="is there a blue object ?", answer="no", choices=["yes", "no", "two"], label=1),
]
# Visual tokens the processor writes per video: LLaVA 4×4 (llava196: 14×14) pooled tokens per frame
# + the newline; Qwen2.5-VL 8×6 merged tokens per pair of frames.
FULL = {"llava": lambda frames: frames * 16 + 1, "llava196": lambda frames: frames * 196 + 1,
        "qwen": lambda frames: -(-frames // 2) * 48}


def write_clips(root) -> Path:
    """Checkpoints ``llava``, ``llava196`` (PruneVid's 196 tokens per frame), ``qwen`` and ``siglip``
    (a SigLIP vision tower with its attention-pooling head, FastVid's ``global_head`` for
    ``llava``), the two clips and ``clips.jsonl`` under ``root``."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    root = Path(root)
    tm.save_llava(root / "llava")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=56, patch_size=7,
                                         vision_use_head=True)).save_pretrained(root / "siglip")
    tm.save_llava(root / "llava196", image_size=378, patch_size=14)
    tm.save_qwen(root / "qwen")
    for seed, (name, count) in enumerate(FRAMES.items()):
        tm.write_mp4(root / name, tm.frames(count, seed=seed))
    docs = [{**q, "video": str(root / q["video"])} for q in QUESTIONS]
    (root / "clips.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


def offline_env(root) -> dict:
    """Environment of an offline run whose data-set cache lives under ``root``."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "LMMS_EVAL_DATASETS_CACHE": str(Path(root) / "datasets-cache"), "TOKENIZERS_PARALLELISM": "false"}
