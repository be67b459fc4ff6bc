"""Triton sink_score (SPEC §3) against the float64 reference.

Tolerance: atol 2e-6 on scores in [0, 1] (means rounded to fp32, fp32 pow, vs float64); constant
input must give exact zeros.
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = dict(rtol=0, atol=2e-6)


def attention(T, N, device, dtype=torch.float32):
    """Per-frame attention-like rows (~1/N) with two persistent sink locations."""
    a = torch.rand(T, N, device=device) / N
    a[:, N // 3] += 0.05
    a[:, N - 1] += 0.02
    return a.to(dtype)


@pytest.mark.parametrize("N", [1, 37, 196, 729, 4100])
@pytest.mark.parametrize("T", [1, 3, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(T, N, dtype, device):
    a = attention(T, N, device, dtype)
    s = sf.sink_score(a, backend="triton")
    assert s.dtype == torch.float32 and s.shape == (N,)
    torch.testing.assert_close(s, R.sink_score(a).to(device), **TOL)


@pytest.mark.parametrize("gamma,eps", [(1.0, 1e-12), (2.5, 1e-12), (1.1, 1e-3)])
def test_gamma_and_eps(gamma, eps, device):
    a = attention(5, 196, device)
    s = sf.sink_score(a, gamma=gamma, eps=eps, backend="triton")
    torch.testing.assert_close(s, R.sink_score(a, gamma, eps).to(device), **TOL)


def test_strided_input(device):
    base = attention(300, 24, device)           # (N', T) storage, read as a (T, N) view
    a = base.t()[:, ::2]
    assert not a.is_contiguous()
    s = sf.sink_score(a, backend="triton")
    torch.testing.assert_close(s, R.sink_score(a).to(device), **TOL)


@pytest.mark.parametrize("T,N", [(1, 37), (4, 196), (3, 300)])
def test_constant_input_gives_zeros(T, N, device):
    s = sf.sink_score(torch.full((T, N), 0.37, device=device), backend="triton")
    assert torch.equal(s, torch.zeros(N, device=device))


def test_zero_columns_and_range(device):
    a = attention(6, 129, device)
    a[:, 5] = 0.0                                # 0^γ = 0, the minimum
    s = sf.sink_score(a, backend="triton")
    torch.testing.assert_close(s, R.sink_score(a).to(device), **TOL)
    assert s[5] == 0 and s.min() == 0 and abs(float(s.max()) - 1) < 1e-6
    assert int(s.argmax()) == 129 // 3


@pytest.mark.parametrize("seed,T,N", [(4, 4, 4), (0, 32, 729)])
def test_frame_order_does_not_change_scores(seed, T, N, device):
    # The frame sums are fp64, so m rounds to the same fp32 whatever the frame order; with
    # fp32 sums m moves by an ulp, which a tiny max − min of m^γ magnifies (both cases fail).
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(T, N, generator=g).pow(3).to(device)
    s = sf.sink_score(a, backend="triton")
    for k in range(3):
        perm = torch.randperm(T, generator=torch.Generator().manual_seed(k)).to(device)
        assert torch.equal(sf.sink_score(a[perm], backend="triton"), s)
