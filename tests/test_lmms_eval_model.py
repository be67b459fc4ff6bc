"""The ``stop_fast`` lmms-eval model in process: the entry point, ``--model_args`` checks, and
``lmms_eval.evaluator.simple_evaluate`` over an offline generation task and an offline
multiple-choice task (``tests/lmms_eval_tasks``) with every method on the tiny checkpoints; the
answers, token counts and losses are checked against ``stop-fast run``'s path and the model's own
loss."""
import math
import subprocess
import sys

import pytest
import torch

import lmms_clips as C

pytest.importorskip("lmms_eval", reason="lmms-eval is installed by `make test` (pip install --no-deps lmms-eval)")

from stop_fast.lmms_eval_plugin import model as M  # noqa: E402
from stop_fast.lmms_eval_plugin.settings import ModelArgsError  # noqa: E402

FRAMES = {"llava": 8, "llava196": 4, "qwen": 4}
RATIO = {"llava": 0.25, "llava196": 0.25, "qwen": 0.5}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return C.write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture
def offline(clips, monkeypatch):
    monkeypatch.chdir(clips)
    for key, value in C.offline_env(clips).items():
        monkeypatch.setenv(key, value)
    return clips


def _args(root, family: str, method: str, extra: str = "") -> str:
    args = f"pretrained={root / family},method={method},frames={FRAMES[family]},device=cpu"
    if method != "none":
        args += f",retention_ratio={RATIO[family]}"
    return args + (f",{extra.format(root=root)}" if extra else "")


_DONE = {}     # evaluations by their arguments, so later tests reuse the per-method runs


def evaluate(model_args: str, tasks=(C.GEN, C.MC), force_simple: bool = True, fresh: bool = False) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    key = (model_args, tuple(tasks), force_simple)
    if fresh or key not in _DONE:
        # include_defaults=False: only the test tasks are indexed (lmms-eval's 338 built-in ones
        # take about 14 s).
        manager = TaskManager("WARNING", include_path=str(C.TASKS), include_defaults=False)
        _DONE[key] = simple_evaluate(model="stop_fast", model_args=model_args, tasks=list(tasks), batch_size=1,
                                     task_manager=manager, log_samples=True, bootstrap_iters=0,
                                     verbosity="WARNING", force_simple=force_simple)
    return _DONE[key]


def _counts(results: dict, task: str) -> list[dict]:
    return [c for s in results["samples"][task] for c in s["token_counts"]]


# ----------------------------------------------------------------------------- registration


def test_entry_point_resolves_both_classes():
    from lmms_eval.models import get_model, get_model_manifest

    manifest = get_model_manifest("stop_fast")
    assert (manifest.simple_class_path, manifest.chat_class_path) == (
        "stop_fast.lmms_eval_plugin.model.StopFast", "stop_fast.lmms_eval_plugin.model.StopFastChat")
    assert get_model("stop_fast") is M.StopFastChat
    assert get_model("stop_fast", force_simple=True) is M.StopFast


def test_importing_stop_fast_does_not_import_lmms_eval():
    code = ("import sys, stop_fast, stop_fast.integrations, stop_fast.cli, stop_fast.lmms_eval_plugin.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lmms_eval', 'torchvision')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- --model_args


@pytest.mark.parametrize("args, named", [
    ("method=visionzip", "pretrained=None"),
    ("pretrained=/nonexistent/x", "method=None"),
    ("pretrained=/nonexistent/x,method=holitomm", "method='holitomm'"),
    ("pretrained=/nonexistent/x,method=holitom,retention_ratio=1.5", "retention_ratio=1.5"),
    ("pretrained=/nonexistent/x,method=holitom,retention_ratio=0", "retention_ratio=0"),
    ("pretrained=/nonexistent/x,method=holitom,retention_ratio=abc", "retention_ratio='abc'"),
    ("pretrained=/nonexistent/x,method=holitom,frames=0", "frames=0"),
    ("pretrained=/nonexistent/x,method=holitom,frames=2.5", "frames=2.5"),
    ("pretrained=/nonexistent/x,method=holitom,use_stop=maybe", "use_stop='maybe'"),
    ("pretrained=/nonexistent/x,method=holitom,dtype=fp8", "dtype='fp8'"),
    ("pretrained=/nonexistent/x,method=holitom,device=tpu", "device='tpu'"),
    ("pretrained=/nonexistent/x,method=holitom,max_new_tokens=0", "max_new_tokens=0"),
    ("pretrained=/nonexistent/x,method=holitom,tua=0.5", "tua"),
    ("pretrained=/nonexistent/x,method=holitom,center_penalty=-1", "center_penalty"),
    ("pretrained=/nonexistent/x,method=visionzip,use_stop=false,mu_s=0.1", "mu_s"),
    ("pretrained=/nonexistent/x,method=none,mu_s=0.1", "mu_s=0.1"),
    ("pretrained=/nonexistent/x,method=visionzip,global_head=/nowhere", "global_head='/nowhere'"),
])
def test_bad_model_args_name_the_argument_in_one_line(args, named):
    with pytest.raises(ModelArgsError) as err:
        M.StopFast.create_from_arg_string(args, {"batch_size": 1, "device": None, "max_batch_size": None})
    message = str(err.value)
    assert message.startswith("stop_fast --model_args: ") and named in message and "\n" not in message


def test_launcher_arguments_merge_with_model_args():
    with pytest.raises(ModelArgsError, match=r"device='cpu' in --model_args but --device cuda:1; give it once"):
        M.StopFast.create_from_arg_string("pretrained=/nonexistent/x,method=holitom,device=cpu", {"device": "cuda:1"})
    with pytest.raises(ModelArgsError, match=r"batch_size=4: expected 1"):
        M.StopFast.create_from_arg_string("pretrained=/nonexistent/x,method=holitom", {"batch_size": 4})


def test_unloadable_checkpoint(tmp_path):
    with pytest.raises(ModelArgsError, match=r"pretrained='.*nothing': cannot load a model config"):
        M.StopFast(pretrained=str(tmp_path / "nothing"), method="holitom", device="cpu")


# ----------------------------------------------------------------------------- simple_evaluate


CASES = [("llava", m, "") for m in ("none", "visionzip", "holitom", "fastvid", "flashvid")] + [
    ("llava196", "prunevid", ""),
    ("llava", "visionzip", "use_stop=false"), ("llava", "holitom", "mu_s=0.05,mu_t=0"),
    ("llava", "fastvid", "global_head={root}/siglip"),
    ("qwen", "none", "")] + [("qwen", m, "") for m in ("visionzip", "holitom", "fastvid", "flashvid")]


@pytest.mark.parametrize("family, method, extra", CASES,
                         ids=["-".join(filter(None, c)).replace("={root}/", "=") for c in CASES])
def test_simple_evaluate_every_method(offline, recorder, family, method, extra):
    results = evaluate(_args(offline, family, method, extra), fresh=True)      # fresh: the recorder watches
    frames = FRAMES[family]
    full = C.FULL[family](frames)
    for task, metric in ((C.GEN, "exact_match,none"), (C.MC, "acc,none")):
        assert 0.0 <= results["results"][task][metric] <= 1.0
        counts = _counts(results, task)
        assert len(counts) == (2 if task == C.GEN else 5)      # one request per question / per choice
        for c in counts:
            assert c["frames"] == frames and c["visual_tokens_before"] == full
            assert c["prefill_ms"] >= 0 and c["input_tokens"] > c["visual_tokens_after"] >= 1
            if method == "none":
                assert c["visual_tokens_after"] == full and c["prune_ms"] is None
            else:
                assert c["visual_tokens_after"] < full and c["prune_ms"] >= 0
        mean = sum(c["visual_tokens_after"] for c in counts) / len(counts)
        assert results["throughput"][f"avg_stop_fast/{task}/visual_tokens_after"] == pytest.approx(mean)
    gen = _counts(results, C.GEN)
    assert all(1 <= c["output_tokens"] <= 4 for c in gen)
    if method == "visionzip" and family == "llava":          # int(16·0.25) = 4 tokens per frame + newline
        assert {c["visual_tokens_after"] for c in gen} == {frames * 4 + 1}
    if method == "visionzip" and family == "qwen":           # half of the 48 merged tokens of each pair
        assert {c["visual_tokens_after"] for c in gen} == {full // 2}
    # The settings reached the pruner.
    if method == "none":
        assert recorder.calls == []
    else:
        # one pruning per request (2 questions, 5 choices), and LLaVA's check on a dummy video
        assert len(recorder.calls) == 7 + family.startswith("llava")
        settings = recorder.calls[-1][2]               # a real request (not the check at load time)
        assert settings["method"] == method and settings["retention_ratio"] == RATIO[family]
        given = dict(kv.split("=") for kv in extra.split(",") if kv)
        default = method != "prunevid"                   # PruneVid is a baseline without sink terms
        assert settings["use_stop"] is {"true": True, "false": False}.get(given.get("use_stop"), default)
        for key in set(given) - {"use_stop", "global_head"}:
            assert settings[key] == float(given[key])
        if family == "llava" and method == "fastvid":   # per-frame vectors: SigLIP's head when given
            glob = settings["global_features"]
            assert (glob is not None and glob.shape[-1] == 32) if "global_head" in given else glob is None
    # Multiple choice: the lowest loss wins, as lmms-eval scores it.
    hits = [min(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) == s["doc"]["label"]
            for s in results["samples"][C.MC]]
    assert results["results"][C.MC]["acc,none"] == pytest.approx(sum(hits) / len(hits))


def test_chat_class_reads_doc_to_messages(offline):
    results = evaluate(_args(offline, "qwen", "visionzip"), [C.GEN], force_simple=False)
    assert "StopFastChat (chat)" in results["config"]["model_backend"]
    simple = evaluate(_args(offline, "qwen", "visionzip"))
    answers = [[s["filtered_resps"] for s in r["samples"][C.GEN]] for r in (results, simple)]
    assert answers[0] == answers[1]           # same video, same text: the same prompt
    assert [c["visual_tokens_after"] for c in _counts(results, C.GEN)] == [48, 48]


def test_a_list_of_frames_is_read_like_the_file(offline):
    """Tasks that give a video as its frames (PIL images) get the same sampling and inputs."""
    frames = evaluate(_args(offline, "llava", "holitom"), [C.FRAME_LIST])
    files = evaluate(_args(offline, "llava", "holitom"))
    assert [s["filtered_resps"] for s in frames["samples"][C.FRAME_LIST]] == [
        s["filtered_resps"] for s in files["samples"][C.GEN]]
    untimed = [[{k: v for k, v in c.items() if not k.endswith("_ms")} for c in _counts(r, task)]
               for r, task in ((frames, C.FRAME_LIST), (files, C.GEN))]
    assert untimed[0] == untimed[1]


# ----------------------------------------------------------------------------- against stop-fast run


def _reference(root, family: str, method: str, question: dict, max_new: int = 4):
    """``stop-fast run``'s path (runner._load, video.read_frames/prepare_inputs, apply_stop)."""
    from stop_fast import apply_stop, runner
    from stop_fast import video as V

    device = torch.device("cpu")
    fam, model, tokenizer, pcfg, template = runner._load(str(root / family), device, torch.float32)
    if method != "none":
        apply_stop(model, method=method, retention_ratio=RATIO[family])
    frames, _, info = V.read_frames(question["video"], FRAMES[family], "floor" if fam == "llava" else "round")
    takes = "mm_token_type_ids" in __import__("inspect").signature(model.forward).parameters
    prepared = V.prepare_inputs(fam, frames, info, model.config, pcfg, tokenizer, template, question["question"],
                                takes_token_types=takes)
    return model, tokenizer, prepared


@pytest.mark.parametrize("family, method", [("llava", "holitom"), ("qwen", "visionzip")])
def test_answers_and_token_counts_match_stop_fast_run(offline, family, method):
    from stop_fast import runner

    results = evaluate(_args(offline, family, method))
    for sample, counts in zip(results["samples"][C.GEN], _counts(results, C.GEN)):
        model, tokenizer, prepared = _reference(offline, family, method, sample["doc"])
        ref = runner._generate(model, tokenizer, prepared.inputs, 4, torch.device("cpu"), method, prepared.video_tokens)
        answer = sample["filtered_resps"]
        answer = answer[0] if isinstance(answer, list) else answer     # one response per request
        assert answer.strip() == ref.answer.split(".")[0].strip()
        assert counts["visual_tokens_after"] == ref.video_tokens
        assert counts["input_tokens"] == ref.prefill_tokens and counts["output_tokens"] == ref.new_tokens


@pytest.mark.parametrize("method", ["none", "flashvid"])
def test_losses_are_the_models_own_cross_entropy(offline, method):
    """Each choice's loss is the model's own loss (labels on the continuation only) times the
    continuation length, on the pruned prompt."""
    results = evaluate(_args(offline, "llava", method))
    for sample in results["samples"][C.MC]:
        model, tokenizer, prepared = _reference(offline, "llava", method, sample["doc"])
        for choice, (loss, greedy) in zip(sample["doc"]["choices"], sample["filtered_resps"]):
            cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.cat((prepared.inputs["input_ids"], torch.tensor([cont])), 1)
            labels = torch.full_like(ids, -100)
            labels[0, -len(cont):] = torch.tensor(cont)
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                            pixel_values_videos=prepared.inputs["pixel_values_videos"])
            assert float(loss) == pytest.approx(float(out.loss) * len(cont), rel=1e-4)
            assert math.isfinite(float(loss)) and isinstance(greedy, bool)
