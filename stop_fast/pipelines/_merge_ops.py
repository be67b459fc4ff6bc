"""Building blocks of the merging pipelines (FlashVid, PruneVid) on either backend.

Each reads the features at most once. On ``backend="triton"`` they run the kernels
(:mod:`stop_fast.kernels`: ``set_gram``, ``project``, ``adts_match``, ``gather_sum``); on the
torch backend their twins in :mod:`stop_fast.torch_backend`, or, where the layout is known on
the host, a cheaper torch route with the same result (batched matmuls straight on the
features, a scatter-add instead of a gather).
"""
from __future__ import annotations

import torch

from .. import dispatch
from .. import torch_backend as TB
from .base import to_device

__all__ = ["to_device", "kernel", "frame_grams", "project", "adts_match", "run_grams", "scatter_rows", "gather_rows"]


def _kernels(backend: str, device: torch.device):
    return dispatch._load_kernels() if backend == "triton" else None


def kernel(name: str):
    """The kernel op ``name`` of :mod:`stop_fast.kernels` (imported on first use)."""
    return getattr(dispatch._load_kernels(), name)


def frame_grams(x: torch.Tensor, backend: str, cross: bool = True):
    """One pass over x (T, N, D): (G (T, N, N) Gram of each frame, C (T − 1, N, N) with
    C[t] = X_{t+1} X_tᵀ (empty unless ``cross``), F (T, D) float32 frame sums)."""
    T, N, D = x.shape
    K = _kernels(backend, x.device)
    if K is not None:
        starts, counts = to_device(x.device, [t * N for t in range(T)], [N] * T)
        G, C, parts = K.set_gram(x, starts, counts, N, cross, True)
        return G, C, parts.sum(1)
    xf = x.float()
    if cross and T > 1 and xf.stride(0) == N * xf.stride(1):
        # Frames t and t + 1 are one (2N, D) matrix of the same storage: one matmul gives
        # X_{t+1} [X_t; X_{t+1}]ᵀ = [C[t] | G[t+1]] without copying the features.
        pairs = xf.as_strided((T - 1, 2 * N, D), (xf.stride(0), xf.stride(1), xf.stride(2)))
        both = torch.bmm(xf[1:], pairs.mT)
        G = torch.cat([torch.bmm(xf[:1], xf[:1].mT), both[:, :, N:]])
        C = both[:, :, :N]
    else:
        G = torch.bmm(xf, xf.mT)
        C = torch.bmm(xf[1:], xf[:-1].mT) if cross else xf.new_zeros(0, N, N)
    return G, C, xf.sum(1)


def project(x: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """(T, N) float32 ⟨x[t, i], v[t]⟩, one pass over x."""
    K = _kernels(backend, x.device)
    return K.project(x, v) if K is not None else TB.project(x, v)


def adts_match(gram, cross, w, n_a: int, backend: str):
    """FlashVid's ADTS picks and temporal best match (kernels/adts.py)."""
    K = _kernels(backend, gram.device)
    return (K or TB).adts_match(gram, cross, w, n_a)


def run_grams(buf: torch.Tensor, starts: list[int], sizes: list[int], backend: str,
              ) -> torch.Tensor:
    """Gram of each run of consecutive rows of buf (R, D): run s is rows starts[s] …
    starts[s] + sizes[s] − 1 (host ints). Returns (S, n, n) float32, zero-padded to
    n = max(sizes)."""
    n = max(sizes, default=0)
    st, cnt = to_device(buf.device, starts, sizes)
    K = _kernels(backend, buf.device)
    return (K or TB).set_gram(buf, st, cnt, n, False, False)[0]


def scatter_rows(x: torch.Tensor, slot: torch.Tensor, den: torch.Tensor, M: int,
                 backend: str) -> torch.Tensor:
    """(M, D) float32: out[m] = Σ_{r: slot[r] = m} x_r / den[m] over the token rows r of x
    (T, N, D) (slot (T·N,) int64, −1 for rows that go nowhere). One pass over x."""
    T, N, D = x.shape
    dev = x.device
    K = _kernels(backend, dev)
    tgt = torch.where(slot < 0, M, slot)
    if K is not None:
        # CSR by output row: a stable sort keeps each row's members in token order.
        by_row = torch.sort(tgt, stable=True)
        ptr = torch.searchsorted(by_row.values, torch.arange(M + 1, device=dev))
        return K.gather_sum(x, by_row.indices, ptr, den, torch.float32)
    out = torch.zeros(M + 1, D, device=dev).index_add_(0, tgt, x.reshape(T * N, D).float())
    return out[:M].div_(den[:, None])


def gather_rows(src: torch.Tensor, idx: torch.Tensor, ptr: torch.Tensor, den: torch.Tensor,
                out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    """(M, D): out[m] = Σ src[idx[ptr[m]:ptr[m+1]]] / den[m] (kernels/gather_sum.py)."""
    K = _kernels(backend, src.device)
    return (K or TB).gather_sum(src, idx, ptr, den, out_dtype)
