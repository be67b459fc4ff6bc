"""Sink-penalized top-k per frame (SPEC §4, paper Eq. 5), optionally fused with the gather.

    ã[t, i] = attn[t, i] − μ_s · sink[i];  idx[t] = the k largest ã[t], by descending ã,
    exact ties toward the lower index

Shapes and dtypes: attn (T, N), sink (N,) float32 / float16 / bfloat16, any strides;
1 ≤ k ≤ N; features (T, N, D) any float dtype and strides → idx (T, k) int64 and, for
``gather_topk``, tokens (T, k, D) contiguous in features' dtype.

Selection is by rank, which is exact and needs no sort: one program per (frame, block of
locations) computes rank_i = #{j : ã_j > ã_i or (ã_j = ã_i and j < i)} by sweeping all N
in blocks; the ranks are a permutation of 0 … N−1, so every i with rank_i < k writes its
index to slot rank_i (and, fused, copies its feature row to tokens[t, rank_i]) with no
conflicts. One launch either way. ã is formed in fp32 as round(a − round(μ·s)) without
FMA contraction, the same arithmetic as the torch backend, so both rank identically.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

# Larger blocks under the interpreter, whose cost is per block operation, not per element.
BLOCK_I = 128 if INTERPRET else 32
BLOCK_J = 256 if INTERPRET else 128
# Gathered row chunk: 32 KiB per (BLOCK_I × BLOCK_D) tile on GPU (512 bf16 / 256 fp32 lanes).
GATHER_TILE_BYTES = 2**20 if INTERPRET else 2**15


@triton.jit
def _topk_kernel(attn, sink, idx, feat, tok, N, K, D, mu,
                 s_at, s_an, s_s, s_it, s_ft, s_fn, s_fd, s_ot, s_ok,
                 BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
                 GATHER: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    oi = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mi = oi < N
    row = attn + t * s_at
    # ã_i and ã_j use the very same expression, so equal scores compare equal.
    ai = (tl.load(row + oi * s_an, mask=mi, other=0.0).to(tl.float32)
          - mu * tl.load(sink + oi * s_s, mask=mi, other=0.0).to(tl.float32))
    ar_j = tl.arange(0, BLOCK_J)
    a_ptrs = row + ar_j * s_an
    s_ptrs = sink + ar_j * s_s
    rank = tl.zeros([BLOCK_I], tl.int32)
    for j0 in range(0, N, BLOCK_J):
        mj = ar_j < N - j0
        aj = (tl.load(a_ptrs, mask=mj, other=0.0).to(tl.float32)
              - mu * tl.load(s_ptrs, mask=mj, other=0.0).to(tl.float32))
        a_ptrs += BLOCK_J * s_an
        s_ptrs += BLOCK_J * s_s
        oj = j0 + ar_j
        ahead = (aj[None, :] > ai[:, None]) | ((aj[None, :] == ai[:, None])
                                              & (oj[None, :] < oi[:, None]))
        rank += tl.sum((ahead & mj[None, :]).to(tl.int32), 1)
    sel = mi & (rank < K)
    tl.store(idx + t * s_it + rank, oi.to(tl.int64), mask=sel)
    if GATHER:
        ar_d = tl.arange(0, BLOCK_D)
        src = feat + t * s_ft + oi.to(tl.int64)[:, None] * s_fn + ar_d[None, :] * s_fd
        dst = tok + t * s_ot + rank.to(tl.int64)[:, None] * s_ok + ar_d[None, :]
        for d0 in range(0, D, BLOCK_D):
            m2 = sel[:, None] & (ar_d < D - d0)[None, :]
            tl.store(dst, tl.load(src, mask=m2), mask=m2)
            src += BLOCK_D * s_fd
            dst += BLOCK_D


def launch(attn: torch.Tensor, sink: torch.Tensor, k: int, mu_s: float,
           features: torch.Tensor = None):
    T, N = attn.shape
    idx = torch.empty(T, k, dtype=torch.int64, device=attn.device)
    gather = features is not None
    if gather:
        D = features.shape[2]
        tok = torch.empty(T, k, D, dtype=features.dtype, device=attn.device)
        feat_args = (features, tok, D)
        strides = (*features.stride(), tok.stride(0), tok.stride(1))
    else:
        D = 1
        feat_args = (attn, idx, 1)     # unused placeholders
        strides = (0, 0, 0, 0, 0)
    block_i = min(BLOCK_I, max(16, triton.next_power_of_2(N)))
    block_j = min(BLOCK_J, max(16, triton.next_power_of_2(N)))
    max_d = GATHER_TILE_BYTES // (block_i * (features.element_size() if gather else 4))
    block_d = min(max_d, max(16, triton.next_power_of_2(D)))
    grid = (T, triton.cdiv(N, block_i))
    # enable_fp_fusion=False: no FMA in a − μ·s, so ã matches torch's fp32 bit for bit.
    _topk_kernel[grid](attn, sink, idx, feat_args[0], feat_args[1], N, k, feat_args[2],
                       float(mu_s), attn.stride(0), attn.stride(1), sink.stride(0), idx.stride(0),
                       *strides, BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_D=block_d, GATHER=gather,
                       num_warps=1 if INTERPRET else 4, enable_fp_fusion=False)
    return (idx, tok) if gather else idx


def _topk_fake(attn, sink, k, mu_s):
    return attn.new_empty((attn.shape[0], k), dtype=torch.int64)


def _gather_fake(attn, sink, k, features, mu_s):
    T, _, D = features.shape
    return attn.new_empty((T, k), dtype=torch.int64), features.new_empty((T, k, D))


@kernel_op("penalized_topk", "(Tensor attn, Tensor sink, int k, float mu_s) -> Tensor",
           fake=_topk_fake)
def penalized_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, mu_s: float) -> torch.Tensor:
    """(T, k) int64 top-k of attn − mu_s·sink per frame; see the module docstring."""
    return launch(attn, sink, k, mu_s)


@kernel_op("gather_topk", "(Tensor attn, Tensor sink, int k, Tensor features, float mu_s)"
                          " -> (Tensor, Tensor)", fake=_gather_fake)
def gather_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, features: torch.Tensor,
                mu_s: float) -> tuple:
    """(idx (T, k) int64, tokens (T, k, D)): `penalized_topk` fused with the row gather."""
    return launch(attn, sink, k, mu_s, features)
