"""pytest-benchmark set-up for ``pytest tests/benchmarks --benchmark-only``.

Full shapes on CUDA, the smoke shapes on CPU (the full ones would take minutes there).
Without ``--benchmark-only`` (e.g. ``make test``) the benchmarks are deselected, so they never
slow down the test suite.
"""
import pytest
import torch

from stop_fast.bench.fixtures import DEVICE

pytest.importorskip("pytest_benchmark")


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    # Without --benchmark-only the benchmarks are deselected (listed as such, never run).
    bench = [item for item in items if "benchmark" in getattr(item, "fixturenames", ())]
    if bench:
        config.hook.pytest_deselected(items=bench)
        items[:] = [item for item in items if "benchmark" not in getattr(item, "fixturenames", ())]


@pytest.fixture(scope="session")
def device() -> torch.device:
    return DEVICE


@pytest.fixture(scope="session", autouse=True)
def _no_finite_checks():
    """Time the ops, not the input validation syncs (as the CLI does)."""
    import stop_fast

    with stop_fast.input_checks(False):
        yield
