"""mPLUG-2 VideoQA's question side at run time (docs/mplug2_qa.md): the question as the official test set
prepares it, and question.onnx (question ids + video tokens -> the memory the answer decoder attends to)."""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from ...vision import open_onnx_session

MAX_WORDS = 50                    # video_qa_dataset at split "test"
_DROPPED = re.compile(r"[,.'!?\"()*#:;~]")


def pre_question(question: str, max_words: int = MAX_WORDS) -> str:
    """dataset/utils.py pre_question: lower case, ,.'!?"()*#:;~ removed, '-' and '/' to spaces, trailing spaces
    cut, at most max_words words (split on single spaces, as the official code does)."""
    q = _DROPPED.sub("", question.lower()).replace("-", " ").replace("/", " ").rstrip(" ")
    words = q.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else q


class QuestionEncoder:
    """question.onnx on onnxruntime: inputs question_ids int64 [n], video_embeds float32 [N, H]; output the
    memory float32 [N + n, H]."""

    def __init__(self, path, *, threads: Optional[int] = None, device: str = "cpu"):
        self.path = os.fspath(path)
        self.session, self.device = open_onnx_session(self.path, threads, device, "question encoder")
        names = [i.name for i in self.session.get_inputs()]
        outputs = self.session.get_outputs()
        if names != ["question_ids", "video_embeds"] or len(outputs) != 1:
            raise ValueError(f"{self.path}: expected inputs question_ids, video_embeds and one output (the memory), "
                             f"found {names} -> {[o.name for o in outputs]}")
        self._output = outputs[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.width = int(self.metadata["mplug2.embedding_length"])
            self.context_length = int(self.metadata["mplug2.question.context_length"])
            self.max_words = int(self.metadata.get("mplug2.question.max_words", MAX_WORDS))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{self.path}: missing or bad metadata {e} (re-export with owl-export)") from None

    def encode(self, ids, video_tokens: np.ndarray) -> np.ndarray:
        """ids ([CLS] + WordPiece ids) and the video's tokens [N, H] -> memory [N + n, H] float32."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not 1 <= ids.size <= self.context_length:
            raise ValueError(f"the question is {ids.size} tokens ([CLS] included); the text encoder has "
                             f"{self.context_length} positions")
        video_tokens = np.asarray(video_tokens)
        if video_tokens.ndim != 2 or video_tokens.shape[1] != self.width or len(video_tokens) < 1:
            raise ValueError(f"video tokens must be [N, {self.width}], got {video_tokens.shape}")
        out = self.session.run([self._output], {"question_ids": ids,
                                                "video_embeds": np.ascontiguousarray(video_tokens, np.float32)})[0]
        if not np.isfinite(out).all():
            raise ValueError(f"{self.path}: the question encoder produced non-finite values; the model file is broken")
        return np.ascontiguousarray(out, dtype=np.float32)
