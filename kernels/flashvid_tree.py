"""FlashVid's temporal merge trees (SPEC §10.3d) from the best matches, one segment at a time.

    σ*[t, i] = best[t − 1, i] if t > b, i unpicked and best finite, else −1
    threshold θ, or, when fewer than Λ = B·L tokens of [b, e] have σ* ≤ θ, the (L·N − Λ)-th
    largest σ* of the segment (with multiplicity) clamped to ≥ −1 + 1e-6 (+∞ if L·N ≤ Λ)
    merged = σ* > threshold;  pool = (unpicked and not merged) or L = 1
    root[t, i] = root[t − 1, arg[t − 1, i]] if merged else t·N + i
    count[t, i] = 1 + number of merged tokens of frame t + 1 whose match is i  (note 5)

Shapes: best (T − 1, N) float32, arg (T − 1, N) int64, pick_row (T, N) int64 (< 0: unpicked,
as kernels/adts.py writes it), bounds (S, 2) int64
inclusive [b, e] covering 0 … T − 1 → pool (T, N) bool, root (T, N) int64, count (T, N)
float32, rank (T, N) int64 (place of a pool token among its frame's pool, −1 off the pool),
loc (T, N) int64 (the pool's locations ascending, then −1), sizes (T,) int64.

One launch, one program per segment. The (L·N − Λ)-th largest σ* is found exactly by
bisection on the float's bit pattern (32 counting sweeps, no sort). Roots follow the frames
in order, each reading its parent frame's roots; the child counts are integer-valued float
atomics, exact and order-independent. The torch twin is
:func:`stop_fast.pipelines._flashvid_merge.merge_tree`.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET


@triton.jit
def _sigma(best, arg, pick_row, t, b, N, oi, mi, s_bt, s_ft):
    """σ* and the match of the tokens oi of frame t (segment start b)."""
    tp = tl.maximum(t - 1, 0)
    has_prev = oi < tl.where(t > b, N, 0)          # (a vector mask: t > b for every lane)
    bv = tl.load(best + tp * s_bt + oi, mask=has_prev, other=-1.0)
    fr = tl.load(pick_row + t * s_ft + oi, mask=mi, other=0) < 0
    ok = has_prev & fr & (bv == bv) & (tl.abs(bv) != float("inf"))
    pi = tl.load(arg + tp * s_bt + oi, mask=has_prev, other=0)
    return tl.where(ok, bv, -1.0), pi, fr


@triton.jit
def _key(v):
    """Signed int32 key with the order of the floats (−0.0 just below +0.0)."""
    bits = v.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _tree_kernel(best, arg, pick_row, bounds, pool, root, count, rank, loc, sizes, N, B, theta,
                 s_bt, s_ft, s_t, BLOCK_N: tl.constexpr):
    s = tl.program_id(0)
    b = tl.load(bounds + 2 * s)
    e = tl.load(bounds + 2 * s + 1)
    L = e - b + 1
    oi = tl.arange(0, BLOCK_N)
    mi = oi < N
    kept = 0
    for t in range(b, e + 1):
        sig, _pi, _fr = _sigma(best, arg, pick_row, t, b, N, oi, mi, s_bt, s_ft)
        kept += tl.sum((mi & (sig <= theta)).to(tl.int32), 0)
    bound = B * L
    kth = L * N - bound
    v = theta * 0.0 - 1.0
    if (kept < bound) & (kth > 0):
        # largest key K with #{σ* ≥ K} ≥ kth: the kth-largest σ*, exactly
        lo = tl.full([], -2147483648, tl.int64)
        hi = tl.full([], 2147483647, tl.int64)
        for _step in range(32):
            mid = (lo + hi + 1) // 2
            n_ge = 0
            for t in range(b, e + 1):
                sig, _pi, _fr = _sigma(best, arg, pick_row, t, b, N, oi, mi, s_bt, s_ft)
                n_ge += tl.sum((mi & (_key(sig).to(tl.int64) >= mid)).to(tl.int32), 0)
            up = n_ge >= kth
            lo = tl.where(up, mid, lo)
            hi = tl.where(up, hi, mid - 1)
        k32 = lo.to(tl.int32)
        v = tl.where(k32 < 0, k32 ^ 0x7FFFFFFF, k32).to(tl.float32, bitcast=True)
    thr = tl.where(kept < bound, tl.where(kth > 0, tl.maximum(v, -1.0 + 1e-6), float("inf")),
                   theta)
    for t in range(b, e + 1):
        sig, pi, fr = _sigma(best, arg, pick_row, t, b, N, oi, mi, s_bt, s_ft)
        merged = mi & (sig > thr)
        inpool = mi & ((fr & ~merged) | (oi < tl.where(L == 1, N, 0)))
        tok = t * N + oi.to(tl.int64)
        par = tl.load(root + (t - 1) * s_t + pi, mask=merged, other=0)
        tl.store(root + t * s_t + oi, tl.where(merged, par, tok), mask=mi)
        tl.store(count + t * s_t + oi, tl.full([BLOCK_N], 1.0, tl.float32), mask=mi)
        tl.store(pool + t * s_t + oi, inpool.to(tl.int8), mask=mi)
        csum = tl.cumsum(inpool.to(tl.int32), 0)
        r = tl.where(inpool, csum - 1, -1)
        tl.store(rank + t * s_t + oi, r.to(tl.int64), mask=mi)
        tl.store(loc + t * s_t + oi, tl.full([BLOCK_N], -1, tl.int64), mask=mi)
        tl.debug_barrier()
        tl.store(loc + t * s_t + r, oi.to(tl.int64), mask=inpool)
        tl.store(sizes + t, tl.sum(inpool.to(tl.int64), 0))
        tl.atomic_add(count + (t - 1) * s_t + pi, tl.full([BLOCK_N], 1.0, tl.float32),
                      mask=merged)
        tl.debug_barrier()      # this frame's roots are read by the next one


def launch(best, arg, pick_row, bounds, B, theta):
    T, N = pick_row.shape
    dev = pick_row.device
    pool = torch.empty(T, N, dtype=torch.bool, device=dev)
    root = torch.empty(T, N, dtype=torch.int64, device=dev)
    count = torch.empty(T, N, dtype=torch.float32, device=dev)
    rank = torch.empty(T, N, dtype=torch.int64, device=dev)
    loc = torch.empty(T, N, dtype=torch.int64, device=dev)
    sizes = torch.empty(T, dtype=torch.int64, device=dev)
    S = bounds.shape[0]
    if T == 0 or N == 0 or S == 0:
        return pool, root, count, rank, loc, sizes
    b_, a_ = (best, arg) if T > 1 else (count, root)      # no previous frame: never read
    _tree_kernel[(S,)](b_, a_, pick_row, bounds, pool.view(torch.int8),
                       root, count, rank, loc, sizes, N, int(B), float(theta),
                       b_.stride(0), pick_row.stride(0), root.stride(0),
                       BLOCK_N=max(16, triton.next_power_of_2(N)),
                       num_warps=1 if INTERPRET else 4)
    return pool, root, count, rank, loc, sizes


def _fake(best, arg, pick_row, bounds, B, theta):
    T, N = pick_row.shape
    i64 = dict(dtype=torch.int64)
    return (pick_row.new_empty((T, N), dtype=torch.bool), pick_row.new_empty((T, N), **i64),
            pick_row.new_empty((T, N), dtype=torch.float32), pick_row.new_empty((T, N), **i64),
            pick_row.new_empty((T, N), **i64), pick_row.new_empty((T,), **i64))


@kernel_op("flashvid_tree", "(Tensor best, Tensor arg, Tensor pick_row, Tensor bounds, int B, "
           "float theta) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", fake=_fake)
def flashvid_tree(best: torch.Tensor, arg: torch.Tensor, pick_row: torch.Tensor,
                  bounds: torch.Tensor, B: int, theta: float):
    """(pool, root, count, rank, loc, sizes) of FlashVid's temporal merge (SPEC §10.3d)."""
    return launch(best, arg, pick_row, bounds, B, theta)
