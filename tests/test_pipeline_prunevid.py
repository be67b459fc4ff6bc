"""PruneVid baseline (SPEC §11): the fast path against its loop-based float64 twin.

Tolerances: pass-through dynamic tokens are copies (compared exactly through positions and
kinds); static means and cluster means are fp32 against float64, rtol = atol = 1e-5 for fp32
inputs and 1e-2 for bf16 outputs (one bf16 rounding of the same value). Inputs are random
with a fixed seed, so no selection sits on a near-tie.
"""
import functools

import pytest
import torch

from stop_fast.pipelines.base import KIND_DYNAMIC, KIND_STATIC
from stop_fast.pipelines.entry import PruneVid, prune
from stop_fast.pipelines.prunevid import prunevid_counts, refine_labels

N, D = 196, 16


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def _video(T, scenes=3, seed=0, dtype=torch.float32):
    """Scenes of one random frame each; a third of the locations barely move (static), the
    others get strong per-frame noise (dynamic)."""
    g = torch.Generator().manual_seed(100 * T + seed)
    bases = torch.randn(scenes, N, D, generator=g)
    scene = [min(scenes - 1, t * scenes // T) for t in range(T)]
    scale = torch.where(torch.rand(N, generator=g) < 0.35, 0.1, 1.5)[:, None]
    x = bases[scene] + scale * torch.randn(T, N, D, generator=g)
    return x.to(dtype)


def _check(fast, twin, rtol=1e-5):
    assert fast.segments == twin.segments
    assert fast.extras["static_counts"] == twin.extras["static_counts"]
    assert fast.num_tokens == twin.num_tokens == fast.tokens.shape[0]
    assert torch.equal(fast.positions, twin.positions)
    assert torch.equal(fast.kinds, twin.kinds)
    torch.testing.assert_close(fast.tokens, twin.tokens, rtol=rtol, atol=rtol)


def _structure(out, T, r):
    segs = out.segments
    assert segs[0][0] == 0 and segs[-1][1] == T - 1
    assert all(b == pe + 1 for (b, _), (_, pe) in zip(segs[1:], segs[:-1]))
    if T >= 2:
        assert min(e - b + 1 for b, e in segs) >= 2            # SPEC §11.3
    # Per segment: static tokens at its first frame, then each frame's dynamic tokens.
    pos, kinds = out.positions.tolist(), out.kinds.tolist()
    expect, k = [], 0
    for (b, e), n_s in zip(segs, out.extras["static_counts"]):
        _, c_s, c_d = prunevid_counts(n_s, e - b + 1, r)
        expect += [(b, KIND_STATIC)] * c_s
        for t in range(b, e + 1):
            expect += [(t, KIND_DYNAMIC)] * c_d
    assert [(p[0], kd) for p, kd in zip(pos, kinds)] == expect
    assert len(set(map(tuple, pos))) == len(pos)


CASES = ([(T, r) for T in (1, 2, 7, 8) for r in (0.10, 0.15, 0.20, 0.25)]
         + [(3, 0.1), (32, 0.10), (32, 0.25), (64, 0.15)])


@pytest.mark.parametrize("T,r", CASES)
def test_matches_twin(T, r):
    x = _video(T)
    fast = prune(x, None, method="prunevid", retention_ratio=r, backend="torch")
    _check(fast, prune(x, None, method="prunevid", retention_ratio=r, backend="reference"))
    _structure(fast, T, r)


def test_situations_occur():
    # Several segments, static locations clustered (> 14) and dynamic ones clustered.
    out = prune(_video(32), None, method="prunevid", retention_ratio=0.1, backend="torch")
    assert len(out.segments) >= 2
    assert max(out.extras["static_counts"]) > 14
    assert min(out.extras["static_counts"]) < 196 - 14
    assert (out.kinds == KIND_STATIC).any() and (out.kinds == KIND_DYNAMIC).any()
    # The count is close to r·T·N (SPEC §11.5).
    assert abs(out.num_tokens - 0.1 * 32 * N) < 0.1 * 0.1 * 32 * N


def test_bf16_matches_twin():
    x = _video(8, dtype=torch.bfloat16)
    fast = prune(x, None, method="prunevid", retention_ratio=0.2, backend="torch")
    assert fast.tokens.dtype == torch.bfloat16
    _check(fast, prune(x, None, method="prunevid", retention_ratio=0.2, backend="reference"),
           rtol=1e-2)


def test_refine_labels():
    assert refine_labels([0, 0, 1, 0, 0]) == [0, 0, 0, 0, 0]            # tied longest runs stay
    assert refine_labels([0, 1, 1, 1, 0, 0, 2, 2, 1]) == [1, 1, 1, 1, 0, 0, 2, 2, 2]
    assert refine_labels([0, 1, 2]) == [0, 0, 0]                        # nothing left: label 0
    assert refine_labels([2, 1, 0]) == [0, 0, 0]
    # Left to right on the sequence as it stands: the first gap joins 1 (its only neighbour),
    # which makes 1's run 3 long, so the second gap ties 3 (run 3) and goes left.
    assert refine_labels([5, 1, 1, 6, 3, 3, 3]) == [1, 1, 1, 1, 3, 3, 3]
    assert refine_labels([1, 1, 4, 1, 5, 3, 3, 1, 1, 1]) == [3] * 7 + [1] * 3
    assert refine_labels([7]) == [0]


def test_input_not_modified():
    x = _video(8)
    x0 = x.clone()
    prune(x, None, method="prunevid", retention_ratio=0.2, backend="torch")
    assert torch.equal(x, x0)


def test_class_and_default_without_attention():
    out = PruneVid(0.15)(_video(8))
    assert out.options.use_stop is False and out.options.mu_s == 0.0
    assert not out.sink.any()


def test_use_stop_raises():
    with pytest.raises(ValueError, match="no attention"):
        prune(_video(2), None, method="prunevid", retention_ratio=0.1, use_stop=True)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="N = 196"):
        prune(torch.randn(4, 50, D), None, method="prunevid", retention_ratio=0.1)
    with pytest.raises(ValueError, match="mu_s"):
        prune(_video(2), None, method="prunevid", retention_ratio=0.1, mu_s=0.02)
    with pytest.raises(TypeError, match="unknown option"):
        prune(_video(2), None, method="prunevid", retention_ratio=0.1, tau=0.8)
    with pytest.raises(ValueError, match="retention_ratio"):
        prune(_video(2), None, method="prunevid", retention_ratio=0.0)


def test_triton_backend_matches_twin(device):
    from stop_fast import dispatch
    ok, why = dispatch.triton_usable(torch.device(device))
    if not ok:
        pytest.skip(why)
    x = _video(4).to(device)
    _check(prune(x, None, method="prunevid", retention_ratio=0.2, backend="triton"),
           prune(x, None, method="prunevid", retention_ratio=0.2, backend="reference"))
