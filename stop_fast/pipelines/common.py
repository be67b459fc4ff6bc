"""What the SToP pipelines share: the result type, option handling, input checks and budgets.

Budgets (tokens per frame, adjusted ratios, cluster counts) are computed here, on the host,
from Python ints and floats, and used by both the fast pipelines and the loop-based twins in
:mod:`stop_fast.reference`, so the two can never disagree by a rounding step.
"""
from __future__ import annotations

import math
from fractions import Fraction
from dataclasses import dataclass

import torch

from .. import _checks as C
from ..dispatch import BACKENDS

__all__ = [
    "KIND_DOMINANT", "KIND_CONTEXTUAL", "KIND_STATIC", "KIND_DYNAMIC", "KIND_NAMES",
    "METHODS", "PrunedVideo", "Config", "make_config", "check_inputs",
    "visionzip_budget", "holitom_adjusted_ratio", "holitom_budgets",
]

# Codes of PrunedVideo.kinds (int8); KIND_NAMES[code] is the readable name.
KIND_DOMINANT, KIND_CONTEXTUAL, KIND_STATIC, KIND_DYNAMIC = 0, 1, 2, 3
KIND_NAMES = ("dominant", "contextual", "static", "dynamic")

METHODS = ("visionzip", "holitom")
# SPEC §10: (mu_s, mu_t) per method when SToP is on.
DEFAULT_MU = {"visionzip": (0.03, 0.0), "holitom": (0.04, 0.07)}
DEFAULT_OPTIONS = {
    "visionzip": {"num_sink_skip": 20},
    "holitom": {"tau": 0.8, "beta": 0.6, "K": 7, "max_window": None, "center_penalty": 0.3},
}
# VisionZip's published per-frame budgets for 196 pooled tokens (SPEC §7.1).
VISIONZIP_196 = {0.10: 20, 0.15: 30, 0.20: 40, 0.25: 50}


@dataclass
class PrunedVideo:
    """The pruned token sequence of one video, in the order the LLM receives it.

    tokens: (M, D) in the features' dtype. positions: (M, 2) int64 rows [frame, location] of
    the token each row represents (a merged static token: the segment's first frame and the
    cluster centre's location; a contextual token: its target's location). kinds: (M,) int8
    codes, ``KIND_NAMES[code]`` ∈ dominant (0), contextual (1), static (2), dynamic (3).
    sink: (N,) float32 sink score used (zeros when ``use_stop=False``: no sink term applied).
    segments: HoliTom's inclusive (first, last) frame ranges; None for VisionZip.
    adjusted_ratio: HoliTom's r' (SPEC §6.1); reduced: tokens its temporal DP removes.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    kinds: torch.Tensor
    sink: torch.Tensor
    method: str
    retention_ratio: float
    segments: list[tuple[int, int]] | None = None
    adjusted_ratio: float | None = None
    reduced: int | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def kind_counts(self) -> dict[str, int]:
        """Number of output tokens of each kind (one host sync; for inspection, not hot paths)."""
        counts = torch.bincount(self.kinds.long().cpu(), minlength=len(KIND_NAMES)).tolist()
        return dict(zip(KIND_NAMES, counts))


@dataclass(frozen=True)
class Config:
    """Validated settings of one pipeline; mu_s/mu_t/penalty already zeroed without SToP."""

    method: str
    retention_ratio: float
    use_stop: bool
    mu_s: float
    mu_t: float
    gamma: float
    backend: str
    options: dict


def _mu(name: str, value, default: float, use_stop: bool, method: str, used: bool) -> float:
    if value is None:
        return default if (use_stop and used) else 0.0
    value = C.number(name, value)
    if value != 0.0 and not used:
        raise ValueError(f"{name}={value} has no effect with method={method!r} (it has no temporal "
                         f"step); leave {name} unset")
    if value != 0.0 and not use_stop:
        raise ValueError(f"{name}={value} has no effect with use_stop=False (the plain host method "
                         f"uses no sink term); leave {name} unset or set use_stop=True")
    return value


def _options(method: str, given: dict) -> dict:
    defaults = DEFAULT_OPTIONS[method]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method={method!r}; expected a subset of "
                        f"{sorted(defaults)}")
    opts = {**defaults, **given}
    if method == "visionzip":
        opts["num_sink_skip"] = C.integer("num_sink_skip", opts["num_sink_skip"], 0, 2**31 - 1)
        return opts
    opts["tau"] = C.number("tau", opts["tau"])
    opts["beta"] = C.number("beta", opts["beta"])
    if not 0.0 <= opts["beta"] <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {opts['beta']}")
    opts["K"] = C.integer("K", opts["K"], 1, 2**31 - 1)
    if opts["max_window"] is not None:
        opts["max_window"] = C.integer("max_window", opts["max_window"], 1, 2**31 - 1)
    opts["center_penalty"] = C.number("center_penalty", opts["center_penalty"])
    return opts


def make_config(method, retention_ratio, use_stop=True, mu_s=None, mu_t=None, gamma=1.1,
                backend="auto", **options) -> Config:
    """Check every non-tensor argument of :func:`prune` and fill in the SPEC §10 defaults."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    r = C.number("retention_ratio", retention_ratio)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"retention_ratio must be in (0, 1], got {r}")
    if not isinstance(use_stop, bool):
        raise TypeError(f"use_stop must be a bool, got {type(use_stop).__name__}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ds, dt = DEFAULT_MU[method]
    mus = _mu("mu_s", mu_s, ds, use_stop, method, used=True)
    mut = _mu("mu_t", mu_t, dt, use_stop, method, used=method == "holitom")
    opts = _options(method, options)
    if not use_stop:
        for name in ("center_penalty", "num_sink_skip"):
            if name in options:
                raise ValueError(f"{name}={options[name]!r} is a sink term, which use_stop=False "
                                 "turns off; drop it or set use_stop=True")
    if method == "holitom" and not use_stop:
        opts["center_penalty"] = 0.0      # plain HoliTom: no sink term anywhere (SPEC §6.4)
    gamma = C.number("gamma", gamma, positive=True)
    return Config(method, r, use_stop, mus, mut, gamma, backend, opts)


def check_inputs(cfg: Config, features, attention, metric) -> tuple[int, int, int]:
    """Shapes, dtypes, devices and finiteness of the tensors; returns (T, N, D)."""
    C.tensor("features", features, 3, "(T, N, D)")
    C.tensor("attention", attention, 2, "(T, N)")
    C.nonempty("features", features, (0, 1, 2), "(T, N, D)")
    T, N, D = features.shape
    if tuple(attention.shape) != (T, N):
        raise ValueError(f"attention must have shape (T, N) = {(T, N)} to match features "
                         f"{tuple(features.shape)}, got {tuple(attention.shape)}")
    if metric is None and cfg.method == "visionzip":
        raise ValueError("metric is required by method='visionzip': pass the (T, N, Dk) "
                         "head-averaged keys, pooled like the features")
    if metric is not None:
        C.tensor("metric", metric, 3, "(T, N, Dk)")
        C.nonempty("metric", metric, (2,), "(T, N, Dk)")
        if tuple(metric.shape[:2]) != (T, N):
            raise ValueError(f"metric must have shape (T, N, Dk) with (T, N) = {(T, N)} from "
                             f"features, got {tuple(metric.shape)}")
    C.same_device(features=features, attention=attention, metric=metric)
    ends = C.finite(features=features, attention=attention,
                    metric=metric if cfg.method == "visionzip" else None)
    if ends is not None and ends["attention"][0] < 0:
        raise ValueError(f"attention must be non-negative (a per-frame score such as column-mean "
                         f"attention), got a minimum of {ends['attention'][0]:.4g}")
    return T, N, D


def visionzip_budget(N: int, r: float) -> tuple[int, int]:
    """(dominant D_n, contextual C_n) tokens per frame (SPEC §7.1)."""
    S = VISIONZIP_196[r] if N == 196 and r in VISIONZIP_196 else int(N * r)
    if S < 1:
        raise ValueError(f"retention_ratio={r} keeps int(N*r) = {S} of N={N} tokens per frame; "
                         f"expected a ratio of at least 1/N = {1 / N:.4g}")
    dominant = S * 54 // 64            # int(S·54/64) without float rounding
    return dominant, S - dominant


def holitom_adjusted_ratio(r: float, T: int, N: int, reduced: int) -> Fraction:
    """r' = min(r·T·N / (T·N − reduced), 1) (SPEC §6.1), as an exact fraction.

    ``r`` is read as the decimal it prints as (0.1 → 1/10), so budgets do not depend on float
    error: with nothing merged r' is exactly r and ceil(10·r') is 1, not 2. The DP never
    removes all T·N tokens.
    """
    return min(Fraction(repr(float(r))) * T * N / (T * N - reduced), Fraction(1))


def holitom_budgets(n_static: int, n_dynamic: int, r_adj: Fraction) -> tuple[int, int]:
    """(clusters c_n = round(n_st·r'), dynamic per frame k_d = ceil(n_dyn·r')) (SPEC §6.3–4).

    Exact arithmetic; round() of a Fraction rounds halves to even, like Python's round() on the
    published code's floats.
    """
    return round(n_static * r_adj), math.ceil(n_dynamic * r_adj)
