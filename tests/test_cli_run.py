"""``stop-fast run`` end to end on tiny random checkpoints saved with their processor files,
and the torchvision-free preprocessing in :mod:`stop_fast.video` (equal to the HF video
processors wherever torchvision is importable)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models as tm
from stop_fast import cli
from stop_fast import video as V

BIN = Path(sys.executable).with_name("stop-fast")
PROMPT = "what happens in the video ?"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"llava": tm.save_llava(root / "llava"), "qwen": tm.save_qwen(root / "qwen"),
            "video": tm.write_mp4(root / "clip.mp4")}


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows by their first cell (continuation lines of wrapped cells are dropped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) >= 7 and cells[0] and cells[1].isdigit():
            rows[cells[0]] = cells
    return rows


def test_run_compare_llava_console_script(ckpt, tmp_path):
    if not BIN.exists():
        pytest.skip("the stop-fast console script is not installed (pip install -e .)")
    viz = tmp_path / "viz"
    res = subprocess.run([str(BIN), "run", str(ckpt["video"]), "--model", str(ckpt["llava"]), "--prompt", PROMPT,
                          "--frames", "8", "--retention", "0.25", "--compare", "--max-new-tokens", "4",
                          "--device", "cpu", "--viz", str(viz)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "160"})
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    rows = _rows(res.stdout)
    assert set(rows) == {"unpruned", "holitom", "holitom+SToP"}, res.stdout
    full = 8 * 16 + 1                         # 8 frames × 4×4 pooled tokens + newline
    assert int(rows["unpruned"][1]) == full
    for name in ("holitom", "holitom+SToP"):
        video, prefill = int(rows[name][1]), int(rows[name][2])
        assert 8 <= video <= 0.25 * 8 * 16 + 8 + 1   # HoliTom may round up one token per frame
        assert prefill - video == int(rows["unpruned"][2]) - full   # same text around the video
        assert float(rows[name][3]) > 0 and float(rows[name][4]) > 0
    pngs = sorted(p.name for p in viz.iterdir())
    assert pngs == ["run_attention_first_frames.png", "run_kept_tokens_holitom_without_vs_with_stop.png",
                    "run_segments_holitom.png", "run_sink_score_heatmap.png"], pngs
    assert all((viz / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_run_qwen_in_process(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    viz = tmp_path / "viz"
    rc = cli.main(["run", str(ckpt["video"]), "--model", str(ckpt["qwen"]), "--prompt", PROMPT, "--frames", "4",
                   "--retention", "0.5", "--max-new-tokens", "3", "--viz", str(viz)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = _rows(out.out)
    assert list(rows) == ["visionzip+SToP"], out.out
    full = 2 * 8 * 6                          # 4 frames → 2 temporal groups × 8×6 merged tokens
    assert int(rows["visionzip+SToP"][1]) == full // 2
    assert {p.name for p in viz.iterdir()} >= {"run_sink_score_heatmap.png",
                                               "run_kept_tokens_visionzip_without_vs_with_stop.png"}


def test_run_qwen_temporal_method(ckpt, capsys, monkeypatch):
    # Every host method reaches Qwen2.5-VL through `run` (here HoliTom), not only VisionZip.
    monkeypatch.setenv("COLUMNS", "160")
    rc = cli.main(["run", str(ckpt["video"]), "--model", str(ckpt["qwen"]), "--prompt", PROMPT, "--frames", "4",
                   "--retention", "0.5", "--max-new-tokens", "2", "--method", "holitom", "--compare"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = _rows(out.out)
    assert list(rows) == ["unpruned", "holitom", "holitom+SToP"], out.out
    assert int(rows["unpruned"][1]) == 2 * 8 * 6
    assert all(1 <= int(rows[name][1]) < 2 * 8 * 6 for name in ("holitom", "holitom+SToP"))


def _error(capsys, *argv):
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:                 # argparse rejects the value
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_run_errors_are_one_line(ckpt, tmp_path, capsys):
    llava, clip = str(ckpt["llava"]), str(ckpt["video"])
    assert "no such file" in _error(capsys, "run", str(tmp_path / "missing.mp4"), "--model", llava, "--prompt", "p")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    assert "decode" in _error(capsys, "run", str(bad), "--model", llava, "--prompt", "p")
    assert "12 frames, fewer than the 40" in _error(capsys, "run", clip, "--model", llava, "--prompt", "p",
                                                     "--frames", "40")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "not supported" in _error(capsys, "run", clip, "--model", str(other), "--prompt", "p", "--frames", "4")
    assert "cannot load" in _error(capsys, "run", clip, "--model", str(tmp_path / "nothing"), "--prompt", "p",
                                   "--frames", "4")
    assert "method must be one of" in _error(capsys, "run", clip, "--model", llava, "--prompt", "p",
                                             "--frames", "4", "--method", "nope")
    # PruneVid reads a 14×14 grid; the tiny Qwen2.5-VL merges to 8×6 per temporal group.
    assert "N = 196" in _error(capsys, "run", clip, "--model", str(ckpt["qwen"]), "--prompt", "p",
                               "--frames", "4", "--method", "prunevid")
    assert "retention" in _error(capsys, "run", clip, "--model", llava, "--prompt", "p", "--retention", "1.5")


# ----------------------------------------------------------------------------- preprocessing

def test_sample_indices():
    assert V.sample_indices(12, 4) == [0, 3, 7, 11]            # np.linspace(0, 11, 4, dtype=int)
    assert V.sample_indices(12, 4, "round") == [0, 4, 7, 11]
    assert V.sample_indices(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(V.VideoError):
        V.sample_indices(3, 4)


def test_decoded_frames_match_the_written_ones(ckpt):
    frames, idx, info = V.read_frames(ckpt["video"], 6)
    assert (info.frames, info.width, info.height) == (12, 64, 48) and frames.shape == (6, 48, 64, 3)
    assert np.abs(frames.astype(int) - tm.frames()[idx].astype(int)).mean() < 8   # lossy codec


def test_processor_config_lookup_order(tmp_path):
    nested = {"video_processor": {"size": {"height": 10, "width": 10}}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 100, "max_pixels": 900}))
    assert V.processor_config(str(tmp_path), "qwen")["size"] == {"shortest_edge": 100, "longest_edge": 900}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"size": {"height": 20, "width": 20}}))
    assert V.processor_config(str(tmp_path), "llava")["size"] == {"height": 20, "width": 20}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    cfg = V.processor_config(str(tmp_path), "llava")
    assert cfg["size"] == {"height": 10, "width": 10} and cfg["image_std"] == V.CLIP_STD   # class default


def test_qwen_patches_by_hand():
    """Odd frame count → last frame repeated; patch order (t, h/m, w/m, m, m, C, tp, p, p)."""
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    cfg = {**V._DEFAULTS["qwen"], "patch_size": 4, "merge_size": 2, "do_resize": False}
    pixels, grid = V.qwen_pixels(frames, cfg)
    assert grid.tolist() == [[2, 4, 6]] and pixels.shape == (48, 3 * 2 * 16)
    x = V._normalize(torch.from_numpy(frames).permute(0, 3, 1, 2), cfg)
    x = torch.cat((x, x[-1:]))                                      # (4, 3, 16, 24)
    t, hm, wm, i, j = 1, 0, 2, 1, 0                                 # one patch, located by hand
    row = ((t * 2 + hm) * 3 + wm) * 4 + i * 2 + j
    r, c = (hm * 2 + i) * 4, (wm * 2 + j) * 4
    expect = x[t * 2:t * 2 + 2, :, r:r + 4, c:c + 4].permute(1, 0, 2, 3).reshape(-1)
    assert torch.equal(pixels[row], expect)


def _torchvision():
    try:
        import torchvision  # noqa: F401
        from transformers import AutoProcessor
        return AutoProcessor
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torchvision built for another torch
        pytest.skip(f"the HF video processors need a working torchvision ({type(exc).__name__}: {exc})")


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_inputs_equal_the_hf_processor(ckpt, family, tmp_path):
    """Pixels, grid, second_per_grid_ts and prompt ids equal AutoProcessor's, on frames that
    need resizing (60×44) and, for Qwen, an odd frame count."""
    AutoProcessor = _torchvision()
    from transformers import AutoConfig, AutoTokenizer
    path = str(ckpt[family])
    frames = tm.frames(7, 44, 60, seed=3)
    info = V.VideoInfo(frames=21, fps=8.0, width=60, height=44)
    idx = V.sample_indices(21, 7, "round")
    tok, config = AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
    mine = V.prepare_inputs(family, frames, info, config, V.processor_config(path, family), tok,
                            V.chat_template(path, tok), PROMPT, takes_token_types=family == "qwen").inputs
    proc = AutoProcessor.from_pretrained(path)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}],
                                    tokenize=False, add_generation_prompt=True)
    extra = {"video_metadata": [{"total_num_frames": 21, "fps": 8.0, "frames_indices": idx}]} if family == "qwen" else {}
    hf = proc(text=[text], videos=[frames], return_tensors="pt", **extra)
    assert set(hf) == set(mine)
    for key, value in hf.items():
        assert torch.equal(torch.as_tensor(value), mine[key]), key
