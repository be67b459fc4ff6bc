"""Suite "pipelines": ``stop_fast.prune`` for every registered host method vs its twin.

Inputs are seeded synthetic videos (:func:`stop_fast.synthetic.make_video`: static
background, moving objects, planted sinks, one scene cut) so the temporal methods'
segmentation and merging do real work. Baselines: the float64 loop-based twins
(``<method>_reference.py``, reached through ``backend="reference"``), and the torch backend
when ``auto`` resolves to something else.
"""
from __future__ import annotations

import torch

import stop_fast
from stop_fast.pipelines.registry import METHODS as REGISTRY

from .record import OURS, Case, SuiteResult, run_impl, skipped
from .timing import measure, wallclock

FULL = {"T": [16, 32, 64], "grid": (14, 14), "D": 3584, "Dk": 72, "ratios": [0.10]}
# The smoke grid is LLaVA's 14×14, so every method runs (PruneVid hard-codes it).
SMOKE = {"T": [4, 8], "grid": (14, 14), "D": 16, "Dk": 8, "ratios": [0.10]}
METHODS = tuple(REGISTRY)


def video(T: int, cfg: dict, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    from stop_fast.synthetic import make_video
    return make_video(num_frames=T, grid=cfg["grid"], dim=cfg["D"], metric_dim=cfg["Dk"],
                      scene_cut=T // 2, seed=T, device=device, dtype=dtype)


def unsupported(v, method: str) -> str | None:
    """Why ``method`` cannot run on video ``v`` (PruneVid hard-codes the 14×14 grid), or None."""
    if method == "prunevid" and v.features.shape[1] != 196:
        return f"PruneVid needs N = 196 pooled tokens per frame, this video has {v.features.shape[1]}"
    return None


def pipeline_fn(v, method: str, ratio: float, backend: str):
    spec = REGISTRY[method]
    extra = {"metric": v.metric} if spec.needs_metric else {}
    if spec.uses_global:          # per-frame global vectors: the frame mean (SPEC §9 fallback)
        extra["global_features"] = v.features.float().mean(dim=1)
    return lambda: stop_fast.prune(v.features, v.attention, method=method, retention_ratio=ratio,
                                   backend=backend, **extra)


def slow_timer(fn, device, *, smoke: bool):
    """The float64 loop twins take seconds per call at full shapes: a few runs are enough."""
    if smoke:
        return measure(fn, device, smoke=True)
    return wallclock(fn, device, warmup=1, min_reps=1, max_reps=5, budget_ms=5000)


def run(device: torch.device, smoke: bool) -> SuiteResult:
    from stop_fast.dispatch import resolve

    cfg = SMOKE if smoke else FULL
    auto = resolve("auto", device)
    res = SuiteResult("pipelines")
    res.notes.append(f"ours = stop_fast.prune(backend='auto') → {auto!r}; 'reference' = the float64 "
                     "loop-based twins (<method>_reference.py)")
    res.notes.append("inputs: stop_fast.synthetic.make_video (bf16 features, scene cut at T/2)")
    for T in cfg["T"]:
        v = video(T, cfg, device)
        for method in METHODS:
            for ratio in cfg["ratios"]:
                case = Case("pipelines", f"{method} r={ratio:.2f}", f"T={T}", T,
                            {"T": T, "N": v.features.shape[1], "D": cfg["D"], "metric_dim": cfg["Dk"],
                             "dtype": "bf16", "method": method, "retention_ratio": ratio,
                             "backend": auto})
                why = unsupported(v, method)
                if why:
                    case.results[OURS] = skipped(why)
                    res.cases.append(case)
                    continue
                ours = pipeline_fn(v, method, ratio, "auto")
                case.params["kept_tokens"] = ours().num_tokens      # outside timing
                case.results[OURS] = run_impl(ours, device, smoke=smoke)
                case.results["reference"] = run_impl(pipeline_fn(v, method, ratio, "reference"),
                                                     device, smoke=smoke, memory=False, timer=slow_timer)
                if auto != "torch":
                    case.results["torch"] = run_impl(pipeline_fn(v, method, ratio, "torch"), device, smoke=smoke)
                else:
                    case.results["torch"] = skipped("'auto' already resolves to the torch backend here")
                res.cases.append(case)
    return res
