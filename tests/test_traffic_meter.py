"""The traffic meter itself: known op sequences give known bytes, launches and syncs; a torch
computation hidden inside a custom op is caught; Triton launches are counted."""
import pytest
import torch

import stop_fast as sf
from stop_fast.bench.traffic import HiddenComputeError, TrafficMeter, measure_traffic, tensor_bytes

F32 = 4


def test_known_sequence_bytes_ops():
    x = torch.randn(8, 16)                                  # 512 bytes
    with TrafficMeter(x) as m:
        y = x * 2                                           # 512 in + 512 out
        z = y.sum(dim=1)                                    # 512 in + 32 out
        y.view(-1).t()                                      # views: free
        y[:, :4].transpose(0, 1).unsqueeze(0).expand(3, -1, -1)
        torch.empty(5, device=x.device)                     # allocation: free
        torch.empty_like(y)
    r = m.result
    assert r.bytes == 512 * 2 + 512 + 32
    assert r.ops == 2 and r.syncs == 0
    assert r.multiple == pytest.approx((512 * 3 + 32) / 512)
    assert [name for name, _, _ in r.top()] == ["aten.mul", "aten.sum"]
    assert r.per_op["aten.mul"].launches == 1 and r.per_op["aten.sum"].calls == 1


def test_broadcast_and_repeated_inputs_count_once():
    x = torch.randn(8, 16)
    row = torch.randn(16)
    with TrafficMeter(x) as m:
        x * x                                               # x once + out
        x + row.expand(8, 16)                               # a broadcast row: its 16 elements
    assert m.result.bytes == (512 + 512) + (512 + 16 * F32 + 512)
    assert tensor_bytes(row.expand(8, 16)) == 16 * F32


def test_syncs_and_host_arithmetic():
    x = torch.randn(8, 16)
    with TrafficMeter(x) as m:
        z = x.sum(dim=1)                                    # 1 op
        z.tolist()                                          # D2H: sync
        host = z.cpu()                                      # D2H: sync
        (host * 2).tolist()                                 # host arithmetic and a host list: free
        idx = torch.tensor([0, 1])                          # host (no device=): free
        torch.arange(4) + 1                                 # host: free
        dev_idx = idx.to(x.device, non_blocking=True)       # H2D copy: an op, no sync
        x[dev_idx]                                          # 1 op
        bool(z.sum() > 0)                                   # sum, gt, D2H sync
        torch.nonzero(z > 0)                                # gt, nonzero (sync)
        x[z > 0]                                            # gt, boolean-mask index (sync)
        torch.tensor([1, 2], device=x.device)               # pageable H2D: sync
    r = m.result
    assert r.syncs == 6, r.sync_sites
    assert r.per_op["memcpy D2H"].calls == 3 and r.per_op["memcpy H2D"].calls == 2
    assert r.per_op["memcpy H2D"].syncs == 1
    assert r.per_op["aten.nonzero"].syncs == 1 and r.per_op["aten.index"].syncs == 1
    assert "aten.arange" not in r.per_op
    assert all("test_traffic_meter.py" in site for site in r.sync_sites)
    # sum ×2, gt ×3, index ×2, nonzero, 5 copies
    assert r.ops == 2 + 3 + 2 + 1 + 5


def test_to_own_device_is_not_a_copy():
    x = torch.randn(4, 4)
    with TrafficMeter(x) as m:
        y = (x + 1).to(device=x.device, dtype=torch.float32)
        y.to(x.device)
    assert m.result.ops == 1 and m.result.syncs == 0


def test_one_hot_range_checks_are_cpu_only():
    i = torch.tensor([0, 2, 1])
    x = torch.randn(3, 4)
    with TrafficMeter(x) as m:
        torch.nn.functional.one_hot(i.to(x.device), 4)
    assert m.result.syncs == 0


@torch.library.custom_op("stop_fast_test::hidden_sin", mutates_args=())
def _hidden_sin(x: torch.Tensor) -> torch.Tensor:
    return x.sin()                                          # a torch op inside an opaque op


@_hidden_sin.register_fake
def _(x):
    return torch.empty_like(x)


def test_torch_op_hidden_in_custom_op_is_caught():
    x = torch.randn(4, 4)
    with pytest.raises(HiddenComputeError, match="hidden_sin"):
        with TrafficMeter(x):
            torch.ops.stop_fast_test.hidden_sin(x)


def test_kernel_op_counts_its_inputs_outputs_and_launches():
    pytest.importorskip("triton")
    from stop_fast.dispatch import triton_usable
    x = torch.randn(3, 10, 8)
    a = torch.rand(3, 10)
    s = torch.rand(10)
    if not triton_usable(x.device)[0]:
        pytest.skip("Triton backend unavailable here")
    with sf.input_checks(False):
        (idx, tok), r = measure_traffic(sf.gather_topk, a, s, 4, x, mu_s=0.1, backend="triton",
                                        reference=x)
        _, r2 = measure_traffic(sf.static_mask, x, s, tau=0.5, mu_t=0.1, backend="triton",
                                reference=x)
    stat = r.per_op["stop_fast.gather_topk"]
    assert stat.launches == 1 and r.ops == 1
    assert stat.bytes == sum(t.numel() * t.element_size() for t in (a, s, x, idx, tok))
    assert r2.per_op["stop_fast.static_mask"].launches == 2      # partials + finalize


def test_reference_must_be_a_tensor_or_byte_count():
    with pytest.raises(TypeError, match="reference"):
        TrafficMeter("features")
    with pytest.raises(TypeError, match="reference"):
        TrafficMeter(0)


def test_gram_of_one_tensor_reads_it_once():
    x = torch.randn(3, 5, 8)
    with TrafficMeter(x) as m:
        torch.bmm(x, x.mT)                                  # x and its transpose: same elements
    assert m.result.bytes == x.numel() * F32 + 3 * 5 * 5 * F32


def test_launches_before_the_first_sync():
    x = torch.randn(4, 4)
    with TrafficMeter(x) as m:
        y = (x + 1) * 2                                     # 2 launches
        y.sum().item()                                      # sum, then the sync
        y - 1
    assert m.result.ops_before_sync == 3 and m.result.ops == 5
    with TrafficMeter(x) as m:
        x + 1
    assert m.result.ops_before_sync is None
