"""vLLM + the stop_fast plugin, offline (``vllm.LLM``), on tiny fp32 checkpoints of both families.

For every method with and without SToP (and unpruned): the prompt holds exactly B video
placeholders (``token_budget``; LLaVA adds its newline), and greedy decoding through vLLM keeps
the same positions and generates the same tokens as transformers + ``apply_stop(...,
exact_budget=True)``. Without the ``stop_fast`` key the plugin's classes run vLLM's own path.
Bad settings stop start-up with the error ``stop_fast.prune`` raises.
"""
import pytest
import torch

import vllm_case as V
from stop_fast import prune, token_budget

METHODS = ["visionzip", "holitom", "fastvid", "flashvid", "prunevid"]
CASES = [(None, None)] + [(m, s) for m in METHODS for s in ((True, False) if m != "prunevid" else (None,))]


@pytest.mark.parametrize("family", ["llava", "qwen"])
@pytest.mark.parametrize("method,use_stop", CASES)
def test_same_answer_as_transformers(checkpoints, family, method, use_stop):
    ckpt = checkpoints[family]
    settings = V.settings_of(method, use_stop)
    n_prompt, tokens, positions, cls = V.run_vllm(ckpt, family, settings)
    want_tokens, want_positions, hf_prompt = V.run_transformers(ckpt, family, settings)
    assert cls.startswith("Stop")                     # the plugin's class serves the architecture
    newline = 1 if family == "llava" else 0
    full = V.GROUPS[family] * V.N
    text = hf_prompt - full - newline                # the prompt's other tokens
    if settings is None:
        assert positions is None and n_prompt == hf_prompt
    else:
        B = token_budget(method, V.GROUPS[family], V.N, settings["retention_ratio"])
        assert n_prompt == text + B + newline
        assert positions.shape == (B, 2)
        assert torch.equal(positions, want_positions)
    assert tokens == want_tokens


BAD = [
    ({"method": "tango"}, dict(method="tango", retention_ratio=0.1)),
    ({"method": "holitom", "retention_ratio": 1.5}, dict(method="holitom", retention_ratio=1.5)),
    ({"method": "visionzip", "tau": 0.5}, dict(method="visionzip", retention_ratio=0.1, tau=0.5)),
    ({"method": "prunevid", "use_stop": True}, dict(method="prunevid", retention_ratio=0.1, use_stop=True)),
    ({"method": "holitom", "mu_s": "high"}, dict(method="holitom", retention_ratio=0.1, mu_s="high")),
]


@pytest.mark.parametrize("settings,same", BAD)
def test_bad_settings_stop_start_up_with_prunes_error(checkpoints, settings, same):
    with pytest.raises((TypeError, ValueError)) as want:
        prune(torch.rand(2, 196, 4), torch.rand(2, 196), **same)
    with pytest.raises(Exception) as got:
        V.make_llm(checkpoints["llava"], settings)
    assert str(want.value) in str(got.value)


def test_exact_budget_cannot_be_turned_off(checkpoints):
    with pytest.raises(Exception, match="exact_budget=False is not available inside vLLM"):
        V.make_llm(checkpoints["qwen"], {"method": "visionzip", "exact_budget": False})
    with pytest.raises(Exception, match="must be a dict of stop_fast settings"):
        V.make_llm(checkpoints["qwen"], "holitom")
