"""Every token of a frame projected on one vector of that frame: h[t, i] = ⟨x[t, i], v[t]⟩.

FlashVid's ADTS weight uses ⟨x[t, j], ḡ⟩ with ḡ the mean token of t's segment (SPEC §10.3b);
this reads the features once in their own dtype (no upcast copy) and accumulates in fp32.

Shapes and dtypes: x (T, N, D) any float dtype and strides, v (T, D) float32 any strides →
(T, N) float32. One launch, one program per (frame, block of tokens), looping over D.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

BLOCK_I = 64 if INTERPRET else 16
BLOCK_D = 2048 if INTERPRET else 256


@triton.jit
def _project_kernel(x, v, out, N, D, s_t, s_n, s_d, s_vt, s_vd, s_ot,
                    BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    oi = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mi = oi < N
    od = tl.arange(0, BLOCK_D)
    x_ptrs = x + t * s_t + oi.to(tl.int64)[:, None] * s_n + od[None, :] * s_d
    v_ptrs = v + t * s_vt + od * s_vd
    acc = tl.zeros([BLOCK_I, BLOCK_D], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        md = od < D - d0
        xs = tl.load(x_ptrs, mask=mi[:, None] & md[None, :], other=0.0).to(tl.float32)
        vs = tl.load(v_ptrs, mask=md, other=0.0).to(tl.float32)
        acc += xs * vs[None, :]
        x_ptrs += BLOCK_D * s_d
        v_ptrs += BLOCK_D * s_vd
    tl.store(out + t * s_ot + oi, tl.sum(acc, 1), mask=mi)


def launch(x, v):
    T, N, D = x.shape
    out = torch.empty(T, N, dtype=torch.float32, device=x.device)
    if T == 0 or N == 0:
        return out
    block_i = min(BLOCK_I, max(2, triton.next_power_of_2(N)))
    block_d = min(BLOCK_D, max(16, triton.next_power_of_2(D)))
    _project_kernel[(T, triton.cdiv(N, block_i))](
        x, v, out, N, D, *x.stride(), *v.stride(), out.stride(0),
        BLOCK_I=block_i, BLOCK_D=block_d, num_warps=1 if INTERPRET else 4)
    return out


def _fake(x, v):
    return x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)


@kernel_op("project", "(Tensor x, Tensor v) -> Tensor", fake=_fake)
def project(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(T, N) float32: ⟨x[t, i], v[t]⟩."""
    return launch(x, v)
