"""Small helpers shared by the kernel launchers."""
import functools

import torch

# Absolute, not `from .._env`: run from a source checkout, `kernels/` is also importable as a
# top-level package (transformers probes `import kernels` for the Hugging Face package of that
# name), and a relative import beyond it would make that probe raise.
from stop_fast._env import triton_interpret

# Fixed at import, as Triton decides interpreter vs compiler when the kernels are decorated.
INTERPRET = triton_interpret()

LOG2E = 1.4426950408889634


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a host-side query: no sync); 1 on CPU."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
