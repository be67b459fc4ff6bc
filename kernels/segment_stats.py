"""Per segment and location: the mean over the segment's frames, and the squared norm of the
sum of the unit vectors (PruneVid's static test, SPEC §11.4), in one pass over the features.

    mean[s, i] = (1/W) Σ_{u=b..e} x[u, i]                       W = e − b + 1
    pairs[s, i, c] = ‖Σ_u x̂[u, i, chunk c]‖² − Σ_u ‖x̂[u, i, chunk c]‖²   (partial over D)
    x̂ = x / max(‖x‖, 1e-12),  u = b … e

so that Σ_c pairs[s, i, c] = Σ_{u≠v} cos(x[u, i], x[v, i]) (SPEC §11.4, before the division by
W(W − 1)). The norms come from the frames' Gram diagonals (kernels/gram.py), so the features
are read once here.

Shapes and dtypes: x (T, N, D) any float dtype and strides, norms (T, N) float32, bounds
(S, 2) int64 inclusive [b, e] → mean (S, N, D) float32, pairs (S, N, ⌈D/BLOCK_D⌉) float32
(callers sum the last dim). One launch, one program per (segment, block of locations, chunk
of D), looping over the segment's frames; fp32 accumulation.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

BLOCK_I = 64 if INTERPRET else 16
BLOCK_D = 1024 if INTERPRET else 128


@triton.jit
def _stats_kernel(x, norms, bounds, mean, sq, N, D, s_t, s_n, s_d, s_nt, s_ms, s_mn, s_qs, s_qn,
                  BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    oi = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    c = tl.program_id(2)
    od = c * BLOCK_D + tl.arange(0, BLOCK_D)
    mi = oi < N
    m2 = mi[:, None] & (od < D)[None, :]
    b = tl.load(bounds + 2 * s)
    e = tl.load(bounds + 2 * s + 1)
    acc = tl.zeros([BLOCK_I, BLOCK_D], tl.float32)
    acc_u = tl.zeros([BLOCK_I, BLOCK_D], tl.float32)
    own = tl.zeros([BLOCK_I, BLOCK_D], tl.float32)
    for u in range(b, e + 1):
        v = tl.load(x + u * s_t + oi.to(tl.int64)[:, None] * s_n + od[None, :] * s_d, mask=m2,
                    other=0.0).to(tl.float32)
        nu = tl.load(norms + u * s_nt + oi, mask=mi, other=1.0)
        acc += v
        vu = v / tl.maximum(nu, 1e-12)[:, None]
        acc_u += vu
        own += vu * vu
    w = (e - b + 1).to(tl.float32)
    tl.store(mean + s * s_ms + oi.to(tl.int64)[:, None] * s_mn + od[None, :], acc / w, mask=m2)
    tl.store(sq + s * s_qs + oi * s_qn + c, tl.sum(acc_u * acc_u - own, 1), mask=mi)


def launch(x, norms, bounds):
    T, N, D = x.shape
    S = bounds.shape[0]
    block_d = min(BLOCK_D, max(16, triton.next_power_of_2(D)))
    n_chunks = triton.cdiv(D, block_d) if D else 0
    mean = torch.empty(S, N, D, dtype=torch.float32, device=x.device)
    sq = torch.empty(S, N, n_chunks, dtype=torch.float32, device=x.device)
    if S == 0 or N == 0 or D == 0:
        return mean, sq
    block_i = min(BLOCK_I, max(2, triton.next_power_of_2(N)))
    _stats_kernel[(S, triton.cdiv(N, block_i), n_chunks)](
        x, norms, bounds, mean, sq, N, D, *x.stride(), norms.stride(0), mean.stride(0),
        mean.stride(1), sq.stride(0), sq.stride(1), BLOCK_I=block_i, BLOCK_D=block_d,
        num_warps=1 if INTERPRET else 4)
    return mean, sq


def _fake(x, norms, bounds):
    T, N, D = x.shape
    n_chunks = -(-D // min(BLOCK_D, max(16, triton.next_power_of_2(D)))) if D else 0
    return (x.new_empty((bounds.shape[0], N, D), dtype=torch.float32),
            x.new_empty((bounds.shape[0], N, n_chunks), dtype=torch.float32))


@kernel_op("segment_stats", "(Tensor x, Tensor norms, Tensor bounds) -> (Tensor, Tensor)",
           fake=_fake)
def segment_stats(x: torch.Tensor, norms: torch.Tensor, bounds: torch.Tensor):
    """(mean (S, N, D), partial Σ_{u≠v} ⟨x̂_u, x̂_v⟩ (S, N, chunks)) per segment and location."""
    return launch(x, norms, bounds)
