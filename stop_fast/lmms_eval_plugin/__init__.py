"""lmms-eval glue: the ``stop_fast`` model, registered through lmms-eval's ``lmms_eval.models``
entry-point group, so ``python -m lmms_eval eval --model stop_fast --model_args
pretrained=…,method=visionzip,retention_ratio=0.1`` evaluates any host method, with or without
SToP, without forking lmms-eval.

Importing :mod:`stop_fast` never imports this package, and this module imports nothing heavy:
lmms-eval loads every entry point of the group while it imports its model registry, and only
resolves the class paths below when ``--model stop_fast`` is asked for.

* :mod:`.settings` — ``--model_args``, validated before anything is loaded;
* :mod:`.model` — the simple and chat model classes (video in through :mod:`stop_fast.video`,
  pruning through :func:`stop_fast.apply_stop`);
* :mod:`.measure` — the per-sample numbers (visual tokens before and after pruning, time spent
  in scoring and selection, prefill time);
* :mod:`.compat` — every workaround for a quirk of lmms-eval, in one place;
* :mod:`.report` — ``stop-fast report``: result folders → Markdown table and plot (no lmms-eval
  needed).
"""
from __future__ import annotations

MODEL_ID = "stop_fast"
KEY_PREFIX = "stop_fast"      # results keys: throughput["avg_stop_fast/<task>/<field>"]
SIMPLE_CLASS = "stop_fast.lmms_eval_plugin.model.StopFast"
CHAT_CLASS = "stop_fast.lmms_eval_plugin.model.StopFastChat"


def manifest():
    """The entry point: lmms-eval's ``ModelManifest`` for model id ``stop_fast`` (a simple class
    for ``doc_to_visual`` tasks and multiple choice, a chat class for ``doc_to_messages``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=SIMPLE_CLASS, chat_class_path=CHAT_CLASS)
