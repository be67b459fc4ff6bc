"""Traffic budgets of the pipelines, counted by the traffic meter (stop_fast.bench.traffic).

Budgets (issue 18) per 32-frame video at LLaVA-OneVision's shape (T = 32, N = 196,
D = 3584), as multiples of the feature tensor's bytes, and kernel-launching ops: on the GPU
path (backend="triton") VisionZip ≤ 1.5× and ≤ 30 ops, HoliTom and FastVid ≤ 4× and ≤ 80
ops; the torch backend ≤ 8× and ≤ 120 ops; host syncs as the README's table says.

Sizes: N = 196 and T = 32 as in the models (8 frames on the Triton backend, whose
interpreter is slow here), the width D = 3584 reached exactly without running it: the videos
of stop_fast.bench.suite_traffic.video repeat a D0-wide feature along D, every selection is
then the same at every width and the bytes are affine in D, so two small widths fix the line
(test_width_extrapolation_is_exact checks a third). CI checks the worst ratio (0.2) in both
dtypes with SToP and r = 0.1 without; `stop-fast bench --suite traffic` measures every ratio
and shape.
"""
import re
from pathlib import Path

import pytest
import torch

import stop_fast as sf
from stop_fast.bench import published as P
from stop_fast.bench.suite_traffic import (BUDGET_TORCH, BUDGET_TRITON, D0, meter_ours,
                                           meter_published, meter_scaled, video)
from stop_fast.bench.traffic import TrafficMeter
from stop_fast.dispatch import triton_usable
from stop_fast.pipelines.registry import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"
GRID, D_FULL = (14, 14), 3584
TRITON = triton_usable(torch.device("cpu"))[0] or torch.cuda.is_available()


def readme_syncs() -> dict[str, int]:
    """The README's host-sync table: {method: syncs per video}."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Host syncs per video", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", section, flags=re.M)
    return {m: int(n) for m, n in rows}


def small(T_=8, D=64, dtype=torch.float32, seed=3):
    from stop_fast.synthetic import make_video
    return make_video(num_frames=T_, grid=GRID, dim=D, metric_dim=16, scene_cut=T_ // 2,
                      seed=seed, dtype=dtype)


def test_readme_sync_table_lists_every_method():
    assert set(readme_syncs()) == set(METHODS)


VARIANTS = [(m, s) for m in sorted(METHODS) for s in ((True, False) if METHODS[m].uses_attention
                                                       else (None,))]


@pytest.mark.parametrize("method,use_stop", VARIANTS)
def test_host_syncs_match_readme(method, use_stop):
    with sf.input_checks(False):
        r = meter_ours(small(), method, 0.1, use_stop, "torch")
    assert r["syncs"] == readme_syncs()[method], r["sync_sites"]


# Known misses at D = 3584 (bench/README.md has every number) and what would close them.
# strict: a miss that starts meeting its budget fails here and moves to the met ones.
MISSES = {
    ("holitom", "triton", "ops"): "175 ops, 73 of them in DPC-KNN (pipelines/dpc_knn.py) and "
                                  "~100 laying out the two merge passes: DPC-KNN on the Gram "
                                  "kernels (kernels/dpc.py, with HoliTom's penalty) and a layout "
                                  "kernel like visionzip_plan would close it",
    ("fastvid", "triton", "ops"): "~110 ops, most of them building the merge plan from small "
                                  "torch ops: a layout kernel like visionzip_plan would close it",
    ("holitom", "torch", "ops"): "~200 ops, 73 of them in DPC-KNN",
    ("fastvid", "torch", "ops"): "~180 ops building the merge plan from small torch ops",
    ("holitom", "triton", "bytes", torch.bfloat16): "~5.6× at 8 frames (4.85× at 32): three "
                                                    "reads of the features (cosine, two merge "
                                                    "passes) and DPC-KNN's mean, centring and "
                                                    "Gram passes over the fp32 static means",
    ("holitom", "torch", "bytes"): "bf16: CPU torch has no bf16 matmul with an fp32 result, so "
                                   "the passes read an fp32 copy (~10×)",
    ("fastvid", "torch", "bytes"): "bf16: three passes over an fp32 copy (no bf16 matmul with an "
                                   "fp32 result in CPU torch)",
    ("flashvid", "triton", "bytes"): "three passes over the features (Grams; the projection on "
                                     "the segment mean token, known only after the layout sync; "
                                     "the tree sums) plus the fp32 pool rows written once and "
                                     "read twice (~5.0× fp32, ~6.8× bf16 at 32 frames; at 8 "
                                     "frames every frame is its own segment and pools all N "
                                     "tokens: ~7×/11×); keeping the pool rows on chip (a fused "
                                     "spatial stage) would close it",
    ("flashvid", "torch", "bytes", torch.float32): "~11.6×: the Grams read the fp32 features as "
                                                   "overlapping frame pairs (2×), frame sums, "
                                                   "projection, tree sums, ADTS's greedy rows",
    ("flashvid", "torch", "bytes"): "bf16 as fp32 on an fp32 copy (~27×)",
    ("flashvid", "torch", "ops"): "~370 ops: ADTS's greedy takes 3 ops per pick (n_A = 35 at "
                                  "r = 0.2), the tree, layout and DPC-kNN twins ~150 small ops",
    ("prunevid", "triton", "bytes"): "4.0001× fp32 and 5.6× bf16 at 8 frames: the fp32 segment "
                                     "means (S/T of the features, large at 8 frames) are written "
                                     "once and read once",
    ("prunevid", "torch", "bytes"): "bf16: the passes read an fp32 copy (~19×)",
    ("prunevid", "torch", "ops"): "~180 ops, ~60 of them in the DPC-kNN twin",
}
# (method, backend, dtype, ratio, use_stop, frames): the worst ratio in both dtypes and the plain
# method; Triton (the interpreter here) at 8 frames.
CASES = [(m, "torch", dt, r, stop, 32) for m in ("visionzip", "holitom", "fastvid")
         for dt, r, stop in ((torch.float32, 0.20, True), (torch.bfloat16, 0.20, True),
                             (torch.float32, 0.10, False))]
CASES += [(m, "triton", torch.bfloat16, 0.20, True, 8) for m in ("visionzip", "fastvid")]
CASES += [("holitom", "triton", dt, 0.20, True, 8) for dt in (torch.float32, torch.bfloat16)]
# FlashVid and PruneVid (no attention, so no SToP variant): torch at 32 frames, Triton at 8.
CASES += [("flashvid", "torch", dt, r, stop, 32)
          for dt, r, stop in ((torch.float32, 0.20, True), (torch.bfloat16, 0.20, True),
                              (torch.float32, 0.10, False))]
CASES += [("prunevid", "torch", dt, r, None, 32)
          for dt, r in ((torch.float32, 0.20), (torch.bfloat16, 0.20), (torch.float32, 0.10))]
CASES += [(m, "triton", dt, 0.20, stop, 8) for m, stop in (("flashvid", True), ("prunevid", None))
          for dt in (torch.float32, torch.bfloat16)]
_MEASURED = {}


def measured(method, backend, dtype, ratio, use_stop, frames):
    key = (method, backend, dtype, ratio, use_stop, frames)
    if key not in _MEASURED:
        def make(D):
            return video(frames, GRID, D, 72, dtype, "cpu")

        with sf.input_checks(False):
            _MEASURED[key] = meter_scaled(make, method, ratio, use_stop, backend, D_FULL)
    r = _MEASURED[key]
    assert r["status"] == "ok", r
    return r


def _params(what):
    for case in CASES:
        method, backend, dtype = case[:3]
        marks = []
        if backend == "triton" and not TRITON:
            marks.append(pytest.mark.skip(reason="Triton backend unavailable here"))
        miss = MISSES.get((method, backend, what, dtype)) or MISSES.get((method, backend, what))
        if miss and (what == "ops" or backend == "triton" or dtype == torch.bfloat16
                     or (method, backend, what, dtype) in MISSES):
            marks.append(pytest.mark.xfail(strict=True, reason=miss))
        yield pytest.param(*case, marks=marks, id=f"{method}-{backend}-{str(dtype)[6:]}-"
                                                   f"r{case[3]}-{'stop' if case[4] else 'plain'}")


@pytest.mark.parametrize("method,backend,dtype,ratio,use_stop,frames", list(_params("bytes")))
def test_traffic_budget(method, backend, dtype, ratio, use_stop, frames):
    r = measured(method, backend, dtype, ratio, use_stop, frames)
    limit = BUDGET_TRITON[method][0] if backend == "triton" else BUDGET_TORCH[0]
    assert r["multiple"] <= limit, (r["multiple"], r["top"])
    assert r["syncs"] == readme_syncs()[method]


@pytest.mark.parametrize("method,backend,dtype,ratio,use_stop,frames", list(_params("ops")))
def test_launch_budget(method, backend, dtype, ratio, use_stop, frames):
    r = measured(method, backend, dtype, ratio, use_stop, frames)
    limit = BUDGET_TRITON[method][1] if backend == "triton" else BUDGET_TORCH[1]
    assert r["ops"] <= limit, r["ops"]


@pytest.mark.parametrize("method,backend", [("fastvid", "triton"), ("holitom", "torch")])
def test_width_extrapolation_is_exact(method, backend):
    if backend == "triton" and not TRITON:
        pytest.skip("Triton backend unavailable here")

    def make(D):
        return video(4, GRID, D, 16, torch.float32, "cpu")

    with sf.input_checks(False):
        predicted = meter_scaled(make, method, 0.15, True, backend, 3 * D0)
        direct = meter_ours(make(3 * D0), method, 0.15, True, backend)
    assert predicted["bytes"] == direct["bytes"] and predicted["ops"] == direct["ops"]


def test_meter_sees_the_pipeline_kernels():
    # The Triton path's traffic is in custom ops the meter opened: nothing hidden inside.
    if not TRITON:
        pytest.skip("Triton backend unavailable here")
    v = small()
    with sf.input_checks(False), TrafficMeter(v.features) as m:
        sf.prune(v.features, v.attention, method="visionzip", retention_ratio=0.1, metric=v.metric,
                 backend="triton")
    assert {"stop_fast.visionzip_plan", "stop_fast.merge_tokens"} <= set(m.result.per_op)


def test_published_needs_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    assert P.checkout(None) is None
    with pytest.raises(ValueError, match="pruning/<method>/llava_arch.py"):
        P.checkout(tmp_path)


@pytest.mark.skipif(not P.os.environ.get(P.ENV_VAR),
                    reason=f"no checkout of the published SToP release: set {P.ENV_VAR}=PATH "
                           "to meter the published pruning functions beside stop_fast")
@pytest.mark.parametrize("method", ["visionzip", "holitom", "fastvid"])
def test_published_runs_on_the_same_inputs(method):
    v = video(8, GRID, 32, 16, torch.float32, "cpu")
    r = meter_published(P.checkout(None), v, method, 0.1, True)
    ours = meter_ours(v, method, 0.1, True, "torch")
    assert r["status"] == "ok" and r["multiple"] > 0
    assert abs(r["kept_tokens"] - ours["kept_tokens"]) <= 0.05 * ours["kept_tokens"]
