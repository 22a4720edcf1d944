"""mPLUG-Owl2 and mPLUG-Owl (v1) end to end: tiny random checkpoints in the published layouts, exported by
owl-export, loaded with owl_cpp.load, against the PyTorch references (vision + abstractor, then the language
model with its modality-adaptive module) fed the same preprocessed pixels and prompt ids.

What the runtime must reproduce: logits at every prompt position with 0, 1 and 2 images and in a multi-turn
conversation (fp32: rel. error < 1e-4), 32 greedy tokens, and a Session's second turn (image K/V of the first
turn kept in the cache) giving what recomputing the whole conversation gives."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("sentencepiece")

import owl_cpp  # noqa: E402
from owl_cpp.messages import conversation  # noqa: E402
from owl_export.owl2.export import export_owl2  # noqa: E402
from owl_export.owl2.fixtures import make_tiny_owl2_checkpoint  # noqa: E402
from owl_export.owl2.language import IMAGE_TOKEN_INDEX, Owl2LanguageReference  # noqa: E402
from owl_export.owl2.vision import Owl2VisionReference  # noqa: E402

VARIANTS = ["owl2", "owl2_1", "owl1"]
rng = np.random.default_rng(0)
IMG_A = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
IMG_B = rng.integers(0, 256, (260, 200, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=VARIANTS)
def owl2(request, tmp_path_factory):
    """(model, vision reference, language reference) of one variant."""
    root = tmp_path_factory.mktemp(f"tiny-{request.param}")
    hf = make_tiny_owl2_checkpoint(root / "hf", request.param)
    export_owl2(hf, root / "model", "f32", vision_quant="none", progress=False)   # fp32: compared with references
    model = owl_cpp.load(root / "model", n_ctx=512, threads=2, kv_type="f32")   # fp32 tolerances
    return model, Owl2VisionReference.from_pretrained(hf), Owl2LanguageReference.from_pretrained(hf, torch.float64)


def reference_inputs(model, vision_ref, lang_ref, messages, images):
    """The runtime's own prompt (ids with placeholder runs, pixels) turned into the reference's inputs:
    each image's run of placeholders back to one -200 sentinel, its pixels through the vision reference."""
    msgs, media = conversation(None, images, None, messages)
    views = model._expand(media)
    p = model._build_prompt(msgs, views)
    embeds = vision_ref(views) if len(views) else []
    ids = with_sentinels(p.ids, p.image_starts, model.image_config.image_tokens)
    return p, lang_ref.splice(ids, [e.double() for e in embeds])


def with_sentinels(ids, starts, n):
    """The runtime's ids (n placeholders per image) as the official code has them: one -200 per image."""
    out, k = [], 0
    while k < len(ids):
        if k in starts:
            out.append(IMAGE_TOKEN_INDEX)
            k += n
        else:
            out.append(ids[k])
            k += 1
    return out


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


CONVERSATIONS = {
    "no image": ([{"role": "user", "content": "Say something."}], []),
    "one image": ([{"role": "user", "content": "<|image|>What is in the picture?"}], [IMG_A]),
    "two images": ([{"role": "user", "content": "<|image|><|image|>Which one is brighter?"}], [IMG_A, IMG_B]),
    "multi-turn": ([{"role": "user", "content": "<|image|>Describe it."},
                    {"role": "assistant", "content": "Red and blue squares."},
                    {"role": "user", "content": "Which colour is larger?"}], [IMG_A]),
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_prompt_logits_match_the_reference(owl2, name):
    model, vref, lref = owl2
    messages, images = CONVERSATIONS[name]
    p, (embeds, modality) = reference_inputs(model, vref, lref, messages, images)
    want, _ = lref(embeds, modality)
    got = model.logits(messages, images=images)
    assert got.ids == p.ids and got.logits.shape == tuple(want.shape)
    assert rel_err(got.logits, want.numpy()) < 1e-4
    if images:   # the image rows took the image branch (Owl2) / were embedded (both): text-only would differ
        wrong, _ = lref(embeds, torch.zeros_like(modality))
        assert model.variant == "owl1" or rel_err(got.logits, wrong.numpy()) > 1e-2


def test_greedy_tokens_match_the_reference(owl2):
    model, vref, lref = owl2
    messages, images = CONVERSATIONS["one image"]
    _, (embeds, modality) = reference_inputs(model, vref, lref, messages, images)
    want = lref.greedy(embeds, modality, 32)
    info = model.chat(images, messages=messages, max_tokens=32, ignore_eos=True, return_info=True)
    assert info["tokens"] == want


def test_a_sessions_second_turn_equals_recomputing_the_conversation(owl2):
    model, vref, lref = owl2
    s = model.session()
    first = s.ask("What is in the picture?", images=[IMG_A], max_tokens=6, ignore_eos=True, return_info=True)
    second = s.ask("And its colours?", max_tokens=6, ignore_eos=True, return_info=True)
    assert second["prompt_tokens_evaluated"] < second["prompt_tokens"] - model.image_config.image_tokens
    # the whole conversation as the session holds it, recomputed from scratch by the reference
    ids, starts = list(s._slot.tokens[:second["prompt_tokens"]]), [im[0] for im in s._slot.images]
    assert len(starts) == 1
    pixels = model._expand([IMG_A])
    sentinel_ids = with_sentinels(ids, starts, model.image_config.image_tokens)
    embeds, modality = lref.splice(sentinel_ids, [vref(pixels)[0].double()])
    assert lref.greedy(embeds, modality, 6) == second["tokens"]
    assert first["tokens"] != second["tokens"] or first["text"] != ""


def test_images_only_no_videos_and_modes(owl2):
    model, _, _ = owl2
    with pytest.raises(ValueError, match="take images, not videos"):
        model.chat(None, "hi", videos=[[IMG_A]])
    with pytest.raises(ValueError, match="image_mode must be one of"):
        model.image_mode = "stretch"
    a = model.logits("Look.", images=[IMG_A]).logits
    model.image_mode = "pad"
    try:
        b = model.logits("Look.", images=[IMG_A]).logits
    finally:
        model.image_mode = "resize"
    assert not np.allclose(a, b)


def test_owl_export_and_owl_run_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    from owl_cpp import cli as run_cli
    from owl_export import cli as export_cli

    hf = make_tiny_owl2_checkpoint(tmp_path / "hf", "owl2", seed=3)
    assert export_cli.main([str(hf), "-o", str(tmp_path / "m"), "--quant", "q8_0", "--vision-quant", "int8"]) == 0
    err = capsys.readouterr().err
    assert "mPLUG-Owl2" in err and "decoder.gguf  q8_0" in err and "vision.int8.onnx  dynamic" in err
    Image.fromarray(IMG_A).save(tmp_path / "a.png")
    args = ["--model", str(tmp_path / "m"), "--image", str(tmp_path / "a.png"), "-p", "What is it?", "-n", "5",
            "-t", "1", "--image-mode", "pad"]
    assert run_cli.main(args) == 0
    model = owl_cpp.load(tmp_path / "m", threads=1)
    model.image_mode = "pad"
    assert capsys.readouterr().out.strip() == model.chat(str(tmp_path / "a.png"), "What is it?", max_tokens=5)


def test_owl_server_answers_with_an_owl2_model(owl2):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    import base64
    import io

    from PIL import Image
    from owl_cpp.server import create_app
    from serving import serve_app

    model, _, _ = owl2
    buf = io.BytesIO()
    Image.fromarray(IMG_B).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is this?"}]}]
    base, server = serve_app(create_app(model))
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60)
        got = client.chat.completions.create(model="x", messages=messages, max_tokens=6).choices[0].message.content
        assert got == model.chat(messages=messages, max_tokens=6)
    finally:
        server.should_exit = True


def test_owl2_1_refuses_a_context_past_its_seq_length(tmp_path):
    hf = make_tiny_owl2_checkpoint(tmp_path / "hf", "owl2_1", seed=2)
    export_owl2(hf, tmp_path / "m", "f32", progress=False)
    assert owl_cpp.load(tmp_path / "m", threads=1).n_ctx == 2048        # seq_length is the default
    with pytest.raises(ValueError, match="up to its seq_length of 2048"):
        owl_cpp.load(tmp_path / "m", n_ctx=4096, threads=1)


@pytest.mark.skipif("cuda" not in owl_cpp._core.available_backends(), reason="no CUDA GPU visible")
def test_cuda_gives_the_cpu_logits_with_images(owl2):
    """The image branch (spliced rows, their own weights) on the GPU backend: the CPU's logits."""
    model, _, _ = owl2
    gpu = owl_cpp.load(model.model_dir, n_ctx=512, threads=2, kv_type="f32", device="cuda")
    messages, images = CONVERSATIONS["two images"]
    want = model.logits(messages, images=images).logits
    assert rel_err(gpu.logits(messages, images=images).logits, want) < 1e-4


def test_a_vision_tower_of_another_export_is_refused(owl2):
    """Rows per image that do not match the decoder's placeholders: a clear error, not unfilled placeholders."""
    model, _, _ = owl2
    real = model.vision.encode
    model.vision.encode = lambda views, keys, stats: [e[:-1] for e in real(views, keys, stats)]
    try:
        with pytest.raises(ValueError, match="different exports"):
            model.chat(IMG_B, "What is it?", max_tokens=2)
    finally:
        model.vision.encode = real
