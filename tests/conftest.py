"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be switched on
before triton is first imported; with a GPU the same tests run compiled kernels on CUDA.
"""
import importlib.util
import os
import sys

import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1", \
        "triton was imported before TRITON_INTERPRET=1 could be set"
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests draw the same examples on every run unless asked otherwise: "ci" (the
# default) is derandomized, keeps no example database and never fails on timing (no deadline,
# no too-slow health check). `HYPOTHESIS_PROFILE=explore make test` (or `pytest
# --hypothesis-profile=explore`) draws fresh random examples, ten times as many.
settings.register_profile("ci", derandomize=True, database=None, max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("explore", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# CPU reductions split their work by thread count, so float sums (and any exact assertion
# that rests on them) could differ between machines with different core counts: pin it.
# STOP_FAST_TEST_THREADS overrides the count (2, the CI machine's cores).
torch.set_num_threads(int(os.environ.get("STOP_FAST_TEST_THREADS", "2")))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# tests/vllm_serving run in their own virtualenv (vLLM pins its own torch and transformers):
# `make test` runs them there with `pytest tests/vllm_serving`; where vLLM is not installed they
# are not collected, and the header says so.
# (A directory named like the package would be found as a namespace package: check the origin.)
_VLLM_SPEC = importlib.util.find_spec("vllm")
HAVE_VLLM = _VLLM_SPEC is not None and _VLLM_SPEC.origin not in (None, "namespace")
collect_ignore = [] if HAVE_VLLM else ["vllm_serving"]


def pytest_report_header(config):
    if not HAVE_VLLM:
        return ("tests/vllm_serving: not collected (vLLM is not installed here; `make test` runs "
                "them in .venv-vllm)")


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
