"""VisionZip + SToP (SPEC §7): the vectorized pipeline against its loop-based float64 twin.

Tolerances: dominant tokens are copies (compared exactly through positions); contextual
tokens are fp32 sums against float64 sums, compared with rtol = atol = 1e-5 (fp32 inputs)
and rtol = atol = 1e-2 for bf16 outputs (one bf16 rounding of the same value).
"""
import functools
import math

import pytest
import torch

import stop_fast as sf
from stop_fast import dispatch
from stop_fast.pipelines import KIND_CONTEXTUAL, KIND_DOMINANT, VisionZip, prune
from stop_fast.pipelines.visionzip import visionzip_budget
from stop_fast.pipelines.visionzip import contextual_targets
from stop_fast.synthetic import make_video

GRIDS = {49: (7, 7), 196: (14, 14)}


@functools.lru_cache(maxsize=None)
def _video(T, N, kind):
    """"cut": synthetic video with a scene cut; "static": every frame the same plus 1e-3 noise.
    Attention is jittered by a factor 1 + 1e-3·U(0,1) so no two scores tie."""
    g = torch.Generator().manual_seed(100 * T + N)
    if kind == "cut":
        v = make_video(num_frames=T, grid=GRIDS[N], scene_cut=T // 2 if T > 1 else None, seed=T)
        x, a, m = v.features, v.attention, v.metric
    else:
        x = torch.randn(N, 24, generator=g) + 1e-3 * torch.randn(T, N, 24, generator=g)
        a = torch.rand(N, generator=g) + 0.1 * torch.rand(T, N, generator=g)
        m = x @ torch.randn(24, 16, generator=g)
    a = a * (1 + 1e-3 * torch.rand(a.shape, generator=g))
    return x, a, m


def _check(fast, twin, T, N, r, rtol=1e-5):
    n_dom, n_ctx = visionzip_budget(N, r)
    S = n_dom + n_ctx
    assert fast.num_tokens == twin.num_tokens == T * S
    assert torch.equal(fast.positions.cpu(), twin.positions.cpu())
    assert torch.equal(fast.kinds.cpu(), twin.kinds.cpu())
    torch.testing.assert_close(fast.tokens, twin.tokens, rtol=rtol, atol=rtol)
    pos = fast.positions.cpu().view(T, S, 2)
    assert torch.equal(pos[..., 0], torch.arange(T)[:, None].expand(T, S))
    kinds = fast.kinds.cpu().view(T, S)
    assert (kinds[:, :n_dom] == KIND_DOMINANT).all() and (kinds[:, n_dom:] == KIND_CONTEXTUAL).all()
    dom = pos[:, :n_dom, 1]
    assert (dom[:, 1:] > dom[:, :-1]).all()                      # dominant in ascending order
    for t in range(T):                                            # every location at most once
        assert pos[t, :, 1].unique().numel() == S


CASES = [(T, N, r) for T in (1, 2, 8, 32) for N in (49, 196) for r in (0.1, 0.15, 0.2, 0.25)]


@pytest.mark.parametrize("T,N,r", CASES)
def test_matches_twin_scene_cut(T, N, r, device):
    x, a, m = (t.to(device) for t in _video(T, N, "cut"))
    use_stop = (T + int(100 * r)) % 3 != 0          # about a third of the grid runs plain
    kw = dict(method="visionzip", retention_ratio=r, use_stop=use_stop, metric=m)
    _check(prune(x, a, backend="torch", **kw), prune(x, a, backend="reference", **kw), T, N, r)


@pytest.mark.parametrize("T,N,r", [(2, 49, 0.25), (8, 196, 0.1), (8, 49, 0.15), (32, 49, 0.2)])
def test_matches_twin_static(T, N, r, device):
    x, a, m = (t.to(device) for t in _video(T, N, "static"))
    for use_stop in (True, False):
        kw = dict(method="visionzip", retention_ratio=r, use_stop=use_stop, metric=m)
        _check(prune(x, a, backend="torch", **kw), prune(x, a, backend="reference", **kw), T, N, r)


def test_full_retention_falls_back_to_sink_targets(device):
    # r = 1 at N = 49: 41 dominant, 8 contextual out of 8 remaining tokens, which (with SToP
    # pushing sinks out of the dominant set) include top-20 sink locations: the targets must
    # run past the last non-sink and take sink positions.
    x, a, m = (t.to(device) for t in _video(8, 49, "cut"))
    kw = dict(method="visionzip", retention_ratio=1.0, metric=m)
    fast = prune(x, a, backend="torch", **kw)
    _check(fast, prune(x, a, backend="reference", **kw), 8, 49, 1.0)
    assert fast.positions[:, 1].view(8, 49).sort(dim=1).values.eq(torch.arange(49, device=device)).all()


def _literal_targets(is_sink, C):
    R = len(is_sink)
    stride, chosen = max(1, R // C), []
    for j in range(C):
        p = j * stride
        while p < R and (is_sink[p] or p in chosen):
            p += 1
        if p == R:
            p = next(q for q in range(R) if is_sink[q] and q not in chosen)
        chosen.append(p)
    return chosen


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9, 1.0])
def test_contextual_targets_cummax_equals_sequential_skip(density):
    g = torch.Generator().manual_seed(int(density * 10))
    for R, C in [(30, 4), (30, 30), (17, 5), (8, 8), (176, 4), (9, 1)]:
        sink = torch.rand(6, R, generator=g) < density
        got = contextual_targets(sink, C)
        for t in range(6):
            assert got[t].tolist() == _literal_targets(sink[t].tolist(), C)


def test_plain_equals_stop_with_zero_weights(device):
    x, a, m = (t.to(device) for t in _video(8, 196, "cut"))
    plain = prune(x, a, method="visionzip", retention_ratio=0.1, use_stop=False, metric=m)
    zero = prune(x, a, method="visionzip", retention_ratio=0.1, mu_s=0.0, num_sink_skip=0, metric=m)
    assert torch.equal(plain.positions, zero.positions)
    assert torch.equal(plain.tokens, zero.tokens)
    assert torch.equal(plain.sink, torch.zeros_like(plain.sink))
    stop = prune(x, a, method="visionzip", retention_ratio=0.1, metric=m)
    assert not torch.equal(plain.positions, stop.positions)      # the sink terms do something
    torch.testing.assert_close(stop.sink, sf.sink_score(a))


def test_class_matches_function_and_bf16(device):
    x, a, m = (t.to(device) for t in _video(8, 49, "cut"))
    pruner = VisionZip(0.2, backend="torch")
    assert "VisionZip(retention_ratio=0.2, use_stop=True, mu_s=0.03" in repr(pruner)
    out = pruner(x, a, m)
    ref = prune(x, a, method="visionzip", retention_ratio=0.2, metric=m, backend="torch")
    assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.positions, ref.positions)
    xb, mb = x.bfloat16(), m.bfloat16()
    fast = pruner(xb, a, mb)
    assert fast.tokens.dtype == torch.bfloat16
    twin = prune(xb, a, method="visionzip", retention_ratio=0.2, metric=mb, backend="reference")
    _check(fast, twin, 8, 49, 0.2, rtol=1e-2)


@pytest.mark.parametrize("use_stop", [True, False])
def test_triton_backend_matches_twin(use_stop, device):
    ok, why = dispatch.triton_usable(torch.device(device))
    if not ok:
        pytest.skip(f"Triton backend unavailable here: {why}")
    x, a, m = (t.to(device) for t in _video(8, 49, "cut"))
    kw = dict(method="visionzip", retention_ratio=0.15, use_stop=use_stop, metric=m)
    _check(prune(x, a, backend="triton", **kw), prune(x, a, backend="reference", **kw), 8, 49, 0.15)


X, A, M = torch.randn(4, 49, 8), torch.rand(4, 49), torch.randn(4, 49, 6)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(attention=A[:3]), ValueError, r"attention must have shape \(T, N\) = \(4, 49\)"),
    (dict(attention=A[:, :48]), ValueError, r"attention must have shape \(T, N\) = \(4, 49\)"),
    (dict(metric=None), ValueError, "metric is required by method='visionzip'"),
    (dict(metric=M[:, :48]), ValueError, r"metric must have shape \(T, N, Dk\) with \(T, N\) = \(4, 49\)"),
    (dict(retention_ratio=0.0), ValueError, r"retention_ratio must be in \(0, 1\], got 0.0"),
    (dict(retention_ratio=1.5), ValueError, r"retention_ratio must be in \(0, 1\], got 1.5"),
    (dict(retention_ratio=0.01), ValueError, "keeps int\\(N\\*r\\) = 0 of N=49"),
    (dict(retention_ratio="0.1"), TypeError, "retention_ratio must be a real number"),
    (dict(method="tango"), ValueError, "method must be one of \\('visionzip', 'holitom', 'fastvid', 'flashvid', 'prunevid'\\), got 'tango'"),
    (dict(features=X.long()), TypeError, "features must have dtype in"),
    (dict(features=X[0]), ValueError, r"features must have shape \(T, N, D\)"),
    (dict(features=X.clone().index_fill_(0, torch.tensor([2]), math.nan)), ValueError, "features contains NaN"),
    (dict(attention=A.clone().fill_(float("inf"))), ValueError, "attention contains NaN or Inf"),
    (dict(metric=M.clone().fill_(float("nan"))), ValueError, "metric contains NaN"),
    (dict(attention=A - 0.5), ValueError, "attention must be non-negative"),
    (dict(use_stop=False, mu_s=0.03), ValueError, "mu_s=0.03 has no effect with use_stop=False"),
    (dict(mu_t=0.07), ValueError, "mu_t=0.07 has no effect with method='visionzip'"),
    (dict(use_stop=1), TypeError, "use_stop must be a bool"),
    (dict(tau=0.8), TypeError, r"unknown option\(s\) \['tau'\] for method='visionzip'"),
    (dict(num_sink_skip=-1), ValueError, "num_sink_skip must be in"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(gamma=0.0), ValueError, "gamma must be > 0"),
])
def test_rejects_bad_input(kwargs, exc, match):
    args = dict(features=X, attention=A, metric=M, method="visionzip", retention_ratio=0.2)
    args.update(kwargs)
    features, attention = args.pop("features"), args.pop("attention")
    with pytest.raises(exc, match=match):
        prune(features, attention, **args)
