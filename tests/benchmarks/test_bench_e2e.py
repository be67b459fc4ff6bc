"""pytest-benchmark: time to first token of the random-weight LLaVA-OneVision, with and without
``apply_stop`` (7B-shaped on CUDA, the tiny smoke model on CPU)."""
import pytest
import torch

from stop_fast.bench import e2e_model as E
from stop_fast.bench import suite_e2e as S
from stop_fast.bench.fixtures import SMOKE, synced

CFG = S.SMOKE if SMOKE else S.FULL


@pytest.fixture(scope="module")
def model(device):
    pytest.importorskip("transformers")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return E.build(SMOKE, device, dtype), dtype


@pytest.mark.parametrize("frames", CFG["frames"])
@pytest.mark.parametrize("variant", ["unpruned", *S.METHODS])
def test_ttft(benchmark, device, model, variant, frames):
    from stop_fast import apply_stop, remove_stop

    m, dtype = model
    runner = S.Runner(m, E.video_pixels(frames, m.config.vision_config.image_size, device, dtype), 0)
    if variant != "unpruned":
        try:
            apply_stop(m, method=variant, retention_ratio=CFG["ratios"][0])
        except ValueError as exc:          # PruneVid needs the 14×14 grid of the full model
            pytest.skip(str(exc))
    try:
        benchmark.group = f"ttft T={frames}"
        with torch.no_grad():
            benchmark.pedantic(synced(runner.prefill, device), rounds=CFG["reps"], iterations=1,
                               warmup_rounds=CFG["warmup"])
    finally:
        remove_stop(m)
