"""visionzip_plan: the Triton kernel against its torch twin (stop_fast.torch_backend).

Entry for entry: rows, offsets, positions and kinds must be identical and weights equal
(both are 1 or the fp32 reciprocal of the same member count). Shapes from SPEC §1 and §7:
N = 196 (LLaVA), 256 (Qwen2.5-VL) and 500 (near the kernel's limit of 512), metric head dims 72 and 80, fp32/fp16/bf16
metrics, contiguous and strided (a permuted (N, T, Dk) buffer), targets shared by every
frame (a broadcast row) or per frame, no dominant token at all (S = 1). Inputs are random
floats, so no two cosines tie exactly (a tie could go either way between two summation
orders).
"""
import pytest
import torch

from stop_fast import torch_backend as TB
from stop_fast.pipelines.visionzip import contextual_targets

K = pytest.importorskip("stop_fast.kernels")


def inputs(T, N, Dk, S, dtype, strided, per_frame, seed):
    g = torch.Generator().manual_seed(seed)
    attn = torch.rand(T, N, generator=g)
    sink = torch.rand(N, generator=g)
    metric = torch.randn(T, N, Dk, generator=g).to(dtype)
    if strided:
        metric = metric.transpose(0, 1).contiguous().transpose(0, 1)
    n_dom = S * 54 // 64
    C, R = S - n_dom, N - n_dom
    if per_frame:
        targets = contextual_targets(torch.rand(T, R, generator=g) < 0.3, C)
    else:
        targets = torch.arange(0, C * max(1, R // C), max(1, R // C)).expand(T, C)
    return attn, sink, n_dom, targets, metric


CASES = [(4, 196, 72, 20), (3, 256, 80, 25), (2, 500, 72, 50), (3, 196, 72, 1), (2, 49, 16, 49)]


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Each shape once per dtype, alternating layouts and target kinds.
MATRIX = [(*case, dt, (i + j) % 2 == 1, (i + 2 * j) % 3 == 0) for i, case in enumerate(CASES)
          for j, dt in enumerate(DTYPES)]


@pytest.mark.parametrize("T,N,Dk,S,dtype,strided,per_frame", MATRIX, ids=str)
def test_kernel_equals_twin(T, N, Dk, S, dtype, strided, per_frame, device):
    attn, sink, n_dom, targets, metric = inputs(T, N, Dk, S, dtype, strided, per_frame, N + S)
    args = [t.to(device) if isinstance(t, torch.Tensor) else t
            for t in (attn, sink, 0.03, n_dom, targets, metric, (0, 1))]
    got = K.visionzip_plan(*args)
    want = TB.visionzip_plan(*args)
    names = ("rows", "weights", "offsets", "positions", "kinds")
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a.cpu(), b.cpu()), name
    rows, _, offsets, positions, kinds = (t.cpu() for t in got)
    assert torch.equal(rows.sort().values, torch.arange(T * N))      # every token once
    assert int(offsets[-1]) == T * N and bool((offsets.diff() >= 1).all())
    assert int((kinds == 0).sum()) == T * n_dom


def test_opcheck(device):
    attn, sink, n_dom, targets, metric = inputs(2, 49, 16, 10, torch.float32, True, False, 1)
    args = (attn.to(device), sink.to(device), 0.03, n_dom, targets.to(device), metric.to(device),
            [0, 1])
    torch.library.opcheck(torch.ops.stop_fast.visionzip_plan, args)


def test_budget_shapes_fit_the_kernel():
    # The pipeline hands frames of more than MAX_N locations to the torch layout instead.
    from stop_fast.kernels.visionzip_plan import MAX_N
    from stop_fast.pipelines.visionzip import PLAN_MAX_N
    assert PLAN_MAX_N == MAX_N
    assert 256 <= MAX_N                      # Qwen2.5-VL's merged tokens per frame (SPEC §1)


def test_large_frames_use_the_torch_layout(device):
    # N = 576 > MAX_N: backend="triton" still equals the float64 twin (torch layout, Triton merge).
    import stop_fast as sf
    from stop_fast.synthetic import make_video
    v = make_video(num_frames=2, grid=(24, 24), dim=16, metric_dim=8, seed=2, device=device)
    kw = dict(method="visionzip", retention_ratio=0.1, metric=v.metric)
    fast = sf.prune(v.features, v.attention, backend="triton", **kw)
    twin = sf.prune(v.features, v.attention, backend="reference", **kw)
    assert torch.equal(fast.positions.cpu(), twin.positions.cpu())
    torch.testing.assert_close(fast.tokens.cpu(), twin.tokens.cpu(), rtol=1e-5, atol=1e-5)
