"""merge_tokens: the Triton kernel and the torch backend against the float64 reference.

Shapes from SPEC §1: N = 196 and 729 tokens per frame, feature widths 72 and 80 (not powers
of two) and 3584, fp32/fp16/bf16, contiguous and strided (a permuted (N, T, D) buffer) inputs,
outputs in the input dtype or fp32. Member lists mix copies, segment means over frames,
clusters of many rows, repeated rows and empty outputs. Tolerances: fp32 rtol = atol = 1e-5;
fp16/bf16 outputs one rounding of the output dtype (rtol = atol = 1e-2); an fp32 output of
fp16/bf16 rows 1e-5 on the Triton path (fp32 weights and accumulation), 1e-2 on the torch
backend (weights rounded to the input dtype).
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def csr(T, N, M, seed, max_members=40):
    """Random CSR: M outputs, each with 0…max_members rows (repeats allowed), float weights."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_members + 1, (M,), generator=g)
    counts[0] = 0                                      # an empty output
    counts[1] = 1                                      # a copy
    offsets = torch.zeros(M + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    E = int(offsets[-1])
    members = torch.randint(0, T * N, (E,), generator=g)
    weights = torch.rand(E, generator=g) * 2 - 0.5
    weights[offsets[1]] = 1.0
    return members, weights, offsets


def features(T, N, D, dtype, strided, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, D, generator=g).to(dtype)
    if strided:                                        # (N, T, D) buffer viewed as (T, N, D)
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
        assert not x.is_contiguous()
    return x


CASES = [(4, 196, 72), (3, 729, 80), (2, 196, 3584)]


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Every shape in every dtype, the layouts alternating.
MATRIX = [(*case, dt, (i + j) % 2 == 1) for i, case in enumerate(CASES) for j, dt in enumerate(DTYPES)]


@pytest.mark.parametrize("T,N,D,dtype,strided", MATRIX, ids=str)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_reference(backend, T, N, D, dtype, strided, device):
    x = features(T, N, D, dtype, strided).to(device)
    members, weights, offsets = (t.to(device) for t in csr(T, N, 24, seed=T + N + D))
    want = R.merge_tokens(x.cpu(), members.cpu(), weights.cpu(), offsets.cpu(), torch.float64)
    got = sf.merge_tokens(x, members, weights, offsets, backend=backend)
    assert got.dtype == dtype and got.shape == (24, D)
    tol = TOL[dtype]
    torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol)
    assert torch.equal(got[0].cpu(), torch.zeros(D, dtype=dtype))          # empty output
    row = int(members[offsets[1]])
    assert torch.equal(got[1].cpu(), x[row // N, row % N].cpu())           # a copy is exact


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fp32_output_of_half_rows(backend, dtype, device):
    T, N, D = 4, 196, 80
    x = features(T, N, D, dtype, strided=True).to(device)
    members, weights, offsets = (t.to(device) for t in csr(T, N, 16, seed=7))
    want = R.merge_tokens(x.cpu(), members.cpu(), weights.cpu(), offsets.cpu(), torch.float64)
    got = sf.merge_tokens(x, members, weights, offsets, out_dtype=torch.float32, backend=backend)
    assert got.dtype == torch.float32
    tol = 1e-5 if backend == "triton" else 1e-2
    torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol)


def test_segment_mean_and_weighted_merge_by_hand():
    # Frames 0…2 of location 5 averaged; 0.6·x[1, 3] + 0.4·mean(x[1, 7], x[1, 9]).
    x = torch.randn(3, 10, 6, dtype=torch.float64).float()
    members = torch.tensor([5, 15, 25, 13, 17, 19])
    weights = torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.6, 0.2, 0.2])
    offsets = torch.tensor([0, 3, 6])
    for backend in ("triton", "torch", "reference"):
        out = sf.merge_tokens(x, members, weights, offsets, backend=backend)
        torch.testing.assert_close(out[0], x[:, 5].mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out[1], 0.6 * x[1, 3] + 0.2 * (x[1, 7] + x[1, 9]),
                                   rtol=1e-6, atol=1e-6)


def test_no_outputs():
    x = torch.randn(2, 5, 8)
    empty = torch.empty(0, dtype=torch.int64)
    for backend in ("triton", "torch", "reference"):
        out = sf.merge_tokens(x, empty, torch.empty(0), torch.zeros(1, dtype=torch.int64),
                              backend=backend)
        assert out.shape == (0, 8) and out.dtype == x.dtype


@pytest.mark.parametrize("bad,match", [
    (dict(offsets=torch.tensor([1, 3])), "offsets must run from 0"),
    (dict(offsets=torch.tensor([0, 2])), "offsets must run from 0"),
    (dict(offsets=torch.tensor([0, 3, 2, 3])), "decreasing"),
    (dict(members=torch.tensor([0, 1, 10])), "out of range"),
    (dict(members=torch.tensor([0.0, 1.0, 2.0])), "members must have dtype"),
    (dict(weights=torch.ones(2)), "weights must have shape"),
    (dict(out_dtype=torch.int32), "out_dtype"),
])
def test_validation(bad, match):
    args = dict(x=torch.randn(2, 5, 4), members=torch.tensor([0, 1, 9]), weights=torch.ones(3),
                offsets=torch.tensor([0, 1, 3]))
    out_dtype = bad.pop("out_dtype", None)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        sf.merge_tokens(**args, out_dtype=out_dtype)
