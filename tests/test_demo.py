"""`stop-fast demo` runs end to end and shows SToP dropping the planted sinks."""
import io
import re

from rich.console import Console

from stop_fast.demo import run_demo


def test_demo_table():
    buf = io.StringIO()
    assert run_demo(frames=4, dim=32, vit_tokens=49, console=Console(file=buf, width=200)) == 0
    out = buf.getvalue()
    rows, pipes = {}, {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 6 and cells[0] in ("reference", "torch", "triton"):
            rows[(cells[0], cells[1])] = [int(c) for c in cells[2:5]]
        if len(cells) == 6 and cells[0] in ("visionzip", "holitom"):
            pipes[(cells[0], cells[1])] = [int(c) for c in cells[2:5]]
    backends = {b for b, _ in rows}
    assert {"reference", "torch"} <= backends, out
    for b in backends:
        kept, sinks_plain, obj_plain = rows[(b, "plain")]
        _, sinks_stop, obj_stop = rows[(b, "SToP")]
        assert kept == 4 * 20                     # 10% of 196 per frame, rounded up
        assert sinks_stop < sinks_plain and obj_stop >= obj_plain
    assert "column_mean_attention" in out
    for method in ("visionzip", "holitom"):
        (_, sinks_plain, obj_plain), (_, sinks_stop, obj_stop) = pipes[(method, "no")], pipes[(method, "yes")]
        assert sinks_stop < sinks_plain and obj_stop >= obj_plain, out
