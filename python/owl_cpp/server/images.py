"""Images a request names by URL, turned into bytes before the model sees them: data: URLs as they are, http(s)
URLs fetched with a timeout and a size cap, local paths only inside a directory the operator allowed (and never
outside it through `..` or links). Every image, data: URLs included, is held to the byte cap and to the pixel cap
(width x height read from its header, before anything is decoded). Everything else is a 400."""
from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.error
import urllib.request
from typing import Optional

from .openai_shapes import RequestError


class ImageFetcher:
    def __init__(self, *, allow_http: bool = True, local_dir: Optional[str] = None, max_bytes: int = 20 << 20,
                 timeout: float = 10.0, max_pixels: Optional[int] = None):
        self.allow_http, self.max_bytes, self.timeout = allow_http, max_bytes, timeout
        self.max_pixels = max_pixels            # None: owl_cpp.images.MAX_PIXELS when checked
        self.local_dir = os.path.realpath(local_dir) if local_dir else None

    def resolve(self, messages: list) -> list:
        """A copy of `messages` whose image_url parts are data: URLs or image bytes."""
        out = []
        for i, m in enumerate(messages):
            content = m.get("content")
            if isinstance(content, list):
                content = [self._part(i, p) for p in content]
            out.append({**m, "content": content})
        return out

    def _part(self, i: int, part):
        if not (isinstance(part, dict) and part.get("type") == "image_url"):
            return part
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise RequestError(f"messages[{i}]: image_url needs a url string", "messages")
        if url.startswith("data:"):
            self._check(i, self._data(i, url), "data: URL")
            return part
        if url.startswith(("http://", "https://")):
            if not self.allow_http:
                raise RequestError(f"messages[{i}]: fetching image URLs is disabled on this server", "messages")
            return {"type": "image", "image": self._check(i, self._fetch(url), url)}
        path = url[len("file://"):] if url.startswith("file://") else url
        return {"type": "image", "image": self._check(i, self._local(i, path), path)}

    def _data(self, i: int, url: str) -> bytes:
        head, _, payload = url.partition(",")
        if len(payload) > 4 * (self.max_bytes // 3 + 1) + 4:        # its base64 alone is over the cap
            raise RequestError(f"messages[{i}]: the data: URL image is larger than the limit of {self.max_bytes} "
                               "bytes", "messages")
        if not head.endswith(";base64"):
            return payload.encode()
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"messages[{i}]: the data: URL is not valid base64: {e}", "messages")

    def _check(self, i: int, data: bytes, what: str) -> bytes:
        """The byte cap, and the pixel cap from the image's header (the model's decoder says what is not an image)."""
        if len(data) > self.max_bytes:
            raise RequestError(f"messages[{i}]: image {what} is larger than the limit of {self.max_bytes} bytes",
                               "messages")
        from PIL import Image

        from .. import images as owl_images     # read now: owl_cpp.images.MAX_PIXELS may have been raised
        limit = owl_images.MAX_PIXELS if self.max_pixels is None else self.max_pixels
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Exception:                       # noqa: BLE001 - not an image: the model's own check says so
            return data
        if w * h > limit:
            raise RequestError(f"messages[{i}]: image {what} has {w}x{h} = {w * h} pixels, over this server's limit "
                               f"of {limit} (--max-image-pixels)", "messages", code="image_too_large")
        return data

    def _fetch(self, url: str) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as r:
                data = r.read(self.max_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RequestError(f"could not fetch image {url}: {e}", "messages")
        if len(data) > self.max_bytes:
            raise RequestError(f"image {url} is larger than the limit of {self.max_bytes} bytes", "messages")
        return data

    def _local(self, i: int, path: str) -> bytes:
        if not self.local_dir:
            raise RequestError(f"messages[{i}]: image_url must be a data: or http(s) URL (this server reads no "
                               "local files unless started with --allow-local-dir)", "messages")
        real = os.path.realpath(os.path.join(self.local_dir, path))
        if os.path.commonpath([real, self.local_dir]) != self.local_dir:
            raise RequestError(f"messages[{i}]: image path {path!r} is outside the allowed directory", "messages")
        if not os.path.isfile(real):
            raise RequestError(f"messages[{i}]: image file {path!r} not found in the allowed directory", "messages")
        if os.path.getsize(real) > self.max_bytes:
            raise RequestError(f"image file {path!r} is larger than the limit of {self.max_bytes} bytes", "messages")
        with open(real, "rb") as f:
            return f.read()
