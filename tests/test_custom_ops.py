"""The Triton kernels as torch.library custom ops: schema/fake checks, torch.compile
(fullgraph, the ops stay opaque nodes) and, on CUDA, CUDA-graph capture.

Compiled and direct op results must equal eager results exactly (same kernels, same inputs).
"""
import pytest
import torch

import stop_fast as sf
import stop_fast.kernels  # noqa: F401  (registers torch.ops.stop_fast.*)

OPS = torch.ops.stop_fast
OP_NAMES = ["column_mean_attention", "sink_score", "penalized_topk", "gather_topk",
            "adjacent_cosine", "static_mask", "segment_static_mask", "merge_tokens", "frame_gram",
            "knn_density"]


def inputs(device):
    torch.manual_seed(0)
    return dict(
        q=torch.randn(2, 20, 3, 2, 24, device=device)[:, :, 0],      # (B, N, H, d) view
        k=torch.randn(2, 20, 3, 2, 24, device=device)[:, :, 1],
        attn=torch.rand(3, 20, device=device),
        x=torch.randn(3, 20, 40, device=device).to(torch.bfloat16),
        bounds=torch.tensor([[0, 2], [1, 1]], device=device),
        merge=(torch.tensor([0, 21, 42, 5, 7], device=device),
               torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.5, 0.5], device=device),
               torch.tensor([0, 3, 3, 5], device=device)),
    )


def pipeline(q, k, attn, x, bounds, merge):
    """Every primitive once, through the public API."""
    a = sf.column_mean_attention(q, k, layout="bnhd", backend="triton")
    s = sf.sink_score(attn, backend="triton")
    idx = sf.penalized_topk(attn, s, 5, mu_s=0.03, backend="triton")
    gidx, tokens = sf.gather_topk(attn, s, 5, x, mu_s=0.03, backend="triton")
    c = sf.adjacent_cosine(x, backend="triton")
    m = sf.static_mask(x, s, tau=0.5, mu_t=0.07, backend="triton")
    seg = sf.segment_static_mask(x, s, bounds, tau=0.5, mu_t=0.07, backend="triton")
    merged = sf.merge_tokens(x, *merge, out_dtype=torch.float32, backend="triton")
    d2 = sf.frame_gram(x, mode="distance", backend="triton")
    rho, delta = sf.knn_density(d2, merge[0][None, :4].expand(3, 4) % 20, 2, backend="triton")
    return a, s, idx, gidx, tokens, c, m, seg, merged, d2, rho, delta


def op_cases(device):
    t = inputs(device)
    qb, kb = t["q"].transpose(1, 2), t["k"].transpose(1, 2)
    attn, x, bounds = t["attn"], t["x"], t["bounds"]
    sink = torch.rand(20, device=device)
    lse = torch.randn(2, 20, 2, device=device).transpose(1, 2)
    return {
        "column_mean_attention": [(qb, kb, 0.2, None), (qb, kb, 0.2, lse)],
        "sink_score": [(attn, 1.1, 1e-12)],
        "penalized_topk": [(attn, sink, 4, 0.03)],
        "gather_topk": [(attn, sink, 4, x, 0.03)],
        "adjacent_cosine": [(x,)],
        "static_mask": [(x, sink, 0.5, 0.07)],
        "segment_static_mask": [(x, sink, bounds, 0.5, 0.07)],
        "merge_tokens": [(x, *t["merge"], None), (x, *t["merge"], torch.float32)],
        "frame_gram": [(x, None, "distance"), (x, t["merge"][0][None, :3].expand(3, 3), "unit_keys")],
        "knn_density": [(torch.rand(3, 20, 20, device=device), t["merge"][0][None, :4].expand(3, 4) % 20,
                         2, 0.5)],
    }


@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck(name, device):
    # Schema, fake (meta) implementation and dispatcher registrations agree with the kernel.
    for args in op_cases(device)[name]:
        torch.library.opcheck(getattr(OPS, name), args)


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_equals_launcher(name, device):
    for args in op_cases(device)[name]:
        via_op = getattr(OPS, name)(*args)
        direct = getattr(stop_fast.kernels, name)(*args)
        via_op = via_op if isinstance(via_op, (tuple, list)) else (via_op,)
        direct = direct if isinstance(direct, tuple) else (direct,)
        for a, b in zip(via_op, direct):
            assert torch.equal(a, b)


def _dispatched_ops(fn):
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("stop_fast::")}


@pytest.mark.parametrize("name", OP_NAMES)
def test_eager_calls_skip_the_dispatcher(name, device):
    # kernel_op: an eager call runs the launcher itself; only the op goes through the dispatcher.
    args = op_cases(device)[name][0]
    exposed = getattr(stop_fast.kernels, name)
    assert _dispatched_ops(lambda: exposed(*args)) == set()
    assert _dispatched_ops(lambda: exposed.op(*args)) == {f"stop_fast::{name}"}


@pytest.mark.parametrize("name", OP_NAMES)
def test_fake_tensors_go_through_the_op(name, device):
    # Under a dispatch mode (here FakeTensorMode, as export and make_fx use) the exposed
    # function calls the op, whose fake gives the launcher's output shapes and dtypes.
    from torch._subclasses.fake_tensor import FakeTensorMode
    args = op_cases(device)[name][0]
    real = getattr(stop_fast.kernels, name)(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = getattr(stop_fast.kernels, name)(*fake_args)
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, (tuple, list)) else (fake,)
    assert [(r.shape, r.dtype) for r in real] == [(f.shape, f.dtype) for f in fake]


def test_compile_fullgraph(device):
    t = inputs(device)
    eager = pipeline(**t)   # also the first call, which imports the kernels outside tracing
    seen = set()

    def recording_backend(gm, example_inputs):
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(pipeline, backend=recording_backend, fullgraph=True)(**t)
    for name in OP_NAMES:
        assert any(f"stop_fast.{name}" in s for s in seen), f"{name} is not an opaque graph node"

    torch._dynamo.reset()
    compiled = torch.compile(pipeline, backend="aot_eager", fullgraph=True)(**t)
    assert len(compiled) == len(eager)
    for a, b in zip(compiled, eager):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_capture():
    t = inputs("cuda")
    eager = pipeline(**t)                       # compile + autotune before capture
    sf.set_finite_checks(False)                 # the input checks sync; capture forbids it
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            pipeline(**t)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = pipeline(**t)
        graph.replay()
        torch.cuda.synchronize()
    finally:
        sf.set_finite_checks(True)
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)
