"""Shared test set-up.

Without a GPU the Triton kernels run through Triton's interpreter, which must be switched on
before triton is first imported; with a GPU the same tests run compiled kernels on CUDA.
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1", \
        "triton was imported before TRITON_INTERPRET=1 could be set"
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """cuda when available (compiled kernels), else cpu (Triton interpreter)."""
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
