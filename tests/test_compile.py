"""torch.compile(fullgraph=True) over the public primitives, on every backend.

Compiled results must equal eager ones: exactly where the compiled graph runs the same kernels
(the "eager" and "aot_eager" compiler backends, and the Triton ops, which stay opaque), within
a few ulps where inductor generates its own code. Tiny shapes: the cost here is tracing.
"""
import pytest
import torch

import stop_fast as sf


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        q=torch.randn(2, 6, 2, 16, generator=g),                    # (B, N, H, d)
        k=torch.randn(2, 6, 2, 16, generator=g),
        attn=torch.rand(3, 6, generator=g).pow(3),
        x=torch.randn(3, 6, 8, generator=g),
        bounds=torch.tensor([[0, 2], [1, 1], [2, 2]]),
        merge=(torch.tensor([0, 6, 12, 3, 4]), torch.tensor([0.25, 0.25, 0.5, 0.6, 0.4]),
               torch.tensor([0, 3, 3, 5])),
    )


def primitives(q, k, attn, x, bounds, merge, backend):
    """Every public primitive once, sink scores feeding the selections as in the pipelines."""
    a = sf.column_mean_attention(q, k, layout="bnhd", backend=backend)
    s = sf.sink_score(attn, backend=backend)
    idx = sf.penalized_topk(attn, s, 3, mu_s=0.03, backend=backend)
    gidx, tokens = sf.gather_topk(attn, s, 3, x, mu_s=0.03, backend=backend)
    c = sf.adjacent_cosine(x, backend=backend)
    m = sf.static_mask(x, s, tau=0.2, mu_t=0.07, backend=backend)
    seg = sf.segment_static_mask(x, s, bounds, tau=0.2, mu_t=0.07, backend=backend)
    merged = sf.merge_tokens(x, *merge, backend=backend)
    d2 = sf.frame_gram(x, mode="distance", backend=backend)
    dots = sf.frame_gram(x, merge[0][None, :3].expand(3, 3), backend=backend)
    rho, delta = sf.knn_density(d2, merge[0][None, :4].expand(3, 4) % 6, 2, backend=backend)
    return (a, s, idx, gidx, tokens, c, m, seg, merged, d2, dots, rho, delta)


def assert_same(compiled, eager):
    assert len(compiled) == len(eager)
    for a, b in zip(compiled, eager):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_fullgraph_equals_eager(backend, compiler):
    t = inputs()
    eager = primitives(**t, backend=backend)
    compiled = torch.compile(primitives, backend=compiler, fullgraph=True)(**t, backend=backend)
    assert_same(compiled, eager)


def test_inductor_sink_score_and_topk():
    # The torch backend through inductor's generated code (C++ on CPU).
    def select(attn, k: int):
        s = sf.sink_score(attn, backend="torch")
        return s, sf.penalized_topk(attn, s, k, mu_s=0.03, backend="torch")

    attn = inputs()["attn"]
    s, idx = select(attn, 3)
    cs, cidx = torch.compile(select, fullgraph=True)(attn, 3)
    torch.testing.assert_close(cs, s, rtol=0, atol=1e-6)
    assert torch.equal(cidx, idx)


def test_dispatch_does_not_import_while_tracing(monkeypatch):
    # Every backend module is resolved ahead of the trace: importing during one would break it.
    import importlib

    def no_import(*args, **kwargs):
        raise AssertionError("import while tracing")

    t = inputs()
    fn = torch.compile(primitives, backend="eager", fullgraph=True)
    monkeypatch.setattr(importlib, "import_module", no_import)
    for backend in ("torch", "triton", "reference"):
        fn(**t, backend=backend)
