"""SToP does what it is for, on the seeded synthetic video with planted sinks and moving objects.

At 10 % retention, SToP keeps fewer planted-sink tokens than the plain host method and at
least as many object tokens. A token counts as kept at its ``positions`` entry (a merged
token at its centre/target location and first frame).
"""
import pytest
import torch

from stop_fast.pipelines import prune
from stop_fast.synthetic import make_video


def _video(device, scene_cut=None):
    return make_video(num_frames=16, grid=(14, 14), dim=64, metric_dim=32, num_objects=3,
                      num_sinks=4, scene_cut=scene_cut, seed=0, device=device)


def _kept(video, method, use_stop):
    metric = video.metric if method == "visionzip" else None
    out = prune(video.features, video.attention, method=method, retention_ratio=0.1,
                use_stop=use_stop, metric=metric)
    t, loc = out.positions[:, 0], out.positions[:, 1]
    sinks = int(torch.isin(loc, video.sink_locations).sum())
    objects = int(video.object_mask[t, loc].sum())
    return sinks, objects


@pytest.mark.parametrize("scene_cut", [None, 8])
@pytest.mark.parametrize("method", ["visionzip", "holitom"])
def test_stop_keeps_fewer_sinks(method, scene_cut, device):
    video = _video(device, scene_cut)
    plain, stop = _kept(video, method, False), _kept(video, method, True)
    assert stop[0] < plain[0], f"{method}: sinks kept with SToP {stop[0]}, plain {plain[0]}"


@pytest.mark.parametrize("scene_cut", [None, 8])
@pytest.mark.parametrize("method", ["visionzip", "holitom"])
def test_stop_keeps_objects(method, scene_cut, device):
    # Sinks draw more attention than objects in the generator, so plain top-k spends budget on
    # them; SToP must not lose object tokens while dropping the sinks.
    video = _video(device, scene_cut)
    plain, stop = _kept(video, method, False), _kept(video, method, True)
    assert stop[1] >= plain[1], f"{method}: objects kept with SToP {stop[1]}, plain {plain[1]}"
