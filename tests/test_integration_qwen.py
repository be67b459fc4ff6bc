"""apply_stop / remove_stop on a tiny randomly initialized Qwen2.5-VL (nothing downloaded).

Vision tower: patch 2, temporal patch 2, 2×2 merge, 3 blocks of which 0 and 1 attend fully
(block 1 is scored) and block 2 in windows of 2×2 merged tokens, 2 heads of dim 16. Videos:
grid (T', H, W) = (2, 6, 8) → 2 temporal groups × 12 merged tokens (the 3×4 merged grid does
not divide into windows evenly) and (3, 8, 8) → 3 × 16. LLM: width 32, 2 layers, M-RoPE
sections [2, 3, 3], vocab 64.
Tolerances: hand-computed scores (float64 softmax, RoPE computed here from the patch grid) vs
the engine's rtol 1e-4 / atol 1e-7, metric rtol 1e-4 / atol 1e-6; tokens the LLM receives vs
stop_fast.prune's on the model's own features atol 1e-6; position ids exact; batched vs
one-by-one: pruning identical (positions exact, tokens atol 1e-5), prefill embeddings atol 1e-5,
greedy tokens exact; remove_stop vs never patched: bitwise.
"""
import functools
import inspect
import math

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from stop_fast.integrations import apply_stop, remove_stop

VIDEO, IMAGE, VS, VE, PAD = 60, 61, 62, 63, 0
PATCH_DIM = 3 * 2 * 2 * 2            # channels × temporal patch × patch × patch
GRID_A, GRID_B = (2, 6, 8), (3, 8, 8)
WINDOW = 2                            # merged tokens per window side


@functools.lru_cache(maxsize=None)
def _tiny_model(device: str):
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=3, hidden_size=32, out_hidden_size=32, num_heads=2, intermediate_size=64,
                           patch_size=2, temporal_patch_size=2, spatial_merge_size=2,
                           window_size=WINDOW * 2 * 2, fullatt_block_indexes=[0, 1], tokens_per_second=2),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=64, intermediate_size=64, bos_token_id=None, eos_token_id=None,
                         pad_token_id=PAD, max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VS, vision_end_token_id=VE)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(4321)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(device).eval()
    model.generation_config.pad_token_id = PAD
    return model


@pytest.fixture
def model(device):
    m = _tiny_model(device)
    yield m
    remove_stop(m)


def _merged(grid):
    """(temporal groups, merged tokens per group) of a (T', H, W) grid, a tuple or a (1, 3) tensor."""
    t, h, w = grid[0].tolist() if isinstance(grid, torch.Tensor) else grid
    return t, h * w // 4


def _video(device, grid, seed):
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    return torch.randn(t * h * w, PATCH_DIM, generator=g).to(device), torch.tensor([grid], device=device)


def _inputs(model, device, rows, videos, image=None):
    """Left-padded prompts: each row is (head, tail) around one video's placeholders (plus an
    image before the video in row 0 when ``image`` is given)."""
    seqs = []
    for i, ((head, tail), (_, grid)) in enumerate(zip(rows, videos)):
        t, n = _merged(grid)
        pre = [*head, VS, *[IMAGE] * image[2], VE, 2] if (image is not None and i == 0) else [*head]
        seqs.append([*pre, VS, *[VIDEO] * (t * n), VE, *tail])
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD, device=device)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s, device=device), 1
    kw = dict(input_ids=ids, pixel_values_videos=torch.cat([v[0] for v in videos]),
              video_grid_thw=torch.cat([v[1] for v in videos]))
    if len(seqs) > 1:
        kw["attention_mask"] = mask
    if image is not None:
        kw["pixel_values"], kw["image_grid_thw"] = image[0], image[1]
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        kw["mm_token_type_ids"] = ((ids == IMAGE).int() + 2 * (ids == VIDEO).int())
    return kw


def _llm_inputs(model):
    """Collects (inputs_embeds, position_ids) of every language-model call (prefill first)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs["inputs_embeds"].detach().clone(), kwargs.get("position_ids")))
    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _hand_scores(model, pixels, grid):
    """SPEC §2 per temporal group at the last full-attention block, from its own input, with
    the window order and the rotary embedding rebuilt here from the patch grid; merged 2×2."""
    visual = model.model.visual
    block = visual.blocks[max(visual.config.fullatt_block_indexes)]
    seen = []
    handle = block.register_forward_pre_hook(lambda m, a, k: seen.append(a[0]), with_kwargs=True)
    with torch.no_grad():
        visual(pixels, grid_thw=grid)
    handle.remove()
    t, h, w = grid[0].tolist()
    mh, mw = h // 2, w // 2
    # Window order of merged units per group: window row, window column, row and column inside.
    r, c = torch.meshgrid(torch.arange(mh), torch.arange(mw), indexing="ij")
    order = sorted(range(mh * mw), key=lambda u: (r.flatten()[u] // WINDOW, c.flatten()[u] // WINDOW,
                                                  r.flatten()[u] % WINDOW, c.flatten()[u] % WINDOW))
    window_index = torch.cat([torch.tensor(order) + g * mh * mw for g in range(t)])
    x = seen[0].view(-1, 4, seen[0].shape[-1])[torch.argsort(window_index).to(pixels.device)].flatten(0, 1)
    H = visual.config.num_heads
    with torch.no_grad():
        qkv = block.attn.qkv(block.norm1(x)).double().view(x.shape[0], 3, H, -1)
    q, k = qkv[:, 0], qkv[:, 1]                                           # (L, H, d), patch order
    d = q.shape[-1]
    # Patch p of a group sits in merged unit p // 4 at offset ((p % 4) // 2, p % 2).
    p = torch.arange(h * w)
    rows = (p // 4) // mw * 2 + (p % 4) // 2
    cols = (p // 4) % mw * 2 + p % 2
    inv = 1.0 / 10000 ** (torch.arange(0, d // 2, 2, dtype=torch.float64) / (d // 2))
    ang = torch.cat((rows[:, None] * inv, cols[:, None] * inv), dim=-1).repeat(t, 1)
    emb = torch.cat((ang, ang), dim=-1)[:, None].to(q.device)
    q = q * emb.cos() + _rotate_half(q) * emb.sin()
    k = k * emb.cos() + _rotate_half(k) * emb.sin()
    q, k = (v.view(t, h * w, H, d).transpose(1, 2) for v in (q, k))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)    # (t, H, hw, hw)
    a = attn.mean(dim=(1, 2)).view(t, mh * mw, 4).mean(-1)
    metric = k.mean(dim=1).view(t, mh * mw, 4, d).mean(2)
    return a.float(), metric.float()


def _unpatched_features(model, pixels, grid):
    with torch.no_grad():
        return model.model.get_video_features(pixels, grid, return_dict=True).pooler_output


def test_prefill_carries_pruned_tokens_and_positions(model, recorder, device):
    g = torch.Generator().manual_seed(9)
    image = (torch.randn(16, PATCH_DIM, generator=g).to(device), torch.tensor([[1, 4, 4]], device=device), 4)
    pixels, grid = video = _video(device, GRID_A, 0)
    kw = _inputs(model, device, [((1, 5), (3, 4, 6))], [video], image=image)
    t, n = _merged(GRID_A)
    feats = _unpatched_features(model, pixels, grid)[0].view(t, n, -1)
    scores, metric = _hand_scores(model, pixels, grid)
    expected = recorder.prune(feats, scores, method="visionzip", retention_ratio=0.5, metric=metric)
    seen, handle = _llm_inputs(model)
    try:
        with torch.no_grad():
            model(**kw)                                              # unpruned, for its positions
        apply_stop(model, method="visionzip", retention_ratio=0.5)
        with torch.no_grad():
            logits = model(**kw).logits
    finally:
        handle.remove()

    (got_feats, got_scores, got_kw, pruned), = recorder.calls
    torch.testing.assert_close(got_feats, feats, rtol=0, atol=0)
    torch.testing.assert_close(got_scores, scores, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got_kw["metric"], metric, rtol=1e-4, atol=1e-6)
    assert got_kw["mu_s"] == 0.03 and got_kw["use_stop"] is True     # attention scale (SPEC §14)
    assert torch.equal(pruned.positions, expected.positions)
    M = expected.tokens.shape[0]
    assert M == t * 6                                                # int(12 · 0.5) per group
    ids = kw["input_ids"][0]
    start = int((ids == VIDEO).nonzero()[0])
    assert logits.shape[1] == ids.shape[0] - t * n + M
    (full_embeds, full_pos), (embeds, pos) = seen
    embeds = embeds[0]
    torch.testing.assert_close(embeds[start:start + M], expected.tokens, rtol=0, atol=1e-6)
    text = torch.cat((torch.arange(start), torch.arange(start + t * n, ids.shape[0]))).to(device)
    kept = torch.cat((embeds[:start], embeds[start + M:]))
    torch.testing.assert_close(kept, full_embeds[0][text], rtol=0, atol=0)   # text and image untouched
    # Each kept token has the M-RoPE ids of the merged token it came from; all others keep theirs.
    src = start + expected.positions[:, 0] * n + expected.positions[:, 1]
    cols = torch.cat((torch.arange(start, device=device), src, text[start:]))
    assert torch.equal(pos[-3:], full_pos[-3:][:, :, cols])


def _cached_step(model, kw):
    """Prefill with a cache, then one token without position ids: the model places it with its
    stored rope deltas. Returns the position ids the language model got for that token."""
    seen, handle = _llm_inputs(model)
    try:
        with torch.no_grad():
            out = model(**kw, use_cache=True)
            model(input_ids=torch.full_like(kw["input_ids"][:, :1], 5), past_key_values=out.past_key_values,
                  use_cache=True)
    finally:
        handle.remove()
    return seen[-1][1][-3:]


def test_generate_positions_and_remove_restore_bitwise(model, recorder, device):
    kw = _inputs(model, device, [((1, 2), (3, 4, 5))], [_video(device, GRID_B, 1)])
    L = kw["input_ids"].shape[1]
    labels = kw["input_ids"].masked_fill(kw["input_ids"] == VIDEO, -100)
    with torch.no_grad():
        before = model(**kw, labels=labels)
    seen0, handle = _llm_inputs(model)
    gen_before = model.generate(**kw, max_new_tokens=5, do_sample=False)
    step_before = _cached_step(model, kw)
    handle.remove()
    keys_before = set(model.__dict__), set(model.model.__dict__)

    apply_stop(model, method="visionzip", retention_ratio=0.25, use_stop=False)
    seen, handle = _llm_inputs(model)
    try:
        with torch.no_grad():
            out = model(**kw, labels=labels)
        gen = model.generate(**kw, max_new_tokens=5, do_sample=False)
        step = _cached_step(model, kw)
    finally:
        handle.remove()
    assert recorder.calls[0][2]["use_stop"] is False and recorder.calls[0][2]["mu_s"] == 0.0
    M = recorder.calls[0][3].tokens.shape[0]
    t, n = _merged(GRID_B)
    assert M == t * 4
    assert out.logits.shape[1] == L - t * n + M and torch.isfinite(out.loss)
    prefill = seen[1][0]                                          # first LLM call of generate
    assert prefill.shape[1] == L - t * n + M
    assert all(s[0].shape[1] == 1 for s in seen[2:-2])            # then one token per step
    assert gen.shape == (1, L + 5) and torch.equal(gen[:, :L], kw["input_ids"])
    assert len(recorder.calls) == 3                               # forward, generate (once), step
    # Decoding continues exactly where the unpruned prompt's positions left off.
    for (_, p0), (_, p1) in zip(seen0[1:-2], seen[2:-2]):
        assert torch.equal(p1[-3:], p0[-3:])
    # A hand-driven cached step derives its positions from the model's rope deltas.
    assert torch.equal(step, step_before)

    remove_stop(model)
    assert (set(model.__dict__), set(model.model.__dict__)) == keys_before
    with torch.no_grad():
        after = model(**kw, labels=labels)
    gen_after = model.generate(**kw, max_new_tokens=5, do_sample=False)
    assert torch.equal(after.logits, before.logits) and torch.equal(after.loss, before.loss)
    assert torch.equal(gen_after, gen_before)


def test_batch_of_two_videos_matches_one_by_one(model, recorder, device):
    videos = [_video(device, GRID_A, 2), _video(device, GRID_B, 3)]
    rows = [((7,), (3, 4)), ((1, 2, 9), (5, 6, 3))]
    apply_stop(model, method="visionzip", retention_ratio=0.5)    # 12 vs 24 tokens kept
    singles, single_embeds = [], []
    for row, video in zip(rows, videos):
        seen, handle = _llm_inputs(model)
        try:
            singles.append(model.generate(**_inputs(model, device, [row], [video]), max_new_tokens=4,
                                          do_sample=False))
        finally:
            handle.remove()
        single_embeds.append(seen[0][0][0])
    single_pruned = [c[3] for c in recorder.calls]
    recorder.calls.clear()

    kw = _inputs(model, device, rows, videos)
    seen, handle = _llm_inputs(model)
    try:
        batch = model.generate(**kw, max_new_tokens=4, do_sample=False)
    finally:
        handle.remove()
    batch_pruned = [c[3] for c in recorder.calls]
    assert [p.tokens.shape[0] for p in batch_pruned] == [12, 24]
    for s, b in zip(single_pruned, batch_pruned):
        assert torch.equal(s.positions, b.positions)
        torch.testing.assert_close(b.tokens, s.tokens, rtol=0, atol=1e-5)
    width = kw["input_ids"].shape[1]
    assert torch.equal(batch[:, :width], kw["input_ids"])
    prefill = seen[0][0]
    for i in range(2):
        m = single_embeds[i].shape[0]
        torch.testing.assert_close(prefill[i, -m:], single_embeds[i], rtol=0, atol=1e-5)
        assert torch.equal(batch[i, width:], singles[i][0, singles[i].shape[1] - 4:])

    beams = model.generate(**kw, max_new_tokens=3, num_beams=2, do_sample=False)
    for i, (row, video) in enumerate(zip(rows, videos)):
        one = model.generate(**_inputs(model, device, [row], [video]), max_new_tokens=3, num_beams=2,
                             do_sample=False)
        assert torch.equal(beams[i, width:], one[0, -3:])


def test_vision_tower_never_runs_eager_attention(model, recorder, device, monkeypatch):
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen

    def no_eager(*a, **k):
        raise AssertionError("eager attention ran in the vision tower")
    monkeypatch.setattr(qwen, "eager_attention_forward", no_eager)
    apply_stop(model, method="visionzip", retention_ratio=0.5, mu_s=0.05)
    with torch.no_grad():
        model(**_inputs(model, device, [((1,), (2,))], [_video(device, GRID_A, 4)]))
    assert len(recorder.calls) == 1 and recorder.calls[0][2]["mu_s"] == 0.05    # the user's μ_s wins


def test_errors(model, device):
    with pytest.raises(TypeError, match="Qwen2_5_VLForConditionalGeneration"):
        apply_stop(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        apply_stop(model, method="tango", retention_ratio=0.25)
    with pytest.raises(ValueError, match="method"):
        apply_stop(model, method="tome")
    with pytest.raises(TypeError, match="metric"):
        apply_stop(model, method="visionzip", metric=torch.zeros(1, 1, 1))
    with pytest.raises(TypeError, match="option"):
        apply_stop(model, method="visionzip", tau=0.5)
    assert not hasattr(model, "_stop_state") and "forward" not in model.__dict__

    video = _video(device, GRID_A, 6)
    kw = _inputs(model, device, [((1,), (2,))], [video])
    apply_stop(model, method="visionzip", retention_ratio=0.05)   # int(12 · 0.05) = 0 tokens per group
    with pytest.raises(ValueError, match="keeps"):
        model(**kw)
    apply_stop(model, method="prunevid", retention_ratio=0.5)     # its 14×14 grid (SPEC §11)
    with pytest.raises(ValueError, match="prunevid needs N = 196"):
        model(**kw)
    apply_stop(model, method="visionzip", retention_ratio=0.5)
    wrong = dict(kw, input_ids=kw["input_ids"][:, 3:])
    if "mm_token_type_ids" in kw:
        wrong["mm_token_type_ids"] = kw["mm_token_type_ids"][:, 3:]
    with pytest.raises(ValueError, match="placeholder"):
        model(**wrong)
    with pytest.raises(ValueError, match="input_ids"):
        model(inputs_embeds=model.get_input_embeddings()(kw["input_ids"]),
              **{k: v for k, v in kw.items() if k != "input_ids"})
