"""Fused Triton kernels of stop_fast (the ``backend="triton"`` implementations).

Each function takes the already-validated, positional arguments of the internal backend
signature (see :mod:`stop_fast.dispatch`) and runs on CUDA tensors, or on CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported). Each
is also registered as a ``torch.library`` custom op ``stop_fast::<name>`` with a fake
implementation (:func:`._op.kernel_op`): eager calls run the launcher directly, while
torch.compile / export trace the op as one opaque node.
"""
from .column_mean_attention import column_mean_attention
from .frame_gram import frame_gram
from .knn_density import knn_density
from .merge_tokens import merge_tokens
from .penalized_topk import gather_topk, penalized_topk
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
    "merge_tokens",
    "visionzip_plan",
    "frame_gram",
    "knn_density",
]
