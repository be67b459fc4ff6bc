"""Helpers shared by the pytest-benchmark files in ``bench/`` (and their conftest)."""
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMOKE = DEVICE.type != "cuda"     # full shapes on CUDA; on CPU they would take minutes


def synced(fn, device: torch.device):
    """``fn`` followed by a device synchronize, so wall-clock timers see the GPU work."""
    if device.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize(device))
