"""``stop-fast demo``: SToP on a seeded synthetic video, on every usable backend and method.

Shows what the sink term does (planted sink tokens drop out of the kept set, object tokens
stay) and what each backend and method costs. Runs in seconds on a CPU. Timings are medians
of several calls after warm-up calls (the first call of an op pays for imports, Triton
compilation and allocator growth, which would otherwise land on whichever row runs first).
"""
from __future__ import annotations

import functools
import math
import statistics
import time
import warnings

import torch
from rich.console import Console
from rich.table import Table

import stop_fast as sf
from stop_fast.dispatch import triton_usable
from stop_fast.synthetic import make_video

MU_S = 0.03   # VisionZip's μ_s (SPEC §10); the demo's plain top-k is STSP's host step.
WARMUP, WARMUP_SECONDS, MIN_REPEATS, MIN_SECONDS = 2, 0.3, 7, 0.2


def _medians(fns: list, device: torch.device) -> tuple[list[float], int]:
    """Median ms of each of ``fns`` and the number of timed calls of each. Warm-up calls first
    (one if a call takes over 0.25 s, else ``WARMUP`` calls and more up to ``WARMUP_SECONDS``
    or 30 calls); then rounds that call every fn once, in
    turn, so that load changes on the machine hit every variant alike; at least
    ``MIN_REPEATS`` rounds (3 for slow calls) and ``MIN_SECONDS``, at most 200."""
    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    slow = max(timed(fn) for fn in fns) > 250
    if not slow:   # first calls can stay slow for a dozen calls (allocator, caches): warm up
        for fn in fns:
            done, t_end = 0, time.perf_counter() + WARMUP_SECONDS
            while done < WARMUP or (time.perf_counter() < t_end and done < 30):
                fn()
                done += 1
    times, start = [[] for _ in fns], time.perf_counter()
    rounds = 3 if slow else MIN_REPEATS
    while len(times[0]) < rounds or (time.perf_counter() - start < MIN_SECONDS and len(times[0]) < 200):
        for i, fn in enumerate(fns):
            times[i].append(timed(fn))
    return [statistics.median(t) for t in times], len(times[0])


def _step(attention, k, mu, backend):
    sink = sf.sink_score(attention, backend=backend)
    return sf.penalized_topk(attention, sink, k, mu_s=mu, backend=backend)


def usable_backends(device: torch.device) -> tuple[list[str], str | None]:
    ok, _ = triton_usable(device)
    if ok:
        return ["reference", "torch", "triton"], None
    why = ("the Triton kernels need a CUDA GPU" if device.type == "cpu"
           else "the Triton kernels could not be loaded on this machine")
    return ["reference", "torch"], why


def _methods():
    from stop_fast.pipelines import METHODS
    return METHODS


def run_demo(frames: int = 16, grid: tuple[int, int] = (14, 14), dim: int = 256,
             retention: float = 0.10, device: str | None = None, backends: list[str] | None = None,
             seed: int = 0, vit_tokens: int = 729, console: Console | None = None, viz: str | None = None) -> int:
    console = console or Console()
    if not 0.0 < retention <= 1.0:
        raise ValueError(f"retention must be in (0, 1], got {retention}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA device")
    available, why_not = usable_backends(dev)
    backends = backends or available
    video = make_video(num_frames=frames, grid=grid, dim=dim, seed=seed, device=dev)
    T, N, _ = video.features.shape
    k = max(1, math.ceil(retention * N))
    console.print(f"[bold]stop_fast demo[/]: synthetic video T={T}, N={N} ({grid[0]}x{grid[1]}), "
                  f"D={dim}, {len(video.sink_locations)} planted sinks, {int(video.object_mask.sum())} "
                  f"object tokens; keep {k}/{N} tokens per frame ({retention:.0%}) on {dev}")
    if why_not and "triton" not in backends:
        console.print(f"[dim]triton backend skipped: {why_not}[/]")
    timing = "median ms after warm-up calls, variants timed in turn; n = timed calls each"

    table = Table(title="Sink score + STSP top-k per frame", caption=timing)
    for col in ("backend", "method", "tokens kept", "planted-sink kept", "object kept", "ms / step", "n"):
        table.add_column(col, justify="right" if col not in ("backend", "method") else "left")
    for backend in backends:
        steps = [functools.partial(_step, video.attention, k, mu, backend) for mu in (0.0, MU_S)]
        ms, n = _medians(steps, dev)
        for label, step, t in zip(("plain", "SToP"), steps, ms):
            idx = step()
            table.add_row(backend, label, str(idx.numel()), str(int(video.sink_mask.gather(1, idx).sum())),
                          str(int(video.object_mask.gather(1, idx).sum())), f"{t:.3f}", str(n))
    console.print(table)

    # Score extraction: column-averaged attention from ViT-like q/k (SPEC §2), never materialized
    # by the torch and triton backends.
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, vit_tokens, 4, 72, generator=g).to(dev)   # (B, N, H, d) like a ViT projection
    kk = torch.randn(T, vit_tokens, 4, 72, generator=g).to(dev)
    scores = Table(title=f"column_mean_attention, B={T} frames, H=4, N={vit_tokens}, d=72 (layout bnhd)",
                   caption=timing)
    for col in ("backend", "ms / call", "n", "max |Δ| vs reference"):
        scores.add_column(col, justify="left" if col == "backend" else "right")
    ref = sf.column_mean_attention(q, kk, layout="bnhd", backend="reference")
    for backend in backends:
        out = sf.column_mean_attention(q, kk, layout="bnhd", backend=backend)
        (ms,), n = _medians([lambda: sf.column_mean_attention(q, kk, layout="bnhd", backend=backend)], dev)
        scores.add_row(backend, f"{ms:.2f}", str(n), f"{(out - ref).abs().max().item():.2e}")
    console.print(scores)

    results = _pipelines(video, retention, dev, console, timing)
    if viz:
        _write_figures(video, results, viz, console)
    return 0


def _pipelines(video, retention, dev, console, timing) -> dict:
    """Every registered method with and without SToP; a method whose code fails to import is
    skipped with a note. Returns {(method, use_stop): PrunedVideo}."""
    pipes = Table(title=f"Pipelines at {retention:.0%} retention (backend auto)", caption=timing)
    for col in ("method", "SToP", "tokens kept", "planted-sink kept", "object kept", "ms / video", "n"):
        pipes.add_column(col, justify="left" if col in ("method", "SToP") else "right")
    notes, results = [], {}
    for name, spec in _methods().items():
        variants = (False, True) if spec.uses_attention else (False,)
        runs = [functools.partial(sf.prune, video.features, video.attention if spec.uses_attention else None,
                                  method=name, retention_ratio=retention, use_stop=use_stop,
                                  metric=video.metric if spec.needs_metric else None) for use_stop in variants]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outs = [run() for run in runs]
            except ImportError as exc:   # a method still being written, or a missing optional dependency
                notes.append(f"{name}: skipped, its code does not import ({exc})")
                continue
            ms, n = _medians(runs, dev)
        notes += sorted({m if m.startswith(name) else f"{name}: {m}" for m in map(str, (w.message for w in caught))})
        for use_stop, out, t in zip(variants, outs, ms):
            f, loc = out.positions[:, 0], out.positions[:, 1]
            results[(name, use_stop)] = out
            pipes.add_row(name, "yes" if use_stop else "no", str(out.tokens.shape[0]),
                          str(int(video.sink_mask[f, loc].sum())), str(int(video.object_mask[f, loc].sum())),
                          f"{t:.2f}", str(n))
        if not spec.uses_attention:
            notes.append(f"{name}: uses no attention, so SToP does not apply (one row)")
    console.print(pipes)
    for note in notes:
        console.print(f"[dim]note: {note}[/]")
    return results


def _write_figures(video, results: dict, out_dir: str, console: Console) -> None:
    from stop_fast import viz
    # A synthetic frame: mid grey, the moving objects bright (the planted sinks are not drawn:
    # the sink-score heatmap should find them on its own).
    h, w = video.grid
    obj = video.object_mask.view(-1, h, w).cpu().float().numpy()
    frames = (110 + 130 * obj).astype("uint8").repeat(16, 1).repeat(16, 2)[..., None].repeat(3, -1)
    written = []
    for method in dict.fromkeys(m for m, _ in results):       # every method run with SToP
        if (method, True) not in results or (method, False) not in results:
            continue
        rec = {s: viz.Record(results[(method, s)], video.attention, video.grid) for s in (False, True)}
        written += viz.save(viz.figures(frames, stop=rec[True], plain=rec[False], method=method), out_dir,
                            prefix=f"demo_{method}")
    console.print(f"wrote {len(written)} figures to {out_dir}")
