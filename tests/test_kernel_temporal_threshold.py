"""Triton adjacent_cosine / static_mask / segment_static_mask (SPEC §5) against the float64
reference.

Cosine tolerance: atol 2e-6 (values in [−1, 1]; fp32 sums over D ≤ 3600 vs float64).
Masks are compared exactly on inputs whose scores c + μ_t·s stay ≥ 1e-3 away from τ
(`margin` asserts it), so fp32 rounding cannot flip a decision.
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
COS_TOL = dict(rtol=0, atol=2e-6)
TAU, MU_T = 0.5, 0.2


def features(T, N, D, device, dtype, strided=True):
    """Each location drifts slowly or jumps between frames (cosine near 1 or near 0); a few
    rows are all-zero (cosine 0). Strided: a (T, N, D) view of (N, T, D) storage."""
    x = torch.empty(N, T, D, device=device) if strided else torch.empty(T, N, D, device=device)
    xs = x.transpose(0, 1) if strided else x
    xs[0] = torch.randn(N, D, device=device)
    jumpy = torch.rand(T, N, 1, device=device) < 0.4
    for t in range(1, T):
        drift = xs[t - 1] + 0.1 * torch.randn(N, D, device=device)
        xs[t] = torch.where(jumpy[t], torch.randn(N, D, device=device), drift)
    xs[:, 2] = 0.0
    xs[T - 1, N - 1] = 0.0
    return xs.to(dtype)


def sink_scores(N, device):
    s = torch.rand(N, device=device) * 0.3
    s[: N // 4] = torch.rand(N // 4, device=device) * 0.05 + 0.95   # sink-like locations
    return s


def margin(x, sink):
    return float(((R.adjacent_cosine(x).double() + MU_T * sink.double().cpu()) - TAU).abs().min())


SHAPES = [(2, 37, 24), (3, 129, 80), (8, 196, 40), (2, 20, 3584), (3, 9, 3600)]


@pytest.mark.parametrize("T,N,D", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adjacent_cosine(T, N, D, dtype, device):
    x = features(T, N, D, device, dtype)
    c = sf.adjacent_cosine(x, backend="triton")
    assert c.dtype == torch.float32 and c.shape == (T - 1, N)
    torch.testing.assert_close(c, R.adjacent_cosine(x).to(device), **COS_TOL)
    assert bool((c[:, 2] == 0).all()) and float(c[T - 2, N - 1]) == 0.0   # zero vectors


@pytest.mark.parametrize("T,N,D", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_static_mask(T, N, D, dtype, device):
    x = features(T, N, D, device, dtype)
    sink = sink_scores(N, device)
    assert margin(x, sink) > 1e-3
    m = sf.static_mask(x, sink, tau=TAU, mu_t=MU_T, backend="triton")
    assert m.dtype == torch.bool and m.shape == (T - 1, N)
    assert torch.equal(m, R.static_mask(x, sink, TAU, MU_T).to(device))


@pytest.mark.parametrize("T,N,D", [(8, 196, 40), (5, 37, 3584), (2, 50, 24)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_segment_static_mask(T, N, D, dtype, device):
    x = features(T, N, D, device, dtype, strided=dtype != torch.float16)
    sink = sink_scores(N, device).to(dtype)
    assert margin(x, sink) > 1e-3
    # A partition, overlapping and whole-range segments, and one-frame segments.
    rows = [[0, T - 1], [0, 0], [T - 1, T - 1], [0, 1], [T // 2, T - 1], [1, T - 1], [0, T // 2]]
    bounds = torch.tensor(rows, device=device)
    m = sf.segment_static_mask(x, sink, bounds, tau=TAU, mu_t=MU_T, backend="triton")
    assert m.dtype == torch.bool and m.shape == (len(rows), N)
    assert torch.equal(m, R.segment_static_mask(x, sink, bounds, TAU, MU_T).to(device))
    assert not m[1].any() and not m[2].any()                       # length-1 segments
    assert torch.equal(m[0], sf.static_mask(x, sink, tau=TAU, mu_t=MU_T,
                                             backend="triton").all(dim=0))


def test_segment_int32_bounds_and_no_segments(device):
    x = features(4, 30, 24, device, torch.float32)
    sink = sink_scores(30, device)
    bounds = torch.tensor([[0, 3], [1, 2]], dtype=torch.int32, device=device)
    m = sf.segment_static_mask(x, sink, bounds, tau=TAU, mu_t=MU_T, backend="triton")
    assert torch.equal(m, R.segment_static_mask(x, sink, bounds.long(), TAU, MU_T).to(device))
    empty = sf.segment_static_mask(x, sink, bounds[:0], tau=TAU, mu_t=MU_T, backend="triton")
    assert empty.shape == (0, 30) and empty.dtype == torch.bool


def test_sink_bonus_flips_decisions(device):
    x = features(4, 64, 24, device, torch.float32)
    sink = sink_scores(64, device)
    plain = sf.static_mask(x, sink, tau=TAU, mu_t=0.0, backend="triton")
    boosted = sf.static_mask(x, sink, tau=TAU, mu_t=1.0, backend="triton")
    assert torch.equal(plain, R.static_mask(x, sink, TAU, 0.0).to(device))
    assert torch.equal(boosted, R.static_mask(x, sink, TAU, 1.0).to(device))
    assert bool((boosted | ~plain).all()) and bool((boosted & ~plain).any())
