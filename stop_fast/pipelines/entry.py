"""The pipeline entry points: :func:`prune` and the class-style :class:`VisionZip`/:class:`HoliTom`.

Both go through :func:`_run`: validate once, pick the backend, compute the sink score, then
the fast pipeline (or, for ``backend="reference"``, the loop-based twin in
:mod:`stop_fast.reference`).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..dispatch import get, resolve
from .common import Config, PrunedVideo, check_inputs, make_config, visionzip_budget
from .holitom import holitom_fast
from .visionzip import visionzip_fast

__all__ = ["prune", "VisionZip", "HoliTom"]

SINK_EPS = 1e-12   # SPEC §3


def prune(features: torch.Tensor, attention: torch.Tensor, *, method: str, retention_ratio: float,
          use_stop: bool = True, metric: torch.Tensor | None = None, mu_s: float | None = None,
          mu_t: float | None = None, gamma: float = 1.1, backend: str = "auto",
          **method_options) -> PrunedVideo:
    """Prune one video's tokens with VisionZip or HoliTom, with or without SToP.

    Args:
        features: (T, N, D) projected, pooled tokens (fp32/fp16/bf16).
        attention: (T, N) non-negative per-frame score (column-mean attention, p-attn, …).
        method: "visionzip" (spatial, SPEC §7) or "holitom" (temporal + spatial, SPEC §6).
        retention_ratio: fraction of the T·N tokens to keep, in (0, 1].
        use_stop: apply SToP's sink terms; False gives the plain host method (μ_s = μ_t = 0,
            no contextual sink skipping, no centre penalty).
        metric: (T, N, Dk) head-averaged ViT keys pooled like the features; VisionZip only.
        mu_s, mu_t: sink weights; None takes the method's default (SPEC §10).
        gamma: sink-score exponent.
        backend: "auto", "torch", "triton", or "reference" (the float64 loop-based twins).
        method_options: VisionZip ``num_sink_skip=20``; HoliTom ``tau=0.8, beta=0.6, K=7,
            max_window=None, center_penalty=0.3`` (λ of the DPC-KNN centre score).
    """
    cfg = make_config(method, retention_ratio, use_stop, mu_s, mu_t, gamma, backend, **method_options)
    return _run(cfg, features, attention, metric)


def _run(cfg: Config, features, attention, metric) -> PrunedVideo:
    T, N, D = check_inputs(cfg, features, attention, metric)
    if cfg.method == "visionzip":
        visionzip_budget(N, cfg.retention_ratio)           # raises if it keeps no token
    if cfg.backend == "reference":
        return _twin(cfg, features, attention, metric)
    dev = features.device
    cfg = replace(cfg, backend=resolve(cfg.backend, dev))
    if cfg.use_stop:
        sink = get("sink_score", cfg.backend, dev)(attention, cfg.gamma, SINK_EPS)
    else:
        sink = torch.zeros(N, dtype=torch.float32, device=dev)
    if cfg.method == "visionzip":
        tokens, positions, kinds = visionzip_fast(features, attention, metric, sink, cfg)
        return PrunedVideo(tokens, positions, kinds, sink, cfg.method, cfg.retention_ratio)
    tokens, positions, kinds, segments, r_adj, reduced = holitom_fast(features, attention, sink, cfg)
    return PrunedVideo(tokens, positions, kinds, sink, cfg.method, cfg.retention_ratio,
                       segments, float(r_adj), reduced)


def _twin(cfg: Config, features, attention, metric) -> PrunedVideo:
    from .. import reference

    if cfg.method == "visionzip":
        return reference.visionzip_prune(features, attention, metric, cfg.retention_ratio,
                                         use_stop=cfg.use_stop, mu_s=cfg.mu_s, gamma=cfg.gamma,
                                         **cfg.options)
    return reference.holitom_prune(features, attention, cfg.retention_ratio, use_stop=cfg.use_stop,
                                   mu_s=cfg.mu_s, mu_t=cfg.mu_t, gamma=cfg.gamma, **cfg.options)


class _Pruner:
    method = ""

    def __init__(self, retention_ratio, use_stop, mu_s, mu_t, gamma, backend, options):
        self.config = make_config(self.method, retention_ratio, use_stop, mu_s, mu_t, gamma,
                                  backend, **options)

    def __call__(self, features: torch.Tensor, attention: torch.Tensor,
                 metric: torch.Tensor | None = None) -> PrunedVideo:
        return _run(self.config, features, attention, metric)

    def __repr__(self) -> str:
        c = self.config
        opts = "".join(f", {k}={v!r}" for k, v in c.options.items())
        return (f"{type(self).__name__}(retention_ratio={c.retention_ratio}, use_stop={c.use_stop}, "
                f"mu_s={c.mu_s}, mu_t={c.mu_t}, gamma={c.gamma}, backend={c.backend!r}{opts})")


class VisionZip(_Pruner):
    """VisionZip (+ SToP when ``use_stop``), SPEC §7. Call with (features, attention, metric)."""

    method = "visionzip"

    def __init__(self, retention_ratio: float, use_stop: bool = True, *, mu_s: float | None = None,
                 gamma: float = 1.1, backend: str = "auto", num_sink_skip: int = 20):
        super().__init__(retention_ratio, use_stop, mu_s, None, gamma, backend,
                         {"num_sink_skip": num_sink_skip})


class HoliTom(_Pruner):
    """HoliTom (+ SToP when ``use_stop``), SPEC §6. Call with (features, attention)."""

    method = "holitom"

    def __init__(self, retention_ratio: float, use_stop: bool = True, *, mu_s: float | None = None,
                 mu_t: float | None = None, gamma: float = 1.1, backend: str = "auto",
                 tau: float = 0.8, beta: float = 0.6, K: int = 7, max_window: int | None = None,
                 center_penalty: float = 0.3):
        super().__init__(retention_ratio, use_stop, mu_s, mu_t, gamma, backend,
                         {"tau": tau, "beta": beta, "K": K, "max_window": max_window,
                          "center_penalty": center_penalty})
