"""pytest-benchmark: column_mean_attention vs its baselines, and the small ops vs torch twins.

Same cases as ``stop-fast bench --suite kernels`` (shapes from stop_fast.bench.suite_kernels).
"""
import pytest

from stop_fast.bench import suite_kernels as K
from stop_fast.bench.fixtures import SMOKE, synced

CFG = K.SMOKE if SMOKE else K.FULL
IMPLS = ("ours", "eager", "flash-colreduce", "sdpa")


@pytest.mark.parametrize("B", CFG["B"])
@pytest.mark.parametrize("with_lse", [False, True], ids=["no-lse", "lse"])
@pytest.mark.parametrize("dtype", list(K.DTYPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_column_mean_attention(benchmark, device, impl, dtype, with_lse, B):
    q, k, v = K.attention_inputs(B, CFG["H"], CFG["N"], CFG["d"], K.DTYPES[dtype], device)
    scale = CFG["d"] ** -0.5
    lse = K.row_lse(q, k, scale) if with_lse else None
    fn = K.column_mean_impls(q, k, v, lse, scale)[impl]
    if isinstance(fn, dict):
        pytest.skip(fn["reason"])
    benchmark.group = f"column_mean_attention {dtype} {'lse' if with_lse else 'no-lse'} B={B}"
    benchmark(synced(fn, device))


@pytest.mark.parametrize("T", CFG["T"])
@pytest.mark.parametrize("op", ["sink_score", "penalized_topk", "adjacent_cosine", "static_mask", "combined"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_small_op(benchmark, device, backend, op, T):
    attn, x = K.small_op_inputs(T, CFG["Np"], CFG["D"], K.DTYPES["bf16"], device)
    fn = K.small_op_impls(attn, x, backend, min(K.TOPK, CFG["Np"] // 2))[op]
    benchmark.group = f"{op} T={T}"
    benchmark(synced(fn, device))
