"""Adjacent-frame cosine and the STTP static tests (SPEC §5, paper Eq. 6).

    c[t, i] = ⟨x̂[t, i], x̂[t+1, i]⟩,  x̂ = x / max(‖x‖₂, 1e-12)
    static[t, i] = c[t, i] + μ_t · sink[i] > τ
    segment [b, e]: static at i iff static[t, i] for all t in b … e−1 (b = e: False)

Shapes and dtypes: x (T, N, D) float32 / float16 / bfloat16, any strides, T ≥ 2, any D
(3584 in the target models); sink (N,) any float dtype; bounds (S, 2) int64 rows [b, e].
adjacent_cosine → (T−1, N) float32, static_mask → (T−1, N) bool, segment_static_mask →
(S, N) bool.

Two launches per call:
  * ``_partials_kernel``, one program per (block of locations, chunk of D): walks the T
    frames once, two frames per step (two loads in flight), loading every x[t, i, chunk]
    exactly once and using it for both of its neighbours: ‖x_t‖² and ⟨x_{t−1}, x_t⟩
    partial sums go to small (chunks, T, N) fp32 buffers. Splitting D gives the GPU
    cdiv(N, 8)·cdiv(D, 256) programs (350 for the target shape) instead of a handful.
  * ``_finalize_kernel``, one program per tile of (frame steps × locations) (or per
    (segment, locations) with all the segment's steps in one tile): sums the chunk
    partials in a fixed, unrolled order (deterministic, all loads issued together), forms
    c, and writes c, the static mask, or the per-segment AND of the static mask.
fp32 accumulation throughout.
"""
import torch
import triton
import triton.language as tl

from ._op import kernel_op
from ._utils import INTERPRET

# Larger blocks under the interpreter, whose cost is per block operation, not per element.
BLOCK_L = 32 if INTERPRET else 8             # locations per partials program
MAX_BLOCK_D = 1024 if INTERPRET else 256     # feature chunk per partials program
FIN_TILE = 4096 if INTERPRET else 1024       # (steps × locations) per finalize program
MODE_COS, MODE_STATIC, MODE_SEGMENT = 0, 1, 2


@triton.jit
def _partials_kernel(x, dots, norms, T, N, D, s_t, s_n, s_d, sp_c, sp_t,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    chunk = tl.program_id(1)
    offs_d = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
    ml = offs_l < N
    md = (offs_d < D)[None, :]
    mask = ml[:, None] & md
    ptrs = x + offs_l.to(tl.int64)[:, None] * s_n + offs_d[None, :] * s_d
    dot_out = dots + chunk * sp_c + offs_l       # row t: <x_t, x_t+1>
    norm_out = norms + chunk * sp_c + offs_l     # row t: ‖x_t‖²
    prev = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(norm_out, tl.sum(prev * prev, 1), mask=ml)
    for t in range(1, T, 2):
        # Frames t and t+1 (when it exists); pointers step, so no 32-bit t·stride overflow.
        ml_b = offs_l < tl.where(t + 1 < T, N, 0)     # frame t+1 exists (vector mask)
        a = tl.load(ptrs + s_t, mask=mask, other=0.0).to(tl.float32)
        ptrs += 2 * s_t
        b = tl.load(ptrs, mask=ml_b[:, None] & md, other=0.0).to(tl.float32)
        norm_out += sp_t
        tl.store(norm_out, tl.sum(a * a, 1), mask=ml)
        tl.store(dot_out, tl.sum(prev * a, 1), mask=ml)
        dot_out += sp_t
        norm_out += sp_t
        tl.store(norm_out, tl.sum(b * b, 1), mask=ml_b)
        tl.store(dot_out, tl.sum(a * b, 1), mask=ml_b)
        dot_out += sp_t
        prev = b


@triton.jit
def _finalize_kernel(dots, norms, sink, bounds, out, T, N, sp_c, sp_t, s_s, s_bs, s_o,
                     mu_t, tau, N_CHUNKS: tl.constexpr, MODE: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = tl.program_id(1)          # block of frame steps, or segment index
    ml = offs < N
    if MODE == 2:
        t_lo = tl.load(bounds + row * s_bs)
        t_hi = tl.load(bounds + row * s_bs + 1)      # steps b … e−1
    else:
        t_lo = row * BLOCK_T
        t_hi = T - 1
    offs_t = t_lo + tl.arange(0, BLOCK_T)
    mt = offs_t < t_hi
    mask = mt[:, None] & ml[None, :]
    rel = offs_t[:, None] * sp_t + offs[None, :]
    dot = tl.zeros([BLOCK_T, BLOCK], tl.float32)
    n0 = tl.zeros([BLOCK_T, BLOCK], tl.float32)
    n1 = tl.zeros([BLOCK_T, BLOCK], tl.float32)
    for c in tl.static_range(N_CHUNKS):   # unrolled, fixed order: deterministic
        dot += tl.load(dots + c * sp_c + rel, mask=mask, other=0.0)
        n0 += tl.load(norms + c * sp_c + rel, mask=mask, other=0.0)
        n1 += tl.load(norms + c * sp_c + sp_t + rel, mask=mask, other=0.0)
    cos = dot / (tl.maximum(tl.sqrt(n0), 1e-12) * tl.maximum(tl.sqrt(n1), 1e-12))
    if MODE == 0:
        tl.store(out + offs_t[:, None] * s_o + offs[None, :], cos, mask=mask)
    else:
        bonus = mu_t * tl.load(sink + offs * s_s, mask=ml, other=0.0).to(tl.float32)
        static = cos + bonus[None, :] > tau
        if MODE == 1:
            tl.store(out + offs_t[:, None] * s_o + offs[None, :], static.to(tl.int8), mask=mask)
        else:
            # static over every step of [b, e]; an empty step range (b = e) is not static
            breaks = tl.sum((mask & ~static).to(tl.int32), 0)
            keep = (breaks == 0) & (t_hi > t_lo)
            tl.store(out + row * s_o + offs, keep.to(tl.int8), mask=ml)


def _partials(x: torch.Tensor):
    T, N, D = x.shape
    block_d = min(MAX_BLOCK_D, max(16, triton.next_power_of_2(D)))
    block_l = min(BLOCK_L, max(2, triton.next_power_of_2(N)))
    n_chunks = triton.cdiv(D, block_d)
    dots = torch.empty(n_chunks, T, N, dtype=torch.float32, device=x.device)  # row T−1 unused
    norms = torch.empty(n_chunks, T, N, dtype=torch.float32, device=x.device)
    _partials_kernel[(triton.cdiv(N, block_l), n_chunks)](
        x, dots, norms, T, N, D, *x.stride(), dots.stride(0), dots.stride(1),
        BLOCK_L=block_l, BLOCK_D=block_d, num_warps=1 if INTERPRET else 4)
    return dots, norms, n_chunks


def _finalize(x, sink, bounds, tau, mu_t, mode, out):
    T, N, _ = x.shape
    if out.shape[0] == 0:
        return out
    dots, norms, n_chunks = _partials(x)
    # A segment's steps all go in one tile; otherwise tiles of up to 16 steps.
    block_t = max(2, triton.next_power_of_2(T - 1))
    if mode != MODE_SEGMENT:
        block_t = min(block_t, 16)
    block = min(max(16, triton.next_power_of_2(N)), max(16, FIN_TILE // block_t))
    rows = out.shape[0] if mode == MODE_SEGMENT else triton.cdiv(T - 1, block_t)
    # bool outputs are written as bytes (0/1) through a uint8 view of the same storage
    target = out.view(torch.uint8) if out.dtype == torch.bool else out
    _finalize_kernel[(triton.cdiv(N, block), rows)](
        dots, norms, dots if sink is None else sink, dots if bounds is None else bounds,
        target, T, N, dots.stride(0), dots.stride(1),
        0 if sink is None else sink.stride(0), 0 if bounds is None else bounds.stride(0),
        out.stride(0), float(mu_t), float(tau), N_CHUNKS=n_chunks, MODE=mode,
        BLOCK_T=block_t, BLOCK=block, num_warps=1 if INTERPRET else 4)
    return out


def launch_cosine(x):
    T, N, _ = x.shape
    out = torch.empty(T - 1, N, dtype=torch.float32, device=x.device)
    return _finalize(x, None, None, 0.0, 0.0, MODE_COS, out)


def launch_static(x, sink, tau, mu_t):
    T, N, _ = x.shape
    out = torch.empty(T - 1, N, dtype=torch.bool, device=x.device)
    return _finalize(x, sink, None, tau, mu_t, MODE_STATIC, out)


def launch_segment(x, sink, bounds, tau, mu_t):
    S, N = bounds.shape[0], x.shape[1]
    out = torch.empty(S, N, dtype=torch.bool, device=x.device)
    return _finalize(x, sink, bounds.long(), tau, mu_t, MODE_SEGMENT, out)


def _cosine_fake(x):
    return x.new_empty((x.shape[0] - 1, x.shape[1]), dtype=torch.float32)


def _static_fake(x, sink, tau, mu_t):
    return x.new_empty((x.shape[0] - 1, x.shape[1]), dtype=torch.bool)


def _segment_fake(x, sink, bounds, tau, mu_t):
    return x.new_empty((bounds.shape[0], x.shape[1]), dtype=torch.bool)


@kernel_op("adjacent_cosine", "(Tensor x) -> Tensor", fake=_cosine_fake)
def adjacent_cosine(x: torch.Tensor) -> torch.Tensor:
    """(T−1, N) float32 cosine of each location with itself in the next frame."""
    return launch_cosine(x)


@kernel_op("static_mask", "(Tensor x, Tensor sink, float tau, float mu_t) -> Tensor",
           fake=_static_fake)
def static_mask(x: torch.Tensor, sink: torch.Tensor, tau: float, mu_t: float) -> torch.Tensor:
    """(T−1, N) bool: adjacent cosine + mu_t·sink > tau."""
    return launch_static(x, sink, tau, mu_t)


@kernel_op("segment_static_mask",
           "(Tensor x, Tensor sink, Tensor bounds, float tau, float mu_t) -> Tensor",
           fake=_segment_fake)
def segment_static_mask(x: torch.Tensor, sink: torch.Tensor, bounds: torch.Tensor, tau: float,
                        mu_t: float) -> torch.Tensor:
    """(S, N) bool: locations static at every step of each segment [b, e] (b = e: False)."""
    return launch_segment(x, sink, bounds, tau, mu_t)
