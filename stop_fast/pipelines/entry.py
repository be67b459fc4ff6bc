"""The pipeline entry points: :func:`prune` and the class-style pruners.

Both go through :func:`run`: check the inputs once, pick the backend, compute the sink score,
then run the method's fast path (or, for ``backend="reference"``, its loop-based twin) with
the per-call input checks of the primitives switched off (they were done here, once).
"""
from __future__ import annotations

import dataclasses
import warnings

import torch

from .. import _checks as C
from .. import api
from .. import reference as R
from ..dispatch import resolve
from .base import SINK_EPS, Options, PrunedVideo, Video, build_result
from .budget import budget_of, fit_budget
from .registry import METHODS, Method, get_method

__all__ = ["prune", "make_options", "token_budget", "run", "Pruner", "VisionZip", "HoliTom", "FastVid", "FlashVid",
           "PruneVid"]

_COMMON = ("retention_ratio", "use_stop", "mu_s", "gamma", "backend", "exact_budget")


def make_options(method: str, retention_ratio, **settings) -> Options:
    """The validated :class:`Options` of ``method`` from keyword settings (None = default)."""
    spec = get_method(method)
    cls = spec.options
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names - {"mu_t"})
    if unknown:
        own = sorted(names - set(_COMMON))
        raise TypeError(f"unknown option(s) {unknown} for method={method!r}; expected a subset of "
                        f"{own} besides {list(_COMMON)}")
    if "mu_t" in settings and "mu_t" not in names and settings["mu_t"] not in (None, 0, 0.0):
        raise ValueError(f"mu_t={settings['mu_t']} has no effect with method={method!r} (it has no "
                         "temporal step); leave mu_t unset")
    settings = {k: v for k, v in settings.items() if k in names}
    given = frozenset(k for k, v in settings.items() if v is not None)
    opts = cls(retention_ratio=retention_ratio, **{k: v for k, v in settings.items() if v is not None})
    return opts.validated(given)


def token_budget(method: str, T: int, N: int, retention_ratio: float, **options) -> int:
    """The exact token count B that ``method`` keeps with ``exact_budget=True`` on a video of
    T frames × N tokens at ``retention_ratio`` (method options as for :func:`stop_fast.prune`,
    e.g. VisionZip ``tokens_per_frame``, FlashVid ``expansion``), without running anything.

    Raises the same errors as :func:`stop_fast.prune` for settings that cannot work on the grid.
    """
    T, N = C.integer("T", T, 1, 2**31 - 1), C.integer("N", N, 1, 2**31 - 1)
    options.pop("exact_budget", None)
    opts = make_options(method, retention_ratio, **options)
    check = getattr(opts, "check_video", None)
    if check is not None:
        check(T, N, 1)             # the same shape rules prune() applies
    return budget_of(opts, T, N)


def prune(features: torch.Tensor, attention: torch.Tensor | None = None, *, method: str,
          retention_ratio: float, use_stop: bool | None = None, metric: torch.Tensor | None = None,
          global_features: torch.Tensor | None = None, mu_s: float | None = None,
          gamma: float = 1.1, backend: str = "auto", exact_budget: bool = False,
          **method_options) -> PrunedVideo:
    """Prune one video's tokens with a registered host method, with or without SToP.

    Args:
        features: (T, N, D) projected, pooled tokens (fp32/fp16/bf16).
        attention: (T, N) non-negative per-frame score (column-mean attention, p-attn, …);
            may be None for methods that use none ("prunevid").
        method: a name from :data:`stop_fast.pipelines.METHODS` ("visionzip", "holitom",
            "fastvid", "flashvid", "prunevid").
        retention_ratio: fraction of the T·N tokens to keep, in (0, 1] (an upper bound for the
            merging methods: HoliTom at 1.0 still merges static tokens; FlashVid keeps about
            1.25·r·T·N by default, SPEC §10 note 8).
        use_stop: apply SToP's sink terms; False gives the plain host method. None: the
            method's default (True, except "prunevid", which has no sink terms).
        metric: (T, N, Dk) head-averaged ViT keys pooled like the features (VisionZip).
        global_features: (T, Dg) per-frame global vectors (FastVid segmentation).
        mu_s: sink weight of STSP; None takes the method's default (SPEC §13).
        gamma: sink-score exponent.
        backend: "auto", "torch", "triton", or "reference" (the float64 loop-based twins).
        exact_budget: keep exactly :func:`stop_fast.token_budget` tokens (fill with the method's
            next-ranked candidates or drop its lowest-ranked tokens; README "Exact budgets").
            False (default): the published selection, whatever its count.
        method_options: the fields of the method's ``Options`` dataclass (e.g. HoliTom ``tau``,
            ``mu_t``; VisionZip ``sink_skip``, ``tokens_per_frame``).
    """
    opts = make_options(method, retention_ratio, use_stop=use_stop, mu_s=mu_s, gamma=gamma,
                        backend=backend, exact_budget=exact_budget, **method_options)
    return run(opts, features, attention, metric=metric, global_features=global_features)


_warned_single = False


def _one_frame_warning() -> None:
    global _warned_single
    if not _warned_single:
        _warned_single = True
        warnings.warn("a one-frame video cannot show which locations stay attended, so the sink "
                      "terms are off for it (PrunedVideo.single_frame, SPEC §3)", stacklevel=4)


def run(opts: Options, features, attention, *, metric=None, global_features=None) -> PrunedVideo:
    """Prune with already validated options (see :func:`make_options`)."""
    spec = METHODS[opts.method]
    T, N, _ = _check_inputs(spec, opts, features, attention, metric, global_features)
    dev = features.device
    backend = "reference" if opts.backend == "reference" else resolve(opts.backend, dev)
    single = T == 1 and opts.use_stop and spec.uses_attention
    if single:
        _one_frame_warning()
    if opts.use_stop and spec.uses_attention and not single:
        if backend == "reference":
            sink = R.sink_score(attention, opts.gamma, SINK_EPS)
        else:
            with C.input_checks(False):
                sink = api.sink_score(attention, gamma=opts.gamma, eps=SINK_EPS, backend=backend)
    else:
        sink = torch.zeros(N, dtype=torch.float32, device=dev)
    video = Video(features, attention, sink, metric, global_features, backend)
    # One frame: the host method runs plain (s = 0, no sink skipping or penalties); the
    # result keeps the caller's options and says single_frame.
    used = opts.without_stop() if single else opts
    if backend == "reference":
        sel = spec.twin(video, used)
    else:
        with C.input_checks(False):
            sel = spec.fast(video, used)
    if opts.exact_budget:          # one post-selection step, the same after fast path and twin
        with C.input_checks(False):
            sel = fit_budget(sel, video, used)
    return build_result(sel, video, opts, single)


def _check_inputs(spec: Method, opts: Options, features, attention, metric, global_features):
    C.tensor("features", features, 3, "(T, N, D)")
    C.nonempty("features", features, (0, 1, 2), "(T, N, D)")
    T, N, D = features.shape
    if attention is None and spec.uses_attention:
        raise ValueError(f"attention is required by method={spec.name!r}: pass the (T, N) "
                         "per-frame score (column-mean attention)")
    if not spec.uses_attention:
        attention = None          # accepted for a uniform call, not read
    if attention is not None:
        C.tensor("attention", attention, 2, "(T, N)")
        if tuple(attention.shape) != (T, N):
            raise ValueError(f"attention must have shape (T, N) = {(T, N)} to match features "
                             f"{tuple(features.shape)}, got {tuple(attention.shape)}")
    if metric is None and spec.needs_metric:
        raise ValueError(f"metric is required by method={spec.name!r}: pass the (T, N, Dk) "
                         "head-averaged keys, pooled like the features")
    if metric is not None:
        C.tensor("metric", metric, 3, "(T, N, Dk)")
        C.nonempty("metric", metric, (2,), "(T, N, Dk)")
        if tuple(metric.shape[:2]) != (T, N):
            raise ValueError(f"metric must have shape (T, N, Dk) with (T, N) = {(T, N)} from "
                             f"features, got {tuple(metric.shape)}")
        if not spec.needs_metric:
            raise ValueError(f"metric is not used by method={spec.name!r}; only by "
                             f"{[m.name for m in METHODS.values() if m.needs_metric]}")
    if global_features is not None:
        if not spec.uses_global:
            raise ValueError(f"global_features is not used by method={spec.name!r}; only by "
                             f"{[m.name for m in METHODS.values() if m.uses_global]}")
        C.tensor("global_features", global_features, 2, "(T, Dg)")
        C.nonempty("global_features", global_features, (1,), "(T, Dg)")
        if global_features.shape[0] != T:
            raise ValueError(f"global_features must have shape (T, Dg) with T = {T} from features, "
                             f"got {tuple(global_features.shape)}")
    C.same_device(features=features, attention=attention, metric=metric,
                  global_features=global_features)
    ends = C.finite(features=features, attention=attention, metric=metric,
                    global_features=global_features)
    if ends is not None and attention is not None and ends["attention"][0] < 0:
        raise ValueError(f"attention must be non-negative (a per-frame score such as column-mean "
                         f"attention), got a minimum of {ends['attention'][0]:.4g}")
    check = getattr(opts, "check_video", None)
    if check is not None:
        check(T, N, D)              # method-specific shape rules (budgets that keep no token, …)
    return T, N, D


class Pruner:
    """A pruner with fixed settings: ``Pruner("holitom", 0.1)(features, attention)``.

    Settings are validated once, at construction.
    """

    method = ""

    def __init__(self, method: str | None = None, retention_ratio: float = 0.1, **settings):
        self.options = make_options(method or self.method, retention_ratio, **settings)

    def __call__(self, features: torch.Tensor, attention: torch.Tensor | None = None,
                 metric: torch.Tensor | None = None, global_features: torch.Tensor | None = None,
                 ) -> PrunedVideo:
        return run(self.options, features, attention, metric=metric, global_features=global_features)

    def __repr__(self) -> str:
        o = self.options
        names = [f.name for f in dataclasses.fields(o)]
        if "mu_t" in names:                       # the sink weights side by side
            names.remove("mu_t")
            names.insert(names.index("mu_s") + 1, "mu_t")
        fields = ", ".join(f"{n}={getattr(o, n)!r}" for n in names)
        return f"{type(self).__name__}({fields})"


def _named(cls_name: str, method: str, doc: str) -> type:
    def __init__(self, retention_ratio: float, use_stop: bool | None = None, **settings):
        Pruner.__init__(self, method, retention_ratio, use_stop=use_stop, **settings)
    return type(cls_name, (Pruner,), {"method": method, "__init__": __init__, "__doc__": doc})


VisionZip = _named("VisionZip", "visionzip", "VisionZip (+ SToP), SPEC §7; call with "
                   "(features, attention, metric).")
HoliTom = _named("HoliTom", "holitom", "HoliTom (+ SToP), SPEC §6; call with (features, attention).")
FastVid = _named("FastVid", "fastvid", "FastVid (+ SToP), SPEC §9; call with (features, attention, "
                 "global_features=g).")
FlashVid = _named("FlashVid", "flashvid", "FlashVid (+ SToP), SPEC §10; call with (features, attention).")
PruneVid = _named("PruneVid", "prunevid", "PruneVid baseline, SPEC §11; call with (features,).")
