"""Reading video files: PyAV (`pip install av`, the `video` extra), else OpenCV when only that is installed.
Only the frames a family's sampling picks are converted to RGB arrays; a frame over images.MAX_PIXELS is
refused before decoding, and every failure names the file.

  read_frames(path, pick, backend=None)   pick(frame count, fps) -> frame indices; -> [(H, W, 3) uint8]
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from . import images

BACKENDS = ("av", "cv2")


def read_frames(path, pick: Callable[[int, float], list], backend: Optional[str] = None) -> list:
    """The frames pick(frame count, frames per second) names, in its order (repeats allowed), as RGB
    (H, W, 3) uint8 arrays. Decoded once (after a demux-only count), keeping only those frames; when the count
    was wrong (containers lie), picked again over the frames that actually decoded."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, not a video file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: video file not found")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"video backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for name in ((backend,) if backend else BACKENDS):
        try:
            module = __import__(name)
        except ImportError:
            continue
        reader = _AvReader(module, path) if name == "av" else _Cv2Reader(module, path)
        return _read_picked(reader, path, pick)
    raise ImportError(f"reading video files needs PyAV: pip install av (or opencv-python); {path} was not read. "
                      "A list of frame images works without either.")


def _read_picked(reader, path: str, pick) -> list:
    count, fps = reader.count(), reader.fps()
    for _ in range(2):
        if count < 1:
            raise ValueError(f"{path}: the video has no frames")
        idx = [int(i) for i in pick(count, fps)]
        if not idx or min(idx) < 0 or max(idx) >= count:
            raise ValueError(f"{path}: no frames picked among {count}")
        frames, decoded = reader.decode(set(idx))
        if decoded == count:
            return [frames[i] for i in idx]
        count = decoded
    raise ValueError(f"{path}: the number of decodable frames changes between reads")


class _AvReader:
    def __init__(self, av, path: str):
        self.av, self.path = av, path

    def _open(self):
        try:
            container = self.av.open(self.path)
        except Exception as e:                          # PyAV raises its own FFmpeg error types
            raise ValueError(f"{self.path}: cannot open the video ({e})") from e
        if not container.streams.video:
            container.close()
            raise ValueError(f"{self.path}: the file has no video stream")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        try:
            images.check_size((w, h), images.MAX_PIXELS)
        except ValueError as e:
            container.close()
            raise ValueError(f"{self.path}: {e}") from None
        return container, stream

    def fps(self) -> float:
        container, stream = self._open()
        container.close()
        return float(stream.average_rate or 0) or 1.0

    def count(self) -> int:
        """Packets carrying data in the first video stream (demux only, no decoding)."""
        container, stream = self._open()
        try:
            return sum(1 for p in container.demux(stream) if p.size > 0)
        except Exception as e:
            raise ValueError(f"{self.path}: cannot read the video ({e})") from e
        finally:
            container.close()

    def decode(self, wanted: set) -> tuple:
        container, stream = self._open()
        frames, i = {}, 0
        try:
            for frame in container.decode(stream):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                i += 1
        except Exception as e:
            raise ValueError(f"{self.path}: cannot decode the video at frame {i} ({e})") from e
        finally:
            container.close()
        return frames, i


class _Cv2Reader:
    def __init__(self, cv2, path: str):
        self.cv2, self.path = cv2, path

    def _open(self):
        cap = self.cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise ValueError(f"{self.path}: cannot open the video (OpenCV)")
        w, h = int(cap.get(self.cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(self.cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            images.check_size((w, h), images.MAX_PIXELS)
        except ValueError as e:
            cap.release()
            raise ValueError(f"{self.path}: {e}") from None
        return cap

    def fps(self) -> float:
        cap = self._open()
        fps = float(cap.get(self.cv2.CAP_PROP_FPS) or 0)
        cap.release()
        return fps or 1.0

    def count(self) -> int:
        cap = self._open()
        n = int(cap.get(self.cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return n if n > 0 else self.decode(set())[1]

    def decode(self, wanted: set) -> tuple:
        cap = self._open()
        frames, i = {}, 0
        try:
            while cap.grab():
                if i in wanted:
                    ok, bgr = cap.retrieve()
                    if not ok:
                        raise ValueError(f"{self.path}: cannot decode frame {i}")
                    frames[i] = np.ascontiguousarray(bgr[:, :, ::-1])
                i += 1
        finally:
            cap.release()
        return frames, i
