"""frame_gram: the Triton kernel and the torch backend against the float64 reference.

Shapes from SPEC §1: N = 196 (LLaVA) and 256 (Qwen2.5-VL) tokens per frame, feature widths 72
and 80 (not powers of two) and 3584, fp32/fp16/bf16, contiguous and strided (a permuted
(N, T, D) buffer), each frame's own Gram (raw and centred) and dots against key rows in other
frames with padding, dots, squared distances and unit-key dots. Tolerance: relative to the largest value of
the case, 1e-5 (fp32 accumulation of D products of rows read exactly; fp16/bf16 rows are exact
in fp32); a row's distance to itself is exactly 0.
"""
import pytest
import torch

import stop_fast as sf
from stop_fast import reference as R


def features(T, N, D, dtype, strided, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, N, D, generator=g) + offset).to(dtype)
    if strided:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    return x


def keys_for(T, N, K, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, T * N, (T, K), generator=g)
    keys[:, -1] = -1                                   # padding
    return keys


def close(got, want, tol=1e-5):
    scale = want.abs().max().clamp(min=1.0)
    torch.testing.assert_close(got.double() / scale, want.double() / scale, rtol=tol, atol=tol)


MODES = ["own", "own-distance", "keys", "keys-distance", "keys-unit_keys"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Every mode and dtype at width 72 (N = 196), every mode strided at width 80 (N = 256), and
# the model width 3584 for a subset.
CASES = [(3, 196, 72, dt, False, mode) for dt in DTYPES for mode in MODES]
CASES += [(2, 256, 80, dt, True, mode) for dt, mode in zip(DTYPES + DTYPES[:2], MODES)]
CASES += [(2, 196, 3584, dt, st, mode) for dt, st, mode in (
    (torch.float32, True, "own-distance"), (torch.bfloat16, False, "keys"))]


@pytest.mark.parametrize("T,N,D,dtype,strided,mode", CASES, ids=str)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_reference(backend, T, N, D, dtype, strided, mode, device):
    x = features(T, N, D, dtype, strided).to(device)
    keys = keys_for(T, N, 35, T + N).to(device) if mode.startswith("keys") else None
    kind = mode.split("-")[1] if "-" in mode else "dot"
    got = sf.frame_gram(x, keys, mode=kind, backend=backend)
    want = R.frame_gram(x.cpu(), None if keys is None else keys.cpu(), kind)
    assert got.dtype == torch.float32 and got.shape == want.shape
    if keys is not None:
        pad = torch.full((T, N), -torch.inf if kind == "unit_keys" else 0.0)
        assert torch.equal(got[:, :, -1].cpu(), pad)
        got, want = got[:, :, :-1], want[:, :, :-1]
    close(got.cpu(), want)
    if keys is None and kind == "distance":
        assert torch.equal(got.diagonal(dim1=1, dim2=2).cpu(), torch.zeros(T, N))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_distances_keep_their_digits_under_a_common_component(backend):
    # Tokens sharing a component 30× their spread: ‖x‖² is ~900× the distances, so a raw
    # Gram form would lose three digits; the distances still agree with float64 ones.
    x = features(2, 64, 256, torch.float32, False, offset=30.0, seed=4)
    d2 = sf.frame_gram(x, mode="distance", backend=backend).double()
    want = torch.cdist(x.double(), x.double()) ** 2
    torch.testing.assert_close(d2, want, rtol=1e-5, atol=1e-5 * float(want.max()))


def test_validation():
    x = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="keys must have shape"):
        sf.frame_gram(x, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="keys must be flat rows"):
        sf.frame_gram(x, torch.tensor([[0, 10], [1, 2]]))
    with pytest.raises(TypeError, match="keys must have dtype"):
        sf.frame_gram(x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        sf.frame_gram(x, mode="cosine")


def test_opcheck(device):
    x = features(2, 20, 40, torch.bfloat16, True).to(device)
    torch.library.opcheck(torch.ops.stop_fast.frame_gram, (x, keys_for(2, 20, 7, 1).to(device), "unit_keys"))
