"""The stop-fast command line: help, version, one-line errors, bench output checks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stop_fast
from stop_fast import cli

BIN = Path(sys.executable).with_name("stop-fast")


def _main(capsys, *argv):
    """(exit status, stdout, stderr) of ``stop-fast argv`` run in-process."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:          # argparse: --help, --version, usage errors
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_is_plain_text_and_every_option_explained(capsys):
    rc, out, _ = _main(capsys, "--help")
    assert rc == 0 and "``" not in out and "run" in out and "demo" in out and "bench" in out
    for sub in ("demo", "run"):
        parser = cli._parser()._subparsers._group_actions[0].choices[sub]
        missing = [a.dest for a in parser._actions if not a.help]
        assert not missing, f"{sub} options without help text: {missing}"


def test_version(capsys):
    rc, out, _ = _main(capsys, "--version")
    assert rc == 0 and out.strip() == f"stop-fast {stop_fast.__version__}"


def test_python_dash_m_and_console_script(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for cmd in ([sys.executable, "-m", "stop_fast", "--version"], [str(BIN), "--version"]):
        if not Path(cmd[0]).exists():
            pytest.skip("the stop-fast console script is not installed (pip install -e .)")
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0 and res.stdout.strip() == f"stop-fast {stop_fast.__version__}", res.stderr


@pytest.mark.parametrize("argv,needle", [
    (("demo", "--retention", "1.5"), "--retention"),
    (("demo", "--retention", "0"), "--retention"),
    (("demo", "--frames", "0"), "--frames"),
    (("demo", "--grid", "3", "3"), "--grid"),
    (("run", "x.mp4", "--model", "m", "--prompt", "p", "--retention", "nan"), "--retention"),
])
def test_bad_options_are_one_line(capsys, argv, needle):
    rc, out, err = _main(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("sub", ["demo", "run"])
def test_cuda_without_gpu_is_one_line(capsys, sub):
    extra = ("x.mp4", "--model", "m", "--prompt", "p") if sub == "run" else ()
    rc, _, err = _main(capsys, sub, *extra, "--device", "cuda")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "CUDA" in err, err


def test_bench_checks_out_dir_before_running(capsys, monkeypatch, tmp_path):
    from stop_fast.bench import cli as bench_cli

    def never(*a, **k):
        raise AssertionError("a suite ran although the output directory is unusable")
    monkeypatch.setattr(bench_cli, "run_suite", never)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out in ("/proc/nope", str(blocker / "sub")):
        rc, stdout, err = _main(capsys, "bench", "--smoke", "--device", "cpu", "--out", out)
        assert rc == 2 and "cannot write results" in stdout + err and "Traceback" not in stdout + err


def test_smoke_report_says_timings_are_meaningless(tmp_path, monkeypatch):
    import io

    from matplotlib.figure import Figure
    from rich.console import Console

    from stop_fast.bench import report
    from stop_fast.bench.record import Case, SuiteResult
    case = Case(suite="kernels", group="g", name="T=4", x=4, params={})
    case.results["ours"] = {"status": "ok", "median_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0}
    suites = {"kernels": SuiteResult("kernels", cases=[case])}
    titles = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (titles.extend(
        t.get_text() for ax in self.axes for t in [ax.title, *ax.texts]), real(self, *a, **k))[1])
    for smoke in (True, False):
        titles.clear()
        report.plots(suites, tmp_path, smoke=smoke)
        assert any(report.SMOKE in t for t in titles) == smoke, titles
        buf = io.StringIO()
        report.print_tables(suites, Console(file=buf, width=200), smoke=smoke)
        assert (report.SMOKE in " ".join(buf.getvalue().split())) == smoke   # titles wrap
