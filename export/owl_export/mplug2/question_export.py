"""mPLUG-2 VideoQA's question side -> question.onnx, traced from the PyTorch reference (qa_reference.py
memory(), docs/mplug2_qa.md) and checked with onnxruntime.

  inputs   "question_ids"  int64 [n], n dynamic: [CLS] + the WordPiece ids of the pre-processed question
                           (no [SEP]); n <= mplug2.question.context_length
           "video_embeds"  float32 [N, H], N dynamic: vision.onnx's output for the video
  output   "memory"        float32 [N + n, H]: [video ; question], the question through the whole text encoder
                           (self-attention + FFN) and the run fusion layers: what the answer decoder
                           cross-attends to (decoder.gguf, attached with Context.add_image(memory, 0))

fp32 only. The graph is traced at one question length and video size and checked at others (a size baked in
by the tracer fails the export); the check compares the whole memory and, on its own, the question rows (the
video rows pass through unchanged with the published stride, so they alone would hide a question-side error).

Metadata (custom_metadata_map), all strings: owl.family "mplug2"; mplug2.task "qa";
mplug2.embedding_length (H); mplug2.question.context_length (the text encoder's learned positions: the
longest question, [CLS] included); mplug2.question.max_words (50: the test set's word limit);
mplug2.question.cls_token_id (101).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..onnx_common import FP32_TOLERANCE, OPSET, VisionCheckError, compare, onnx_modules
from .config import FUSION, TEXT_ENCODER, Mplug2Config
from .qa_reference import MAX_QUESTION_WORDS, Mplug2QAReference

INPUTS = ("question_ids", "video_embeds")
OUTPUT_NAME = "memory"
TRACE_SIZES = (5, 2)          # (question length, video frames)
CHECK_SIZES = ((9, 3), (1, 1))


class QuestionModule(torch.nn.Module):
    """memory() as a module; every weight it reads is a buffer (an initializer in the graph)."""

    def __init__(self, ref: Mplug2QAReference):
        super().__init__()
        self.ref = ref
        fusion = tuple(f"{FUSION}encoder.layer.{i}." for i in ref.cfg.fusion_run)
        for k, v in ref.w.items():
            if (k.startswith(TEXT_ENCODER) or k.startswith(fusion)) and v.is_floating_point():
                self.register_buffer(k.replace(".", "__"), v)

    def forward(self, question_ids: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
        return self.ref.memory(video_embeds, question_ids)


def metadata(cfg: Mplug2Config, context_length: int) -> dict[str, str]:
    return {"owl.family": "mplug2", "mplug2.task": "qa", "mplug2.embedding_length": str(cfg.text_width),
            "mplug2.question.context_length": str(context_length),
            "mplug2.question.max_words": str(MAX_QUESTION_WORDS), "mplug2.question.cls_token_id": str(cfg.bos_id)}


def _inputs(cfg: Mplug2Config, n: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random question ids (after [CLS]) and random video tokens of a frames-frame video."""
    g = np.random.default_rng(seed)
    ids = np.concatenate([[cfg.bos_id], g.integers(999 if cfg.vocab_size > 2000 else 104, cfg.vocab_size,
                                                    size=n - 1)]).astype(np.int64)
    video = g.standard_normal((cfg.video_tokens(frames), cfg.text_width)).astype(np.float32)
    return ids, video


def export_question_encoder(sd: dict, cfg: Mplug2Config, out_path: str | Path, *, seed: int = 0) -> dict:
    """Write question.onnx for a VideoQA checkpoint (load_checkpoint's (sd, cfg) with task 'qa'); returns a
    summary: path, opset, context_length, file_size, the worst errors against the reference over the check
    sizes (rel_err / cosine / max_abs_err of the memory, question_rel_err of the question rows), metadata.
    Raises VisionCheckError (and writes nothing) when onnxruntime does not reproduce the reference."""
    onnx, ort = onnx_modules()
    ref = Mplug2QAReference(sd, cfg)
    context = int(sd[TEXT_ENCODER + "embeddings.position_embeddings.weight"].shape[0])
    meta = metadata(cfg, context)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.trace.tmp.onnx")
    try:
        ids, video = _inputs(cfg, *TRACE_SIZES, seed)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")                 # the tracer's shape-to-int notices
            torch.onnx.export(QuestionModule(ref).eval(), (torch.from_numpy(ids), torch.from_numpy(video)),
                              str(tmp), input_names=list(INPUTS), output_names=[OUTPUT_NAME], opset_version=OPSET,
                              do_constant_folding=True, dynamo=False,
                              dynamic_axes={INPUTS[0]: {0: "n"}, INPUTS[1]: {0: "N"}, OUTPUT_NAME: {0: "N_plus_n"}})
        model = onnx.load(str(tmp))
        model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = cfg.text_width
        onnx.helper.set_model_props(model, meta)
        onnx.save(model, str(tmp))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        worst: dict = {}
        for k, (n, frames) in enumerate(CHECK_SIZES):
            ids, video = _inputs(cfg, n, frames, seed + 1 + k)
            want = ref.memory(torch.from_numpy(video), torch.from_numpy(ids)).numpy()
            got = sess.run(None, {INPUTS[0]: ids, INPUTS[1]: video})[0]
            if got.shape != want.shape or got.dtype != np.float32 or not np.isfinite(got).all():
                raise VisionCheckError(f"{out_path}: onnxruntime returned {got.dtype} {got.shape} (finite: "
                                       f"{bool(np.isfinite(got).all())}), expected float32 {want.shape}")
            errors = compare(got, want)
            errors["question_rel_err"] = compare(got[-n:], want[-n:])["rel_err"]
            for key in ("rel_err", "question_rel_err"):
                if not errors[key] < FP32_TOLERANCE:
                    raise VisionCheckError(f"{out_path}: onnxruntime's memory differs from the PyTorch reference "
                                           f"({key} {errors[key]:.3g}, limit {FP32_TOLERANCE:g}) for a question of "
                                           f"{n} tokens and a {frames}-frame video; not writing it")
            for key, v in errors.items():
                worst[key] = min(worst[key], v) if key == "cosine" and key in worst else max(worst.get(key, v), v)
        del sess
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out_path), "opset": OPSET, "context_length": context, "embedding_length": cfg.text_width,
            "file_size": out_path.stat().st_size, "check_sizes": list(CHECK_SIZES), **worst, "metadata": meta}
