"""Pictures of what SToP does to a video: sink scores, kept tokens, attention, segments.

:func:`figures` returns matplotlib ``Figure`` objects (no pyplot state, Agg canvas), so a
notebook can show them; :func:`save` writes them as PNGs atomically. Inputs are *records*:
anything with ``.pruned`` (:class:`~stop_fast.pipelines.PrunedVideo`), ``.attention``
((T, N) per-frame score or None) and ``.grid`` ((h, w) with h·w = N), e.g. what
``stop_fast.integrations.last_pruned(model)`` returns, or :class:`Record`.

Every pruning row t is drawn over ``frames[t]`` ((T, H, W, 3) uint8); the token grid is
stretched over the whole frame, as the models' resize stretches the frame over the grid.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Record", "sink_heatmap", "kept_tokens", "attention_maps", "segment_layout", "figures", "save"]

KIND_COLORS = ("#1f77b4", "#17becf", "#7f7f7f", "#ff7f0e", "#d62728", "#9467bd", "#2ca02c", "#8c564b")


@dataclass
class Record:
    """One pruned video: ``pruned`` (PrunedVideo), ``attention`` (T, N) or None, ``grid`` (h, w)."""

    pruned: object
    attention: torch.Tensor | None
    grid: tuple[int, int]


def _figure(rows: int, cols: int, size: float = 3.0, heights: list[float] | None = None):
    from matplotlib.figure import Figure   # the Agg canvas; pyplot (and its GUI backends) untouched
    tall = sum(heights) / max(heights) if heights else rows
    fig = Figure(figsize=(size * cols + 0.6, size * tall + 0.5), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, gridspec_kw={"height_ratios": heights} if heights else None)


def _canvas(frames: np.ndarray | None, t: int, grid: tuple[int, int]) -> np.ndarray:
    """Frame t, or a light grey canvas of the grid's aspect when there are no pixels."""
    if frames is not None:
        return frames[min(t, len(frames) - 1)]
    return np.full((grid[0] * 16, grid[1] * 16, 3), 225, np.uint8)


def _show(ax, image: np.ndarray) -> tuple[int, int]:
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    return h, w


def _overlay(ax, values: np.ndarray, grid, hw, vmin=None, vmax=None, cmap="magma"):
    h, w = hw
    return ax.imshow(values.reshape(grid), extent=(0, w, h, 0), alpha=0.6, cmap=cmap, vmin=vmin, vmax=vmax,
                     interpolation="nearest")


def sink_heatmap(frames: np.ndarray | None, record, title: str = ""):
    """The sink score (N,) over the pooled grid, on top of the first frame."""
    sink = record.pruned.sink.float().cpu().numpy()
    fig, ax = _figure(1, 1, 4.0)
    ax = ax[0, 0]
    hw = _show(ax, _canvas(frames, 0, record.grid))
    im = _overlay(ax, sink, record.grid, hw, 0.0, max(1.0, float(sink.max())))
    fig.colorbar(im, ax=ax, shrink=0.8, label="sink score (1 = attended at the same place in every frame)")
    ax.set_title(title or f"sink score on the {record.grid[0]}×{record.grid[1]} token grid", fontsize=9)
    return fig


def _frame_rows(T: int, count: int) -> list[int]:
    return sorted({round(i * (T - 1) / max(1, count - 1)) for i in range(min(count, T))})


def kept_tokens(frames: np.ndarray | None, records: dict, rows: list[int] | None = None):
    """Kept tokens outlined and coloured by kind, one row per frame, one column per record
    (``{"HoliTom": rec, "HoliTom + SToP": rec}``). A merged token is drawn on the frame it is
    attributed to (its segment's first frame) at its centre / target location."""
    from matplotlib.patches import Patch, Rectangle

    from .pipelines import KIND_NAMES
    recs = {k: r for k, r in records.items() if r is not None}
    first = next(iter(recs.values()))
    T = int(first.attention.shape[0]) if first.attention is not None else int(first.pruned.positions[:, 0].max()) + 1
    rows = rows if rows is not None else _frame_rows(T, 3)
    fig, axes = _figure(len(rows), len(recs))
    seen = set()
    for j, (label, rec) in enumerate(recs.items()):
        pos = rec.pruned.positions.cpu().numpy()
        kinds = rec.pruned.kinds.cpu().numpy()
        gh, gw = rec.grid
        for i, t in enumerate(rows):
            ax = axes[i, j]
            h, w = _show(ax, _canvas(frames, t, rec.grid))
            ch, cw = h / gh, w / gw
            here = pos[:, 0] == t
            for loc, kind in zip(pos[here, 1], kinds[here]):
                r, c = divmod(int(loc), gw)
                ax.add_patch(Rectangle((c * cw, r * ch), cw, ch, fill=True, facecolor=KIND_COLORS[kind] + "40",
                                       edgecolor=KIND_COLORS[kind], linewidth=1.5))
                seen.add(int(kind))
            ax.set_title(f"{label}: sampled frame {t}, {int(here.sum())} tokens", fontsize=8)
    fig.legend(handles=[Patch(facecolor=KIND_COLORS[k] + "40", edgecolor=KIND_COLORS[k], label=KIND_NAMES[k])
                        for k in sorted(seen)], loc="outside lower center", ncols=max(1, len(seen)), fontsize=8)
    fig.suptitle(f"kept tokens by kind ({len(recs[label].pruned.positions)} in total for {label})"
                 if len(recs) == 1 else "kept tokens by kind, without and with SToP", fontsize=10)
    return fig


def attention_maps(frames: np.ndarray | None, record, count: int = 4):
    """The per-frame score (what spatial selection ranks) of the first ``count`` frames, one
    colour scale for all."""
    att = record.attention.float().cpu().numpy()
    n = min(count, att.shape[0])
    fig, axes = _figure(1, n)
    vmax = float(att[:n].max()) or 1.0
    for t in range(n):
        hw = _show(axes[0, t], _canvas(frames, t, record.grid))
        im = _overlay(axes[0, t], att[t], record.grid, hw, 0.0, vmax, cmap="viridis")
        axes[0, t].set_title(f"frame {t}", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="attention score")
    fig.suptitle("per-frame attention of the first frames (persistent bright cells are sink candidates)",
                 fontsize=9)
    return fig


def segment_layout(records: dict, T: int):
    """Temporal segments of each record (bars) and its kept tokens per frame, stacked by kind."""
    from .pipelines import KIND_NAMES
    recs = {k: r for k, r in records.items() if r is not None and r.pruned.segments}
    fig, axes = _figure(2, len(recs), 4.0, heights=[1, 4])
    for j, (label, rec) in enumerate(recs.items()):
        top, bottom = axes[0, j], axes[1, j]
        for s, (a, b) in enumerate(rec.pruned.segments):
            top.broken_barh([(a - 0.45, b - a + 0.9)], (0, 1), facecolors="#4c72b0" if s % 2 == 0 else "#dd8452")
            top.text((a + b) / 2, 0.5, str(s), ha="center", va="center", fontsize=7, color="white")
        top.set_xlim(-0.5, T - 0.5)
        top.set_yticks([])
        top.set_title(f"{label}: {len(rec.pruned.segments)} segments", fontsize=9)
        pos, kinds = rec.pruned.positions[:, 0].cpu().numpy(), rec.pruned.kinds.cpu().numpy()
        base = np.zeros(T)
        for k in sorted(set(kinds.tolist())):
            counts = np.bincount(pos[kinds == k], minlength=T)[:T]
            bottom.bar(np.arange(T), counts, bottom=base, color=KIND_COLORS[k], label=KIND_NAMES[k])
            base += counts
        bottom.set_xlim(-0.5, T - 0.5)
        bottom.set_xlabel("frame")
        bottom.set_ylabel("tokens attributed to the frame")
        bottom.legend(fontsize=7)
    fig.suptitle("temporal segments and kept tokens per frame", fontsize=10)
    return fig


def figures(frames: np.ndarray | None, stop=None, plain=None, method: str | None = None,
            rows: list[int] | None = None) -> dict[str, object]:
    """All pictures for one video as ``{file stem: Figure}``: the sink-score heatmap, kept
    tokens with and without SToP, the first frames' attention, and (temporal methods) the
    segment layout. ``stop`` / ``plain``: records of the same video with and without SToP."""
    main = stop if stop is not None else plain
    if main is None:
        raise ValueError("figures needs at least one record (stop or plain)")
    name = method or main.pruned.method
    labels = {f"{name}": plain, f"{name} + SToP": stop}
    out = {}
    if stop is not None:
        out["sink_score_heatmap"] = sink_heatmap(frames, stop)
    out[f"kept_tokens_{name}_without_vs_with_stop" if plain is not None and stop is not None
        else f"kept_tokens_{name}"] = kept_tokens(frames, labels, rows)
    if main.attention is not None:
        out["attention_first_frames"] = attention_maps(frames, main)
    if any(r is not None and r.pruned.segments for r in (stop, plain)):
        T = int(main.attention.shape[0]) if main.attention is not None else int(main.pruned.positions[:, 0].max()) + 1
        out[f"segments_{name}"] = segment_layout(labels, T)
    return out


_UMASK = os.umask(0)
os.umask(_UMASK)


def save(figs: dict, out_dir, prefix: str = "", dpi: int = 110, close: bool = True) -> list[Path]:
    """Write each figure to ``out_dir/<prefix>_<name>.png`` via a temporary file and
    ``os.replace``, so a reader never sees a half-written PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = out_dir / f"{prefix + '_' if prefix else ''}{name}.png"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=out_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, format="png", dpi=dpi)
            os.chmod(tmp, 0o666 & ~_UMASK)        # mkstemp makes it private; a PNG need not be
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
        if close:
            fig.clear()
    return paths
