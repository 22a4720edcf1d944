"""The mPLUG-Owl3 Python API on tiny exported checkpoints: prompt ids and image starts exactly as docs/owl3.md §6,
chat() end to end against the PyTorch reference (preprocess -> vision.onnx -> runtime == Owl3VisionReference
-> Owl3Reference greedy), streaming, sessions that reuse the KV and image caches, input forms and errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import owl_cpp
from owl_cpp import _core
from owl3_image_config import GRID_SQU_6, image_config
from owl_cpp.families.owl3.media import expand_media
from owl_cpp.families.owl3.preprocess import select_grid
from owl_cpp.families.owl3.prompt import build_prompt
from owl_cpp.messages import Video, normalize_messages, user_message
from owl_export.owl3 import Owl3Reference
from owl_export.vocab import load_hf_vocab, vocab_to_dict

I = "<|image|>"
SYSTEM = "<|im_start|>system\n<|im_end|>"
HEADER = "\n<|im_start|>assistant\n"


def image(w, h, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tiny_owl3_model):
    """variant -> (hf_dir, model_dir), exported once with f32 weights (conftest)."""
    return tiny_owl3_model


@pytest.fixture(scope="module")
def hf_dir(exported):
    return exported("1b")[0]


@pytest.fixture(scope="module")
def model_dir(exported):
    return exported("1b")[1]


@pytest.fixture(scope="module")
def model(model_dir):
    return owl_cpp.load(model_dir, n_ctx=512, threads=2)


@pytest.fixture(scope="module")
def reference(hf_dir):
    return Owl3Reference.from_pretrained(hf_dir, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- prompts

@pytest.fixture(scope="module")
def tok(hf_dir):
    """The runtime's tokenizer (prompt building) and the `tokenizers` library's (expected ids)."""
    from tokenizers import Tokenizer
    return _core.Tokenizer(vocab_to_dict(load_hf_vocab(hf_dir))), Tokenizer.from_file(str(hf_dir / "tokenizer.json"))


def expected(hf_tok, text_chunks):
    """ids and starts of chunks written out from docs/owl3.md §6.1: the user string split on <|image|>, each chunk
    tokenized alone by the reference tokenizer."""
    chunks = []
    for c in text_chunks:
        chunks += [p for p in re.split(r"(<\|image\|>)", c) if p] if c.startswith("\n<|im_start|>user\n") else [c]
    ids, starts = [], []
    for c in chunks:
        if c == I:
            starts.append(len(ids))
        ids += hf_tok.encode(c, add_special_tokens=False).ids
    return ids, starts


def built(tok, variant, prompt=None, images=None, videos=None, messages=None, cut=True):
    if messages is None:
        msg, media = user_message(prompt, images, videos)
        messages = [msg]
    else:
        messages, media = normalize_messages(messages, images, videos)
    return build_prompt(tok, messages, expand_media(media, variant, tiny_config(variant), cut))


def tiny_config(gen: str):
    return image_config(28 if gen == "241101" else 30, gen)     # the fixtures' S


def test_one_image_prompt_is_the_readme_format(tok):
    rt, hf = tok
    p = built(rt, "241014", "Describe this image.", [image(40, 40)], cut=False)
    want = expected(hf, [SYSTEM, f"\n<|im_start|>user\n{I}\nDescribe this image.<|im_end|>", HEADER])
    assert (p.ids, p.image_starts) == want and p.views.shape == (1, 3, 30, 30)
    assert p.chunks[:3] == [SYSTEM, "\n<|im_start|>user\n", I]
    assert rt.decode(p.ids, True) == (f"{SYSTEM}\n<|im_start|>user\n{I}\nDescribe this image.<|im_end|>{HEADER}")


def test_two_images_at_markers(tok):
    rt, hf = tok
    text = f"First {I} then {I} what changed?"
    p = built(rt, "241101", text, [image(30, 30, 1), image(30, 30, 2)], cut=False)
    assert (p.ids, p.image_starts) == expected(hf, [SYSTEM, f"\n<|im_start|>user\n{text}<|im_end|>", HEADER])
    assert len(p.image_starts) == 2 and p.views.shape[0] == 2
    assert not np.array_equal(p.views[0], p.views[1])


@pytest.mark.parametrize("variant, cut_text", [
    ("7b-240728", "Cut to 2 rows 2 columns with a global view\nsubimg(0,0)<|image|> subimg(0,1)<|image|>\n"
                  "subimg(1,0)<|image|> subimg(1,1)<|image|>\nglobal_view<|image|>"),  # docs/owl3.md §6.4 verbatim
    ("1b", "<|start_cut|>2*2\n<|image|> <|image|>\n<|image|> <|image|>\n<|image|><|end_cut|>"),
])
def test_cut_templates(tok, variant, cut_text):
    rt, hf = tok
    gen = {"7b-240728": "240728", "1b": "241014"}[variant]
    p = built(rt, gen, "Read it.", [image(50, 50)])
    assert select_grid(50, 50, 30, GRID_SQU_6) == (2, 2)
    assert (p.ids, p.image_starts) == expected(hf, [SYSTEM, f"\n<|im_start|>user\n{cut_text}\nRead it.<|im_end|>",
                                                    HEADER])
    assert p.views.shape == (5, 3, 30, 30)             # 4 tiles row-major, then the global view


def test_each_image_gets_its_own_cut(tok):
    rt, hf = tok
    p = built(rt, "241101", f"{I} and {I}?", [image(60, 40), image(40, 60)])
    a = "<|start_cut|>2*3\n<|image|> <|image|> <|image|>\n<|image|> <|image|> <|image|>\n<|image|><|end_cut|>"
    b = "<|start_cut|>3*2\n<|image|> <|image|>\n<|image|> <|image|>\n<|image|> <|image|>\n<|image|><|end_cut|>"
    assert (p.ids, p.image_starts) == expected(hf, [SYSTEM, f"\n<|im_start|>user\n{a} and {b}?<|im_end|>", HEADER])
    assert p.views.shape[0] == 7 + 7


@pytest.mark.parametrize("gen, frames_text", [
    ("240728", I * 3),
    ("241014", f"<|start_video_frame|>{I * 3}<|end_video_frame|>"),
    ("241101", f"<|start_video_frame|>{I * 3}<|end_video_frame|>"),
])
def test_video_expansion_per_variant(tok, gen, frames_text):
    rt, hf = tok
    frames = [image(64, 32, s) for s in range(3)]
    p = built(rt, gen, "What happens?", videos=[frames])             # frames are never cut
    want = expected(hf, [SYSTEM, f"\n<|im_start|>user\n{frames_text}\nWhat happens?<|im_end|>", HEADER])
    assert (p.ids, p.image_starts) == want and p.views.shape[0] == 3


def test_240728_video_rules(tok):
    rt, _ = tok
    with pytest.raises(ValueError, match="images and videos"):
        built(rt, "240728", "?", [image(50, 50)], videos=[[image(20, 20)]])
    p = built(rt, "241101", f"{I} <|video|>", [image(50, 50)], videos=[[image(20, 20)]])   # later ones: both
    assert p.views.shape[0] == 5 + 1


def test_messages_form_equals_prompt_form(tok):
    rt, _ = tok
    a, b = image(50, 50, 3), image(30, 60, 4)
    p = built(rt, "241014", "Compare them.", [a, b])
    m = built(rt, "241014", messages=[{"role": "user", "content": [
        {"type": "image", "image": a}, {"type": "image", "image": b}, {"type": "text", "text": "\nCompare them."}]},
        {"role": "assistant", "content": ""}])
    assert (m.ids, m.image_starts) == (p.ids, p.image_starts) and np.array_equal(m.views, p.views)
    s = built(rt, "241014", messages=[{"role": "user", "content": f"{I}{I}\nCompare them."}], images=[a, b])
    assert (s.ids, s.image_starts) == (p.ids, p.image_starts)


def test_multi_turn_messages_keep_the_official_quirks(tok):
    rt, hf = tok
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "image": image(30, 30)}, {"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Colour?"}]
    p = built(rt, "241014", messages=msgs, cut=False)
    want = expected(hf, ["<|im_start|>system\nBe brief.<|im_end|>", f"\n<|im_start|>user\n{I}Hi<|im_end|>", HEADER,
                         "A cat.<|im_end|>", "<|endoftext|>", "\n<|im_start|>user\nColour?<|im_end|>", HEADER])
    assert (p.ids, p.image_starts) == want


def test_prompt_errors(tok):
    rt, _ = tok
    with pytest.raises(ValueError, match="1 <\\|image\\|> .* 2 images"):
        built(rt, "241014", f"{I} one marker", [image(20, 20), image(20, 20)])
    with pytest.raises(ValueError, match="assistant turn with content"):
        built(rt, "241014", messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ValueError, match="unknown part"):
        built(rt, "241014", messages=[{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ValueError, match="only local paths"):
        built(rt, "241014", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}])
    with pytest.raises(ValueError):
        Video([])


# ------------------------------------------------------------------------------------------- chat

def reference_greedy(reference, views, prompt_ids, starts, n):
    embeds = reference.encode_images(torch.as_tensor(views, dtype=torch.float64)) if len(views) else None
    return reference.greedy(prompt_ids, n, embeds, starts if len(views) else None)


# variant, generation, prompt, images, videos: one cut image; two cut images (v2 template); image + video
E2E = [("1b", "241014", "Describe this image.", [image(60, 40, 7)], None),
       ("7b-240728", "240728", f"Compare {I} with {I}.", [image(50, 50, 13), image(30, 90, 14)], None),
       ("7b-241101", "241101", f"{I} and <|video|> - same?", [image(40, 40, 15)],
        [[image(32, 24, 16), image(32, 24, 17)]])]


@pytest.mark.parametrize("variant, gen, prompt, images, videos", E2E, ids=[e[0] for e in E2E])
def test_chat_greedy_matches_the_reference(exported, variant, gen, prompt, images, videos):
    """preprocess -> vision.onnx -> prompt -> runtime, against Owl3VisionReference + Owl3Reference (float64)."""
    hf, out = exported(variant)
    m = owl_cpp.load(out, n_ctx=512, threads=2)
    ref = Owl3Reference.from_pretrained(hf, dtype=torch.float64)
    info = m.chat(images, prompt, videos=videos, max_tokens=10, return_info=True)
    p = built(m.tokenizer, gen, prompt, images, videos)
    assert info["prompt_tokens"] == len(p.ids) and info["images"] == len(p.views) == len(p.image_starts)
    n = len(info["tokens"])
    assert n == 10 if info["finish_reason"] == "length" else info["finish_reason"] == "stop"
    assert len(set(info["tokens"])) > 2, "degenerate tiny model: compare on a checkpoint seed that varies"
    want = reference_greedy(ref, p.views, p.ids, p.image_starts, n + 1)
    assert info["tokens"] == want[:n]
    if info["finish_reason"] == "stop":                   # the reference's next token ends the answer too
        assert want[n] in m.terminators
    # the vision tower (onnxruntime) against the reference on the same pixels
    emb = np.stack(m.vision.encode(p.views))
    want_emb = ref.encode_images(torch.as_tensor(p.views, dtype=torch.float64)).numpy()
    assert np.abs(emb - want_emb).max() / np.abs(want_emb).max() < 1e-4
    t = info["timings"]
    assert t["vision_ms"] > 0 and t["prefill_tokens_per_s"] > 0 and t["prefill_s"] > 0


def test_stream_pieces_join_to_the_text(model):
    img = image(50, 50, 8)
    text = model.chat(img, "What is it?", max_tokens=12)
    stream = model.chat(img, "What is it?", max_tokens=12, stream=True)
    pieces = list(stream)
    assert text and "".join(pieces) == text and all(pieces) and stream.info["text"] == text
    assert text == text.strip()


def test_session_reuses_the_kv_cache_and_image_embeddings(model, reference):
    img = image(40, 60, 9)
    model.vision.clear_cache()
    s = model.session()
    a = s.ask("Describe it.", images=[img], max_tokens=6, return_info=True)
    assert (a["views_encoded"], a["views_reused"], a["images"]) == (7, 0, 7)     # 2 x 3 tiles + global view
    assert a["prompt_tokens_evaluated"] == a["prompt_tokens"]                     # a new session starts empty
    n_past, encoded, hits = s.n_past, model.vision.n_encoded, model.vision.cache.hits
    b = s.ask("And the colours?", max_tokens=6, return_info=True)
    assert model.vision.n_encoded == encoded and (b["views_encoded"], b["views_reused"]) == (0, 7)
    assert model.vision.cache.hits == hits               # the session keeps its turns' embeddings
    assert b["prompt_tokens_evaluated"] == b["prompt_tokens"] - n_past           # only the new turn
    assert b["prompt_tokens_evaluated"] < 30 < b["prompt_tokens"]
    # a fresh full prompt of the same conversation gives the same tokens (reference) and logits (runtime)
    full = build_prompt(model.tokenizer, s.messages[:-1], expand_media([img], "241014", tiny_config("241014")))
    assert len(full.ids) == b["prompt_tokens"]
    want = reference_greedy(reference, full.views, full.ids, full.image_starts, len(b["tokens"]))
    assert b["tokens"] == want
    fresh = _core.Context(model._model, 512, 2)
    for st, e in zip(full.image_starts, model.vision.encode(full.views)):
        fresh.add_image(e, st)
    want_logits = fresh.eval(full.ids)
    ctx = s._slot.ctx
    ctx.truncate(len(full.ids) - 1)                      # the session's cache, up to the prompt's last token
    got_logits = ctx.eval(full.ids[-1:])
    assert np.abs(got_logits - want_logits).max() / np.abs(want_logits).max() < 1e-5
    s.reset()
    assert s.messages == [] and s.n_past == 0 and ctx.n_images == 0


def test_sessions_have_contexts_of_their_own(model):
    img = image(30, 30, 10)
    a, b = model.session(), model.session()
    ra = a.ask("What is this?", images=[img], max_tokens=4, cut=False, return_info=True)
    n_a = a.n_past
    rb = b.ask("Hello", max_tokens=4, return_info=True)
    assert a.n_past == n_a and b.n_past > 0 and a._slot.ctx is not b._slot.ctx
    assert rb["prompt_tokens_evaluated"] == rb["prompt_tokens"]
    default = model._contexts.default.ctx
    assert default is not a._slot.ctx and default is not b._slot.ctx
    b.reset()                                            # only b's context is emptied
    assert b.n_past == 0 and a.n_past == n_a
    a2 = a.ask("And now?", max_tokens=4, return_info=True)
    assert a2["prompt_tokens_evaluated"] < a2["prompt_tokens"] - len(ra["tokens"])


def test_session_with_a_new_image_in_a_later_turn(model):
    s = model.session(system="Be brief.")
    s.ask("Hello", max_tokens=3)
    before = s.n_past
    c = s.ask("What is this?", images=[image(30, 30, 10)], max_tokens=3, return_info=True, cut=False)
    assert c["prompt_tokens_evaluated"] == c["prompt_tokens"] - before and s._slot.ctx.n_images == 1
    assert [m["role"] for m in s.history] == ["system", "user", "assistant", "user", "assistant"]


def test_image_input_forms_agree(model, tmp_path):
    arr = image(40, 30, 11)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    model.vision.clear_cache()
    forms = [str(path), path, Image.fromarray(arr), arr, path.read_bytes()]
    infos = [model.chat(f, "Hi", max_tokens=4, cut=False, return_info=True) for f in forms]
    assert [(i["views_encoded"], i["views_reused"]) for i in infos] == [(1, 0)] + [(0, 1)] * 4   # the same pixels
    assert len({tuple(i["tokens"]) for i in infos}) == 1
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{path}"}},
                                         {"type": "text", "text": "\nHi"}]}]
    again = model.chat(messages=msgs, max_tokens=4, cut=False, return_info=True)
    assert again["tokens"] == infos[0]["tokens"] and again["views_encoded"] == 0


def test_vision_file_from_another_export_is_refused(exported, tmp_path):
    import shutil
    mixed = tmp_path / "mixed"
    shutil.copytree(exported("1b")[1], mixed)
    shutil.copy(exported("7b-241101")[1] / "vision.onnx", mixed / "vision.onnx")       # S = 28, not 30
    with pytest.raises(ValueError, match="different exports"):
        owl_cpp.load(mixed)


def test_errors_are_clear(model, model_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"image 0 \(12 bytes\)"):
        model.chat(b"not an image", "Hi", max_tokens=2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ValueError, match="broken.jpg"):
        model.chat([image(20, 20), str(bad)], "Hi", max_tokens=2)
    with pytest.raises(IsADirectoryError, match=r"image 0 .*: is a directory"):
        model.chat(tmp_path, "Hi", max_tokens=2)
    with pytest.raises(FileNotFoundError, match="owl-export"):
        owl_cpp.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="decoder.gguf"):
        owl_cpp.load(tmp_path / "empty")
    small = owl_cpp.load(model_dir, n_ctx=48, threads=1)
    with pytest.raises(ValueError, match="exceeds the context"):
        small.chat(image(50, 50), "word " * 40, max_tokens=2)
    with pytest.raises(ValueError, match="prompt= or messages="):
        model.chat(image(20, 20))
    monkeypatch.delenv("OWL_MODEL", raising=False)
    monkeypatch.setenv("OWL_DEMO_DIR", str(tmp_path / "no-demo"))     # else the built-in demo model answers
    with pytest.raises(RuntimeError, match="OWL_MODEL.*owl-export"):
        owl_cpp.chat(image(20, 20), "Hi")


def test_top_level_chat_uses_owl_model(model, model_dir, monkeypatch):
    monkeypatch.setenv("OWL_MODEL", str(model_dir))
    img = image(30, 30, 12)
    text = owl_cpp.chat(img, "Hi", max_tokens=4, threads=2, n_ctx=512)
    assert text == model.chat(img, "Hi", max_tokens=4)
    loaded = dict(owl_cpp._loaded)
    assert owl_cpp.chat(img, "Hi", max_tokens=4, threads=2, n_ctx=512) == text       # cached model
    assert owl_cpp._loaded == loaded and any(m.model_dir == model_dir for m in loaded.values())


def test_non_finite_vision_output_is_an_error(tmp_path):
    """A broken vision.onnx (NaN/inf out) must fail naming the file, not feed garbage to the decoder."""
    import onnx
    from onnx import TensorProto, helper
    from owl_cpp.vision import VisionEncoder
    graph = helper.make_graph([helper.make_node("Sqrt", ["pixel_values"], ["image_embeds"])], "sqrt",   # NaN below 0
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", 3, 4, 4])])
    path = tmp_path / "vision.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    enc = VisionEncoder(path, batch_size=2)
    views = np.ones((3, 3, 4, 4), np.float32)
    assert len(enc.encode(views[:1])) == 1
    views[2, 1, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"vision.onnx: the vision model produced non-finite values .* view\(s\) \[2\]"):
        enc.encode(views)
