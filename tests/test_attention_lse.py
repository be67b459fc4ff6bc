"""The scored ViT block's attention hands its row log-sum-exp to the score kernel.

CPU only (the CUDA kernels are chosen by the same code but need a GPU to run). Real shapes of
SPEC §1: head dim 72 (SigLIP-so400m) and 80 (Qwen2.5-VL), N = 196 and 729, strided (B, N, H, d)
views of one fused projection output. Tolerances: LSE vs float64 at atol 1e-5 (fp32) / 1e-4
(16-bit: inputs are rounded before both sides, only accumulation differs); attention output vs
SDPA of the same dtype at that dtype's default tolerance (on CPU it is the same kernel, equal in
practice). An LSE off by δ scales its row's probabilities by e^−δ, so scores with the reused
LSE are compared, to the recomputed ones and to float64, at rtol = the LSE tolerance, atol 1e-7.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from stop_fast import column_mean_attention, reference
from stop_fast.integrations import attention_lse as AL
from stop_fast.integrations._capture import QKCapture, encoder_layers, feature_block, frame_scores

LSE_ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def _qkv(B, N, H, d, dtype, seed=0):
    """q, k, v as (B, H, N, d) views of one (B, N, 3·H·d) projection, as a ViT's forward makes them."""
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(B, N, 3 * H * d, generator=g)).to(dtype)
    return [t.unflatten(-1, (H, d)).transpose(1, 2) for t in x.split(H * d, dim=-1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d,N", [(72, 729), (80, 196), (72, 196), (80, 729)])
def test_lse_kernel_matches_float64(d, N, dtype):
    q, k, v = _qkv(2, N, 3, d, dtype, seed=d + N)
    scale = None if N == 729 else 0.05           # the default d^-1/2 and an explicit scale
    got = AL.attention_with_lse(q, k, v, scale)
    assert got is not None, "the CPU kernel with LSE must be available on torch >= 2.4"
    out, lse = got
    s = (q.double() @ k.double().transpose(-1, -2)) * (d ** -0.5 if scale is None else scale)
    assert lse.shape == (2, 3, N) and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), s.logsumexp(-1), rtol=0, atol=LSE_ATOL[dtype])
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=scale))
    # The LSE as the score kernel takes it: same scores as without, and as the float64 reference.
    qb, kb = q.transpose(1, 2), k.transpose(1, 2)                 # (B, N, H, d) strided views
    with_lse = column_mean_attention(qb, kb, scale=scale, layout="bnhd", lse=lse, backend="torch")
    without = column_mean_attention(qb, kb, scale=scale, layout="bnhd", backend="torch")
    tol = dict(rtol=LSE_ATOL[dtype], atol=1e-7)
    torch.testing.assert_close(with_lse, without, **tol)
    torch.testing.assert_close(with_lse, reference.column_mean_attention(q, k, scale), **tol)


def test_lse_feeds_triton_kernel():
    q, k, v = _qkv(1, 196, 2, 72, torch.float32, seed=3)
    _, lse = AL.attention_with_lse(q, k, v)
    qb, kb = q.transpose(1, 2), k.transpose(1, 2)
    got = column_mean_attention(qb, kb, layout="bnhd", lse=lse, backend="triton")
    torch.testing.assert_close(got, reference.column_mean_attention(q, k), rtol=1e-5, atol=1e-7)


def test_lse_kernel_declines_what_it_cannot_do():
    q, k, v = _qkv(1, 16, 4, 8, torch.float32)
    assert AL.attention_with_lse(q, k[:, :2], v[:, :2]) is None            # grouped KV heads
    assert AL.attention_with_lse(q, k.double(), v) is None                  # mixed dtypes
    assert AL.attention_with_lse(q.to("meta"), k.to("meta"), v.to("meta")) is None   # no kernel there


def _tower(kind="siglip", d=72, layers=3, attn="sdpa", dtype=torch.float32):
    cfg = dict(hidden_size=2 * d, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
               image_size=98, patch_size=14)
    cfg = SiglipVisionConfig(**cfg) if kind == "siglip" else CLIPVisionConfig(**cfg)
    cfg._attn_implementation = attn
    torch.manual_seed(7)
    return (SiglipVisionModel if kind == "siglip" else CLIPVisionModel)(cfg).eval().to(dtype)


def _run(tower, pixels, lse):
    attn = feature_block(encoder_layers(tower), -1)
    with torch.no_grad(), QKCapture(attn, lse=lse) as cap:
        hidden = tower(pixels, output_hidden_states=True).hidden_states
    return hidden, cap


@pytest.mark.parametrize("kind,attn,dtype", [("siglip", "sdpa", torch.float32), ("siglip", "eager", torch.float32),
                                             ("clip", "sdpa", torch.float32), ("siglip", "sdpa", torch.bfloat16)])
def test_tower_scores_reuse_lse(kind, attn, dtype):
    tower = _tower(kind, attn=attn, dtype=dtype)
    pixels = torch.randn(3, 3, 98, 98, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        plain = tower(pixels, output_hidden_states=True).hidden_states      # never patched
    hidden, cap = _run(tower, pixels, lse=True)
    N = 49 + (kind == "clip")
    assert cap.lse is not None and cap.lse.shape == (3, 2, N)
    assert not isinstance(feature_block(encoder_layers(tower), -1).config, AL._ConfigView)   # restored
    for a, b in zip(hidden, plain):      # every layer's output, the scored one included
        # SDPA on CPU runs the very kernel that returns the LSE: bitwise equal; eager: rounding only.
        torch.testing.assert_close(a, b, **({} if attn == "eager" else dict(rtol=0, atol=0)))
    _, off = _run(tower, pixels, lse=False)
    assert off.lse is None
    pool = lambda t: t                                                        # noqa: E731
    scores, metric = frame_scores(cap, kind == "clip", pool, True)
    again, metric0 = frame_scores(off, kind == "clip", pool, True)
    tol = dict(rtol=LSE_ATOL[dtype], atol=1e-7)
    torch.testing.assert_close(scores, again, **tol)
    torch.testing.assert_close(metric, metric0, rtol=0, atol=0)
    q, k = (t.transpose(1, 2) for t in cap.heads())
    hand = reference.column_mean_attention(q, k)[:, int(kind == "clip"):]
    torch.testing.assert_close(scores, hand, **tol)


def test_only_the_scored_block_is_rerouted(monkeypatch):
    tower = _tower(layers=3)
    pixels = torch.randn(2, 3, 98, 98)
    sdpa_calls, lse_calls = [], []
    real_sdpa, real_lse = F.scaled_dot_product_attention, AL.attention_with_lse
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: sdpa_calls.append(1) or real_sdpa(*a, **kw))
    monkeypatch.setattr(AL, "attention_with_lse", lambda *a, **kw: lse_calls.append(1) or real_lse(*a, **kw))
    _, cap = _run(tower, pixels, lse=True)
    assert cap.lse is not None and len(sdpa_calls) == 2 and len(lse_calls) == 1
    assert tower.config._attn_implementation == "sdpa"


def test_mask_falls_back_without_lse():
    tower = _tower()
    attn = feature_block(encoder_layers(tower), -1)
    h = torch.randn(2, 49, 144)
    mask = torch.zeros(2, 1, 49, 49)
    mask[..., 40:] = float("-inf")
    with torch.no_grad():
        want = attn(h, attention_mask=mask)[0]
        with AL.capture_lse(attn) as record:
            got = attn(h, attention_mask=mask)[0]
            assert record.lse is None                   # fell back: the score recomputes its LSE
            attn(h)
            assert record.lse is not None               # the next plain call records again
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_switch_and_restore_on_error():
    tower = _tower()
    attn = feature_block(encoder_layers(tower), -1)
    config = attn.config
    AL.set_attention_lse(False)
    try:
        _, cap = _run(tower, torch.randn(1, 3, 98, 98), lse=None)
        assert cap.lse is None
    finally:
        AL.set_attention_lse(True)
    with pytest.raises(RuntimeError, match="boom"), AL.capture_lse(attn):
        assert attn.config is not config
        raise RuntimeError("boom")
    assert attn.config is config and not attn._forward_pre_hooks


def test_cuda_backend_order_is_by_dtype():
    # Which CUDA kernel each input would take (selection only; the kernels need a GPU).
    q = torch.empty(1, 2, 4, 72, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AL._cuda_flash(q, q, q, None) is None          # fp32: no flash kernel
        assert AL._cuda_flash(q.half()[..., :60], q.half()[..., :60], q.half()[..., :60], None) is None  # d % 8
        assert AL._flash_attn_package(q, q, q, None) is None
    assert [f.__name__ for f in AL._BACKENDS["cuda"]] == ["_cuda_flash", "_flash_attn_package", "_cuda_efficient"]


def test_qwen_full_attention_block_reuses_lse():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from stop_fast.integrations._qwen_vision import QKVCapture, merged_scores, scored_attention, window_reverse
    cfg = Qwen2_5_VLVisionConfig(depth=3, hidden_size=160, out_hidden_size=32, num_heads=2, intermediate_size=64,
                                 patch_size=2, temporal_patch_size=2, spatial_merge_size=2, window_size=8,
                                 fullatt_block_indexes=[0, 1], tokens_per_second=2)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(3)
    visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).eval()
    grids = [[2, 6, 8], [3, 8, 8]]          # two videos, 5 temporal groups (head dim 80)
    grid = torch.tensor(grids)
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 2 * 2)
    reverse = window_reverse(visual, grid, {})
    runs = {}
    for lse in (True, False):
        with torch.no_grad(), QKVCapture(scored_attention(visual), lse=lse) as cap:
            out = visual(pixels, grid_thw=grid).last_hidden_state
        runs[lse] = out, cap, merged_scores(cap, grids, 2, reverse, True)
    (out, cap, (scores, metric)), (out0, cap0, (scores0, metric0)) = runs[True], runs[False]
    assert cap.lse is not None and cap.lse.shape == (1, 2, pixels.shape[0]) and cap0.lse is None
    torch.testing.assert_close(out, out0, rtol=0, atol=0)        # same CPU kernel, bitwise
    torch.testing.assert_close(scores, scores0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(metric, metric0, rtol=0, atol=0)
    q, k = cap.qk()                                               # (L, H, d), window order
    hand, start = [], 0
    for t, h, w in grids:
        qv, kv = (x[start:start + t * h * w].view(t, h * w, 2, -1).transpose(1, 2) for x in (q, k))
        hand.append(reference.column_mean_attention(qv, kv).flatten())
        start += t * h * w
    hand = torch.cat(hand).view(-1, 4).mean(dim=1)[reverse]
    torch.testing.assert_close(scores, hand, rtol=1e-5, atol=1e-7)
