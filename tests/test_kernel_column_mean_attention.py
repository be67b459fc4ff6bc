"""Triton column_mean_attention (SPEC §2) against the float64 reference.

Runs compiled kernels on CUDA and Triton's interpreter on CPU. Tolerance for every dtype:
rtol 2e-5, atol 1e-7 on outputs of size ~1/Nk. Kernel and reference read the same (possibly
half-precision) q/k values, so only the fp32 accumulation, exp2/log2 and the fp32 LSE differ.
"""
import importlib

import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R

CMA = importlib.import_module("stop_fast.kernels.column_mean_attention")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = dict(rtol=2e-5, atol=1e-7)

# (B, H, Nq, Nk, d): head dims 72/80 (the real ones), odd small 24/40; ragged N.
SHAPES = [
    (2, 2, 37, 37, 72),
    (1, 2, 129, 129, 80),
    (1, 2, 37, 129, 40),
    (2, 1, 196, 196, 24),
]


def make_qk(B, H, Nq, Nk, d, dtype, layout, device, spread=1.0):
    """q, k in the requested layout, both genuinely non-contiguous views."""
    if layout == "bhnd":  # padded head dim: row stride d + 8
        q = torch.randn(B, H, Nq, d + 8, device=device)[..., :d]
        k = torch.randn(B, H, Nk, d + 8, device=device)[..., :d]
    else:  # "bnhd" views of packed projections, as a ViT's qkv linear produces them
        q = torch.randn(B, Nq, 3, H, d, device=device)[:, :, 0]
        k = torch.randn(B, Nk, 3, H, d, device=device)[:, :, 1]
    return (q * spread).to(dtype), k.to(dtype)


def as_bhnd(t, layout):
    return t if layout == "bhnd" else t.transpose(1, 2)


def reference_lse(q, k, scale):
    """(B, H, Nq) natural-log LSE of the scaled scores, as a non-contiguous fp32 view."""
    lse = (torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) * scale).logsumexp(-1)
    return lse.transpose(1, 2).float().contiguous().transpose(1, 2)


def check(q, k, layout, lse_given, scale=None):
    qb, kb = as_bhnd(q, layout), as_bhnd(k, layout)
    scale_v = q.shape[-1] ** -0.5 if scale is None else scale
    lse = reference_lse(qb, kb, scale_v) if lse_given else None
    out = sf.column_mean_attention(q, k, scale=scale, lse=lse, layout=layout, backend="triton")
    ref = R.column_mean_attention(qb, kb, scale_v)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref.to(out.device), **TOL)
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out[:, 0]), rtol=0, atol=1e-5)
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("lse_given", [False, True], ids=["lse_none", "lse_given"])
def test_matches_reference(shape, dtype, layout, lse_given, device):
    q, k = make_qk(*shape, dtype, layout, device)
    check(q, k, layout, lse_given)


@pytest.mark.parametrize("lse_given", [False, True], ids=["lse_none", "lse_given"])
def test_siglip_tokens_small_batch(lse_given, device):
    # N = 729 (27×27 SigLIP patches), d = 72, one head: many tiles with ragged tails.
    q, k = make_qk(1, 1, 729, 729, 72, torch.bfloat16, "bnhd", device)
    check(q, k, "bnhd", lse_given)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_peaked_scores_and_custom_scale(dtype, device):
    # Scores spanning ~±60 in the exponent: exercises the online max rescaling.
    q, k = make_qk(2, 2, 37, 70, 80, dtype, "bhnd", device, spread=6.0)
    check(q, k, "bhnd", False, scale=0.3)


@pytest.mark.parametrize("d", [16, 32, 128, 256])
def test_power_of_two_head_dims(d, device):
    q, k = make_qk(1, 2, 37, 40, d, torch.float32, "bhnd", device)
    check(q, k, "bhnd", False)


def test_contiguous_inputs(device):
    q = torch.randn(2, 3, 50, 72, device=device)
    k = torch.randn(2, 3, 61, 72, device=device)
    check(q, k, "bhnd", False)


@pytest.mark.parametrize("lse_given", [False, True], ids=["lse_none", "lse_given"])
def test_head_splits_are_deterministic(lse_given, device):
    q, k = make_qk(1, 3, 37, 70, 72, torch.float16, "bnhd", device)
    qb, kb = q.transpose(1, 2), k.transpose(1, 2)
    lse = reference_lse(qb, kb, 72 ** -0.5) if lse_given else None
    ref = R.column_mean_attention(qb, kb, 72 ** -0.5).to(device)
    outs = {}
    for splits in (1, 2, 3):
        outs[splits] = CMA.launch(qb, kb, 72 ** -0.5, lse, splits=splits)
        torch.testing.assert_close(outs[splits], ref, **TOL)
        again = CMA.launch(qb, kb, 72 ** -0.5, lse, splits=splits)
        assert torch.equal(outs[splits], again), "same split count must give bit-identical output"


@pytest.mark.parametrize("d,blocks", [(8, (16, 0)), (24, (32, 0)), (40, (32, 16)), (72, (64, 16)),
                                      (80, (64, 16)), (96, (64, 32)), (112, (128, 0)),
                                      (200, (256, 0)), (256, (256, 0))])
def test_head_blocks(d, blocks):
    main, tail = CMA.head_blocks(d)
    assert (main, tail) == blocks
    assert main + tail >= d and main >= 16 and (tail == 0 or tail >= 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak-memory accounting needs CUDA")
def test_peak_extra_memory_is_bounded():
    B, H, N, d = 4, 16, 729, 72
    q, k = make_qk(B, H, N, N, d, torch.bfloat16, "bnhd", "cuda")
    sf.column_mean_attention(q, k, layout="bnhd", backend="triton")  # autotune / compile first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    sf.column_mean_attention(q, k, layout="bnhd", backend="triton")
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= 2 * B * H * N * 4 + 2**20
