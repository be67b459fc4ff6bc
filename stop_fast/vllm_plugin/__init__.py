"""stop_fast inside vLLM: a ``vllm.general_plugins`` entry point (``register``), run by vLLM in
each of its processes.

It registers, under vLLM's own architecture names, subclasses of vLLM's
``LlavaOnevisionForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration`` (one
module per family) with processors that size each video's placeholders to the exact budget,
and a configuration hook that validates ``additional_config["stop_fast"]`` at start-up
(:mod:`.config`). Without that key the subclasses behave exactly as vLLM's own classes.
Importing ``stop_fast`` never imports this package or vLLM.
"""
from __future__ import annotations

import functools

__all__ = ["register", "MODELS"]

# vLLM architecture → "module:class" of the subclass that replaces it.
MODELS = {
    "LlavaOnevisionForConditionalGeneration": "stop_fast.vllm_plugin.llava_onevision:StopLlavaOnevision",
    "Qwen2_5_VLForConditionalGeneration": "stop_fast.vllm_plugin.qwen2_5_vl:StopQwen2_5_VL",
}
_done = False


def register() -> None:
    """The entry point: register the model classes, the configuration hooks and the runner flag
    (idempotent; vLLM calls it once per process)."""
    global _done
    if _done:
        return
    _done = True
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from . import config as cfg
    for arch, path in MODELS.items():
        ModelRegistry.register_model(arch, path)
        hook = type(f"StopFast{arch}Config", (cfg.VerifyConfig,),
                    {"model_class": arch, "previous": MODELS_CONFIG_MAP.get(arch)})
        if arch.startswith("Llava"):
            hook.tokens_per_frame = staticmethod(_llava_tokens)
        MODELS_CONFIG_MAP[arch] = hook
    _runner_pruning_flag()


def _llava_tokens(model_config) -> int:
    from .llava_onevision import pooled_tokens
    return pooled_tokens(model_config)


def _runner_pruning_flag() -> None:
    """vLLM's model runner handles pruned multimodal embeddings (strips the position channels,
    recomputes M-RoPE positions) only when ``is_multimodal_pruning_enabled`` is set, which its
    GPU runner derives from vLLM's own EVS setting (``video_pruning_rate``) and its CPU runner
    (0.32) never sets in ``load_model``. After a runner loads a model that prunes through this
    plugin (``stop_fast_prunes``), the flag is set; where it is set already, or the model does
    not prune, nothing changes."""
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError:          # a vLLM without this runner: nothing to patch
        return
    runners = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        runners.append(CPUModelRunner)
    except ImportError:
        pass
    for runner in runners:
        load = runner.__dict__.get("load_model")
        if load is None or getattr(load, "_stop_fast", False):
            continue

        @functools.wraps(load)
        def load_model(self, *args, _load=load, **kwargs):
            out = _load(self, *args, **kwargs)
            model = self.get_model() if hasattr(self, "model") else None
            if getattr(model, "stop_fast_prunes", False) and not getattr(self, "is_multimodal_pruning_enabled", False):
                self.is_multimodal_pruning_enabled = True
            return out

        load_model._stop_fast = True
        runner.load_model = load_model
