"""Turn suite results into results.json, results.md, PNG plots and a rich table."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .env import slug
from .record import OURS, Case, SuiteResult


def _fmt_ms(r: dict | None) -> str:
    if not r:
        return "—"
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"{r['median_ms']:.3f}" if r["median_ms"] < 100 else f"{r['median_ms']:.1f}"


def _cell(case: Case, impl: str) -> str:
    r = case.results.get(impl)
    text = _fmt_ms(r)
    sp = case.speedup().get(impl) if impl != OURS else None
    text = f"{text} (×{sp:.2f})" if sp is not None else text
    mem = (r or {}).get("peak_mem_mib")
    return f"{text}, {mem:.0f} MiB" if mem is not None else text   # peak memory: CUDA only


def _impls(suite: SuiteResult) -> list[str]:
    seen: list[str] = [OURS]
    for c in suite.cases:
        seen += [i for i in c.results if i not in seen]
    return seen


def sections(suite: SuiteResult) -> list[SuiteResult]:
    """Cases split by their set of implementations: one table each (kernels has two)."""
    parts: dict[tuple, SuiteResult] = {}
    for c in suite.cases:
        parts.setdefault(tuple(c.results), SuiteResult(suite.name)).cases.append(c)
    return list(parts.values())


def rows(suite: SuiteResult) -> tuple[list[str], list[list[str]]]:
    impls = _impls(suite)
    header = ["group", "case"] + [f"{i} ms" + (" (speedup)" if i != OURS else "") for i in impls]
    if any(r.get("peak_mem_mib") is not None for c in suite.cases for r in c.results.values()):
        header[2:] = [h + ", peak memory" for h in header[2:]]
    body = [[c.group, c.name] + [_cell(c, i) for i in impls] for c in suite.cases]
    return header, body


DETAILS = (("median_ms", "TTFT ms", "{:.1f}"), ("vit_ms", "ViT ms", "{:.1f}"),
           ("decode_tok_s", "decode tok/s", "{:.1f}"), ("visual_tokens", "visual tokens", "{}"),
           ("peak_mem_mib", "peak MiB", "{:.0f}"))


def detail_rows(suite: SuiteResult) -> tuple[list[str], list[list[str]]] | None:
    """Per-implementation extras (e2e: ViT time, decode speed, token count), or None."""
    if not any("vit_ms" in r for c in suite.cases for r in c.results.values()):
        return None
    header = ["group", "case", "impl"] + [label for _, label, _ in DETAILS]
    body = []
    for c in suite.cases:
        for impl, r in c.results.items():
            if r.get("status") != "ok":
                body.append([c.group, c.name, impl, r.get("status", "?")] + [""] * (len(DETAILS) - 1))
                continue
            body.append([c.group, c.name, impl] + [fmt.format(r[k]) if r.get(k) is not None else "—"
                                                   for k, _, fmt in DETAILS])
    return header, body


def unmeasured(suite: SuiteResult) -> list[str]:
    """One line per distinct reason an implementation has no timing."""
    seen: dict[str, list[str]] = {}
    for c in suite.cases:
        for impl, r in c.results.items():
            if r.get("status") != "ok":
                seen.setdefault(f"{impl}: {r.get('status')} ({r.get('reason')})", []).append(f"{c.group} {c.name}")
    return [f"{k} — {len(v)} case(s), e.g. {v[0]}" for k, v in seen.items()]


def _tables(suite: SuiteResult):
    if suite.tables:
        yield from ((title, (header, body)) for title, header, body in suite.tables)
        return
    for part in sections(suite):
        yield "median ms; speedup = baseline / ours", rows(part)
    detail = detail_rows(suite)
    if detail:
        yield "per implementation", detail


SMOKE = "smoke — timings meaningless"


def print_tables(suites: dict[str, SuiteResult], console, smoke: bool = False) -> None:
    from rich.table import Table

    for name, s in suites.items():
        if s.status != "ok":
            console.print(f"[bold]{name}[/bold]: {s.status} — {s.reason}")
            continue
        for title, (header, body) in _tables(s):
            table = Table(title=f"{name} ({title})" + (f" [bold red]{SMOKE}[/]" if smoke else ""))
            for h in header:
                table.add_column(h)
            for r in body:
                table.add_row(*r)
            console.print(table)
        for note in s.notes:
            console.print(f"  note: {note}")


def markdown(meta: dict, suites: dict[str, SuiteResult]) -> str:
    lines = [f"# stop_fast benchmark — {meta['device_name']}", "",
             f"{meta['date']} · torch {meta['torch']} · triton {meta['triton']} · "
             f"transformers {meta['transformers']} · flash-colreduce {meta['flash_colreduce']}"
             + (" · **smoke run (tiny shapes, timings meaningless)**" if meta["smoke"] else ""),
             "", "Median milliseconds; in parentheses the speedup of `ours` against that "
             "baseline (baseline median / ours median, > 1 means ours is faster).", ""]
    for name, s in suites.items():
        lines += [f"## {name}", ""]
        if s.status != "ok":
            lines += [f"*{s.status}*: {s.reason}", ""]
            continue
        for _, (header, body) in _tables(s):
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(r) + " |" for r in body] + [""]
        notes = s.notes + [f"not measured: {u}" for u in unmeasured(s)]
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(lines) + "\n"


def plots(suites: dict[str, SuiteResult], out: Path, smoke: bool = False) -> list[Path]:
    """One PNG per (suite, group): median latency vs frames, one line per implementation.
    A smoke run's plots say in the title and across the axes that the timings mean nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, s in suites.items():
        if not s.plot:
            continue
        groups: dict[str, list[Case]] = {}
        for c in s.cases:
            groups.setdefault(c.group, []).append(c)
        for group, cases in groups.items():
            fig, ax = plt.subplots(figsize=(6, 4))
            drawn = False
            for impl in _impls(SuiteResult(name, cases=cases)):
                pts = sorted((c.x, c.results[impl]["median_ms"]) for c in cases
                             if c.results.get(impl, {}).get("status") == "ok")
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o", lw=2.5 if impl == OURS else 1.5, label=impl)
                    drawn = True
            if not drawn:
                ax.text(0.5, 0.5, "no successful measurement", ha="center", transform=ax.transAxes)
            else:
                ax.set_yscale("log")
                ax.legend(fontsize=8)
            xs_all = sorted({c.x for c in cases})
            if xs_all[-1] >= 4 * xs_all[0]:
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all, [str(x) for x in xs_all])
            ax.set_xlabel("frames")
            ax.set_ylabel("median TTFT (ms)" if name == "e2e" else "median latency (ms)")
            ax.set_title(f"{name}: {group}" + (f"\n{SMOKE}" if smoke else ""), fontsize=9,
                         color="red" if smoke else "black")
            if smoke:   # tiny shapes on whatever machine: nobody should read these numbers
                ax.text(0.5, 0.5, SMOKE, transform=ax.transAxes, ha="center", va="center", rotation=20,
                        fontsize=16, color="red", alpha=0.35)
            ax.grid(True, which="both", alpha=0.3)
            fig.tight_layout()
            path = out / f"{name}_{slug(group)}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


def _clean(obj):
    """JSON cannot hold NaN/Inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_all(out: Path, meta: dict, suites: dict[str, SuiteResult]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "suites": {n: s.as_dict() for n, s in suites.items()}}
    (out / "results.json").write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n",
                                      encoding="utf-8")
    (out / "results.md").write_text(markdown(meta, suites), encoding="utf-8")
    pngs = plots(suites, out, smoke=bool(meta.get("smoke")))
    return {"json": out / "results.json", "md": out / "results.md", "png": pngs}
