"""The reference against small cases computed by hand (SPEC §2–§8)."""
import math

import torch

from stop_fast import reference as R
from stop_fast.pipelines.holitom_reference import holitom_segments


def test_column_mean_attention_uniform_and_two_keys():
    q = torch.zeros(1, 2, 3, 4)
    k = torch.randn(1, 2, 5, 4)
    torch.testing.assert_close(R.column_mean_attention(q, k), torch.full((1, 5), 0.2))
    # d = 1, scale 1: scores (0, ln 3) → softmax (1/4, 3/4) for every query and head.
    q = torch.ones(1, 1, 2, 1)
    k = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 2, 1)
    torch.testing.assert_close(R.column_mean_attention(q, k, scale=1.0), torch.tensor([[0.25, 0.75]]))


def test_column_mean_attention_mean_over_heads():
    q = torch.ones(1, 2, 1, 1)
    k = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(1, 2, 2, 1)
    # head 0 gives (1/4, 3/4), head 1 gives (1/2, 1/2): mean (3/8, 5/8).
    torch.testing.assert_close(R.column_mean_attention(q, k, scale=1.0), torch.tensor([[0.375, 0.625]]))


def test_sink_score_hand_values():
    attn = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    torch.testing.assert_close(R.sink_score(attn, gamma=1.0), torch.tensor([0.0, 0.5, 1.0]))
    # γ = 2: m² = (1, 4, 9) → (0, 3/8, 1).
    torch.testing.assert_close(R.sink_score(attn, gamma=2.0), torch.tensor([0.0, 0.375, 1.0]))
    assert torch.equal(R.sink_score(torch.full((3, 4), 0.25)), torch.zeros(4))


def test_penalized_topk_penalty_and_ties():
    attn = torch.tensor([[0.5, 0.375, 0.25]])
    sink = torch.tensor([1.0, 0.0, 0.0])
    # ã = (0.25, 0.375, 0.25) exactly: 1 first, then the tie 0 vs 2 goes to the lower index.
    assert R.penalized_topk(attn, sink, 2, mu_s=0.25).tolist() == [[1, 0]]
    assert R.penalized_topk(attn, sink, 1, mu_s=0.0).tolist() == [[0]]


def test_gather_topk_rows():
    attn = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.1]])
    feats = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    idx, tok = R.gather_topk(attn, torch.zeros(3), 2, feats, mu_s=0.0)
    assert idx.tolist() == [[1, 2], [0, 1]]
    assert tok.tolist() == [[[2, 3], [4, 5]], [[6, 7], [8, 9]]]


def test_adjacent_cosine_and_static_mask():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
                      [[0.0, 3.0], [2.0, 0.0], [1.0, 1.0]]])
    torch.testing.assert_close(R.adjacent_cosine(x), torch.tensor([[0.0, 1.0, 0.0]]))
    sink = torch.tensor([1.0, 0.0, 0.0])
    assert R.static_mask(x, sink, tau=0.8, mu_t=0.0).tolist() == [[False, True, False]]
    assert R.static_mask(x, sink, tau=0.8, mu_t=0.9).tolist() == [[True, True, False]]


def test_segment_static_mask():
    # Location 0 static through t = 0…2, location 1 breaks between frames 1 and 2.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]).unsqueeze(-1).expand(4, 2, 1).clone()
    x[:, 1, 0] = torch.tensor([1.0, 1.0, -1.0, -1.0])
    x[:, 0, 0] = 1.0
    bounds = torch.tensor([[0, 3], [0, 1], [2, 3], [1, 1]])
    out = R.segment_static_mask(x, torch.zeros(2), bounds, tau=0.5, mu_t=0.0)
    assert out.tolist() == [[True, False], [True, True], [True, True], [False, False]]


def test_holitom_segments_dp():
    # Frames 0-1 and 2-3 are pairwise static at both locations, with a cut between 1 and 2.
    cos = torch.tensor([[0.9, 0.9], [0.1, 0.1], [0.9, 0.9]])
    assert holitom_segments(cos, tau=0.8) == ([(0, 1), (2, 3)], 4)
    # Fully static: one segment removes N·(T−1) tokens.
    assert holitom_segments(torch.full((2, 2), 0.95), tau=0.8) == ([(0, 2)], 4)
    # A window of 2 caps the segments: best is (0,1) then (2,) with gain 2.
    assert holitom_segments(torch.full((2, 2), 0.95), tau=0.8, max_window=2) == ([(0, 1), (2, 2)], 2)
    # Nothing static: one segment per frame; T = 1 works.
    assert holitom_segments(torch.zeros(2, 3), tau=0.8) == ([(0, 0), (1, 1), (2, 2)], 0)
    assert holitom_segments(torch.zeros(0, 3), tau=0.8) == ([(0, 0)], 0)


def test_holitom_segments_keeps_shorter_window_on_equal_gain():
    # One location static over frames 0-2: (0,2) removes 2, more than (0,1) + (2,2).
    assert holitom_segments(torch.tensor([[0.9], [0.9]]), tau=0.8) == ([(0, 2)], 2)
    # Location 0 static over 0-2, location 1 over 1-2: at e = 2 the windows (1,2) and (0,2)
    # both reach 2; windows are tried from w = 2 up and only a strictly greater one wins.
    cos = torch.tensor([[0.9, 0.1], [0.9, 0.9]])
    assert holitom_segments(cos, tau=0.8) == ([(0, 0), (1, 2)], 2)


def test_dpc_knn_two_clusters():
    x = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    centers, assign = R.dpc_knn(x, 2, k=2)
    assert len(centers) == 2
    assert set(assign[:3].tolist()) == {0} and set(assign[3:].tolist()) == {1}
    assert centers[0] in (0, 1, 2) and centers[1] in (3, 4, 5)
    # A penalty on a cluster's best centre moves that centre elsewhere in the cluster.
    pen = torch.zeros(6)
    pen[centers[0]] = 100.0
    c2, _ = R.dpc_knn(x, 2, k=2, penalty=pen)
    assert int(centers[0]) not in c2.tolist()
