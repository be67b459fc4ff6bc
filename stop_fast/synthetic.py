"""Seeded synthetic videos with planted sink tokens, for the demo, tests and benchmarks.

A video is a grid of locations per frame with:
- a static background (one feature vector per location plus small per-frame noise, so adjacent
  frames have cosine ≈ 0.99; a scene cut replaces the whole background);
- a few moving objects (2×2 patches bouncing around the grid, each with its own feature
  vector), which draw high attention;
- a few *sink* locations: low-content tokens whose attention stays high at the same place in
  every frame while their features carry mostly noise, so adjacent-frame cosine sits just below
  HoliTom's τ = 0.8 (the sink term of STTP, μ_t = 0.07, pushes them over it).
Attention rows are normalized to sum to one, like a column-averaged softmax.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SyntheticVideo", "make_video"]


@dataclass
class SyntheticVideo:
    features: torch.Tensor        # (T, N, D) projected, pooled tokens
    attention: torch.Tensor       # (T, N) non-negative, each row sums to 1
    metric: torch.Tensor          # (T, N, Dk) head-averaged keys (for VisionZip)
    sink_locations: torch.Tensor  # (n_sink,) int64 planted sink locations
    object_mask: torch.Tensor     # (T, N) bool, tokens covered by a moving object
    sink_mask: torch.Tensor       # (T, N) bool, planted-sink tokens
    grid: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape)


def _with_cosine(base: torch.Tensor, noise: torch.Tensor, cos: float) -> torch.Tensor:
    """Unit vectors whose expected cosine with ``base`` is about ``cos`` (noise ⟂-ish, unit)."""
    base, noise = F.normalize(base, dim=-1), F.normalize(noise, dim=-1)
    return cos * base + (1 - cos ** 2) ** 0.5 * noise


def make_video(num_frames: int = 16, grid: tuple[int, int] = (14, 14), dim: int = 64,
               metric_dim: int = 32, num_objects: int = 3, num_sinks: int = 4,
               scene_cut: int | None = None, sink_cosine: float = 0.88, seed: int = 0,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SyntheticVideo:
    """Build a seeded synthetic video (see the module docstring).

    ``scene_cut`` is the first frame of a new background (None: one scene). ``sink_cosine`` is
    the typical cosine of a sink token with itself in the first frame; adjacent sink tokens
    then have cosine ≈ ``sink_cosine``² (≈ 0.77 by default).
    """
    if num_frames < 1 or num_objects < 0 or num_sinks < 0:
        raise ValueError(f"num_frames must be >= 1 and counts >= 0, got num_frames={num_frames}, "
                         f"num_objects={num_objects}, num_sinks={num_sinks}")
    h, w = grid
    N, T = h * w, num_frames
    if h < 4 or w < 4 or num_sinks > 2 * (h + w) - 4:
        raise ValueError(f"grid must be at least 4x4 with room for num_sinks={num_sinks} sinks on "
                         f"its border, got grid={grid}")
    if scene_cut is not None and not 0 < scene_cut < T:
        raise ValueError(f"scene_cut must be in [1, num_frames - 1] = [1, {T - 1}], got {scene_cut}")
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    # Background: one vector per location per scene, +noise per frame (adjacent cosine ≈ 0.99).
    scenes = 1 if scene_cut is None else 2
    backgrounds = randn(scenes, N, dim)
    scene_of = torch.zeros(T, dtype=torch.long)
    if scene_cut is not None:
        scene_of[scene_cut:] = 1
    feats = _with_cosine(backgrounds[scene_of], randn(T, N, dim), 0.995)
    weight = 0.5 + torch.rand(T, N, generator=g)

    # Sinks: fixed border locations (objects move inside the border, so they never cover one),
    # mostly-noise features, steady high attention.
    rows, cols = torch.arange(N) // w, torch.arange(N) % w
    border = torch.nonzero((rows == 0) | (rows == h - 1) | (cols == 0) | (cols == w - 1)).flatten()
    sinks = border[torch.randperm(border.numel(), generator=g)[:num_sinks]]
    sink_dir = randn(num_sinks, dim)
    feats[:, sinks] = 0.2 * _with_cosine(sink_dir.expand(T, -1, -1), randn(T, num_sinks, dim), sink_cosine)
    weight[:, sinks] = 9.0   # above the objects: sinks steal the budget of plain top-k

    # Objects: 2×2 patches bouncing inside the border; their tokens override the background.
    obj = torch.zeros(T, h, w, dtype=torch.bool)
    lo, hi = torch.tensor([1, 1]), torch.tensor([h - 3, w - 3])   # top-left corner range
    pos = torch.stack([torch.randint(1, h - 2, (num_objects,), generator=g),
                       torch.randint(1, w - 2, (num_objects,), generator=g)], dim=1)
    vel = torch.randint(0, 2, (num_objects, 2), generator=g) * 2 - 1
    obj_dir = randn(num_objects, dim)
    feats = feats.view(T, h, w, dim)
    weight = weight.view(T, h, w)
    for t in range(T):          # a loop over frames and objects: this is data generation
        for o in range(num_objects):
            r, c = pos[o].tolist()
            feats[t, r:r + 2, c:c + 2] = _with_cosine(obj_dir[o].expand(2, 2, -1), randn(2, 2, dim), 0.97)
            weight[t, r:r + 2, c:c + 2] = 8.0
            obj[t, r:r + 2, c:c + 2] = True
            nxt = pos[o] + vel[o]
            vel[o] = torch.where((nxt < lo) | (nxt > hi), -vel[o], vel[o])
            pos[o] = (pos[o] + vel[o]).clamp(lo, hi)   # clamp: a 4-wide grid leaves no room
    feats = feats.reshape(T, N, dim)
    attention = weight.reshape(T, N)
    attention = attention / attention.sum(dim=1, keepdim=True)
    object_mask = obj.reshape(T, N)
    sink_mask = torch.zeros(T, N, dtype=torch.bool)
    sink_mask[:, sinks] = True

    metric = feats @ (randn(dim, metric_dim) / dim ** 0.5)
    return SyntheticVideo(
        features=feats.to(device=device, dtype=dtype),
        attention=attention.to(device=device, dtype=torch.float32),
        metric=metric.to(device=device, dtype=dtype),
        sink_locations=sinks.sort().values.to(device),
        object_mask=object_mask.to(device),
        sink_mask=sink_mask.to(device),
        grid=(h, w),
    )
