"""The top-level name ``kernels``, when Python reaches this folder by it (see ``__init__``).

Hugging Face's ``kernels`` distribution owns that name, and transformers imports it; this
folder is ``stop_fast.kernels`` and is only reached as ``kernels`` when the checkout root comes
first on sys.path (Python started there). :func:`hand_over` then loads the distribution in its
place. Where it is not installed, the name gets an empty module without ``__file__``, the mark
by which transformers' availability check (which imports the name) tells a real install from a
shadow; any attribute of it raises an error that says what happened.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types


def _real(p: str) -> str:
    return os.path.realpath(p or os.curdir)


def hand_over(name: str) -> None:
    """Replace ``sys.modules[name]`` (this folder) by the installed distribution of that name."""
    folder = os.path.dirname(os.path.abspath(__file__))
    root = _real(os.path.dirname(folder))
    for sub in [m for m in sys.modules if m.startswith(name + ".")]:
        del sys.modules[sub]                        # this folder's own submodules (this one)
    spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if _real(p) != root])
    if spec is None:
        sys.modules[name] = _empty(name, folder)
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module                      # what the import statement returns
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _empty(name: str, folder: str) -> types.ModuleType:
    module = types.ModuleType(name, f"Placeholder: {folder} is the package stop_fast.{name}.")

    def __getattr__(attr: str):
        raise AttributeError(f"`import {name}` found {folder}, which is the package "
                             f"stop_fast.{name}: import it as stop_fast.{name} (no other module "
                             f"named {name!r} is installed; asked for {attr!r})")

    module.__getattr__ = __getattr__                # PEP 562: every missing attribute
    return module
