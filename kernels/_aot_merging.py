"""Ahead-of-time compile scenarios of FlashVid's and PruneVid's kernels (used by :mod:`.aot`)."""
import torch


def merging_scenarios(dtype, _module, _meta, ty):
    """FlashVid's and PruneVid's kernels at LLaVA-OneVision (N = 196) and Qwen2.5-VL-like
    (N = 256) shapes, T = 32, D = 3584."""
    gram, proj, adts, dpc = (_module(m) for m in ("gram", "project", "adts", "dpc"))
    tree, layout, stats = (_module(m) for m in ("flashvid_tree", "flashvid_layout",
                                                "segment_stats"))
    i64 = dict(dtype=torch.int64)
    T, S = 32, 8
    bounds = _meta(S, 2, **i64)
    for n in (196, 256):
        x, f32 = _meta(T, n, 3584, dtype=dtype), _meta(T * n, 3584)
        starts, counts = _meta(T, **i64), _meta(T, **i64)
        g, c, w = _meta(T, n, n), _meta(T - 1, n, n), _meta(T, n)
        yield f"{ty} T={T} N={n} D=3584 frame Grams", \
            lambda x=x, s=starts, k=counts, n=n: gram.launch(x, s, k, n, True, True)
        yield f"{ty} R={T * n} D=3584 pool Grams", \
            lambda f=f32, s=starts, k=counts, n=n: gram.launch(f, s, k, n, False, False)
        yield f"{ty} T={T} N={n} D=3584 project", lambda x=x: proj.launch(x, _meta(T, 3584))
        yield f"{ty} T={T} N={n} D=3584 segment stats S={S}", \
            lambda x=x, n=n: stats.launch(x, _meta(T, n), bounds)
        for n_a in (18, 35):
            yield f"{ty} T={T} N={n} n_A={n_a} ADTS", \
                lambda g=g, c=c, w=w, n_a=n_a: adts.launch(g, c, w, n_a)
        yield f"{ty} B={T} n={n} DPC scores", \
            lambda g=g, n=n: dpc.launch_scores(g, _meta(T, n, dtype=torch.bool), counts, 7, 3584)
        yield f"{ty} B={T} n={n} c=25 DPC assign", \
            lambda g=g: dpc.launch_assign(g, _meta(T, 25, **i64), counts, 3584)
        yield f"{ty} T={T} N={n} S={S} tree", \
            lambda n=n: tree.launch(_meta(T - 1, n), _meta(T - 1, n, **i64), _meta(T, n, **i64),
                                    bounds, 25, 0.8)
        tabs = [_meta(T, **i64) for _ in range(6)]
        yield f"{ty} T={T} N={n} n_A=18 R={n - 18} layout", \
            lambda n=n, tabs=tabs: layout.launch(_meta(T, 18, **i64), _meta(T, n - 18, **i64),
                                                 _meta(T, n - 18, **i64), _meta(T * n, **i64),
                                                 *tabs, 900, 2000)
