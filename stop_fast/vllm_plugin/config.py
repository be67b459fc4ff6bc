"""The ``stop_fast`` key of vLLM's ``additional_config``: read, validated once, carried along.

``--additional-config '{"stop_fast": {"method": "holitom", "retention_ratio": 0.1}}'`` (or
``vllm.LLM(..., additional_config={"stop_fast": {...}})``) turns pruning on. The dict holds
``method``, ``retention_ratio``, ``use_stop`` and every option :func:`stop_fast.prune` takes;
they are validated when vLLM builds its configuration (in the process that parses the
arguments, before any worker starts), with the same errors as ``stop_fast.prune``.
``exact_budget`` is always on here: vLLM sizes each video's placeholder run before the vision
tower runs. Without the key nothing changes.
"""
from __future__ import annotations

from typing import Any

KEY = "stop_fast"
DEFAULTS = {"method": "holitom", "retention_ratio": 0.1}
_ATTR = "stop_fast_settings"          # where the validated settings ride on vLLM's ModelConfig


def read(additional_config) -> dict[str, Any] | None:
    """The user's settings (defaults filled in) or None without the key; TypeError/ValueError
    for a malformed entry."""
    if not isinstance(additional_config, dict) or KEY not in additional_config:
        return None
    raw = additional_config[KEY]
    if not isinstance(raw, dict):
        raise TypeError(f"additional_config[{KEY!r}] must be a dict of stop_fast settings (method, "
                        f"retention_ratio, use_stop, options), got {type(raw).__name__}")
    if raw.get("exact_budget", True) is not True:
        raise ValueError(f"exact_budget={raw['exact_budget']!r} is not available inside vLLM: its "
                         "placeholder count is fixed before the vision tower runs, so every method "
                         "keeps exactly token_budget(...) tokens; leave exact_budget unset")
    return {**DEFAULTS, **{k: v for k, v in raw.items() if k != "exact_budget"}}


def make_pruner(settings: dict, model_class: str):
    """The validated pruner (exact budget on) of ``settings`` for ``model_class``."""
    from ..integrations._common import make_pruner as _make
    from ..pipelines import METHODS
    s = dict(settings)
    method, ratio, use_stop = s.pop("method"), s.pop("retention_ratio"), s.pop("use_stop", None)
    return _make(model_class, tuple(METHODS), method, ratio, use_stop, exact_budget=True, **s)


def attach(model_config, settings: dict | None) -> None:
    setattr(model_config, _ATTR, settings)


def attached(model_config) -> dict | None:
    """The validated settings carried by vLLM's ModelConfig, or None (pruning off)."""
    return getattr(model_config, _ATTR, None)


def budget(settings: dict, T: int, N: int) -> int:
    """B for one video of T frames × N tokens (ValueError where the method cannot run on it)."""
    from ..pipelines import token_budget
    s = dict(settings)
    method, ratio = s.pop("method"), s.pop("retention_ratio")
    return token_budget(method, T, N, ratio, **s)


class VerifyConfig:
    """vLLM's per-architecture configuration hook (``MODELS_CONFIG_MAP``): validates the
    settings where vLLM builds its configuration, so a bad value stops start-up with one
    ValueError/TypeError before any worker starts, and attaches them to the ModelConfig that
    the multimodal processor sees in every process. ``previous``: a hook vLLM itself had for
    the architecture, run first."""

    model_class = ""
    previous = None
    tokens_per_frame = None      # (model_config) -> N where it is fixed by the model (LLaVA)

    @classmethod
    def verify_and_update_config(cls, vllm_config) -> None:
        if cls.previous is not None:
            cls.previous.verify_and_update_config(vllm_config)
        settings = read(vllm_config.additional_config)
        if settings is not None:
            make_pruner(settings, cls.model_class)
            tp = vllm_config.parallel_config.tensor_parallel_size
            if tp != 1:
                # Each rank's vision attention holds a share of the heads; scores from a share
                # would differ between ranks, and so would their selections.
                raise ValueError(f"stop_fast needs tensor_parallel_size=1 (the score averages every "
                                 f"attention head of the scored vision block), got {tp}")
            if cls.tokens_per_frame is not None:      # shape rules (PruneVid's 196, budgets > 0)
                budget(settings, 2, cls.tokens_per_frame(vllm_config.model_config))
        attach(vllm_config.model_config, settings)

    @classmethod
    def verify_and_update_model_config(cls, model_config) -> None:
        if cls.previous is not None:
            cls.previous.verify_and_update_model_config(model_config)
