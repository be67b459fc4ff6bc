"""Installed layout: kernels ship as stop_fast.kernels, never as a top-level `kernels` module."""
import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cwd, *args: str) -> subprocess.CompletedProcess:
    """This Python in ``cwd``, whatever PYTHONPATH the caller set (the layout alone decides)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=120)


def test_no_top_level_kernels_module(tmp_path):
    # `kernels` and `bench` may be other distributions' modules (Hugging Face's `kernels` comes
    # with recent transformers); they must not be this checkout's folders.
    code = ("import importlib.util as u, json; import stop_fast.kernels, stop_fast.bench; "
            "print(json.dumps([[s.origin or '', *(s.submodule_search_locations or [])] if s else [] "
            "for s in map(u.find_spec, ['kernels', 'bench'])]))")
    res = _run(tmp_path, "-c", code)
    assert res.returncode == 0, res.stderr
    for name, places in zip(["kernels", "bench"], json.loads(res.stdout)):
        assert not any(p.startswith(str(ROOT / name)) for p in places), places


def test_python_started_in_the_checkout_imports_transformers_models():
    # The checkout root first on sys.path (`python -c`/`-m` started there) makes `import kernels`
    # reach this checkout's kernels/ folder; it hands the name to Hugging Face's distribution
    # where installed (transformers imports it for every model), and stop_fast.kernels stays
    # this folder. Without the distribution: test_kernels_name_without_the_distribution.
    code = ("import transformers.activations, kernels, stop_fast.kernels as sk; "
            "print(getattr(kernels, '__file__', None)); print(sk.__file__)")
    res = _run(ROOT, "-c", code)
    assert res.returncode == 0, res.stderr
    theirs, ours = res.stdout.split()
    assert ours == str(ROOT / "kernels" / "__init__.py")
    try:
        md.version("kernels")
        assert not theirs.startswith(str(ROOT / "kernels")), theirs
    except md.PackageNotFoundError:
        assert theirs == "None", theirs


def test_kernels_name_without_the_distribution():
    # -S: no site-packages, so no other `kernels`. transformers' availability check imports the
    # name and counts a module without __version__ and __file__ as a shadow, not an install:
    # so must this one be; any attribute names the package to import instead.
    code = ("import importlib, importlib.util as u; assert u.find_spec('kernels') is not None; "
            "k = importlib.import_module('kernels'); "
            "print(getattr(k, '__version__', 'N/A'), getattr(k, '__file__', None)); k.merge_tokens")
    res = _run(ROOT, "-S", "-c", code)
    assert res.returncode != 0 and res.stdout.split() == ["N/A", "None"], (res.stdout, res.stderr)
    assert "is the package stop_fast.kernels: import it as stop_fast.kernels" in res.stderr, res.stderr


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
