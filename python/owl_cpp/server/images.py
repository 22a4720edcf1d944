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
        what = url if url.startswith(("http://", "https://")) else url.removeprefix("file://")
        return {"type": "image", "image": self._check(i, self.fetch_bytes(i, url), what)}

    def fetch_bytes(self, i: int, url: str, kind: str = "image", max_bytes: Optional[int] = None) -> bytes:
        """The bytes a data:, http(s) or (allowed) local URL names, under the same rules for every kind of
        media (videos.py reads video_url parts through this, with its own byte cap)."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        if url.startswith("data:"):
            return self._data(i, url, kind, cap)
        if url.startswith(("http://", "https://")):
            if not self.allow_http:
                raise RequestError(f"messages[{i}]: fetching {kind} URLs is disabled on this server", "messages")
            return self._fetch(url, kind, cap)
        path = url[len("file://"):] if url.startswith("file://") else url
        return self._local(i, path, kind, cap)

    def _data(self, i: int, url: str, kind: str = "image", cap: Optional[int] = None) -> bytes:
        cap = self.max_bytes if cap is None else cap
        head, _, payload = url.partition(",")
        if len(payload) > 4 * (cap // 3 + 1) + 4:        # its base64 alone is over the cap
            raise RequestError(f"messages[{i}]: the data: URL {kind} is larger than the limit of {cap} "
                               "bytes", "messages", code=f"{kind}_too_large")
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

    def _fetch(self, url: str, kind: str, cap: int) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as r:
                data = r.read(cap + 1)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RequestError(f"could not fetch {kind} {url}: {e}", "messages")
        if len(data) > cap:
            raise RequestError(f"{kind} {url} is larger than the limit of {cap} bytes", "messages",
                               code=f"{kind}_too_large")
        return data

    def _local(self, i: int, path: str, kind: str, cap: int) -> bytes:
        if not self.local_dir:
            raise RequestError(f"messages[{i}]: {kind}_url must be a data: or http(s) URL (this server reads no "
                               "local files unless started with --allow-local-dir)", "messages")
        real = os.path.realpath(os.path.join(self.local_dir, path))
        if os.path.commonpath([real, self.local_dir]) != self.local_dir:
            raise RequestError(f"messages[{i}]: {kind} path {path!r} is outside the allowed directory", "messages")
        if not os.path.isfile(real):
            raise RequestError(f"messages[{i}]: {kind} file {path!r} not found in the allowed directory", "messages")
        if os.path.getsize(real) > cap:
            raise RequestError(f"{kind} file {path!r} is larger than the limit of {cap} bytes", "messages",
                               code=f"{kind}_too_large")
        with open(real, "rb") as f:
            return f.read()
