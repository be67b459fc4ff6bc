"""The benchmark engine end to end at smoke size: files written and well-formed.

Timings are not checked (they mean nothing at these shapes); structure is. Runs on the
device fixture: on CUDA this also exercises do_bench and the peak-memory path.
"""
import datetime
import json
import math

import pytest
import torch

from stop_fast.bench import main
from stop_fast.bench.record import Case

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
META = {"device": str, "device_name": str, "torch": str, "date": str, "timestamp": str, "smoke": bool,
        "finite_checks": bool}
TIMING = ("median_ms", "min_ms", "max_ms")


def _integration_importable() -> bool:
    try:
        import stop_fast.integrations.llava_onevision  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # tiny shapes: threads only add contention on a shared CPU
    try:
        rc = main(["--suite", "all", "--smoke", "--device", device, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return rc, out, device


def test_exit_code_and_files(smoke_run):
    rc, out, _ = smoke_run
    assert rc == 0
    assert (out / "results.json").is_file() and (out / "results.md").is_file()


def test_results_json(smoke_run):
    _, out, device = smoke_run
    doc = json.loads((out / "results.json").read_text())
    meta = doc["meta"]
    for key, typ in META.items():
        assert isinstance(meta[key], typ), key
    assert meta["device"] == device and meta["smoke"] is True
    datetime.date.fromisoformat(meta["date"])
    for key in ("triton", "transformers", "flash_colreduce"):
        assert meta[key] is None or isinstance(meta[key], str)

    expected = {
        "kernels": True,
        "pipelines": True,
        "e2e": _integration_importable(),
        "traffic": True,
    }
    assert set(doc["suites"]) == set(expected)
    for name, runnable in expected.items():
        suite = doc["suites"][name]
        if not runnable:   # a missing dependency must be reported, not hidden
            assert suite["status"] == "skipped" and suite["reason"]
            continue
        assert suite["status"] == "ok", suite["reason"]
        assert suite["cases"]
        if name == "traffic":          # counts, not timings: checked in tests/test_traffic.py
            continue
        for case in suite["cases"]:
            assert isinstance(case["group"], str) and isinstance(case["name"], str)
            assert isinstance(case["x"], int) and isinstance(case["params"], dict)
            assert case["results"]["ours"]["status"] == "ok", case["results"]["ours"]
            assert set(case["speedup"]) == set(case["results"]) - {"ours"}
            for impl, r in case["results"].items():
                assert r["status"] in ("ok", "skipped", "oom", "error")
                if r["status"] != "ok":
                    assert isinstance(r["reason"], str) and r["reason"]
                    assert case["speedup"].get(impl) is None
                    continue
                lo, med, hi = r["min_ms"], r["median_ms"], r["max_ms"]
                assert all(isinstance(v, float) and math.isfinite(v) for v in (lo, med, hi))
                assert 0 <= lo <= med <= hi
                if device == "cpu":
                    assert r["peak_mem_mib"] is None
                elif impl == "ours":   # baselines may skip it (the slow float64 twins do)
                    assert isinstance(r["peak_mem_mib"], float) and r["peak_mem_mib"] >= 0
                if impl != "ours":
                    assert case["speedup"][impl] == pytest.approx(med / case["results"]["ours"]["median_ms"])
    kernel_groups = {c["group"] for c in doc["suites"]["kernels"]["cases"]}
    for dtype in ("bf16", "fp16"):
        for lse in ("no", "with"):
            assert f"column_mean_attention {dtype} {lse} lse" in kernel_groups
    assert {"sink_score", "penalized_topk", "static_mask", "combined"} <= kernel_groups


def test_results_markdown(smoke_run):
    _, out, _ = smoke_run
    md = (out / "results.md").read_text()
    assert md.startswith("# stop_fast benchmark")
    lines = md.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("| group | case | ours ms")]
    assert headers, "no results table"
    for i in headers:
        assert lines[i + 1].startswith("|---|")
        assert lines[i + 2].count("|") == lines[i].count("|")   # a data row under every header
    for name in ("kernels", "pipelines", "e2e"):
        assert f"## {name}" in md


def test_plots(smoke_run):
    import matplotlib.image as mpimg

    _, out, _ = smoke_run
    doc = json.loads((out / "results.json").read_text())
    groups = {(n, c["group"]) for n, s in doc["suites"].items() for c in s["cases"]
              if n != "traffic"}          # a count suite has no latency plots
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(groups)
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC, p.name
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)


def test_speedup_is_baseline_over_ours():
    case = Case("s", "g", "n", 1, {}, {"ours": {"status": "ok", "median_ms": 2.0},
                                       "slow": {"status": "ok", "median_ms": 5.0},
                                       "gone": {"status": "skipped", "reason": "x"}})
    assert case.speedup() == {"slow": 2.5, "gone": None}


def test_cuda_request_without_cuda_is_an_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal path needs a CUDA-less machine")
    assert main(["--smoke", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())
