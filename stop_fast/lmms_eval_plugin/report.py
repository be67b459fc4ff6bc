"""``stop-fast report``: lmms-eval result folders of ``--model stop_fast`` runs → a Markdown table
and a plot of accuracy against retention, one line per method (lmms-eval is not needed).

Each ``*_results.json`` below the folders is one run. A row is one (run, task): the checkpoint,
the method (``+SToP`` when the sink terms were on; options given in ``--model_args`` in
parentheses), the asked ``retention_ratio``, the *measured* share of visual tokens the LLM
received (mean after / mean before, from the run's ``throughput`` section), the mean visual
tokens, scoring + selection time and prefill time per request, and the task's score. The
task's first metric is used unless ``--metric`` names another.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import KEY_PREFIX, MODEL_ID

__all__ = ["ReportError", "Row", "collect", "markdown", "figure", "write", "run_report"]

_SETTINGS = ("pretrained", "method", "retention_ratio", "use_stop", "frames", "device", "dtype",
             "max_new_tokens", "global_head", "batch_size")


class ReportError(ValueError):
    """Nothing to report, or a results file that is not a stop_fast run (one line)."""


@dataclass(frozen=True)
class Row:
    checkpoint: str
    label: str               # "visionzip+SToP (mu_s=0)", "holitom", "unpruned"
    method: str
    retention_ratio: float | None
    task: str
    metric: str
    score: float
    kept: float              # visual tokens after / before, measured
    tokens_before: float
    tokens_after: float
    prune_ms: float | None
    prefill_ms: float | None
    source: Path


def _value(text: str):
    """lmms-eval's reading of a ``--model_args`` value (bool, int, float, else str)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.isnumeric():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _model_args(config: dict) -> dict:
    args = config.get("model_args") or ""
    if isinstance(args, dict):
        return dict(args)
    return {k.strip(): _value(v.strip()) for k, _, v in (p.partition("=") for p in args.split(",") if "=" in p)}


def _label(args: dict) -> str:
    method = args.get("method")
    if method == "none":
        return "unpruned"
    from ..pipelines.entry import make_options

    options = {k: v for k, v in args.items() if k not in _SETTINGS}
    opts = make_options(method, args.get("retention_ratio", 0.1), use_stop=args.get("use_stop"), **options)
    given = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{method}{'+SToP' if opts.use_stop else ''}{f' ({given})' if given else ''}"


def _score(task: str, values: dict, configs: dict, metric: str | None) -> tuple[str, float]:
    names = [metric] if metric else [m["metric"] for m in configs.get(task, {}).get("metric_list", [])]
    names = names or sorted({k.split(",")[0] for k in values if "," in k and "_stderr" not in k})
    for name in names:
        for key, value in sorted(values.items()):
            if key.split(",")[0] == name and isinstance(value, (int, float)) and not isinstance(value, bool):
                return name, float(value)
    raise ReportError(f"task {task} has no score named {names} (its results: {sorted(values)})")


def _rows(path: Path, metric: str | None) -> list[Row]:
    data = json.loads(path.read_text(encoding="utf-8"))
    config = data.get("config", {})
    if config.get("model") != MODEL_ID:
        raise ReportError(f"{path}: a run of --model {config.get('model')!r}, not {MODEL_ID}")
    args = _model_args(config)
    label = _label(args)
    checkpoint = Path(str(args.get("pretrained", "?"))).name
    throughput = data.get("throughput", {})
    rows = []
    for task, values in sorted(data.get("results", {}).items()):
        def mean(field):
            return throughput.get(f"avg_{KEY_PREFIX}/{task}/{field}")
        before, after = mean("visual_tokens_before"), mean("visual_tokens_after")
        if before is None or after is None:
            continue      # a group's summary row, not a task this model ran
        name, score = _score(task, values, data.get("configs", {}), metric)
        rows.append(Row(checkpoint, label, args.get("method"), args.get("retention_ratio"), task, name, score,
                        after / before, before, after, mean("prune_ms"), mean("prefill_ms"), path))
    if not rows:
        raise ReportError(f"{path}: no task with the visual token counts of a stop_fast run")
    return rows


def collect(folders, metric: str | None = None) -> list[Row]:
    """Every row of every ``*_results.json`` under ``folders`` (files may be given directly)."""
    files = []
    for folder in folders:
        p = Path(folder)
        if not p.exists():
            raise ReportError(f"{folder}: no such file or folder")
        files += [p] if p.is_file() else sorted(p.rglob("*_results.json"))
    if not files:
        raise ReportError(f"no *_results.json under {', '.join(map(str, folders))} (did the lmms-eval run finish? "
                          "its CLI exits 0 even when the evaluation crashed)")
    rows = [row for f in files for row in _rows(f, metric)]
    return sorted(rows, key=lambda r: (r.checkpoint, r.task, r.label, -r.kept))


def _ms(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(rows: list[Row]) -> str:
    head = ("| checkpoint | task | method | retention_ratio | kept (measured) | visual tokens | scoring + selection ms "
            "| prefill ms | score |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "—" if r.method == "none" else f"{r.retention_ratio:g}"
        lines.append(f"| {r.checkpoint} | {r.task} | {r.label} | {ratio} | {100 * r.kept:.1f}% | "
                     f"{r.tokens_after:.1f} / {r.tokens_before:.1f} | {_ms(r.prune_ms)} | {_ms(r.prefill_ms)} | "
                     f"{r.metric} {r.score:.4f} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[Row]):
    """One panel per task: score against measured kept share, a line per (checkpoint, method);
    unpruned runs as dashed horizontal lines."""
    from matplotlib.figure import Figure      # the Agg canvas; pyplot untouched

    tasks = sorted({r.task for r in rows})
    fig = Figure(figsize=(4.2 * len(tasks) + 0.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        here = [r for r in rows if r.task == task]
        for key in sorted({(r.checkpoint, r.label) for r in here}):
            line = sorted((r for r in here if (r.checkpoint, r.label) == key), key=lambda r: r.kept)
            name = key[1] if len({r.checkpoint for r in rows}) == 1 else f"{key[0]}: {key[1]}"
            if line[0].method == "none":
                ax.axhline(line[0].score, linestyle="--", color="0.4", label=name)
            else:
                ax.plot([100 * r.kept for r in line], [r.score for r in line], marker="o", label=name)
        ax.set(title=task, xlabel="visual tokens kept (measured, %)", ylabel=here[0].metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def write(rows: list[Row], out_dir) -> list[Path]:
    """``report.md`` and ``accuracy_vs_retention.png`` in ``out_dir``."""
    from .. import viz

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(markdown(rows), encoding="utf-8")
    return [md, *viz.save({"accuracy_vs_retention": figure(rows)}, out)]


def run_report(args) -> int:
    """The ``report`` command (``args``: the parsed options of :mod:`stop_fast.cli`)."""
    import sys

    rows = collect(args.results, args.metric)
    first = Path(args.results[0])
    paths = write(rows, args.out or (first if first.is_dir() else first.parent))
    print(markdown(rows), end="")
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return 0
