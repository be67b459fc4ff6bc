"""Suite "e2e": TTFT and decode speed of a random-weight LLaVA-OneVision-7B, pruned or not.

Per frame count, side by side in one process on one model:
- ``unpruned``: the model as built (SDPA everywhere), all T·196 + 1 video tokens;
- ``ours``: ``stop_fast.apply_stop(model, method, retention_ratio)``: the vision tower runs
  as configured, q/k of the feature layer are scored with ``column_mean_attention`` and the
  video is pruned with ``stop_fast.prune`` before the LLM;
- ``official``: the published way of getting the scores: the vision tower in eager
  attention with ``output_attentions=True`` (every layer's N×N maps materialized), score =
  last-layer maps averaged over heads and queries, pooled like the features; then the same
  ``stop_fast.prune`` call and the same LLM prefill, so the gap isolates score extraction.
TTFT = prefill of the whole prompt (vision, pruning, LLM) up to the first token's logits;
decode = greedy single-token steps on the KV cache; ``vit_ms`` = the video-feature path
alone (ViT + projector + pooling [+ scoring and pruning]).
"""
from __future__ import annotations

import statistics
import time

import torch

from . import e2e_model as E
from .record import OURS, Case, SuiteResult, skipped
from .timing import Timing, is_oom, measure, peak_memory_mib, sync

FULL = {"frames": [32, 64], "ratios": [0.10, 0.15, 0.20], "decode": 32, "reps": 5, "warmup": 2}
SMOKE = {"frames": [2, 4], "ratios": [0.10], "decode": 4, "reps": 2, "warmup": 1}
from stop_fast.pipelines.registry import METHODS as _REGISTRY

METHODS = tuple(_REGISTRY)      # every registered host method (PruneVid needs the 14×14 grid)


def _blocks(tower):
    """Encoder blocks of a SigLIP tower (nested under ``vision_model`` in older transformers)."""
    return getattr(tower, "vision_model", tower).encoder.layers


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].argmax(dim=-1, keepdim=True)


class Runner:
    """One model, one video: prefill/decode closures for each variant."""

    def __init__(self, model, pixels: torch.Tensor, n_decode: int):
        self.model, self.pixels, self.n_decode = model, pixels, n_decode
        self.inner = model.model
        self.full_ids = E.prompt_ids(pixels.shape[1] * E.pooled_tokens(model) + 1, pixels.device)

    # -- unpruned and ours: the model's own forward (apply_stop patches it) --
    def vision(self):
        return self.inner.get_video_features(pixel_values_videos=self.pixels, return_dict=True)

    def prefill(self):
        out = self.model(input_ids=self.full_ids, pixel_values_videos=self.pixels, use_cache=True,
                         logits_to_keep=1)
        return _greedy(out.logits), out.past_key_values

    def visual_tokens(self) -> int:
        return int(self.vision().pooler_output.shape[1])

    # -- official-style: eager ViT with every attention map, then stop_fast.prune --
    def official_vision(self, method: str, ratio: float) -> torch.Tensor:
        import stop_fast

        inner = self.inner
        layer = inner.config.vision_feature_layer     # an int for LLaVA-OneVision (-1)
        blocks = _blocks(inner.vision_tower)
        idx = layer % (len(blocks) + 1) - 1     # hidden_states[i] is the output of block i - 1
        block = blocks[idx].self_attn
        keys = {}
        hook = block.k_proj.register_forward_hook(lambda m, a, o: keys.__setitem__("k", o))
        try:
            vo = inner.vision_tower(self.pixels.flatten(0, 1), output_attentions=True,
                                    output_hidden_states=True, return_dict=True)
        finally:
            hook.remove()
        # batch of one video: the (T, Np, ·) frame batch is the video itself
        feats = inner.apply_pooling(inner.multi_modal_projector(vo.hidden_states[layer]))
        attn = vo.attentions[idx].float().mean(dim=1).mean(dim=1)        # as published
        score = inner.apply_pooling(attn.unsqueeze(-1)).squeeze(-1)
        extra = {}
        if _REGISTRY[method].needs_metric:
            k = keys["k"].unflatten(-1, (block.num_heads, -1)).float().mean(dim=2)
            extra["metric"] = inner.apply_pooling(k)
        if _REGISTRY[method].uses_global:           # the fallback apply_stop uses without a head
            extra["global_features"] = feats.float().mean(dim=1)
        pruned = stop_fast.prune(feats, score, method=method, retention_ratio=ratio, **extra)
        newline = inner.image_newline.to(feats.dtype)[None]
        return torch.cat((pruned.tokens.to(feats.dtype), newline))          # (M + 1, D)

    def official_prefill(self, method: str, ratio: float):
        video = self.official_vision(method, ratio)
        ids = E.prompt_ids(video.shape[0], self.pixels.device)
        embeds = self.model.get_input_embeddings()(ids)
        mask = (ids == E.VIDEO_TOKEN).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, video.to(embeds.dtype))
        out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return _greedy(out.logits), out.past_key_values

    def decode(self, tok, cache):
        for _ in range(self.n_decode):
            out = self.model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tok, cache = _greedy(out.logits), out.past_key_values
        return tok


def time_generation(prefill, decode, device, reps: int, warmup: int) -> tuple[Timing, list[float]]:
    """TTFT samples (ms) and decode durations (ms) from the same prefill → decode runs."""
    ttft, dec = [], []
    for i in range(warmup + reps):
        sync(device)
        t0 = time.perf_counter()
        tok, cache = prefill()
        sync(device)
        t1 = time.perf_counter()
        decode(tok, cache)
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            ttft.append((t1 - t0) * 1e3)
            dec.append((t2 - t1) * 1e3)
        del cache
    return Timing(statistics.median(ttft), min(ttft), max(ttft), reps, "wallclock"), dec


def measure_variant(runner: Runner, prefill, vision, visual_tokens, device, cfg, smoke) -> dict:
    try:
        timing, dec = time_generation(prefill, runner.decode, device, cfg["reps"], cfg["warmup"])
        out = {"status": "ok", **timing.as_dict()}
        out["decode_tok_s"] = runner.n_decode / (statistics.median(dec) / 1e3)
        out["peak_mem_mib"] = peak_memory_mib(prefill, device)
        out["vit_ms"] = measure(vision, device, smoke=smoke).median_ms
        out["visual_tokens"] = visual_tokens()
        return out
    except Exception as exc:  # noqa: BLE001 - record and go on with the other variants
        if device.type == "cuda":
            torch.cuda.empty_cache()
        status = "oom" if is_oom(exc) else "error"
        return skipped(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", status)


def _integration():
    try:
        from stop_fast.integrations import apply_stop, remove_stop
        return apply_stop, remove_stop, None
    except Exception as exc:  # noqa: BLE001
        return None, None, f"stop_fast.apply_stop not importable ({type(exc).__name__}: {exc})"


def run(device: torch.device, smoke: bool) -> SuiteResult:
    apply_stop, remove_stop, why = _integration()
    if apply_stop is None:
        return SuiteResult("e2e", status="skipped", reason=why)
    try:
        import transformers  # noqa: F401
        from transformers import LlavaOnevisionForConditionalGeneration  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return SuiteResult("e2e", status="skipped", reason=f"transformers LLaVA-OneVision unavailable: {exc}")
    cfg = SMOKE if smoke else FULL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_or_reason(smoke, device, dtype)
    if isinstance(model, str):
        return SuiteResult("e2e", status="skipped", reason=model)
    res = SuiteResult("e2e")
    vc = model.config.vision_config
    res.notes.append(("tiny" if smoke else "LLaVA-OneVision-7B-shaped") + f" random-weight model, {dtype}, "
                     f"{vc.image_size}px frames, {E.pooled_tokens(model)} pooled tokens/frame; "
                     f"batch 1, {cfg['decode']} greedy decode steps")
    res.notes.append("TTFT = median ms of the prefill (ViT, pruning, LLM) to the first token's logits; "
                     "extras: ViT = video-feature path alone, tok/s = decode speed")
    with torch.no_grad():
        for T in cfg["frames"]:
            res.cases += _frames_cases(model, T, cfg, device, dtype, smoke, apply_stop, remove_stop)
    return res


def build_or_reason(smoke: bool, device, dtype):
    try:
        return E.build(smoke, device, dtype)
    except Exception as exc:  # noqa: BLE001 - e.g. not enough memory for 7B
        return f"could not build the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def _frames_cases(model, T, cfg, device, dtype, smoke, apply_stop, remove_stop) -> list[Case]:
    size = model.config.vision_config.image_size
    runner = Runner(model, E.video_pixels(T, size, device, dtype), cfg["decode"])
    remove_stop(model)
    unpruned = measure_variant(runner, runner.prefill, runner.vision, runner.visual_tokens,
                               device, cfg, smoke)
    cases = []
    for method in METHODS:
        for ratio in cfg["ratios"]:
            case = Case("e2e", f"{method} r={ratio:.2f}", f"T={T}", T,
                        {"frames": T, "image_size": size, "dtype": str(dtype).replace("torch.", ""),
                         "method": method, "retention_ratio": ratio, "decode_tokens": cfg["decode"],
                         "prompt_text_tokens": E.PREFIX + E.SUFFIX})
            try:
                apply_stop(model, method=method, retention_ratio=ratio)
            except ValueError as exc:    # a method this model's shapes cannot run (PruneVid: N ≠ 196)
                case.results[OURS] = skipped(str(exc))
                case.results["unpruned"] = unpruned
                cases.append(case)
                continue
            try:
                case.results[OURS] = measure_variant(runner, runner.prefill, runner.vision,
                                                     runner.visual_tokens, device, cfg, smoke)
            except Exception as exc:  # noqa: BLE001
                case.results[OURS] = skipped(f"{type(exc).__name__}: {exc}", "error")
            finally:
                remove_stop(model)
            case.results["unpruned"] = unpruned
            E.set_vision_attention(model, "eager")
            try:
                official = lambda m=method, r=ratio: runner.official_prefill(m, r)  # noqa: E731
                vision = lambda m=method, r=ratio: runner.official_vision(m, r)   # noqa: E731
                case.results["official"] = measure_variant(
                    runner, official, vision, lambda: int(vision().shape[0]), device, cfg, smoke)
            finally:
                E.set_vision_attention(model, "sdpa")
            cases.append(case)
    return cases
