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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class PruneRecorder:
    """Wraps stop_fast.pipelines.prune to keep what an integration passed and got back."""

    def __init__(self, prune):
        self.calls = []
        self.prune = prune                                   # the real one

    def __call__(self, features, attention, **kw):
        out = self.prune(features, attention, **kw)
        self.calls.append((features, attention, kw, out))
        return out


@pytest.fixture
def recorder(monkeypatch):
    """Records every stop_fast.pipelines.prune call made while the test runs."""
    from stop_fast import pipelines
    rec = PruneRecorder(pipelines.prune)
    monkeypatch.setattr(pipelines, "prune", rec)
    return rec
