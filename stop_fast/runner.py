"""``stop-fast run``: one video and one question through a HF Video LLM with ``apply_stop``.

Loads the checkpoint with transformers' own classes and tokenizer, decodes the video with
PyAV (:mod:`stop_fast.video`), and generates greedily for each configuration asked for
(SToP; with ``--compare`` also the unpruned model and the host method without SToP). Each
configuration gets one untimed warm-up generation (one new token) and one timed one; the
table reports what the timed one measured: video tokens in the LLM prefill, time inside
``get_video_features`` (vision tower + projector + pruning), time to first token, decode rate.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import video as V
from .pipelines.registry import get_method

__all__ = ["RunError", "Outcome", "run"]

DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class RunError(Exception):
    """A user-facing problem (bad option, unsupported checkpoint): one line on stderr."""


@dataclass
class Outcome:
    label: str
    answer: str
    video_tokens: int     # video positions in the LLM prefill
    prefill_tokens: int
    vision_ms: float
    ttft_ms: float
    decode_tok_s: float | None
    new_tokens: int
    records: list | None = None   # last_pruned(model) after this configuration, for --viz


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _FirstToken:
    """A generate() streamer noting when the first new token arrives (the first put() is the
    prompt) and when the last one does."""

    def __init__(self, device):
        self.device, self.calls, self.first, self.last = device, 0, None, None

    def put(self, value):
        self.calls += 1
        if self.calls >= 2:
            now = time.perf_counter()   # value is on the host already: the step has finished
            self.first = self.first or now
            self.last = now

    def end(self):
        """Part of the streamer interface generate() calls; the last put() already timed it."""


@contextlib.contextmanager
def _timed(obj, name: str, spent: list, device):
    """Time every call of ``obj.name`` (an instance attribute over whatever is there now)."""
    had, old, fn = name in obj.__dict__, obj.__dict__.get(name), getattr(obj, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(device)
        spent.append(time.perf_counter() - t0)
        return out

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


def _last_pruned(model):
    from . import integrations
    fn = getattr(integrations, "last_pruned", None)
    return fn(model) if fn is not None else None


def _generate(model, tokenizer, inputs: dict, max_new: int, device, label: str, full_video: int) -> Outcome:
    prompt_len = inputs["input_ids"].shape[1]
    spent, prefill = [], []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: prefill.append((kw.get("inputs_embeds") if kw.get("inputs_embeds") is not None
                                         else a[0]).shape[1]), with_kwargs=True)
    streamer = _FirstToken(device)
    try:
        with _timed(model.model, "get_video_features", spent, device), torch.inference_mode():
            _sync(device)
            t0 = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, streamer=streamer,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    finally:
        hook.remove()
    new = out[0, prompt_len:]
    n = int(new.numel())
    decode = (n - 1) / (streamer.last - streamer.first) if n > 1 and streamer.last > streamer.first else None
    return Outcome(label, tokenizer.decode(new, skip_special_tokens=True).strip(),
                   video_tokens=prefill[0] - (prompt_len - full_video), prefill_tokens=prefill[0],
                   vision_ms=1e3 * sum(spent), ttft_ms=1e3 * (streamer.first - t0), decode_tok_s=decode,
                   new_tokens=n, records=_last_pruned(model))


def _check_args(args) -> tuple[torch.device, torch.dtype | None]:
    if not 0.0 < args.retention <= 1.0 or math.isnan(args.retention):
        raise RunError(f"--retention must be in (0, 1], got {args.retention}")
    if args.frames < 1:
        raise RunError(f"--frames must be at least 1, got {args.frames}")
    if args.max_new_tokens < 1:
        raise RunError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    if args.dtype not in DTYPES:
        raise RunError(f"--dtype must be one of {sorted(DTYPES)}, got {args.dtype!r}")
    dtype = DTYPES[args.dtype]
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def _load(model_id: str, device, dtype):
    """(family, model, tokenizer, processor settings, chat template) of a checkpoint."""
    import transformers as tf
    tf.utils.logging.disable_progress_bar()   # ours is showing
    try:
        config = tf.AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot load a model config from {model_id!r}: {str(exc).splitlines()[0]}") from None
    family = V.FAMILIES.get(config.model_type)
    if family is None:
        raise RunError(f"{model_id}: model type {config.model_type!r} is not supported; stop-fast run takes "
                       "LLaVA-OneVision / LLaVA-Video (llava_onevision) and Qwen2.5-VL (qwen2_5_vl) checkpoints")
    cls = (tf.LlavaOnevisionForConditionalGeneration if family == "llava"
           else tf.Qwen2_5_VLForConditionalGeneration)
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(model_id)
        model = cls.from_pretrained(model_id, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot load {model_id!r}: {str(exc).splitlines()[0]}") from None
    return family, model, tokenizer, V.processor_config(model_id, family), V.chat_template(model_id, tokenizer)


def _progress(console: Console) -> Progress:
    """Live progress on an interactive stderr; nothing when it is a file or a pipe."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)


def _table(outcomes: list[Outcome], caption: str) -> Table:
    table = Table(title="stop-fast run", caption=caption, show_lines=True)
    for col in ("run", "video tok", "prefill tok", "vision ms", "TTFT ms", "decode tok/s", "answer"):
        # the answer takes the remaining width and wraps, so narrow terminals keep every column
        table.add_column(col, justify="left" if col in ("run", "answer") else "right", overflow="fold",
                         ratio=1 if col == "answer" else None)
    for o in outcomes:
        table.add_row(o.label, str(o.video_tokens), str(o.prefill_tokens), f"{o.vision_ms:.1f}", f"{o.ttft_ms:.1f}",
                      "—" if o.decode_tok_s is None else f"{o.decode_tok_s:.1f}", o.answer or "(empty)")
    return table


def run(args, console: Console | None = None, err: Console | None = None) -> int:
    """The ``run`` command (``args``: the parsed options of :mod:`stop_fast.cli`)."""
    console = console or Console()
    err = err or Console(stderr=True)
    device, dtype = _check_args(args)
    from .integrations import apply_stop, remove_stop

    info = V.probe(args.video)   # a bad file fails now, not after loading the model
    if info.frames < args.frames:
        raise V.VideoError(f"{args.video} has {info.frames} frames, fewer than the {args.frames} asked for "
                           f"(use --frames {info.frames} or fewer)")
    with _progress(err) as bar:
        task = bar.add_task("loading model", total=None)
        family, model, tokenizer, pcfg, template = _load(args.model, device, dtype)
        # Defaults: the backbone's main setting in the paper (HoliTom on LLaVA, VisionZip on Qwen).
        method = args.method or ("holitom" if family == "llava" else "visionzip")
        bar.update(task, description=f"decoding {Path(args.video).name}", total=1, completed=0)
        rounding = "floor" if family == "llava" else "round"
        frames, indices, info = V.read_frames(args.video, args.frames, rounding,
                                              lambda done, total: bar.update(task, completed=done, total=total))
        takes_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
        prepared = V.prepare_inputs(family, frames, info, model.config, pcfg, tokenizer, template, args.prompt,
                                    takes_token_types=takes_types)
        inputs = {k: (v.to(device, dtype) if v.is_floating_point() and k.startswith("pixel") else v.to(device))
                  for k, v in prepared.inputs.items()}

        # A method that reads no attention (PruneVid) has no SToP variant: it runs plain.
        no_stop = args.no_stop or not get_method(method).uses_attention
        configs = [(f"{method}+SToP" if not no_stop else method, not no_stop)]
        if args.compare:
            configs = [("unpruned", None), (method, False)] + [(f"{method}+SToP", True)] * (not no_stop)
        elif args.viz and not no_stop:
            configs = [(method, False, "viz-only"), *configs]   # the side-by-side figure needs both
        outcomes, records = [], {}
        for label, use_stop, *viz_only in configs:
            remove_stop(model)
            if use_stop is not None:
                try:
                    apply_stop(model, method=method, retention_ratio=args.retention, use_stop=use_stop)
                except (ValueError, TypeError) as exc:
                    raise RunError(f"apply_stop({method}, retention {args.retention}): {exc}") from None
            if viz_only:   # vision + one prefill step only, for the records
                bar.update(task, description=f"{label}: pruning for the figures", total=None)
                _generate(model, tokenizer, inputs, 1, device, label, prepared.video_tokens)
                records[use_stop] = _last_pruned(model)
                continue
            bar.update(task, description=f"{label}: warm-up", total=None)
            _generate(model, tokenizer, inputs, 1, device, label, prepared.video_tokens)
            bar.update(task, description=f"{label}: generating up to {args.max_new_tokens} tokens")
            outcome = _generate(model, tokenizer, inputs, args.max_new_tokens, device, label, prepared.video_tokens)
            outcomes.append(outcome)
            records[use_stop] = outcome.records
        remove_stop(model)

    console.print(f"[bold]{args.model}[/] ({family}) on {device}, {str(dtype).removeprefix('torch.')}: "
                  f"{len(indices)} of {info.frames} frames, retention {args.retention:g}")
    console.print(_table(outcomes, f"timings: one run each after one warm-up run, on {device}"))
    if args.viz:
        _write_figures(args, prepared, records, err)
    return 0


def _write_figures(args, prepared: V.ModelInputs, records: dict, err: Console) -> None:
    from . import viz
    stop, plain = (records.get(True) or [None])[0], (records.get(False) or [None])[0]
    if stop is None and plain is None:
        err.print("[yellow]note[/]: no pruning records (stop_fast.integrations.last_pruned is unavailable); "
                  "no figures written")
        return
    frames = prepared.frames[::prepared.frame_step]
    paths = viz.save(viz.figures(frames, stop=stop, plain=plain, method=args.method or stop_or(stop, plain)),
                     args.viz, prefix="run")
    err.print(f"wrote {len(paths)} figures to {args.viz}")


def stop_or(*records) -> str:
    rec = next(r for r in records if r is not None)
    return rec.pruned.method
