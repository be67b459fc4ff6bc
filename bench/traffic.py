"""Traffic meter: the bytes a piece of PyTorch code moves, the kernels it launches and the host
syncs it makes, counted exactly from the ops it dispatches (no timing, no GPU needed).

    with TrafficMeter(reference=features) as m:
        stop_fast.prune(features, attention, method="holitom", retention_ratio=0.1)
    m.result.multiple, m.result.ops, m.result.syncs, m.result.top(5)

Counting rules (one :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every aten op):

- **Views are free**: an op whose result aliases its input (view, reshape-as-view, expand,
  slice, select, transpose, permute, as_strided, unsqueeze, squeeze, alias, detach, split, …)
  and ``_unsafe_view`` move nothing and launch nothing.
- **Allocation is free**: ``empty``, ``empty_strided``, ``empty_like``, ``new_empty`` reserve
  memory without touching it; no bytes, no launch. (``zeros``/``full`` write, so they count.)
- **Every other aten op launches one kernel** and moves the bytes of its tensor inputs plus
  its tensor outputs. A tensor counts its distinct elements (a broadcast, stride-0 dimension
  once), and a tensor that appears twice in one op's inputs counts once. In-place and
  scatter-type ops count the mutated tensor as read and written in full, an upper bound for
  sparse writes (``index_copy_``, ``index_put_``).
- **A custom op** (``stop_fast::*`` and any other non-aten namespace) counts its own inputs and
  outputs and the Triton kernels it launches. Nothing may hide inside it: while it runs, a
  second mode watches what its implementation dispatches; anything but views, allocations
  and Triton's own runtime raises :class:`HiddenComputeError`. Triton's interpreter
  (``TRITON_INTERPRET=1``) copies every tensor argument into host storage and back through
  aten ops (``new_empty``, ``set_``, ``copy_``); those are emulation, not work a GPU would do,
  and are tallied apart in ``Traffic.triton_runtime_ops`` (as is an autotuner's benchmarking
  on a first call, which callers avoid by warming up).
- **Host syncs** are counted where a CUDA device would make the host wait: ``item`` /
  ``bool()`` / ``int()`` / ``float()`` (``_local_scalar_dense``), ``tolist``, ``numpy``,
  ``cpu()`` / ``to("cpu")`` of a device tensor, ``nonzero``, ``masked_select``,
  boolean-mask indexing, ``unique``, ``equal``, ``repeat_interleave`` without an output size,
  and a blocking host-to-device copy (a pageable ``.to(device)``; a pinned ``non_blocking``
  copy is an op, not a sync). A device-to-host or host-to-device copy also counts as one op
  with its bytes (a memcpy, not a kernel, but a queued operation all the same).

Host versus device on a CPU-only machine. On CUDA, host tensors are the CPU ones. On a CPU run
(``emulate=True``, the default when the reference tensor is on the CPU) every tensor counts as
a device tensor, except those the code makes on the host the way it would next to a GPU:
built without an explicit ``device=`` (``torch.tensor(list)``, ``torch.arange(n)``), copied
to the host (``cpu()``/``to("cpu")`` of a device tensor), or computed only from such tensors.
Those ops are host arithmetic: not counted. ``tolist``/``numpy``/``bool()`` on CPU bypass the
dispatcher, so a :class:`~torch.overrides.TorchFunctionMode` watches the Python calls.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["TrafficMeter", "Traffic", "OpStat", "HiddenComputeError", "measure_traffic"]

_FREE = {"aten._unsafe_view", "aten.lift_fresh", "aten.alias", "aten.detach"}
_ALLOC = {"aten.empty", "aten.empty_strided", "aten.empty_like", "aten.new_empty",
          "aten.new_empty_strided"}
_SYNC = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique",
         "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive",
         "aten.equal"}
_HOST_MARK = "_traffic_meter_host"
_T = torch.Tensor
_D2H_METHODS = {_T.tolist, _T.numpy, _T.item, _T.__bool__, _T.__int__, _T.__float__,
                _T.__index__, _T.__array__}
_FACTORIES = {torch.tensor, torch.as_tensor, torch.arange, torch.zeros, torch.ones, torch.full,
              torch.empty, torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint,
              torch.randperm, torch.empty_strided, torch.scalar_tensor, torch.from_numpy}


class HiddenComputeError(RuntimeError):
    """A custom op ran torch computation inside its implementation (the meter cannot see it)."""


@dataclass
class OpStat:
    calls: int = 0
    bytes: int = 0
    launches: int = 0
    syncs: int = 0


@dataclass
class Traffic:
    """What a metered region did. ``multiple`` = bytes / reference bytes."""

    reference_bytes: int
    bytes: int = 0
    ops: int = 0
    syncs: int = 0
    per_op: dict[str, OpStat] = field(default_factory=dict)
    sync_sites: list[str] = field(default_factory=list)
    triton_runtime_ops: int = 0
    ops_before_sync: int | None = None     # launches before the first host sync (None: no sync)

    @property
    def multiple(self) -> float:
        return self.bytes / self.reference_bytes if self.reference_bytes else float("nan")

    def top(self, n: int = 5) -> list[tuple[str, float, int]]:
        """The ``n`` ops moving the most bytes: (name, multiple of the reference, launches),
        by descending bytes, ties by name."""
        ranked = sorted(self.per_op.items(), key=lambda kv: (-kv[1].bytes, kv[0]))[:n]
        ref = self.reference_bytes or 1
        return [(name, s.bytes / ref, s.launches) for name, s in ranked]

    def as_dict(self, top: int = 5) -> dict:
        return {"multiple": self.multiple, "bytes": self.bytes, "reference_bytes": self.reference_bytes,
                "ops": self.ops, "syncs": self.syncs, "sync_sites": list(self.sync_sites),
                "top": [{"op": n, "multiple": m, "launches": k} for n, m, k in self.top(top)],
                "triton_runtime_ops": self.triton_runtime_ops, "ops_before_sync": self.ops_before_sync}


def tensor_bytes(t: torch.Tensor) -> int:
    """Distinct elements × element size (a stride-0, broadcast dimension counts once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if size == 0:
            return 0
        if stride != 0:
            n *= size
    return n * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _unique_bytes(tensors) -> int:
    """Bytes of the distinct tensors: x and x.mT (the same elements) count once."""
    seen, total = set(), 0
    for t in tensors:
        dims = tuple(sorted((n, s) for n, s in zip(t.shape, t.stride()) if n != 1))
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), dims, t.dtype)
        if key not in seen:
            seen.add(key)
            total += tensor_bytes(t)
    return total


def _packet(func) -> str:
    return f"{func.namespace}.{func._opname}"


def _caller() -> str:
    """file:line of the innermost frame outside torch and this module (for sync sites)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename.replace("\\", "/")
        if "/torch/" not in name and not name.endswith("/traffic.py"):
            parts = name.split("/")
            return f"{'/'.join(parts[-2:])}:{f.f_lineno}"
        f = f.f_back
    return "?"


# --- Triton launches ---------------------------------------------------------------------------
_ACTIVE: list["TrafficMeter"] = []
_HOOKED = False


def _hook_triton() -> None:
    """Count Triton kernel launches (compiled ``JITFunction.run`` and the interpreter's
    ``InterpretedFunction.run``) while a meter is active. Installed once, a no-op otherwise."""
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    try:
        from triton.runtime import interpreter, jit
    except Exception:  # noqa: BLE001 - no Triton: nothing launches Triton kernels
        return
    for cls in (jit.JITFunction, interpreter.InterpretedFunction):
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            if _ACTIVE and not kwargs.get("warmup", False):
                _ACTIVE[-1]._launches += 1
            return _original(self, *args, **kwargs)

        cls.run = run


# --- the two modes -----------------------------------------------------------------------------
class _Inner(TorchDispatchMode):
    """Watches a custom op's implementation: views, allocations and Triton's runtime only."""

    def __init__(self, meter: "TrafficMeter", op: str):
        super().__init__()
        self.meter, self.op = meter, op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _packet(func)
        if not (func.is_view or name in _FREE or name in _ALLOC):
            if _from_triton():
                self.meter.result.triton_runtime_ops += 1
            else:
                raise HiddenComputeError(f"custom op {self.op} dispatched {func} inside its "
                                         "implementation, which may only allocate its outputs "
                                         "and launch Triton kernels")
        return func(*args, **(kwargs or {}))


def _from_triton() -> bool:
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename.replace("\\", "/")
        if "/triton/" in name:
            return True
        f = f.f_back
    return False


class _Dispatch(TorchDispatchMode):
    def __init__(self, meter: "TrafficMeter"):
        super().__init__()
        self.meter = meter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        m = self.meter
        ins = _tensors((args, kwargs))
        if m._host_depth or (ins and all(m.is_host(t) for t in ins)):
            out = func(*args, **kwargs)                       # host arithmetic: not counted
            m._mark(out, host=True)
            return out
        name = _packet(func)
        if m._cpu_checks and name in ("aten.aminmax", "aten._local_scalar_dense"):
            return func(*args, **kwargs)                      # CPU-only validation, see one_hot
        if not ins and not m.emulate and kwargs.get("device", torch.device("cpu")).type == "cpu":
            return func(*args, **kwargs)                      # a host factory next to a GPU
        if func.is_view or name in _FREE or name in _ALLOC:
            return func(*args, **kwargs)
        if func.namespace not in ("aten", "prims"):
            before = m._launches
            m._in_custom += 1
            try:
                with _Inner(m, str(func)):      # the op's implementation, watched
                    out = func.redispatch(_backend_keys(ins), *args, **kwargs)
            finally:
                m._in_custom -= 1
            m._count(name, _unique_bytes(ins) + _unique_bytes(_tensors(out)), m._launches - before)
            return out
        out = func(*args, **kwargs)
        sync = name in _SYNC or _bool_index(name, args)
        m._count(name, _unique_bytes(ins) + _unique_bytes(_tensors(out)), 1, sync)
        return out


def _backend_keys(ins: list[torch.Tensor]) -> torch._C.DispatchKeySet:
    """The backend key of the inputs (CPU, CUDA): below the Python mode key, so calling the op
    there runs its implementation with the inner mode seeing what it dispatches."""
    dev = ins[0].device.type if ins else "cpu"
    return torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA if dev == "cuda"
                                   else torch._C.DispatchKey.CPU)


def _bool_index(name: str, args) -> bool:
    """x[mask] / x[mask] = v: the result's size (or the write positions) needs a nonzero.
    repeat_interleave without output_size needs the total on the host."""
    if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                   for i in (args[1] if len(args) > 1 else ()) or ())
    return False


class _Function(TorchFunctionMode):
    """Python-level calls the dispatcher does not show on CPU: host round trips and factories."""

    def __init__(self, meter: "TrafficMeter"):
        super().__init__()
        self.meter = meter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        m = self.meter
        if m._host_depth or m._in_custom:
            return func(*args, **kwargs)
        if func in _FACTORIES and not (args and isinstance(args[0], torch.Tensor)):
            if kwargs.get("device") is None:
                return m._host_call(func, args, kwargs)        # host arithmetic: not counted
            if func in (torch.tensor, torch.as_tensor) and (
                    m.emulate or torch.device(kwargs["device"]).type != "cpu"):
                return m._upload(func, args, kwargs)
        self_t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if self_t is None:
            return func(*args, **kwargs)
        if func in _D2H_METHODS and not m.is_host(self_t):
            m._count("memcpy D2H", tensor_bytes(self_t), 1, True)
            return m._host_call(func, args, kwargs)
        if func in (_T.cpu, _T.to, _T.cuda, _T.pin_memory):
            target, named = _target_device(func, args, kwargs)
            if target is not None:
                return m._transfer(func, args, kwargs, self_t, target, named)
        if func is torch.nn.functional.one_hot and m.emulate:
            m._cpu_checks += 1      # its range checks run on CPU only (CUDA asserts in-kernel)
            try:
                return func(*args, **kwargs)
            finally:
                m._cpu_checks -= 1
        return func(*args, **kwargs)


def _target_device(func, args, kwargs) -> tuple[torch.device | None, bool]:
    """(device a cpu/to/cuda call moves to or None, whether "cpu" was named as a string)."""
    if func is _T.cpu:
        return torch.device("cpu"), True
    if func is _T.cuda:
        return torch.device("cuda"), False
    if func is _T.pin_memory:
        return None, False
    dev = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            dev = a
        elif isinstance(a, torch.Tensor):
            dev = a.device
    return (None, False) if dev is None else (torch.device(dev), isinstance(dev, str))


class TrafficMeter:
    """Context manager counting traffic, launches and host syncs (see the module docstring).

    reference: the tensor (or byte count) the bytes are reported against, e.g. the features.
    emulate: treat CPU tensors as device tensors (default: when the reference is on the CPU).
    """

    def __init__(self, reference: torch.Tensor | int, *, emulate: bool | None = None):
        if isinstance(reference, torch.Tensor):
            ref_bytes = reference.numel() * reference.element_size()
            emulate = reference.device.type == "cpu" if emulate is None else emulate
        elif isinstance(reference, int) and not isinstance(reference, bool) and reference > 0:
            ref_bytes, emulate = reference, bool(emulate)
        else:
            raise TypeError(f"reference must be a tensor or a positive byte count, got {reference!r}")
        self.emulate = emulate
        self.result = Traffic(ref_bytes)
        self._host_depth = 0
        self._in_custom = 0
        self._cpu_checks = 0
        self._launches = 0
        self._modes = (_Function(self), _Dispatch(self))

    def is_host(self, t: torch.Tensor) -> bool:
        if self.emulate:
            return getattr(t, _HOST_MARK, False)
        return t.device.type == "cpu"

    def _mark(self, out, host: bool) -> None:
        if self.emulate:
            for t in _tensors(out):
                setattr(t, _HOST_MARK, host)

    def _host_call(self, func, args, kwargs, mark: bool = True):
        self._host_depth += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self._host_depth -= 1
        if mark:
            self._mark(out, host=True)
        return out

    def _transfer(self, func, args, kwargs, self_t, target, named):
        src_host = self.is_host(self_t)
        if not self.emulate:
            dst_host = target.type == "cpu"
        else:   # a CPU run: cpu() / to("cpu") mean the host, to(x.device) means the device
            dst_host = named and target.type == "cpu"
        if src_host == dst_host:
            return func(*args, **kwargs)                      # no transfer (dtype change, …)
        out = self._host_call(func, args, kwargs, mark=False)
        if self.emulate and out is self_t:                    # CPU: .to(cpu) returns self
            out = self._host_call(_T.clone, (self_t,), {}, mark=False)
        self._mark(out, host=dst_host)
        blocking = dst_host or not kwargs.get("non_blocking", False)
        self._count("memcpy D2H" if dst_host else "memcpy H2D", tensor_bytes(self_t), 1, blocking)
        return out

    def _upload(self, func, args, kwargs):
        """torch.tensor(data, device=…): a pageable, blocking host-to-device copy."""
        out = self._host_call(func, args, kwargs, mark=False)
        self._mark(out, host=False)
        self._count("memcpy H2D", tensor_bytes(out), 1, True)
        return out

    def _count(self, name: str, nbytes: int, launches: int, sync: bool = False) -> None:
        r = self.result
        s = r.per_op.setdefault(name, OpStat())
        s.calls += 1
        s.bytes += nbytes
        s.launches += launches
        r.bytes += nbytes
        if sync and r.ops_before_sync is None:
            r.ops_before_sync = r.ops
        r.ops += launches
        if sync:
            s.syncs += 1
            r.syncs += 1
            r.sync_sites.append(f"{name} at {_caller()}")

    def __enter__(self) -> "TrafficMeter":
        _hook_triton()
        _ACTIVE.append(self)
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        _ACTIVE.remove(self)


def measure_traffic(fn, *args, reference: torch.Tensor | int, emulate: bool | None = None, **kw):
    """``(fn(*args, **kw), Traffic)``: one call of ``fn`` under a :class:`TrafficMeter`."""
    with TrafficMeter(reference, emulate=emulate) as meter:
        out = fn(*args, **kw)
    return out, meter.result
