"""FlashVid + SToP (SPEC §10): the fast path against its loop-based float64 twin.

Tolerances: ADTS tokens are copies (compared exactly through positions and kinds); merged
tokens are fp32 tree averages and cluster means against float64 ones, rtol = atol = 1e-5
for fp32 inputs, and 1e-2 for bf16 outputs (one bf16 rounding of the same value). Inputs are
random with a fixed seed and jittered attention, so no selection sits on a near-tie.
"""
import functools
import math

import pytest
import torch

from stop_fast import dispatch
from stop_fast.pipelines.base import KIND_DIVERSE, KIND_MERGED, Video
from stop_fast.pipelines.entry import make_options, prune
from stop_fast.pipelines.flashvid import SegmentLayout, adts, cut_segments, flashvid_budget
from stop_fast.pipelines._flashvid_merge import temporal_merge

D = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def _video(T, N, noise=0.3, scenes=3, seed=0, dtype=torch.float32, flash=True):
    """Scenes of one random frame each plus per-frame noise (scene cuts, merges); frame
    T // 2 is a one-frame flash of its own scene when T ≥ 5 and ``flash``."""
    g = torch.Generator().manual_seed(1000 * T + N + seed)
    bases = torch.randn(scenes + 1, N, D, generator=g)
    scene = [min(scenes - 1, t * scenes // T) for t in range(T)]
    if T >= 5 and flash:
        scene[T // 2] = scenes
    x = bases[scene] + noise * torch.randn(T, N, D, generator=g)
    a = torch.rand(N, generator=g) + 0.5 * torch.rand(T, N, generator=g)
    a = a * (1 + 1e-3 * torch.rand(T, N, generator=g))
    return x.to(dtype), a / a.sum(1, keepdim=True)


def _check(fast, twin, rtol=1e-5):
    assert fast.segments == twin.segments
    assert fast.num_tokens == twin.num_tokens == fast.tokens.shape[0]
    assert torch.equal(fast.positions, twin.positions)
    assert torch.equal(fast.kinds, twin.kinds)
    torch.testing.assert_close(fast.tokens, twin.tokens, rtol=rtol, atol=rtol)


def _structure(out, T, N, r, **kw):
    """Segments tile the video; ADTS keeps n_A distinct tokens per frame; ≥ T·B tokens;
    positions ascending with ADTS first; unique except in one-frame segments (note 4)."""
    B, n_a, n_m = flashvid_budget(N, make_options("flashvid", r, **kw))
    segs = out.segments
    assert segs[0][0] == 0 and segs[-1][1] == T - 1
    assert all(b == pe + 1 and b <= e for (b, e), (_, pe) in zip(segs[1:], segs[:-1]))
    assert len(segs) >= min(8, T)
    pos, kinds = out.positions, out.kinds
    key = pos[:, 0] * N + pos[:, 1]
    assert (key[1:] >= key[:-1]).all()
    div = pos[kinds == KIND_DIVERSE]
    assert div.shape[0] == T * n_a and div.unique(dim=0).shape[0] == T * n_a
    assert out.num_tokens >= T * B
    single = {t for b, e in segs if b == e for t in [b]}
    merged = pos[kinds == KIND_MERGED]
    multi = torch.tensor([int(t) not in single for t in merged[:, 0]], dtype=torch.bool)
    assert merged[multi].unique(dim=0).shape[0] == int(multi.sum())
    both = torch.cat([div, merged[multi]])
    assert both.unique(dim=0).shape[0] == both.shape[0]


CASES = ([(T, 196, r, s) for T in (1, 2, 7, 8) for r in (0.10, 0.15, 0.20, 0.25)
          for s in (True, False)]
         + [(T, 50, r, True) for T in (2, 8) for r in (0.10, 0.25)]
         + [(32, 196, 0.10, True), (32, 196, 0.20, False), (32, 50, 0.15, True),
            (64, 196, 0.15, True), (64, 196, 0.25, False)])


@pytest.mark.filterwarnings("ignore:a one-frame video")
@pytest.mark.parametrize("T,N,r,use_stop", CASES)
def test_matches_twin(T, N, r, use_stop):
    x, a = _video(T, N)
    kw = dict(method="flashvid", retention_ratio=r, use_stop=use_stop)
    fast = prune(x, a, backend="torch", **kw)
    _check(fast, prune(x, a, backend="reference", **kw))
    _structure(fast, T, N, r, use_stop=use_stop)


def test_bf16_matches_twin():
    x, a = _video(8, 196, dtype=torch.bfloat16)
    kw = dict(method="flashvid", retention_ratio=0.2)
    fast = prune(x, a, backend="torch", **kw)
    assert fast.tokens.dtype == torch.bfloat16
    _check(fast, prune(x, a, backend="reference", **kw), rtol=1e-2)


def test_budget_table():
    table = {0.10: (25, 18, 7), 0.15: (37, 26, 11), 0.20: (49, 35, 14), 0.25: (62, 44, 18)}
    for r, want in table.items():
        assert flashvid_budget(196, make_options("flashvid", r)) == want
        B, _, _ = flashvid_budget(196, make_options("flashvid", r, expansion=1.0))
        assert B == math.ceil(196 * r)


def test_cut_rule():
    sigma = [0.95, 0.5, 0.99, 0.95, 0.97, 0.8]
    # Cuts below τ at 1 and 5, completed to 3 by the smallest other σ (0.95 at t = 0 before t = 3).
    assert cut_segments(sigma, 0.9, 4) == [(0, 0), (1, 1), (2, 5), (6, 6)]
    assert cut_segments(sigma, 0.9, 1) == [(0, 1), (2, 5), (6, 6)]
    assert cut_segments(sigma, 0.9, 20) == [(t, t) for t in range(7)]


def test_single_frame_and_longer_segments_both_occur():
    x, a = _video(32, 196)
    out = prune(x, a, method="flashvid", retention_ratio=0.1, backend="torch")
    lengths = [e - b + 1 for b, e in out.segments]
    assert 1 in lengths and max(lengths) >= 2
    # A one-frame segment keeps its ADTS picks in the spatial pool (note 4): some merged
    # token may sit on a pick, and its frame holds n_A + c_t tokens with c_t = n_M.
    b = next(b for b, e in out.segments if b == e)
    _, n_a, n_m = flashvid_budget(196, out.options)
    assert int((out.positions[:, 0] == b).sum()) == n_a + n_m


def test_lower_bound_is_hit_and_keeps_bound_plus_one():
    T, N, r = 12, 196, 0.25
    x, a = _video(T, N, noise=0.02, scenes=1, flash=False)
    a = a[:1].expand(T, N).contiguous()           # the same ADTS picks in every frame
    opts = make_options("flashvid", r, min_segments=1)
    B, n_a, n_m = flashvid_budget(N, opts)
    xn = torch.nn.functional.normalize(x, dim=-1)
    lay = SegmentLayout([(0, T - 1)], x.device)
    picks = adts(x, xn, a, n_a)
    free = torch.ones(T, N, dtype=torch.bool).scatter_(1, picks, False)
    # Nearly static: almost every free token of frames 1… matches (σ* > θ), so without the
    # bound (B = 0) fewer than Λ = B·L would stay; with it Λ + 1 stay (distinct σ*, note 6),
    # ADTS tokens included.
    _, unbounded = temporal_merge(x, xn, free, lay, 0, opts.merge_threshold)
    assert int(unbounded.sum()) + T * n_a < B * T
    _, pool = temporal_merge(x, xn, free, lay, B, opts.merge_threshold)
    assert int(pool.sum()) + T * n_a == B * T + 1
    out = prune(x, a, method="flashvid", retention_ratio=r, min_segments=1, backend="torch")
    assert out.segments == [(0, T - 1)]
    _check(out, prune(x, a, method="flashvid", retention_ratio=r, min_segments=1,
                      backend="reference"))


def test_count_formula():
    T, N, r = 32, 196, 0.15
    x, a = _video(T, N)
    out = prune(x, a, method="flashvid", retention_ratio=r, backend="torch")
    B, n_a, n_m = flashvid_budget(N, out.options)
    lay = SegmentLayout(out.segments, x.device)
    xn = torch.nn.functional.normalize(x, dim=-1)
    picks = out.positions[out.kinds == KIND_DIVERSE][:, 1].view(T, n_a)
    free = torch.ones(T, N, dtype=torch.bool).scatter_(1, picks, False)
    _, pool = temporal_merge(x, xn, free, lay, B, out.options.merge_threshold)
    total = 0
    for b, e in out.segments:
        L = e - b + 1
        sizes = [int(pool[t].sum()) for t in range(b, e + 1)]
        q = n_m * L / sum(sizes)
        total += L * n_a + sum(math.ceil(s * q) if q < 1 else s for s in sizes)
    assert out.num_tokens == total >= T * B


def test_sink_scope_video_differs_from_segment():
    x, a = _video(16, 196)
    # A location attended only in the first half: a sink over the video, not in later segments.
    a = a.clone()
    a[:8, 5] += 0.5
    kw = dict(method="flashvid", retention_ratio=0.1, mu_s=0.5)
    seg = prune(x, a, backend="torch", **kw)
    vid = prune(x, a, backend="torch", sink_scope="video", **kw)
    assert not torch.equal(seg.positions[seg.kinds == KIND_DIVERSE],
                           vid.positions[vid.kinds == KIND_DIVERSE])
    _check(vid, prune(x, a, backend="reference", sink_scope="video", **kw))


def test_adts_never_repeats_where_published_would():
    # 10 large tokens along u set ḡ's direction; the other 186 point slightly against it, so
    # after 10 picks every unpicked score is ≤ 0 and a picked token (score ≈ 0) would win again.
    T, N = 2, 196
    g = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    x = 0.02 * torch.randn(T, N, D, generator=g) - 0.3 * u
    x[:, :10] += 10 * u
    a = torch.rand(T, N, generator=g) + 0.1
    out = prune(x, a, method="flashvid", retention_ratio=0.1, backend="torch")
    xn = torch.nn.functional.normalize(x, dim=-1)
    w = a * (x @ x.mean(dim=(0, 1)))
    assert int((w > 0).sum(1).max()) < flashvid_budget(N, out.options)[1]
    _structure(out, T, N, 0.1)
    _check(out, prune(x, a, method="flashvid", retention_ratio=0.1, backend="reference"))
    assert adts(x, xn, w, 18).sort(1).values.unique_consecutive(dim=1).shape[1] == 18


def test_input_not_modified():
    x, a = _video(8, 196, noise=0.05)
    x0, a0 = x.clone(), a.clone()
    prune(x, a, method="flashvid", retention_ratio=0.2, backend="torch")
    assert torch.equal(x, x0) and torch.equal(a, a0)


@pytest.mark.parametrize("bad,err", [
    (dict(expansion=0.0), ValueError), (dict(adts_share=1.5), ValueError),
    (dict(merge_threshold=1.0), ValueError), (dict(merge_threshold=-1.0), ValueError),
    (dict(sink_scope="frame"), ValueError), (dict(max_k=0), ValueError),
    (dict(min_segments=2.0), TypeError), (dict(tau_seg="0.9"), TypeError),
    (dict(use_stop=False, mu_s=0.02), ValueError), (dict(nonsense=1), TypeError),
])
def test_bad_options_raise(bad, err):
    x, a = _video(2, 50)
    with pytest.raises(err, match=next(iter(bad)) if "nonsense" not in bad else "unknown"):
        prune(x, a, method="flashvid", retention_ratio=0.1, **bad)


def test_too_many_adts_tokens_raise():
    x, a = _video(2, 20)
    with pytest.raises(ValueError, match="n_A"):
        prune(x, a, method="flashvid", retention_ratio=1.0, expansion=2.0)


def test_triton_backend_matches_twin(device):
    ok, why = dispatch.triton_usable(torch.device(device))
    if not ok:
        pytest.skip(why)
    x, a = _video(4, 50)
    kw = dict(method="flashvid", retention_ratio=0.2, sink_scope="video")
    tri = prune(x.to(device), a.to(device), backend="triton", **kw)
    _check(tri, prune(x.to(device), a.to(device), backend="reference", **kw))
