"""pytest-benchmark: stop_fast.prune (auto / torch backend) vs the float64 reference twins."""
import pytest

from stop_fast.bench import suite_pipelines as P
from stop_fast.bench.fixtures import SMOKE, synced

CFG = P.SMOKE if SMOKE else P.FULL


@pytest.mark.parametrize("T", CFG["T"])
@pytest.mark.parametrize("method", P.METHODS)
@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_prune(benchmark, device, backend, method, T):
    v = P.video(T, CFG, device)
    why = P.unsupported(v, method)
    if why:
        pytest.skip(why)
    fn = synced(P.pipeline_fn(v, method, CFG["ratios"][0], backend), device)
    benchmark.group = f"prune {method} T={T}"
    if backend == "reference":   # seconds per call at full shapes: a few rounds suffice
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn)
