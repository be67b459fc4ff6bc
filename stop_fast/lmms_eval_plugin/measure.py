"""The numbers a paper needs, measured per request and summed per task.

Per request (one lmms-eval ``Instance``; a multiple-choice question is one request per choice):

* ``visual_tokens_before`` — video placeholders in the prompt as the processor writes them
  (LLaVA: T·N pooled tokens + the newline token; Qwen2.5-VL: T'·N' merged tokens);
* ``visual_tokens_after`` — video placeholders in the LLM prefill after pruning (the prefill
  length minus the text around the video), counted on the call the LLM actually received;
* ``prune_ms`` — the time ``get_video_features`` spends beyond the model's own vision tower,
  projector and pooling: the attention scores from the captured q/k, the sink score, selection
  and merging (null for ``method=none``, where none of it runs);
* ``prefill_ms`` — the LLM's first forward over the (pruned) prompt;
* ``input_tokens`` / ``output_tokens`` — prefill length and new tokens (lmms-eval's fields).

They go into each logged sample's ``token_counts`` (:class:`PruneCounts`, lmms-eval's
``TokenCounts`` with the fields above) and, as per-task means, into the results file's
``throughput`` section through lmms-eval's own ``log_metrics`` (keys
``avg_stop_fast/<task>/<field>``). On CUDA each boundary synchronizes the device so the times
are the device's; the evaluation path is not a hot path.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from lmms_eval.api.instance import TokenCounts

from ..integrations._common import STATE_ATTR
from ..runner import _sync, _timed
from . import KEY_PREFIX

__all__ = ["PruneCounts", "Sample", "measured", "Tally", "KEY_PREFIX"]

FIELDS = ("visual_tokens_before", "visual_tokens_after", "prune_ms", "prefill_ms", "frames")


@dataclass
class PruneCounts(TokenCounts):
    """lmms-eval's per-request token counts plus what pruning did to the request."""

    visual_tokens_before: int | None = None
    visual_tokens_after: int | None = None
    prune_ms: float | None = None
    prefill_ms: float | None = None
    frames: int | None = None

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update({name: getattr(self, name) for name in FIELDS})
        return out


@dataclass
class Sample:
    """What one request measured (filled in by :func:`measured`)."""

    frames: int
    visual_tokens_before: int
    prompt_tokens: int                    # the unpruned prompt's length (with any continuation)
    prefill_tokens: int | None = None
    prefill_ms: float | None = None
    prune_ms: float | None = None
    elapsed_s: float = 0.0
    output_tokens: int = 0
    _start: float | None = field(default=None, repr=False)

    @property
    def visual_tokens_after(self) -> int:
        return self.prefill_tokens - (self.prompt_tokens - self.visual_tokens_before)

    def counts(self) -> PruneCounts:
        return PruneCounts(input_tokens=self.prefill_tokens, output_tokens=self.output_tokens,
                           visual_tokens_before=self.visual_tokens_before,
                           visual_tokens_after=self.visual_tokens_after, prune_ms=self.prune_ms,
                           prefill_ms=self.prefill_ms, frames=self.frames)


@contextlib.contextmanager
def measured(model, sample: Sample, device):
    """Time one request on ``model``: the first LLM forward is the prefill; with ``apply_stop``
    in place, the patched ``get_video_features`` minus the original it wraps is the pruning."""
    lm = model.model.language_model

    def before(module, args, kwargs):
        if sample._start is None:
            x = kwargs.get("inputs_embeds")
            x = x if x is not None else (args[0] if args else kwargs.get("input_ids"))
            sample.prefill_tokens = int(x.shape[1])
            _sync(device)
            sample._start = time.perf_counter()

    def after(module, args, kwargs, output):
        if sample.prefill_ms is None and sample._start is not None:
            _sync(device)
            sample.prefill_ms = 1e3 * (time.perf_counter() - sample._start)

    patch = model.__dict__.get(STATE_ATTR)
    vision, total = [], []
    hooks = [lm.register_forward_pre_hook(before, with_kwargs=True),
             lm.register_forward_hook(after, with_kwargs=True)]
    try:
        with contextlib.ExitStack() as stack:
            if patch is not None:
                if "orig_features" not in vars(patch):
                    raise RuntimeError(f"{type(patch).__name__} keeps no orig_features: the time spent in "
                                       "scoring and selection cannot be separated from the vision tower")
                stack.enter_context(_timed(patch, "orig_features", vision, device))
                stack.enter_context(_timed(model.model, "get_video_features", total, device))
            _sync(device)
            t0 = time.perf_counter()
            yield sample
            _sync(device)
            sample.elapsed_s = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    if sample.prefill_tokens is None:
        raise RuntimeError("the language model was never called for this request")
    if patch is not None:
        sample.prune_ms = max(0.0, 1e3 * (sum(total) - sum(vision)))


class Tally:
    """Per-task sums of one ``generate_until`` / ``loglikelihood`` call, logged once per task."""

    def __init__(self):
        self.tasks: dict[str, list[Sample]] = {}

    def add(self, task: str, sample: Sample) -> None:
        self.tasks.setdefault(task, []).append(sample)

    def summaries(self) -> dict[str, dict]:
        """task → (elapsed s, generated tokens, the means lmms-eval's summary averages)."""
        out = {}
        for task in sorted(self.tasks):
            samples = self.tasks[task]
            means = {}
            for name in FIELDS:
                values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
                if values:
                    means[f"{KEY_PREFIX}/{task}/{name}"] = sum(values) / len(values)
            means["num_requests"] = len(samples)
            out[task] = dict(elapsed=sum(s.elapsed_s for s in samples),
                             tokens=sum(s.output_tokens for s in samples), means=means)
        return out

    def log(self) -> None:
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        for summary in self.summaries().values():
            elapsed, tokens = summary["elapsed"], summary["tokens"]
            log_metrics(total_elapsed_time=elapsed, total_gen_tokens=tokens,
                        avg_speed=tokens / elapsed if elapsed > 0 else 0.0, additional_metrics=summary["means"])
