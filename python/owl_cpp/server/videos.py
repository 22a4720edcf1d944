"""video_url content parts (as vLLM takes them): {"type": "video_url", "video_url": {"url": ...}} with a data:
URL, an http(s) URL or a path inside --allow-local-dir, read under the same rules as images (images.py) with
a byte cap of their own (--max-video-bytes). The bytes go to a temporary file that PyAV (video_io.py) decodes;
the part becomes {"type": "video", "video": frames} for the model. Which models take videos, and how many:

  mPLUG-Owl3   several per request (--max-videos), sampled as owl-run --video does (1 frame/s, at most 16)
  mPLUG-2      exactly one, in the last user message; the frames its model samples (mplug2_route.py)
  others       none: a video_url part is a 400
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Optional

from .openai_shapes import RequestError

MAX_VIDEO_BYTES = 64 << 20


def video_family(model) -> Optional[str]:
    """"owl3", "mplug2" or None (the model takes no videos)."""
    family = getattr(model, "FAMILY", "")
    if family == "mPLUG-2":
        return "mplug2"
    if family == "mPLUG-Owl3":
        return "owl3"
    return None


def frame_decoder(model, family: str) -> Callable[[str], object]:
    """path -> the frames the model is given: owl-run's sampling for Owl3; for mPLUG-2 the frames its own
    sampling picks (a [n, H, W, 3] array, which the model then takes as is), so that the answer equals
    model.caption(path) / model.answer(path, question)."""
    if family == "owl3":
        from ..cli import read_video
        return read_video
    from ..families.mplug2.preprocess import load_video_frames
    return lambda path: load_video_frames(path, model.video_config.num_frames)


def video_parts(messages: list) -> list:
    """(message index, part) of every video_url part, in order."""
    return [(i, p) for i, m in enumerate(messages) if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == "video_url"]


class VideoResolver:
    """Turns video_url parts into video parts (frames), checking the per-request limits first."""

    def __init__(self, fetcher, decode: Optional[Callable], *, max_bytes: int = MAX_VIDEO_BYTES,
                 max_videos: int = 4, model_label: str = "this model"):
        self.fetcher, self.decode, self.max_bytes = fetcher, decode, max_bytes
        self.max_videos, self.model_label = max_videos, model_label

    def check(self, messages: list) -> int:
        """The number of video parts; a 400 when the model takes none or fewer."""
        n = len(video_parts(messages))
        if n and self.decode is None:
            raise RequestError(f"{self.model_label} takes no videos (video_url parts); videos need an mPLUG-Owl3 "
                               "or mPLUG-2 model", "messages", code="videos_not_supported")
        if n > self.max_videos:
            raise RequestError(f"the request has {n} videos; {self.model_label} takes at most {self.max_videos} per "
                               "request" + (" (--max-videos)" if self.max_videos > 1 else ""), "messages",
                               code="too_many_videos")
        return n

    def resolve(self, messages: list) -> list:
        """A copy of `messages` whose video_url parts are {"type": "video", "video": frames} (blocking: run it in
        a worker thread)."""
        out, k = [], 0
        for i, m in enumerate(messages):
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for p in content:
                    if p.get("type") == "video_url":
                        p = {"type": "video", "video": self._frames(i, k, p)}
                        k += 1
                    parts.append(p)
                content = parts
            out.append({**m, "content": content})
        return out

    def _frames(self, i: int, k: int, part: dict):
        url = part.get("video_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise RequestError(f"messages[{i}]: video_url needs a url string", "messages")
        data = self.fetcher.fetch_bytes(i, url, "video", self.max_bytes)
        if not data:
            raise RequestError(f"messages[{i}]: video {k} (video_url) is empty", "messages", code="invalid_video")
        fd, path = tempfile.mkstemp(prefix="owl-video-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._check_pixels(i, k, path)
            try:
                return self.decode(path)
            except (ValueError, OSError, ImportError) as e:
                why = str(e).replace(path, "the video").replace(": the video: ", ": ")
                raise RequestError(f"messages[{i}]: video {k} (video_url) could not be decoded as a video: {why}",
                                   "messages", code="invalid_video") from None
        finally:
            os.unlink(path)

    def _check_pixels(self, i: int, k: int, path: str) -> None:
        """The frame size from the stream's header against the server's pixel cap (--max-image-pixels), before
        anything is decoded: a small file can hold huge frames. Without PyAV the decoder's own cap
        (owl_cpp.images.MAX_PIXELS) still holds."""
        try:
            import av
        except ImportError:
            return
        from .. import images as owl_images
        limit = owl_images.MAX_PIXELS if self.fetcher.max_pixels is None else self.fetcher.max_pixels
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    return                          # the decoder says what is wrong
                c = container.streams.video[0].codec_context
                w, h = c.width, c.height
        except Exception:                           # noqa: BLE001 - not a video: the decoder says so
            return
        if w * h > limit:
            raise RequestError(f"messages[{i}]: video {k} (video_url) has frames of {w}x{h} = {w * h} pixels, over "
                               f"this server's limit of {limit} (--max-image-pixels)", "messages",
                               code="video_too_large")
