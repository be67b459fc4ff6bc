"""Fused Triton kernels of stop_fast (the ``backend="triton"`` implementations).

Each function takes the already-validated, positional arguments of the internal backend
signature (see :mod:`stop_fast.dispatch`) and runs on CUDA tensors, or on CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported). Each
is also registered as a ``torch.library`` custom op ``stop_fast::<name>`` with a fake
implementation (:func:`._op.kernel_op`): eager calls run the launcher directly, while
torch.compile / export trace the op as one opaque node.
"""
if __name__ == "kernels":
    # This folder is the package ``stop_fast.kernels``. Python started in the checkout root
    # puts the root first on sys.path, so ``import kernels`` finds this folder before Hugging
    # Face's ``kernels`` distribution, which transformers imports (and requires, from 5.2x on)
    # in its activations module: every model import would then fail. Hand the name to the
    # installed distribution, or say what happened where there is none.
    from ._shadow import hand_over

    hand_over(__name__)
else:
    from .adts import adts_match
    from .column_mean_attention import column_mean_attention
    from .dpc import dpc_assign, dpc_scores
    from .flashvid_layout import flashvid_layout
    from .flashvid_tree import flashvid_tree
    from .frame_gram import frame_gram
    from .gram import set_gram
    from .knn_density import knn_density
    from .merge_tokens import merge_tokens
    from .penalized_topk import gather_topk, penalized_topk
    from .project import project
    from .segment_stats import segment_stats
    from .sink_score import sink_score
    from .temporal_threshold import adjacent_cosine, segment_static_mask, static_mask
    from .visionzip_plan import visionzip_plan

__all__ = [
    "column_mean_attention",
    "sink_score",
    "penalized_topk",
    "gather_topk",
    "adjacent_cosine",
    "static_mask",
    "segment_static_mask",
    "set_gram",
    "project",
    "adts_match",
    "dpc_scores",
    "dpc_assign",
    "flashvid_tree",
    "flashvid_layout",
    "segment_stats",
    "merge_tokens",
    "visionzip_plan",
    "frame_gram",
    "knn_density",
]
