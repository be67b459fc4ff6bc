"""FlashVid's ADTS picks and the temporal best match, from the frames' Gram matrices.

    cos[i, j] = G[i, j] · u_i · u_j,   u = 1 / max(√G[i, i], 1e-12)   (cos[i, i] = 1)
    Δ[i, j] = (1 − cos[i, j]) · w[j]
    first pick: argmax_j of the second-smallest entry of column j (with multiplicity)
    next picks: argmax over unpicked j of min over picks q of Δ[q, j]        (SPEC §10.3b)
    best[t, i], arg[t, i] = max / argmax over j not picked in frame t of
                            C[t, i, j] · u_t+1,i · u_t,j        (frame t + 1 against frame t)

argmax ties go to the lower j. Shapes: gram (T, N, N), cross (T − 1, N, N), w (T, N), all
float32, any strides → picks (T, n_a) int64 ascending, pick_row (T, N) int64 (t·n_a + the
rank of a picked token among its frame's picks, −1 for the others), best (T − 1, N) float32 (−inf when frame t has no unpicked token), arg (T − 1, N) int64.

One launch, one program per frame: Δ is formed tile by tile from G (never stored), the
greedy steps keep a running column minimum (O(N) per step), then the same program scans the
cross Gram of the next frame against this frame's unpicked tokens. Everything in fp32, with
the same expressions as the torch twin (:func:`stop_fast.torch_backend.adts_match`).
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

TILE = 16384 if INTERPRET else 4096      # elements of one (rows × N) tile of Δ or C


@triton.jit
def _adts_kernel(gram, cross, w, picks, pick_row, best, arg, N, n_a, T,
                 s_gt, s_gi, s_gj, s_ct, s_ci, s_cj, s_wt, s_wn, s_pt, s_ft, s_bt,
                 BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    oj = tl.arange(0, BLOCK_N)
    mj = oj < N
    g = gram + t * s_gt
    diag = tl.load(g + oj * (s_gi + s_gj), mask=mj, other=1.0)
    u = 1.0 / tl.maximum(tl.sqrt(tl.maximum(diag, 0.0)), 1e-12)
    wj = tl.load(w + t * s_wt + oj * s_wn, mask=mj, other=0.0)
    taken = oj < 0
    if n_a > 0:
        # First pick: the two smallest entries of every column, merged tile by tile.
        m1 = tl.full([BLOCK_N], float("inf"), tl.float32)
        m2 = tl.full([BLOCK_N], float("inf"), tl.float32)
        oi0 = tl.arange(0, BLOCK_I)
        for i0 in range(0, N, BLOCK_I):
            oi = i0 + oi0
            mi = oi < N
            gi = tl.load(g + oi[:, None] * s_gi + oj[None, :] * s_gj,
                         mask=mi[:, None] & mj[None, :], other=0.0)
            ui = tl.load(g + oi * (s_gi + s_gj), mask=mi, other=1.0)
            ui = 1.0 / tl.maximum(tl.sqrt(tl.maximum(ui, 0.0)), 1e-12)
            cos = tl.where(oi[:, None] == oj[None, :], 1.0, gi * ui[:, None] * u[None, :])
            d = tl.where(mi[:, None], (1.0 - cos) * wj[None, :], float("inf"))
            t1 = tl.min(d, 0)
            first = tl.argmin(d, 0)
            t2 = tl.min(tl.where(oi0[:, None] == first[None, :], float("inf"), d), 0)
            m2 = tl.minimum(tl.maximum(m1, t1), tl.minimum(m2, t2))
            m1 = tl.minimum(m1, t1)
        second = tl.where(N == 1, m1, m2)
        j = tl.argmax(tl.where(mj, second, -float("inf")), 0)
        taken = oj == j
        colmin = tl.full([BLOCK_N], float("inf"), tl.float32)
        for step in range(1, n_a):
            # fold in Δ[j, :] of the last pick, then take the best unpicked column
            gj = tl.load(g + j * s_gi + oj * s_gj, mask=mj, other=0.0)
            uj = tl.sum(tl.where(oj == j, u, 0.0), 0)
            cos = tl.where(oj == j, 1.0, gj * uj * u)
            colmin = tl.minimum(colmin, (1.0 - cos) * wj)
            j = tl.argmax(tl.where(mj & ~taken, colmin, -float("inf")), 0)
            taken = taken | (oj == j)
        # the picks in ascending order: each picked j goes to its rank among the picks
        rk = tl.cumsum(taken.to(tl.int32), 0) - 1
        tl.store(picks + t * s_pt + rk, oj.to(tl.int64), mask=taken)
        tl.store(pick_row + t * s_ft + oj, tl.where(taken, t * n_a + rk, -1), mask=mj)
    else:
        tl.store(pick_row + t * s_ft + oj, tl.full([BLOCK_N], -1, tl.int64), mask=mj)
    # Best match of every token of frame t + 1 among the unpicked tokens of frame t.
    if t + 1 < T:
        c = cross + t * s_ct
        g1 = gram + (t + 1) * s_gt
        free = mj & ~taken
        for i0 in range(0, N, BLOCK_I):
            oi = i0 + tl.arange(0, BLOCK_I)
            mi = oi < N
            ci = tl.load(c + oi[:, None] * s_ci + oj[None, :] * s_cj,
                         mask=mi[:, None] & mj[None, :], other=0.0)
            un = tl.load(g1 + oi * (s_gi + s_gj), mask=mi, other=1.0)
            un = 1.0 / tl.maximum(tl.sqrt(tl.maximum(un, 0.0)), 1e-12)
            cos = tl.where(free[None, :], ci * un[:, None] * u[None, :], -float("inf"))
            tl.store(best + t * s_bt + oi, tl.max(cos, 1), mask=mi)
            tl.store(arg + t * s_bt + oi, tl.argmax(cos, 1).to(tl.int64), mask=mi)


def launch(gram, cross, w, n_a):
    T, N, _ = gram.shape
    dev = gram.device
    picks = torch.empty(T, n_a, dtype=torch.int64, device=dev)
    pick_row = torch.empty(T, N, dtype=torch.int64, device=dev)
    best = torch.empty(max(T - 1, 0), N, dtype=torch.float32, device=dev)
    arg = torch.empty(max(T - 1, 0), N, dtype=torch.int64, device=dev)
    if T == 0:
        return picks, pick_row, best, arg
    block_n = max(16, triton.next_power_of_2(N))
    block_i = max(1, min(block_n, TILE // block_n))
    c = cross if cross.shape[0] > 0 else gram
    _adts_kernel[(T,)](gram, c, w, picks, pick_row, best, arg, N, n_a, T,
                       *gram.stride(), *c.stride(), *w.stride(), picks.stride(0), pick_row.stride(0),
                       best.stride(0) if T > 1 else 0,
                       BLOCK_N=block_n, BLOCK_I=block_i, num_warps=1 if INTERPRET else 4)
    return picks, pick_row, best, arg


def _fake(gram, cross, w, n_a):
    T, N, _ = gram.shape
    return (gram.new_empty((T, n_a), dtype=torch.int64), gram.new_empty((T, N), dtype=torch.int64),
            gram.new_empty((max(T - 1, 0), N), dtype=torch.float32),
            gram.new_empty((max(T - 1, 0), N), dtype=torch.int64))


@kernel_op("adts_match", "(Tensor gram, Tensor cross, Tensor w, int n_a) -> "
           "(Tensor, Tensor, Tensor, Tensor)", fake=_fake)
def adts_match(gram: torch.Tensor, cross: torch.Tensor, w: torch.Tensor, n_a: int):
    """(picks (T, n_a) ascending, pick_row (T, N), best (T − 1, N), arg (T − 1, N))."""
    return launch(gram, cross, w, n_a)
