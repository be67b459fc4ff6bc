"""FlashVid's output layout (SPEC §10.3f, 4): every frame's tokens in LLM order and the merge
list that builds them, in one launch.

Frame t sends n_a ADTS tokens (key 2·(t·N + pick)) and n_out[t] merged tokens (key
2·(t·N + mloc[t, r]) + 1, r < n_out[t]) to the LLM, sorted by key. Output q of frame t is
row out_base[t] + q. Its members, in the merge list from entry ptr[·]:
- an ADTS token: one member, own[t·N + pick], weight 1;
- merged token r of a clustered frame (clus[t] ≠ 0): the pooled rows pool_base[t] + p of
  every p < size[t] with assign[t, p] = r, ascending, weight 1 / their number (a plain mean);
- merged token r of a pass-through frame: the pooled row pool_base[t] + r, weight 1.
Entries of frame t start at entry_base[t] = Σ_{t' < t} (n_a + size[t']).

Shapes: picks (T, n_a), mloc (T, R), assign (T, P) (read where clus), own (T·N,), n_out,
size, clus, out_base, pool_base, entry_base (T,), all int64 → keys (M,), ptr (M + 1,),
members (E,) int64, weights (E,) float32, with M = Σ (n_a + n_out), E = Σ (n_a + size).

One program per frame: keys sorted as packed (key, column) integers, member counts by a
histogram of assign, offsets by a cumulative sum, each member's place by counting the equal
assignments before it. The torch twin is the torch route of
:func:`stop_fast.pipelines._flashvid_merge.spatial_output`.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

CHUNK = 64 if INTERPRET else 16          # pooled ranks per step of the member placement


@triton.jit
def _layout_kernel(picks, mloc, assign, own, n_out, size, clus, out_base, pool_base, entry_base,
                   keys, ptr, members, weights, scratch, N, n_a, R, P, M,
                   s_pt, s_mt, s_at, s_sc,
                   BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, CHUNK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    nout = tl.load(n_out + t)
    sz = tl.load(size + t)
    cl = tl.load(clus + t) != 0
    ob = tl.load(out_base + t)
    pb = tl.load(pool_base + t)
    eb = tl.load(entry_base + t)
    W = n_a + nout
    c = tl.arange(0, BLOCK_W)                        # column: ADTS k < n_a, merged n_a + r
    is_a = c < n_a
    r = c - n_a
    pk = tl.load(picks + t * s_pt + c, mask=is_a, other=0)
    ml = tl.load(mloc + t * s_mt + r, mask=(~is_a) & (c < W), other=0)
    key = tl.where(is_a, 2 * (t * N + pk), 2 * (t * N + ml) + 1)
    key = tl.where(c < W, key, 2 * N * (t + 1))      # padding sorts last
    packed = tl.sort(key * BLOCK_W + c)
    col = packed % BLOCK_W                          # original column of sorted output q
    q = tl.arange(0, BLOCK_W)
    tl.store(keys + ob + q, packed // BLOCK_W, mask=q < W)
    # member count of each column: 1, or the size of cluster r
    p = tl.arange(0, BLOCK_P)
    szc = tl.where(cl, sz, 0)                        # pooled ranks that are clustered
    asg = tl.load(assign + t * s_at + p, mask=p < szc, other=0)
    hist = tl.histogram(tl.where(p < szc, asg + n_a, 2 * BLOCK_W - 1).to(tl.int32), 2 * BLOCK_W)
    hist = tl.reshape(hist, [2, BLOCK_W])
    is_m = tl.arange(0, 2)[:, None] == 0
    cnt = tl.where((~is_a) & (c < tl.where(cl, BLOCK_W, 0)), tl.sum(tl.where(is_m, hist, 0), 0),
                   1).to(tl.int64)
    sc = scratch + t * s_sc                           # [counts by column | starts by column]
    tl.store(sc + c, cnt)
    tl.debug_barrier()
    cnt_q = tl.load(sc + col, mask=q < W, other=0)                 # counts in output order
    start_q = eb + tl.cumsum(cnt_q, 0) - cnt_q
    tl.store(ptr + ob + q, start_q, mask=q < W)
    last = tl.where(t == tl.num_programs(0) - 1, 1, 0)          # the last frame ends ptr
    tl.store(ptr + M + q * 0, eb + tl.sum(tl.where(q < W, cnt_q, 0), 0), mask=q < last)
    tl.store(sc + BLOCK_W + col, start_q, mask=q < W)
    tl.debug_barrier()
    start_c = tl.load(sc + BLOCK_W + c, mask=c < W, other=0)
    tl.store(members + start_c, tl.load(own + t * N + pk, mask=is_a, other=0), mask=is_a)
    tl.store(weights + start_c, tl.full([BLOCK_W], 1.0, tl.float32), mask=is_a)
    # pooled rows: their column and their place among the members of that column
    for p0 in range(0, sz, CHUNK):
        pc = p0 + tl.arange(0, CHUNK)
        mp = pc < sz
        mc = pc < szc
        a_c = tl.load(assign + t * s_at + pc, mask=mc, other=0)
        before = tl.sum(((asg[None, :] == a_c[:, None]) & (p[None, :] < pc[:, None])
                         & (p < szc)[None, :]).to(tl.int64), 1)
        colp = n_a + tl.where(mc, a_c, pc)
        st = tl.load(sc + BLOCK_W + colp, mask=mp, other=0)
        ncl = tl.load(sc + colp, mask=mp, other=1)
        dst = st + tl.where(mc, before, 0)
        tl.store(members + dst, pb + pc, mask=mp)
        tl.store(weights + dst, 1.0 / ncl.to(tl.float32), mask=mp)


def launch(picks, mloc, assign, own, n_out, size, clus, out_base, pool_base, entry_base, M, E):
    T, n_a = picks.shape
    dev = picks.device
    keys = torch.empty(M, dtype=torch.int64, device=dev)
    ptr = torch.empty(M + 1, dtype=torch.int64, device=dev)
    members = torch.empty(E, dtype=torch.int64, device=dev)
    weights = torch.empty(E, dtype=torch.float32, device=dev)
    if T == 0:
        return keys, ptr, members, weights
    R, P = mloc.shape[1], assign.shape[1]
    block_w = max(16, triton.next_power_of_2(n_a + R))
    # per frame: entry start by column, then member count by column
    scratch = torch.empty(T, 2 * block_w, dtype=torch.int64, device=dev)
    N = own.shape[0] // T
    _layout_kernel[(T,)](picks, mloc, assign, own, n_out, size, clus, out_base, pool_base,
                         entry_base, keys, ptr, members, weights, scratch, N, n_a, R, P, M,
                         picks.stride(0), mloc.stride(0), assign.stride(0), scratch.stride(0),
                         BLOCK_W=block_w, BLOCK_P=max(16, triton.next_power_of_2(max(P, 1))),
                         CHUNK=CHUNK, num_warps=1 if INTERPRET else 4)
    return keys, ptr, members, weights


def _fake(picks, mloc, assign, own, n_out, size, clus, out_base, pool_base, entry_base, M, E):
    i64 = dict(dtype=torch.int64)
    return (picks.new_empty((M,), **i64), picks.new_empty((M + 1,), **i64),
            picks.new_empty((E,), **i64), picks.new_empty((E,), dtype=torch.float32))


@kernel_op("flashvid_layout", "(Tensor picks, Tensor mloc, Tensor assign, Tensor own, "
           "Tensor n_out, Tensor size, Tensor clus, Tensor out_base, Tensor pool_base, "
           "Tensor entry_base, int M, int E) -> (Tensor, Tensor, Tensor, Tensor)", fake=_fake)
def flashvid_layout(picks, mloc, assign, own, n_out, size, clus, out_base, pool_base, entry_base,
                    M: int, E: int):
    """(keys (M,) ascending, ptr (M + 1,), members (E,), weights (E,)): see the module doc."""
    return launch(picks, mloc, assign, own, n_out, size, clus, out_base, pool_base, entry_base,
                  M, E)
