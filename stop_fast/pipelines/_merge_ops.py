"""Building blocks of the merging pipelines (FlashVid, PruneVid) on either backend.

Each reads the features at most once. On ``backend="triton"`` they run the kernels
(:mod:`stop_fast.kernels`: ``set_gram``, ``project``, ``adts_match``, ``merge_tokens``); on the
torch backend their twins in :mod:`stop_fast.torch_backend`, or, where the layout is known on
the host, a cheaper torch route with the same result (batched matmuls straight on the
features).
"""
from __future__ import annotations

import torch

from .. import dispatch
from .. import torch_backend as TB
from .base import to_device

__all__ = ["to_device", "kernel", "features", "frame_grams", "project", "adts_match", "run_grams", "scatter_rows", "merge",
           "segment_stats"]


def features(x: torch.Tensor, backend: str) -> torch.Tensor:
    """The features as the passes read them: as they are for the kernels (which read any
    dtype and accumulate in fp32); float32 on the torch route, copied once here rather than
    by every pass (CPU matmuls have no bf16-in, fp32-out form)."""
    return x if backend == "triton" else x.float()


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
        # Frames t and t + 1 are one (2N, D) matrix of the same storage: its Gram is
        # [[G[t], C[t]ᵀ], [C[t], G[t+1]]], so one batched matmul over the overlapping pairs
        # reads the features as one tensor and gives every G and C, without copying them.
        pairs = xf.as_strided((T - 1, 2 * N, D), (xf.stride(0), xf.stride(1), xf.stride(2)))
        both = torch.bmm(pairs, pairs.mT)
        G = torch.cat([both[:, :N, :N], both[-1:, N:, N:]])
        C = both[:, N:, :N]
    else:
        G = torch.bmm(xf, xf.mT)
        C = torch.bmm(xf[1:], xf[:-1].mT) if cross else torch.zeros(0, N, N, device=x.device)
    return G, C, xf.sum(1)


def project(x: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """(T, N) float32 ⟨x[t, i], v[t]⟩, one pass over x."""
    K = _kernels(backend, x.device)
    return K.project(x, v) if K is not None else TB.project(x, v)


def segment_stats(x: torch.Tensor, norms: torch.Tensor, bounds: torch.Tensor, backend: str):
    """One pass over x: each segment's mean over its frames (S, N, D) and Σ_{u≠v} ⟨x̂_u, x̂_v⟩
    at each location (S, N) (kernels/segment_stats.py; the torch route takes the latter from
    each location's Gram over the frames)."""
    K = _kernels(backend, x.device)
    mean, sq = (K or TB).segment_stats(x, norms, bounds)
    return mean, sq.sum(-1)


def adts_match(gram, cross, w, n_a: int, backend: str):
    """FlashVid's ADTS picks and temporal best match (kernels/adts.py)."""
    K = _kernels(backend, gram.device)
    return (K or TB).adts_match(gram, cross, w, n_a)


# Torch route of run_grams: rows per matmul group (bounds its compute and the group's Gram).
GROUP_ROWS = 1024


def run_grams(buf: torch.Tensor, starts: list[int], sizes: list[int], backend: str,
              ) -> torch.Tensor:
    """Gram of each run of consecutive rows of buf (R, D): run s is rows starts[s] …
    starts[s] + sizes[s] − 1 (host ints, runs ascending and disjoint). Returns (S, n, n)
    float32 with n = max(sizes); entries past a run's size are unspecified (finite). buf must
    have n rows past the last run's start (the callers append zero rows)."""
    n = max(sizes, default=0)
    K = _kernels(backend, buf.device)
    if K is not None:
        st, cnt = to_device(buf.device, starts, sizes)
        return K.set_gram(buf, st, cnt, n, False, False)[0]
    # One matmul per group of consecutive runs (≤ GROUP_ROWS rows, plus n rows of slack so
    # that every run's n × n window stays inside its group's Gram), then each run's diagonal
    # block as a strided view of that Gram: one stack copies them out. The padding of a window
    # holds neighbouring entries, which the callers mask.
    groups, blocks = [], []
    i = 0
    while i < len(starts):
        j = i
        while j + 1 < len(starts) and starts[j + 1] + sizes[j + 1] - starts[i] <= GROUP_ROWS:
            j += 1
        r0, r1 = starts[i], starts[j] + sizes[j] + n
        rows = buf[r0:r1].float()
        g = torch.mm(rows, rows.T)
        groups.append(g)
        R = r1 - r0
        blocks += [g.as_strided((n, n), (R, 1), g.storage_offset() + (starts[s] - r0) * (R + 1))
                   for s in range(i, j + 1)]
        i = j + 1
    return torch.stack(blocks) if blocks else torch.zeros(0, n, n, device=buf.device)


def scatter_rows(x: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, M: int,
                 backend: str, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(M, D) in ``out_dtype``: out[m] = Σ_{r: slot[r] = m} weight[r] · x_r over the token rows r of x
    (T, N, D) (slot, weight (T·N,); every slot in 0 … M − 1). One pass over x
    (:func:`stop_fast.api.merge_tokens`: members in token order, a stable sort)."""
    by_row = torch.sort(slot, stable=True)
    ptr = torch.searchsorted(by_row.values, torch.arange(M + 1, device=x.device))
    return merge(x, by_row.indices, weight[by_row.indices], ptr, out_dtype, backend)


def merge(src: torch.Tensor, members: torch.Tensor, weights: torch.Tensor, ptr: torch.Tensor,
          out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    """(M, D): out[m] = Σ weights[e] · row(members[e]) over e in [ptr[m], ptr[m+1]), rows of a
    (B, n, D) or (R, D) source (the ``merge_tokens`` kernel or its torch twin)."""
    src = src if src.dim() == 3 else src[None]
    return dispatch.get("merge_tokens", backend, src.device)(src, members, weights, ptr, out_dtype)
