"""FastVid + SToP (SPEC §9): the vectorized pipeline against its loop-based float64 twin.

Tolerances: positions, kinds and segments must be identical; tokens agree within
rtol = atol = 1e-5 for fp32 inputs (the fast path computes in fp32, the twin in float64) and
within 1e-2 for bf16 (the same merges rounded to bf16 once; selections compare exactly because
the inputs are random, so near-ties are absent). Segments are steered through the global
vectors: nearly equal inside a planned segment (cosine > 0.99), unrelated across a boundary.
"""
import itertools
import warnings

import pytest
import torch

from stop_fast.pipelines import fastvid as fv
from stop_fast.pipelines.entry import make_options, prune
from stop_fast.pipelines.fastvid_reference import _density

D = 24
RATIOS = (0.10, 0.15, 0.20, 0.25)
# Planned segment lengths per T; at least min(c, T) segments so the c − 1 forced cuts fall on
# the planned boundaries. T = 32 and 64 hold lengths 1, 2–4 and > 4.
PLANS = {1: [1], 2: [1, 1], 7: [1] * 7, 8: [1] * 8, 32: [1, 2, 4, 1, 5, 3, 7, 9],
         64: [1, 2, 3, 4, 5, 9, 1, 6, 12, 21]}


def spans(lengths):
    ends = list(itertools.accumulate(lengths))
    return [(e - n, e - 1) for n, e in zip(lengths, ends)]


def make_video(lengths, N, dtype=torch.float32, seed=0, d=D):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    g = torch.cat([torch.randn(1, 32, generator=gen) + 0.02 * torch.randn(n, 32, generator=gen)
                   for n in lengths])
    x = torch.randn(T, N, d, generator=gen)
    bias = torch.zeros(N)
    bias[torch.randperm(N, generator=gen)[:5]] = 3.0                    # persistent sinks
    a = torch.softmax(torch.randn(T, N, generator=gen) + bias, dim=-1)
    return x.to(dtype), a.to(dtype), g.to(dtype)


def run_both(x, a, g, r, **kw):
    fast = prune(x, a, method="fastvid", retention_ratio=r, global_features=g, backend="torch", **kw)
    twin = prune(x, a, method="fastvid", retention_ratio=r, global_features=g, backend="reference",
                 **kw)
    return fast, twin


def assert_agree(fast, twin, tol=1e-5):
    assert fast.segments == twin.segments
    assert torch.equal(fast.positions, twin.positions)
    assert torch.equal(fast.kinds, twin.kinds)
    assert fast.tokens.dtype == twin.tokens.dtype
    torch.testing.assert_close(fast.tokens.float(), twin.tokens.float(), rtol=tol, atol=tol)


def expected_count(N, r, segments, d=0.4, p=4):
    R, S, C = fv.budgets(N, r, d)
    total = len(sum(([t for t in range(b, e + 1)] for b, e in segments), [])) * S
    for b, e in segments:
        m, K = fv.anchor_budget(C, e - b + 1, p)
        total += C if e == b else m * min(K, N - S)
    return total


GRID = [(T, N, RATIOS[i % 4], i % 2 == 0, (torch.float32, torch.float32, torch.bfloat16)[i % 3])
        for i, (T, N) in enumerate(itertools.product(PLANS, (196, 50)))]
GRID += [(7, 50, 0.25, True, torch.float32), (32, 50, 0.20, True, torch.bfloat16),
         (64, 50, 0.10, True, torch.float32), (32, 196, 0.25, False, torch.float32)]


@pytest.mark.parametrize("T,N,r,use_stop,dtype", GRID)
def test_fast_matches_twin(T, N, r, use_stop, dtype):
    x, a, g = make_video(PLANS[T], N, dtype, seed=T * 1000 + N + int(r * 100))
    fast, twin = run_both(x, a, g, r, use_stop=use_stop)
    assert fast.segments == spans(PLANS[T])
    assert_agree(fast, twin, 1e-5 if dtype == torch.float32 else 1e-2)
    key = fast.positions[:, 0] * N + fast.positions[:, 1]
    assert bool((key[1:] > key[:-1]).all())                           # sorted, unique
    assert fast.num_tokens == expected_count(N, r, fast.segments)
    R, S, C = fv.budgets(N, r, 0.4)
    assert fast.kind_counts()["salient"] == T * S
    assert fast.num_tokens <= T * R
    assert (fast.sink.abs().sum() > 0) == (use_stop and T > 1)


def test_plans_cover_segment_lengths():
    lengths = {n for plan in PLANS.values() for n in plan}
    assert 1 in lengths and lengths & {2, 3, 4} and max(lengths) > 4


def test_budget_table_n196():
    table = {0.10: (19, 12, 7), 0.15: (29, 18, 11), 0.20: (39, 24, 15), 0.25: (49, 30, 19)}
    for r, rsc in table.items():
        assert fv.budgets(196, r, 0.4) == rsc
    assert fv.anchor_budget(7, 1, 4) == (1, 7)
    assert fv.anchor_budget(7, 5, 4) == (2, 17)
    assert fv.anchor_budget(7, 9, 4) == (3, 21)


def test_count_at_r010_t32_within_bound():
    x, a, g = make_video(PLANS[32], 196, seed=3)
    out = prune(x, a, method="fastvid", retention_ratio=0.1, global_features=g, backend="torch")
    assert out.num_tokens == expected_count(196, 0.1, out.segments) <= 608


def test_longer_segments_with_fewer_minimum_segments():
    x, a, g = make_video([3, 5], 50, seed=11)
    fast, twin = run_both(x, a, g, 0.2, min_segments=2)
    assert fast.segments == [(0, 2), (3, 7)]
    assert_agree(fast, twin)


def test_clamp_k_stride_and_zero_context():
    x, a, g = make_video(PLANS[32], 50, seed=5)
    fast, twin = run_both(x, a, g, 0.9)                       # K_L > N − S: clamped
    assert_agree(fast, twin)
    assert fast.num_tokens == expected_count(50, 0.9, fast.segments)
    fast, twin = run_both(x, a, g, 0.2, anchor_stride=1)      # every frame: per-frame context
    assert_agree(fast, twin)
    assert fast.num_tokens == 32 * fv.budgets(50, 0.2, 0.4)[0]
    fast, twin = run_both(x, a, g, 0.2, context_share=0.0)    # salient only
    assert_agree(fast, twin)
    assert fast.kind_counts() == {"salient": 32 * 10}


def test_mu_zero_means_no_penalty_and_equals_plain():
    x, a, g = make_video(PLANS[32], 196, seed=7)
    assert make_options("fastvid", 0.1).context_penalty == fv.DEFAULT_CONTEXT_PENALTY
    assert make_options("fastvid", 0.1, mu_s=0.0).context_penalty == 0.0
    assert make_options("fastvid", 0.1, use_stop=False).context_penalty == 0.0
    plain = prune(x, a, method="fastvid", retention_ratio=0.15, global_features=g, use_stop=False)
    zero = prune(x, a, method="fastvid", retention_ratio=0.15, global_features=g, mu_s=0.0)
    stop = prune(x, a, method="fastvid", retention_ratio=0.15, global_features=g)
    assert torch.equal(plain.positions, zero.positions)
    assert torch.equal(plain.tokens, zero.tokens)
    assert not torch.equal(plain.positions, stop.positions)   # SToP changes the selection
    assert plain.sink.abs().sum() == 0
    with pytest.raises(ValueError, match="context_penalty"):
        make_options("fastvid", 0.1, use_stop=False, context_penalty=0.3)


def test_double_penalty_on_anchor_frames():
    # One segment of 2 frames: frame 1 is its anchor frame and ranks anchors by ρ·δ − 2λ·s.
    gen = torch.Generator().manual_seed(1)
    N = 60
    x = torch.randn(2, N, D, generator=gen)
    a = torch.softmax(torch.randn(N, generator=gen).expand(2, N) + 0.3 * torch.randn(2, N, generator=gen), -1)
    g = torch.ones(2, 4)
    out = prune(x, a, method="fastvid", retention_ratio=0.2, global_features=g, min_segments=1,
                backend="torch")
    assert out.segments == [(0, 1)]
    _, S, C = fv.budgets(N, 0.2, 0.4)
    m, K = fv.anchor_budget(C, 2, 4)
    sal = out.positions[(out.kinds == 4) & (out.positions[:, 0] == 1), 1].tolist()
    U = sorted(set(range(N)) - set(sal))
    rho, delta = _density(x[1, U].double(), 4)
    s = out.sink.double()[U]

    def anchors(times):
        score = rho * delta - times * 0.3 * s
        return sorted(U[j] for j in sorted(range(len(U)), key=lambda j: (-score[j], j))[:K])

    got = sorted(out.positions[(out.kinds == 5) & (out.positions[:, 0] == 1), 1].tolist())
    assert anchors(1) != anchors(2)                            # the case tells them apart
    assert got == anchors(2)
    twin = prune(x, a, method="fastvid", retention_ratio=0.2, global_features=g, min_segments=1,
                 backend="reference")
    assert_agree(out, twin)


def test_global_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(fv, "_warned_fallback", False)
    x, a, _ = make_video(PLANS[32], 50, seed=9)
    with pytest.warns(UserWarning, match="global_features"):
        out = prune(x, a, method="fastvid", retention_ratio=0.2, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = prune(x, a, method="fastvid", retention_ratio=0.2, backend="reference")
    assert_agree(out, twin)
    explicit = prune(x, a, method="fastvid", retention_ratio=0.2, global_features=x.mean(dim=1))
    assert out.segments == explicit.segments


@pytest.mark.parametrize("opts,match", [
    ({"anchor_stride": 0}, "anchor_stride"), ({"context_share": 1.5}, "context_share"),
    ({"min_segments": 0}, "min_segments"), ({"anchor_weight": 2.0}, "anchor_weight"),
    ({"density_k": 0}, "density_k"), ({"context_penalty": -0.1}, "context_penalty"),
    ({"tau_seg": float("nan")}, "tau_seg"), ({"retention_ratio": 0.01}, "retention_ratio"),
])
def test_bad_options(opts, match):
    x, a, g = make_video([1, 1], 50)
    kw = {"retention_ratio": 0.2, **opts}
    with pytest.raises(ValueError, match=match):
        prune(x, a, method="fastvid", global_features=g, **kw)


def test_bad_types_and_global_shape():
    x, a, g = make_video([1, 1, 1], 50)
    with pytest.raises(TypeError, match="min_segments"):
        prune(x, a, method="fastvid", retention_ratio=0.2, global_features=g, min_segments="8")
    with pytest.raises(ValueError, match="global_features"):
        prune(x, a, method="fastvid", retention_ratio=0.2, global_features=g[:2])
    with pytest.raises(ValueError, match="global_features"):
        prune(x, a, method="fastvid", retention_ratio=0.2, global_features=g[:, 0])


def test_triton_backend_agrees():
    x, a, g = make_video([1, 2, 4, 1, 5, 3, 7, 9], 50, seed=13)
    fast = prune(x, a, method="fastvid", retention_ratio=0.25, global_features=g, backend="triton")
    twin = prune(x, a, method="fastvid", retention_ratio=0.25, global_features=g, backend="reference")
    assert_agree(fast, twin)
