"""Exposing a kernel launcher as a ``torch.library`` custom op, once for every kernel."""
import functools
from typing import Callable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def tracing() -> bool:
    """True while torch.compile / torch.export / make_fx trace (or any dispatch mode is active):
    a launcher cannot run on the fake or proxy tensors those hand out, the custom op can."""
    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


def kernel_op(name: str, schema: str, fake: Callable) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the custom op ``stop_fast::<name>`` (no mutated args).

    ``schema`` is the op's signature, e.g. ``"(Tensor attn, float gamma) -> Tensor"``, and
    ``fake`` computes empty outputs of the right shape and dtype from (fake) inputs. Returns
    what the backend exposes: in eager mode it calls ``fn`` directly (no dispatcher overhead),
    while tracing it calls the op, which the compiler keeps as one opaque node. The op is
    available as the ``op`` attribute (and as ``torch.ops.stop_fast.<name>``).
    """
    def register(fn: Callable) -> Callable:
        op = torch.library.custom_op(f"stop_fast::{name}", fn, mutates_args=(), schema=schema)
        op.register_fake(fake)

        @functools.wraps(fn)
        def exposed(*args, **kwargs):
            return op(*args, **kwargs) if tracing() else fn(*args, **kwargs)

        exposed.op = op
        return exposed

    return register
