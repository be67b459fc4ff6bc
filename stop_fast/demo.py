"""``stop-fast demo``: SToP on a seeded synthetic video, on every usable backend.

Shows what the sink term does (planted sink tokens drop out of the kept set, object tokens
stay) and what each backend costs per step. Runs in seconds on a CPU.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

import stop_fast as sf
from stop_fast.dispatch import triton_usable
from stop_fast.synthetic import make_video

MU_S = 0.03   # VisionZip's μ_s (SPEC §10); the demo's plain top-k is STSP's host step.


def _median_ms(fn, device: torch.device, repeats: int = 5) -> float:
    fn()  # warm-up (Triton compiles here)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def usable_backends(device: torch.device) -> tuple[list[str], str | None]:
    ok, why = triton_usable(device)
    return (["reference", "torch", "triton"] if ok else ["reference", "torch"]), (None if ok else why)


def run_demo(frames: int = 16, grid: tuple[int, int] = (14, 14), dim: int = 256,
             retention: float = 0.10, device: str | None = None, backends: list[str] | None = None,
             seed: int = 0, vit_tokens: int = 729, console: Console | None = None) -> int:
    console = console or Console()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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

    table = Table(title="Sink score + STSP top-k per frame")
    for col in ("backend", "method", "tokens kept", "planted-sink kept", "object kept", "ms / step"):
        table.add_column(col, justify="right" if col not in ("backend", "method") else "left")
    for backend in backends:
        for label, mu in (("plain", 0.0), ("SToP", MU_S)):
            def step():
                sink = sf.sink_score(video.attention, backend=backend)
                return sf.penalized_topk(video.attention, sink, k, mu_s=mu, backend=backend)
            idx = step()
            ms = _median_ms(step, dev)
            table.add_row(backend, label, str(idx.numel()),
                          str(int(video.sink_mask.gather(1, idx).sum())),
                          str(int(video.object_mask.gather(1, idx).sum())), f"{ms:.3f}")
    console.print(table)

    # Score extraction: column-averaged attention from ViT-like q/k (SPEC §2), never materialized
    # by the torch and triton backends.
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, vit_tokens, 4, 72, generator=g).to(dev)   # (B, N, H, d) like a ViT projection
    kk = torch.randn(T, vit_tokens, 4, 72, generator=g).to(dev)
    scores = Table(title=f"column_mean_attention, B={T} frames, H=4, N={vit_tokens}, d=72 (layout bnhd)")
    scores.add_column("backend")
    scores.add_column("ms / call", justify="right")
    scores.add_column("max |Δ| vs reference", justify="right")
    ref = sf.column_mean_attention(q, kk, layout="bnhd", backend="reference")
    for backend in backends:
        out = sf.column_mean_attention(q, kk, layout="bnhd", backend=backend)
        ms = _median_ms(lambda: sf.column_mean_attention(q, kk, layout="bnhd", backend=backend), dev, 3)
        scores.add_row(backend, f"{ms:.2f}", f"{(out - ref).abs().max().item():.2e}")
    console.print(scores)

    # The two host methods of the paper's ablation, each with and without SToP (SPEC §6, §7).
    pipes = Table(title=f"Pipelines at {retention:.0%} retention (backend auto)")
    for col in ("method", "SToP", "tokens kept", "planted-sink kept", "object kept", "ms / video"):
        pipes.add_column(col, justify="left" if col in ("method", "SToP") else "right")
    for method in ("visionzip", "holitom"):
        for use_stop in (False, True):
            def run():
                return sf.prune(video.features, video.attention, method=method, retention_ratio=retention,
                                use_stop=use_stop, metric=video.metric if method == "visionzip" else None)
            out = run()
            ms = _median_ms(run, dev, 3)
            t, loc = out.positions[:, 0], out.positions[:, 1]
            pipes.add_row(method, "yes" if use_stop else "no", str(out.tokens.shape[0]),
                          str(int(video.sink_mask[t, loc].sum())),
                          str(int(video.object_mask[t, loc].sum())), f"{ms:.2f}")
    console.print(pipes)
    return 0
