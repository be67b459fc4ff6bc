"""exact_budget=True: every method keeps exactly token_budget(method, T, N, r) tokens.

Checks, on seeded random videos (fp32, CPU): B exact over a grid of methods × T × N × r, for the
fast path and the float64 twin alike (same positions); a fill adds the method's next-ranked
candidates (highest ã = a − μ_s·s among positions not kept; HoliTom's dynamic locations first);
a drop removes the lowest-ranked (HoliTom dynamic tokens, FlashVid merged tokens, lowest ã
first); kept tokens stay in order; exact_budget=False is bit-identical to the default.
"""
import math
import warnings

import pytest
import torch

import stop_fast as sf
from stop_fast.pipelines.base import KIND_DYNAMIC, KIND_MERGED

RATIOS = (0.1, 0.25, 0.5)


def _video(T, N, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, N, D, generator=g)
    x = base + 0.6 * torch.randn(T, N, D, generator=g)      # some locations stay similar
    a = torch.rand(T, N, generator=g) + 0.05
    a[:, :2] += 1.0                                          # two persistent sinks
    a = a / a.sum(1, keepdim=True)
    metric = torch.randn(T, N, 4, generator=g)
    glob = torch.randn(1, 6, generator=g) + 0.05 * torch.randn(T, 6, generator=g)   # few cuts
    return x, a, metric, glob


def _run(method, x, a, metric, glob, r, **kw):
    extra = {"visionzip": {"metric": metric}, "fastvid": {"global_features": glob}}.get(method, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return sf.prune(x, None if method == "prunevid" else a, method=method, retention_ratio=r,
                        **extra, **kw)


GRID = [(m, T, N, r) for m in ("visionzip", "holitom", "fastvid", "flashvid")
        for T in (1, 3, 8) for N in (16, 49) for r in RATIOS]
GRID += [("prunevid", T, 196, r) for T in (2, 8) for r in RATIOS]


@pytest.mark.parametrize("method,T,N,r", GRID)
def test_exact_count(method, T, N, r):
    x, a, metric, glob = _video(T, N)
    B = sf.token_budget(method, T, N, r)
    out = _run(method, x, a, metric, glob, r, exact_budget=True)
    assert out.num_tokens == B
    assert out.positions.shape == (B, 2) and out.kinds.shape == (B,)
    assert out.positions[:, 0].max() < T and out.positions[:, 1].max() < N
    flat = (out.positions[:, 0] * N + out.positions[:, 1]).tolist()
    if method != "flashvid":          # FlashVid's one-frame segments may repeat a location (§10.4)
        assert len(set(flat)) == len(flat)
    plain = _run(method, x, a, metric, glob, r)
    if plain.num_tokens == B:         # nothing to adjust: the very same selection
        assert torch.equal(out.positions, plain.positions) and torch.equal(out.tokens, plain.tokens)


@pytest.mark.parametrize("method", ["holitom", "fastvid", "flashvid", "visionzip"])
def test_twin_keeps_the_same_positions(method):
    x, a, metric, glob = _video(6, 16, seed=3)
    fast = _run(method, x, a, metric, glob, 0.25, exact_budget=True)
    twin = _run(method, x, a, metric, glob, 0.25, exact_budget=True, backend="reference")
    assert torch.equal(fast.positions, twin.positions)
    assert torch.equal(fast.kinds, twin.kinds)
    torch.testing.assert_close(fast.tokens, twin.tokens, rtol=0, atol=1e-5)


def test_off_is_bit_identical():
    for method in ("visionzip", "holitom", "fastvid", "flashvid"):
        x, a, metric, glob = _video(5, 16, seed=1)
        default = _run(method, x, a, metric, glob, 0.25)
        off = _run(method, x, a, metric, glob, 0.25, exact_budget=False)
        assert torch.equal(default.tokens, off.tokens) and torch.equal(default.positions, off.positions)
        assert torch.equal(default.kinds, off.kinds)
        assert "budget_filled" not in off.extras and "budget_dropped" not in off.extras


def _find(method, want, T=8, N=16, **kw):
    """A seeded video where the method's published count is below ("fill") / above ("drop") B."""
    for seed in range(40):
        x, a, metric, glob = _video(T, N, seed=seed)
        for r in (0.1, 0.2, 0.3, 0.4):
            plain = _run(method, x, a, metric, glob, r, **kw)
            B = sf.token_budget(method, T, N, r)
            if (want == "fill" and plain.num_tokens < B) or (want == "drop" and plain.num_tokens > B):
                return x, a, metric, glob, r, plain, B
    pytest.fail(f"no seeded video needs a {want} for {method}")


def _score(out, a):
    s = out.sink if out.options.use_stop else torch.zeros_like(out.sink)
    return a - out.options.mu_s * s[None]


def test_fastvid_fill_takes_next_ranked():
    # Few long segments: ⌊C·L/m_L⌋ anchors lose tokens when m_L does not divide C·L (SPEC §9.8).
    x, a, metric, glob, r, plain, B = _find("fastvid", "fill", T=10, N=49, min_segments=2)
    out = _run("fastvid", x, a, metric, glob, r, exact_budget=True, min_segments=2)
    T, N = a.shape
    kept = set((plain.positions[:, 0] * N + plain.positions[:, 1]).tolist())
    score = _score(out, a).flatten()
    order = sorted((i for i in range(T * N) if i not in kept), key=lambda i: (-score[i].item(), i))
    want = set(order[:B - plain.num_tokens])
    got = set((out.positions[:, 0] * N + out.positions[:, 1]).tolist()) - kept
    assert got == want and out.extras["budget_filled"] == B - plain.num_tokens
    # Kept tokens keep their order; each new one is its own original token.
    old = torch.isin(out.positions[:, 0] * N + out.positions[:, 1], torch.tensor(sorted(kept)))
    assert torch.equal(out.positions[old], plain.positions) and torch.equal(out.tokens[old], plain.tokens)
    new = out.positions[~old]
    assert torch.equal(out.tokens[~old], x[new[:, 0], new[:, 1]])
    assert (out.positions[:, 0].diff() >= 0).all()            # frames stay in order


def test_holitom_drop_removes_lowest_dynamic():
    x, a, metric, glob, r, plain, B = _find("holitom", "drop")
    out = _run("holitom", x, a, metric, glob, r, exact_budget=True)
    N = a.shape[1]
    score = _score(out, a)
    dyn = (plain.kinds == KIND_DYNAMIC).nonzero().flatten().tolist()
    vals = [score[plain.positions[j, 0], plain.positions[j, 1]].item() for j in dyn]
    dropped = {dyn[j] for j in sorted(range(len(dyn)), key=lambda j: (vals[j], j))[:plain.num_tokens - B]}
    keep = torch.tensor([j not in dropped for j in range(plain.num_tokens)])
    assert torch.equal(out.positions, plain.positions[keep]) and torch.equal(out.tokens, plain.tokens[keep])
    assert out.extras["budget_dropped"] == plain.num_tokens - B
    del N


def test_flashvid_drops_lowest_merged_tokens():
    x, a, metric, glob, r, plain, B = _find("flashvid", "drop", T=12, min_segments=2)
    out = _run("flashvid", x, a, metric, glob, r, exact_budget=True, min_segments=2)
    assert B == 12 * math.ceil(16 * r * 1.25) and out.num_tokens == B
    assert (plain.kinds != KIND_MERGED).sum() == (out.kinds != KIND_MERGED).sum()   # ADTS picks stay
    # The dropped merged tokens are the lowest by ã with the segment sink (SPEC §10.3a).
    from stop_fast.pipelines.flashvid import SegmentLayout, segment_sink
    lay = SegmentLayout(plain.segments, torch.device("cpu"))
    score = a - out.options.mu_s * segment_sink(a, lay, out.options.gamma)[lay.seg_of]
    merged = (plain.kinds == KIND_MERGED).nonzero().flatten().tolist()
    vals = {j: score[plain.positions[j, 0], plain.positions[j, 1]].item() for j in merged}
    dropped = set(sorted(merged, key=lambda j: (vals[j], j))[:plain.num_tokens - B])
    keep = torch.tensor([j not in dropped for j in range(plain.num_tokens)])
    assert torch.equal(out.positions, plain.positions[keep]) and torch.equal(out.tokens, plain.tokens[keep])


def test_holitom_fill_prefers_dynamic_locations():
    x, a, metric, glob, r, plain, B = _find("holitom", "fill")
    out = _run("holitom", x, a, metric, glob, r, exact_budget=True)
    assert out.num_tokens == B and out.extras["budget_filled"] == B - plain.num_tokens


def test_token_budget_values_and_errors():
    assert sf.token_budget("visionzip", 32, 196, 0.1) == 32 * 20
    assert sf.token_budget("visionzip", 4, 196, 0.1, tokens_per_frame=7) == 28
    assert sf.token_budget("fastvid", 32, 196, 0.1) == 32 * 19
    assert sf.token_budget("flashvid", 32, 196, 0.1) == 32 * 25
    assert sf.token_budget("flashvid", 32, 196, 0.1, expansion=1.0) == 32 * 20
    assert sf.token_budget("holitom", 32, 196, 0.1) == 627
    assert sf.token_budget("prunevid", 32, 196, 0.1) == 627
    with pytest.raises(ValueError, match="method must be one of"):
        sf.token_budget("nope", 4, 196, 0.1)
    with pytest.raises(ValueError, match="retention_ratio"):
        sf.token_budget("holitom", 4, 196, 1.5)
    with pytest.raises(ValueError, match="prunevid needs N = 196"):
        sf.token_budget("prunevid", 4, 100, 0.1)
    with pytest.raises(ValueError, match="T must be"):
        sf.token_budget("holitom", 0, 196, 0.1)
    with pytest.raises(TypeError, match="exact_budget must be a bool"):
        sf.prune(torch.rand(2, 16, 4), torch.rand(2, 16), method="holitom", retention_ratio=0.5,
                 exact_budget="yes")


def test_pruner_classes_take_the_option():
    x, a, metric, glob = _video(3, 16)
    out = sf.HoliTom(0.25, exact_budget=True)(x, a)
    assert out.num_tokens == sf.token_budget("holitom", 3, 16, 0.25)
    assert "exact_budget=True" in repr(sf.HoliTom(0.25, exact_budget=True))
