"""mPLUG-2 VideoQA in plain PyTorch (models/model_videoqa_mplug.py and video_qa_mplug2.py @ a46aa97, the
evaluation path; docs/owl2.md PART D and docs/mplug2_qa.md): the oracle the QA runtime is tested against.

  pre_question(text)            -> the question as the test set feeds it (lower case, ,.'!?"()*#:;~ removed,
                                   '-' and '/' to spaces, trailing spaces cut, at most 50 words)
  question_ids(text)            -> [CLS] + WordPiece ids (the official tokenizer appends no [SEP]; one question
                                   per batch, so padding='longest' pads nothing)
  encode_question(ids)          -> [n, H]: text_encoder in mode "norm": embeddings, then every layer (the
                                   universal ones too) as self-attention + FFN only
  fuse(video, question)         -> (video', question'): the FusionEncoder's last fusion_layers layers; a layer
                                   cross-attends from the question to the video, except a layer j (counted
                                   from the first one run) with j > 0 and j % stride_layer == 0, which
                                   attends over [video ; question] and adds its video part to the video
                                   (never with the published stride 1000: the video passes through unchanged)
  memory(video, ids)            -> [N + n, H]: [video' ; question'], what the answer decoder cross-attends to
  answer_ids(memory)            -> (ids with the leading [CLS], score): predictor.py's beam search over the
                                   decoder (beam 5, min length 1, max length 10 by default)
  answer(frames, question)      -> text as video_qa_mplug2.evaluate writes it

Batch 1 everywhere: every attention mask is all ones, i.e. no mask.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .config import FUSION, TEXT_ENCODER, load_checkpoint
from .reference import Mplug2CaptionReference
from .tokenizer import BertWordPiece

MAX_QUESTION_WORDS = 50      # video_qa_dataset at split "test"


def pre_question(question: str, max_words: int = MAX_QUESTION_WORDS) -> str:
    """dataset/utils.py pre_question."""
    q = re.sub(r"([,.'!?\"()*#:;~])", "", question.lower()).replace("-", " ").replace("/", " ")
    q = q.rstrip(" ")
    words = q.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else q


class Mplug2QAReference(Mplug2CaptionReference):
    """The caption reference's video encoder and decoder, plus the question side."""

    def __init__(self, sd, cfg, tokenizer=None, dtype=torch.float32):
        if cfg.task != "qa":
            raise ValueError("Mplug2QAReference needs a VideoQA checkpoint (config task 'qa'), got "
                             f"task {cfg.task!r}")
        super().__init__(sd, cfg, tokenizer, dtype)

    @classmethod
    def from_dir(cls, ckpt_dir: str | Path, dtype: torch.dtype = torch.float32) -> "Mplug2QAReference":
        sd, cfg = load_checkpoint(ckpt_dir, task="qa")
        vocab = Path(ckpt_dir) / "vocab.txt"
        tok = BertWordPiece.from_file(vocab) if vocab.is_file() else None
        return cls(sd, cfg, tok, dtype)

    # ------------------------------------------------------------------------------------- question
    def question_ids(self, question: str) -> list[int]:
        if self.tok is None:
            raise ValueError("no vocab.txt: cannot tokenize the question")
        return self.tok.encode(pre_question(question))

    def encode_question(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [n] -> [n, H]: BertModel(input_ids) in mode 'norm' (add_cross_attention false)."""
        p = TEXT_ENCODER + "embeddings."
        n = ids.shape[-1]
        x = (torch.nn.functional.embedding(ids, self.w[p + "word_embeddings.weight"])
             + self.w[p + "token_type_embeddings.weight"][0] + self.w[p + "position_embeddings.weight"][:n])
        x = self._ln(x, p + "LayerNorm.", self.cfg.text_eps)
        for i in range(self.cfg.text_encoder_layers):
            q = f"{TEXT_ENCODER}encoder.layer.{i}."
            x = self.ffn(self.bert_attention(x, q + "attention."), q)
        return x

    def fuse(self, video: torch.Tensor, question: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FusionModel(encoder_embeds=question, encoder_hidden_states=video) -> (video, question)."""
        start = self.cfg.fusion_run[0] if self.cfg.fusion_run else 0
        N = video.shape[0]
        for i in self.cfg.fusion_run:
            p = f"{FUSION}encoder.layer.{i}."
            j = i - start
            if j == 0 or j % self.cfg.stride_layer != 0:
                h = self.bert_attention(self.bert_attention(question, p + "attention."), p + "crossattention.",
                                        kv=video)
                question = self.ffn(h, p)
            else:                                           # the merged layer: self-attention over both, FFN
                h = self.ffn(self.bert_attention(torch.cat([video, question], 0), p + "attention."), p)
                video, question = video + h[:N], h[N:]
        return video, question

    @torch.no_grad()
    def memory(self, video: torch.Tensor, ids) -> torch.Tensor:
        """[video ; fused question] [N + n, H]: question_output of MPLUG2.forward (train=False)."""
        ids = torch.as_tensor(ids, dtype=torch.long).view(-1)
        v, q = self.fuse(video.to(self.dtype), self.encode_question(ids))
        return torch.cat([v, q], 0)

    # ---------------------------------------------------------------------------------------- answer
    @torch.no_grad()
    def answer_ids(self, memory: torch.Tensor, cache: bool = True, **kw):
        """predictor.TextGenerator over the decoder attending to memory: (ids incl. [CLS], score)."""
        return self.beam_search(memory, cache=cache, **kw)

    @torch.no_grad()
    def answer(self, frames: torch.Tensor, question: str, cache: bool = True) -> str:
        ids, _ = self.answer_ids(self.memory(self.encode_video(frames), self.question_ids(question)), cache=cache)
        return self.answer_text(ids)

    def answer_text(self, ids) -> str:
        """tokenizer.decode(ids) with [SEP], [CLS], [PAD] removed, stripped (video_qa_mplug2.evaluate)."""
        if self.tok is None:
            raise ValueError("no vocab.txt: cannot decode")
        return self.tok.caption_text(ids, "")
