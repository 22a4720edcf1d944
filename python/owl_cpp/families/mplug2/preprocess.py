"""mPLUG-2 video preprocessing as published (docs/owl2.md PART D): n frames (16) at the centres of n equal
intervals of the video, each resized to S x S (224) by nearest neighbour exactly as
torch.nn.functional.interpolate(mode="nearest") picks source pixels, then / 255 and CLIP mean/std.
numpy + Pillow only (no torch at run time); video files through PyAV, else OpenCV, when installed.

  sample_frame_indices(n_video_frames, n)   which frames to keep (decord-style "middle" sampling)
  load_video_frames(source, n)              a video file, or a list of images -> uint8 [n, H, W, 3]
  preprocess_frames(frames, size, mean, std) uint8 [T, H, W, 3] -> float32 [T, 3, size, size]
  VideoConfig.from_metadata(meta)           the constants vision.onnx carries (mplug2.vision.*)

Limits: at most MAX_FRAMES frames are sampled; a frame over images.MAX_PIXELS pixels is refused (named).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ... import images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_FRAMES = 16
IMAGE_SIZE = 224
MAX_FRAMES = 1024            # a sanity bound: the encoder's cost grows with T (the released model uses 16)
BACKENDS = ("av", "cv2")


@dataclass(frozen=True)
class VideoConfig:
    image_size: int = IMAGE_SIZE
    num_frames: int = DEFAULT_FRAMES
    tokens_per_frame: int = 256
    embedding_length: int = 1024
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    @staticmethod
    def from_metadata(meta: Mapping[str, str], where: str = "vision.onnx") -> "VideoConfig":
        """vision.onnx's custom_metadata_map (strings, mplug2/onnx_export.py) -> config; a missing or bad key
        raises ValueError naming it."""
        def get(key):
            if key not in meta:
                raise ValueError(f"{where}: missing metadata {key}; re-export the model with this version of "
                                 "owl-export")
            return meta[key]

        def integer(key, hi):
            v = get(key)
            try:
                i = int(v)
            except (TypeError, ValueError):
                i = 0
            if not 1 <= i <= hi:
                raise ValueError(f"{where}: {key} is {v!r}, expected an integer in 1..{hi}")
            return i

        def triple(key, positive):
            v = get(key)
            try:
                t = tuple(float(x) for x in str(v).split(","))
            except ValueError:
                t = ()
            if len(t) != 3 or not all(np.isfinite(t)) or (positive and min(t) <= 0):
                raise ValueError(f"{where}: {key} is {v!r}, expected 3 comma-separated finite numbers"
                                 + (" > 0" if positive else ""))
            return t

        if meta.get("owl.family") != "mplug2":
            raise ValueError(f"{where}: owl.family is {meta.get('owl.family')!r}, expected 'mplug2'")
        resize = meta.get("mplug2.vision.resize", "nearest")
        if resize != "nearest":
            raise ValueError(f"{where}: mplug2.vision.resize is {resize!r}; only 'nearest' is implemented")
        return VideoConfig(image_size=integer("mplug2.vision.image_size", 4096),
                           num_frames=integer("mplug2.vision.num_frames", MAX_FRAMES),
                           tokens_per_frame=integer("mplug2.vision.tokens_per_frame", 1 << 20),
                           embedding_length=integer("mplug2.embedding_length", 1 << 16),
                           mean=triple("mplug2.vision.image_mean", False),
                           std=triple("mplug2.vision.image_std", True))


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_FRAMES:
        raise ValueError(f"the number of frames to sample must be an integer in 1..{MAX_FRAMES}, got {n!r}")
    return int(n)


def sample_frame_indices(n_video_frames: int, n: int = DEFAULT_FRAMES) -> list:
    """The middle frame of each of n equal slices of n_video_frames frames (slice edges rounded half to even,
    as Python's round does in the official code). Fewer frames than n repeat some."""
    n = _check_n(n)
    if isinstance(n_video_frames, bool) or not isinstance(n_video_frames, (int, np.integer)) or n_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {n_video_frames!r}")
    edges = [round(i * int(n_video_frames) / n) for i in range(n + 1)]
    return [(edges[i] + edges[i + 1] - 1) // 2 for i in range(n)]


# ------------------------------------------------------------------------------------------- resize

def nearest_source_index(in_size: int, out_size: int) -> np.ndarray:
    """The source index of each output index, as PyTorch's nearest (not nearest-exact) computes it on the
    CPU: identity when the sizes agree, i >> 1 when the output is twice the input, else
    min(floor(i * float32(in / out)), in - 1) in float32 arithmetic."""
    i = np.arange(out_size, dtype=np.int64)
    if out_size == in_size:
        return i
    if out_size == 2 * in_size:
        return i >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(i.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _as_frame_array(frames) -> np.ndarray:
    if isinstance(frames, np.ndarray):
        arr = frames
    else:
        frames = list(frames)
        if not frames:
            raise ValueError("no frames: the video is empty")
        arr = np.stack(_check_same_size([np.asarray(f) for f in frames]))
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (0..255), got {arr.dtype}")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] RGB, got shape {arr.shape}")
    T, H, W = arr.shape[:3]
    if T < 1:
        raise ValueError("no frames: the video is empty")
    if H < 1 or W < 1:
        raise ValueError(f"frames of {W}x{H} pixels are empty")
    if T > MAX_FRAMES:
        raise ValueError(f"{T} frames is more than MAX_FRAMES = {MAX_FRAMES}")
    images.check_size((W, H), images.MAX_PIXELS)
    return arr


def _check_same_size(frames: list) -> list:
    shapes = [f.shape for f in frames]
    if len(set(shapes)) > 1:
        first = shapes[0]
        j = next(i for i, s in enumerate(shapes) if s != first)
        raise ValueError(f"all frames of a video must have one size: frame 0 is {first}, frame {j} is {shapes[j]}")
    return frames


def preprocess_frames(frames, size: int = IMAGE_SIZE, mean: Sequence[float] = CLIP_MEAN,
                      std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """uint8 frames [T, H, W, 3] (an array, or a list of H x W x 3 arrays) -> float32 [T, 3, size, size]:
    nearest-neighbour resize (PyTorch's source pixels), / 255, (x - mean) / std, all in float32."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= 4096:
        raise ValueError(f"size must be an integer in 1..4096, got {size!r}")
    arr = _as_frame_array(frames)
    H, W = arr.shape[1:3]
    rows, cols = nearest_source_index(H, size), nearest_source_index(W, size)
    x = arr[:, rows][:, :, cols].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


# ------------------------------------------------------------------------------------------- loading

def load_video_frames(source, n: int = DEFAULT_FRAMES, *, backend: Optional[str] = None) -> np.ndarray:
    """-> uint8 [n, H, W, 3]: the n sampled frames (sample_frame_indices) of
      - a video file path: decoded with PyAV (`pip install av`) or, when only that is installed, OpenCV;
        backend="av" / "cv2" forces one
      - a list (or tuple) of images, one per video frame: paths, PIL images or H x W x 3 uint8 arrays; only
        the sampled ones are loaded, and they must all have one size
      - a uint8 array [T, H, W, 3] of frames, sampled the same way."""
    n = _check_n(n)
    if isinstance(source, np.ndarray):
        arr = _as_frame_array(source)
        return arr[sample_frame_indices(len(arr), n)]
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("no frames: the list of images is empty")
        idx = sample_frame_indices(len(source), n)
        loaded = {i: _load_frame(source[i], i) for i in dict.fromkeys(idx)}
        return _as_frame_array([loaded[i] for i in idx])
    if isinstance(source, (str, os.PathLike)):
        return _load_video_file(os.fspath(source), n, backend)
    raise TypeError(f"a video is a file path, a list of images or a uint8 [T, H, W, 3] array; got "
                    f"{type(source).__name__}")


def _load_frame(src, i: int) -> np.ndarray:
    if isinstance(src, np.ndarray) and src.dtype == np.uint8 and src.ndim == 3 and src.shape[2] == 3:
        images.check_size((src.shape[1], src.shape[0]), images.MAX_PIXELS)
        return src
    try:
        return np.asarray(images.to_rgb(images.load_image(src)), dtype=np.uint8)
    except (ValueError, TypeError, OSError) as e:
        raise type(e)(f"frame {i}: {e}") from e


def _load_video_file(path: str, n: int, backend: Optional[str]) -> np.ndarray:
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
        return _sample_file(reader, path, n)
    raise ImportError(f"reading video files needs PyAV: pip install av (or opencv-python); {path} was not read. "
                      "A list of frame images works without either.")


def _sample_file(reader, path: str, n: int) -> np.ndarray:
    """Count, then decode once keeping the sampled frames; when the count from the container was wrong,
    sample again over the frames that actually decode."""
    count = reader.count()
    for _ in range(2):
        if count < 1:
            raise ValueError(f"{path}: the video has no frames")
        idx = sample_frame_indices(count, n)
        frames, decoded = reader.decode(set(idx))
        if decoded == count:
            return _as_frame_array([frames[i] for i in idx])
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
