"""VisionZip's per-frame layout (SPEC §7) as a ``merge_tokens`` plan, one program per frame.

    ã[t, i] = attn[t, i] − μ_s·sink[i];  dominant: the n_dom largest ã (ties: lower index)
    remaining list: the other locations, ascending; targets[t, c]: positions in that list
    member i (neither dominant nor target) joins argmax_c cos(metric[t, i], metric[t, target c])

Shapes and dtypes: attn (T, N), sink (N,) float; targets (T, C) int64 (rows may be a stride-0
broadcast); metric (T, N, Dk) float32/float16/bfloat16, any strides; N ≤ ``MAX_N``. Outputs
(the same as :func:`stop_fast.torch_backend.visionzip_plan`, entry for entry): rows (T·N,)
int64, weights (T·N,) fp32, offsets (T·S+1,) int64, positions (T·S, 2) int64, kinds (T·S,)
int8, S = n_dom + C.

Each program holds its frame's N locations in one block: dominance by exact rank (the
arithmetic of ``penalized_topk``: a − μ·s in fp32, no FMA), the remaining-list position by a
prefix sum, the cosine of every token with the C targets as fp32 dot products over Dk chunks
(IEEE, no TF32), the argmax, member counts and each member's rank within its target by prefix
sums; every location then writes its own entry (a permutation of the frame's N entries), so
there are no conflicting writes and no atomics. One launch per video replaces some thirty
small torch ops.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

MAX_N = 512                                   # locations per frame held in one block
BLOCK_J = 128 if INTERPRET else 32            # rank sweep step


@triton.jit
def _plan_kernel(attn, sink, targets, metric, rows, weights, offsets, positions, kinds,
                 T, N, C, S, n_dom, Dk, mu, kind_dom, kind_ctx,
                 s_at, s_an, s_s, s_tt, s_tc, s_mt, s_mn, s_md,
                 NB: tl.constexpr, CB: tl.constexpr, BLOCK_J: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, NB)
    valid = i < N
    # Dominance by exact rank of ã (same expression for i and j, so equal scores compare equal).
    row = attn + t * s_at
    ai = (tl.load(row + i * s_an, mask=valid, other=0.0).to(tl.float32)
          - mu * tl.load(sink + i * s_s, mask=valid, other=0.0).to(tl.float32))
    jj = tl.arange(0, BLOCK_J)
    rank = tl.zeros([NB], tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + jj
        mj = j < N
        aj = (tl.load(row + j * s_an, mask=mj, other=0.0).to(tl.float32)
              - mu * tl.load(sink + j * s_s, mask=mj, other=0.0).to(tl.float32))
        ahead = (aj[None, :] > ai[:, None]) | ((aj[None, :] == ai[:, None]) & (j[None, :] < i[:, None]))
        rank += tl.sum((ahead & mj[None, :]).to(tl.int32), 1)
    is_dom = valid & (rank < n_dom)
    dom_before = tl.cumsum(is_dom.to(tl.int32), 0) - is_dom.to(tl.int32)
    rem_pos = i - dom_before                                   # position in the remaining list
    # Targets: the remaining locations at the given positions.
    c = tl.arange(0, CB)
    mc = c < C
    tpos = tl.load(targets + t * s_tt + c * s_tc, mask=mc, other=-1)
    match = (rem_pos[:, None] == tpos[None, :]) & (valid & ~is_dom)[:, None] & mc[None, :]
    is_tgt = tl.sum(match.to(tl.int32), 1) > 0
    c_of = tl.sum(tl.where(match, c[None, :], 0), 1)
    tgt = tl.sum(tl.where(match, i[:, None], 0), 0)            # (CB,) target locations
    # Cosine of every location with every target: fp32 dots over Dk chunks.
    dots = tl.zeros([NB, CB], tl.float32)
    n_i = tl.zeros([NB], tl.float32)
    n_c = tl.zeros([CB], tl.float32)
    kk = tl.arange(0, BLOCK_K)
    base_m = metric + t * s_mt
    for k0 in range(0, Dk, BLOCK_K):
        k = k0 + kk
        mk = k < Dk
        m_i = tl.load(base_m + i[:, None] * s_mn + k[None, :] * s_md,
                      mask=valid[:, None] & mk[None, :], other=0.0).to(tl.float32)
        m_c = tl.load(base_m + tgt[:, None] * s_mn + k[None, :] * s_md,
                      mask=mc[:, None] & mk[None, :], other=0.0).to(tl.float32)
        dots += tl.dot(m_i, tl.trans(m_c), input_precision="ieee")
        n_i += tl.sum(m_i * m_i, 1)
        n_c += tl.sum(m_c * m_c, 1)
    cos = dots / (tl.maximum(tl.sqrt(n_i), 1e-12)[:, None] * tl.maximum(tl.sqrt(n_c), 1e-12)[None, :])
    cos = tl.where(mc[None, :], cos, float("-inf"))
    assign = tl.argmax(cos, 1, tie_break_left=True)
    member = valid & ~is_dom & ~is_tgt
    onehot = member[:, None] & (assign[:, None] == c[None, :])
    count = tl.sum(onehot.to(tl.int32), 0)                     # (CB,) members per target
    within = tl.sum(tl.where(onehot, tl.cumsum(onehot.to(tl.int32), 0) - 1, 0), 1)
    size = tl.where(mc, count + 1, 0)
    start = n_dom + tl.cumsum(size, 0) - size                  # first entry of target c
    my_c = tl.where(member, assign, c_of)
    my_start = tl.sum(tl.where(c[None, :] == my_c[:, None], start[None, :], 0), 1)
    my_count = tl.sum(tl.where(c[None, :] == my_c[:, None], count[None, :], 0), 1)
    entry = tl.where(is_dom, dom_before, my_start + tl.where(member, 1 + within, 0))
    base = t * N
    tl.store(rows + base + entry, base + i, mask=valid)
    w = tl.where(member, 1.0 / tl.maximum(my_count, 1).to(tl.float32), 1.0)
    tl.store(weights + base + entry, w, mask=valid)
    # Output slots: dominant tokens by ascending location, then the targets.
    slot = tl.where(is_dom, dom_before, n_dom + c_of)
    owner = is_dom | is_tgt
    out = t * S + slot
    tl.store(offsets + out, base + tl.where(is_dom, dom_before, my_start), mask=owner)
    last = (i + (T - 1 - t)) == 0                              # lane 0 of the last frame
    tl.store(offsets + T * S + i * 0, T * N + i * 0, mask=last)
    tl.store(positions + 2 * out, t + i * 0, mask=owner)
    tl.store(positions + 2 * out + 1, i.to(tl.int64), mask=owner)
    tl.store(kinds + out, tl.where(is_dom, kind_dom, kind_ctx).to(tl.int8), mask=owner)


def launch(attn, sink, mu_s, n_dom, targets, metric, kinds):
    T, N, Dk = metric.shape
    C = targets.shape[1]
    S, dev = n_dom + C, metric.device
    rows = torch.empty(T * N, dtype=torch.int64, device=dev)
    weights = torch.empty(T * N, dtype=torch.float32, device=dev)
    offsets = torch.empty(T * S + 1, dtype=torch.int64, device=dev)
    positions = torch.empty(T * S, 2, dtype=torch.int64, device=dev)
    kind = torch.empty(T * S, dtype=torch.int8, device=dev)
    if N > MAX_N:
        raise ValueError(f"visionzip_plan holds a frame in one block: N must be at most {MAX_N}, "
                         f"got {N}")
    _plan_kernel[(T,)](
        attn, sink, targets, metric, rows, weights, offsets, positions, kind,
        T, N, C, S, n_dom, Dk, float(mu_s), int(kinds[0]), int(kinds[1]),
        attn.stride(0), attn.stride(1), sink.stride(0), targets.stride(0), targets.stride(1),
        *metric.stride(), NB=max(16, triton.next_power_of_2(N)),
        CB=max(16, triton.next_power_of_2(C)), BLOCK_J=BLOCK_J, BLOCK_K=32 if N <= 256 else 16,
        num_warps=1 if INTERPRET else 8, enable_fp_fusion=False)
    return rows, weights, offsets, positions, kind


def _fake(attn, sink, mu_s, n_dom, targets, metric, kinds):
    T, N, _ = metric.shape
    S = n_dom + targets.shape[1]
    new = metric.new_empty
    return (new(T * N, dtype=torch.int64), new(T * N, dtype=torch.float32),
            new(T * S + 1, dtype=torch.int64), new(T * S, 2, dtype=torch.int64),
            new(T * S, dtype=torch.int8))


@kernel_op("visionzip_plan", "(Tensor attn, Tensor sink, float mu_s, int n_dom, Tensor targets, "
                             "Tensor metric, int[] kinds) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
           fake=_fake)
def visionzip_plan(attn, sink, mu_s, n_dom, targets, metric, kinds):
    """(rows, weights, offsets, positions, kinds) of VisionZip's layout; see the module docstring."""
    return launch(attn, sink, mu_s, n_dom, targets, metric, kinds)
