"""Applies the test set-up's workarounds (``tests/vllm_serving/_workarounds.py``) in every Python process
the vLLM tests start: vLLM inspects model classes in a subprocess, and the OpenAI server test
runs vLLM in its own process. conftest.py puts this folder on PYTHONPATH."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _workarounds  # noqa: E402

_workarounds.apply_all()
