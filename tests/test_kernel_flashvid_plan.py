"""Triton flashvid_tree (FlashVid's temporal merge trees, SPEC §10.3d), flashvid_layout (its
output order and merge list, §10.3f, 4) and segment_stats (PruneVid's static test and segment
means, §11.4) against their torch twins and float64 references.

Index outputs are compared exactly; merge weights exactly (both compute 1/count in fp32);
segment means and cosine sums with fp32 tolerances (rtol 1e-5; atol 1e-5 per summed term).
"""
import pytest
import torch

import stop_fast.kernels as K
from stop_fast import torch_backend as TB
from stop_fast.pipelines._flashvid_merge import layout, merge_tree
from stop_fast.pipelines.flashvid import SegmentLayout

pytestmark = pytest.mark.usefixtures("one_thread")


def matches(T, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    best = torch.rand(T - 1, N, generator=g) * 1.4 - 0.4
    best[0, :3] = -torch.inf                              # no unpicked token to match
    arg = torch.randint(0, N, (T - 1, N), generator=g)
    pick_row = torch.where(torch.rand(T, N, generator=g) < 0.2, 0, -1)
    return best, arg, pick_row


@pytest.mark.parametrize("N,segs", [(196, [(0, 3), (4, 4), (5, 8)]), (729, [(0, 1), (2, 2)]),
                                    (20, [(0, 0)]), (50, [(0, 6)])], ids=str)
@pytest.mark.parametrize("B", [0, 3, 25, 60])
def test_tree(N, segs, B, device):
    T = segs[-1][1] + 1
    best, arg, pick_row = (t.to(device) for t in matches(max(T, 2), N))
    best, arg, pick_row = best[:T - 1], arg[:T - 1], pick_row[:T]
    lay = SegmentLayout(segs, torch.device(device))
    got = merge_tree(best, arg, pick_row, lay, B, 0.6, "triton")
    want = merge_tree(best, arg, pick_row, lay, B, 0.6, "torch")
    for name in ("pool", "root", "count", "rank", "loc", "sizes"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def plan(T, N, n_a, seed=0):
    """Random but consistent inputs of the layout: picks, merged-token locations apart from
    them, pools and, for clustered frames, assignments that use every cluster."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, N - n_a, (T,), generator=g).tolist()
    sizes[0] = N - n_a
    clus = [bool(t % 2) and s > 1 for t, s in enumerate(sizes)]
    n_out = [max(1, s // 3) if c else s for s, c in zip(sizes, clus)]
    R, P = max(n_out), max(sizes)
    picks = torch.zeros(T, n_a, dtype=torch.int64)
    mloc = torch.zeros(T, R, dtype=torch.int64)
    assign = torch.zeros(T, P, dtype=torch.int64)
    for t in range(T):
        perm = torch.randperm(N, generator=g)
        picks[t] = perm[:n_a].sort().values
        mloc[t, :n_out[t]] = perm[n_a:n_a + n_out[t]]
        if clus[t]:
            a = torch.randint(0, n_out[t], (P,), generator=g)
            a[:n_out[t]] = torch.arange(n_out[t])
            assign[t] = a[torch.randperm(P, generator=g)] if sizes[t] == P else a
    own = torch.randint(0, 10_000, (T * N,), generator=g)
    return picks, mloc, assign, own, n_out, sizes, clus


@pytest.mark.parametrize("T,N,n_a", [(6, 196, 18), (3, 729, 35), (4, 20, 3)], ids=str)
def test_layout(T, N, n_a, device):
    picks, mloc, assign, own, n_out, sizes, clus = plan(T, N, n_a)
    args = [t.to(device) for t in (picks, mloc, assign, own)] + [n_out, sizes, clus]
    got = layout(*args, "triton")
    want = layout(*args, "torch")
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    keys, ptr = want[0], want[1]
    assert (keys[1:] > keys[:-1]).all() and int(ptr[-1]) == T * n_a + sum(sizes)


def features(T, N, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, D, generator=g)
    still = torch.rand(N, 1, generator=g) < 0.5
    x = base + torch.where(still, 0.05, 2.0) * torch.randn(T, N, D, generator=g)
    x[1, 3] = 0.0                                          # a zero token (cosine 0)
    return x.transpose(0, 1).contiguous().transpose(0, 1).to(dtype)      # strided view


@pytest.mark.parametrize("T,N,D,dtype", [(5, 196, 3584, torch.bfloat16), (4, 729, 72, torch.float32),
                                         (6, 37, 80, torch.float16)], ids=str)
def test_segment_stats(T, N, D, dtype, device):
    x = features(T, N, D, dtype).to(device)
    norms = x.float().norm(dim=-1)
    bounds = torch.tensor([[0, 1], [2, 2], [3, T - 1]], device=device)
    mean, pairs = K.segment_stats(x, norms, bounds)
    t_mean, t_pairs = TB.segment_stats(x, norms, bounds)
    xd = x.double().cpu()
    u = xd / xd.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    for s, (b, e) in enumerate(bounds.tolist()):
        want_m = xd[b:e + 1].mean(0)
        cos = torch.einsum("und,vnd->nuv", u[b:e + 1], u[b:e + 1])
        want_p = cos.sum((1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(1)
        scale = float(xd.abs().max())
        torch.testing.assert_close(mean[s].cpu().double(), want_m, rtol=1e-5, atol=1e-6 * scale)
        torch.testing.assert_close(pairs[s].sum(-1).cpu().double(), want_p, rtol=1e-5,
                                   atol=1e-5 * (e - b + 1) ** 2)
        torch.testing.assert_close(t_pairs[s].sum(-1).cpu().double(), want_p, rtol=1e-5,
                                   atol=1e-5 * (e - b + 1) ** 2)
    torch.testing.assert_close(mean, t_mean, rtol=1e-5, atol=1e-6 * float(xd.abs().max()))


def test_opcheck(device):
    best, arg, pick_row = (t.to(device) for t in matches(4, 20))
    bounds = torch.tensor([[0, 1], [2, 3]], device=device)
    torch.library.opcheck(torch.ops.stop_fast.flashvid_tree, (best, arg, pick_row, bounds, 5, 0.6))
    x = features(4, 20, 40, torch.bfloat16).to(device)
    torch.library.opcheck(torch.ops.stop_fast.segment_stats, (x, x.float().norm(dim=-1), bounds))
    picks, mloc, assign, own, n_out, sizes, clus = plan(3, 20, 3)
    n_a = 3
    out_b = [sum(n_a + n for n in n_out[:t]) for t in range(3)]
    pool_b = [3 * n_a + sum(sizes[:t]) for t in range(3)]
    entry_b = [sum(n_a + n for n in sizes[:t]) for t in range(3)]
    tabs = [torch.tensor(v, device=device) for v in (n_out, sizes, clus, out_b, pool_b, entry_b)]
    torch.library.opcheck(torch.ops.stop_fast.flashvid_layout,
                          tuple(t.to(device) for t in (picks, mloc, assign, own)) + tuple(tabs)
                          + (3 * n_a + sum(n_out), 3 * n_a + sum(sizes)))
