"""mPLUG-2 VideoQA end to end on tiny random checkpoints in the official QA .pth layout (docs/mplug2_qa.md).

- the reference (owl_export/mplug2/qa_reference.py) against NumPy float64 written from the note (text encoder in
  mode "norm", the run fusion layers, both fusion branches), and which weights it may and may not read; it
  was also run against the official modules on CPU (tests/check_mplug2_qa_official.py: identical memory,
  answer ids and scores);
- task detection (saved config, file name, momentum keys) and the checkpoint checks;
- question.onnx against the reference at several question lengths and video sizes;
- the runtime (owl_cpp.load(dir).chat / answer) against the reference: the same question ids, memory, beam
  search answer and score, greedy ids; errors; owl-run -p.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("gguf")

import owl_cpp  # noqa: E402
from owl_export import cli as export_cli  # noqa: E402
from owl_export.mplug2.config import Mplug2CheckpointError, load_checkpoint  # noqa: E402
from owl_export.mplug2.fixtures import (make_tiny_mplug2_checkpoint,  # noqa: E402
                                        make_tiny_mplug2_qa_checkpoint)
from owl_export.mplug2.qa_reference import Mplug2QAReference, pre_question  # noqa: E402
from mplug2_videos import random_video, reference_video_tokens  # noqa: E402
from test_mplug2_reference import _np, np_bert_attention, np_ln  # noqa: E402

FRAMES = 3
QUESTIONS = ["What is the man doing?", "who is singing a song", "How many people are in the video?",
             "what-is on the table/desk", "is it a cat or a dog"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_mplug2_qa_checkpoint(tmp_path_factory.mktemp("qa") / "ckpt", seed=21)


@pytest.fixture(scope="module")
def ckpt_stride1(tmp_path_factory):
    """stride_layer 1: the second run fusion layer is the merged one (attends over [video ; question])."""
    return make_tiny_mplug2_qa_checkpoint(tmp_path_factory.mktemp("qa") / "s1", seed=22, stride_layer=1)


@pytest.fixture(scope="module")
def ref(ckpt):
    return Mplug2QAReference.from_dir(ckpt)


@pytest.fixture(scope="module")
def model_dir(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa") / "model"
    assert export_cli.main([str(ckpt), "-o", str(out), "--quant", "f32", "--vision-quant", "none", "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    # an F32 KV cache: with the default F16 one the decoder's logits sit ~1e-4 from the float64 reference
    # (torch fp32: 3e-7), too close to the 1e-4 bound to test against; test_default_kv_cache covers it
    return owl_cpp.load(model_dir, threads=2, kv_type="f32")


# ------------------------------------------------------------------------------------------ reference
def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_ffn(sd, p, h, eps):
    f = _gelu(h @ _np(sd, p + "intermediate.dense.weight").T + _np(sd, p + "intermediate.dense.bias"))
    f = f @ _np(sd, p + "output.dense.weight").T + _np(sd, p + "output.dense.bias")
    return np_ln(f + h, _np(sd, p + "output.LayerNorm.weight"), _np(sd, p + "output.LayerNorm.bias"), eps)


def np_memory(sd, cfg, video, ids):
    """docs/mplug2_qa.md in float64: text encoder (mode norm), the fusion layers FusionEncoder runs, the memory."""
    H, eps = cfg.text_heads, cfg.text_eps
    e = "text_encoder.embeddings."
    x = (_np(sd, e + "word_embeddings.weight")[ids] + _np(sd, e + "token_type_embeddings.weight")[0]
         + _np(sd, e + "position_embeddings.weight")[:len(ids)])
    x = np_ln(x, _np(sd, e + "LayerNorm.weight"), _np(sd, e + "LayerNorm.bias"), eps)
    for i in range(cfg.text_encoder_layers):
        p = f"text_encoder.encoder.layer.{i}."
        x = np_ffn(sd, p, np_bert_attention(sd, p + "attention.", x, x, H, eps), eps)
    n_built, n_run = cfg.fusion_hidden_layers, cfg.fusion_layers
    start = max(0, n_built - n_run)
    v = video
    for i in range(start, n_built):
        p = f"fusion_encoder.encoder.layer.{i}."
        j = i - start
        if j == 0 or j % cfg.stride_layer:
            h = np_bert_attention(sd, p + "attention.", x, x, H, eps)
            h = np_bert_attention(sd, p + "crossattention.", h, v, H, eps)
            x = np_ffn(sd, p, h, eps)
        else:
            both = np.concatenate([v, x])
            h = np_ffn(sd, p, np_bert_attention(sd, p + "attention.", both, both, H, eps), eps)
            v, x = v + h[:len(v)], h[len(v):]
    return np.concatenate([v, x])


@pytest.mark.parametrize("which", ["published", "stride1"])
def test_memory_matches_numpy(which, ckpt, ckpt_stride1):
    d = ckpt if which == "published" else ckpt_stride1
    sd, cfg = load_checkpoint(d)
    ref64 = Mplug2QAReference(sd, cfg, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    video = torch.randn(cfg.video_tokens(2), cfg.text_width, generator=g, dtype=torch.float64)
    ids = [101, 120, 230, 150, 177, 260]
    got = ref64.memory(video, ids).numpy()
    want = np_memory(sd, cfg, video.numpy(), ids)
    assert got.shape == (video.shape[0] + len(ids), cfg.text_width)
    assert np.abs(got - want).max() < 1e-9
    same_video = np.abs(got[:video.shape[0]] - video.numpy()).max()
    if which == "published":
        assert same_video == 0.0                  # fusion leaves the video as it is
    else:
        assert same_video > 1e-2                  # the merged layer updates it


def test_reference_reads_exactly_the_weights_it_should(ckpt):
    """Unused: fusion layers before the last fusion_layers, the universal layers' cross-attention and latents,
    the fusion embeddings, every momentum (_m) copy. Used: the run fusion layers, every text encoder layer."""
    sd, cfg = load_checkpoint(ckpt)
    assert cfg.fusion_hidden_layers == 3 and cfg.fusion_layers == 2 and cfg.fusion_run == [1, 2]
    g = torch.Generator().manual_seed(4)
    video = torch.randn(cfg.video_tokens(1), cfg.text_width, generator=g)
    ids = [101, 130, 140, 150]
    base = Mplug2QAReference(sd, cfg).memory(video, ids)
    last = cfg.text_encoder_layers - 1

    def changed(prefix):
        sd2 = {k: (v + 0.5 if k.startswith(prefix) and v.is_floating_point() else v) for k, v in sd.items()}
        assert any(k.startswith(prefix) for k in sd), prefix
        return float((Mplug2QAReference(sd2, cfg).memory(video, ids) - base).abs().max())

    for unused in ("fusion_encoder.encoder.layer.0.", f"text_encoder.encoder.layer.{last}.crossattention.",
                   f"text_encoder.encoder.layer.{last - 1}.latents", "fusion_encoder.embeddings.",
                   "text_encoder_m.", "fusion_encoder_m.", f"text_encoder.encoder.layer.{last}.intermediate_vision."):
        assert changed(unused) == 0.0, unused
    for used in ("fusion_encoder.encoder.layer.1.", "fusion_encoder.encoder.layer.2.crossattention.",
                 "text_encoder.encoder.layer.0.", f"text_encoder.encoder.layer.{last}.attention.",
                 "text_encoder.embeddings."):
        assert changed(used) > 1e-3, used


def test_question_changes_the_answer_logits(ref):
    g = torch.Generator().manual_seed(5)
    video = ref.encode_video(torch.randn(FRAMES, 3, 224, 224, generator=g))
    a = ref.decoder_logits(ref.memory(video, ref.question_ids(QUESTIONS[0])), [101])
    b = ref.decoder_logits(ref.memory(video, ref.question_ids(QUESTIONS[1])), [101])
    assert float((a - b).abs().max()) > 1e-3


def test_answer_search_settings(ref):
    assert (ref.cfg.beam_size, ref.cfg.min_length, ref.cfg.max_length, ref.cfg.prompt) == (5, 1, 10, "")
    g = torch.Generator().manual_seed(6)
    memory = ref.memory(ref.encode_video(torch.randn(FRAMES, 3, 224, 224, generator=g)), ref.question_ids("why"))
    ids, score = ref.answer_ids(memory)
    assert ids[0] == 101 and 2 <= len(ids) <= 11
    assert (ids, score) == pytest.approx(ref.answer_ids(memory, cache=False), rel=1e-5) or \
        ids == ref.answer_ids(memory, cache=False)[0]


def test_pre_question_as_official():
    from owl_cpp.families.mplug2.question import pre_question as runtime_pre_question
    cases = {"What is the man doing?": "what is the man doing",
             "Who's   there?! ": "whos   there",
             "x-ray/scan: (left) #1 ~ok~": "x ray scan left 1 ok",
             "": ""}
    long = " ".join(f"w{i}" for i in range(60))
    cases[long] = " ".join(f"w{i}" for i in range(50))
    for q, want in cases.items():
        assert pre_question(q) == want
        assert runtime_pre_question(q) == want


# --------------------------------------------------------------------------------------- checkpoints
def test_task_detection(ckpt, tmp_path):
    assert load_checkpoint(ckpt)[1].task == "qa"
    cap = make_tiny_mplug2_checkpoint(tmp_path / "cap", seed=1)
    assert load_checkpoint(cap)[1].task == "caption"
    obj = torch.load(ckpt / "mplug2_qa.pth", weights_only=False)
    sd = obj["model"]
    bare = {k: v for k, v in sd.items() if "_m." not in k}
    for name, state, task in (("mPLUG2_MSRVTT_QA.pth", bare, "qa"),          # the released name
                              ("checkpoint_best.pth", sd, "qa"),              # the momentum copies
                              ("checkpoint_best.pth", bare, "caption")):      # nothing says QA
        d = tmp_path / f"{name}-{task}"
        d.mkdir()
        for f in ("vocab.txt", "config_bert_large_text.json"):
            (d / f).write_bytes((ckpt / f).read_bytes())
        torch.save({"model": state}, d / name)
        got = load_checkpoint(d)[1]
        assert got.task == task, name
        if task == "qa":
            assert (got.min_length, got.max_length, got.prompt) == (1, 10, "")
        assert load_checkpoint(d, task="qa")[1].task == "qa"
    with pytest.raises(Mplug2CheckpointError, match="fusion"):
        no_fusion = {k: v for k, v in bare.items() if not k.startswith("fusion_encoder.")}
        d = tmp_path / "nofusion"
        d.mkdir()
        for f in ("vocab.txt", "config_bert_large_text.json"):
            (d / f).write_bytes((ckpt / f).read_bytes())
        torch.save({"model": no_fusion}, d / "x.pth")
        load_checkpoint(d, task="qa")
    with pytest.raises(ValueError, match="task"):
        load_checkpoint(ckpt, task="vqa")


# ------------------------------------------------------------------------------------- question.onnx
@pytest.mark.parametrize("which", ["published", "stride1"])
def test_question_onnx_matches_reference(which, ckpt, ckpt_stride1, tmp_path):
    import onnxruntime as ort
    from owl_export.mplug2.question_export import export_question_encoder
    sd, cfg = load_checkpoint(ckpt if which == "published" else ckpt_stride1)
    summary = export_question_encoder(sd, cfg, tmp_path / "question.onnx")
    assert summary["rel_err"] < 1e-4 and summary["question_rel_err"] < 1e-4
    assert summary["metadata"]["mplug2.question.context_length"] == str(cfg.max_positions)
    sess = ort.InferenceSession(str(tmp_path / "question.onnx"), providers=["CPUExecutionProvider"])
    ref = Mplug2QAReference(sd, cfg)
    g = np.random.default_rng(7)
    for n, frames in ((2, 1), (12, 2), (cfg.max_positions, 4)):
        ids = np.concatenate([[101], g.integers(104, cfg.vocab_size, n - 1)]).astype(np.int64)
        video = g.standard_normal((cfg.video_tokens(frames), cfg.text_width)).astype(np.float32)
        got = sess.run(None, {"question_ids": ids, "video_embeds": video})[0]
        want = ref.memory(torch.from_numpy(video), torch.from_numpy(ids)).numpy()
        assert got.shape == want.shape
        q_err = np.linalg.norm(got[-n:] - want[-n:]) / np.linalg.norm(want[-n:])
        assert q_err < 1e-5, (n, frames, q_err)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


# ------------------------------------------------------------------------------------------- runtime
def test_load_gives_a_qa_model(model, model_dir):
    from owl_cpp.families.mplug2 import Mplug2Model
    assert isinstance(model, Mplug2Model) and model.task == "qa"
    assert model.options == {"beam_size": 5, "min_length": 1, "max_length": 10}
    assert (model_dir / "question.onnx").is_file()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_answer_matches_reference(model, ref, seed):
    video = random_video(seed)
    question = QUESTIONS[seed % len(QUESTIONS)] if seed < 3 else "Why is the " + "very " * 20 + "big dog running?"
    info = model.answer(video, question, return_info=True)
    q_ids = ref.question_ids(question)
    assert info["question_ids"] == q_ids
    v = reference_video_tokens(ref, video, model)
    memory = ref.memory(v, q_ids)
    got_memory = model.question.encode(q_ids, model.video_tokens(video))
    assert np.linalg.norm(got_memory - memory.numpy()) / np.linalg.norm(memory.numpy()) < 1e-4
    ids, score = ref.answer_ids(memory)
    assert info["ids"] == ids[1:]
    assert info["score"] == pytest.approx(score, rel=1e-5, abs=1e-6)
    # the tiny random decoder often picks the same words whatever it attends to, but the score sees the
    # question: another question moves it by far more than the tolerance
    other = ref.answer_ids(ref.memory(v, ref.question_ids("where are they going to eat")))[1]
    assert abs(other - score) > 100 * 1e-5 * abs(score)
    assert info["text"] == ref.answer_text(ids)
    assert info["tokens"] == memory.shape[0]
    assert model.chat(videos=[video], prompt=question) == info["text"]


def test_default_kv_cache(model_dir, ref):
    """The default (F16) KV cache: the same answers; scores within what F16 keys and values allow."""
    default = owl_cpp.load(model_dir, threads=2)
    for seed in (0, 1):
        video = random_video(seed)
        info = default.answer(video, QUESTIONS[seed], return_info=True)
        ids, score = ref.answer_ids(ref.memory(reference_video_tokens(ref, video, default), ref.question_ids(QUESTIONS[seed])))
        assert info["ids"] == ids[1:]
        assert info["score"] == pytest.approx(score, rel=1e-3)


def test_several_questions_over_one_video(model):
    video = random_video(8)
    tokens = model.video_tokens(video)
    for q in QUESTIONS[:3]:
        info = model.answer(question=q, tokens=tokens, return_info=True)
        assert info["frames"] is None
        assert info["ids"] == model.answer(video, q, return_info=True)["ids"]
    with pytest.raises(ValueError, match="one of the two"):
        model.answer(video, "why", tokens=tokens)
    with pytest.raises(ValueError, match="video tokens"):
        model.answer(question="why", tokens=tokens[:, :5])


def test_greedy_matches_reference(model, ref):
    video = random_video(9)
    q_ids = ref.question_ids(QUESTIONS[2])
    memory = ref.memory(reference_video_tokens(ref, video, model), q_ids)
    got = model.answer(video, QUESTIONS[2], greedy=True, min_length=0, max_length=10, return_info=True)["ids"]
    assert got == ref.greedy(memory, 10)


def test_errors(model, ckpt, tmp_path):
    video = random_video(4)
    with pytest.raises(NotImplementedError, match="answers questions"):
        model.caption(video)
    with pytest.raises(ValueError, match="one video"):
        model.chat(videos=[video, video], prompt="why")
    with pytest.raises(ValueError, match="one video"):
        model.chat(prompt="why")
    with pytest.raises(ValueError, match="not images"):
        model.chat(["a.jpg"], "why", videos=[video])
    with pytest.raises(TypeError, match="must be a str"):
        model.answer(video, 42)
    with pytest.raises(ValueError, match="question as a str"):
        model.chat(videos=[video], prompt=None)
    with pytest.raises(ValueError, match="empty"):
        model.answer(video, "?!")
    with pytest.raises(ValueError, match="positions"):
        model.answer(video, " ".join(["cat"] * 45))
    with pytest.raises(ValueError, match="beam_size"):
        model.answer(video, "why", beam_size=0)
    with pytest.raises(NotImplementedError, match="no chat sessions"):
        model.session()


def test_caption_directory_refuses_questions_and_qa_keeps_apart(ckpt, model_dir, tmp_path):
    cap_ckpt = make_tiny_mplug2_checkpoint(tmp_path / "cap", seed=2)
    cap_dir = tmp_path / "cap_model"
    assert export_cli.main([str(cap_ckpt), "-o", str(cap_dir), "--quant", "f32", "--vision-quant", "none", "-q"]) == 0
    assert not (cap_dir / "question.onnx").exists()
    cap = owl_cpp.load(cap_dir, threads=2)
    assert cap.task == "caption" and cap.metadata("mplug2.task") == "caption"
    with pytest.raises(NotImplementedError, match="question.onnx"):
        cap.chat(videos=[random_video(0)], prompt="why")
    with pytest.raises(NotImplementedError, match="caption"):
        cap.answer(random_video(0), "why")
    # --task caption over the QA checkpoint: a caption directory (question.onnx of an earlier export removed)
    forced = tmp_path / "forced"
    forced.mkdir()
    (forced / "question.onnx").write_bytes((model_dir / "question.onnx").read_bytes())
    assert export_cli.main([str(ckpt), "-o", str(forced), "--quant", "f32", "-q", "--task", "caption"]) == 0
    assert not (forced / "question.onnx").exists()
    assert owl_cpp.load(forced, threads=2).task == "caption"
    # a QA decoder without its question.onnx is refused at load
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("decoder.gguf", "vision.onnx"):
        (broken / f).write_bytes((model_dir / f).read_bytes())
    with pytest.raises(FileNotFoundError, match="question.onnx"):
        owl_cpp.load(broken, threads=2)


def test_owl_run_prints_the_answer(model, model_dir, tmp_path):
    from PIL import Image
    video = random_video(6, n=12)
    paths = []
    for i, frame in enumerate(video):
        paths.append(tmp_path / f"frame{i:02d}.png")
        Image.fromarray(frame).save(paths[-1])
    question = "what is he doing?"
    r = subprocess.run([sys.executable, "-m", "owl_cpp.cli", "--model", str(model_dir), "--video", str(tmp_path),
                        "-p", question], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == model.answer([str(p) for p in paths], question)
    r = subprocess.run([sys.executable, "-m", "owl_cpp.cli", "--model", str(model_dir), "--video", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "-p" in r.stderr
