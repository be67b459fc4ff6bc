"""Segmented gather-sum: every output row is the sum of some source rows, divided by a count.

    out[m] = (Σ_{k = ptr[m]}^{ptr[m+1] − 1} src[idx[k]]) / den[m]

The one merge primitive of FlashVid and PruneVid: tree-merged tokens (a root over its whole
subtree, divided by 1 + its direct children), cluster means, segment means, and plain copies
of kept tokens (one index, den 1), all written straight into the rows the caller wants, in
the order it wants, in the output dtype. Each source row that takes part is read once per
output it belongs to; rows that belong to no output are never read.

Shapes and dtypes: src (T, N, D) (row r = token r of the video, any strides) or (R, D); idx
(K,) int64 row numbers; ptr (M + 1,) int64 non-decreasing with ptr[0] = 0 and ptr[M] ≤ K;
den (M,) float32. → out (M, D) in ``out_dtype``. Sums accumulate in fp32 in index order
(deterministic; no atomics).

One launch, one program per (output row, chunk of D).
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

BLOCK_D = 4096 if INTERPRET else 512


@triton.jit
def _gather_sum_kernel(src, idx, ptr, den, out, D, n_per, s_t, s_n, s_d, s_om,
                       BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    od = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = od < D
    start = tl.load(ptr + m)
    end = tl.load(ptr + m + 1)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for k in range(start, end):
        r = tl.load(idx + k)
        row = src + (r // n_per) * s_t + (r % n_per) * s_n
        acc += tl.load(row + od * s_d, mask=md, other=0.0).to(tl.float32)
    val = acc / tl.load(den + m)
    tl.store(out + m * s_om + od, val.to(out.dtype.element_ty), mask=md)


def _layout(src):
    """(rows per frame, frame stride, row stride) of a (T, N, D) or (R, D) source."""
    if src.dim() == 3:
        return max(src.shape[1], 1), src.stride(0), src.stride(1)
    return max(src.shape[0], 1), 0, src.stride(0)


def launch(src, idx, ptr, den, out_dtype):
    M, D = ptr.shape[0] - 1, src.shape[-1]
    out = torch.empty(M, D, dtype=out_dtype, device=src.device)
    if M == 0 or D == 0:
        return out
    n_per, s_t, s_n = _layout(src)
    block_d = min(BLOCK_D, max(16, triton.next_power_of_2(D)))
    _gather_sum_kernel[(M, triton.cdiv(D, block_d))](
        src, idx, ptr, den, out, D, n_per, s_t, s_n, src.stride(-1), out.stride(0),
        BLOCK_D=block_d, num_warps=1 if INTERPRET else 4)
    return out


def _fake(src, idx, ptr, den, out_dtype):
    return src.new_empty((ptr.shape[0] - 1, src.shape[-1]), dtype=out_dtype)


@kernel_op("gather_sum", "(Tensor src, Tensor idx, Tensor ptr, Tensor den, ScalarType out_dtype) "
           "-> Tensor", fake=_fake)
def gather_sum(src: torch.Tensor, idx: torch.Tensor, ptr: torch.Tensor, den: torch.Tensor,
               out_dtype: torch.dtype) -> torch.Tensor:
    """(M, D): out[m] = Σ src[idx[ptr[m]:ptr[m+1]]] / den[m], fp32 sums."""
    return launch(src, idx, ptr, den, out_dtype)
