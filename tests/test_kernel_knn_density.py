"""knn_density: the Triton kernels and the torch backend against the float64 reference.

Sets as FastVid and DPC-KNN have them: a frame's non-salient tokens (n = 184 of N = 196, and
240 of 256), ragged sets with −1 padding, k = 1, 4 and 7, contiguous and strided distance
matrices (frame_gram output and a transposed view). Inputs are random points, so no two
densities tie; ρ and δ within rtol = 1e-5 (fp32 against float64 from the same distances),
padding exactly 0. One case of exact ties (duplicate points) checks the tie rule: the lower
position is denser, so the first duplicate gets the larger δ.
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R


def sets(B, R_, n, D, seed, ragged=False, strided=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, R_, D, generator=g)
    d2 = sf.frame_gram(x, mode="distance", backend="torch")
    if strided:
        d2 = d2.transpose(1, 2)                        # symmetric: the same values, other strides
    members = torch.stack([torch.randperm(R_, generator=g)[:n] for _ in range(B)])
    if ragged:
        members[0, n // 2:] = -1
    return d2, members


CASES = [(4, 196, 184, 4, False, False), (2, 256, 240, 7, True, True), (3, 49, 30, 1, True, False)]


@pytest.mark.parametrize("B,R_,n,k,ragged,strided", CASES)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_reference(backend, B, R_, n, k, ragged, strided, device):
    d2, members = sets(B, R_, n, 16, B + n, ragged, strided)
    rho, delta = sf.knn_density(d2.to(device), members.to(device), k, scale=1 / 16,
                                backend=backend)
    want_rho, want_delta = R.knn_density(d2, members, k, 1 / 16)
    torch.testing.assert_close(rho.cpu(), want_rho, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(delta.cpu(), want_delta, rtol=1e-5, atol=1e-7)
    pad = (members < 0).to(device)
    assert not rho[pad].any() and not delta[pad].any()


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_ties_go_to_the_lower_position(backend):
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])[None]          # two equal points
    d2 = sf.frame_gram(x, mode="distance", backend="torch")
    rho, delta = sf.knn_density(d2, torch.tensor([[0, 1, 2]]), 2, backend=backend)
    assert rho[0, 0] == rho[0, 1]
    assert delta[0, 0] == 5.0 and delta[0, 1] == 0.0      # the first: none denser → largest


def test_validation():
    d2 = torch.zeros(2, 5, 5)
    with pytest.raises(ValueError, match="members must index"):
        sf.knn_density(d2, torch.tensor([[0, 1, 7], [0, 1, 2]]), 2)
    with pytest.raises(ValueError, match="smaller than k"):
        sf.knn_density(d2, torch.tensor([[0, -1, -1], [0, 1, 2]]), 2)
    with pytest.raises(TypeError, match="d2 must have dtype"):
        sf.knn_density(d2.double(), torch.tensor([[0, 1], [0, 1]]), 1)
    with pytest.raises(ValueError, match="d2 must be"):
        sf.knn_density(torch.zeros(2, 5, 4), torch.tensor([[0, 1], [0, 1]]), 1)


def test_opcheck(device):
    d2, members = sets(2, 20, 12, 8, 1, ragged=True)
    torch.library.opcheck(torch.ops.stop_fast.knn_density,
                          (d2.to(device), members.to(device), 3, 0.5))
