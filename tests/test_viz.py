"""stop_fast.viz: the figures show the records' data, and PNGs are written atomically."""
import os

import numpy as np
import pytest

import stop_fast as sf
from stop_fast import viz
from stop_fast.synthetic import make_video


@pytest.fixture(scope="module")
def records():
    video = make_video(num_frames=6, grid=(6, 6), dim=16, seed=1)
    out = {s: viz.Record(sf.prune(video.features, video.attention, method="holitom", retention_ratio=0.25,
                                  use_stop=s), video.attention, video.grid) for s in (False, True)}
    frames = np.random.default_rng(0).integers(0, 255, (6, 30, 30, 3), dtype=np.uint8)
    return out, frames


def test_figures_show_the_data(records):
    recs, frames = records
    figs = viz.figures(frames, stop=recs[True], plain=recs[False])
    assert set(figs) == {"sink_score_heatmap", "kept_tokens_holitom_without_vs_with_stop",
                         "attention_first_frames", "segments_holitom"}
    heat = figs["sink_score_heatmap"].axes[0].images[1].get_array()
    assert np.allclose(heat, recs[True].pruned.sink.numpy().reshape(6, 6))
    kept = figs["kept_tokens_holitom_without_vs_with_stop"]
    rows = viz._frame_rows(6, 3)
    for j, s in enumerate((False, True)):        # one outlined cell per kept token on the frames shown
        pos = recs[s].pruned.positions[:, 0].numpy()
        drawn = sum(len(ax.patches) for ax in kept.axes[j::2][:len(rows)])
        assert drawn == sum(int((pos == t).sum()) for t in rows)
    att = figs["attention_first_frames"].axes[0].images[1].get_array()
    assert np.allclose(att, recs[True].attention[0].numpy().reshape(6, 6))
    no_scores = viz.figures(None, stop=viz.Record(recs[True].pruned, None, (6, 6)))   # e.g. PruneVid
    assert "attention_first_frames" not in no_scores and "sink_score_heatmap" in no_scores


def test_save_is_atomic(records, tmp_path, monkeypatch):
    recs, frames = records
    paths = viz.save(viz.figures(frames, stop=recs[True]), tmp_path, prefix="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert all(p.name.startswith("x_") and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in paths)   # not mkstemp's 0600

    def broken(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        viz.save(viz.figures(frames, stop=recs[True]), tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == []      # no half-written or temporary file left
