"""apply_stop with every registered host method: the LLM's prefill carries exactly what
:func:`stop_fast.prune` returns for the same features and scores.

Tiny random models, nothing downloaded (see test_integration_llava.py / _qwen.py for the
shapes). FastVid gets its global vectors from a SigLIP pooling head passed as ``global_head``
(compared with the head applied by hand to the feature layer's hidden states, atol 1e-6) or
falls back to the frame mean (one warning). PruneVid needs 14×14 pooled tokens, so it runs on a
27×27-patch tower pooled to 196. Tolerances as in test_integration_llava.py.
"""
import functools
import warnings

import pytest
import torch
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                          SiglipVisionConfig)
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

import test_integration_llava as L
import test_integration_qwen as Q
from stop_fast.integrations import apply_stop, last_pruned, remove_stop


@pytest.mark.parametrize("method,ratio", [("fastvid", 0.5), ("flashvid", 0.25), ("holitom", 0.25)])
def test_llava_prefill_carries_pruned_tokens(device, recorder, method, ratio):
    model = L._tiny_model(device)
    try:
        with warnings.catch_warnings():      # FastVid's fallback warns once per process
            warnings.simplefilter("ignore", UserWarning)
            L._check_prefill(model, recorder, device, method, ratio)
        records = last_pruned(model)
        assert len(records) == 1 and records[0].grid == (4, 4)
        assert torch.equal(records[0].pruned.positions, recorder.calls[-1][3].positions)
        torch.testing.assert_close(records[0].attention, recorder.calls[-1][1])
    finally:
        remove_stop(model)


def _head(model):
    """A SigLIP post-layernorm + attention-pooling head of the tiny tower's width."""
    vc = model.config.vision_config
    cfg = SiglipVisionConfig(hidden_size=vc.hidden_size, intermediate_size=vc.intermediate_size,
                             num_attention_heads=vc.num_attention_heads)
    torch.manual_seed(7)
    head = torch.nn.Sequential(torch.nn.LayerNorm(vc.hidden_size, eps=vc.layer_norm_eps),
                               SiglipMultiheadAttentionPoolingHead(cfg))
    return head.to(model.device).eval()


def test_llava_fastvid_global_head(device, recorder):
    model = L._tiny_model(device)
    head = _head(model).double()             # another dtype than the model: the patch casts
    pixels, ids = L._video(device, 5), L._prompt(device)
    with torch.no_grad():
        hs = model.model.vision_tower(pixels.flatten(0, 1), output_hidden_states=True).hidden_states
        want = head(hs[-1].double()).float()                       # (T, C): one vector per frame
    try:
        apply_stop(model, method="fastvid", retention_ratio=0.5, global_head=head)
        recorder.calls.clear()
        with torch.no_grad():
            model(input_ids=ids, pixel_values_videos=pixels)
        (feats, scores, kw, pruned), = recorder.calls
        torch.testing.assert_close(kw["global_features"], want, rtol=0, atol=1e-6)
        expected = recorder.prune(feats, scores, method="fastvid", retention_ratio=0.5,
                                  global_features=want)
        assert torch.equal(pruned.positions, expected.positions)
    finally:
        remove_stop(model)
    with pytest.raises(ValueError, match="global_head is only used by method='fastvid'"):
        apply_stop(model, method="holitom", global_head=head)


@functools.lru_cache(maxsize=None)
def _model_196(device: str):
    """SigLIP 27×27 patches (378 px) pooled to 14×14 = 196, as LLaVA-OneVision: PruneVid's grid."""
    vc = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, image_size=378, patch_size=14)
    tc = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=64, max_position_embeddings=4096)
    cfg = LlavaOnevisionConfig(vision_config=vc, text_config=tc, image_token_id=L.IMAGE,
                               video_token_id=L.VIDEO, vision_feature_layer=-1,
                               vision_feature_select_strategy="full", image_grid_pinpoints=[[378, 378]])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(4321)
    model = LlavaOnevisionForConditionalGeneration(cfg).to(device).eval()
    model.generation_config.pad_token_id = L.PAD
    return model


def test_llava_prunevid_prefill(device, recorder):
    model = _model_196(device)
    T = 4
    pixels = torch.randn(1, T, 3, 378, 378, generator=torch.Generator().manual_seed(3)).to(device)
    ids = torch.tensor([[1, 2, *[L.VIDEO] * (T * 196 + 1), 3]], device=device)
    with torch.no_grad():
        feats = model.model.get_video_features(pixels, return_dict=True).pooler_output
    feats = feats[0, :T * 196].view(T, 196, -1)
    expected = recorder.prune(feats, None, method="prunevid", retention_ratio=0.2)
    try:
        apply_stop(model, method="prunevid", retention_ratio=0.2)
        recorder.calls.clear()
        logits, seen = L._forward_seen(model, ids, pixels)
        (got_feats, got_scores, kw, pruned), = recorder.calls
        assert got_scores is None and kw["use_stop"] is False          # no attention, no SToP
        torch.testing.assert_close(got_feats, feats, rtol=0, atol=0)
        assert torch.equal(pruned.positions, expected.positions)
        M = expected.tokens.shape[0]
        assert logits.shape[1] == 2 + M + 1 + 1                        # text + pruned + newline + text
        video = torch.cat((expected.tokens, model.model.image_newline[None]))
        torch.testing.assert_close(seen[0][0][0][2:2 + M + 1], video, rtol=0, atol=1e-6)
    finally:
        remove_stop(model)
    with pytest.raises(ValueError, match="SToP"):
        apply_stop(model, method="prunevid", retention_ratio=0.2, use_stop=True)


@pytest.mark.parametrize("method,ratio", [("fastvid", 0.5), ("holitom", 0.25), ("flashvid", 0.25),
                                          ("visionzip", 0.25)])
def test_qwen_prefill_every_method(device, recorder, method, ratio):
    model = Q._tiny_model(device)
    pixels, grid = video = Q._video(device, Q.GRID_A, 0)
    kw = Q._inputs(model, device, [((1, 5), (3, 4, 6))], [video])
    t, n = Q._merged(Q.GRID_A)
    feats = Q._unpatched_features(model, pixels, grid)[0].view(t, n, -1)
    scores, metric = Q._hand_scores(model, pixels, grid)
    g = feats.float().mean(dim=1)                                   # SPEC §14: mean merged token
    extra = {"fastvid": {"global_features": g}}.get(method, {})
    try:
        apply_stop(model, method=method, retention_ratio=ratio)
        with torch.no_grad():
            logits = model(**kw).logits
        (got_feats, got_scores, got_kw, pruned), = recorder.calls
        if method == "fastvid":
            assert got_kw["mu_s"] == 0.02                           # attention scale (SPEC §14)
            torch.testing.assert_close(got_kw["global_features"], g, rtol=0, atol=1e-6)
        if method == "visionzip":
            extra = {"metric": got_kw["metric"]}                    # head-mean keys: test_integration_qwen
        torch.testing.assert_close(got_scores, scores, rtol=1e-4, atol=1e-7)
        expected = recorder.prune(got_feats, got_scores, method=method, retention_ratio=ratio, **extra)
        assert torch.equal(pruned.positions, expected.positions)
        M = expected.tokens.shape[0]
        assert logits.shape[1] == kw["input_ids"].shape[1] - t * n + M
        assert last_pruned(model)[0].grid == (Q.GRID_A[1] // 2, Q.GRID_A[2] // 2)
    finally:
        remove_stop(model)
    del metric


def test_nan_pixels_are_named(device):
    model = L._tiny_model(device)
    pixels = L._video(device, 0)
    pixels[0, 1, 0, 3, 3] = float("nan")
    try:
        apply_stop(model, method="visionzip", retention_ratio=0.25)
        with pytest.raises(ValueError, match="pixel_values_videos contains NaN"):
            with torch.no_grad():
                model(input_ids=L._prompt(device), pixel_values_videos=pixels)
    finally:
        remove_stop(model)


@pytest.mark.parametrize("method", ["holitom", "flashvid", "fastvid"])
def test_llava_exact_budget_prefill(device, method):
    """apply_stop(..., exact_budget=True): the prefill holds exactly token_budget(...) video
    tokens (+ the newline), the count vLLM's placeholders are sized to."""
    from stop_fast import token_budget
    model = L._tiny_model(device)
    pixels, ids = L._video(device, 0), L._prompt(device)
    try:
        with warnings.catch_warnings():      # FastVid's fallback warns once per process
            warnings.simplefilter("ignore", UserWarning)
            apply_stop(model, method=method, retention_ratio=0.25, exact_budget=True)
            logits, _ = L._forward_seen(model, ids, pixels)
        B = token_budget(method, L.T, L.POOLED, 0.25)
        assert last_pruned(model)[0].pruned.num_tokens == B
        assert logits.shape[1] == 2 + 3 + B + 1                    # text + pruned + newline
    finally:
        remove_stop(model)
