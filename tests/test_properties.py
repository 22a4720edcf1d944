"""Property tests (hypothesis) for the input paths a user controls: image preprocessing (any size and mode ->
views of the right shape and range), prompt building (any message list -> an error or one placeholder per
view), sampler options (invalid -> ValueError, valid -> a token id in range) and the streaming detokenizer
(the streamed text equals decode(ids); split UTF-8 is held back, never replaced). Bounded to stay fast."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from owl3_image_config import image_config
from owl_cpp import _core
from owl_cpp.families.owl3.media import expand_media
from owl_cpp.families.owl3.preprocess import preprocess_image
from owl_cpp.families.owl3.prompt import build_prompt
from owl_cpp.generation import SamplingOptions
from owl_cpp.messages import IMAGE_MARKER, normalize_messages

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
S = 14                                       # a small view size keeps each example cheap
CONFIG = image_config(S)


# ------------------------------------------------------------------------------------------- images

PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "La", "RGBa", "CMYK", "YCbCr", "I", "F", "I;16"]


@st.composite
def any_image(draw):
    """An image source of random size and kind: numpy (uint8/uint16/bool, 2-D or HxWx1/3/4), a PIL image of
    any common mode, or the bytes of a PNG/JPEG/GIF/BMP file."""
    w, h = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    kind = draw(st.sampled_from(["array", "pil", "file"]))
    if kind == "array":
        dtype = draw(st.sampled_from([np.uint8, np.uint16, np.bool_]))
        shape = draw(st.sampled_from([(h, w), (h, w, 1), (h, w, 3), (h, w, 4)]))
        hi = {np.uint8: 256, np.uint16: 65536, np.bool_: 2}[dtype]
        return rng.integers(0, hi, shape).astype(dtype)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if kind == "pil":
        mode = draw(st.sampled_from(PIL_MODES))
        if mode == "I;16":
            return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
        return rgb.convert("RGBA").convert(mode) if mode in ("La", "RGBa") else rgb.convert(mode)
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]))
    buf = io.BytesIO()
    rgb.save(buf, format=fmt)
    return buf.getvalue()


@BOUNDED
@given(src=any_image(), cut=st.booleans())
def test_preprocessing_gives_views_of_the_right_shape_and_range(src, cut):
    out = preprocess_image(src, CONFIG, cut=cut)
    n = out.grid[0] * out.grid[1] + 1 if cut else 1
    assert out.pixels.shape == (n, 3, S, S) and out.pixels.dtype == np.float32
    assert cut == (out.grid is not None) and (not cut or out.grid in CONFIG.anchors)
    # x / 255 then (x - 0.5) / 0.5: inside [-1, 1], never NaN
    assert np.isfinite(out.pixels).all() and out.pixels.min() >= -1 - 1e-6 and out.pixels.max() <= 1 + 1e-6
    assert out.prompt.count(IMAGE_MARKER) == n


# ------------------------------------------------------------------------------------------- prompts

@pytest.fixture(scope="module")
def owl3_tokenizer(tiny_owl3_model):
    return _core.Model.load(str(tiny_owl3_model("1b")[1] / "decoder.gguf")).tokenizer


TEXT = st.lists(st.one_of(st.text(st.characters(codec="utf-8"), max_size=4),
                          st.sampled_from(["<|", "|>", "<|im_end|>", IMAGE_MARKER, "\n", " "])), max_size=4).map("".join)
TINY_IMAGE = st.builds(lambda w, h, v: np.full((h, w, 3), v, np.uint8), st.integers(1, 40), st.integers(1, 40),
                       st.integers(0, 255))
PART = st.one_of(st.builds(lambda t: {"type": "text", "text": t}, TEXT),
                 st.builds(lambda im: {"type": "image", "image": im}, TINY_IMAGE))
def _msg(role, content):
    return {"role": role, "content": content}


USER = st.one_of(st.builds(_msg, st.just("user"), TEXT), st.builds(_msg, st.just("user"), st.lists(PART, max_size=3)))
MESSAGE = st.one_of(USER, st.builds(_msg, st.sampled_from(["system", "assistant"]), TEXT))
# well-formed turns (optional system, user/assistant pairs, a last user turn) or any list of messages
MESSAGES = st.one_of(
    st.builds(lambda system, pairs, last: system + [m for p in pairs for m in p] + [last],
              st.lists(st.builds(_msg, st.just("system"), TEXT), max_size=1),
              st.lists(st.tuples(USER, st.builds(_msg, st.just("assistant"), TEXT)), max_size=2), USER),
    st.lists(MESSAGE, min_size=1, max_size=5))


@BOUNDED
@given(messages=MESSAGES, extra=st.lists(TINY_IMAGE, max_size=2),
       variant=st.sampled_from(["241014", "240728", "241101"]), cut=st.booleans())
def test_prompt_building_never_crashes_and_places_one_placeholder_per_view(owl3_tokenizer, messages, extra,
                                                                           variant, cut):
    try:
        msgs, media = normalize_messages(messages, extra or None)
        expanded = expand_media(media, variant, CONFIG, cut)
        p = build_prompt(owl3_tokenizer, msgs, expanded)
    except ValueError:
        event("refused")
        return                       # inconsistent input (markers vs images, turn order): refused, clearly
    event(f"built, {'with' if len(p.views) else 'no'} images")
    n_images = sum(isinstance(part, dict) and part.get("type") == "image"
                   for m in messages if isinstance(m["content"], list) for part in m["content"]) + len(extra)
    assert len(expanded) == len(media) == n_images
    assert len(p.image_starts) == len(p.views) == sum(len(e.views) for e in expanded)
    marker = list(owl3_tokenizer.encode(IMAGE_MARKER, False, True))   # tokenized alone, as the prompt's chunk is
    assert all(p.ids[s:s + len(marker)] == marker for s in p.image_starts)
    assert p.image_starts == sorted(set(p.image_starts))
    assert all(0 <= t < len(owl3_tokenizer) for t in p.ids)


# ------------------------------------------------------------------------------------------- sampler

EDGE_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from([0.0, -0.0, 1.0, 1e-45, 1e-50, 1 + 1e-9, 3.5e38, 1e39, -1.0]))
EDGE_INTS = st.one_of(st.integers(-3, 70), st.sampled_from([-2 ** 31, 2 ** 31 - 1, 2 ** 31, -2 ** 31 - 1, 2 ** 40]))
PLAUSIBLE = {"temperature": st.floats(0, 3), "top_k": st.integers(-3, 70), "top_p": st.floats(0, 1, exclude_min=True),
             "min_p": st.floats(0, 1), "repeat_penalty": st.floats(0.01, 3), "repeat_last_n": st.integers(-3, 70)}
EDGES = {k: EDGE_INTS if k in ("top_k", "repeat_last_n") else EDGE_FLOATS for k in PLAUSIBLE}


@st.composite
def sampling_options(draw):
    """Plausible options with zero to two of them set to any value or an edge (NaN, inf, float32 overflow and
    underflow, int32 bounds), so that valid and invalid sets are both common."""
    kw = {k: draw(v) for k, v in PLAUSIBLE.items()}
    for k in draw(st.lists(st.sampled_from(sorted(EDGES)), max_size=2)):
        kw[k] = draw(EDGES[k])
    return SamplingOptions(**kw, seed=draw(st.one_of(st.none(), st.integers(-2 ** 70, 2 ** 70))))


def _f32(x: float) -> float:
    with np.errstate(over="ignore"):                  # 1e39 -> inf, as the runtime stores it
        return float(np.float32(x))


def valid_options(o: SamplingOptions) -> bool:
    """The documented ranges, as given and as the runtime's float32 sees them."""
    def ok(t, top_p, min_p, rp):
        return math.isfinite(t) and t >= 0 and 0 < top_p <= 1 and 0 <= min_p <= 1 and math.isfinite(rp) and rp > 0
    ints = all(-2 ** 31 <= v < 2 ** 31 for v in (o.top_k, o.repeat_last_n))
    floats = (o.temperature, o.top_p, o.min_p, o.repeat_penalty)
    return ints and ok(*floats) and ok(*map(_f32, floats))


@BOUNDED
@given(o=sampling_options(),
       logits=st.lists(st.floats(width=32, allow_nan=False) | st.sampled_from([-math.inf, math.inf]), min_size=1,
                       max_size=40),
       history=st.lists(st.integers(-5, 50), max_size=10))
def test_sampler_options_are_refused_or_give_a_token_in_range(o, logits, history):
    event("valid" if valid_options(o) else "invalid")
    if not valid_options(o):
        with pytest.raises(ValueError):
            o.make_sampler()
        return
    s = o.make_sampler()
    tok = s.sample_logits(np.array(logits, np.float32), history)
    assert 0 <= tok < len(logits)


@pytest.fixture(scope="module")
def qwen2_context(tiny_gguf):
    model = _core.Model.load(str(tiny_gguf("qwen2")))
    ctx = _core.Context(model, 16, 1)
    ctx.eval([1, 2, 3])
    return model, ctx


@BOUNDED
@given(n_vocab=st.one_of(st.integers(-2, 2000), st.integers(-2 ** 63, 2 ** 63 - 1)),
       history=st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), max_size=8))
def test_sampling_a_context_checks_n_vocab(qwen2_context, n_vocab, history):
    model, ctx = qwen2_context
    s = SamplingOptions(temperature=1.0, seed=0).make_sampler()
    if not 1 <= n_vocab <= model.hparams["n_vocab"]:
        with pytest.raises(ValueError, match="n_vocab"):
            s.sample(ctx, history, n_vocab)
    else:
        assert 0 <= s.sample(ctx, history, n_vocab) < n_vocab


# ------------------------------------------------------------------------------------------- streaming

@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tokenizer(request, tiny_gguf):
    return _core.Model.load(str(tiny_gguf(request.param))).tokenizer


def stream(tok, ids, render_special=False) -> list:
    d = _core.StreamDecoder(tok, render_special)
    return [d.push(i) for i in ids] + [d.flush()]


@BOUNDED
@given(data=st.data(), render_special=st.booleans())
def test_streamed_text_equals_decode_of_all_ids(tokenizer, data, render_special):
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    assert "".join(stream(tokenizer, ids, render_special)) == tokenizer.decode(ids, render_special)


@BOUNDED
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="\ufffd"), max_size=20))
def test_split_utf8_is_held_back_not_replaced(tokenizer, text):
    """Multi-byte characters split over byte tokens come out whole: no U+FFFD in any piece of valid text."""
    ids = tokenizer.encode(text, False, False)
    pieces = stream(tokenizer, ids)
    if "\ufffd" not in tokenizer.decode(ids):     # (a vocabulary without a character's bytes gives <unk>)
        assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids)
