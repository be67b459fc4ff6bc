"""Ahead-of-time compile check of every Triton kernel for GPUs that need not be present.

    python -m stop_fast.kernels.aot [--targets 86 90] [--subset full|quick] [--json P] [--md P]

Each launcher (``launch`` of every kernel module) is called on ``meta`` tensors of the
real model shapes (SPEC §1: head dim 72/80, N = 196/729/4096, D = 3584, T = 32/64) with
each kernel swapped for a recorder, so the arguments, constexprs and launch options are
exactly what a GPU run passes, and nothing is allocated. Arguments are specialized with the
rules of Triton's JIT (pointer dtype; ints equal to 1 become constexprs; pointers and ints
divisible by 16 get ``tt.divisibility``), every autotune config is expanded from the
kernel's own config list, identical compiles are merged, and each is compiled with
``triton.compile`` for ``GPUTarget("cuda", arch, 32)``. Records carry the shared memory
the kernel requests at launch (``metadata.shared``) against the target's per-block opt-in
limit, and registers / spills from the ``ptxas -v`` log. Needs the ``ASTSource(constexprs=)``
API of Triton 3.3+ (checked with 3.9; older releases are refused with a message) and
``TRITON_INTERPRET`` unset or 0; uses a fresh private Triton cache so every compile runs
ptxas and its log is complete. Exit status: 0 all compiled and fit, 1 otherwise, 2 unusable.
"""
import argparse
import contextlib
import datetime
import importlib
import inspect
import io
import json
import os
import re
import sys
import tempfile
import time

import torch
import triton

from ._aot_merging import merging_scenarios

# Per-block shared memory opt-in limits (bytes): cudaDevAttrMaxSharedMemoryPerBlockOptin.
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
GPU_NAME = {80: "A100", 86: "RTX A6000 / RTX 30xx", 89: "L40 / RTX 40xx", 90: "H100"}
DEFAULT_TARGETS = (86, 90)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64",
       torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8", torch.bool: "u1"}
MODULES = ("column_mean_attention", "sink_score", "penalized_topk", "temporal_threshold",
           "merge_tokens", "visionzip_plan", "frame_gram", "knn_density", "gram", "project",
           "adts", "dpc", "flashvid_tree", "flashvid_layout", "segment_stats")


def _module(name):
    # importlib, not `from . import`: the package re-binds these names to the functions.
    return importlib.import_module(f"{__package__ or 'stop_fast.kernels'}.{name}")


def check_api():
    """Raise RuntimeError unless this Triton has the AOT API used here and is not interpreting."""
    from triton.compiler import ASTSource
    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        raise RuntimeError(
            f"triton {triton.__version__}: ASTSource has no 'constexprs' argument (an older "
            "'constants'/AttrsDescriptor API); stop_fast.kernels.aot needs Triton 3.3 or newer")
    if _module("_utils").INTERPRET or not hasattr(triton.runtime, "JITFunction") or \
            not isinstance(_module("sink_score")._sink_kernel, triton.runtime.JITFunction):
        raise RuntimeError("AOT compilation needs compiled kernels: run with TRITON_INTERPRET "
                           "unset or 0 (under the interpreter @triton.jit returns interpreted "
                           "functions)")


def kernels() -> dict:
    """Every kernel: module-level JITFunction / Autotuner named ``*_kernel``, by name."""
    found = {}
    for mod in map(_module, MODULES):
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and isinstance(
                    obj, (triton.runtime.JITFunction, triton.runtime.Autotuner)):
                found[name] = (mod, obj)
    return found


def specialize(v):
    """(signature type, divisible by 16) of one argument, by the rules of Triton's JIT."""
    if isinstance(v, torch.Tensor):
        return "*" + _TY[v.dtype], v.data_ptr() % 16 == 0
    if v is None or isinstance(v, (str, triton.language.dtype)):
        return "constexpr", False
    if isinstance(v, bool):
        return "u1", False
    if isinstance(v, int):
        if v == 1:
            return "constexpr", False
        ty = "i32" if -2**31 <= v < 2**31 else "i64" if -2**63 <= v < 2**63 else "u64"
        return ty, v % 16 == 0
    if isinstance(v, float):
        return "fp32", False
    raise TypeError(f"cannot specialize argument of type {type(v).__name__}")


class _Recorder:
    """Stands in for a kernel object: ``k[grid](*args, **kw)`` records instead of launching."""

    def __init__(self, name, kernel, calls):
        self.name, self.kernel, self.calls = name, kernel, calls

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((self.name, self.kernel, args, kw))


@contextlib.contextmanager
def _recording(calls):
    saved = kernels()
    for name, (mod, obj) in saved.items():
        setattr(mod, name, _Recorder(name, obj, calls))
    try:
        yield
    finally:
        for name, (mod, obj) in saved.items():
            setattr(mod, name, obj)


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _scenarios(dtype):
    """(label, thunk) pairs: each thunk runs a launcher on meta tensors of a real shape."""
    cma, sink = _module("column_mean_attention"), _module("sink_score")
    topk, temp = _module("penalized_topk"), _module("temporal_threshold")
    merge, vzp = _module("merge_tokens"), _module("visionzip_plan")
    gram, knn = _module("frame_gram"), _module("knn_density")
    ty = _TY[dtype]
    # SigLIP (LLaVA-OneVision/Video: 729 tokens, 16 × 72, B = 32 frames, "bhnd", one head
    # split as on an A6000) and Qwen2.5-VL's ViT (16 × 80, "bnhd" view, two splits as on H100).
    qk72 = _meta(32, 16, 729, 72, dtype=dtype)
    qk80 = _meta(16, 1024, 16, 80, dtype=dtype).permute(0, 2, 1, 3)
    yield f"{ty} B=32 H=16 N=729 d=72 bhnd S=1", lambda: cma.launch(qk72, qk72, 72**-0.5, None, 1)
    yield f"{ty} B=16 H=16 N=1024 d=80 bnhd S=2", lambda: cma.launch(qk80, qk80, 80**-0.5, None, 2)
    for n in (196, 729, 4096):
        a, s = _meta(32, n, dtype=dtype), _meta(n, dtype=dtype)
        f = _meta(32, n, 3584, dtype=dtype)
        yield f"{ty} T=32 N={n}", lambda a=a: sink.launch(a, 1.1, 1e-12)
        yield f"{ty} T=32 N={n} k={n // 4}", \
            lambda a=a, s=s: topk.launch(a, s, a.shape[1] // 4, 1.0)
        yield f"{ty} T=32 N={n} k={n // 4} D=3584 gather", \
            lambda a=a, s=s, f=f: topk.launch(a, s, a.shape[1] // 4, 1.0, f)
    for n in (196, 729):
        for t in (32, 64):
            x, s = _meta(t, n, 3584, dtype=dtype), _meta(n, dtype=dtype)
            bounds = torch.zeros(4, 2, dtype=torch.int64, device="meta")
            yield f"{ty} T={t} N={n} D=3584 cosine", lambda x=x: temp.launch_cosine(x)
            yield f"{ty} T={t} N={n} D=3584 static", \
                lambda x=x, s=s: temp.launch_static(x, s, .9, .1)
            yield f"{ty} T={t} N={n} D=3584 segment S=4", \
                lambda x=x, s=s, b=bounds: temp.launch_segment(x, s, b, .9, .1)
    # Merging: T·N rows of width 3584 into 640 outputs, in the input dtype and in fp32.
    x = _meta(32, 196, 3584, dtype=dtype)
    idx, w = _meta(6272, dtype=torch.int64), _meta(6272)
    offsets = _meta(641, dtype=torch.int64)
    for out in (None, torch.float32):
        yield f"{ty} T=32 N=196 D=3584 M=640 merge out={_TY[out or dtype]}", \
            lambda out=out: merge.launch(x, idx, w, offsets, out)
    # VisionZip's layout: LLaVA (N = 196, S = 20…50), Qwen2.5-VL (N = 256), up to MAX_N = 512.
    for n, dk, S in ((196, 72, 20), (196, 72, 50), (256, 80, 25), (512, 72, 51)):
        a, s = _meta(32, n), _meta(n)
        m = _meta(32, n, dk, dtype=dtype)
        tg = torch.zeros(32, S - S * 54 // 64, dtype=torch.int64, device="meta")
        yield f"{ty} T=32 N={n} Dk={dk} S={S} visionzip plan", \
            lambda a=a, s=s, m=m, tg=tg, S=S: vzp.launch(a, s, .03, S * 54 // 64, tg, m, (0, 1))
    # Gram matrices: each frame's own distances, and dots against 35 key rows.
    for n in (196, 256):
        x = _meta(32, n, 3584, dtype=dtype)
        keys = torch.zeros(32, 35, dtype=torch.int64, device="meta")
        yield f"{ty} T=32 N={n} D=3584 gram distance", lambda x=x: gram.launch(x, None, "distance")
        yield f"{ty} T=32 N={n} D=3584 K=35 gram", lambda x=x, k=keys: gram.launch(x, k, "dot")
        yield f"{ty} T=32 N={n} D=3584 K=35 gram unit keys", \
            lambda x=x, k=keys: gram.launch(x, k, "unit_keys")
    # Density peaks of sets from distances (dtype-independent: fp32 distances).
    for n, sets in ((184, 32), (256, 32), (1024, 4)):
        d2 = _meta(sets, n, n)
        mem = torch.zeros(sets, n, dtype=torch.int64, device="meta")
        yield f"fp32 B={sets} n={n} knn density", lambda d2=d2, mem=mem: knn.launch(d2, mem, 4, 1 / 3584)
    yield from merging_scenarios(dtype, _module, _meta, _TY[dtype])


_OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _expand(name, kernel, args, kw):
    """One compile job per autotune config (one for a plain kernel)."""
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    params = dict(zip(fn.arg_names, args))
    params.update({k: v for k, v in kw.items() if k in fn.arg_names})
    options = {k: v for k, v in kw.items() if k not in fn.arg_names}
    configs = kernel.configs if isinstance(kernel, triton.runtime.Autotuner) else [None]
    for cfg in configs:
        p, o = dict(params), dict(options)
        if cfg is not None:
            p.update(cfg.kwargs)
            o.update({k: getattr(cfg, k) for k in _OPTION_KEYS
                      if getattr(cfg, k, None) is not None})
            if o.get("num_ctas") == 1:   # the default; keeps labels and merge keys short
                del o["num_ctas"]
        sig, constexprs, divisible = {}, {}, []
        for i, arg in enumerate(fn.arg_names):
            v = p[arg]
            ty, div = ("constexpr", False) if fn.params[i].is_constexpr else specialize(v)
            sig[arg] = ty
            if ty == "constexpr":
                constexprs[arg] = v
            elif div:
                divisible.append(i)
        tuned = set(cfg.kwargs) if cfg is not None else set()
        config = " ".join([f"{k}={p[k]}" for k in fn.arg_names if k in tuned] +
                          [f"{k}={v}" for k, v in sorted(o.items())])
        shape_consts = " ".join(f"{k}={v}" for k, v in constexprs.items()
                                if k not in tuned and fn.params[fn.arg_names.index(k)].is_constexpr)
        yield dict(kernel=name, fn=fn, signature=sig, constexprs=constexprs,
                   divisible=divisible, options=o, config=config, constexpr_label=shape_consts,
                   autotuned=cfg is not None)


def jobs(subset: str = "full") -> list:
    """Unique compile jobs; ``quick``: one per kernel and dtype, spread over the full list."""
    if subset not in ("full", "quick"):
        raise ValueError(f"subset: expected 'full' or 'quick', got {subset!r}")
    check_api()
    merged, per_dtype = {}, {}
    for dtype in DTYPES:
        for label, thunk in _scenarios(dtype):
            calls = []
            with _recording(calls):
                thunk()
            for call in calls:
                for job in _expand(*call):
                    key = (job["kernel"], repr(job["signature"]), repr(job["constexprs"]),
                           repr(job["divisible"]), repr(sorted(job["options"].items())))
                    job = merged.setdefault(key, dict(job, variants=[], dtypes=[]))
                    if label not in job["variants"]:
                        job["variants"].append(label)
                    if _TY[dtype] not in job["dtypes"]:
                        job["dtypes"].append(_TY[dtype])
                    per_dtype.setdefault((job["kernel"], dtype), [])
                    if job not in per_dtype[(job["kernel"], dtype)]:
                        per_dtype[(job["kernel"], dtype)].append(job)
    missing = set(kernels()) - {j["kernel"] for j in merged.values()}
    if missing:
        raise RuntimeError(f"kernels without an AOT scenario: {sorted(missing)}")
    if subset == "full":
        return list(merged.values())
    picked = []
    for (name, dtype), js in per_dtype.items():
        job = js[DTYPES.index(dtype) * len(js) // len(DTYPES)]
        if job not in picked:
            picked.append(job)
    return picked


def _ptxas_info(log: str) -> dict:
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, log)) else None  # noqa: E731
    return dict(registers=num(r"Used (\d+) registers"), stack_bytes=num(r"(\d+) bytes stack frame"),
                spill_stores=num(r"(\d+) bytes spill stores"),
                spill_loads=num(r"(\d+) bytes spill loads"))


def compile_job(job: dict, arch: int) -> dict:
    """Compile one job for sm_<arch>; a record (JSON-ready) with ok/error and resources."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    limit = SMEM_LIMIT.get(arch)
    rec = dict(kernel=job["kernel"], variant="; ".join(job["variants"]), dtypes=job["dtypes"],
               constexprs=job["constexpr_label"], config=job["config"],
               autotuned=job["autotuned"], target=f"sm_{arch}", ok=False, error=None,
               shared_bytes=None, smem_limit=limit, fits=None, registers=None,
               stack_bytes=None, spill_stores=None, spill_loads=None)
    attrs = {(i,): [["tt.divisibility", 16]] for i in job["divisible"]}
    src = ASTSource(fn=job["fn"], signature=job["signature"], constexprs=job["constexprs"],
                    attrs=attrs)
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):   # ptxas -v log (TRITON_DUMP_PTXAS_LOG)
            c = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=job["options"])
    except Exception as e:  # noqa: BLE001 - any compiler failure is a result to report
        msg = str(e).strip().splitlines()
        rec["error"] = f"{type(e).__name__}: {' | '.join(msg[:6])}"[:800]
        return rec
    finally:
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
    rec.update(ok=True, shared_bytes=int(c.metadata.shared), **_ptxas_info(log.getvalue()))
    rec["fits"] = None if limit is None else rec["shared_bytes"] <= limit
    return rec


@contextlib.contextmanager
def _fresh_cache():
    """Private Triton cache (every compile runs ptxas, whose log is then captured)."""
    keys = ("TRITON_CACHE_DIR", "TRITON_DUMP_PTXAS_LOG")
    saved = {k: os.environ.get(k) for k in keys}
    with tempfile.TemporaryDirectory(prefix="stop_fast_aot_") as tmp:
        os.environ.update(TRITON_CACHE_DIR=tmp, TRITON_DUMP_PTXAS_LOG="1")
        try:
            yield
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def run(targets=DEFAULT_TARGETS, subset="full", progress=None) -> list:
    """Compile every job for every target; list of records."""
    todo = jobs(subset)
    records = []
    with _fresh_cache():
        for arch in targets:
            for job in todo:
                records.append(compile_job(job, int(arch)))
                if progress:
                    progress(records[-1], len(records), len(todo) * len(targets))
    return records


def environment() -> dict:
    return dict(date=datetime.date.today().isoformat(), triton=triton.__version__,
                torch=torch.__version__, python=sys.version.split()[0],
                gpu_present=torch.cuda.is_available(),
                note="ahead-of-time compiles (triton.compile with an explicit GPUTarget); "
                     "no kernel was run and nothing was timed")


def markdown(records: list, env: dict) -> str:
    lines = [f"# Ahead-of-time compile report ({env['date']})", "",
             f"triton {env['triton']}, torch {env['torch']}, python {env['python']}. "
             f"{env['note'][0].upper()}{env['note'][1:]}; GPU present: {env['gpu_present']}.", ""]
    lines += ["## Summary", "", "| target | kernel | compiles | failed | max shared B (limit) "
              "| over limit | max regs | spilling compiles (max spill stores B) |",
              "|---|---|---|---|---|---|---|---|"]
    for tgt in sorted({r["target"] for r in records}):
        for name in dict.fromkeys(r["kernel"] for r in records):
            rs = [r for r in records if r["target"] == tgt and r["kernel"] == name]
            ok = [r for r in rs if r["ok"]]
            spill = [r["spill_stores"] for r in ok if r["spill_stores"]]
            lines.append(
                f"| {tgt} | {name} | {len(rs)} | {len(rs) - len(ok)} | "
                f"{max((r['shared_bytes'] for r in ok), default='-')} ({rs[0]['smem_limit']}) | "
                f"{sum(r['fits'] is False for r in ok)} | "
                f"{max((r['registers'] or 0 for r in ok), default='-')} | "
                f"{len(spill)}" + (f" ({max(spill)})" if spill else "") + " |")
    lines.append("")
    for tgt in sorted({r["target"] for r in records}):
        rs = [r for r in records if r["target"] == tgt]
        arch = int(tgt[3:])
        bad = [r for r in rs if not r["ok"] or r["fits"] is False]
        lines += [f"## {tgt} ({GPU_NAME.get(arch, '?')}, shared-memory limit "
                  f"{SMEM_LIMIT.get(arch, '?')} B/block)", "",
                  f"{len(rs)} compiles, {len(rs) - len(bad)} compiled and fit, {len(bad)} failed "
                  "or over the limit.", "",
                  "| kernel | variant | constexprs | config | ok | shared B | fits | regs | "
                  "spill st/ld B |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            spill = "" if r["spill_stores"] is None else f"{r['spill_stores']}/{r['spill_loads']}"
            ok = "yes" if r["ok"] else f"**no**: {r['error']}"
            fits = {True: "yes", False: "**no**", None: "?"}[r["fits"]]
            lines.append(f"| {r['kernel']} | {r['variant']} | {r['constexprs']} | {r['config']} "
                         f"| {ok} | {r['shared_bytes'] or 0} | {fits} | {r['registers'] or ''} "
                         f"| {spill} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stop_fast.kernels.aot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=[str(a) for a in DEFAULT_TARGETS],
                    help="compute capabilities, e.g. 86 90 (or sm_86)")
    ap.add_argument("--subset", choices=("full", "quick"), default="full")
    ap.add_argument("--json", help="write records and environment as JSON here")
    ap.add_argument("--md", help="write a Markdown report here")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        targets = [int(t.lower().removeprefix("sm_")) for t in a.targets]
    except ValueError:
        ap.error(f"--targets: expected compute capabilities like 86 90, got {a.targets}")
    try:
        check_api()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def progress(r, i, n):
        if not a.quiet:
            status = "ok" if r["ok"] and r["fits"] is not False else "FAIL"
            print(f"[{i}/{n}] {r['target']} {r['kernel']} {r['config']} ({r['variant']}): "
                  f"{status} shared={r['shared_bytes']} regs={r['registers']} "
                  f"{r['compile_s']}s" + (f"\n    {r['error']}" if r["error"] else ""), flush=True)

    records = run(targets, a.subset, progress)
    env = environment()
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(dict(environment=env, targets=targets, subset=a.subset, records=records),
                      f, indent=1)
    if a.md:
        with open(a.md, "w", encoding="utf-8") as f:
            f.write(markdown(records, env))
    bad = [r for r in records if not r["ok"] or r["fits"] is False]
    print(f"{len(records)} compiles, {len(bad)} failed or over the shared-memory limit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
