"""``python -m lmms_eval eval --model stop_fast`` in subprocesses (offline task through
``--include_path``, tiny checkpoints), and ``stop-fast report`` on what the runs wrote."""
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import lmms_clips as C

pytest.importorskip("lmms_eval", reason="lmms-eval is installed by `make test` (pip install --no-deps lmms-eval)")

from stop_fast import cli  # noqa: E402
from stop_fast.lmms_eval_plugin.compat import results_files  # noqa: E402

RUNS = {   # name → (model_args, tasks, extra CLI flags)
    "holitom": ("pretrained={root}/llava,method=holitom,retention_ratio=0.25,frames=8", [C.GEN, C.MC],
                ["--force_simple"]),
    "qwen": ("pretrained={root}/qwen,method=fastvid,retention_ratio=0.5,frames=4", [C.GEN], []),
}


def _command(root: Path, name: str) -> list[str]:
    args, tasks, extra = RUNS[name]
    return [sys.executable, "-m", "lmms_eval", "eval", "--model", "stop_fast", "--model_args",
            args.format(root=root), "--tasks", ",".join(tasks), "--include_path", str(C.TASKS), "--batch_size", "1",
            "--device", "cpu", "--output_path", str(root / "out" / name), "--log_samples", *extra]


def _unpruned(root: Path) -> None:
    """A method=none run through simple_evaluate, saved by lmms-eval's own tracker like the CLI."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    tracker = EvaluationTracker(output_path=str(root / "out" / "none"))
    results = simple_evaluate(model="stop_fast", model_args=f"pretrained={root}/llava,method=none,frames=8",
                              tasks=[C.GEN, C.MC], batch_size=1, log_samples=False, bootstrap_iters=0,
                              task_manager=TaskManager("WARNING", include_path=str(C.TASKS), include_defaults=False),
                              evaluation_tracker=tracker, verbosity="WARNING", force_simple=True)
    tracker.save_results_aggregated(results=results, samples=None, datetime_str="unpruned")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two CLI runs side by side with the unpruned one in this process (most of the time is
    importing lmms-eval and indexing its built-in tasks, one core each)."""
    root = C.write_clips(tmp_path_factory.mktemp("lmms"))
    env = {**os.environ, **C.offline_env(root), "COLUMNS": "200"}
    logs = {name: open(root / f"{name}.log", "w+") for name in RUNS}
    procs = {name: subprocess.Popen(_command(root, name), cwd=root, env=env, stdout=logs[name],
                                    stderr=subprocess.STDOUT) for name in RUNS}
    here = os.getcwd()
    try:
        with mock.patch.dict(os.environ, C.offline_env(root)):
            os.chdir(root)
            _unpruned(root)
    finally:
        os.chdir(here)
        done = {}
        for name, proc in procs.items():
            rc = proc.wait(timeout=600)
            logs[name].seek(0)
            done[name] = (logs[name].read(), rc)
            logs[name].close()
    return root, done


def test_cli_runs_write_results_with_the_counts(runs):
    root, done = runs
    for name, family, frames in (("holitom", "llava", 8), ("qwen", "qwen", 4)):
        output, rc = done[name]
        assert rc == 0, output
        # The CLI exits 0 even when the evaluation crashed: the results file is the evidence.
        files = results_files(root / "out" / name)
        assert len(files) == 1, output
        results = json.loads(files[0].read_text())
        assert results["config"]["model_backend"].endswith("(simple)" if name == "holitom" else "(chat)")
        for task in RUNS[name][1]:
            samples = [json.loads(line) for line in next(files[0].parent.glob(f"*_samples_{task}.jsonl")).open()]
            counts = [c for s in samples for c in s["token_counts"]]
            assert len(samples) == 2 and len(counts) == (2 if task == C.GEN else 5)
            assert {c["visual_tokens_before"] for c in counts} == {C.FULL[family](frames)}
            assert all(1 <= c["visual_tokens_after"] < c["visual_tokens_before"] and c["prune_ms"] >= 0
                       and c["prefill_ms"] >= 0 for c in counts)
            key = f"avg_stop_fast/{task}/visual_tokens_after"
            mean = sum(c["visual_tokens_after"] for c in counts) / len(counts)
            assert results["throughput"][key] == pytest.approx(mean)


def test_report_table_and_plot(runs, tmp_path, capsys):
    root, _ = runs
    rc = cli.main(["report", str(root / "out"), "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.out.splitlines()[2:]]
    table = {(r[0], r[1], r[2]): r for r in rows}
    assert set(table) == {("llava", C.GEN, "holitom+SToP"), ("llava", C.MC, "holitom+SToP"),
                          ("llava", C.GEN, "unpruned"), ("llava", C.MC, "unpruned"),
                          ("qwen", C.GEN, "fastvid+SToP")}
    results = json.loads(results_files(root / "out" / "holitom")[0].read_text())
    for task in (C.GEN, C.MC):
        row = table[("llava", task, "holitom+SToP")]
        t = results["throughput"]
        kept = t[f"avg_stop_fast/{task}/visual_tokens_after"] / t[f"avg_stop_fast/{task}/visual_tokens_before"]
        assert row[3] == "0.25" and row[4] == f"{100 * kept:.1f}%"
        metric = "exact_match" if task == C.GEN else "acc"
        assert row[8] == f"{metric} {results['results'][task][metric + ',none']:.4f}"
        assert table[("llava", task, "unpruned")][4] == "100.0%" and table[("llava", task, "unpruned")][6] == "—"
    assert table[("qwen", C.GEN, "fastvid+SToP")][4] == "50.0%"
    assert (tmp_path / "report.md").read_text() == out.out
    assert (tmp_path / "accuracy_vs_retention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_errors_are_one_line(runs, tmp_path, capsys):
    root, _ = runs
    other = json.loads(results_files(root / "out" / "holitom")[0].read_text())
    other["config"]["model"] = "llava_onevision"
    (tmp_path / "x_results.json").write_text(json.dumps(other))
    (tmp_path / "empty").mkdir()
    for argv, message in (
            ([str(tmp_path / "empty")], "no *_results.json under"),
            ([str(tmp_path / "x_results.json")], "a run of --model 'llava_onevision', not stop_fast"),
            ([str(root / "out" / "qwen"), "--metric", "bleu"], "has no score named ['bleu']"),
            ([str(tmp_path / "missing")], "no such file or folder")):
        assert cli.main(["report", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("stop-fast report: error: ") and message in err and err.count("\n") == 1, err
