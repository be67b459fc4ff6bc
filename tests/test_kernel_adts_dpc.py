"""Triton adts_match (FlashVid's ADTS picks and temporal best match) and dpc_scores /
dpc_assign (DPC-kNN from Gram matrices) against their float64 references and torch twins.

Selections (picks, matches, centres, assignments) are compared exactly on random inputs
without near-ties; the best-match cosine within 2e-6 (values in [−1, 1], fp32 from a Gram
against float64 from the features); centre scores within 1e-4 (log-domain, fp32).
"""
import math

import pytest
import torch

import stop_fast.kernels as K
from stop_fast import torch_backend as TB
from stop_fast.pipelines.dpc_knn import gram_assign, gram_scores
from stop_fast.pipelines.flashvid_reference import _adts, dpc_knn_ranked

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(T, N, D, seed=0):
    """Scenes that drift slowly: the next frame's tokens match the previous frame's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, N, D, generator=g) + 0.4 * torch.randn(T, N, D, generator=g)
    w = torch.randn(T, N, generator=g)
    return x, w


@pytest.mark.parametrize("T,N,D,n_a", [(3, 196, 3584, 18), (2, 729, 72, 35), (3, 37, 80, 7),
                                       (2, 5, 16, 5), (2, 1, 16, 1)], ids=str)
def test_adts_match(T, N, D, n_a, device):
    x, w = frames(T, N, D)
    x = x.to(device)
    G = torch.bmm(x, x.mT)
    C = torch.bmm(x[1:], x[:-1].mT)
    picks, pick_row, best, arg = K.adts_match(G, C, w.to(device), n_a)
    xd = x.double().cpu()
    want = [_adts(xd[t], w[t].double(), n_a) for t in range(T)]       # float64, ascending
    assert picks.cpu().tolist() == want
    rows = torch.full((T, N), -1, dtype=torch.int64)
    for t in range(T):
        rows[t, want[t]] = torch.arange(t * n_a, (t + 1) * n_a)
    assert torch.equal(pick_row.cpu(), rows)
    # best match of frame t + 1's tokens among frame t's unpicked tokens
    u = xd / xd.norm(dim=-1, keepdim=True)
    cos = (u[1:] @ u[:-1].mT).masked_fill(rows[:-1, None, :] >= 0, -math.inf)
    want_best, want_arg = cos.max(-1)
    torch.testing.assert_close(best.cpu().double(), want_best, rtol=0, atol=2e-6)
    assert torch.equal(arg.cpu(), want_arg)
    twin = TB.adts_match(G, C, w.to(device), n_a)
    for a, b in zip((picks, pick_row, arg), (twin[0], twin[1], twin[3])):
        assert torch.equal(a, b)


def sets(B, n, D, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, D, generator=g) * torch.rand(B, n, 1, generator=g)
    valid = torch.rand(B, n, generator=g) < 0.8
    valid[:, :3] = True
    x[0, 5] = x[0, 7]                                     # duplicate tokens tie exactly
    return x, valid


@pytest.mark.parametrize("B,n,D", [(3, 196, 3584), (2, 729, 72), (4, 40, 80)], ids=str)
def test_dpc_scores_and_assign(B, n, D, device):
    x, valid = sets(B, n, D)
    G = torch.bmm(x, x.mT).to(device)
    k = torch.tensor([1, 2, 7, 3][:B])
    score = K.dpc_scores(G, valid.to(device), k.to(device), 7, D)
    twin = gram_scores(G, valid.to(device), k.to(device), 7, D)
    torch.testing.assert_close(score.nan_to_num(neginf=-1e30), twin.nan_to_num(neginf=-1e30),
                               rtol=0, atol=1e-4)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices.cpu()
    n_c = torch.tensor([5, 3, 8, 1][:B])
    assign = K.dpc_assign(G, order.to(device), n_c.to(device), D).cpu()
    assert torch.equal(assign, gram_assign(G, order.to(device), n_c.to(device), D).cpu())
    for b in range(B):
        members = valid[b].nonzero().squeeze(1)
        centers, asg = dpc_knn_ranked(x[b, members], int(n_c[b]), int(k[b]))    # float64
        assert members[centers].tolist() == order[b, :n_c[b]].tolist()
        assert assign[b, members].tolist() == asg


def test_opcheck(device):
    x, w = frames(3, 20, 16)
    x = x.to(device)
    G, C = torch.bmm(x, x.mT), torch.bmm(x[1:], x[:-1].mT)
    torch.library.opcheck(torch.ops.stop_fast.adts_match, (G, C, w.to(device), 4))
    valid = torch.ones(3, 20, dtype=torch.bool, device=device)
    k = torch.tensor([2, 3, 1], device=device)
    torch.library.opcheck(torch.ops.stop_fast.dpc_scores, (G, valid, k, 3, 16))
    centers = torch.arange(4, device=device).expand(3, 4).contiguous()
    torch.library.opcheck(torch.ops.stop_fast.dpc_assign, (G, centers, k, 16))
