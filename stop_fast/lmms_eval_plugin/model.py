"""The ``stop_fast`` lmms-eval model: a LLaVA-OneVision / LLaVA-Video or Qwen2.5-VL checkpoint in
HF format, loaded and fed exactly as ``stop-fast run`` does (transformers' own classes; PyAV
decoding and the processor's steps from :mod:`stop_fast.video`), pruned by
:func:`stop_fast.apply_stop` (``method=none``: unpruned).

:class:`StopFast` is lmms-eval's "simple" kind: the prompt is the task's context and the video
comes from ``doc_to_visual``; it answers ``generate_until`` and ``loglikelihood`` (multiple
choice). :class:`StopFastChat` is the "chat" kind: it reads the task's ``doc_to_messages`` (one
user turn: a video and text). lmms-eval picks the chat class unless ``--force_simple`` is given;
multiple-choice tasks need ``--force_simple`` (lmms-eval builds chat requests for generation only).

Requests are evaluated one at a time (``batch_size`` 1), so every number in
:mod:`.measure` belongs to one request.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string
from loguru import logger
from tqdm import tqdm

from .. import video as V
from ..runner import DTYPES, RunError, _load
from . import compat
from .measure import Sample, Tally, measured
from .settings import NO_PRUNING, ModelArgsError, parse_settings

__all__ = ["StopFast", "StopFastChat"]

_ROUNDING = {"llava": "floor", "qwen": "round"}                  # each family's frame sampling


class StopFast(lmms):
    """``--model stop_fast --force_simple``: context + ``doc_to_visual``; see the module doc.

    Arguments (``--model_args``): ``pretrained`` and ``method`` (a registered method, or ``none``
    for the unpruned model) are required; ``retention_ratio`` (0.1),
    ``use_stop`` (the method's default), ``frames`` (32), ``device``, ``dtype`` (auto),
    ``max_new_tokens`` (128, when the task sets none), ``global_head`` (FastVid on LLaVA: a SigLIP
    vision checkpoint whose attention-pooling head gives the per-frame vectors), and any option of
    the method (``mu_s``, ``mu_t``, ``tau``, …).
    """

    is_simple = True

    def __init__(self, **model_args):
        super().__init__()
        s = self.settings = parse_settings(**model_args)
        self.device = torch.device(s.device)
        dtype = DTYPES[s.dtype] or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.dtype = dtype
        try:
            self.family, self.model, self.tokenizer, self.pcfg, self.template = _load(s.pretrained, self.device, dtype)
        except RunError as exc:
            raise ModelArgsError(f"pretrained={s.pretrained!r}: {exc}") from None
        self.method = s.method
        if self.method != NO_PRUNING:
            self._apply_stop()
        self.takes_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters
        self._short_videos = set()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls(**compat.launcher_args(simple_parse_args_string(arg_string or ""), additional_config))

    def _apply_stop(self) -> None:
        from ..integrations import apply_stop

        s = self.settings
        head = None
        if s.global_head is not None:
            if self.family != "llava":
                raise ModelArgsError(f"global_head={s.global_head!r}: only LLaVA checkpoints take a SigLIP head "
                                     "(Qwen2.5-VL's FastVid uses the mean merged token)")
            head = _siglip_head(s.global_head, self.device, self.dtype)
        try:
            apply_stop(self.model, method=self.method, retention_ratio=s.retention_ratio, use_stop=s.use_stop,
                       global_head=head, **s.options)
        except (TypeError, ValueError) as exc:
            raise ModelArgsError(f"method={self.method}: {exc}") from None

    # ------------------------------------------------------------------ one request

    def _request(self, request) -> tuple[object, str, dict]:
        """(video file or frames, prompt text, generation_kwargs) of a generate_until request."""
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        return _one_video(doc_to_visual(self.task_dict[task][split][doc_id]), task, doc_id), context, gen_kwargs

    def _prepare(self, video, prompt: str, continuation: list[int] | None = None):
        """Model inputs for one video (a file, or a list of frames) and prompt (plus
        ``continuation`` ids, for scoring), and the :class:`Sample` that will hold the request's
        numbers."""
        family, frames = self.family, self.settings.frames
        total = V.probe(video).frames if isinstance(video, str) else len(video)
        if total < frames:      # sample what there is rather than stop the whole run
            name = video if isinstance(video, str) else f"a list of {total} frames"
            if name not in self._short_videos:
                logger.warning(f"{name}: fewer frames than frames={frames}: using all {total} of them")
                self._short_videos.add(name)
            frames = total
        if isinstance(video, str):
            clip, _, info = V.read_frames(video, frames, _ROUNDING[family])
        else:   # frames, as lmms-eval's frame-folder tasks give a video: sampled like a file's
            picked = [np.asarray(video[i].convert("RGB") if hasattr(video[i], "convert") else video[i])
                      for i in V.sample_indices(total, frames, _ROUNDING[family])]
            if any(f.ndim != 3 or f.shape[-1] != 3 or f.shape != picked[0].shape for f in picked):
                raise ValueError(f"video frames must share one (H, W, 3) shape, got {sorted({f.shape for f in picked})}")
            clip = np.stack(picked).astype(np.uint8, copy=False)
            info = V.VideoInfo(total, 0.0, clip.shape[2], clip.shape[1])    # no rate: Qwen's default applies
        prepared = V.prepare_inputs(family, clip, info, self.model.config, self.pcfg, self.tokenizer, self.template,
                                    prompt, takes_token_types=self.takes_types)
        inputs = dict(prepared.inputs)
        if continuation:
            ids = torch.tensor([continuation])
            for name, tail in (("input_ids", ids), ("attention_mask", torch.ones_like(ids)),
                               ("mm_token_type_ids", torch.zeros_like(ids))):
                if name in inputs:
                    inputs[name] = torch.cat((inputs[name], tail), dim=1)
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() and k.startswith("pixel") else
                      v.to(self.device)) for k, v in inputs.items()}
        return inputs, Sample(frames, prepared.video_tokens, int(inputs["input_ids"].shape[1]))

    def _generate_one(self, path, prompt: str, gen_kwargs: dict) -> tuple[str, Sample]:
        gen = _generation_settings(gen_kwargs, self.settings.max_new_tokens)
        until = gen.pop("until")
        inputs, sample = self._prepare(path, prompt)
        pad = self.tokenizer.pad_token_id
        with measured(self.model, sample, self.device), torch.inference_mode():
            out = self.model.generate(**inputs, **gen, pad_token_id=self.tokenizer.eos_token_id if pad is None else pad)
        new = out[0, inputs["input_ids"].shape[1]:]
        sample.output_tokens = int(new.numel())
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for stop in until:
            text = text.split(stop)[0]
        return text, sample

    def _score_one(self, path, context: str, continuation: str) -> tuple[float, bool, Sample]:
        cont = list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if not cont:
            raise ValueError(f"the continuation {continuation!r} encodes to no tokens; nothing to score")
        inputs, sample = self._prepare(path, context, cont)
        with measured(self.model, sample, self.device), torch.inference_mode():
            logits = self.model(**inputs).logits
        # The patched forward cut the video run; the continuation is still the last len(cont) tokens.
        logp = torch.log_softmax(logits[0, -len(cont) - 1:-1].float(), dim=-1)
        target = torch.tensor(cont, device=logp.device)
        loss = -logp.gather(1, target[:, None]).sum()
        greedy = bool((logp.argmax(-1) == target).all())
        return float(loss), greedy, sample

    # ------------------------------------------------------------------ lmms-eval's interface

    def generate_until(self, requests) -> list:
        tally, out = Tally(), []
        for request in tqdm(requests, disable=self.rank != 0, desc="stop_fast generating"):
            path, prompt, gen_kwargs = self._request(request)
            text, sample = self._generate_one(path, prompt, gen_kwargs)
            tally.add(request.task_name, sample)
            self.cache_hook.add_partial("generate_until", (prompt, gen_kwargs), text)
            out.append(GenerationResult(text=text, token_counts=sample.counts()))
        tally.log()
        return out

    def loglikelihood(self, requests) -> list:
        tally, out = Tally(), []
        for request in tqdm(requests, disable=self.rank != 0, desc="stop_fast scoring"):
            if len(request.args) < 6:
                raise ValueError("stop_fast scores video requests (context, continuation, doc_to_visual, doc_id, task, "
                                 f"split); got a request without a video ({len(request.args)} arguments, e.g. "
                                 "acc_mutual_info's unconditional ones)")
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            path = _one_video(doc_to_visual(self.task_dict[task][split][doc_id]), task, doc_id)
            loss, greedy, sample = self._score_one(path, context, continuation)
            tally.add(request.task_name, sample)
            out.append(compat.loglikelihood_result(loss, greedy, sample.counts()))
        tally.log()
        return out

    def generate_until_multi_round(self, requests) -> list:
        raise NotImplementedError("stop_fast does not evaluate multi-round generation tasks")


class StopFastChat(StopFast):
    """``--model stop_fast`` (lmms-eval's default kind): the task's ``doc_to_messages``, one user
    turn holding one video and text; the prompt is the video followed by the text."""

    is_simple = False

    def _request(self, request) -> tuple[object, str, dict]:
        from lmms_eval.protocol import ChatMessages

        _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        chat = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
        roles = [m.role for m in chat.messages]
        if roles != ["user"]:
            raise ValueError(f"task {task}, doc {doc_id}: stop_fast takes one user turn (a video and text), got "
                             f"the turns {roles}")
        images, videos, audios = chat.extract_media()
        if audios or (images and videos):
            raise ValueError(f"task {task}, doc {doc_id}: stop_fast evaluates one video per document, got "
                             f"{len(videos)} video(s), {len(images)} image(s) and {len(audios)} audio clip(s)")
        text = "\n".join(c.text for c in chat.messages[0].content if c.type == "text")
        return _one_video(videos or images, task, doc_id), text, gen_kwargs     # images: the video's frames


def _one_video(visuals, task: str, doc_id):
    """The one video of a document: a file path, or the list of its frames (PIL images or
    (H, W, 3) uint8 arrays), which some lmms-eval tasks give instead of a file."""
    visuals = [visuals] if isinstance(visuals, str) else list(visuals or [])
    if len(visuals) == 1 and isinstance(visuals[0], str):
        return visuals[0]
    if visuals and all(hasattr(v, "convert") or (isinstance(v, np.ndarray) and v.dtype == np.uint8) for v in visuals):
        return visuals
    kinds = sorted({type(v).__name__ for v in visuals})
    raise ValueError(f"task {task}, doc {doc_id}: stop_fast needs one video per document (a file path or a list of "
                     f"frames), got {len(visuals)} visual(s) of type {kinds or 'none'}")


def _generation_settings(gen_kwargs: dict | None, default_max_new: int) -> dict:
    """lmms-eval's generation_kwargs → generate() arguments (+ the ``until`` stop strings)."""
    gen = dict(gen_kwargs or {})
    until = gen.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(gen.get("temperature") or 0.0)
    sample = bool(gen.get("do_sample", False)) or temperature > 0
    out = {"until": until, "max_new_tokens": int(gen.get("max_new_tokens") or default_max_new),
           "do_sample": sample, "num_beams": int(gen.get("num_beams") or 1)}
    if sample:
        out.update(temperature=temperature or 1.0, top_p=gen.get("top_p") or 1.0)
    return out


def _siglip_head(checkpoint: str, device, dtype):
    """SigLIP's post-layernorm + attention-pooling head (FastVid's per-frame vectors, SPEC §9)."""
    from transformers import SiglipVisionModel

    try:
        siglip = SiglipVisionModel.from_pretrained(checkpoint)
    except (OSError, ValueError) as exc:
        raise ModelArgsError(f"global_head={checkpoint!r}: cannot load a SigLIP vision model: "
                             f"{str(exc).splitlines()[0]}") from None
    vm = getattr(siglip, "vision_model", siglip)   # transformers 5 holds the layers on the model itself
    if getattr(vm, "head", None) is None:
        raise ModelArgsError(f"global_head={checkpoint!r}: the checkpoint has no attention-pooling head "
                             "(vision_use_head is off)")
    return torch.nn.Sequential(vm.post_layernorm, vm.head).to(device, dtype).eval()
