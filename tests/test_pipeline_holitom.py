"""HoliTom + SToP (SPEC §6) against its loop-based float64 twin, plus its DP and DPC-KNN parts.

Tolerances: dynamic tokens are copies (compared exactly through positions); merged static
tokens are fp32 means/merges against float64 ones, rtol = atol = 1e-5 for fp32 inputs and
1e-2 for bf16 outputs (one bf16 rounding of the same value).
"""
import functools
import math

import pytest
import torch

from stop_fast import dispatch
from stop_fast import reference as R
from stop_fast.pipelines import KIND_DYNAMIC, KIND_STATIC, HoliTom, dpc_knn, prune
from stop_fast.pipelines.dpc_knn import dpc_knn_batched
from stop_fast.pipelines.holitom import pair_counts, segments_from_counts
from stop_fast.pipelines.holitom_reference import holitom_segments
from stop_fast.synthetic import make_video

GRIDS = {49: (7, 7), 196: (14, 14)}


@functools.lru_cache(maxsize=None)
def _video(T, N, kind):
    """"cut": synthetic video, scene cut at T // 2; "static": one frame repeated plus 1e-3
    noise; "random": no two frames alike. Attention jittered by 1 + 1e-3·U(0,1): no ties."""
    g = torch.Generator().manual_seed(100 * T + N)
    if kind == "cut":
        v = make_video(num_frames=T, grid=GRIDS[N], scene_cut=T // 2 if T > 1 else None, seed=T)
        x, a = v.features, v.attention
    else:
        x = torch.randn(T, N, 24, generator=g)
        if kind == "static":
            x = x[0] + 1e-3 * x
        a = torch.rand(N, generator=g) + 0.1 * torch.rand(T, N, generator=g)
    return x, a * (1 + 1e-3 * torch.rand(a.shape, generator=g))


def _check(fast, twin, T, N, r, rtol=1e-5):
    assert fast.segments == twin.segments
    assert fast.reduced == twin.reduced and fast.adjusted_ratio == twin.adjusted_ratio
    assert fast.num_tokens == twin.num_tokens == fast.tokens.shape[0] == fast.positions.shape[0]
    assert torch.equal(fast.positions.cpu(), twin.positions.cpu())
    assert torch.equal(fast.kinds.cpu(), twin.kinds.cpu())
    torch.testing.assert_close(fast.tokens, twin.tokens, rtol=rtol, atol=rtol)
    # Segments tile the video; the count stays within the budget plus rounding: c_n rounds
    # (≤ 1/2 per segment) and k_d = ceil(n_dyn·r') rounds up in every frame (< 1 per frame).
    S = len(fast.segments)
    assert fast.segments[0][0] == 0 and fast.segments[-1][1] == T - 1
    assert all(b <= e and b == prev_e + 1 for (b, e), (_, prev_e) in
               zip(fast.segments[1:], fast.segments[:-1])) and fast.segments[0][0] <= fast.segments[0][1]
    assert fast.num_tokens <= r * T * N + T + S / 2 + 1e-9
    assert fast.num_tokens >= 1
    pos, kinds = fast.positions.cpu(), fast.kinds.cpu()
    assert pos.unique(dim=0).shape[0] == pos.shape[0]                 # no token twice
    assert (pos[1:, 0] >= pos[:-1, 0]).all()                           # segment/frame order
    assert set(kinds.tolist()) <= {KIND_STATIC, KIND_DYNAMIC}


# Smaller twins for the long videos keep the file fast; every (T, N, r) still runs once.
CASES = [(T, N, r) for T in (1, 2, 8) for N in (49, 196) for r in (0.1, 0.15, 0.2, 0.25)]
CASES += [(32, 49, r) for r in (0.1, 0.15, 0.2, 0.25)] + [(32, 196, 0.1), (32, 196, 0.25)]


@pytest.mark.parametrize("T,N,r", CASES)
def test_matches_twin_scene_cut(T, N, r, device):
    x, a = (t.to(device) for t in _video(T, N, "cut"))
    use_stop = (T + int(100 * r)) % 3 != 0          # about a third of the grid runs plain
    kw = dict(method="holitom", retention_ratio=r, use_stop=use_stop)
    fast = prune(x, a, backend="torch", **kw)
    _check(fast, prune(x, a, backend="reference", **kw), T, N, r)
    if T > 2:      # the DP never merges across the cut (nothing is static over it)
        assert not any(b < T // 2 <= e for b, e in fast.segments)


@pytest.mark.parametrize("T,N,r", [(2, 49, 0.1), (8, 49, 0.1), (8, 196, 0.1), (32, 49, 0.25)])
def test_matches_twin_fully_static(T, N, r, device):
    x, a = (t.to(device) for t in _video(T, N, "static"))
    for use_stop in (True, False):
        kw = dict(method="holitom", retention_ratio=r, use_stop=use_stop)
        fast = prune(x, a, backend="torch", **kw)
        _check(fast, prune(x, a, backend="reference", **kw), T, N, r)
        # One segment, every location static: N·r' cluster tokens and nothing dynamic.
        assert fast.segments == [(0, T - 1)] and fast.reduced == N * (T - 1)
        assert fast.num_tokens == round(N * min(r * T, 1.0))
        assert (fast.kinds == KIND_STATIC).all()


def test_matches_twin_without_static_tokens(device):
    x, a = (t.to(device) for t in _video(8, 49, "random"))
    fast = prune(x, a, method="holitom", retention_ratio=0.15, backend="torch")
    _check(fast, prune(x, a, method="holitom", retention_ratio=0.15, backend="reference"), 8, 49, 0.15)
    assert fast.segments == [(t, t) for t in range(8)]
    assert fast.num_tokens == 8 * math.ceil(49 * 0.15)


def test_options_max_window_tau_beta(device):
    x, a = (t.to(device) for t in _video(8, 49, "cut"))
    for opts in (dict(max_window=2), dict(tau=0.65, beta=0.3, K=3), dict(center_penalty=1.0)):
        kw = dict(method="holitom", retention_ratio=0.2, **opts)
        fast = prune(x, a, backend="torch", **kw)
        _check(fast, prune(x, a, backend="reference", **kw), 8, 49, 0.2)
        if "max_window" in opts:
            assert max(e - b + 1 for b, e in fast.segments) <= 2


def test_plain_equals_stop_with_zero_weights(device):
    x, a = (t.to(device) for t in _video(8, 196, "cut"))
    plain = prune(x, a, method="holitom", retention_ratio=0.1, use_stop=False)
    zero = prune(x, a, method="holitom", retention_ratio=0.1, mu_s=0.0, mu_t=0.0, center_penalty=0.0)
    assert torch.equal(plain.positions, zero.positions) and torch.equal(plain.tokens, zero.tokens)
    stop = prune(x, a, method="holitom", retention_ratio=0.1)
    assert not torch.equal(plain.positions, stop.positions)


def test_class_matches_function_and_bf16(device):
    x, a = (t.to(device) for t in _video(8, 49, "cut"))
    pruner = HoliTom(0.15, backend="torch", tau=0.8)
    assert "HoliTom(retention_ratio=0.15, use_stop=True, mu_s=0.04, mu_t=0.07" in repr(pruner)
    out = pruner(x, a)
    ref = prune(x, a, method="holitom", retention_ratio=0.15, backend="torch")
    assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.positions, ref.positions)
    xb = x.bfloat16()
    fast = pruner(xb, a)
    assert fast.tokens.dtype == torch.bfloat16
    _check(fast, prune(xb, a, method="holitom", retention_ratio=0.15, backend="reference"),
           8, 49, 0.15, rtol=1e-2)


@pytest.mark.parametrize("use_stop", [True, False])
def test_triton_backend_matches_twin(use_stop, device):
    ok, why = dispatch.triton_usable(torch.device(device))
    if not ok:
        pytest.skip(f"Triton backend unavailable here: {why}")
    x, a = (t.to(device) for t in _video(8, 49, "cut"))
    kw = dict(method="holitom", retention_ratio=0.2, use_stop=use_stop)
    _check(prune(x, a, backend="triton", **kw), prune(x, a, backend="reference", **kw), 8, 49, 0.2)


@pytest.mark.parametrize("p_static", [0.3, 0.9, 1.0])
@pytest.mark.parametrize("W", [None, 1, 3])
def test_dp_matches_reference_segments(p_static, W):
    g = torch.Generator().manual_seed(7)
    for T in (1, 2, 5, 17):
        cos = torch.where(torch.rand(T - 1, 12, generator=g) < p_static, 0.95, 0.5)
        steady = cos > 0.8
        by_end = pair_counts(steady).T.tolist() if T > 1 else [[0]]
        assert segments_from_counts(by_end, W) == holitom_segments(cos, 0.8, W)


def test_pair_counts_by_hand():
    steady = torch.tensor([[True, True], [True, False], [False, True]])   # T = 4, N = 2
    want = [[0, 2, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert pair_counts(steady).tolist() == want


def test_dpc_knn_matches_reference(device):
    g = torch.Generator().manual_seed(3)
    for trial in range(12):
        n, D = int(torch.randint(2, 60, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        x = (torch.randn(n, D, generator=g) + 4 * torch.randn(D, generator=g)).to(device)
        c = int(torch.randint(1, n + 1, (1,), generator=g))
        k = int(torch.randint(1, c + 1, (1,), generator=g))
        pen = (0.1 * torch.rand(n, generator=g)).to(device) if trial % 2 else None
        got, want = dpc_knn(x, c, k, pen), R.dpc_knn(x, c, k, pen)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    dup = torch.randn(5, 8, generator=g).repeat(3, 1).to(device)        # exact density ties
    got, want = dpc_knn(dup, 4, 3), R.dpc_knn(dup, 4, 3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_dpc_knn_blocked_equals_unblocked(device):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 50, 16, generator=g).to(device)
    counts, centers, k = (torch.tensor(v, device=device) for v in ([50, 30, 7], [5, 3, 2], [4, 3, 1]))
    whole = dpc_knn_batched(x, counts, centers, 5, k, 4)
    blocked = dpc_knn_batched(x, counts, centers, 5, k, 4, block=200)      # 4 rows at a time
    assert torch.equal(whole[0], blocked[0]) and torch.equal(whole[1], blocked[1])
    for b, n in enumerate((50, 30, 7)):
        c = int(centers[b])
        want = R.dpc_knn(x[b, :n], c, int(k[b]))
        assert torch.equal(whole[0][b, :c], want[0]) and torch.equal(whole[1][b, :n], want[1])


X, A = torch.randn(4, 49, 8), torch.rand(4, 49)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(attention=A[:3]), ValueError, r"attention must have shape \(T, N\) = \(4, 49\)"),
    (dict(features=X[:, :30]), ValueError, r"attention must have shape \(T, N\) = \(4, 30\)"),
    (dict(retention_ratio=-0.1), ValueError, r"retention_ratio must be in \(0, 1\]"),
    (dict(retention_ratio=1.01), ValueError, r"retention_ratio must be in \(0, 1\]"),
    (dict(features=X.clone().fill_(float("nan"))), ValueError, "features contains NaN"),
    (dict(attention=A.clone().fill_(float("nan"))), ValueError, "attention contains NaN"),
    (dict(method="HoliTom"), ValueError, "method must be one of"),
    (dict(beta=1.5), ValueError, r"beta must be in \[0, 1\], got 1.5"),
    (dict(K=0), ValueError, "K must be in"),
    (dict(max_window=0), ValueError, "max_window must be in"),
    (dict(num_sink_skip=3), TypeError, r"unknown option\(s\) \['num_sink_skip'\] for method='holitom'"),
    (dict(use_stop=False, mu_t=0.07), ValueError, "mu_t=0.07 has no effect with use_stop=False"),
    (dict(metric=torch.randn(4, 48, 6)), ValueError, r"metric must have shape \(T, N, Dk\)"),
])
def test_rejects_bad_input(kwargs, exc, match):
    args = dict(features=X, attention=A, method="holitom", retention_ratio=0.2)
    args.update(kwargs)
    features, attention = args.pop("features"), args.pop("attention")
    with pytest.raises(exc, match=match):
        prune(features, attention, **args)


def test_budgets_use_exact_arithmetic():
    # Nothing merges (random frames): r' is exactly r, so k_d = ceil(10 · 0.1) = 1 per frame,
    # where float arithmetic (0.1 · 30 / 30 = 0.10000000000000002) would give 2.
    g = torch.Generator().manual_seed(0)
    x, a = torch.randn(3, 10, 8, generator=g), torch.rand(3, 10, generator=g)
    fast = prune(x, a, method="holitom", retention_ratio=0.1, backend="torch")
    twin = prune(x, a, method="holitom", retention_ratio=0.1, backend="reference")
    assert fast.reduced == 0 and fast.num_tokens == twin.num_tokens == 3
    assert fast.adjusted_ratio == 0.1


def test_sink_options_rejected_without_stop():
    x, a = torch.randn(3, 10, 8), torch.rand(3, 10)
    with pytest.raises(ValueError, match="center_penalty=0.3 is a sink term"):
        prune(x, a, method="holitom", retention_ratio=0.1, use_stop=False, center_penalty=0.3)


def test_dpc_knn_duplicate_tokens_tie_to_lower_index():
    # 30 tokens (cdist would take its matmul shortcut) made of 6 vectors repeated 5 times: all
    # densities tie, so the first copy of each vector must be the centre, in both paths.
    from stop_fast import reference
    from stop_fast.pipelines import dpc_knn
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(0)).repeat(5, 1)
    for fn in (reference.dpc_knn, dpc_knn):
        centers, assign = fn(x, 6, 5)
        assert centers.tolist() == [0, 1, 2, 3, 4, 5]
        assert assign.tolist() == list(range(6)) * 5
