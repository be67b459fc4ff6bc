"""Column-averaged attention without the attention matrix (SPEC §2), flash style.

    out[b, j] = 1/(H·Nq) · Σ_h Σ_i softmax(q[b, h] k[b, h]ᵀ · scale)[i, j]

Shapes and dtypes:
    q   (B, H, Nq, d)  float32 / float16 / bfloat16, any strides (a "bnhd" tensor arrives as a
                       permuted view and is read through its strides, never copied)
    k   (B, H, Nk, d)  same dtype, any strides; d ≤ 256, any value (72, 80, …)
    lse None or (B, H, Nq), any float dtype and strides: natural-log log-sum-exp of each
        *scaled* score row (what FlashAttention / SDPA return)
    →   (B, Nk) float32

Two kernels, fp32 accumulation throughout:
  * ``_row_lse_kernel`` (skipped when ``lse`` is given): one program per (query tile, b, h),
    an online max/sum sweep over the key tiles writes each row's LSE into a (B, H, Nq) fp32
    scratch.
  * ``_col_sum_kernel``: one program per (key tile, b, head split) sweeps its heads and all
    query tiles, adding exp(s − LSE) into a register tile that is reduced over the queries
    once at the end. Every column is summed by one program in a fixed order, so the result
    is deterministic (no atomics). When B·(Nk tiles) is too small to fill the GPU, heads are
    split over S programs whose partials (S, B, Nk) torch sums in a fixed order.
Peak extra memory: B·H·Nq·4 bytes of LSE scratch plus S·B·Nk·4 with S ≤ H/2, i.e. below
2·B·H·N·4. The head dim is covered by a power-of-two block plus a small masked tail block
(72 = 64 + 16 with 8 lanes masked) instead of padding to 128, and q/k are never copied.
fp32 inputs use IEEE fp32 dot products (no TF32) so results match the float64 reference.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET, LOG2E, next_pow2, sm_count


def head_blocks(d: int) -> tuple[int, int]:
    """(main, tail) power-of-two blocks covering head dim ``d`` (tail 0: none), each ≥ 16."""
    full = max(16, next_pow2(d))
    if d <= 16:
        return 16, 0
    main = 1 << (d.bit_length() - 1)
    rest = d - main
    if rest == 0:
        return main, 0
    tail = max(16, next_pow2(rest))
    return (full, 0) if main + tail >= full else (main, tail)


def _configs(pairs):
    if INTERPRET:  # the interpreter runs one program at a time: one config, no tuning
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in pairs]


# (BLOCK_M, BLOCK_N, warps, stages). For head dims 72/80 in any input dtype every entry fits
# the per-block shared memory of sm_86 (99 KB) and sm_90 (227 KB), as checked ahead of time by
# `python -m stop_fast.kernels.aot`; (64, 128) is 2-stage because with 3 stages it needs
# 100 KB for fp32. The small single-stage entry is the fallback for large fp32 head dims,
# where the bigger configs exceed shared memory and the autotuner discards them (it treats
# OutOfResources as an infinitely slow config).
_LSE_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 128, 4, 2),
                         (32, 32, 4, 1)])
_COL_CONFIGS = _configs([(64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2),
                         (32, 32, 4, 1)])


# Kernel bodies are written inline with pointer increments (no helper calls, no integer
# arithmetic in the loops): identical on GPU, and much faster under the interpreter.


@triton.autotune(configs=_LSE_CONFIGS, key=["Nq", "Nk", "d"])
@triton.jit
def _row_lse_kernel(q, k, lse, Nq, Nk, H, d,
                    sqb, sqh, sqn, sqd, skb, skh, skn, skd, qk_scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D1: tl.constexpr,
                    D2: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    n_m = tl.cdiv(Nq, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % n_m
    bh = pid // n_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ar_n = tl.arange(0, BLOCK_N)
    c1 = tl.arange(0, D1)
    q_rows = q + b * sqb + h * sqh + offs_m[:, None] * sqn
    k_rows = k + b * skb + h * skh + ar_n[:, None] * skn
    row_ok = (offs_m < Nq)[:, None]
    q1 = tl.load(q_rows + c1[None, :] * sqd, mask=row_ok & (c1 < d)[None, :], other=0.0)
    k1_ptrs = k_rows + c1[None, :] * skd
    if UPCAST:  # the interpreter's dot mishandles bfloat16; the upcast is exact
        q1 = q1.to(tl.float32)
    if D2 > 0:  # tail block of the head dim (e.g. dims 64..71 of 72, 8 lanes masked)
        c2 = D1 + tl.arange(0, D2)
        q2 = tl.load(q_rows + c2[None, :] * sqd, mask=row_ok & (c2 < d)[None, :], other=0.0)
        k2_ptrs = k_rows + c2[None, :] * skd
        if UPCAST:
            q2 = q2.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    step = BLOCK_N * skn
    for n0 in range(0, Nk, BLOCK_N):
        col_ok = ar_n < Nk - n0
        k1 = tl.load(k1_ptrs, mask=col_ok[:, None] & (c1 < d)[None, :], other=0.0)
        if UPCAST:
            k1 = k1.to(tl.float32)
        s = tl.dot(q1, tl.trans(k1), input_precision=PREC)
        if D2 > 0:
            k2 = tl.load(k2_ptrs, mask=col_ok[:, None] & (c2 < d)[None, :], other=0.0)
            if UPCAST:
                k2 = k2.to(tl.float32)
            s = tl.dot(q2, tl.trans(k2), s, input_precision=PREC)
            k2_ptrs += step
        k1_ptrs += step
        # log2 domain; padding columns get −inf through an additive bias (one FMA)
        s = s * qk_scale + tl.where(col_ok, 0.0, float("-inf"))[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    out = (m_i + tl.log2(l_i)) * 0.6931471805599453            # back to natural log
    tl.store(lse + bh.to(tl.int64) * Nq + offs_m, out, mask=offs_m < Nq)


@triton.autotune(configs=_COL_CONFIGS, key=["Nq", "Nk", "d"])
@triton.jit
def _col_sum_kernel(q, k, lse, out, B, Nq, Nk, H, d, S,
                    sqb, sqh, sqn, sqd, skb, skh, skn, skd, slb, slh, sln, sos, sob,
                    qk_scale, inv_count,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D1: tl.constexpr,
                    D2: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    n_n = tl.cdiv(Nk, BLOCK_N)
    pid = tl.program_id(0)
    pid_n = pid % n_n
    rest = pid // n_n
    b = (rest % B).to(tl.int64)
    split = rest // B
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ar_m = tl.arange(0, BLOCK_M)
    c1 = tl.arange(0, D1)
    k_mask1 = (offs_n < Nk)[:, None] & (c1 < d)[None, :]
    k_off1 = offs_n[:, None] * skn + c1[None, :] * skd
    q_off1 = ar_m[:, None] * sqn + c1[None, :] * sqd
    if D2 > 0:
        c2 = D1 + tl.arange(0, D2)
        k_mask2 = (offs_n < Nk)[:, None] & (c2 < d)[None, :]
        k_off2 = offs_n[:, None] * skn + c2[None, :] * skd
        q_off2 = ar_m[:, None] * sqn + c2[None, :] * sqd
    q_step = BLOCK_M * sqn
    l_step = BLOCK_M * sln
    # Summing p into a 2-D tile and reducing once avoids a cross-warp reduction per step.
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for h in range(split, H, S):
        hh = tl.full([], 0, tl.int64) + h        # int64 offsets (h may be a plain int)
        k_head = k + b * skb + hh * skh
        q_head = q + b * sqb + hh * sqh
        k1 = tl.load(k_head + k_off1, mask=k_mask1, other=0.0)
        q1_ptrs = q_head + q_off1
        if UPCAST:  # the interpreter's dot mishandles bfloat16; the upcast is exact
            k1 = k1.to(tl.float32)
        if D2 > 0:
            k2 = tl.load(k_head + k_off2, mask=k_mask2, other=0.0)
            q2_ptrs = q_head + q_off2
            if UPCAST:
                k2 = k2.to(tl.float32)
        l_ptrs = lse + b * slb + hh * slh + ar_m * sln
        for m0 in range(0, Nq, BLOCK_M):
            row_ok = ar_m < Nq - m0
            q1 = tl.load(q1_ptrs, mask=row_ok[:, None] & (c1 < d)[None, :], other=0.0)
            if UPCAST:
                q1 = q1.to(tl.float32)
            s = tl.dot(q1, tl.trans(k1), input_precision=PREC)
            if D2 > 0:
                q2 = tl.load(q2_ptrs, mask=row_ok[:, None] & (c2 < d)[None, :], other=0.0)
                if UPCAST:
                    q2 = q2.to(tl.float32)
                s = tl.dot(q2, tl.trans(k2), s, input_precision=PREC)
                q2_ptrs += q_step
            q1_ptrs += q_step
            # Padding rows get LSE = +inf, hence p = 0; padding columns are never stored.
            row = tl.load(l_ptrs, mask=row_ok, other=float("inf")).to(tl.float32)
            l_ptrs += l_step
            acc += tl.exp2(s * qk_scale - row[:, None] * 1.4426950408889634)
    col = tl.sum(acc, 0) * inv_count
    tl.store(out + split.to(tl.int64) * sos + b * sob + offs_n, col, mask=offs_n < Nk)


def head_splits(B: int, H: int, Nk: int, device: torch.device) -> int:
    """Programs per (b, key tile): enough to give the GPU ~4 programs per SM, at most H/2."""
    if device.type != "cuda":
        return 1
    programs = B * triton.cdiv(Nk, 64)
    return max(1, min(H // 2, triton.cdiv(4 * sm_count(device), programs)))


def launch(q: torch.Tensor, k: torch.Tensor, scale: float, lse: Optional[torch.Tensor] = None,
           splits: Optional[int] = None) -> torch.Tensor:
    """Run the kernels; ``splits`` overrides the head split S (tests use it on CPU)."""
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    D1, D2 = head_blocks(d)
    meta = dict(D1=D1, D2=D2, PREC="ieee" if q.dtype == torch.float32 else "tf32",
                UPCAST=INTERPRET and q.dtype == torch.bfloat16)
    qk_scale = float(scale) * LOG2E
    if lse is None:
        lse = torch.empty(B, H, Nq, dtype=torch.float32, device=q.device)
        _row_lse_kernel[lambda m: (triton.cdiv(Nq, m["BLOCK_M"]) * B * H,)](
            q, k, lse, Nq, Nk, H, d, *q.stride(), *k.stride(), qk_scale, **meta)
    S = head_splits(B, H, Nk, q.device) if splits is None else max(1, min(int(splits), H))
    out = torch.empty((S, B, Nk) if S > 1 else (B, Nk), dtype=torch.float32, device=q.device)
    sos, sob = (out.stride(0), out.stride(1)) if S > 1 else (0, out.stride(0))
    _col_sum_kernel[lambda m: (triton.cdiv(Nk, m["BLOCK_N"]) * B * S,)](
        q, k, lse, out, B, Nq, Nk, H, d, S, *q.stride(), *k.stride(), *lse.stride(), sos, sob,
        qk_scale, 1.0 / (H * Nq), **meta)
    return out.sum(0) if S > 1 else out   # fixed-order sum: deterministic


def _fake(q, k, scale, lse=None):
    return q.new_empty((q.shape[0], k.shape[2]), dtype=torch.float32)


@kernel_op("column_mean_attention",
           "(Tensor q, Tensor k, float scale, Tensor? lse=None) -> Tensor", fake=_fake)
def column_mean_attention(q: torch.Tensor, k: torch.Tensor, scale: float,
                          lse: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, Nk) float32 column mean of softmax(q kᵀ·scale); see the module docstring."""
    return launch(q, k, scale, lse)
