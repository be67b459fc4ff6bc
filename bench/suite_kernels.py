"""Suite "kernels": column-mean attention and the three small SToP ops.

column_mean_attention (backend auto: Triton on CUDA) against
- eager: scores materialized, fp32 softmax, mean over heads and queries (what the published
  code does after ``output_attentions=True``);
- flash-colreduce (PyPI ``flash-colreduce``, CUDA only, when importable): per-head column
  mean, then the head mean added here;
- sdpa: one ``F.scaled_dot_product_attention`` forward over the same q/k/v, the yardstick
  (the attention forward the ViT runs anyway).
With lse, the row log-sum-exp is computed once outside the timed region, as a fused
attention forward would return it. The small ops (sink_score, penalized_topk,
adjacent_cosine, static_mask, and all of them in a row) run against their torch twins.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

import stop_fast

from .record import OURS, Case, SuiteResult, run_impl, skipped

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FULL = {"B": [8, 32, 64, 128, 256], "H": 16, "N": 729, "d": 72,
        "T": [32, 64, 256], "Np": 196, "D": 3584}
SMOKE = {"B": [1, 2], "H": 2, "N": 50, "d": 72, "T": [4, 8], "Np": 16, "D": 64}
TOPK, MU_S, TAU, MU_T = 40, 0.03, 0.8, 0.07   # k = VisionZip's 20 % budget at N = 196


def attention_inputs(B: int, H: int, N: int, d: int, dtype: torch.dtype, device: torch.device,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    return q, k, v


def row_lse(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, N) fp32 log-sum-exp of each scaled score row, a few frames at a time."""
    out = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    step = max(1, 2**28 // (q.shape[1] * q.shape[2] * k.shape[2]))
    for b in range(0, q.shape[0], step):   # chunked only to bound memory, outside timing
        s = torch.matmul(q[b:b + step].float(), k[b:b + step].float().transpose(-1, -2))
        out[b:b + step] = (s * scale).logsumexp(dim=-1)
    return out


def eager_column_mean(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.softmax(scores, dim=-1, dtype=torch.float32).mean(dim=(1, 2))


def flash_colreduce_fn():
    """flash-colreduce's entry point, or the reason it cannot be used."""
    try:
        mod = importlib.import_module("flash_colreduce")
        return mod.flash_colreduce, None
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return None, f"flash-colreduce not importable ({type(exc).__name__}: {exc})"


def column_mean_impls(q, k, v, lse, scale) -> dict:
    """name -> zero-argument callable (or a skip record) for one column-mean case."""
    impls = {
        OURS: lambda: stop_fast.column_mean_attention(q, k, scale=scale, lse=lse),
        "eager": lambda: eager_column_mean(q, k, scale),
    }
    fcr, why = flash_colreduce_fn()
    if q.device.type != "cuda":
        impls["flash-colreduce"] = skipped("flash-colreduce runs on CUDA only")
    elif fcr is None:
        impls["flash-colreduce"] = skipped(why)
    else:   # per-head (B, H, N) mean over queries in q's dtype; the head mean is ours to add
        impls["flash-colreduce"] = lambda: fcr(q, k, reduction="mean", scale=scale).float().mean(dim=1)
    impls["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, scale=scale)
    return impls


def small_op_inputs(T: int, N: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    attn = torch.softmax(torch.randn(T, N, generator=g) * 2, dim=-1).to(device)
    base = torch.randn(1, N, D, generator=g)
    x = (base + 0.4 * torch.randn(T, N, D, generator=g)).to(device=device, dtype=dtype)
    return attn, x


def small_op_impls(attn: torch.Tensor, x: torch.Tensor, backend: str, k: int) -> dict:
    sink = stop_fast.sink_score(attn, backend="torch")

    def combined():
        s = stop_fast.sink_score(attn, backend=backend)
        return (stop_fast.penalized_topk(attn, s, k, mu_s=MU_S, backend=backend),
                stop_fast.static_mask(x, s, tau=TAU, mu_t=MU_T, backend=backend))

    return {
        "sink_score": lambda: stop_fast.sink_score(attn, backend=backend),
        "penalized_topk": lambda: stop_fast.penalized_topk(attn, sink, k, mu_s=MU_S, backend=backend),
        "adjacent_cosine": lambda: stop_fast.adjacent_cosine(x, backend=backend),
        "static_mask": lambda: stop_fast.static_mask(x, sink, tau=TAU, mu_t=MU_T, backend=backend),
        "combined": combined,
    }


def _resolved(device: torch.device) -> str:
    from stop_fast.dispatch import resolve
    return resolve("auto", device)


def _max_diff(q, k, scale, lse) -> float | None:
    """Sanity check outside timing: ours vs eager (None when either fails, e.g. eager OOM;
    the timed runs then record why)."""
    try:
        ours = stop_fast.column_mean_attention(q, k, scale=scale, lse=lse)
        return float((ours - eager_column_mean(q, k, scale)).abs().max())
    except Exception:  # noqa: BLE001
        if q.device.type == "cuda":
            torch.cuda.empty_cache()
        return None


def _column_mean_cases(device, smoke, cfg) -> list[Case]:
    cases = []
    H, N, d = cfg["H"], cfg["N"], cfg["d"]
    scale = d ** -0.5
    for dname, dtype in DTYPES.items():
        for with_lse in (False, True):
            group = f"column_mean_attention {dname} {'with' if with_lse else 'no'} lse"
            for B in cfg["B"]:
                q, k, v = attention_inputs(B, H, N, d, dtype, device)
                lse = row_lse(q, k, scale) if with_lse else None
                case = Case("kernels", group, f"B={B}", B,
                            {"B": B, "H": H, "N": N, "d": d, "dtype": dname, "lse": with_lse,
                             "backend": _resolved(device)})
                case.params["max_abs_diff_vs_eager"] = _max_diff(q, k, scale, lse)
                for name, fn in column_mean_impls(q, k, v, lse, scale).items():
                    case.results[name] = fn if isinstance(fn, dict) else run_impl(fn, device, smoke=smoke)
                cases.append(case)
                del q, k, v, lse
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return cases


def _small_op_cases(device, smoke, cfg) -> list[Case]:
    cases = []
    N, D = cfg["Np"], cfg["D"]
    k = min(TOPK, N // 2)
    dname = "bf16"
    for T in cfg["T"]:
        attn, x = small_op_inputs(T, N, D, DTYPES[dname], device)
        ours, twin = small_op_impls(attn, x, "auto", k), small_op_impls(attn, x, "torch", k)
        for op in ours:
            case = Case("kernels", f"{op}", f"T={T}", T,
                        {"T": T, "N": N, "D": D, "k": k, "features_dtype": dname, "attn_dtype": "fp32",
                         "mu_s": MU_S, "tau": TAU, "mu_t": MU_T, "backend": _resolved(device)})
            case.results[OURS] = run_impl(ours[op], device, smoke=smoke)
            case.results["torch"] = run_impl(twin[op], device, smoke=smoke)
            cases.append(case)
    return cases


def run(device: torch.device, smoke: bool) -> SuiteResult:
    cfg = SMOKE if smoke else FULL
    res = SuiteResult("kernels")
    res.notes.append(f"ours = backend 'auto', which resolves to {_resolved(device)!r} on {device.type}")
    res.notes.append("input NaN/Inf checks are off while timing (stop_fast.input_checks(False)), "
                     "as in production serving; they cost one host sync per call")
    res.notes.append("column_mean_attention 'with lse': the row log-sum-exp is precomputed outside "
                     "the timed region (a fused attention forward returns it); baselines ignore it")
    res.cases += _column_mean_cases(device, smoke, cfg)
    res.cases += _small_op_cases(device, smoke, cfg)
    return res
