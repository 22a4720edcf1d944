"""mPLUG-Owl3 prompts: messages + images/videos -> token ids, the start of each `<|image|>`, and the pixels of
each view, exactly as the official processor builds them (docs/owl3.md §6.1-6.5).

  1. normalize   prompt= or OpenAI-style messages= -> [{"role", "content": str with markers}] + media in
                 marker order (a plain prompt without markers gets them prepended, like the README's
                 "<|image|>\\nDescribe this image.")
  2. expand      each image -> preprocess_image (cut grid + its template text), each video -> frames (never
                 cut) + the variant's `<|video|>` text; the marker is replaced in place
  3. tokenize    ChatML chunks, each tokenized on its own; user text split on `<|image|>` so BPE never merges
                 across a placeholder; s_j = index of the first token of the j-th placeholder
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .preprocess import IMAGE_TOKEN, VARIANT_SETTINGS, preprocess_image

VIDEO_TOKEN = "<|video|>"
EMPTY_SYSTEM = "<|im_start|>system\n<|im_end|>"          # not Qwen's default "You are a helpful assistant."
ASSISTANT_HEADER = "\n<|im_start|>assistant\n"
_MARKERS = re.compile(r"(<\|image\|>|<\|video\|>)")
_SPLIT_IMAGE = re.compile(r"(<\|image\|>)")


# ------------------------------------------------------------------------------------------- media

@dataclass(frozen=True)
class Settings:
    """What the prompt depends on, per model: generation ("240728" | "241014" | "241101"), S, cut template."""
    variant: str
    image_size: int
    cut_template: str

    @staticmethod
    def for_variant(variant: str, image_size: Optional[int] = None, cut_template: Optional[str] = None):
        if variant not in VARIANT_SETTINGS:
            raise ValueError(f"unknown mPLUG-Owl3 variant {variant!r} (expected one of {sorted(VARIANT_SETTINGS)})")
        size, template = VARIANT_SETTINGS[variant]
        return Settings(variant, int(image_size or size), cut_template or template)


class Video:
    """A video as its frames (paths, PIL images, arrays or bytes), already sampled (docs/owl3.md §6.5)."""

    def __init__(self, frames):
        if isinstance(frames, Video):
            frames = frames.frames
        if isinstance(frames, (str, os.PathLike)):
            raise ValueError(f"{os.fspath(frames)}: a video is a list of frames here; decode the file first "
                             "(owl-run --video does, with PyAV or OpenCV)")
        self.frames = tuple(as_list(frames))
        if not self.frames:
            raise ValueError("a video needs at least one frame")


@dataclass(frozen=True)
class Expanded:
    """One image or video after preprocessing: the text its marker becomes and one pixel view per `<|image|>`."""
    text: str
    views: np.ndarray                  # [N, 3, S, S] float32, in placeholder order
    kind: str                          # "image" | "video"
    grid: Optional[tuple] = None       # (rows, cols) of a cut image


def video_text(n_frames: int, variant: str) -> str:
    """`<|video|>` expanded (docs/owl3.md §6.5): bare placeholders for 240728, framed by markers for later ones."""
    body = IMAGE_TOKEN * n_frames
    return body if variant == "240728" else f"<|start_video_frame|>{body}<|end_video_frame|>"


def expand_media(media: Sequence[Any], settings: Settings, cut: bool = True) -> list[Expanded]:
    """Preprocess media in order. 240728 turns cutting off for a call with videos and refuses images beside
    videos, as its processor does (docs/owl3.md §5.4, §6.5)."""
    has_video = any(isinstance(m, Video) for m in media)
    if settings.variant == "240728" and has_video:
        if any(not isinstance(m, Video) for m in media):
            raise ValueError("mPLUG-Owl3-7B-240728 cannot take images and videos in the same request")
        cut = False
    out = []
    for k, m in enumerate(media):
        if isinstance(m, Video):
            views = [_preprocess(f, settings, False, f"video {k}, frame {i}").pixels for i, f in enumerate(m.frames)]
            out.append(Expanded(video_text(len(views), settings.variant), np.concatenate(views), "video"))
        else:
            p = _preprocess(m, settings, cut, f"image {k}")
            out.append(Expanded(p.prompt, p.pixels, "image", p.grid))
    return out


def _preprocess(src, settings: Settings, cut: bool, what: str):
    try:
        return preprocess_image(src, image_size=settings.image_size, template=settings.cut_template, cut=cut)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{what} ({describe(src)}): {e}") from e


def describe(src) -> str:
    """A short name for an image source, for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"{len(src)} bytes"
    if isinstance(src, np.ndarray):
        return f"array {src.shape} {src.dtype}"
    return type(src).__name__


# ------------------------------------------------------------------------------------------- normalize

def as_list(images) -> list:
    """None, one image, or a list of images -> list (an (N, H, W, C) array is N images)."""
    if images is None:
        return []
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def user_message(prompt: str, images=None, videos=None) -> tuple[dict, list]:
    """A plain prompt + media -> one user message and its media in marker order. Markers already in the
    prompt place the media; media of a kind the prompt has no marker for are prepended (images, then videos,
    then a newline), as in the official README."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    images, videos = as_list(images), [Video(v) for v in as_list(videos)]
    text = _marker_head(prompt, images, videos) + prompt
    return {"role": "user", "content": text}, _assign(text, images, videos, "the prompt")


def _marker_head(text: str, images: list, videos: list) -> str:
    """Markers for the media kinds `text` has no marker for, then a newline; "" when none are missing."""
    head = ""
    if images and IMAGE_TOKEN not in text:
        head += IMAGE_TOKEN * len(images)
    if videos and VIDEO_TOKEN not in text:
        head += VIDEO_TOKEN * len(videos)
    return head + "\n" if head else ""


def _assign(text: str, images: list, videos: list, where: str) -> list:
    """Media in the order of the markers in text; counts must match."""
    n_img, n_vid = text.count(IMAGE_TOKEN), text.count(VIDEO_TOKEN)
    if n_img != len(images) or n_vid != len(videos):
        raise ValueError(f"{where} has {n_img} {IMAGE_TOKEN} and {n_vid} {VIDEO_TOKEN} markers but "
                         f"{len(images)} images and {len(videos)} videos were given")
    it_img, it_vid = iter(images), iter(videos)
    return [next(it_img) if m == IMAGE_TOKEN else next(it_vid) for m in _MARKERS.findall(text)]


def normalize_messages(messages: Sequence[dict], images=None, videos=None) -> tuple[list[dict], list]:
    """OpenAI-style messages -> messages with string content (media as markers) + media in marker order.

    content: a string (markers placed by the caller; images=/videos= fill them in order), or a list of parts
    {"type": "text", "text"}, {"type": "image", "image"}, {"type": "image_url", "image_url": {"url"}}
    (a path, file:// or data: URL), {"type": "video", "video": [frames]}. Parts join with no separator.
    Markers count only in user messages (the official builder splits only user text)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out, part_media = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        role, content = msg["role"], msg.get("content", "")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}]: unknown role {role!r} (expected system, user or assistant)")
        if content is None:
            content = ""
        if isinstance(content, (list, tuple)):
            text, media = _parts(content, i, role)
            content = text
            part_media += media
        elif not isinstance(content, str):
            raise ValueError(f"messages[{i}]: content must be a string or a list of parts")
        out.append({"role": role, "content": content})
    user_text = "".join(m["content"] for m in out if m["role"] == "user")
    extra_images, extra_videos = as_list(images), as_list(videos)
    if part_media and (extra_images or extra_videos):
        raise ValueError("give images either as message parts or as images=/videos=, not both")
    if part_media:
        n = (user_text.count(IMAGE_TOKEN), user_text.count(VIDEO_TOKEN))
        got = (sum(not isinstance(m, Video) for m in part_media), sum(isinstance(m, Video) for m in part_media))
        if n != got:
            raise ValueError(f"the messages' text has {n[0]} {IMAGE_TOKEN} and {n[1]} {VIDEO_TOKEN} markers "
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
            text += IMAGE_TOKEN
        elif kind == "image_url":
            url = part.get("image_url")
            media.append(_from_url(url.get("url") if isinstance(url, dict) else url))
            text += IMAGE_TOKEN
        elif kind == "video":
            media.append(Video(part.get("video")))
            text += VIDEO_TOKEN
        else:
            raise ValueError(f"messages[{i}].content[{j}]: unknown part {part!r} "
                             "(expected type text, image, image_url or video)")
    return text, media


def _from_url(url):
    """data: and file:// URLs and plain paths; nothing is fetched over the network."""
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


# ------------------------------------------------------------------------------------------- tokenize

@dataclass
class Owl3Prompt:
    ids: list[int]
    image_starts: list[int]            # s_j of each view, in order (absolute token indices)
    views: np.ndarray                  # [n_views, 3, S, S]
    chunks: list = field(default_factory=list)   # the chunks (text, or ids of a Session's answers)


def chat_chunks(messages: Sequence[dict]) -> list[str]:
    """ChatML chunks of `build_text_qwen` in inference mode (docs/owl3.md §6.1), media markers already expanded.
    A prompt always ends with the assistant header: a final user turn gets one, and a final empty assistant
    turn is just that header. An assistant message may carry "ids", the tokens the model generated for its
    content (a Session does so): a sampled answer need not be the tokenizer's own split of its text, and its
    cached K/V stay valid only with the same tokens. The chunk is then those ids, not text."""
    msgs = list(messages)
    if msgs and msgs[-1]["role"] == "assistant":
        if msgs[-1]["content"]:
            raise ValueError("the last message is an assistant turn with content; end with a user turn "
                             "(or an empty assistant turn) to get an answer")
        msgs = msgs[:-1]
    if not any(m["role"] == "user" for m in msgs):
        raise ValueError("the messages have no user turn")
    chunks = []
    if msgs[0]["role"] != "system":
        chunks.append(EMPTY_SYSTEM)
    for k, m in enumerate(msgs):
        role, content = m["role"], m["content"]
        if role == "system":
            if k:
                raise ValueError("a system message may only come first")
            chunks.append(f"<|im_start|>system\n{content}<|im_end|>")
        elif role == "user":
            chunks += [c for c in _SPLIT_IMAGE.split(f"\n<|im_start|>user\n{content}<|im_end|>") if c]
        elif m.get("ids") is not None:   # an answer of ours: its own tokens, as they sit in the KV cache
            chunks += [ASSISTANT_HEADER, [int(t) for t in m["ids"]], "<|im_end|>", "<|endoftext|>"]
        else:   # an earlier answer keeps <|im_end|><|endoftext|> (official quirk, §6.1)
            chunks += [ASSISTANT_HEADER, f"{content}<|im_end|>", "<|endoftext|>"]
    chunks.append(ASSISTANT_HEADER)
    return chunks


def expand_markers(messages: Sequence[dict], expanded: Sequence[Expanded]) -> list[dict]:
    """Replace each user marker, in order, with its media's text."""
    it = iter(expanded)

    def sub(match):
        e = next(it, None)
        want = "image" if match.group(0) == IMAGE_TOKEN else "video"
        if e is None or e.kind != want:
            raise ValueError("media do not match the prompt's markers")
        return e.text

    out = [dict(m, content=_MARKERS.sub(sub, m["content"])) if m["role"] == "user" else dict(m) for m in messages]
    if next(it, None) is not None:
        raise ValueError("more media than markers in the prompt")
    return out


def tokenize_chunks(tokenizer, chunks: Sequence) -> tuple[list[int], list[int]]:
    """Each chunk on its own, special tokens parsed, nothing added; s_j at each `<|image|>` chunk.
    A chunk that is a list of ids is taken as is."""
    ids, starts = [], []
    for c in chunks:
        if not isinstance(c, str):
            ids += c
            continue
        if c == IMAGE_TOKEN:
            starts.append(len(ids))
        ids += list(tokenizer.encode(c, False, True))
    return ids, starts


def build_prompt(tokenizer, messages: Sequence[dict], expanded: Sequence[Expanded]) -> Owl3Prompt:
    """Normalized messages (string content, markers) + their expanded media -> ids, starts and views."""
    chunks = chat_chunks(expand_markers(messages, expanded))
    ids, starts = tokenize_chunks(tokenizer, chunks)
    views = np.concatenate([e.views for e in expanded]) if expanded else np.zeros((0, 3, 1, 1), np.float32)
    if len(starts) != len(views):
        raise ValueError(f"the prompt has {len(starts)} {IMAGE_TOKEN} placeholders for {len(views)} image views")
    return Owl3Prompt(ids, starts, views, chunks)
