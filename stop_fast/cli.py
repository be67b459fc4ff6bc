"""The stop-fast command: run a Video LLM on a video with SToP, demo, bench."""
from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Sink-Token-aware Pruning (SToP) of video tokens for Video LLMs.

  stop-fast run VIDEO --model MODEL --prompt TEXT   answer a question about a video, with SToP
  stop-fast demo                                    SToP on a synthetic video, every backend
  stop-fast bench                                   benchmark suites (stop-fast bench --help)
  stop-fast report RESULTS...                       lmms-eval results of --model stop_fast → table + plot
"""


class _Fail(Exception):
    """An argument problem found before any work: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong and where to read more)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a fraction of the video tokens), got {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="stop-fast", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"stop-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,demo,bench,report}",
                                parser_class=_Parser)

    run = sub.add_parser("run", help="answer a question about a video file with a HF Video LLM + SToP",
                         description="Decode VIDEO with PyAV, sample --frames uniformly, and generate an answer "
                                     "with MODEL patched by apply_stop.")
    run.add_argument("video", help="video file (anything FFmpeg/PyAV decodes: mp4, mkv, webm, …)")
    run.add_argument("--model", required=True,
                     help="local directory or hub id of a LLaVA-OneVision / LLaVA-Video or Qwen2.5-VL "
                          "checkpoint in HF format (e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf)")
    run.add_argument("--prompt", required=True, help="the question or instruction about the video")
    run.add_argument("--method", default=None,
                     help="host pruning method (default: holitom; visionzip for Qwen2.5-VL)")
    run.add_argument("--retention", type=_ratio, default=0.1,
                     help="fraction of video tokens kept, in (0, 1] (default: 0.1)")
    run.add_argument("--frames", type=_positive, default=32,
                     help="frames sampled uniformly over the whole video (default: 32)")
    run.add_argument("--no-stop", action="store_true", help="run the host method without SToP's sink terms")
    run.add_argument("--compare", action="store_true",
                     help="also run the unpruned model and the host method without SToP; one table")
    run.add_argument("--max-new-tokens", type=_positive, default=64, help="answer length limit (default: 64)")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    run.add_argument("--dtype", default="auto",
                     help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16 or float32")
    run.add_argument("--viz", metavar="DIR", default=None,
                     help="write PNGs of sink scores, kept tokens, attention and segments to DIR")

    demo = sub.add_parser("demo", help="prune a seeded synthetic video with and without SToP",
                          description="A seeded synthetic video with planted sink tokens and moving objects, "
                                      "pruned with and without SToP on every usable backend and by every "
                                      "registered method. Timings: medians after warm-up.")
    demo.add_argument("--frames", type=_positive, default=16, help="frames T of the synthetic video (default: 16)")
    demo.add_argument("--grid", type=_positive, nargs=2, default=(14, 14), metavar=("H", "W"),
                      help="token grid per frame, at least 4x4 (default: 14 14, LLaVA-OneVision's pooled grid)")
    demo.add_argument("--dim", type=_positive, default=256, help="feature width D (default: 256)")
    demo.add_argument("--retention", type=_ratio, default=0.10,
                      help="fraction of tokens kept, in (0, 1] (default: 0.1)")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    demo.add_argument("--backends", nargs="+", default=None, choices=("reference", "torch", "triton"),
                      help="backends to time (default: every usable one)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic video (default: 0)")
    demo.add_argument("--viz", metavar="DIR", default=None,
                      help="write PNGs of the sink scores and kept tokens (HoliTom, with and without SToP) to DIR")
    sub.add_parser("bench", help="benchmark suites (see stop-fast bench --help)", add_help=False)

    report = sub.add_parser("report", help="lmms-eval result folders → Markdown table + accuracy-vs-retention plot",
                            description="Read every *_results.json of lmms-eval runs of --model stop_fast under "
                                        "RESULTS and write report.md and accuracy_vs_retention.png: one row per run "
                                        "and task (method, asked and measured retention, visual tokens, scoring + "
                                        "selection and prefill times, score), one line per method in the plot.")
    report.add_argument("results", nargs="+", help="lmms-eval --output_path folders (or *_results.json files)")
    report.add_argument("--out", default=None, help="where to write report.md and the plot (default: the first RESULTS "
                                                    "folder)")
    report.add_argument("--metric", default=None, help="the score to report (default: each task's first metric)")
    report.set_defaults(device=None)
    return parser


def _check_device(device: str | None) -> None:
    import torch
    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise _Fail(f"--device: unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _Fail(f"--device {device}: torch sees no CUDA device on this machine (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise _Fail(f"--device {device}: only cpu and cuda are supported")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:   # the bench engine parses its own arguments
        from stop_fast.bench import main as bench_main
        return bench_main(argv[1:])
    args = _parser().parse_args(argv)   # argparse: usage + one error line, exit 2
    try:
        _check_device(args.device)
        if args.command == "demo":
            if min(args.grid) < 4:
                raise _Fail(f"--grid must be at least 4 4, got {args.grid[0]} {args.grid[1]}")
            from stop_fast.demo import run_demo
            return run_demo(frames=args.frames, grid=tuple(args.grid), dim=args.dim, retention=args.retention,
                            device=args.device, backends=args.backends, seed=args.seed, viz=args.viz)
        if args.command == "report":
            from stop_fast.lmms_eval_plugin.report import run_report
            return run_report(args)
        from stop_fast.runner import run
        return run(args)
    except KeyboardInterrupt:
        print("stop-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the user gets one line, never a traceback
        return _report(args.command, exc)


def _report(command: str, exc: Exception) -> int:
    from stop_fast.lmms_eval_plugin.report import ReportError
    from stop_fast.runner import RunError
    from stop_fast.video import VideoError
    if isinstance(exc, (_Fail, RunError, VideoError, ReportError)):
        print(f"stop-fast {command}: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("STOP_FAST_TRACEBACK"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"stop-fast {command}: error: {type(exc).__name__}: {first} (set STOP_FAST_TRACEBACK=1 for the "
          "traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
