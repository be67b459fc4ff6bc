"""Bad input is rejected by the public API with a message naming the argument (SPEC-level checks)."""
import math

import pytest
import torch

import stop_fast as sf
from stop_fast import dispatch

A = torch.rand(4, 10)
S = torch.rand(10)
X = torch.randn(4, 10, 8)
Q = torch.randn(1, 2, 10, 8)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: sf.column_mean_attention(Q[0], Q), ValueError, r"q must have shape \(B, H, N, d\) \(4 dims\), got shape \(2, 10, 8\)"),
    (lambda: sf.column_mean_attention(Q, torch.randn(1, 3, 10, 8)), ValueError, r"k must match q .* H=2"),
    (lambda: sf.column_mean_attention(Q, torch.randn(1, 2, 10, 4)), ValueError, r"k must match q .* d=4"),
    (lambda: sf.column_mean_attention(Q, Q.half()), TypeError, "q and k must share a dtype"),
    (lambda: sf.column_mean_attention(Q.long(), Q.long()), TypeError, "q must have dtype in"),
    (lambda: sf.column_mean_attention([1.0], Q), TypeError, "q must be a torch.Tensor"),
    (lambda: sf.column_mean_attention(Q, Q, layout="nhd"), ValueError, "layout must be one of"),
    (lambda: sf.column_mean_attention(Q, Q, lse=torch.zeros(1, 2, 9)), ValueError, r"lse must have shape \(B, H, Nq\) = \(1, 2, 10\)"),
    (lambda: sf.column_mean_attention(Q, Q, scale=-1.0), ValueError, "scale must be > 0"),
    (lambda: sf.column_mean_attention(torch.randn(1, 1, 2, 300), torch.randn(1, 1, 2, 300)), ValueError, "head dim must be at most 256"),
    (lambda: sf.column_mean_attention(Q, Q.to("meta")), ValueError, "k is on meta but q is on cpu"),
    (lambda: sf.column_mean_attention(Q, Q, backend="cuda"), ValueError, "backend must be one of"),
    (lambda: sf.sink_score(A[0]), ValueError, r"attn must have shape \(T, N\)"),
    (lambda: sf.sink_score(A, gamma=0), ValueError, "gamma must be > 0"),
    (lambda: sf.sink_score(A, gamma=float("nan")), ValueError, "gamma must be finite"),
    (lambda: sf.sink_score(torch.rand(0, 10)), ValueError, "attn must have a non-empty dim 0"),
    (lambda: sf.penalized_topk(A, S, 0, mu_s=0.03), ValueError, r"k must be in \[1, 10\], got 0"),
    (lambda: sf.penalized_topk(A, S, 11, mu_s=0.03), ValueError, r"k must be in \[1, 10\], got 11"),
    (lambda: sf.penalized_topk(A, S, 2.0, mu_s=0.03), TypeError, "k must be an int"),
    (lambda: sf.penalized_topk(A, S[:9], 2, mu_s=0.03), ValueError, r"sink must have shape \(N,\) = \(10,\)"),
    (lambda: sf.penalized_topk(A, S, 2, mu_s=math.inf), ValueError, "mu_s must be finite"),
    (lambda: sf.penalized_topk(A, S.to("meta"), 2, mu_s=0.1), ValueError, "sink is on meta"),
    (lambda: sf.gather_topk(A, S, 2, X[:, :9], mu_s=0.1), ValueError, r"features must have shape \(T, N, D\) with \(T, N\) = \(4, 10\)"),
    (lambda: sf.adjacent_cosine(X[:1]), ValueError, "x must have at least 2 frames"),
    (lambda: sf.adjacent_cosine(X[0]), ValueError, r"x must have shape \(T, N, D\)"),
    (lambda: sf.static_mask(X, S, tau=float("nan"), mu_t=0.07), ValueError, "tau must be finite"),
    (lambda: sf.static_mask(X, S, tau=0.8, mu_t="0.07"), TypeError, "mu_t must be a real number"),
    (lambda: sf.static_mask(X, torch.rand(9), tau=0.8, mu_t=0.0), ValueError, r"sink must have shape \(N,\) = \(10,\)"),
    (lambda: sf.segment_static_mask(X, S, torch.tensor([[0, 4]]), tau=0.8, mu_t=0.0), ValueError, "0 <= b <= e < T = 4"),
    (lambda: sf.segment_static_mask(X, S, torch.tensor([[2, 1]]), tau=0.8, mu_t=0.0), ValueError, "0 <= b <= e < T = 4"),
    (lambda: sf.segment_static_mask(X, S, torch.tensor([[0.0, 1.0]]), tau=0.8, mu_t=0.0), TypeError, "bounds must have dtype"),
    (lambda: sf.segment_static_mask(X, S, torch.tensor([[0, 1, 2]]), tau=0.8, mu_t=0.0), ValueError, r"bounds must have shape \(S, 2\)"),
])
def test_rejects(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("call,name", [
    (lambda v: sf.sink_score(A.clone().index_fill_(1, torch.tensor([3]), v)), "attn"),
    (lambda v: sf.penalized_topk(A, S.clone().fill_(v), 2, mu_s=0.1), "sink"),
    (lambda v: sf.adjacent_cosine(X.clone().fill_(v)), "x"),
    (lambda v: sf.gather_topk(A, S, 2, X.clone().fill_(v), mu_s=0.1), "features"),
    (lambda v: sf.column_mean_attention(Q.clone().fill_(v), Q), "q"),
    (lambda v: sf.column_mean_attention(Q, Q, lse=torch.full((1, 2, 10), v)), "lse"),
])
def test_rejects_non_finite(call, name, bad):
    with pytest.raises(ValueError, match=f"{name} contains NaN or Inf"):
        call(bad)


def test_finite_checks_can_be_disabled():
    sf.set_finite_checks(False)
    try:
        out = sf.sink_score(torch.full((2, 3), float("nan")), backend="torch")
        assert torch.isnan(out).all()
    finally:
        sf.set_finite_checks(True)


def test_triton_backend_explains_why_unavailable(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' is unavailable: Triton kernels need a CUDA tensor"):
        dispatch.resolve("triton", torch.device("cpu"))
    assert dispatch.resolve("auto", torch.device("cpu")) == "torch"


def test_sink_score_rejects_negative_attention():
    with pytest.raises(ValueError, match="attn must be non-negative .* minimum of -0.5"):
        sf.sink_score(torch.tensor([[-0.5, 1.0, 0.2]]))


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_segment_static_mask_single_frame(backend):
    x = torch.randn(1, 5, 8)
    out = sf.segment_static_mask(x, torch.rand(5), torch.tensor([[0, 0]]), tau=0.0, mu_t=0.0, backend=backend)
    assert out.shape == (1, 5) and not out.any()


def test_segment_bounds_checked_on_cpu_even_without_finite_checks():
    sf.set_finite_checks(False)
    try:
        with pytest.raises(ValueError, match="0 <= b <= e < T = 4"):
            sf.segment_static_mask(X, S, torch.tensor([[-1, 2]]), tau=0.8, mu_t=0.0)
    finally:
        sf.set_finite_checks(True)


# ---- what a newcomer tripped over -------------------------------------------------------

def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    a, s = torch.rand(3, 10), torch.rand(10)
    want = sf.penalized_topk(a, s, 2, mu_s=0.03, backend="torch")
    got = sf.penalized_topk(a, s, np.int64(2), mu_s=np.float32(0.03), backend="torch")
    assert torch.equal(got, want)
    from stop_fast.pipelines import prune
    x = torch.randn(2, 196, 8)
    out = prune(x, torch.rand(2, 196), method="visionzip", metric=torch.randn(2, 196, 4),
                retention_ratio=np.float32(0.1), backend="torch")
    assert out.num_tokens == 2 * 20            # the N = 196 table's 0.1 entry, not int(196·0.1…)
    with pytest.raises(TypeError, match="k must be an int, got float64"):
        sf.penalized_topk(a, s, np.float64(2.0), mu_s=0.0)


def test_meta_tensors_skip_the_finite_checks():
    a = torch.empty(4, 8, device="meta")
    out = sf.sink_score(a, backend="torch")
    assert out.device.type == "meta" and out.shape == (8,)
    q = torch.empty(2, 3, 5, 8, device="meta")
    assert sf.column_mean_attention(q, q, backend="torch").shape == (2, 5)


def test_column_mean_attention_is_not_differentiable():
    q = torch.randn(1, 2, 6, 8, requires_grad=True)
    k = torch.randn(1, 2, 6, 8, requires_grad=True)
    out = sf.column_mean_attention(q, k, backend="torch")
    assert not out.requires_grad and out.grad_fn is None


def test_input_checks_context_manager_restores():
    from stop_fast import _checks as C
    nan = torch.full((2, 4), float("nan"))
    assert C.finite_checks_enabled()
    with sf.input_checks(False):
        assert not C.finite_checks_enabled()
        sf.sink_score(nan, backend="torch")                 # not checked: no error
    assert C.finite_checks_enabled()
    with pytest.raises(ValueError, match="attn contains NaN"):
        sf.sink_score(nan, backend="torch")


def test_tensor_scalars_count_like_numbers():
    from stop_fast.pipelines import prune
    x, a, m = torch.randn(2, 196, 8), torch.rand(2, 196), torch.randn(2, 196, 4)
    for r in (0.1, torch.tensor(0.1), torch.tensor(0.1, dtype=torch.float64)):
        out = prune(x, a, method="visionzip", metric=m, retention_ratio=r, backend="torch")
        assert out.num_tokens == 2 * 20 and out.retention_ratio == 0.1
    s = torch.rand(196)
    assert torch.equal(sf.penalized_topk(a, s, torch.tensor(5), mu_s=0.1, backend="torch"),
                       sf.penalized_topk(a, s, 5, mu_s=0.1, backend="torch"))
    with pytest.raises(TypeError, match="k must be an int, got float32"):
        sf.penalized_topk(a, s, torch.tensor(5.0), mu_s=0.1)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(method="holitom", metric=torch.randn(3, 16, 4)), ValueError,
     r"metric is not used by method='holitom'; only by \['visionzip'\]"),
    (dict(method="holitom", center_penalty=-0.1), ValueError, "center_penalty must be >= 0"),
    (dict(method="flashvid", use_stop=False, sink_scope="video"), ValueError,
     "sink_scope='video' is a sink term"),
    (dict(method="holitom", global_features=torch.randn(3, 8)), ValueError,
     r"global_features is not used by method='holitom'"),
])
def test_pipeline_options_that_would_be_ignored_raise(kwargs, exc, match):
    from stop_fast.pipelines import prune
    with pytest.raises(exc, match=match):
        prune(torch.randn(3, 16, 8), torch.rand(3, 16), retention_ratio=0.25, **kwargs)


def test_flashvid_reports_its_segment_sink_and_warns_on_oversized_budget():
    from stop_fast.pipelines import prune
    x, a = torch.randn(6, 16, 8), torch.rand(6, 16)
    out = prune(x, a, method="flashvid", retention_ratio=0.25, min_segments=2, backend="torch")
    assert out.extras["segment_sink"].shape == (len(out.segments), 16)
    with pytest.warns(UserWarning, match="exceeds the N = 16 tokens"):
        prune(x, a, method="flashvid", retention_ratio=1.0, adts_share=0.5, backend="torch")
