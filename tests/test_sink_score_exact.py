"""SPEC §3's exactness promise, on every backend: equal frame means give bitwise equal sink
scores, the minimum is exactly 0, the maximum exactly 1 when the means vary, and constant
input is all zeros — for every N (a vectorized ``pow`` rounds a vector's tail differently from
its body), every γ > 0 and fp32/fp16/bf16 input. No tolerance: these are exact equalities.

The triton backend runs compiled on CUDA and through the interpreter elsewhere; the torch
backend and the float64 reference run on the CPU (and the torch backend on CUDA too).
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R
from stop_fast import torch_backend as TB

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GAMMAS = [0.05, 0.5, 0.97, 1.1, 2.75, 7.0]


def scorers(device):
    """(name, fn(attn, gamma) -> (N,) scores) for every backend."""
    return [("reference", lambda a, g: R.sink_score(a.cpu(), gamma=g).to(a.device)),
            ("torch", lambda a, g: sf.sink_score(a, gamma=g, backend="torch")),
            ("triton", lambda a, g: sf.sink_score(a, gamma=g, backend="triton"))]


@pytest.mark.parametrize("T,N,gamma", [(1, 38, 2.75), (1, 43, 0.97)])
def test_regressions_from_the_issue(T, N, gamma, device):
    # Both were 1-ulp pow differences turned into scores of 6.8e-9 and 3.5e-6 by ε = 1e-12.
    a = torch.full((T, N), 1.0 / N, device=device)
    for name, score in scorers(device):
        assert torch.equal(score(a, gamma), torch.zeros(N, device=device)), name


@pytest.mark.parametrize("name", ["reference", "torch"])
def test_constant_input_every_n_host(name):
    score = dict(scorers("cpu"))[name]
    for N in range(1, 301):
        for T in (1, 3):
            a = torch.full((T, N), 1.0 / N)
            for gamma in (0.97, 2.75):
                assert torch.equal(score(a, gamma), torch.zeros(N)), (N, T, gamma)


def test_constant_input_every_n_triton(device):
    # One launch per N (the interpreter takes ~50 ms a launch): dtype and γ rotate with N.
    for N in range(1, 301):
        dtype, gamma = DTYPES[N % 3], GAMMAS[N % len(GAMMAS)]
        a = torch.full((1 + N % 4, N), 1.0 / N, device=device, dtype=dtype)
        s = sf.sink_score(a, gamma=gamma, backend="triton")
        assert torch.equal(s, torch.zeros(N, device=device)), (N, dtype, gamma)


def grouped_attention(T, N, groups, seed, device, dtype):
    """(T, N) attention whose columns are copies of ``groups`` distinct columns (so their frame
    means are bitwise equal), and the group of every location."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.rand(T, groups, generator=g).pow(3) / N
    cols[:, 0] += 0.05                                        # one sink-like group
    which = torch.randint(groups, (N,), generator=g)
    which[: min(N, groups)] = torch.arange(min(N, groups))   # every group present
    return cols[:, which].to(device=device, dtype=dtype), which.to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", [2, 7, 38, 43, 129, 196, 257, 300])
def test_equal_means_equal_scores_and_exact_ends(N, dtype, device):
    for seed, gamma in enumerate(GAMMAS):
        a, which = grouped_attention(3, N, groups=min(N, 5), seed=seed, device=device, dtype=dtype)
        m = a.double().mean(0)
        for name, score in scorers(device):
            s = score(a, gamma)
            assert s.dtype == torch.float32 and s.shape == (N,)
            for grp in which.unique():
                members = s[which == grp]
                assert torch.equal(members, members[:1].expand_as(members)), (name, gamma, int(grp))
            assert torch.equal(s[m == m.min()], torch.zeros_like(s[m == m.min()])), (name, gamma)
            assert torch.equal(s[m == m.max()], torch.ones_like(s[m == m.max()])), (name, gamma)
            assert bool(((s >= 0) & (s <= 1)).all()), (name, gamma)


def test_tiny_range_still_reaches_one(device):
    # A range of one fp32 ulp in m: (max − min)/(max − min + ε) alone would stay below 1.
    a = torch.full((1, 50), 0.02, device=device)
    a[0, 7] = torch.nextafter(torch.tensor(0.02), torch.tensor(1.0)).item()
    for name, score in scorers(device):
        s = score(a, 1.1)
        assert s[7] == 1 and torch.equal(s[torch.arange(50, device=device) != 7],
                                         torch.zeros(49, device=device)), name


@pytest.mark.parametrize("impl", [TB.minmax_power, R.minmax_power], ids=["torch", "reference"])
def test_rowwise_normalization_for_segments(impl):
    # FlashVid's per-segment scores (SPEC §10) normalize each row of an (S, N) mean alike.
    g = torch.Generator().manual_seed(3)
    m = torch.rand(4, 57, generator=g, dtype=torch.float64)
    m[1] = 0.25                                                   # a constant segment
    m[2, 10:] = m[2, 3]                                           # a long run of equal means
    s = impl(m, 1.1, 1e-12)
    assert torch.equal(s[1], torch.zeros(57, dtype=s.dtype))
    assert torch.equal(s[2, 10:], s[2, 3].expand(47))
    for row, mr in zip(s, m):
        if mr.max() > mr.min():
            assert row[mr.argmin()] == 0 and row[mr.argmax()] == 1
    torch.testing.assert_close(TB.minmax_power(m, 1.1, 1e-12), R.minmax_power(m, 1.1, 1e-12),
                               rtol=0, atol=1e-12)
