"""OpenAI-style messages -> normalized messages (string content with media markers) + media in order."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from owl_cpp.messages import Video, conversation, image_from_url, normalize_messages

I, V = "<|image|>", "<|video|>"


def png_bytes(seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, (8, 9, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_content_parts_become_markers_in_order():
    data = png_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    msgs, media = normalize_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image_url", "image_url": {"url": url}},
                                     " and ", {"type": "image", "image": "b.png"},
                                     {"type": "video", "video": ["f0.png", "f1.png"]}]},
        {"role": "assistant", "content": None}])
    assert msgs == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Look: {I} and {I}{V}"}, {"role": "assistant", "content": ""}]
    assert media[0] == data and media[1] == "b.png" and isinstance(media[2], Video)
    assert media[2].frames == ("f0.png", "f1.png")


def test_urls():
    assert image_from_url("file:///tmp/a.png") == "/tmp/a.png" and image_from_url("a.png") == "a.png"
    assert image_from_url("data:text/plain,abc") == b"abc"
    with pytest.raises(ValueError, match="only local paths"):
        image_from_url("http://example.com/a.png")


def test_images_argument_fills_markers_or_goes_before_the_last_question():
    msgs, media = normalize_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                      {"role": "user", "content": "What is it?"}], images=["x.png"])
    assert msgs[2]["content"] == f"{I}\nWhat is it?" and msgs[0]["content"] == "Hi" and media == ["x.png"]
    msgs, media = normalize_messages([{"role": "user", "content": f"A {I} B {I}"}], images=["1.png", "2.png"])
    assert msgs[0]["content"] == f"A {I} B {I}" and media == ["1.png", "2.png"]


def test_errors():
    with pytest.raises(ValueError, match="either prompt= or messages="):
        conversation("a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="not both"):
        normalize_messages([{"role": "user", "content": [{"type": "image", "image": "a.png"}]}], images=["b.png"])
    with pytest.raises(ValueError, match="leave the markers out"):
        normalize_messages([{"role": "user", "content": [I, {"type": "image", "image": "a.png"}]}])
    with pytest.raises(ValueError, match="user messages"):
        normalize_messages([{"role": "assistant", "content": [{"type": "image", "image": "a.png"}]}])
    with pytest.raises(ValueError, match="unknown role"):
        normalize_messages([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        normalize_messages([])
