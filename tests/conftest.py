"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be switched on
before triton is first imported; with a GPU the same tests run compiled kernels on CUDA.
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1", \
        "triton was imported before TRITON_INTERPRET=1 could be set"
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """cuda when available (compiled kernels), else cpu (Triton interpreter)."""
    return DEVICE


@pytest.fixture
def one_thread():
    """Loop-heavy twins run thousands of tiny ops, which intra-op threads only slow down."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class PruneRecorder:
    """Keeps what an integration's pruner was given and returned: ``calls`` holds
    (features, attention, settings, PrunedVideo), settings being the validated options plus
    ``metric`` and ``global_features``. ``prune`` is the plain :func:`stop_fast.prune`."""

    def __init__(self, prune):
        self.calls = []
        self.prune = prune


@pytest.fixture
def recorder(monkeypatch):
    """Records every call of a :class:`stop_fast.pipelines.Pruner` made while the test runs."""
    import dataclasses

    from stop_fast import pipelines
    from stop_fast.pipelines.entry import Pruner

    rec = PruneRecorder(pipelines.prune)
    original = Pruner.__call__

    def call(self, features, attention=None, metric=None, global_features=None):
        out = original(self, features, attention, metric, global_features)
        kw = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}
        kw.update(method=self.options.method, metric=metric, global_features=global_features)
        rec.calls.append((features, attention, kw, out))
        return out

    monkeypatch.setattr(Pruner, "__call__", call)
    return rec
