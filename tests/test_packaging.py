"""Installed layout: kernels ship as stop_fast.kernels, never as a top-level `kernels` module."""
import subprocess
import sys


def test_no_top_level_kernels_module(tmp_path):
    code = ("import importlib.util as u; import stop_fast.kernels, stop_fast.bench; "
            "print(u.find_spec('kernels') is None, u.find_spec('bench') is None)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True"]


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
