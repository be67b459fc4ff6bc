"""``--model_args`` of the ``stop_fast`` lmms-eval model, checked before anything is loaded.

lmms-eval turns ``key=value`` pairs into Python values (``true``/``false`` → bool, digits → int,
anything ``float()`` reads → float, else str) and passes them as keyword arguments, together with
its own ``--batch_size`` / ``--device``. Every problem raises :class:`ModelArgsError`, one line
that names the argument, what it got and what was expected.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

__all__ = ["ModelArgsError", "Settings", "parse_settings", "NO_PRUNING"]

NO_PRUNING = "none"          # method=none: the unpruned model
_DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


class ModelArgsError(ValueError):
    """A bad ``--model_args`` value (the message is one line naming it)."""

    def __init__(self, message: str):
        super().__init__(f"stop_fast --model_args: {message}")


@dataclass(frozen=True)
class Settings:
    """The validated arguments (``method`` is required, so every results file names it)."""

    pretrained: str
    method: str
    retention_ratio: float = 0.1
    use_stop: bool | None = None
    frames: int = 32
    device: str = "cpu"
    dtype: str = "auto"
    max_new_tokens: int = 128
    global_head: str | None = None
    options: dict = field(default_factory=dict)      # the method's own options (mu_s, tau, …)

    @property
    def prunes(self) -> bool:
        return self.method != NO_PRUNING


def _bad(name: str, value, expected: str) -> ModelArgsError:
    return ModelArgsError(f"{name}={value!r}: expected {expected}")


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _bad(name, value, "a number")
    return float(value)


def _count(name: str, value, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise _bad(name, value, f"an integer of at least {least}")
    return value


def _device(value) -> str:
    if value is None:   # one GPU per process when lmms-eval runs under `accelerate launch`
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(str(value))
    except RuntimeError:
        raise _bad("device", value, "cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise _bad("device", value, "cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelArgsError(f"device={value!r}: torch sees no CUDA device on this machine (use device=cpu)")
    return str(dev)


def parse_settings(pretrained=None, method=None, retention_ratio=0.1, use_stop=None, frames=32, device=None,
                   dtype="auto", max_new_tokens=128, global_head=None, batch_size=1, max_batch_size=None,
                   **options) -> Settings:
    """Check every argument; the method options are checked by building the pruner (cheap)."""
    from ..pipelines import METHODS

    if not isinstance(pretrained, str) or not pretrained:
        raise _bad("pretrained", pretrained, "a local directory or hub id of a LLaVA-OneVision / "
                   "LLaVA-Video or Qwen2.5-VL checkpoint in HF format")
    if method != NO_PRUNING and method not in METHODS:
        raise _bad("method", method, f"one of {[*METHODS, NO_PRUNING]} ({NO_PRUNING}: the unpruned model)")
    ratio = _number("retention_ratio", retention_ratio)
    if not 0.0 < ratio <= 1.0:
        raise _bad("retention_ratio", retention_ratio, "a fraction of the video tokens in (0, 1]")
    if use_stop is not None and not isinstance(use_stop, bool):
        raise _bad("use_stop", use_stop, "true or false")
    if str(batch_size) != "1":
        raise _bad("batch_size", batch_size, "1 (each sample is evaluated and timed on its own)")
    if dtype not in _DTYPES:
        raise _bad("dtype", dtype, f"one of {list(_DTYPES)}")
    if global_head is not None and (not isinstance(global_head, str) or method != "fastvid"):
        raise _bad("global_head", global_head, "a SigLIP vision checkpoint (directory or hub id), with method=fastvid")
    settings = Settings(pretrained, method, ratio, use_stop, _count("frames", frames), _device(device), dtype,
                        _count("max_new_tokens", max_new_tokens), global_head, dict(options))
    if method == NO_PRUNING:
        extra = {k: v for k, v in {"use_stop": use_stop, **options}.items() if v is not None}
        if extra:
            raise ModelArgsError(f"{', '.join(f'{k}={v!r}' for k, v in extra.items())}: method=none runs the "
                                 "unpruned model and takes no pruning options")
    else:
        check_method(settings, method)
    return settings


def check_method(settings: Settings, method: str):
    """The validated pruner settings of ``method`` (ModelArgsError naming the bad option)."""
    from ..pipelines.entry import Pruner

    try:
        return Pruner(method, settings.retention_ratio, use_stop=settings.use_stop, **settings.options).options
    except (TypeError, ValueError) as exc:
        raise ModelArgsError(f"method={method}: {exc}") from None
