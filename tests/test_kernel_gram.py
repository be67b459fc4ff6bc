"""Triton set_gram (frames' Grams, cross Grams with the previous frame, frame sums; ragged runs
of rows) and project against float64 references and their torch twins.

Tolerances: products of fp32 (or exactly representable fp16/bf16) values summed in fp32 over
D terms, against float64: rtol 1e-5, atol 1e-6 · D · max|x|². The Gram is exactly symmetric.
"""
import pytest
import torch

import stop_fast.kernels as K
from stop_fast import torch_backend as TB

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
pytestmark = pytest.mark.usefixtures("one_thread")


def features(T, N, D, dtype, strided, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, D, generator=g).transpose(0, 1) if strided else \
        torch.randn(T, N, D, generator=g)
    return x.to(dtype)


def tol(x):
    return dict(rtol=1e-5, atol=1e-6 * x.shape[-1] * float(x.float().abs().max()) ** 2)


CASES = ([((2, 196, 3584), d) for d in DTYPES] + [((3, 37, 80), d) for d in DTYPES]
         + [((2, 729, 72), torch.float32), ((1, 20, 16), torch.bfloat16)])


@pytest.mark.parametrize("shape,dtype", CASES, ids=str)
def test_frame_grams(shape, dtype, device):
    T, N, D = shape
    x = features(T, N, D, dtype, strided=dtype != torch.float16).to(device)
    starts = torch.arange(T, device=device) * N
    counts = torch.full((T,), N, device=device)
    counts[-1] = N - 3 if N > 3 else N                       # a short last frame
    g, c, sums = K.set_gram(x, starts, counts, N, True, True)
    xd = x.double().cpu().clone()
    xd[-1, int(counts[-1]):] = 0
    torch.testing.assert_close(g.cpu().double(), xd @ xd.mT, **tol(x))
    torch.testing.assert_close(c.cpu().double(), xd[1:] @ xd[:-1].mT, **tol(x))
    torch.testing.assert_close(sums.sum(1).cpu().double(), xd.sum(1),
                               rtol=1e-5, atol=1e-5 * N * float(x.float().abs().max()))
    assert torch.equal(g, g.mT)
    twin = TB.set_gram(x, starts, counts, N, True, True)
    for a, b in zip((g, c), twin[:2]):
        torch.testing.assert_close(a, b, **tol(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ragged_runs(dtype, device):
    buf = features(1, 300, 1024, dtype, strided=False)[0].to(device)
    sizes = [40, 0, 196, 1, 63]
    starts = [0, 40, 40, 236, 237]
    st, cnt = (torch.tensor(v, device=device) for v in (starts, sizes))
    g = K.set_gram(buf, st, cnt, max(sizes), False, False)[0]
    assert g.shape == (5, 196, 196)
    for s, (a, n) in enumerate(zip(starts, sizes)):
        rows = buf[a:a + n].double().cpu()
        torch.testing.assert_close(g[s, :n, :n].cpu().double(), rows @ rows.T, **tol(buf))
        assert not g[s, n:].any() and not g[s, :, n:].any()      # zero padding
    torch.testing.assert_close(g, TB.set_gram(buf, st, cnt, 196, False, False)[0], **tol(buf))


@pytest.mark.parametrize("T,N,D,dtype", [(2, 196, 3584, torch.bfloat16), (2, 729, 80, torch.float32),
                                          (3, 37, 72, torch.float16)], ids=str)
def test_project(T, N, D, dtype, device):
    x = features(T, N, D, dtype, strided=True).to(device)
    v = torch.randn(D, T, device=device).T                     # strided vectors
    h = K.project(x, v)
    want = torch.einsum("tnd,td->tn", x.double(), v.double())
    scale = float(x.float().abs().max() * v.abs().max()) * D
    torch.testing.assert_close(h.double(), want, rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(h, TB.project(x, v), rtol=1e-5, atol=1e-6 * scale)


def test_opcheck(device):
    x = features(3, 20, 40, torch.bfloat16, strided=True).to(device)
    st, cnt = torch.tensor([0, 20, 40], device=device), torch.tensor([20, 15, 20], device=device)
    torch.library.opcheck(torch.ops.stop_fast.set_gram, (x, st, cnt, 20, True, True))
    torch.library.opcheck(torch.ops.stop_fast.project, (x, torch.randn(3, 40, device=device)))
