"""Density peaks (SPEC §8) of token sets from their squared distances, in one launch.

For each set b (a frame's non-salient tokens, a segment's static tokens, …) with members
m = members[b, :count] (indices into d2's rows and columns; −1 pads):

    ρ_i = exp(−scale · mean of the k smallest d2[b, m_i, m_j] over j)   (self included)
    δ_i = sqrt(scale · min d2[b, m_i, m_j] over denser j), or of the set's largest d2 if none

where j is denser than i if ρ_j > ρ_i, or ρ_j = ρ_i and j < i (position in the set), as in
:mod:`stop_fast.pipelines.dpc_knn` and :func:`stop_fast.reference.dpc_knn`.

Shapes and dtypes: d2 (B, R, R) float32 (any strides; e.g. :func:`stop_fast.frame_gram` with
``mode="distance"``), members (B, n) int64, k ≥ 1 (at most the set size) → (ρ (B, n), δ (B, n))
float32, 0 on padding. A set's members are held in one block (n ≤ ``MAX_N``).

One launch, one program per set, in two phases over blocks of member rows (gathered from
d2): k rounds of "smallest remaining" for ρ and each row's largest distance; then, after a
barrier, every member's ρ for the denser test and the minimum over denser members for δ.
Nothing of size n² is written; a set's n² distances are read twice (the second time from
cache for the sets of a video: 135 KB per 184-token frame).
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

MAX_N = 1024
BLOCK_I = 64 if INTERPRET else 16


@triton.jit
def _rows(d2, members, b, offs_i, n, s_b, s_r, s_c, s_mb, NB: tl.constexpr):
    """(rows (BLOCK_I, NB) gathered d2 of the members offs_i, valid columns, valid rows)."""
    j = tl.arange(0, NB)
    mi = tl.load(members + b * s_mb + offs_i, mask=offs_i < n, other=-1)
    mj = tl.load(members + b * s_mb + j, mask=j < n, other=-1)
    ok_i = mi >= 0
    ok_j = mj >= 0
    ptr = d2 + b * s_b + tl.where(ok_i, mi, 0)[:, None] * s_r + tl.where(ok_j, mj, 0)[None, :] * s_c
    rows = tl.load(ptr, mask=ok_i[:, None] & ok_j[None, :], other=float("inf"))
    return rows, ok_j, ok_i


@triton.jit
def _density_kernel(d2, members, rho, rowmax, delta, n, k, scale, s_b, s_r, s_c, s_mb,
                    NB: tl.constexpr, BLOCK_I: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, NB)
    # Phase 1, block of rows by block: ρ from the k smallest, and each row's largest distance.
    for i0 in range(0, n, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        rows, ok_j, ok_i = _rows(d2, members, b, offs_i, n, s_b, s_r, s_c, s_mb, NB)
        total = tl.zeros([BLOCK_I], tl.float32)
        left = rows
        for _ in range(k):                    # k smallest: remove the first minimum k times
            low = tl.min(left, 1)
            total += tl.where(ok_i, low, 0.0)
            first = tl.min(tl.where(left == low[:, None], j[None, :], NB), 1)
            left = tl.where(j[None, :] == first[:, None], float("inf"), left)
        out = b * n + offs_i
        tl.store(rho + out, tl.where(ok_i, tl.exp(-((total / k) * scale)), 0.0), mask=offs_i < n)
        big = tl.max(tl.where(ok_j[None, :], rows, 0.0), 1)
        tl.store(rowmax + out, tl.where(ok_i, big, 0.0), mask=offs_i < n)
    tl.debug_barrier()                        # phase 1's stores are visible to every thread
    # Phase 2: δ from the nearest denser member, or the set's largest distance.
    rho_j = tl.load(rho + b * n + j, mask=j < n, other=float("-inf"))
    for i0 in range(0, n, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        rows, ok_j, ok_i = _rows(d2, members, b, offs_i, n, s_b, s_r, s_c, s_mb, NB)
        rho_j = tl.where(ok_j, rho_j, float("-inf"))
        rho_i = tl.load(rho + b * n + offs_i, mask=offs_i < n, other=0.0)
        denser = (rho_j[None, :] > rho_i[:, None]) | ((rho_j[None, :] == rho_i[:, None])
                                                      & (j[None, :] < offs_i[:, None]))
        near = tl.min(tl.where(denser & ok_j[None, :], rows, float("inf")), 1)
        dmax = tl.max(tl.load(rowmax + b * n + j, mask=ok_j, other=0.0), 0)
        d = tl.where(near == float("inf"), dmax, near)
        tl.store(delta + b * n + offs_i, tl.where(ok_i, tl.sqrt(d * scale), 0.0), mask=offs_i < n)


def launch(d2: torch.Tensor, members: torch.Tensor, k: int, scale: float):
    B, n = members.shape
    rho = torch.empty(B, n, dtype=torch.float32, device=d2.device)
    delta = torch.empty_like(rho)
    if B == 0 or n == 0:
        return rho, delta
    if n > MAX_N:
        raise ValueError(f"knn_density holds a set in one block: n must be at most {MAX_N}, got {n}")
    rowmax = torch.empty_like(rho)                   # scratch of phase 1
    _density_kernel[(B,)](d2, members, rho, rowmax, delta, n, int(k), float(scale),
                          *d2.stride(), members.stride(0), NB=max(16, triton.next_power_of_2(n)),
                          BLOCK_I=BLOCK_I, num_warps=1 if INTERPRET else 4)
    return rho, delta


def _fake(d2, members, k, scale):
    return (members.new_empty(members.shape, dtype=torch.float32),
            members.new_empty(members.shape, dtype=torch.float32))


@kernel_op("knn_density", "(Tensor d2, Tensor members, int k, float scale) -> (Tensor, Tensor)",
           fake=_fake)
def knn_density(d2: torch.Tensor, members: torch.Tensor, k: int, scale: float):
    """(ρ, δ) (B, n) float32 of the member sets from squared distances; see the docstring."""
    return launch(d2, members, k, scale)
