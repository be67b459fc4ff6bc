"""apply_stop / remove_stop on a tiny randomly initialized LLaVA-OneVision (nothing downloaded).

SigLIP tower: 98 px frames, patch 14 → 7×7 = 49 tokens (odd, like the real 27×27), pooled by the
model to 4×4 = 16; 2 blocks, 2 heads of dim 16. Qwen2 LLM: width 32, 2 layers, vocab 64.
Tolerances: hand-computed scores (float64 softmax) vs the engine's (float32) rtol 1e-4 /
atol 1e-7; tokens the LLM receives vs stop_fast.prune's on the same features: atol 1e-6 (same
values, only the dtype round trip through the embedding); batched vs one-by-one videos:
pruning identical (positions exact, tokens atol 1e-5), prefill embeddings atol 1e-5, greedy
tokens exact; remove_stop vs never patched: bitwise.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (CLIPVisionConfig, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                          Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig)

from stop_fast.integrations import apply_stop, remove_stop

VIDEO, IMAGE, PAD = 63, 62, 0
T, GRID, POOLED = 4, 7, 16          # frames, ViT grid side, pooled tokens per frame
FULL = T * POOLED + 1               # placeholders per video as the processor writes them


@functools.lru_cache(maxsize=None)
def _tiny_model(device: str, tower: str = "siglip"):
    """SigLIP tower (no CLS, strategy "full", as LLaVA-OneVision ships) or a CLIP tower whose CLS
    token the "default" strategy drops before the projector."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=GRID * 14, patch_size=14)
    vc = SiglipVisionConfig(**vision) if tower == "siglip" else CLIPVisionConfig(**vision)
    tc = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=64, max_position_embeddings=1024)
    cfg = LlavaOnevisionConfig(vision_config=vc, text_config=tc, image_token_id=IMAGE, video_token_id=VIDEO,
                               vision_feature_layer=-1,
                               vision_feature_select_strategy="full" if tower == "siglip" else "default",
                               image_grid_pinpoints=[[GRID * 14, GRID * 14]])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(1234)
    model = LlavaOnevisionForConditionalGeneration(cfg).to(device).eval()
    model.generation_config.pad_token_id = PAD
    return model


@pytest.fixture
def model(device):
    m = _tiny_model(device)
    yield m
    remove_stop(m)


def _video(device, seed, static=False):
    g = torch.Generator().manual_seed(seed)
    if static:  # one frame with faint noise: HoliTom merges most of it over time
        frames = torch.randn(1, 1, 3, GRID * 14, GRID * 14, generator=g).expand(1, T, -1, -1, -1)
        frames = frames + 0.01 * torch.randn(1, T, 3, GRID * 14, GRID * 14, generator=g)
    else:
        frames = torch.randn(1, T, 3, GRID * 14, GRID * 14, generator=g)
    return frames.to(device)


def _prompt(device, head=(1, 2), tail=(3, 4, 5)):
    return torch.tensor([[*head, *[VIDEO] * FULL, *tail]], device=device)


def _llm_inputs(model):
    """Collects the inputs_embeds / attention_mask the language model receives (prefill first)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs["inputs_embeds"].detach().clone(), kwargs.get("attention_mask")))
    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def _forward_seen(model, ids, pixels):
    """One forward on a video prompt: (logits, what the language model received)."""
    seen, handle = _llm_inputs(model)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values_videos=pixels).logits
    finally:
        handle.remove()
    return logits, seen


def _blocks(model):
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers   # older transformers nest it


def _hand_scores(model, pixels, with_metric):
    """SPEC §2 from the fed layer's own q/k projections, float64 softmax, CLS column dropped
    when the feature strategy drops it, pooled 7×7 → 4×4."""
    tower = model.model.vision_tower
    x = pixels.flatten(0, 1)
    with torch.no_grad():
        hs = tower(x, output_hidden_states=True).hidden_states
        block = _blocks(model)[-1]                      # produces hidden_states[-1]
        h = block.layer_norm1(hs[-2])
        H = block.self_attn.num_heads
        q = block.self_attn.q_proj(h).unflatten(-1, (H, -1)).transpose(1, 2).double()
        k = block.self_attn.k_proj(h).unflatten(-1, (H, -1)).transpose(1, 2).double()
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    a = p.mean(dim=(1, 2))                                # (T, 49 [+ CLS])
    k = k.mean(dim=1)
    if model.config.vision_feature_select_strategy == "default":
        a, k = a[:, 1:], k[:, 1:]

    def pool(v):                                          # (T, 49, C) → (T, 16, C)
        grid = v.view(T, GRID, GRID, -1).permute(0, 3, 1, 2)
        out = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)
        return out.permute(0, 2, 3, 1).reshape(T, POOLED, -1)

    metric = pool(k).float() if with_metric else None
    return pool(a[..., None])[..., 0].float(), metric


@pytest.mark.parametrize("tower", ["siglip", "clip"])
@pytest.mark.parametrize("method,ratio", [("holitom", 0.25), ("visionzip", 0.25)])
def test_prefill_carries_pruned_tokens(device, recorder, method, ratio, tower):
    model = _tiny_model(device, tower)
    try:
        _check_prefill(model, recorder, device, method, ratio)
    finally:
        remove_stop(model)


def _check_prefill(model, recorder, device, method, ratio):
    pixels, ids = _video(device, 0), _prompt(device)
    with torch.no_grad():
        feats = model.model.get_video_features(pixels, return_dict=True).pooler_output
    feats = feats[0, :T * POOLED].view(T, POOLED, -1)
    scores, metric = _hand_scores(model, pixels, method == "visionzip")
    extra = {"metric": metric} if metric is not None else {}
    expected = recorder.prune(feats, scores, method=method, retention_ratio=ratio, use_stop=True, **extra)

    apply_stop(model, method=method, retention_ratio=ratio)
    recorder.calls.clear()                                        # drop apply_stop's option check
    logits, seen = _forward_seen(model, ids, pixels)

    (got_feats, got_scores, kw, pruned), = recorder.calls
    torch.testing.assert_close(got_feats, feats, rtol=0, atol=0)
    torch.testing.assert_close(got_scores, scores, rtol=1e-4, atol=1e-7)
    if metric is not None:
        torch.testing.assert_close(kw["metric"], metric, rtol=1e-4, atol=1e-6)
    assert torch.equal(pruned.positions, expected.positions)
    M = expected.tokens.shape[0]
    assert M < T * POOLED
    assert logits.shape[1] == 2 + 3 + M + 1                       # text + pruned + newline
    embeds = seen[0][0][0]
    video = torch.cat((expected.tokens, model.model.image_newline[None]))
    torch.testing.assert_close(embeds[2:2 + M + 1], video, rtol=0, atol=1e-6)
    text = model.get_input_embeddings()(ids[0, [0, 1, -3, -2, -1]])
    torch.testing.assert_close(embeds[[0, 1, -3, -2, -1]], text, rtol=0, atol=0)


def test_generate_and_remove_restore_bitwise(model, recorder, device):
    pixels, ids = _video(device, 1), _prompt(device)
    labels = ids.masked_fill(ids == VIDEO, -100)
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values_videos=pixels, labels=labels)
    gen_before = model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=5, do_sample=False)
    keys_before = set(model.__dict__), set(model.model.__dict__)

    apply_stop(model, method="holitom", retention_ratio=0.25)
    recorder.calls.clear()
    seen, handle = _llm_inputs(model)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values_videos=pixels, labels=labels)
        gen = model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=5, do_sample=False)
    finally:
        handle.remove()
    M = recorder.calls[0][3].tokens.shape[0]
    assert out.logits.shape[1] == ids.shape[1] - FULL + M + 1
    assert torch.isfinite(out.loss)
    prefill = seen[1][0]                                          # first LLM call of generate
    assert prefill.shape[1] == ids.shape[1] - FULL + M + 1
    assert all(s[0].shape[1] == 1 for s in seen[2:])              # then one token per step
    assert gen.shape == (1, ids.shape[1] + 5) and torch.equal(gen[:, :ids.shape[1]], ids)
    assert len(recorder.calls) == 2                               # generate ran the tower once

    remove_stop(model)
    assert (set(model.__dict__), set(model.model.__dict__)) == keys_before
    with torch.no_grad():
        after = model(input_ids=ids, pixel_values_videos=pixels, labels=labels)
    gen_after = model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=5, do_sample=False)
    assert torch.equal(after.logits, before.logits) and torch.equal(after.loss, before.loss)
    assert torch.equal(gen_after, gen_before)


def test_batch_of_videos_matches_one_by_one(model, recorder, device):
    pix = [_video(device, 2), _video(device, 3, static=True)]
    rows = [_prompt(device, head=(7,), tail=(3, 4)), _prompt(device, head=(1, 2, 9, 8), tail=(5, 6, 3))]
    apply_stop(model, method="holitom", retention_ratio=0.3)   # 20 vs 16 tokens
    recorder.calls.clear()

    singles, single_embeds = [], []
    for p, r in zip(pix, rows):
        seen, handle = _llm_inputs(model)
        try:
            singles.append(model.generate(input_ids=r, pixel_values_videos=p, max_new_tokens=4,
                                          do_sample=False))
        finally:
            handle.remove()
        single_embeds.append(seen[0][0][0])
    single_pruned = [c[3] for c in recorder.calls]
    recorder.calls.clear()

    width = max(r.shape[1] for r in rows)
    ids = torch.full((2, width), PAD, device=device)
    mask = torch.zeros(2, width, dtype=torch.long, device=device)
    for i, r in enumerate(rows):                                  # left padding
        ids[i, width - r.shape[1]:], mask[i, width - r.shape[1]:] = r[0], 1
    seen, handle = _llm_inputs(model)
    try:
        batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.cat(pix),
                               max_new_tokens=4, do_sample=False)
    finally:
        handle.remove()

    batch_pruned = [c[3] for c in recorder.calls]
    assert len(batch_pruned) == 2
    counts = [p.tokens.shape[0] for p in single_pruned]
    assert counts[0] != counts[1], "the two videos should prune to different lengths"
    for s, b in zip(single_pruned, batch_pruned):
        assert torch.equal(s.positions, b.positions)
        torch.testing.assert_close(b.tokens, s.tokens, rtol=0, atol=1e-5)
    assert torch.equal(batch[:, :width], ids)
    prefill, prefill_mask = seen[0]
    for i in range(2):
        n = single_embeds[i].shape[0]
        assert int(prefill_mask[i].sum()) == n
        torch.testing.assert_close(prefill[i, -n:], single_embeds[i], rtol=0, atol=1e-5)
        assert torch.equal(batch[i, width:], singles[i][0, rows[i].shape[1]:])


def test_vision_tower_never_runs_eager_attention(model, recorder, device, monkeypatch):
    import transformers.models.siglip.modeling_siglip as siglip

    def no_eager(*a, **k):
        raise AssertionError("eager attention ran in the vision tower")
    monkeypatch.setattr(siglip, "eager_attention_forward", no_eager)
    sdpa_calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*a, **k):
        sdpa_calls.append(a[0].shape)
        return real_sdpa(*a, **k)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    from stop_fast.integrations import attention_lse as AL
    lse_calls, real_lse = [], AL.attention_with_lse
    monkeypatch.setattr(AL, "attention_with_lse", lambda *a, **k: lse_calls.append(a[0].shape) or real_lse(*a, **k))
    weights = []
    handles = [layer.self_attn.register_forward_hook(lambda m, a, o: weights.append(o[1]))
               for layer in _blocks(model)]
    apply_stop(model, method="visionzip", retention_ratio=0.25)
    recorder.calls.clear()
    try:
        assert model.config.vision_config._attn_implementation == "sdpa"
        with torch.no_grad():
            model(input_ids=_prompt(device), pixel_values_videos=_video(device, 4))
    finally:
        for h in handles:
            h.remove()
    assert len(weights) == 2 and all(w is None for w in weights)      # no attention maps returned
    # The unscored block via SDPA; the scored one via SDPA's kernel that also returns the
    # log-sum-exp, which the score reuses (one QKᵀ sweep fewer).
    assert sum(s[0] == T for s in sdpa_calls) == 1 and sum(s[0] == T for s in lse_calls) == 1
    assert len(recorder.calls) == 1


def test_images_and_text_untouched(model, device):
    g = torch.Generator().manual_seed(5)
    pixel_values = torch.randn(1, 2, 3, GRID * 14, GRID * 14, generator=g).to(device)
    sizes = torch.tensor([[GRID * 14, GRID * 14]], device=device)
    with torch.no_grad():
        n = model.model.get_image_features(pixel_values=pixel_values, image_sizes=sizes,
                                           return_dict=True).pooler_output[0].shape[0]
    ids = torch.tensor([[1, 2, *[IMAGE] * n, 3]], device=device)
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=pixel_values, image_sizes=sizes).logits
        text_before = model(input_ids=ids[:, :2]).logits
        apply_stop(model, method="holitom", retention_ratio=0.25)
        after = model(input_ids=ids, pixel_values=pixel_values, image_sizes=sizes).logits
        text_after = model(input_ids=ids[:, :2]).logits
    assert torch.equal(before, after) and torch.equal(text_before, text_after)


def test_errors(model, device):
    tiny_lm = Qwen2ForCausalLM(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, vocab_size=32))
    for bad in (tiny_lm, torch.nn.Linear(2, 2)):
        with pytest.raises(TypeError, match="LlavaOnevisionForConditionalGeneration"):
            apply_stop(bad)
    for r in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="retention_ratio"):
            apply_stop(model, retention_ratio=r)
    with pytest.raises(ValueError, match="method"):
        apply_stop(model, method="tome")
    with pytest.raises(TypeError, match="option"):
        apply_stop(model, method="visionzip", tau=0.5)
    # 16 pooled tokens per frame: VisionZip at r = 0.05 would keep none of a frame's tokens.
    with pytest.raises(ValueError, match="keeps"):
        apply_stop(model, method="visionzip", retention_ratio=0.05)
    assert not hasattr(model, "_stop_state") and "forward" not in model.__dict__
    apply_stop(model, method="holitom", retention_ratio=0.25)
    wrong = torch.tensor([[1, *[VIDEO] * (FULL - 3), 2]], device=device)
    with pytest.raises(ValueError, match="placeholder"):
        model(input_ids=wrong, pixel_values_videos=_video(device, 6))


def test_beam_search(model, device):
    pix = torch.cat([_video(device, 2), _video(device, 3, static=True)])
    ids = torch.cat([_prompt(device), _prompt(device, head=(5, 6))])
    apply_stop(model, method="visionzip", retention_ratio=0.25)   # same length for every video
    batch = model.generate(input_ids=ids, pixel_values_videos=pix, max_new_tokens=3, num_beams=2)
    for i in range(2):
        one = model.generate(input_ids=ids[i:i + 1], pixel_values_videos=pix[i:i + 1], max_new_tokens=3,
                             num_beams=2)
        assert torch.equal(batch[i], one[0])
    apply_stop(model, method="holitom", retention_ratio=0.3)      # 20 vs 16 tokens
    with pytest.raises(ValueError, match="same length"):
        model.generate(input_ids=ids, pixel_values_videos=pix, max_new_tokens=3, num_beams=2)


def test_prompt_fitting_layouts(device):
    """The placeholder cut on its own: right padding, labels, position ids, embeddings-only prompts."""
    from stop_fast.integrations._common import VideoPlan, fit_prompt

    V, full = 9, 4                                   # token id, placeholders per video before pruning
    plan = VideoPlan(full=full, kept=(2, 3))         # video 0 keeps 2, video 1 keeps 3 (newline incl.)
    ids = torch.tensor([[5, V, V, V, V, 6, 0, 0],    # right padded
                        [7, 8, V, V, V, V, 1, 2]], device=device)
    mask = (torch.arange(8, device=device) < torch.tensor([[6], [8]], device=device)).long()
    inputs = dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill((ids == V) | (mask == 0), -100),
                  position_ids=torch.arange(8, device=device).expand(2, -1))
    embed = torch.nn.Embedding(10, 3).to(device)
    out = fit_prompt(inputs, plan, fitted=5, token_id=V, pad_id=0, embed=embed)
    assert out["input_ids"].tolist() == [[5, V, V, 6, 0, 0, 0], [7, 8, V, V, V, 1, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert out["labels"].tolist() == [[5, -100, -100, 6, -100, -100, -100], [7, 8, -100, -100, -100, 1, 2]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 0, 0, 0], list(range(7))]
    assert fit_prompt(out, plan, fitted=5, token_id=V, pad_id=0, embed=embed) is out   # already fitted

    # Embeddings only, no mask: rows end up with different lengths → left padding and a mask appear.
    flat = torch.tensor([[5, V, V, V, V, V, V, V, V, 6]], device=device)   # two videos in one row
    two = torch.cat((flat, torch.tensor([[1] * 10], device=device)))
    plan2 = VideoPlan(full=full, kept=(2, 3))
    with torch.no_grad():
        got = fit_prompt(dict(inputs_embeds=embed(flat)), plan2, fitted=5, token_id=V, pad_id=0, embed=embed)
    with torch.no_grad():
        assert torch.equal(got["inputs_embeds"], embed(torch.tensor([[5, V, V, V, V, V, 6]], device=device)))
    assert "attention_mask" not in got
    with pytest.raises(ValueError, match="placeholder"):
        fit_prompt(dict(input_ids=two), VideoPlan(full=full, kept=(2, 3, 1)), fitted=6, token_id=V, pad_id=0,
                   embed=embed)
