"""The README's "Serving with vLLM" table: prompt tokens and time per request on the tiny
checkpoints of :mod:`vllm_case`, unpruned and with each method + SToP at r = 0.2, through
vLLM's CPU build and the plugin (run from the repository root in the vLLM virtualenv:
``.venv-vllm/bin/python tests_vllm/measure_table.py``). Each row: median over REPEATS timed
``LLM.generate`` calls (one video, 6 greedy tokens, no prefix or processor cache) after one
untimed warm-up call."""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import conftest  # noqa: E402,F401  (the test set-up: environment and workarounds)
import vllm_case as V  # noqa: E402

REPEATS = 5


def main():
    from vllm import SamplingParams
    root = Path(tempfile.mkdtemp())
    ckpts = V.save_checkpoints(root)
    rows = []
    for family in ("llava", "qwen"):
        for method in (None, "visionzip", "holitom", "fastvid", "flashvid", "prunevid"):
            settings = V.settings_of(method, None)
            # No prefix or processor cache: every timed call preprocesses, encodes and prefills anew.
            llm = V.make_llm(ckpts[family], settings, enable_prefix_caching=False, mm_processor_cache_gb=0)
            req = {"prompt": V.prompt(family), "multi_modal_data": {"video": (V.video(family), V.metadata(family))}}
            params = SamplingParams(max_tokens=V.MAX_NEW, temperature=0, ignore_eos=True)
            llm.generate(req, params, use_tqdm=False)
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                out = llm.generate(req, params, use_tqdm=False)
                times.append(time.perf_counter() - t0)
            rows.append((family, method or "unpruned", len(out[0].prompt_token_ids), statistics.median(times)))
            del llm
    print("| model | method (+ SToP where it has it), r = 0.2 | prompt tokens | median time per request |")
    print("|---|---|---|---|")
    for family, method, n, t in rows:
        print(f"| {family} | {method} | {n} | {t * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
