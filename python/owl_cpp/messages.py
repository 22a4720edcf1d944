"""Conversations as input, for every family: a plain prompt + images, or OpenAI-style messages.

  messages=[{"role": "system" | "user" | "assistant",
             "content": "text" | [{"type": "text", "text": ...},
                                  {"type": "image_url", "image_url": {"url": "data:image/png;base64,..." | path}},
                                  {"type": "image", "image": path | PIL.Image | array | bytes},
                                  {"type": "video", "video": [frames]}]}]

Normal form: messages whose content is a string, with one marker per medium where it goes (`<|image|>`,
`<|video|>`), and the media in marker order. Families turn markers into their own prompt text.
"""
from __future__ import annotations

import base64
import os
import re
from typing import Sequence

import numpy as np

IMAGE_MARKER = "<|image|>"
VIDEO_MARKER = "<|video|>"
MARKERS = re.compile(r"(<\|image\|>|<\|video\|>)")
ROLES = ("system", "user", "assistant")


class Video:
    """A video as its frames (paths, PIL images, arrays or bytes), already sampled."""

    def __init__(self, frames):
        if isinstance(frames, Video):
            frames = frames.frames
        if isinstance(frames, (str, os.PathLike)):
            raise ValueError(f"{os.fspath(frames)}: a video is a list of frames here; decode the file first "
                             "(owl-run --video does, with PyAV or OpenCV)")
        self.frames = tuple(as_list(frames))
        if not self.frames:
            raise ValueError("a video needs at least one frame")


def as_list(images) -> list:
    """None, one image, or a list of images -> list (an (N, H, W, C) array is N images)."""
    if images is None:
        return []
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def describe(src) -> str:
    """A short name for an image source, for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"{len(src)} bytes"
    if isinstance(src, np.ndarray):
        return f"array {src.shape} {src.dtype}"
    return type(src).__name__


def turns_to_answer(messages: Sequence[dict]) -> list[dict]:
    """The turns a prompt is built from: a conversation ending with a user turn, or with an empty assistant turn
    (dropped: the prompt ends with the assistant's header anyway); anything else is a ValueError."""
    msgs = list(messages)
    if msgs and msgs[-1]["role"] == "assistant":
        if msgs[-1]["content"]:
            raise ValueError("the last message is an assistant turn with content; end with a user turn "
                             "(or an empty assistant turn) to get an answer")
        msgs = msgs[:-1]
    if not any(m["role"] == "user" for m in msgs):
        raise ValueError("the messages have no user turn")
    return msgs


def user_message(prompt: str, images=None, videos=None) -> tuple[dict, list]:
    """A plain prompt + media -> one user message and its media in marker order. Markers already in the
    prompt place the media; media of a kind the prompt has no marker for are prepended (images, then videos,
    then a newline), as in the official README ("<|image|>\\nDescribe this image.")."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    images, videos = as_list(images), [Video(v) for v in as_list(videos)]
    text = _marker_head(prompt, images, videos) + prompt
    return {"role": "user", "content": text}, _assign(text, images, videos, "the prompt")


def conversation(prompt=None, images=None, videos=None, messages=None) -> tuple[list[dict], list]:
    """prompt= or messages= (exactly one) with images=/videos= -> normalized messages and media."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass either prompt= or messages=")
    if messages is None:
        msg, media = user_message(prompt, images, videos)
        return [msg], media
    return normalize_messages(messages, images, videos)


def _marker_head(text: str, images: list, videos: list) -> str:
    """Markers for the media kinds `text` has no marker for, then a newline; "" when none are missing."""
    head = ""
    if images and IMAGE_MARKER not in text:
        head += IMAGE_MARKER * len(images)
    if videos and VIDEO_MARKER not in text:
        head += VIDEO_MARKER * len(videos)
    return head + "\n" if head else ""


def _assign(text: str, images: list, videos: list, where: str) -> list:
    """Media in the order of the markers in text; counts must match."""
    n_img, n_vid = text.count(IMAGE_MARKER), text.count(VIDEO_MARKER)
    if n_img != len(images) or n_vid != len(videos):
        raise ValueError(f"{where} has {n_img} {IMAGE_MARKER} and {n_vid} {VIDEO_MARKER} markers but "
                         f"{len(images)} images and {len(videos)} videos were given")
    it_img, it_vid = iter(images), iter(videos)
    return [next(it_img) if m == IMAGE_MARKER else next(it_vid) for m in MARKERS.findall(text)]


def normalize_messages(messages: Sequence[dict], images=None, videos=None) -> tuple[list[dict], list]:
    """OpenAI-style messages -> messages with string content (media as markers) + media in marker order.

    content: a string (markers placed by the caller; images=/videos= fill them in order), or a list of parts
    (see the module doc; image_url takes a path, a file:// or a data: URL). Parts join with no separator.
    Markers count only in user messages."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out, part_media = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        role, content = msg["role"], msg.get("content", "")
        if role not in ROLES:
            raise ValueError(f"messages[{i}]: unknown role {role!r} (expected system, user or assistant)")
        if content is None:
            content = ""
        if isinstance(content, (list, tuple)):
            content, media = _parts(content, i, role)
            part_media += media
        elif not isinstance(content, str):
            raise ValueError(f"messages[{i}]: content must be a string or a list of parts")
        out.append({"role": role, "content": content})
    user_text = "".join(m["content"] for m in out if m["role"] == "user")
    extra_images, extra_videos = as_list(images), as_list(videos)
    if part_media and (extra_images or extra_videos):
        raise ValueError("give images either as message parts or as images=/videos=, not both")
    if part_media:
        n = (user_text.count(IMAGE_MARKER), user_text.count(VIDEO_MARKER))
        got = (sum(not isinstance(m, Video) for m in part_media), sum(isinstance(m, Video) for m in part_media))
        if n != got:
            raise ValueError(f"the messages' text has {n[0]} {IMAGE_MARKER} and {n[1]} {VIDEO_MARKER} markers "
                             f"beside {got[0]} image and {got[1]} video parts; leave the markers out of the text")
        return out, part_media
    videos = [Video(v) for v in extra_videos]
    head = _marker_head(user_text, extra_images, videos)
    if head:   # the text has no markers for them: the media go before the last question
        last = max((k for k, m in enumerate(out) if m["role"] == "user"), default=None)
        if last is None:
            raise ValueError("the messages have no user turn to put the images in")
        out[last] = dict(out[last], content=head + out[last]["content"])
        user_text = "".join(m["content"] for m in out if m["role"] == "user")
    return out, _assign(user_text, extra_images, videos, "the messages")


def _parts(parts, i: int, role: str) -> tuple[str, list]:
    text, media = "", []
    for j, part in enumerate(parts):
        if isinstance(part, str):
            part = {"type": "text", "text": part}
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("image", "image_url", "video") and role != "user":
            raise ValueError(f"messages[{i}]: images and videos go in user messages, not {role}")
        if kind == "text":
            text += str(part.get("text", ""))
        elif kind == "image":
            media.append(part.get("image"))
            text += IMAGE_MARKER
        elif kind == "image_url":
            url = part.get("image_url")
            media.append(image_from_url(url.get("url") if isinstance(url, dict) else url))
            text += IMAGE_MARKER
        elif kind == "video":
            media.append(Video(part.get("video")))
            text += VIDEO_MARKER
        else:
            raise ValueError(f"messages[{i}].content[{j}]: unknown part {part!r} "
                             "(expected type text, image, image_url or video)")
    return text, media


def image_from_url(url):
    """data: and file:// URLs and plain paths -> bytes or a path; nothing is fetched over the network."""
    if not isinstance(url, str):
        return url
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return base64.b64decode(data) if head.endswith(";base64") else data.encode()
    if url.startswith("file://"):
        return url[len("file://"):]
    if re.match(r"^[a-z]+://", url):
        raise ValueError(f"image URL {url!r}: only local paths, file:// and data: URLs are supported "
                         "(download the image first)")
    return url
