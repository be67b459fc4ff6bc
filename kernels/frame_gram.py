"""Per-frame Gram matrices: every token of a frame against the frame's tokens, or against a
list of key rows anywhere in the video, in one pass over the features.

    "dot":       out[t, i, k] = ⟨x[t, i], row(keys[t, k])⟩,     row(r) = x[r // N, r % N]
    "distance":  out[t, i, k] = ‖x[t, i] − row(keys[t, k])‖²    (a row against itself: 0)
    "unit_keys": out[t, i, k] = ⟨x[t, i], row(keys[t, k])⟩ / max(‖row(keys[t, k])‖, 1e-12)

with keys = the frame's own N rows when ``keys`` is None. Distances come from the Gram form
‖a‖² + ‖b‖² − 2⟨a, b⟩ of the rows shifted by the frame's first row c_t: the shift leaves
every distance unchanged and removes the tokens' common component, so the form keeps the
digits that ‖x‖² would otherwise cancel (the role of centring in
:mod:`stop_fast.pipelines.dpc_knn`); negative rounding is clamped to 0.

Shapes and dtypes: x (T, N, D) float32/float16/bfloat16, any strides; keys None or (T, K)
int64 flat rows t'·N + i (negative: padding, a zero column) → (T, N, K) float32 (K = N for
keys None). A padding key gives 0, or −inf in "unit_keys" (whose outputs are ranked: the
cosine up to the query's own norm, so an argmax over keys finds the most similar real key).
Products and sums in fp32 (IEEE dots, no TF32), fp16/bf16 rows upcast as loaded.

One launch, one program per (frame, block of tokens, block of keys): a tiled matmul over D
whose key tile is gathered row by row.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

# Larger blocks under the interpreter, whose cost is per block operation, not per element.
BLOCK_M = 256 if INTERPRET else 32
BLOCK_N = 256 if INTERPRET else 32
BLOCK_D = 4096 if INTERPRET else 32


@triton.jit
def _gram_kernel(x, keys, out, N, K, D, s_t, s_n, s_d, s_kt, s_kk, s_ot, s_on, s_ok,
                 MODE: tl.constexpr, OWN: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_m < N
    mn = offs_n < K
    if OWN:
        key_t = t + offs_n * 0
        key_i = offs_n.to(tl.int64)
        valid = mn
    else:
        r = tl.load(keys + t * s_kt + offs_n * s_kk, mask=mn, other=-1)
        valid = mn & (r >= 0)
        r = tl.where(valid, r, 0)
        key_t = r // N
        key_i = r % N
    a_ptr = x + t * s_t + offs_m.to(tl.int64)[:, None] * s_n
    b_ptr = x + key_t[:, None] * s_t + key_i[:, None] * s_n
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    sq_a = tl.zeros([BLOCK_M], tl.float32)
    sq_b = tl.zeros([BLOCK_N], tl.float32)
    dd = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + dd
        md = d < D
        a = tl.load(a_ptr + d[None, :] * s_d, mask=mm[:, None] & md[None, :], other=0.0).to(tl.float32)
        b = tl.load(b_ptr + d[None, :] * s_d, mask=valid[:, None] & md[None, :], other=0.0).to(tl.float32)
        if MODE == 1:
            c = tl.load(x + t * s_t + d * s_d, mask=md, other=0.0).to(tl.float32)
            a = tl.where(mm[:, None], a - c[None, :], 0.0)
            b = tl.where(valid[:, None], b - c[None, :], 0.0)
            sq_a += tl.sum(a * a, 1)
        if MODE != 0:
            sq_b += tl.sum(b * b, 1)
        acc += tl.dot(a, tl.trans(b), input_precision="ieee")
    if MODE == 2:
        acc = tl.where(valid[None, :], acc / tl.maximum(tl.sqrt(sq_b), 1e-12)[None, :], float("-inf"))
    if MODE == 1:
        acc = tl.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * acc, 0.0)
        same = (key_t[None, :] == t) & (key_i[None, :] == offs_m.to(tl.int64)[:, None])
        acc = tl.where(same | ~valid[None, :], 0.0, acc)
    ptrs = out + t * s_ot + offs_m[:, None] * s_on + offs_n[None, :] * s_ok
    tl.store(ptrs, acc, mask=mm[:, None] & mn[None, :])


MODES = ("dot", "distance", "unit_keys")


def launch(x: torch.Tensor, keys: torch.Tensor | None, mode: str) -> torch.Tensor:
    T, N, D = x.shape
    K = N if keys is None else keys.shape[1]
    out = torch.empty(T, N, K, dtype=torch.float32, device=x.device)
    if T == 0 or K == 0:
        return out
    grid = (T, triton.cdiv(N, min(BLOCK_M, max(16, triton.next_power_of_2(N)))),
            triton.cdiv(K, min(BLOCK_N, max(16, triton.next_power_of_2(K)))))
    k = x if keys is None else keys
    _gram_kernel[grid](x, k, out, N, K, D, *x.stride(),
                       0 if keys is None else keys.stride(0), 0 if keys is None else keys.stride(1),
                       *out.stride(), MODE=MODES.index(mode), OWN=keys is None,
                       BLOCK_M=min(BLOCK_M, max(16, triton.next_power_of_2(N))),
                       BLOCK_N=min(BLOCK_N, max(16, triton.next_power_of_2(K))),
                       BLOCK_D=min(BLOCK_D, max(16, triton.next_power_of_2(D))),
                       num_warps=1 if INTERPRET else 4)
    return out


def _fake(x, keys, mode):
    K = x.shape[1] if keys is None else keys.shape[1]
    return x.new_empty((x.shape[0], x.shape[1], K), dtype=torch.float32)


@kernel_op("frame_gram", "(Tensor x, Tensor? keys, str mode) -> Tensor", fake=_fake)
def frame_gram(x: torch.Tensor, keys: torch.Tensor | None, mode: str) -> torch.Tensor:
    """(T, N, K) fp32 dots, squared distances or unit-key dots of every token with its
    frame's tokens or the listed key rows; see the module docstring."""
    return launch(x, keys, mode)
