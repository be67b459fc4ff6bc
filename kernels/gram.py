"""Gram matrices of token sets, computed once and reused for every distance and cosine.

    gram[s, i, j] = ⟨x_s,i , x_s,j⟩                  i, j < counts[s]   (symmetric, bitwise)
    cross[s − 1, i, j] = ⟨x_s,i , x_s−1,j⟩           s ≥ 1              (``cross=True``)
    sums[s, b, :] = Σ_{i in row block b} x_s,i        (``sums=True``; partial row sums)

Set s is the run of rows starts[s] … starts[s] + counts[s] − 1 of ``src``: a (T, N, D) video
(row r = token r, any strides; a frame is the run t·N … t·N + N − 1) or an (R, D) buffer.
The pipelines take every cosine, every squared distance ‖a‖² + ‖b‖² − 2⟨a, b⟩ and every norm
(the diagonal) from these matrices, so the features are read once for all of them.

Shapes and dtypes: src any float dtype and strides (fp32 accumulation; bf16/fp16 products
are exact in fp32, fp32 tiles multiply in IEEE fp32, never TF32); starts, counts (S,) int64.
→ gram (S, n, n) float32, cross (S − 1, n, n) float32, sums (S, ⌈n/BLOCK⌉, D) float32, with
n = ``n_max`` ≥ every count; entries past a set's count are 0.

One launch. Programs: (set, pair of row blocks) for the upper triangle of blocks, each
storing its tile and its transpose (so gram is exactly symmetric: a diagonal tile is averaged
with its own transpose), plus (set, block, block) programs for the cross tiles. Each loops
over the feature width in chunks; diagonal programs also sum their rows for ``sums``.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

# Larger tiles under the interpreter, whose cost is per block operation, not per element.
BLOCK = 128 if INTERPRET else 64
BLOCK_K = 512 if INTERPRET else 32


@triton.jit
def _set_gram_kernel(src, starts, counts, gram, cross, sums, D, n_max, n_per, s_t, s_row, s_d,
                 s_gs, s_gi, s_cs, s_ci, s_ss, s_sb, n_blocks, n_pairs,
                 CROSS: tl.constexpr, SUMS: tl.constexpr, PREC: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    s = tl.program_id(0)
    p = tl.program_id(1)
    is_cross = p >= n_pairs
    # p < n_pairs → (bi, bj), bi ≤ bj, row by row of the upper triangle of blocks;
    # p ≥ n_pairs → the cross tile (bi, bj) of set s against set s − 1.
    q = p - n_pairs
    # row-major upper triangle: block row b starts at b·n_blocks − b(b − 1)/2
    ti = 0
    for r in range(1, n_blocks):
        ti += (p >= r * n_blocks - r * (r - 1) // 2).to(tl.int32)
    tj = ti + p - (ti * n_blocks - ti * (ti - 1) // 2)
    bi = tl.where(is_cross, q // n_blocks, ti)
    bj = tl.where(is_cross, q % n_blocks, tj)
    other = tl.where(is_cross, s - 1, s)
    if other >= 0:
        n_a = tl.load(counts + s)
        n_b = tl.load(counts + other)
        oi = bi * BLOCK + tl.arange(0, BLOCK)
        oj = bj * BLOCK + tl.arange(0, BLOCK)
        ok = tl.arange(0, BLOCK_K)
        ra = tl.load(starts + s) + oi.to(tl.int64)          # token rows of the two tiles
        rb = tl.load(starts + other) + oj.to(tl.int64)
        a_ptrs = src + ((ra // n_per) * s_t + (ra % n_per) * s_row)[:, None] + ok[None, :] * s_d
        b_ptrs = src + ((rb // n_per) * s_t + (rb % n_per) * s_row)[:, None] + ok[None, :] * s_d
        acc = tl.zeros([BLOCK, BLOCK], tl.float32)
        row_sums = (p < n_pairs) & (bi == bj)
        sum_ptrs = sums + s.to(tl.int64) * s_ss + bi * s_sb + ok
        for k0 in range(0, D, BLOCK_K):
            mk = (ok < D - k0)[None, :]
            # rows past a set's count load as 0, so their products (and padding) are 0
            ta = tl.load(a_ptrs, mask=(oi < n_a)[:, None] & mk, other=0.0)
            tb = tl.load(b_ptrs, mask=(oj < n_b)[:, None] & mk, other=0.0)
            if UPCAST:
                ta = ta.to(tl.float32)
                tb = tb.to(tl.float32)
            acc = tl.dot(ta, tl.trans(tb), acc, input_precision=PREC)
            if SUMS:
                if row_sums:
                    tl.store(sum_ptrs, tl.sum(ta.to(tl.float32), 0), mask=ok < D - k0)
            sum_ptrs += BLOCK_K
            a_ptrs += BLOCK_K * s_d
            b_ptrs += BLOCK_K * s_d
        keep = (oi < n_max)[:, None] & (oj < n_max)[None, :]
        if is_cross:
            if CROSS:
                tl.store(cross + other.to(tl.int64) * s_cs + oi[:, None] * s_ci + oj[None, :],
                         acc, mask=keep)
        else:
            if bi == bj:
                acc = (acc + tl.trans(acc)) * 0.5        # a + b = b + a: exactly symmetric
            base = gram + s.to(tl.int64) * s_gs
            tl.store(base + oi[:, None] * s_gi + oj[None, :], acc, mask=keep)
            tl.store(base + oj[None, :] * s_gi + oi[:, None], acc, mask=keep)


def _layout(src):
    """(rows per frame, frame stride, row stride) of a (T, N, D) or (R, D) source."""
    if src.dim() == 3:
        return max(src.shape[1], 1), src.stride(0), src.stride(1)
    return max(src.shape[0], 1), 0, src.stride(0)


def launch(src, starts, counts, n_max, cross=False, sums=False):
    S = starts.shape[0]
    D = src.shape[-1]
    n_blocks = triton.cdiv(max(n_max, 1), BLOCK)
    n_pairs = n_blocks * (n_blocks + 1) // 2
    dev = src.device
    # every entry (padding included) is written by the kernel
    gram = torch.empty(S, n_max, n_max, dtype=torch.float32, device=dev)
    crs = torch.empty(max(S - 1, 0) if cross else 0, n_max, n_max, dtype=torch.float32,
                      device=dev)
    sm = torch.empty(S if sums else 0, n_blocks, D, dtype=torch.float32, device=dev)
    if S == 0 or n_max == 0 or D == 0:
        return gram.zero_(), crs.zero_(), sm.zero_()
    block_k = min(BLOCK_K, max(16, triton.next_power_of_2(D)))
    grid = (S, n_pairs + (n_blocks * n_blocks if cross else 0))
    _set_gram_kernel[grid](
        src, starts, counts, gram, crs if cross else gram, sm if sums else gram, D, n_max,
        *_layout(src), src.stride(-1), gram.stride(0), gram.stride(1),
        crs.stride(0) if cross else 0, crs.stride(1) if cross else 0,
        sm.stride(0) if sums else 0, sm.stride(1) if sums else 0, n_blocks, n_pairs,
        CROSS=cross, SUMS=sums, PREC="ieee" if src.dtype == torch.float32 else "tf32",
        UPCAST=INTERPRET and src.dtype == torch.bfloat16, BLOCK=BLOCK, BLOCK_K=block_k,
        num_warps=1 if INTERPRET else 4)
    return gram, crs, sm


def _fake(src, starts, counts, n_max, cross, sums):
    S, D = starts.shape[0], src.shape[-1]
    nb = -(-max(n_max, 1) // BLOCK)
    return (src.new_empty((S, n_max, n_max), dtype=torch.float32),
            src.new_empty((max(S - 1, 0) if cross else 0, n_max, n_max), dtype=torch.float32),
            src.new_empty((S if sums else 0, nb, D), dtype=torch.float32))


@kernel_op("set_gram", "(Tensor src, Tensor starts, Tensor counts, int n_max, bool cross, "
           "bool sums) -> (Tensor, Tensor, Tensor)", fake=_fake)
def set_gram(src: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor, n_max: int,
             cross: bool, sums: bool):
    """(gram (S, n, n), cross (S − 1, n, n) or empty, row-block sums (S, nb, D) or empty)."""
    return launch(src, starts, counts, n_max, cross, sums)
