"""The torch backend of column_mean_attention stays memory-bounded (never the full score tensor)."""
import subprocess
import sys
import textwrap


from stop_fast import torch_backend as TB

MiB = 2**20


def test_plan_keeps_blocks_under_64_mib():
    for B, H, N in [(1, 4, 8192), (256, 16, 729), (1, 1, 10**6), (4096, 16, 196)]:
        b, q = TB.plan_chunks(B, H, N, N)
        assert b * H * q * N * 4 <= 64 * MiB or (b == 1 and q == 1)


SCRIPT = textwrap.dedent("""
    import resource, sys, torch, stop_fast as sf
    dev = sys.argv[1]
    q = torch.randn(1, 4, 8192, 64, device=dev)
    k = torch.randn(1, 4, 8192, 64, device=dev)
    sf.column_mean_attention(q[:, :, :8], k[:, :, :8], backend="torch")   # warm up allocators
    if dev == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = sf.column_mean_attention(q, k, backend="torch")
    if dev == "cuda":
        torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert abs(float(out.sum()) - 1.0) < 1e-3
    print(peak - base)
""")


def test_b1_h4_n8192_does_not_allocate_the_score_tensor(device):
    # The full (1, 4, 8192, 8192) fp32 score tensor is 1 GiB; one block is at most 64 MiB.
    # On CPU this is the growth of the process's peak RSS, on CUDA the allocator's peak.
    res = subprocess.run([sys.executable, "-c", SCRIPT, device], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    extra = int(res.stdout.strip().splitlines()[-1])
    assert extra < 256 * MiB, f"peak grew by {extra / MiB:.0f} MiB"
