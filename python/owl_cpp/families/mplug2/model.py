"""`owl_cpp.load("mplug2-msrvtt")`: mPLUG-2 video captioning = vision.onnx (the video encoder: CLIP ViT-L/14
with temporal convolutions + the two universal layers, on onnxruntime) + decoder.gguf (the 12-layer BERT
caption decoder, general.architecture "mplug2", in the C++ runtime).

  m = owl_cpp.load("mplug2-msrvtt")
  m.caption("clip.mp4")                          # beam search as published: "a man is playing a guitar"
  m.caption(["f0.jpg", "f1.jpg", ...])           # frames as images; 16 are sampled as from a video
  m.caption("clip.mp4", greedy=True)             # argmax decoding instead

The video's tokens are attached to the decoder once; every beam and every step reuses their cross-attention
K/V (the official code re-runs the whole prefix each step). Beams are contexts: each step appends one token to
every beam in one batched pass (decode_step), and a beam that continues another copies its cache
(copy_state_from), which shares the video's K/V instead of recomputing them.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ... import _core
from ...decoder_model import DecoderModel
from .beam_search import beam_search, greedy_search
from .preprocess import VideoConfig, load_video_frames, preprocess_frames
from .video_encoder import VideoEncoder

EXPORT_HINT = "create one with `owl-export MPLUG2_CHECKPOINT_DIR -o MODEL_DIR`"
# the official captioning defaults (configs_video/VideoCaption_msrvtt_large.yaml, video_caption_mplug2.py)
DEFAULTS = {"prompt": "a video of", "beam_size": 5, "min_length": 4, "max_length": 20}


class Mplug2Model(DecoderModel):
    """An exported mPLUG-2 captioning model directory. Options as DecoderModel."""

    ARCH = "mplug2"
    FAMILY = "mPLUG-2"

    def __init__(self, model_dir, *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
                 device: str = "cpu", kv_type: Optional[str] = None, max_spare_contexts: int = 1):
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: model directory not found ({EXPORT_HINT})")
        for name in ("decoder.gguf", "vision.onnx"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d}: no {name} in the model directory ({EXPORT_HINT})")
        super().__init__(d / "decoder.gguf", n_ctx=n_ctx, threads=threads, kv_type=kv_type, device=device,
                         max_spare_contexts=max_spare_contexts)
        if self.hparams["arch"] != self.ARCH:
            raise ValueError(f"{d / 'decoder.gguf'}: architecture {self.hparams['arch']!r} is not an mPLUG-2 "
                             f"decoder ({self.ARCH!r})")
        self.model_dir = d
        self.options = {k: self._option(k, v) for k, v in DEFAULTS.items()}
        self.vision = VideoEncoder(d / "vision.onnx", threads=self.threads, device=device.split(":")[0])
        self.video_config = VideoConfig.from_metadata(self.vision.metadata, self.vision.path)
        for width in (self.vision.width, self.video_config.embedding_length):
            if width != self.hparams["n_embd"]:
                raise ValueError(f"{self.vision.path}: video tokens of width {width}, but decoder.gguf "
                                 f"cross-attends to width {self.hparams['n_embd']}; the two files come from "
                                 "different exports")
        self._beams_lock = threading.Lock()

    def _option(self, key: str, default):
        try:
            return type(default)(self._gguf[f"mplug2.caption.{key}"])
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
        o = self.options
        B = o["beam_size"] if beam_size is None else int(beam_size)
        lo = o["min_length"] if min_length is None else int(min_length)
        hi = o["max_length"] if max_length is None else int(max_length)
        if not 1 <= B <= 64:
            raise ValueError(f"beam_size must be in 1..64, got {beam_size}")
        if not 1 <= hi < self.hparams["n_ctx_train"] or not 0 <= lo <= hi:
            raise ValueError(f"need 0 <= min_length <= max_length < {self.hparams['n_ctx_train']} (the decoder's "
                             f"positions), got min_length={lo}, max_length={hi}")
        t0 = time.perf_counter()
        if (video is None) == (tokens is None):
            raise ValueError("caption() takes a video or its tokens (tokens=), one of the two")
        if tokens is None:
            tokens = self.video_tokens(video, frames)
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        if tokens.ndim != 2 or tokens.shape[1] != self.hparams["n_embd"] or len(tokens) < 1:
            raise ValueError(f"video tokens must be [n_tokens >= 1, {self.hparams['n_embd']}], got {tokens.shape}")
        t1 = time.perf_counter()
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        score = None
        if greedy:
            ids = greedy_search(self._beam_steps(tokens, 1, hi + 1), bos, eos, hi, lo)
        else:
            score, with_bos = beam_search(self._beam_steps(tokens, B, hi + 1), bos, eos, B, lo, hi)[0]
            ids = with_bos[1:]
        t2 = time.perf_counter()
        text = self.caption_text(ids)
        if not return_info:
            return text
        return {"text": text, "ids": ids, "score": score, "tokens": int(tokens.shape[0]),
                "frames": None if video is None else int(frames or self.video_config.num_frames),
                "timings": {"video_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)}}

    def caption_text(self, ids) -> str:
        """The text as the official code makes it: the ids decoded with special tokens written out, then the
        strings [SEP], [CLS] and [PAD] removed (so [UNK] stays, and a special token mid-caption leaves two
        spaces), and only what follows the last occurrence of the training prompt ("a video of") kept."""
        text = self.tokenizer.decode([int(i) for i in ids], True)
        for special in ("[SEP]", "[CLS]", "[PAD]"):
            text = text.replace(special, "")
        text = text.strip()
        prompt = self.options["prompt"]
        return text.split(prompt)[-1].strip() if prompt else text

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

    # ----- what the chat-style families have, said plainly -------------------------------------
    def chat(self, *args, **kwargs):
        raise NotImplementedError("this mPLUG-2 model directory captions videos: use caption(video); video "
                                  "question answering (the MSRVTT-QA / MSVD-QA checkpoints) is not exported yet")

    def session(self, *args, **kwargs):
        raise NotImplementedError("mPLUG-2 captions videos (caption(video)); it has no chat sessions")
