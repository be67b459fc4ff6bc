"""The README's "Serving with vLLM" table: prompt tokens and time per request on the tiny
checkpoints of :mod:`vllm_case`, unpruned and with each method + SToP at r = 0.2, through
vLLM's CPU build and the plugin (run from the repository root in the vLLM virtualenv:
``.venv-vllm/bin/python tests/vllm_serving/measure_table.py``). Each row: median over REPEATS timed
``LLM.generate`` calls (one new clip each, 6 greedy tokens, no prefix or processor cache) after
one untimed warm-up call, in one thread (OMP_NUM_THREADS=1, no core binding)."""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
# One thread, no core binding: a 2-core machine shared with other jobs gives steadier times.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
sys.path.insert(0, HERE)
import conftest  # noqa: E402,F401  (the test set-up: environment and workarounds)
import tiny_models as TM  # noqa: E402
import vllm_case as V  # noqa: E402

REPEATS = 9


def main():
    from vllm import SamplingParams
    root = Path(tempfile.mkdtemp())
    ckpts = V.save_checkpoints(root)
    rows, load0 = [], f"{os.getloadavg()[0]:.2f}"
    for family in ("llava", "qwen"):
        for method in (None, "visionzip", "holitom", "fastvid", "flashvid", "prunevid"):
            settings = V.settings_of(method, None)
            # No prefix or processor cache: every timed call preprocesses, encodes and prefills anew.
            llm = V.make_llm(ckpts[family], settings, enable_prefix_caching=False, mm_processor_cache_gb=0)
            params = SamplingParams(max_tokens=V.MAX_NEW, temperature=0, ignore_eos=True)
            times = []
            for i in range(REPEATS + 1):       # a new clip each call: nothing can come from a cache
                clip = TM.frames(V.FRAMES[family], V.SIZE[family], V.SIZE[family], seed=i)
                req = {"prompt": V.prompt(family), "multi_modal_data": {"video": (clip, V.metadata(family))}}
                t0 = time.perf_counter()
                out = llm.generate(req, params, use_tqdm=False)
                times.append(time.perf_counter() - t0)
            times = times[1:]                  # the first call warms up
            rows.append((family, method or "unpruned", len(out[0].prompt_token_ids), statistics.median(times),
                         min(times)))
            del llm
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| model | method (+ SToP where it has it), r = 0.2 | prompt tokens | time per request: median | min |")
    print("|---|---|---|---|---|")
    for family, method, n, t, lo in rows:
        print(f"| {family} | {method} | {n} | {t * 1000:.0f} ms | {lo * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
