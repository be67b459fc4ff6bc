"""`stop-fast demo` runs end to end and shows SToP dropping the planted sinks."""
import io
import re

import pytest
from rich.console import Console

from stop_fast import demo
from stop_fast.demo import run_demo

SMALL = dict(frames=4, dim=32, vit_tokens=49)


@pytest.fixture(autouse=True)
def quick_timing(request, monkeypatch):
    """Table contents do not depend on how long we time; test_medians_* checks the timing."""
    if "medians" not in request.node.name:
        for name, value in (("WARMUP", 1), ("WARMUP_SECONDS", 0.0), ("MIN_REPEATS", 1), ("MIN_SECONDS", 0.0)):
            monkeypatch.setattr(demo, name, value)


def _run(**kw):
    buf = io.StringIO()
    assert run_demo(**SMALL, console=Console(file=buf, width=200), **kw) == 0
    return buf.getvalue()


def test_demo_table():
    out = _run()
    rows, pipes = {}, {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 7 and cells[0] in ("reference", "torch", "triton"):
            rows[(cells[0], cells[1])] = [int(c) for c in cells[2:5]]
        if len(cells) == 7 and cells[1] in ("yes", "no"):
            pipes[(cells[0], cells[1])] = [int(c) for c in cells[2:5]]
    backends = {b for b, _ in rows}
    assert {"reference", "torch"} <= backends, out
    for b in backends:
        kept, sinks_plain, obj_plain = rows[(b, "plain")]
        _, sinks_stop, obj_stop = rows[(b, "SToP")]
        assert kept == 4 * 20                     # 10% of 196 per frame, rounded up
        assert sinks_stop < sinks_plain and obj_stop >= obj_plain
    assert "column_mean_attention" in out
    for method in ("visionzip", "holitom"):
        (_, sinks_plain, obj_plain), (_, sinks_stop, obj_stop) = pipes[(method, "no")], pipes[(method, "yes")]
        assert sinks_stop < sinks_plain and obj_stop >= obj_plain, out
    assert {m for m, _ in pipes} == set(demo._methods()), out      # every registered method ran
    assert "TRITON_INTERPRET" not in out          # the interpreter costs minutes: never suggested
    assert "median ms after warm-up" in out


def test_demo_skips_a_method_that_does_not_import(monkeypatch):
    real = demo.sf.prune

    def prune(*args, method, **kw):
        if method == "holitom":
            raise ModuleNotFoundError("No module named 'stop_fast.pipelines.holitom'")
        return real(*args, method=method, **kw)
    monkeypatch.setattr(demo.sf, "prune", prune)
    out = _run()
    assert "holitom: skipped, its code does not import" in out
    assert re.search(r"│ visionzip\s+│ yes", out)


def test_demo_viz(tmp_path):
    out = _run(viz=str(tmp_path))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"demo_holitom_sink_score_heatmap.png", "demo_holitom_kept_tokens_holitom_without_vs_with_stop.png",
            "demo_holitom_segments_holitom.png", "demo_visionzip_sink_score_heatmap.png"} <= names, names
    assert f"wrote {len(names)} figures" in out


def test_medians_warm_up_until_settled(monkeypatch):
    # A fake clock that only the calls advance: the outcome cannot depend on machine load.
    clock = [0.0]
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock[0])
    calls = []

    def fn():                                     # the first 5 calls are slow, as on a cold start
        calls.append(1)
        clock[0] += 0.02 if len(calls) <= 5 else 1e-5
    (ms,), n = demo._medians([fn], demo.torch.device("cpu"))
    assert ms == pytest.approx(0.01) and n >= demo.MIN_REPEATS and len(calls) >= 5 + n
