"""mPLUG-Owl2 / Owl v1 prompts and image preprocessing (python/owl_cpp/families/owl2), checked against the
official construction redone with the `sentencepiece` library (docs/owl2.md A8, PART C) and against direct
Pillow pipelines (A7). No decoder involved."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("torch")

from owl_cpp import _core  # noqa: E402
from owl_cpp.families.owl2.preprocess import Owl2ImageConfig, preprocess_image  # noqa: E402
from owl_cpp.families.owl2.prompt import (PLACEHOLDER_ID, V1_SYSTEM, build_prompt, conversation_text,  # noqa: E402
                                          question_prompt)
from owl_export.owl2.config import CLIP_MEAN, CLIP_STD  # noqa: E402
from owl_export.owl2.fixtures import _write_tokenizer  # noqa: E402
from owl_export.vocab import load_hf_vocab, vocab_to_dict  # noqa: E402

N_IMG = 65
IMG = -200


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    d = tmp_path_factory.mktemp("owl2-tok")
    _write_tokenizer(d, 1000)
    ours = _core.Tokenizer(vocab_to_dict(load_hf_vocab(d)))
    return ours, spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))


def hf_encode(sp, text: str, bos: bool) -> list[int]:
    """The slow LlamaTokenizer in legacy mode: special tokens split out by the added-token trie, each text
    fragment through sp.encode (its own dummy prefix), BOS in front when asked."""
    ids = [sp.bos_id()] if bos else []
    for k, frag in enumerate(text.split("</s>")):
        if k:
            ids.append(sp.eos_id())
        if frag:
            ids += sp.encode(frag)
    return ids


def official_owl2_ids(sp, prompt: str) -> list[int]:
    """mm_utils.tokenizer_image_token, with each image's -200 then widened to its 65 rows."""
    chunks = [hf_encode(sp, c, True) if c else [] for c in prompt.split("<|image|>")]
    out, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == sp.bos_id():
        offset = 1
        out.append(chunks[0][0])
    for k, c in enumerate(chunks):
        if k:
            out += [IMG] * (offset + 1)
            out = out[:len(out) - offset] if offset else out
        out += c[offset:]
    wide = []
    for t in out:
        wide += [PLACEHOLDER_ID] * N_IMG if t == IMG else [t]
    return wide


def official_v1_ids(sp, prompt: str) -> list[int]:
    """processing_mplug_owl._tokenize_prompt with add_BOS: 65 placeholders per <image>."""
    ids = [sp.bos_id()]
    for k, piece in enumerate(prompt.split("<image>")):
        if k:
            ids += [PLACEHOLDER_ID] * N_IMG
        if piece:
            ids += sp.encode(piece)
    return ids


def views(n):
    return np.zeros((n, 3, 4, 4), np.float32)


def test_owl2_single_turn_matches_tokenizer_image_token(tokenizers):
    ours, sp = tokenizers
    msgs = [{"role": "user", "content": "<|image|>\nWhat colour is the big circle?"}]
    assert conversation_text(msgs, "owl2") == "USER: <|image|>What colour is the big circle? ASSISTANT:"
    p = build_prompt(ours, msgs, views(1), "owl2", N_IMG, sp.bos_id())
    want = official_owl2_ids(sp, "USER: <|image|>What colour is the big circle? ASSISTANT:")
    assert p.ids == want
    assert p.ids[0] == sp.bos_id() and p.image_starts == [1 + len(sp.encode("USER: "))]
    assert p.ids[p.image_starts[0]:p.image_starts[0] + N_IMG] == [PLACEHOLDER_ID] * N_IMG


def test_owl2_multi_turn_two_images_and_the_image_first_quirk(tokenizers):
    ours, sp = tokenizers
    msgs = [{"role": "user", "content": "<|image|><|image|>Compare them."},
            {"role": "assistant", "content": "The left one is red."},
            {"role": "user", "content": "And the right one?"}]
    text = conversation_text(msgs, "owl2")
    assert text == "USER: <|image|><|image|>Compare them. ASSISTANT: The left one is red.</s>USER: And the right one? ASSISTANT:"
    p = build_prompt(ours, msgs, views(2), "owl2", N_IMG, sp.bos_id())
    assert p.ids == official_owl2_ids(sp, text)
    assert p.image_starts[1] == p.image_starts[0] + N_IMG
    # A prompt that starts with the image: no BOS first, BOS right after the image (docs/owl2.md A8)
    quirk = official_owl2_ids(sp, "<|image|>Describe.")
    assert quirk[:N_IMG] == [PLACEHOLDER_ID] * N_IMG and quirk[N_IMG] == sp.bos_id()
    from owl_cpp.families.owl2.prompt import tokenize_pieces
    assert tokenize_pieces(ours, "<|image|>Describe.", N_IMG, sp.bos_id())[0] == quirk


def test_owl2_session_question_equals_the_whole_prompts_tail(tokenizers):
    ours, sp = tokenizers
    first = build_prompt(ours, [{"role": "user", "content": "<|image|>What is it?"}], views(1), "owl2", N_IMG, sp.bos_id())
    q = question_prompt(ours, {"role": "user", "content": "<|image|>What is it?"}, views(1), "owl2", N_IMG, sp.bos_id())
    assert [sp.bos_id()] + q.ids == first.ids and [s + 1 for s in q.image_starts] == first.image_starts


def test_owl1_prompt_matches_the_processor(tokenizers):
    ours, sp = tokenizers
    msgs = [{"role": "user", "content": "<|image|>Explain why this meme is funny."}]
    text = conversation_text(msgs, "owl1")
    official = f"{V1_SYSTEM}\nHuman: <image>\nHuman: Explain why this meme is funny.\nAI: "
    assert text.replace("<|image|>", "<image>") == official
    p = build_prompt(ours, msgs, views(1), "owl1", N_IMG, sp.bos_id())
    assert p.ids == official_v1_ids(sp, official)
    two = conversation_text([{"role": "user", "content": "<|image|><|image|>Which is larger?"}], "owl1")
    assert two.endswith("Human: <|image|>\nHuman: <|image|>\nHuman: Which is larger?\nAI: ")


def test_marker_count_must_match_images(tokenizers):
    ours, sp = tokenizers
    with pytest.raises(ValueError, match="1 <\\|image\\|> markers for 2 images"):
        build_prompt(ours, [{"role": "user", "content": "<|image|>hi"}], views(2), "owl2", N_IMG, sp.bos_id())


# ------------------------------------------------------------------------------------------- pixels

CFG = Owl2ImageConfig("owl2", 448, N_IMG, CLIP_MEAN, CLIP_STD)


def clip(im: Image.Image, S: int) -> np.ndarray:
    """The CLIP processor on an image already S x S after its shortest-edge resize: /255, normalize, CHW."""
    assert im.size == (S, S)
    x = np.asarray(im, np.uint8).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return x.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8))   # wider than tall, > 448


def test_resize_mode_is_the_readme_path(photo):
    square = photo.resize((1000, 1000), Image.Resampling.BICUBIC)      # img.resize((max_edge, max_edge))
    want = clip(square.resize((448, 448), Image.Resampling.BICUBIC), 448)
    np.testing.assert_array_equal(preprocess_image(photo, CFG, "resize"), want)


def test_pad_mode_is_the_cli_path(photo):
    canvas = Image.new("RGB", (1000, 1000), (122, 116, 104))
    canvas.paste(photo, (0, 150))
    want = clip(canvas.resize((448, 448), Image.Resampling.BICUBIC), 448)
    got = preprocess_image(photo, CFG, "pad")
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, preprocess_image(photo, CFG, "resize"))


def test_crop_mode_is_the_plain_processor(photo):
    big = photo.resize((int(448 * 1000 / 700), 448), Image.Resampling.BICUBIC)
    left = (big.size[0] - 448) // 2
    want = clip(big.crop((left, 0, left + 448, 448)), 448)
    np.testing.assert_array_equal(preprocess_image(photo, CFG, "crop"), want)


def test_owl1_resizes_straight_to_224(photo):
    cfg = Owl2ImageConfig("owl1", 224, N_IMG, CLIP_MEAN, CLIP_STD)
    want = clip(photo.resize((224, 224), Image.Resampling.BICUBIC), 224)
    np.testing.assert_array_equal(preprocess_image(photo, cfg, "resize"), want)


def test_bad_mode_and_bad_metadata():
    with pytest.raises(ValueError, match="image mode must be one of"):
        preprocess_image(np.zeros((8, 8, 3), np.uint8), CFG, "stretch")
    meta = {"owl2.variant": "owl2", "owl2.image_tokens": 65, "owl2.vision.image_size": 448,
            "owl2.vision.image_mean": list(CLIP_MEAN), "owl2.vision.image_std": list(CLIP_STD)}
    assert Owl2ImageConfig.from_metadata(meta) == CFG
    with pytest.raises(ValueError, match="missing owl2.vision.image_size"):
        Owl2ImageConfig.from_metadata({k: v for k, v in meta.items() if k != "owl2.vision.image_size"})
    with pytest.raises(ValueError, match="owl2.vision.image_std is"):
        Owl2ImageConfig.from_metadata({**meta, "owl2.vision.image_std": [0.2, 0.0, 0.3]})
    with pytest.raises(ValueError, match="owl2.image_tokens is"):
        Owl2ImageConfig.from_metadata({**meta, "owl2.image_tokens": 10 ** 9})


def test_owl2_1_prompt_has_no_bos_and_keeps_its_sep_as_text(tmp_path):
    """Owl2.1: Qwen's tokenizer adds no BOS, so tokenizer_image_token just joins the pieces; "</s>" of the
    mplug_owl2 template is plain text in Qwen's vocabulary (docs/owl2.md PART B 6)."""
    from owl_export.owl2.fixtures import _write_qwen_tokenizer
    _write_qwen_tokenizer(tmp_path, 1000)
    tok = _core.Tokenizer(vocab_to_dict(load_hf_vocab(tmp_path)))
    assert tok.bos_id is None
    msgs = [{"role": "user", "content": "<|image|>What is it?"}, {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Sure?"}]
    text = conversation_text(msgs, "owl2_1")
    assert text == "USER: <|image|>What is it? ASSISTANT: A cat.</s>USER: Sure? ASSISTANT:"
    p = build_prompt(tok, msgs, views(1), "owl2_1", N_IMG, -1)
    head, tail = text.split("<|image|>")
    assert p.ids == list(tok.encode(head, False, True)) + [PLACEHOLDER_ID] * N_IMG + list(tok.encode(tail, False, True))
    assert not any(tok.is_control(t) for t in p.ids[p.image_starts[0] + N_IMG:])      # "</s>" is text here
