"""The torch backend against the reference at the real shapes of SPEC §1.

Tolerances: column_mean_attention rtol 2e-4 / atol 1e-7 for every input dtype (both sides
read the same rounded inputs; only the fp32 vs fp64 accumulation differs, on values ≈ 1/N);
the selections are compared exactly (random inputs have no ties).
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R
from stop_fast import torch_backend as TB

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def qk(B, H, Nq, Nk, d, dtype, layout, device):
    """q, k as a ViT produces them: bnhd views into one packed qkv projection (non-contiguous)."""
    n = max(Nq, Nk)
    qkv = torch.randn(B, n, 3, H, d, device=device).to(dtype)
    q, k = qkv[:, :Nq, 0], qkv[:, :Nk, 1]                     # (B, N, H, d), strided
    if layout == "bhnd":
        q, k = q.transpose(1, 2), k.transpose(1, 2)           # (B, H, N, d), still strided
    return q, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("d,N,B,H", [(72, 196, 2, 3), (80, 196, 1, 2), (72, 729, 1, 2), (80, 729, 1, 1)])
@pytest.mark.parametrize("with_lse", [False, True])
def test_column_mean_attention(dtype, layout, d, N, B, H, with_lse, device):
    q, k = qk(B, H, N, N, d, dtype, layout, device)
    qb, kb = (q, k) if layout == "bhnd" else (q.transpose(1, 2), k.transpose(1, 2))
    assert not q.is_contiguous()
    lse = None
    if with_lse:
        lse = (torch.einsum("bhid,bhjd->bhij", qb.double(), kb.double()) * d ** -0.5).logsumexp(-1).float()
    out = sf.column_mean_attention(q, k, lse=lse, layout=layout, backend="torch")
    ref = R.column_mean_attention(qb, kb)
    assert out.shape == (B, N) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(out.sum(-1), torch.ones(B, device=device), rtol=1e-5, atol=1e-5)


def test_column_mean_attention_rectangular_and_scale(device):
    q, k = torch.randn(2, 2, 37, 24, device=device), torch.randn(2, 2, 129, 24, device=device)
    out = sf.column_mean_attention(q, k, scale=0.3, backend="torch")
    torch.testing.assert_close(out, R.column_mean_attention(q, k, scale=0.3), rtol=2e-4, atol=1e-7)


def test_column_mean_attention_chunking_matches(device, monkeypatch):
    # Force tiny blocks: several batch and query chunks must add up to the same result.
    monkeypatch.setattr(TB, "SCORE_BLOCK_ELEMS", 3 * 2 * 50)
    q, k = torch.randn(5, 3, 41, 16, device=device), torch.randn(5, 3, 50, 16, device=device)
    assert TB.plan_chunks(5, 3, 41, 50, TB.SCORE_BLOCK_ELEMS) == (2, 1)
    torch.testing.assert_close(TB.column_mean_attention(q, k, 0.25), R.column_mean_attention(q, k, 0.25),
                               rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,N", [(1, 196), (32, 196), (8, 729), (4, 37)])
def test_sink_score_and_topk(dtype, T, N, device):
    attn = torch.rand(T, N, device=device).softmax(-1).to(dtype)
    sink = sf.sink_score(attn, backend="torch")
    torch.testing.assert_close(sink, R.sink_score(attn), rtol=1e-5, atol=1e-6)
    for k in (1, max(1, N // 10), N):
        idx = sf.penalized_topk(attn, sink, k, mu_s=0.03, backend="torch")
        assert torch.equal(idx, R.penalized_topk(attn, sink, k, 0.03).to(device))
        x = torch.randn(T, N, 8, device=device, dtype=dtype)
        gi, tok = sf.gather_topk(attn, sink, k, x, mu_s=0.03, backend="torch")
        ri, rtok = R.gather_topk(attn, sink, k, x, 0.03)
        assert torch.equal(gi, ri.to(device)) and torch.equal(tok, rtok.to(device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,N,D", [(2, 196, 3584), (9, 49, 64), (5, 729, 72)])
def test_temporal(dtype, T, N, D, device):
    base = torch.randn(1, N, D, device=device)
    x = (base + 0.5 * torch.randn(T, N, D, device=device)).to(dtype)[:, :, :]  # cosines spread around τ
    sink = torch.rand(N, device=device)
    c = sf.adjacent_cosine(x, backend="torch")
    torch.testing.assert_close(c, R.adjacent_cosine(x), rtol=1e-5, atol=1e-5)
    # Masks: identical away from the threshold (|c + μ_t·s − τ| > 1e-5 avoids rounding flips).
    ref_c = R.adjacent_cosine(x).double() + 0.07 * sink.double()
    clear = (ref_c - 0.8).abs() > 1e-5
    m = sf.static_mask(x, sink, tau=0.8, mu_t=0.07, backend="torch")
    assert torch.equal(m[clear], R.static_mask(x, sink, 0.8, 0.07)[clear])
    bounds = torch.tensor([[0, T - 1], [0, 0], [T // 2, T - 1]], device=device)
    seg = sf.segment_static_mask(x, sink, bounds, tau=0.8, mu_t=0.07, backend="torch")
    ref = R.segment_static_mask(x, sink, bounds, 0.8, 0.07)
    clear_cols = clear.all(dim=0)
    assert torch.equal(seg[:, clear_cols], ref[:, clear_cols])


def test_strided_features(device):
    # Features as a slice of a wider buffer (non-contiguous last-but-one dims).
    buf = torch.randn(6, 49, 2, 64, device=device)
    x = buf[:, :, 1]
    assert not x.is_contiguous()
    torch.testing.assert_close(sf.adjacent_cosine(x, backend="torch"), R.adjacent_cosine(x), rtol=1e-5, atol=1e-5)
