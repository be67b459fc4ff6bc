"""Suite "traffic": bytes moved, kernel-launching ops and host syncs of every pipeline, counted
by :mod:`.traffic` (no timing), side by side with the published release when a checkout is
given (``--published PATH`` / ``STOP_FAST_PUBLISHED``).

Inputs are seeded synthetic videos (:func:`stop_fast.synthetic.make_video`: static background,
moving objects, planted sinks, a scene cut at T/2) at LLaVA-OneVision's shape (T = 32,
N = 196, D = 3584) and a Qwen2.5-VL-like one (N = 256), retention 10/15/20 %, with and
without SToP, fp32 and bf16, on the torch and Triton backends. Traffic is a multiple of the
feature tensor's bytes in its own dtype.

Feature width. Each video is made at a base width D0 and its features repeated along D up
to the width measured (:func:`video`): cosines, the distances over D and every selection are
then the same at every width, so a pipeline runs the same ops and its bytes are exactly
affine in D, bytes(D) = a·D + b. On a CPU the Triton kernels run in Triton's interpreter,
which is slow per program: there the Triton rows are measured at D0 and 2·D0 and the
multiple at the full width is that line's value (``extrapolated`` in the results; exact, as
the test suite checks against a third width). On CUDA they are measured at the full width.
"""
from __future__ import annotations

import traceback

import torch

import stop_fast
from stop_fast.pipelines.registry import METHODS as REGISTRY

from . import published as P
from .record import Case, SuiteResult, skipped
from .traffic import TrafficMeter

FULL = {"T": 32, "shapes": {"llava N=196": (14, 14), "qwen N=256": (16, 16)}, "D": 3584,
        "Dk": 72, "ratios": (0.10, 0.15, 0.20), "dtypes": (torch.float32, torch.bfloat16)}
SMOKE = {"T": 8, "shapes": {"llava N=196": (14, 14)}, "D": 32, "Dk": 8, "ratios": (0.10,),
         "dtypes": (torch.float32,), "default_only": True}
D0 = 128                                # base width of the synthetic features (3584 = 28·128)
# Budgets (issue 18): (max multiple, max ops) per method on the GPU path (Triton) and for the
# torch backend; host syncs are the README's table.
BUDGET_TRITON = {"visionzip": (1.5, 30), "holitom": (4.0, 80), "fastvid": (4.0, 80),
                 "flashvid": (4.0, 80), "prunevid": (4.0, 80)}
BUDGET_TORCH = (8.0, 120)
# H100 SXM: HBM3 bandwidth and a typical per-kernel launch cost, for the predicted times.
H100_BYTES_PER_S = 3.35e12
LAUNCH_S = 4e-6
IMPLS = ("ours torch", "ours triton", "published")


def budget(method: str, backend: str) -> tuple[float, int]:
    return BUDGET_TRITON[method] if backend == "triton" else BUDGET_TORCH


def video(T: int, grid, D: int, Dk: int, dtype: torch.dtype, device, seed: int = 0):
    """A synthetic video made at width D0, its features repeated to width D (a multiple of D0;
    other widths are made as they are)."""
    from stop_fast.synthetic import make_video
    width = D0 if D % D0 == 0 else D
    base = make_video(num_frames=T, grid=grid, dim=width, metric_dim=Dk, scene_cut=T // 2,
                      seed=seed, device=device, dtype=dtype)
    base.features = base.features.repeat(1, 1, D // width)
    return base


def meter_scaled(make, method: str, ratio: float, use_stop, backend: str, D: int) -> dict:
    """Traffic at width D from two measurements at D0 and 2·D0 (bytes are affine in D for
    the repeated-feature videos of :func:`video`): the D0 result with ``multiple`` and
    ``bytes`` replaced by the line's value at D; ops and syncs do not depend on D."""
    lo, hi = (meter_ours(make(w), method, ratio, use_stop, backend) for w in (D0, 2 * D0))
    if lo.get("status") != "ok" or hi.get("status") != "ok":
        return lo if lo.get("status") != "ok" else hi
    slope = (hi["bytes"] - lo["bytes"]) / D0                            # bytes per unit of D
    nbytes = lo["bytes"] + slope * (D - D0)
    ref = lo["reference_bytes"] * D // D0
    return {**lo, "bytes": nbytes, "reference_bytes": ref, "multiple": nbytes / ref,
            "extrapolated": f"from D = {D0} ({lo['multiple']:.3f}×) and {2 * D0} "
                            f"({hi['multiple']:.3f}×)"}


def _inputs(v, method: str) -> dict:
    spec = REGISTRY[method]
    kw = {"metric": v.metric} if spec.needs_metric else {}
    if spec.uses_global:                    # the SPEC §9 fallback: each frame's mean token
        kw["global_features"] = v.features.float().mean(dim=1)
    return kw


def meter_ours(v, method: str, ratio: float, use_stop, backend: str) -> dict:
    """Traffic of one ``stop_fast.prune`` call (on CUDA after an unmetered warm-up call)."""
    kw = _inputs(v, method)
    call = lambda: stop_fast.prune(v.features, v.attention, method=method,  # noqa: E731
                                   retention_ratio=ratio, use_stop=use_stop, backend=backend, **kw)
    if v.features.device.type == "cuda":
        call()                    # compile the kernels first (on a CPU nothing is compiled)
    with TrafficMeter(v.features) as m:
        kept = call().num_tokens
    return {"status": "ok", "kept_tokens": kept, **m.result.as_dict()}


def meter_published(root, v, method: str, ratio: float, use_stop) -> dict:
    prepare, run = P.load(root, method)
    ns = prepare(v.features, v.attention, ratio=ratio, use_stop=bool(use_stop),
                 metric=v.metric, global_features=_inputs(v, method).get("global_features"))
    torch.manual_seed(0)                    # its DPC-kNN adds noise from the global RNG
    with TrafficMeter(v.features) as m:
        out = run(ns)
    return {"status": "ok", "kept_tokens": out.numel() // out.shape[-1], **m.result.as_dict()}


def _guard(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - one failing case must not end the run
        return skipped(traceback.format_exception_only(type(exc), exc)[-1].strip()[:500], "error")


def _variants(method: str):
    return (True, False) if REGISTRY[method].uses_attention else (None,)


def run(device: torch.device, smoke: bool, published: str | None = None) -> SuiteResult:
    from stop_fast.dispatch import triton_usable

    cfg = SMOKE if smoke else FULL
    root = P.checkout(published)
    triton_ok, why = triton_usable(device)
    res = SuiteResult("traffic", plot=False)
    res.notes.append("multiple = bytes moved / bytes of the (T, N, D) features in their dtype; "
                     "ops = kernel launches (+ host↔device copies); syncs = host waits a CUDA "
                     "device would make (stop_fast.bench.traffic)")
    if not triton_ok:
        res.notes.append(f"ours triton: not measured ({why})")
    elif device.type == "cpu" and cfg["D"] > 2 * D0:
        res.notes.append(f"ours triton: Triton interpreter on CPU, measured at D = {D0} and "
                         f"{2 * D0} and extrapolated to D = {cfg['D']} (bytes are affine in D)")
    res.notes.append("published: " + (f"the release at {root}, loaded at run time" if root else
                                      f"not measured (no checkout: pass --published PATH or set "
                                      f"{P.ENV_VAR})"))
    for shape, grid in cfg["shapes"].items():
        for dtype in cfg["dtypes"]:
            def make(D, grid=grid, dtype=dtype):
                return video(cfg["T"], grid, D, cfg["Dk"], dtype, device)
            v = make(cfg["D"])
            for method in REGISTRY:
                if method == "prunevid" and grid != (14, 14):
                    continue                                   # SPEC §11: N = 196 only
                for ratio in cfg["ratios"]:
                    for stop in _variants(method)[:1 if cfg.get("default_only") else 2]:
                        res.cases.append(_case(shape, dtype, method, ratio, stop, v, make, root,
                                               triton_ok, device))
    res.tables = tables(res.cases, smoke)
    return res


def _case(shape, dtype, method, ratio, stop, v, make, root, triton_ok, device) -> Case:
    T, N, D = v.features.shape
    tag = {True: "SToP", False: "plain", None: "—"}[stop]
    case = Case("traffic", f"{method} {shape}", f"r={ratio:.2f} {tag} {str(dtype)[6:]}", T,
                {"method": method, "shape": shape, "T": T, "N": N, "D": D, "ratio": ratio,
                 "use_stop": stop, "dtype": str(dtype)[6:]})
    case.results["ours torch"] = _guard(meter_ours, v, method, ratio, stop, "torch")
    if not triton_ok:
        case.results["ours triton"] = skipped("Triton backend unavailable")
    elif device.type == "cpu" and D > 2 * D0:
        case.results["ours triton"] = _guard(meter_scaled, make, method, ratio, stop, "triton", D)
    else:
        case.results["ours triton"] = _guard(meter_ours, v, method, ratio, stop, "triton")
    case.results["published"] = (_guard(meter_published, root, v, method, ratio, stop) if root
                                 else skipped("no checkout of the published release given"))
    return case


def _cell(r: dict | None) -> list[str]:
    if not r or r.get("status") != "ok":
        return ["—", "—", "—", (r or {}).get("status", "—"), "—"]
    top = ", ".join(f"{t['op']} {t['multiple']:.2f}×" for t in r["top"][:3])
    return [f"{r['multiple']:.2f}×", str(r["ops"]), str(r["syncs"]), top, str(r["kept_tokens"])]


def tables(cases: list[Case], smoke: bool = False) -> list[tuple[str, list[str], list[list[str]]]]:
    """A per-case table (every implementation) and the budget summary per method/backend/dtype:
    the worst case over ratios, SToP on/off and shapes."""
    header = ["case", "setting", "impl", "multiple", "ops", "syncs", "top ops", "kept"]
    rows = [[c.group, c.name, impl, *_cell(c.results.get(impl))] for c in cases for impl in IMPLS
            if impl in c.results]
    summary: dict[tuple, list] = {}
    full_bytes = {}
    for c in cases:
        p = c.params
        size = torch.empty(0, dtype=getattr(torch, p["dtype"])).element_size()
        for impl in IMPLS:
            r = c.results.get(impl)
            if r and r.get("status") == "ok":
                key = (p["method"], impl, p["dtype"])
                summary.setdefault(key, []).append(r)
                full_bytes[key] = max(full_bytes.get(key, 0), p["T"] * p["N"] * p["D"] * size)
    sheader = ["method", "impl", "dtype", "max multiple", "max ops", "max syncs", "budget",
               "met", "H100 memory µs", "H100 launch µs", "with CUDA graphs µs"]
    srows = []
    for (method, impl, dtype), rs in summary.items():
        mult, ops, syncs = max(r["multiple"] for r in rs), max(r["ops"] for r in rs), \
            max(r["syncs"] for r in rs)
        line = [method, impl, dtype, f"{mult:.2f}×", str(ops), str(syncs)]
        if impl.startswith("ours"):
            bm, bo = budget(method, impl.split()[1])
            met = "yes" if mult <= bm and ops <= bo else "**no**"
            line += [f"≤ {bm}× / ≤ {bo} ops", "smoke" if smoke else met]
        else:
            line += ["—", "—"]
        feat = full_bytes[(method, impl, dtype)]        # at the full width, whatever was metered
        # A CUDA graph can hold the launches before the first sync (fixed shapes); after it the
        # shapes depend on the data, so those launches stay one by one.
        after = max(r["ops"] - (r["ops_before_sync"] if r.get("ops_before_sync") is not None
                                else r["ops"]) for r in rs)
        line += [f"{mult * feat / H100_BYTES_PER_S * 1e6:.1f}", f"{ops * LAUNCH_S * 1e6:.0f}",
                 f"1 graph + {after * LAUNCH_S * 1e6:.0f}"]
        srows.append(line)
    return [("budgets (worst case over ratios, SToP on/off, shapes)", sheader, srows),
            ("every case", header, rows)]

