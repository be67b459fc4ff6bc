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
