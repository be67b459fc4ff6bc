"""Small helpers shared by the kernel launchers."""
import functools
import os

import torch

# Triton's interpreter (CPU) is selected by this variable before triton is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")

LOG2E = 1.4426950408889634


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def is_compiling() -> bool:
    """True while torch.compile / torch.export trace: launchers then go through the custom op."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check is not None and check())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a host-side query: no sync); 1 on CPU."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
