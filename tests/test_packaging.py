"""Installed layout: kernels ship as stop_fast.kernels, never as a top-level `kernels` module."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_kernels_module(tmp_path):
    # `kernels` and `bench` may be other distributions' modules (Hugging Face's `kernels` comes
    # with recent transformers); they must not be this checkout's folders.
    code = ("import importlib.util as u, json; import stop_fast.kernels, stop_fast.bench; "
            "print(json.dumps([[s.origin or '', *(s.submodule_search_locations or [])] if s else [] "
            "for s in map(u.find_spec, ['kernels', 'bench'])]))")
    # The installed layout only: pytest-xdist's workers put the checkout on PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    for name, places in zip(["kernels", "bench"], json.loads(res.stdout)):
        assert not any(p.startswith(str(ROOT / name)) for p in places), places


def test_console_script_entry_point():
    from importlib.metadata import entry_points
    eps = [e for e in entry_points(group="console_scripts") if e.name == "stop-fast"]
    assert eps and eps[0].value == "stop_fast.cli:main"


def test_vllm_plugin_entry_point_and_no_vllm_import(tmp_path):
    from importlib.metadata import entry_points
    eps = [e for e in entry_points(group="vllm.general_plugins") if e.name == "stop_fast"]
    assert eps and eps[0].value == "stop_fast.vllm_plugin:register"
    code = ("import sys, stop_fast; stop_fast.prune; from stop_fast import apply_stop, token_budget; "
            "print('stop_fast.vllm_plugin' in sys.modules, 'vllm' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]
