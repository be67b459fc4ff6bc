"""Set-up of the vLLM tests (run in their own virtualenv with vLLM's CPU build; ``make test``).

Before vLLM is imported: a 1 GiB KV cache and the engine in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, with ``distributed_executor_backend="uni"`` and
``enforce_eager=True`` in :mod:`vllm_case`) make a tiny model start in seconds and let a test
reach the model through ``LLM.apply_model``. The workarounds of :mod:`_workarounds` apply here
and, through ``site/sitecustomize.py`` on PYTHONPATH, in every process vLLM starts.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.join(HERE, "site"), os.environ.get("PYTHONPATH")) if p)
sys.path[:0] = [HERE, os.path.dirname(HERE)]     # this folder, then tests/ (tiny_models)

import _workarounds  # noqa: E402

_workarounds.apply_all()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """family → a tiny random checkpoint (fp32) that vLLM and transformers both load."""
    import vllm_case
    return vllm_case.save_checkpoints(tmp_path_factory.mktemp("ckpt"))
