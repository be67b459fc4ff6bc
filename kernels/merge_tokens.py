"""Weighted token merging: every output row a weighted sum of input rows, in one pass.

    out[m] = Σ_{e = offsets[m] … offsets[m+1]−1} weights[e] · x[members[e] // n, members[e] % n]

Every temporal or spatial merge of the pipelines is this: a copy (one member, weight 1), a
segment mean over frames (weights 1/L), VisionZip's target + mean(members), HoliTom's
β·centre + (1−β)·mean(members), FastVid's w·anchor + (1−w)·mean(pool). Computing all of a
video's output tokens in one call reads each needed feature row once and writes each output
once.

Shapes and dtypes: x (B, n, D) float32 / float16 / bfloat16, any strides (rows are
addressed as b·n + j); members (E,) int64 with 0 ≤ members < B·n; weights (E,) float (read
in fp32); offsets (M+1,) int64, nondecreasing, offsets[0] = 0, offsets[M] = E; out (M, D) in
``out_dtype`` (x's dtype by default). An output with no member is zero.

One launch: one program per (output row, chunk of D) walks its members in blocks of rows,
loading each block as one (rows × chunk) tile and accumulating weight · row in fp32, in a
fixed order (deterministic, no atomics).
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

# Larger blocks under the interpreter, whose cost is per block operation, not per element.
BLOCK_E = 64 if INTERPRET else 8             # member rows per step
MAX_BLOCK_D = 4096 if INTERPRET else 256     # feature chunk per program


@triton.jit
def _merge_kernel(x, members, weights, offsets, out, n, D, s_b, s_n, s_d, s_o,
                  BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    start = tl.load(offsets + m)
    end = tl.load(offsets + m + 1)
    ar = tl.arange(0, BLOCK_E)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for e0 in range(start, end, BLOCK_E):
        e = e0 + ar
        me = e < end
        row = tl.load(members + e, mask=me, other=0)
        w = tl.load(weights + e, mask=me, other=0.0).to(tl.float32)
        ptr = x + (row // n) * s_b + (row % n) * s_n
        tile = tl.load(ptr[:, None] + offs_d[None, :] * s_d, mask=me[:, None] & md[None, :],
                       other=0.0).to(tl.float32)
        acc += tl.sum(w[:, None] * tile, 0)
    tl.store(out + m * s_o + offs_d, acc.to(out.dtype.element_ty), mask=md)


def launch(x: torch.Tensor, members: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    B, n, D = x.shape
    M = offsets.shape[0] - 1
    out = torch.empty(M, D, dtype=out_dtype or x.dtype, device=x.device)
    if M == 0 or D == 0:
        return out
    block_d = min(MAX_BLOCK_D, max(16, triton.next_power_of_2(D)))
    _merge_kernel[(M, triton.cdiv(D, block_d))](
        x, members, weights, offsets, out, n, D, *x.stride(), out.stride(0),
        BLOCK_E=BLOCK_E, BLOCK_D=block_d, num_warps=1 if INTERPRET else 4)
    return out


def _fake(x, members, weights, offsets, out_dtype):
    return x.new_empty((offsets.shape[0] - 1, x.shape[2]), dtype=out_dtype or x.dtype)


@kernel_op("merge_tokens", "(Tensor x, Tensor members, Tensor weights, Tensor offsets, "
                           "ScalarType? out_dtype) -> Tensor", fake=_fake)
def merge_tokens(x: torch.Tensor, members: torch.Tensor, weights: torch.Tensor,
                 offsets: torch.Tensor, out_dtype: torch.dtype | None) -> torch.Tensor:
    """(M, D): out[m] = Σ weights[e] · x.flat_row(members[e]) over e in [offsets[m],
    offsets[m+1]); see the module docstring. ``out_dtype`` None: x's dtype."""
    return launch(x, members, weights, offsets, out_dtype)
