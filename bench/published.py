"""Run the published SToP release's pruning on given tensors, loaded at run time from a
checkout the user points to (``stop-fast bench --suite traffic --published PATH`` or
``STOP_FAST_PUBLISHED=PATH``). Nothing of that code is part of this package.

For each method the release's ``pruning/<method>/llava_arch.py`` is imported (with its
``llava.*`` imports answered by placeholders: only pruning code runs), and the video branch of
its ``prepare_inputs_labels_for_multimodal`` is executed as written: the statements that read
the method's settings, then the loop that pools and prunes each video. The vision tower is a
stand-in returning the given, already pooled tensors (pooling is the identity), with the
settings the release's evaluation sets: SToP's μ_s / μ_t (SPEC §13, or 0 without SToP),
γ = 1.1, the retention ratio and the per-method constants (SPEC §6–§11). The release computes
in fp16 on a GPU; here it runs in the dtype and on the device of the inputs.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import os
import sys
import types
from pathlib import Path
from typing import Callable

import torch

__all__ = ["ENV_VAR", "METHODS", "load", "checkout"]

ENV_VAR = "STOP_FAST_PUBLISHED"
METHODS = ("visionzip", "holitom", "fastvid", "flashvid", "prunevid")
MU = {"visionzip": (0.03, 0.0), "fastvid": (0.02, 0.0), "flashvid": (0.02, 0.0),
      "holitom": (0.04, 0.07), "prunevid": (0.0, 0.0)}          # SPEC §13


def checkout(path: str | os.PathLike | None) -> Path | None:
    """The release checkout from ``path`` or ``$STOP_FAST_PUBLISHED`` (None if neither is set);
    a ValueError naming the problem if it is not one."""
    path = path if path is not None else os.environ.get(ENV_VAR) or None
    if path is None:
        return None
    root = Path(path).expanduser()
    missing = [m for m in METHODS if not (root / "pruning" / m / "llava_arch.py").is_file()]
    if missing:
        raise ValueError(f"--published {root}: expected a checkout of the SToP release with "
                         f"pruning/<method>/llava_arch.py, missing for {missing}")
    return root


class _Placeholder(types.ModuleType):
    """A ``llava.*`` module whose every name is a harmless placeholder."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


@contextlib.contextmanager
def _llava_placeholders():
    names = ("llava", "llava.constants", "llava.mm_utils", "llava.utils")
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = _Placeholder(n)
    try:
        yield
    finally:
        for n, mod in saved.items():
            sys.modules.pop(n) if mod is None else sys.modules.__setitem__(n, mod)


def _import(root: Path, method: str) -> types.ModuleType:
    pkg_name = f"_stop_published_{method}"
    folder = root / "pruning" / method
    if f"{pkg_name}.llava_arch" in sys.modules:
        return sys.modules[f"{pkg_name}.llava_arch"]
    pkg = types.ModuleType(pkg_name)       # the folder as a package, without its __init__
    pkg.__path__ = [str(folder)]           # (which would patch a LLaVA model class)
    sys.modules[pkg_name] = pkg
    with _llava_placeholders():
        return importlib.import_module(f"{pkg_name}.llava_arch")


def _video_branch(module: types.ModuleType, cls: type) -> tuple:
    """(settings code, loop code) of the video branch of prepare_inputs_labels_for_multimodal."""
    source = Path(module.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    fn = next(n for n in fn.body if isinstance(n, ast.FunctionDef)
              and n.name == "prepare_inputs_labels_for_multimodal")
    branch = next(n for n in fn.body if isinstance(n, ast.If) and "images.ndim" in ast.unparse(n.test))
    loop = next(i for i, n in enumerate(branch.body) if isinstance(n, ast.For)
                and "encoded_image_features" in ast.unparse(n.iter))
    path = str(module.__file__)
    pre = [n for n in fn.body[:fn.body.index(branch)] if isinstance(n, ast.Import)]
    settings = ast.Module(body=pre + branch.body[:loop], type_ignores=[])
    return (compile(settings, path, "exec"),
            compile(ast.Module(body=[branch.body[loop]], type_ignores=[]), path, "exec"))


def _env(method: str, ratio: float, T: int) -> dict[str, str]:
    """The environment the release's evaluation sets for ``method`` (SPEC §6–§11 constants)."""
    from stop_fast.pipelines.visionzip import visionzip_budget
    r = str(ratio)
    return {
        "visionzip": {"SPATIAL_TOKENS": str(sum(visionzip_budget(196, ratio)))},
        "holitom": {"RETAIN_RATIO": r, "T": "0.8"},
        "prunevid": {"RETAIN_RATIO": r},
        "fastvid": {},
        "flashvid": {"retention_ratio": r, "do_segment": "True", "segment_threshold": "0.9",
                     "min_segment_num": "8", "complementary_segment": "True",
                     "token_selection_method": "attn_div_v2", "temporal_threshold": "0.8",
                     "expansion": "1.25", "pruning_layer": "20", "llm_retention_ratio": "0.3"},
    }[method]


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def load(root: str | os.PathLike, method: str) -> tuple[Callable, Callable]:
    """(prepare, run) for ``method``. ``prepare(features, attention, *, ratio, use_stop,
    metric=None, global_features=None)`` executes the settings part and returns a namespace;
    ``run(ns)`` executes the pruning loop on it (the part to meter) and returns the kept
    tokens (M, D)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    root = checkout(root)
    module = _import(root, method)
    cls = getattr(module, f"LlavaMetaForCausalLM_{method}")
    settings, loop = _video_branch(module, cls)

    def prepare(features, attention, *, ratio, use_stop, metric=None, global_features=None):
        T, N, D = features.shape
        mu_s, mu_t = MU[method] if use_stop else (0.0, 0.0)
        args = types.SimpleNamespace(gamma=1.1, mu_s=mu_s, mu_t=mu_t, n_frame=T,
                                     retention_ratio=ratio, use_stop=use_stop)
        g = features.float().mean(dim=1) if global_features is None else global_features
        outputs = {"visionzip": (features, attention, metric, features.dtype),
                   "holitom": (features, attention, None, features.dtype),
                   "prunevid": (features, attention, None, features.dtype),
                   "fastvid": (features, attention, None, features.dtype, g),
                   "flashvid": (features, attention, features.dtype)}[method]
        tower = type("Tower", (cls,), {
            "config": types.SimpleNamespace(mm_newline_position="one_token",
                                            mm_patch_merge_type="spatial_unpad"),
            "device": features.device, "get_2dPool": lambda self, t, stride=2: t,
            "encode_images_multi": lambda self, *a: outputs,
            "fastvid_retention_ratio": ratio, "fastvid_DySeg_c": 8, "fastvid_DySeg_tau": 0.9,
            "fastvid_STPrune_d": 0.4, "fastvid_DTM_p": 4, "fastvid_DTM_alpha": 0.6})
        ns = dict(vars(module), self=tower(), images=[torch.zeros(T, 1, 1, 1)],
                  modalities=["video"], args=args, image_sizes=None)
        with _environ(_env(method, ratio, T)), _llava_placeholders():
            exec(settings, ns)
        return ns

    def run(ns) -> torch.Tensor:
        with _environ(_env(method, ns["args"].retention_ratio, ns["args"].n_frame)):
            exec(loop, ns)
        return ns["image_features"][0]

    return prepare, run
