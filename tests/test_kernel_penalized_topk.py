"""Triton penalized_topk / gather_topk (SPEC §4) against the float64 reference.

Two kinds of input:
  * exact: attn on a 1/64 grid, sink on a 1/16 grid, mu_s a power of two — every penalized
    score is exact in fp32 and fp64, exact ties are frequent, and the result must equal the
    reference bit for bit (order and tie-breaking toward the lower index included);
  * continuous: random scores, mu_s = 0.03. Ranking is exact in fp32, so it must equal
    the fp32 torch backend exactly, and agree with the float64 reference up to
    score differences below 1e-6 (a tie-aware check).
Gathered tokens are copies, compared exactly.
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R
from stop_fast import torch_backend as TB

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SCORE_TOL = 1e-6


def exact_inputs(T, N, device, dtype):
    attn = torch.randint(0, 64, (T, N), device=device).to(dtype) / 64
    sink = torch.randint(0, 16, (N,), device=device).to(dtype) / 16
    return attn, sink


def continuous_inputs(T, N, device, dtype):
    attn = (torch.rand(T, N, device=device) / N).to(dtype)
    sink = torch.rand(N, device=device).to(dtype)
    return attn, sink


def assert_topk_close_to_reference(idx, attn, sink, k, mu_s):
    """Every chosen index is a valid top-k pick and the order is non-increasing in the
    float64 score, both up to SCORE_TOL."""
    scores = attn.double() - mu_s * sink.double()
    kth = scores.sort(dim=-1, descending=True).values[:, k - 1:k]
    chosen = scores.gather(1, idx.to(scores.device))
    assert bool((chosen >= kth - SCORE_TOL).all())
    assert bool((chosen[:, 1:] <= chosen[:, :-1] + SCORE_TOL).all())
    assert all(len(set(row)) == k for row in idx.tolist())


def ks(N):
    return sorted({1, max(1, N // 3), N})


@pytest.mark.parametrize("T,N", [(1, 37), (3, 37), (2, 196), (1, 729)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mu_s", [0.0, 0.25])
def test_exact_scores_and_ties(T, N, dtype, mu_s, device):
    attn, sink = exact_inputs(T, N, device, dtype)
    for k in ks(N):
        idx = sf.penalized_topk(attn, sink, k, mu_s=mu_s, backend="triton")
        assert idx.dtype == torch.int64 and idx.shape == (T, k)
        assert torch.equal(idx, R.penalized_topk(attn, sink, k, mu_s).to(device)), f"k={k}"


@pytest.mark.parametrize("T,N", [(3, 37), (2, 196), (1, 729)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_continuous_scores(T, N, dtype, device):
    attn, sink = continuous_inputs(T, N, device, dtype)
    for k in ks(N):
        idx = sf.penalized_topk(attn, sink, k, mu_s=0.03, backend="triton")
        assert torch.equal(idx, TB.penalized_topk(attn, sink, k, 0.03)), f"k={k}"
        assert_topk_close_to_reference(idx, attn, sink, k, 0.03)


def test_all_equal_scores_keep_index_order(device):
    attn = torch.full((2, 150), 0.5, device=device)
    sink = torch.zeros(150, device=device)
    idx = sf.penalized_topk(attn, sink, 150, mu_s=0.02, backend="triton")
    assert torch.equal(idx, torch.arange(150, device=device).expand(2, -1))


def test_sink_penalty_demotes_sinks(device):
    attn = torch.full((2, 40), 0.01, device=device)
    attn[:, 7] = 0.5                              # a sink: high attention in every frame
    attn[:, 20] = 0.05
    sink = torch.zeros(40, device=device)
    sink[7] = 1.0
    plain = sf.penalized_topk(attn, sink, 1, mu_s=0.0, backend="triton")
    stsp = sf.penalized_topk(attn, sink, 1, mu_s=0.6, backend="triton")
    assert plain.flatten().tolist() == [7, 7] and stsp.flatten().tolist() == [20, 20]


def test_strided_and_mixed_dtype_inputs(device):
    big = torch.randint(0, 64, (4, 2 * 196), device=device).float() / 64
    attn = big[::2, ::2]                          # (2, 196), strides (784, 2)
    sink = (torch.randint(0, 16, (3 * 196,), device=device).to(torch.bfloat16) / 16)[::3]
    assert not attn.is_contiguous() and not sink.is_contiguous()
    for k in (1, 50, 196):
        idx = sf.penalized_topk(attn, sink, k, mu_s=0.5, backend="triton")
        assert torch.equal(idx, R.penalized_topk(attn, sink, k, 0.5).to(device))


@pytest.mark.parametrize("T,N,D", [(3, 37, 24), (2, 196, 80), (1, 37, 3584), (2, 20, 3600)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_topk(T, N, D, dtype, device):
    attn, sink = exact_inputs(T, N, device, torch.float32)
    features = torch.randn(N, T, D, device=device).to(dtype).transpose(0, 1)  # strided
    for k in ks(N):
        idx, tokens = sf.gather_topk(attn, sink, k, features, mu_s=0.25, backend="triton")
        ref_idx, ref_tokens = R.gather_topk(attn, sink, k, features, 0.25)
        assert torch.equal(idx, ref_idx.to(device))
        assert tokens.dtype == dtype and tokens.shape == (T, k, D) and tokens.is_contiguous()
        assert torch.equal(tokens, ref_tokens.to(device))
