"""Sink score per location (SPEC §3, paper Eq. 4) in one launch.

    m_i = mean_t attn[t, i];  p_i = m_i^γ;  s_i = (p_i − min p) / (max p − min p + ε)

Shapes and dtypes: attn (T, N) float32 / float16 / bfloat16, any strides, T ≥ 1, any N
→ (N,) float32. A single program sweeps N in blocks twice (min/max, then normalize),
recomputing the frame means instead of re-reading its own stores, so no intra-kernel
memory ordering is needed. The frame sums accumulate in fp64, like the torch backend's
mean: sums of fp32 values within a factor ~2^(29 − log₂T) of each other are then exact, so
m, rounded once to fp32, does not depend on the frame order (in fp32 it would, and a tiny
max − min magnifies that into the scores). The price is 2·T·N fp64 conversions and adds on
one SM, which sm_86 runs at 1/64 of its fp32 rate (a one-off per video, not a hot loop).
pow and the normalization are fp32. The ends are decided on m (SPEC §3): the minimum is
exactly 0, the maximum exactly 1 when m varies, so constant input gives exact zeros.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

BLOCK_T = 16
BLOCK_N = 256


@triton.jit
def _powered_mean(attn, offs, T, N, s_t, s_n, gamma, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    acc = tl.zeros([BLOCK_N], tl.float64)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        x = tl.load(attn + rows[:, None] * s_t + offs[None, :] * s_n,
                    mask=(rows[:, None] < T) & (offs[None, :] < N), other=0.0)
        acc += tl.sum(x.to(tl.float64), 0)
    # m^γ as exp2(γ·log2 m), with 0^γ = 0 (γ > 0) and NaN for a negative mean, like torch.pow.
    m = (acc / T).to(tl.float32)
    p = tl.exp2(gamma * tl.log2(tl.where(m > 0, m, 1.0)))
    return m, tl.where(m > 0, p, tl.where(m == 0, 0.0, float("nan")))


@triton.jit
def _sink_kernel(attn, out, T, N, s_t, s_n, gamma, eps,
                 BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    # Sweep 1 invariant: lo/hi hold the running per-lane min/max of p, m_lo/m_hi of m, over
    # the blocks seen so far (masked lanes hold ±inf).
    lo = tl.full([BLOCK_N], float("inf"), tl.float32)
    hi = tl.full([BLOCK_N], float("-inf"), tl.float32)
    m_lo = tl.full([BLOCK_N], float("inf"), tl.float32)
    m_hi = tl.full([BLOCK_N], float("-inf"), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        m, p = _powered_mean(attn, offs, T, N, s_t, s_n, gamma, BLOCK_T, BLOCK_N)
        lo = tl.minimum(lo, tl.where(offs < N, p, float("inf")))
        hi = tl.maximum(hi, tl.where(offs < N, p, float("-inf")))
        m_lo = tl.minimum(m_lo, tl.where(offs < N, m, float("inf")))
        m_hi = tl.maximum(m_hi, tl.where(offs < N, m, float("-inf")))
    lo_s = tl.min(lo, 0)
    denom = tl.max(hi, 0) - lo_s + eps
    m_min = tl.min(m_lo, 0)
    m_max = tl.max(m_hi, 0)
    # Sweep 2: every lane runs the same instructions, so equal m give equal p; the ends are
    # decided on m (SPEC §3): the minimum is exactly 0, the maximum exactly 1 when m varies.
    for n0 in range(0, N, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        m, p = _powered_mean(attn, offs, T, N, s_t, s_n, gamma, BLOCK_T, BLOCK_N)
        s = tl.minimum(tl.maximum((p - lo_s) / denom, 0.0), 1.0)
        s = tl.where(m == m_max, 1.0, s)
        s = tl.where(m == m_min, 0.0, s)
        tl.store(out + offs, s, mask=offs < N)


def launch(attn: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    T, N = attn.shape
    out = torch.empty(N, dtype=torch.float32, device=attn.device)
    block_n = min(BLOCK_N, max(16, triton.next_power_of_2(N)))
    block_t = min(BLOCK_T, max(2, triton.next_power_of_2(T)))
    _sink_kernel[(1,)](attn, out, T, N, attn.stride(0), attn.stride(1), float(gamma), float(eps),
                       BLOCK_T=block_t, BLOCK_N=block_n, num_warps=1 if INTERPRET else 4)
    return out


def _fake(attn, gamma, eps):
    return attn.new_empty((attn.shape[1],), dtype=torch.float32)


@kernel_op("sink_score", "(Tensor attn, float gamma, float eps) -> Tensor", fake=_fake)
def sink_score(attn: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    """(N,) float32 sink score of attn (T, N); see the module docstring."""
    return launch(attn, gamma, eps)
