"""Document → visual / prompt functions of the offline test tasks (``!function clips.…``).

The data set is ``clips.jsonl`` in the working directory (the tests write it, with two short
MP4s, into a temporary folder and run from there): one JSON object per line with the keys
``video`` (a path), ``question``, ``answer`` (generation) and ``choices`` / ``label``
(multiple choice).
"""


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc):
    return doc["question"]


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_frames(doc):
    """The clip as a list of PIL frames, the way lmms-eval's frame-folder tasks give a video."""
    import av

    with av.open(doc["video"]) as container:
        return [frame.to_image() for frame in container.decode(video=0)]
