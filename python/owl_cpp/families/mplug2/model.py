"""`owl_cpp.load("mplug2-msrvtt")`: mPLUG-2 video captioning or VideoQA = vision.onnx (the video encoder: CLIP ViT-L/14
with temporal convolutions + the two universal layers, on onnxruntime) + decoder.gguf (the 12-layer BERT
caption decoder, general.architecture "mplug2", in the C++ runtime).

  m = owl_cpp.load("mplug2-msrvtt")
  m.caption("clip.mp4")                          # beam search as published: "a man is playing a guitar"
  m.caption(["f0.jpg", "f1.jpg", ...])           # frames as images; 16 are sampled as from a video
  m.caption("clip.mp4", greedy=True)             # argmax decoding instead

A VideoQA directory (owl-export of an MSRVTT-QA / MSVD-QA checkpoint) also holds question.onnx and answers:

  m = owl_cpp.load("mplug2-msrvtt-qa")
  m.chat(videos=["clip.mp4"], prompt="what is the man doing?")   # "play"
  m.answer("clip.mp4", "who is singing?", return_info=True)      # the same, with ids, score, timings

The question is prepared as the official test set does (lower case, punctuation dropped), tokenized by the
model's WordPiece tokenizer ([CLS] + ids, no [SEP]), run with the video tokens through question.onnx (text
encoder + fusion layers); the answer decoder attends to that memory [video ; question] and the same beam search
runs with the QA settings (beam 5, min length 1, max length 10).

The video's tokens are attached to the decoder once; every beam and every step reuses their cross-attention
K/V (the official code re-runs the whole prefix each step). Beams are contexts: each step appends one token to
every beam in one batched pass (decode_step), and a beam that continues another copies its cache
(copy_state_from), which shares the video's K/V instead of recomputing them.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ... import _core
from ...decoder_model import DecoderModel
from ...vision_files import check_file_quant, pick_vision_file
from ...vision_language import model_directory
from .beam_search import beam_search, greedy_search
from .preprocess import VideoConfig, load_video_frames, preprocess_frames
from .question import QuestionEncoder, pre_question
from .video_encoder import VideoEncoder

EXPORT_HINT = "create one with `owl-export MPLUG2_CHECKPOINT_DIR -o MODEL_DIR`"
# the official captioning defaults (configs_video/VideoCaption_msrvtt_large.yaml, video_caption_mplug2.py)
DEFAULTS = {"prompt": "a video of", "beam_size": 5, "min_length": 4, "max_length": 20}
# VideoQA (video_qa_mplug2.py's argparse defaults): the same search, min length 1, max length 10, no prompt
QA_DEFAULTS = {"beam_size": 5, "min_length": 1, "max_length": 10}
CAPTION_ONLY = ("this mPLUG-2 model directory captions videos: use caption(video); video question answering needs "
                "the export of a VideoQA checkpoint (MSRVTT-QA / MSVD-QA), whose directory holds question.onnx")


class Mplug2Model(DecoderModel):
    """An exported mPLUG-2 model directory: captioning, or VideoQA when it holds question.onnx (task "qa").
    Options as DecoderModel, plus vision: which video encoder file ("none" | "dynamic" | "static";
    vision_files.py; default vision.json's)."""

    ARCH = "mplug2"
    FAMILY = "mPLUG-2"

    def __init__(self, model_dir, *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
                 device: str = "cpu", vision: Optional[str] = None, kv_type: Optional[str] = None,
                 max_spare_contexts: int = 1, n_gpu_layers: Optional[int] = None):
        d = model_directory(model_dir, ("decoder.gguf",), EXPORT_HINT)
        vision_path, self.vision_quant = pick_vision_file(d, vision, device.split(":")[0])
        super().__init__(d / "decoder.gguf", n_ctx=n_ctx, threads=threads, kv_type=kv_type, device=device,
                         n_gpu_layers=n_gpu_layers, max_spare_contexts=max_spare_contexts)
        self.model_dir = d
        self.task = str(self._gguf["mplug2.task"]) if "mplug2.task" in self._gguf else "caption"
        if self.task not in ("caption", "qa"):
            raise ValueError(f"{d / 'decoder.gguf'}: mplug2.task {self.task!r} is neither 'caption' nor 'qa'")
        has_question = (d / "question.onnx").is_file()
        if (self.task == "qa") != has_question:
            raise FileNotFoundError(f"{d}: decoder.gguf is a {self.task} decoder but question.onnx is "
                                    f"{'there' if has_question else 'missing'}; re-export the directory "
                                    f"({EXPORT_HINT})")
        defaults = QA_DEFAULTS if self.task == "qa" else DEFAULTS
        self.options = {k: self._option(k, v) for k, v in defaults.items()}
        self.vision = VideoEncoder(vision_path, threads=self.threads, device=device.split(":")[0])
        check_file_quant(vision_path, self.vision.metadata, self.vision_quant)
        self.video_config = VideoConfig.from_metadata(self.vision.metadata, self.vision.path)
        for width in (self.vision.width, self.video_config.embedding_length):
            if width != self.hparams["n_embd"]:
                raise ValueError(f"{self.vision.path}: video tokens of width {width}, but decoder.gguf "
                                 f"cross-attends to width {self.hparams['n_embd']}; the two files come from "
                                 "different exports")
        self.question = None
        if self.task == "qa":
            self.question = QuestionEncoder(d / "question.onnx", threads=self.threads, device=device.split(":")[0])
            if self.question.width != self.hparams["n_embd"]:
                raise ValueError(f"{self.question.path}: memory of width {self.question.width}, but decoder.gguf "
                                 f"cross-attends to width {self.hparams['n_embd']}; the files come from different "
                                 "exports")

    def _option(self, key: str, default):
        try:
            return type(default)(self._gguf[f"mplug2.{self.task}.{key}"])
        except KeyError:
            return default

    # ----- video -> tokens ------------------------------------------------------------------------
    def video_tokens(self, video, frames: Optional[int] = None) -> np.ndarray:
        """A video (file path, or a list of frames: image paths / PIL images / (H, W, 3) uint8 arrays) ->
        the video tokens the decoder attends to [n_tokens, width]: `frames` frames (default 16) sampled at the
        centres of equal intervals, resized to the encoder's size (nearest), through vision.onnx."""
        c = self.video_config
        n = c.num_frames if frames is None else frames
        pixels = preprocess_frames(load_video_frames(video, n), c.image_size, c.mean, c.std)
        return self.vision.encode(pixels)

    # ----- captioning -------------------------------------------------------------------------------
    def caption(self, video=None, *, greedy: bool = False, beam_size: Optional[int] = None,
                min_length: Optional[int] = None, max_length: Optional[int] = None, frames: Optional[int] = None,
                tokens: Optional[np.ndarray] = None, return_info: bool = False):
        """The caption of `video` (as video_tokens takes it), by the published beam search (beam 5, length
        penalty, min 4 / max 20 tokens: the checkpoint's settings), or greedy=True for argmax decoding.
        Returns the text, with the training prompt ("a video of") removed as the official code does;
        return_info=True: a dict with "text", "ids" (the decoded ids after [CLS]), "score" (beam search),
        "tokens" (video tokens), "frames" and timings (video_ms, decode_ms).
        tokens: video tokens from video_tokens() instead of a video (several searches over one video, benchmarks)."""
        if self.task == "qa":
            raise NotImplementedError(f"{self.model_dir} is an mPLUG-2 VideoQA model: it answers questions about a "
                                      "video (chat(videos=[video], prompt=question) or answer(video, question)); "
                                      "captioning needs a caption checkpoint's export")
        B, lo, hi = self._search_options(beam_size, min_length, max_length)
        t0 = time.perf_counter()
        tokens = self._video_or_tokens(video, tokens, frames, "caption")
        t1 = time.perf_counter()
        ids, score = self._search(tokens, greedy, B, lo, hi)
        t2 = time.perf_counter()
        text = self.caption_text(ids)
        if not return_info:
            return text
        return {"text": text, "ids": ids, "score": score, "tokens": int(tokens.shape[0]),
                "frames": None if video is None else int(frames or self.video_config.num_frames),
                "timings": {"video_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)}}

    def _video_or_tokens(self, video, tokens, frames, call: str) -> np.ndarray:
        if (video is None) == (tokens is None):
            raise ValueError(f"{call}() takes a video or its tokens (tokens=), one of the two")
        if tokens is None:
            return self.video_tokens(video, frames)
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        if tokens.ndim != 2 or tokens.shape[1] != self.hparams["n_embd"] or len(tokens) < 1:
            raise ValueError(f"video tokens must be [n_tokens >= 1, {self.hparams['n_embd']}], got {tokens.shape}")
        return tokens

    def _search_options(self, beam_size, min_length, max_length) -> tuple[int, int, int]:
        """(beam size, min length, max length): the arguments given, else the checkpoint's; checked."""
        o = self.options
        B = o["beam_size"] if beam_size is None else int(beam_size)
        lo = o["min_length"] if min_length is None else int(min_length)
        hi = o["max_length"] if max_length is None else int(max_length)
        if not 1 <= B <= 64:
            raise ValueError(f"beam_size must be in 1..64, got {beam_size}")
        if not 1 <= hi < self.hparams["n_ctx_train"] or not 0 <= lo <= hi:
            raise ValueError(f"need 0 <= min_length <= max_length < {self.hparams['n_ctx_train']} (the decoder's "
                             f"positions), got min_length={lo}, max_length={hi}")
        return B, lo, hi

    def _search(self, memory: np.ndarray, greedy: bool, B: int, lo: int, hi: int):
        """(ids after [CLS], score or None) of the published beam search (or greedy) over the decoder
        attending to memory (the video tokens; for VideoQA [video ; question])."""
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        if greedy:
            return greedy_search(self._beam_steps(memory, 1, hi + 1), bos, eos, hi, lo), None
        score, with_bos = beam_search(self._beam_steps(memory, B, hi + 1), bos, eos, B, lo, hi)[0]
        return with_bos[1:], score

    # ----- VideoQA ------------------------------------------------------------------------------
    def question_ids(self, question: str) -> list[int]:
        """[CLS] + WordPiece ids of the question as the official test set prepares it (pre_question)."""
        if not isinstance(question, str):
            raise TypeError(f"the question must be a str, got {type(question).__name__}")
        text = pre_question(question, self.question.max_words if self.question else 50)
        if not text.strip():
            raise ValueError(f"the question {question!r} is empty once prepared (lower case, punctuation removed)")
        return self.tokenize(text, add_special=True)

    def answer(self, video=None, question: Optional[str] = None, *, greedy: bool = False,
               beam_size: Optional[int] = None, min_length: Optional[int] = None, max_length: Optional[int] = None,
               frames: Optional[int] = None, tokens: Optional[np.ndarray] = None, return_info: bool = False):
        """The answer to `question` about `video` (as video_tokens takes it), by the published beam search with
        the VideoQA settings (beam 5, min 1 / max 10 tokens: the checkpoint's), or greedy=True. Returns the text
        as the official evaluation writes it; return_info=True: a dict with "text", "ids" (after [CLS]),
        "score", "question_ids", "tokens" (memory rows), "frames" and timings (video_ms, question_ms,
        decode_ms). tokens: the video's tokens from video_tokens() instead of the video (several questions about
        one video encode it once)."""
        if self.task != "qa":
            raise NotImplementedError(CAPTION_ONLY)
        B, lo, hi = self._search_options(beam_size, min_length, max_length)
        q_ids = self.question_ids(question)
        if len(q_ids) > self.question.context_length:
            raise ValueError(f"the question is {len(q_ids)} tokens ([CLS] included); the text encoder has "
                             f"{self.question.context_length} positions")
        t0 = time.perf_counter()
        tokens = self._video_or_tokens(video, tokens, frames, "answer")
        t1 = time.perf_counter()
        memory = self.question.encode(q_ids, tokens)
        t2 = time.perf_counter()
        ids, score = self._search(memory, greedy, B, lo, hi)
        t3 = time.perf_counter()
        text = self.answer_text(ids)
        if not return_info:
            return text
        return {"text": text, "ids": ids, "score": score, "question_ids": q_ids, "tokens": int(memory.shape[0]),
                "frames": None if video is None else int(frames or self.video_config.num_frames),
                "timings": {"video_ms": 1e3 * (t1 - t0), "question_ms": 1e3 * (t2 - t1),
                            "decode_ms": 1e3 * (t3 - t2)}}

    def answer_text(self, ids) -> str:
        """The answer as video_qa_mplug2.evaluate writes it: decoded with special tokens written out, then
        [SEP], [CLS] and [PAD] removed and the ends stripped (as caption_text, without a prompt)."""
        return self._official_text(ids)

    def caption_text(self, ids) -> str:
        """The text as the official code makes it: the ids decoded with special tokens written out, then the
        strings [SEP], [CLS] and [PAD] removed (so [UNK] stays, and a special token mid-caption leaves two
        spaces), and only what follows the last occurrence of the training prompt ("a video of") kept."""
        text = self._official_text(ids)
        prompt = self.options["prompt"]
        return text.split(prompt)[-1].strip() if prompt else text

    def _official_text(self, ids) -> str:
        text = self.tokenizer.decode([int(i) for i in ids], True)
        for special in ("[SEP]", "[CLS]", "[PAD]"):
            text = text.replace(special, "")
        return text.strip()

    def _beam_steps(self, video_tokens: np.ndarray, B: int, n_ctx: int):
        """The step function beam_search drives: B contexts holding the beams (each with the video attached
        once, shared by copy), a second set of B to reorder into, one batched decode per step."""
        make = lambda: _core.Context(self._model, n_ctx, self.threads, max(B, 1), **self._context_kwargs)  # noqa: E731
        beams = [make() for _ in range(B)]
        beams[0].add_image(video_tokens, 0)
        spare: list = []

        def step(tokens: np.ndarray, parents: Optional[np.ndarray]) -> np.ndarray:
            nonlocal beams, spare
            if parents is None:                              # every beam is [CLS] alone: beam 0's video for all
                for b in beams[1:]:
                    b.copy_state_from(beams[0])
            else:
                if not spare:
                    spare = [make() for _ in range(B)]
                for dst, p in zip(spare, parents):
                    dst.copy_state_from(beams[int(p)])
                beams, spare = spare, beams
            if B == 1:
                return np.asarray(beams[0].eval([int(tokens[0])]), np.float32)[None, :]
            return _core.decode_step(beams, [int(t) for t in tokens])
        return step

    # ----- the chat-style entry point: VideoQA --------------------------------------------------
    def chat(self, images=None, prompt=None, *, videos=None, **kwargs):
        """VideoQA as a chat call: chat(videos=[video], prompt=question) -> the answer text (options and
        return_info as answer()). One video, no images; a caption directory refuses (use caption())."""
        if self.task != "qa":
            raise NotImplementedError(CAPTION_ONLY)
        if images:
            raise ValueError("mPLUG-2 VideoQA answers about a video: pass videos=[video], not images")
        if videos is None or isinstance(videos, (str, bytes)) or len(videos) != 1:
            raise ValueError("mPLUG-2 VideoQA takes exactly one video: chat(videos=[video], prompt=question)")
        if not isinstance(prompt, str):
            raise ValueError("mPLUG-2 VideoQA needs the question as a str: chat(videos=[video], prompt=question)")
        return self.answer(videos[0], prompt, **kwargs)

    def session(self, *args, **kwargs):
        raise NotImplementedError("mPLUG-2 captions videos (caption(video)) or answers one question about a video "
                                  "(chat(videos=[video], prompt=question)); it has no chat sessions")
