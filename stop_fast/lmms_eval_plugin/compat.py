"""Every workaround for a quirk of lmms-eval (found with 0.7.3), in one place.

In code, here:

* :func:`loglikelihood_result` — lmms-eval passes every response through
  ``unwrap_generation_output``, which turns a ``(float, bool)`` loglikelihood pair into its
  ``str()``; wrapped in a ``GenerationResult`` the pair survives.
* :func:`launcher_args` — ``device`` given both in ``--model_args`` and as ``--device`` reaches
  the model twice (a ``TypeError`` in lmms-eval's ``create_from_arg_string``); the two are
  merged here when they agree, and a clash names both.
* :func:`results_files` — the CLI exits 0 even when the evaluation crashed, so a run succeeded
  only if it wrote a ``*_results.json``.

Outside the code (each stated where it lives):

* ``filelock<4`` in the ``eval`` extra (setup.py): the evaluator imports ``filelock._api``,
  which filelock 4 removed.
* lmms-eval itself is installed with ``pip install --no-deps`` (Makefile, README): its metadata
  requires torchvision (the registry's build breaks imports beside a CPU torch, and pip would
  swap the CPU torch for a CUDA build), which neither lmms-eval's evaluator nor the project's
  video path needs. The ``eval`` extra lists what the evaluator does import.
* ``--tasks /path/x.yaml`` fails ("Tasks not found"): tasks of your own go in a folder passed
  with ``--include_path``, and are named by their ``task:`` (README, tests).
* ``TaskManager(include_defaults=False)`` skips indexing the built-in tasks (about 14 s) when
  only ``--include_path`` tasks are evaluated (tests).
"""
from __future__ import annotations

from pathlib import Path

from .settings import ModelArgsError

__all__ = ["loglikelihood_result", "launcher_args", "results_files"]


def loglikelihood_result(loss: float, greedy: bool, counts=None):
    """One loglikelihood response as lmms-eval keeps it intact: ``(loss, is_greedy)`` in a
    ``GenerationResult`` (which is also how the per-request ``counts`` travel, so there is
    nothing to switch off where a bare tuple would survive).

    ``loss`` is −log p(continuation | context), summed over the continuation's tokens: lmms-eval
    scores multiple choice with ``argmin`` over the values, as its own models return losses.
    """
    from lmms_eval.api.instance import GenerationResult

    return GenerationResult(text=(float(loss), bool(greedy)), token_counts=counts)


def launcher_args(model_args: dict, launcher: dict | None) -> dict:
    """``--model_args`` merged with what lmms-eval adds (``batch_size``, ``device``, …; None
    values are lmms-eval's "not given"). The same key from both must agree."""
    merged = dict(model_args)
    for key, value in (launcher or {}).items():
        if value is None:
            continue
        if key in merged and str(merged[key]) != str(value):
            raise ModelArgsError(f"{key}={merged[key]!r} in --model_args but --{key} {value}; give it once")
        merged[key] = value
    return merged


def results_files(output_path) -> list[Path]:
    """The ``*_results.json`` files lmms-eval wrote under ``output_path`` (sorted; empty when the
    run crashed, whatever the CLI's exit status said)."""
    root = Path(output_path)
    return sorted(root.rglob("*_results.json")) if root.exists() else []
