"""Public SToP primitives: validate, then hand over to the backend chosen by :mod:`dispatch`.

Shapes follow SPEC.md: T frames, N locations (tokens per frame), D feature width, B
batch (frames) and H heads for attention, d head dim.
"""
from __future__ import annotations

import torch

from . import _checks as C
from .dispatch import get

__all__ = [
    "column_mean_attention",
    "sink_score",
    "penalized_topk",
    "gather_topk",
    "adjacent_cosine",
    "static_mask",
    "segment_static_mask",
    "merge_tokens",
    "frame_gram",
    "knn_density",
]

LAYOUTS = ("bhnd", "bnhd")


def column_mean_attention(q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
                          lse: torch.Tensor | None = None, layout: str = "bhnd",
                          backend: str = "auto") -> torch.Tensor:
    """Column-averaged attention (SPEC §2), without materializing the attention matrix.

    Args:
        q: queries, (B, H, Nq, d) for ``layout="bhnd"`` or (B, Nq, H, d) for ``"bnhd"`` (any
            strides: the views a ViT's q/k projections produce are read without copies).
        k: keys, same layout, (B, H, Nk, d) / (B, Nk, H, d).
        scale: softmax scale; default d^-1/2.
        lse: optional (B, H, Nq) natural-log log-sum-exp of each scaled score row, as
            FlashAttention / SDPA return it; lets the kernel skip its first sweep.
        layout: "bhnd" or "bnhd".
        backend: "auto", "torch", "triton" or "reference".

    Returns:
        (B, Nk) float32: mean over heads and queries of softmax(q kᵀ·scale). Not
        differentiable: it is a score for selection, so q, k and lse are read detached and the
        result never requires grad.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    what = "(B, H, N, d)" if layout == "bhnd" else "(B, N, H, d)"
    C.tensor("q", q, 4, what)
    C.tensor("k", k, 4, what)
    if layout == "bnhd":      # a stride permutation, not a copy
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    B, H, Nq, d = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != d:
        raise ValueError(f"k must match q in batch, heads and head dim: q is (B={B}, H={H}, d={d}) "
                         f"in layout {layout}, got k with (B={k.shape[0]}, H={k.shape[1]}, d={k.shape[3]})")
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must share a dtype, got q {q.dtype} and k {k.dtype}")
    C.nonempty("q", q, (0, 1, 2, 3), what)
    C.nonempty("k", k, (2,), what)
    if d > 256:
        raise ValueError(f"head dim must be at most 256, got d={d}")
    C.same_device(q=q, k=k, lse=lse)
    scale = d ** -0.5 if scale is None else C.number("scale", scale, positive=True)
    if lse is not None:
        C.tensor("lse", lse, 3, "(B, H, Nq)")
        if tuple(lse.shape) != (B, H, Nq):
            raise ValueError(f"lse must have shape (B, H, Nq) = {(B, H, Nq)}, got {tuple(lse.shape)}")
    C.finite(q=q, k=k, lse=lse)
    q, k = q.detach(), k.detach()
    lse = lse.detach() if lse is not None else None
    return get("column_mean_attention", backend, q.device)(q, k, scale, lse)


def _attention(name: str, attn) -> torch.Tensor:
    C.tensor(name, attn, 2, "(T, N)")
    C.nonempty(name, attn, (0, 1), "(T, N)")
    return attn


def _sink(sink, N: int, **others: torch.Tensor) -> torch.Tensor:
    C.tensor("sink", sink, 1, "(N,)")
    if sink.shape[0] != N:
        raise ValueError(f"sink must have shape (N,) = ({N},) to match the per-frame locations, "
                         f"got {tuple(sink.shape)}")
    C.same_device(sink=sink, **others)
    return sink


def _features(name: str, x, min_frames: int = 1) -> torch.Tensor:
    C.tensor(name, x, 3, "(T, N, D)")
    C.nonempty(name, x, (1, 2), "(T, N, D)")
    if x.shape[0] < min_frames:
        raise ValueError(f"{name} must have at least {min_frames} frames in shape (T, N, D), "
                         f"got shape {tuple(x.shape)}")
    return x


def sink_score(attn: torch.Tensor, *, gamma: float = 1.1, eps: float = 1e-12,
               backend: str = "auto") -> torch.Tensor:
    """Sink score per location (SPEC §3, paper Eq. 4).

    attn (T, N) non-negative per-frame attention → (N,) float32 in [0, 1]: the frame-mean
    raised to ``gamma`` and min–max normalized. Constant input gives zeros.
    """
    _attention("attn", attn)
    gamma = C.number("gamma", gamma, positive=True)
    eps = C.number("eps", eps, positive=True)
    ends = C.finite(attn=attn)
    if ends is not None and ends["attn"][0] < 0:   # m^γ of a negative mean is NaN
        raise ValueError(f"attn must be non-negative (a per-frame attention score), got a minimum "
                         f"of {ends['attn'][0]:.4g}")
    return get("sink_score", backend, attn.device)(attn, gamma, eps)


def penalized_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, *, mu_s: float,
                   backend: str = "auto") -> torch.Tensor:
    """STSP selection (SPEC §4, paper Eq. 5): per frame the k largest ``attn − mu_s·sink``.

    attn (T, N), sink (N,) → (T, k) int64 location indices by descending penalized score,
    exact ties to the lower index.
    """
    _attention("attn", attn)
    T, N = attn.shape
    _sink(sink, N, attn=attn)
    k = C.integer("k", k, 1, N)
    mu_s = C.number("mu_s", mu_s)
    C.finite(attn=attn, sink=sink)
    return get("penalized_topk", backend, attn.device)(attn, sink, k, mu_s)


def gather_topk(attn: torch.Tensor, sink: torch.Tensor, k: int, features: torch.Tensor, *,
                mu_s: float, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """`penalized_topk` fused with the gather of the selected feature rows.

    features (T, N, D) → (indices (T, k) int64, tokens (T, k, D) in features' dtype).
    """
    _attention("attn", attn)
    T, N = attn.shape
    _features("features", features)
    if tuple(features.shape[:2]) != (T, N):
        raise ValueError(f"features must have shape (T, N, D) with (T, N) = {(T, N)} from attn, "
                         f"got {tuple(features.shape)}")
    _sink(sink, N, attn=attn, features=features)
    k = C.integer("k", k, 1, N)
    mu_s = C.number("mu_s", mu_s)
    C.finite(attn=attn, sink=sink, features=features)
    return get("gather_topk", backend, attn.device)(attn, sink, k, features, mu_s)


def adjacent_cosine(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Cosine similarity of each location with itself in the next frame (SPEC §5).

    x (T, N, D), T ≥ 2 → (T−1, N) float32.
    """
    _features("x", x, min_frames=2)
    C.finite(x=x)
    return get("adjacent_cosine", backend, x.device)(x)


def _threshold_args(x, sink, tau, mu_t, min_frames=2):
    _features("x", x, min_frames=min_frames)
    _sink(sink, x.shape[1], x=x)
    tau, mu_t = C.number("tau", tau), C.number("mu_t", mu_t)
    C.finite(x=x, sink=sink)
    return tau, mu_t


def static_mask(x: torch.Tensor, sink: torch.Tensor, *, tau: float, mu_t: float,
                backend: str = "auto") -> torch.Tensor:
    """STTP test (SPEC §5, paper Eq. 6): ``cos(x[t], x[t+1]) + mu_t·sink > tau``.

    x (T, N, D), T ≥ 2, sink (N,) → (T−1, N) bool.
    """
    tau, mu_t = _threshold_args(x, sink, tau, mu_t)
    return get("static_mask", backend, x.device)(x, sink, tau, mu_t)


def segment_static_mask(x: torch.Tensor, sink: torch.Tensor, bounds: torch.Tensor, *, tau: float,
                        mu_t: float, backend: str = "auto") -> torch.Tensor:
    """Locations static over whole segments (SPEC §5): static at every step t = b … e−1.

    bounds (S, 2) int64 inclusive frame ranges [b, e] with 0 ≤ b ≤ e < T → (S, N) bool;
    a one-frame segment (b == e) has no static location. T = 1 is valid. The range of
    ``bounds`` is always checked on CPU, and on a GPU together with the finiteness checks (it
    costs a sync there).
    """
    tau, mu_t = _threshold_args(x, sink, tau, mu_t, min_frames=1)
    C.tensor("bounds", bounds, 2, "(S, 2)", dtypes=(torch.int64, torch.int32))
    if bounds.shape[1] != 2:
        raise ValueError(f"bounds must have shape (S, 2), got {tuple(bounds.shape)}")
    C.same_device(x=x, bounds=bounds)
    host = bounds.device.type == "cpu"
    if (host or C.finite_checks_enabled()) and not C._compiling() and bounds.numel():
        T = x.shape[0]  # on a GPU one sync, like the finiteness checks
        b, e = bounds[:, 0], bounds[:, 1]
        if not bool(((b >= 0) & (b <= e) & (e < T)).all()):
            raise ValueError(f"bounds rows must satisfy 0 <= b <= e < T = {T}, got {bounds.tolist()}")
    return get("segment_static_mask", backend, x.device)(x, sink, bounds.long(), tau, mu_t)


def merge_tokens(x: torch.Tensor, members: torch.Tensor, weights: torch.Tensor,
                 offsets: torch.Tensor, *, out_dtype: torch.dtype | None = None,
                 backend: str = "auto") -> torch.Tensor:
    """Weighted token merging: each output row a weighted sum of rows of ``x``, in one pass.

    x (B, n, D), rows addressed as b·n + j; members (E,) int64 row indices; weights (E,) float;
    offsets (M+1,) int64 CSR bounds (0, nondecreasing, E). Returns (M, D) in ``out_dtype``
    (x's dtype by default): out[m] = Σ weights[e] · row(members[e]) for e in
    [offsets[m], offsets[m+1]), accumulated in fp32 (float64 in the reference). A segment mean,
    a copy, VisionZip's target + mean(members) and HoliTom's β-weighted cluster merge are all
    this. The ranges of ``members`` and ``offsets`` are checked on CPU, and on a GPU together
    with the finiteness checks (one sync).
    """
    C.tensor("x", x, 3, "(B, n, D)")
    C.tensor("members", members, 1, "(E,)", dtypes=(torch.int64,))
    C.tensor("weights", weights, 1, "(E,)")
    C.tensor("offsets", offsets, 1, "(M+1,)", dtypes=(torch.int64,))
    if weights.shape[0] != members.shape[0]:
        raise ValueError(f"weights must have shape (E,) = ({members.shape[0]},) like members, "
                         f"got {tuple(weights.shape)}")
    if offsets.shape[0] < 1:
        raise ValueError("offsets must have shape (M+1,) with at least one entry (0), got shape (0,)")
    if out_dtype is not None and out_dtype not in C.FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of float32, float16, bfloat16 or None, got {out_dtype}")
    C.same_device(x=x, members=members, weights=weights, offsets=offsets)
    C.finite(x=x, weights=weights if weights.numel() else None)
    if (offsets.device.type == "cpu" or C.finite_checks_enabled()) and not C._compiling():
        E, rows = members.shape[0], x.shape[0] * x.shape[1]
        ends = torch.stack([offsets[0], offsets[-1] - E, (offsets.diff() < 0).sum(),
                            ((members < 0) | (members >= rows)).sum()]).tolist()
        if ends != [0, 0, 0, 0]:
            raise ValueError(f"offsets must run from 0 to E = {E} without decreasing and members "
                             f"must index the B·n = {rows} rows of x; got offsets[0] = {ends[0]}, "
                             f"offsets[-1] − E = {ends[1]}, {ends[2]} decreasing step(s), "
                             f"{ends[3]} member(s) out of range")
    return get("merge_tokens", backend, x.device)(x, members, weights, offsets, out_dtype)


GRAM_MODES = ("dot", "distance", "unit_keys")


def frame_gram(x: torch.Tensor, keys: torch.Tensor | None = None, *, mode: str = "dot",
               backend: str = "auto") -> torch.Tensor:
    """Per-frame Gram matrices, squared distances or unit-key dots in one pass over x.

    x (T, N, D) → (T, N, K) float32 of every token x[t, i] against key rows: keys (T, K)
    int64 lists flat rows t'·N + i' anywhere in the video (negative: padding), None means the
    frame's own N rows. ``mode``: "dot" ⟨x, row⟩; "distance" ‖x − row‖² (exactly 0 for a row
    against itself; computed so that a component shared by the tokens does not cancel
    digits); "unit_keys" ⟨x, row⟩ / ‖row‖ (the cosine up to the query's own norm, ranked by
    an argmax over keys). Padding gives 0, or −inf for "unit_keys". Accumulated in fp32
    (float64 in the reference). Keys are range-checked on CPU, and on a GPU together with the
    finiteness checks (one sync).
    """
    _features("x", x)
    if mode not in GRAM_MODES:
        raise ValueError(f"mode must be one of {GRAM_MODES}, got {mode!r}")
    if keys is not None:
        C.tensor("keys", keys, 2, "(T, K)", dtypes=(torch.int64,))
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"keys must have shape (T, K) with T = {x.shape[0]} from x, got "
                             f"{tuple(keys.shape)}")
        C.same_device(x=x, keys=keys)
        if (keys.device.type == "cpu" or C.finite_checks_enabled()) and not C._compiling() \
                and keys.numel():
            rows = x.shape[0] * x.shape[1]
            if bool((keys >= rows).any()):
                raise ValueError(f"keys must be flat rows t·N + i below T·N = {rows} (or negative "
                                 f"for padding), got a maximum of {int(keys.max())}")
    C.finite(x=x)
    return get("frame_gram", backend, x.device)(x, keys, mode)


def knn_density(d2: torch.Tensor, members: torch.Tensor, k: int, *, scale: float = 1.0,
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Density peaks (SPEC §8) of token sets from their squared distances.

    d2 (B, R, R) float32 squared distances (e.g. :func:`frame_gram` with ``mode="distance"``);
    members (B, n) int64 indices into d2's rows/columns of each set's tokens, −1 for padding;
    k ≥ 1 neighbours (self included). Returns (ρ, δ) (B, n) float32: ρ = exp(−scale·mean of
    the k smallest squared distances), δ = √(scale·squared distance to the nearest denser
    member) (denser: larger ρ, or equal ρ and a lower position in the set), or of the set's
    largest one if none; 0 on padding. Every set must have at least k members.
    """
    C.tensor("d2", d2, 3, "(B, R, R)", dtypes=(torch.float32,))
    C.tensor("members", members, 2, "(B, n)", dtypes=(torch.int64,))
    if d2.shape[1] != d2.shape[2] or members.shape[0] != d2.shape[0]:
        raise ValueError(f"d2 must be (B, R, R) and members (B, n) with the same B, got d2 "
                         f"{tuple(d2.shape)} and members {tuple(members.shape)}")
    k = C.integer("k", k, 1, max(1, members.shape[1]))
    scale = C.number("scale", scale, positive=True)
    C.same_device(d2=d2, members=members)
    if (members.device.type == "cpu" or C.finite_checks_enabled()) and not C._compiling() \
            and members.numel():
        R, size = d2.shape[1], (members >= 0).sum(dim=1)
        bad = torch.stack([(members >= R).sum(), (size < k).sum()]).tolist()
        if bad != [0, 0]:
            raise ValueError(f"members must index the R = {R} rows of d2 and every set must have "
                             f"at least k = {k} members; got {bad[0]} index(es) out of range and "
                             f"{bad[1]} set(s) smaller than k")
    C.finite(d2=d2)
    return get("knn_density", backend, d2.device)(d2, members, k, scale)
