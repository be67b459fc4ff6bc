"""Every registered method at the LLaVA-OneVision shapes of SPEC §1 (N = 196 pooled tokens,
D = 3584), in fp32, fp16 and bf16, on strided (non-contiguous) inputs: the fast path against
its float64 twin.

Inputs: a seeded synthetic video (static background, moving objects, planted sinks, one scene
cut), features drawn in fp32 and rounded once to the tested dtype, attention jittered so no two
scores tie. Positions and kinds must be identical; tokens agree within rtol = atol = 1e-5 in
fp32 and within one rounding of the output dtype (rtol = atol = 1e-2) in fp16/bf16, where
both paths read the same rounded inputs.
"""
import functools

import pytest
import torch

from stop_fast.pipelines import METHODS, prune
from stop_fast.synthetic import make_video

T, GRID, D = 8, (14, 14), 3584
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def _video(dtype):
    v = make_video(num_frames=T, grid=GRID, dim=D, metric_dim=72, scene_cut=T // 2, seed=11)
    g = torch.Generator().manual_seed(5)
    a = v.attention * (1 + 1e-3 * torch.rand(v.attention.shape, generator=g))
    # A (N, T, D) buffer viewed as (T, N, D): the strides a permuted batch would have.
    x = v.features.to(dtype).transpose(0, 1).contiguous().transpose(0, 1)
    m = v.metric.to(dtype).transpose(0, 1).contiguous().transpose(0, 1)
    assert not x.is_contiguous() and not m.is_contiguous()
    return x, a, m


def _inputs(method, dtype):
    spec = METHODS[method]
    x, a, m = _video(dtype)
    kw = {}
    if spec.needs_metric:
        kw["metric"] = m
    if spec.uses_global:
        kw["global_features"] = x.float().mean(dim=1)
    return x, (a if spec.uses_attention else None), kw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_fast_equals_twin_at_llava_shapes(method, dtype, device):
    x, a, kw = _inputs(method, dtype)
    x, a = x.to(device), None if a is None else a.to(device)
    kw = {k: v.to(device) for k, v in kw.items()}
    fast = prune(x, a, method=method, retention_ratio=0.1, backend="auto", **kw)   # triton on CUDA
    twin = prune(x, a, method=method, retention_ratio=0.1, backend="reference", **kw)
    assert fast.tokens.dtype == dtype and fast.tokens.shape[1] == D
    assert torch.equal(fast.positions.cpu(), twin.positions.cpu())
    assert torch.equal(fast.kinds.cpu(), twin.kinds.cpu())
    assert fast.segments == twin.segments
    tol = TOL[dtype]
    torch.testing.assert_close(fast.tokens.float(), twin.tokens.float(), rtol=tol, atol=tol)
