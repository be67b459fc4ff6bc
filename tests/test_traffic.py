"""Traffic budgets of the pipelines, counted by the traffic meter (stop_fast.bench.traffic).

Sizes are small but keep what the budgets depend on: N = 196 pooled tokens per frame (the
LLaVA-OneVision grid), enough frames for several segments, a scene cut and planted sinks, and
a feature width large enough that the (T, N, D) feature passes dominate the per-token index
work as they do at D = 3584 (see bench/README.md for how the multiples scale with D).
"""
import re
from pathlib import Path

import pytest
import torch

import stop_fast as sf
from stop_fast.bench.traffic import TrafficMeter
from stop_fast.pipelines.registry import METHODS
from stop_fast.synthetic import make_video

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_syncs() -> dict[str, int]:
    """The README's host-sync table: {method: syncs per video}."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Host syncs per video", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", section, flags=re.M)
    return {m: int(n) for m, n in rows}


def video(T=8, D=64, dtype=torch.float32, seed=3):
    return make_video(num_frames=T, grid=(14, 14), dim=D, metric_dim=16, scene_cut=T // 2,
                      seed=seed, dtype=dtype)


def metered(v, method, backend, ratio=0.1, use_stop=None):
    spec = METHODS[method]
    kw = {"metric": v.metric} if spec.needs_metric else {}
    if spec.uses_global:
        kw["global_features"] = v.features.float().mean(dim=1)
    if not spec.uses_attention:
        use_stop = None
    with sf.input_checks(False):
        with TrafficMeter(v.features) as m:
            out = sf.prune(v.features, v.attention, method=method, retention_ratio=ratio,
                           backend=backend, use_stop=use_stop, **kw)
    return out, m.result


def test_readme_sync_table_lists_every_method():
    assert set(readme_syncs()) == set(METHODS)


VARIANTS = [(m, s) for m in sorted(METHODS) for s in ((True, False) if METHODS[m].uses_attention
                                                       else (None,))]


@pytest.mark.parametrize("method,use_stop", VARIANTS)
def test_host_syncs_match_readme(method, use_stop):
    _, r = metered(video(), method, "torch", use_stop=use_stop)
    assert r.syncs == readme_syncs()[method], r.sync_sites
