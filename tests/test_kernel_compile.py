"""Ahead-of-time compilation of every Triton kernel for sm_86 (A6000) and sm_90 (H100).

No GPU is needed: ``python -m stop_fast.kernels.aot --subset quick`` compiles, for both
targets, one job per kernel and input dtype (spread over the autotune configs and the real
shapes: head dim 72/80, N = 196/729/4096, D = 3584) in a subprocess with TRITON_INTERPRET=0,
since the interpreter replaces kernels by interpreted functions. The same test runs where a
GPU is present (compiling ahead of time needs no device). Exact checks, no tolerances:
every compile succeeds and its launch-time shared memory is within the target's per-block
limit.
"""
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
import triton

from stop_fast.kernels import aot

TARGETS = ("sm_86", "sm_90")
MODULES = [f"stop_fast.kernels.{m}" for m in aot.MODULES]


def _aot(*args, interpret="0", timeout=600):
    env = dict(os.environ, TRITON_INTERPRET=interpret)
    return subprocess.run([sys.executable, "-m", "stop_fast.kernels.aot", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("aot") / "quick.json"
    proc = _aot("--subset", "quick", "--targets", *TARGETS, "--json", str(path), "-q")
    assert path.exists(), f"aot wrote no report (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc, json.loads(path.read_text())


def test_every_compile_succeeds_and_fits_shared_memory(quick):
    proc, report = quick
    bad = [(r["target"], r["kernel"], r["config"], r["error"], r["shared_bytes"])
           for r in report["records"] if not r["ok"] or r["fits"] is not True]
    assert not bad, bad
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for r in report["records"]:
        assert 0 <= r["shared_bytes"] <= r["smem_limit"]
        assert r["registers"] is None or 0 < r["registers"] <= 255


def test_covers_every_kernel_dtype_and_target(quick):
    _, report = quick
    # Kernels found here independently of aot's own discovery: every `*_kernel` global.
    names = {n for m in MODULES for n in vars(importlib.import_module(m)) if n.endswith("_kernel")}
    assert len(names) >= 6
    covered = {(r["kernel"], d, r["target"]) for r in report["records"] for d in r["dtypes"]}
    missing = {(n, d, t) for n in names for d in ("fp32", "fp16", "bf16") for t in TARGETS
               if (n, d, t) not in covered}
    assert not missing, sorted(missing)


def test_refuses_to_run_under_the_interpreter():
    proc = _aot("--subset", "quick", interpret="1", timeout=300)
    assert proc.returncode == 2
    assert "TRITON_INTERPRET" in proc.stderr


def test_rejects_triton_without_the_constexprs_api(monkeypatch):
    class OldASTSource:   # the Triton <= 3.2 constructor
        def __init__(self, fn, signature, constants=None, attrs=None):
            pass

    monkeypatch.setattr(triton.compiler, "ASTSource", OldASTSource)
    with pytest.raises(RuntimeError, match="constexprs"):
        aot.check_api()


def test_specialization_matches_tritons_jit():
    # The argument signatures aot builds must be the ones Triton's JIT would build.
    libtriton = pytest.importorskip("triton._C.libtriton")
    native = getattr(libtriton, "native_specialize_impl", None)
    if native is None:
        pytest.skip(f"triton {triton.__version__} has no native_specialize_impl to compare with")
    from triton.backends.compiler import BaseBackend
    meta = lambda *s, dtype=torch.float32: torch.empty(s, dtype=dtype, device="meta")  # noqa
    values = [1, 0, 16, 72, 3584, -5, 2**31, -2**31 - 1, 2**63, 0.5, True, None,
              meta(8, 4).t(), meta(3, dtype=torch.bool), meta(3, dtype=torch.int64)]
    values += [meta(4, dtype=dt) for dt in aot.DTYPES]
    for v in values:
        ty, div = aot.specialize(v)
        want = native(BaseBackend, v, False, True, True)
        assert ty == want[0], (v, ty, want)
        if ty != "constexpr":
            assert div == (want[1] == "D"), (v, div, want)


def _plain(x):
    return x


@pytest.mark.parametrize("value", ["1", "0", "", "true", "TRUE", "on", "yes", "2", "false", " 1"])
def test_interpret_reading_matches_tritons(value, monkeypatch):
    # stop_fast reads TRITON_INTERPRET in one place (dispatch and the kernels, hence aot's
    # refusal above); it must agree with what triton.jit does with the same value.
    from stop_fast._env import triton_interpret
    monkeypatch.setenv("TRITON_INTERPRET", value)
    interpreted = not isinstance(triton.jit(_plain), triton.runtime.JITFunction)
    assert triton_interpret() == interpreted


def test_kernels_were_built_as_the_reading_says():
    from stop_fast._env import triton_interpret
    utils = importlib.import_module("stop_fast.kernels._utils")
    sink = importlib.import_module("stop_fast.kernels.sink_score")
    assert utils.INTERPRET == triton_interpret()
    assert utils.INTERPRET == (not isinstance(sink._sink_kernel, triton.runtime.JITFunction))
