"""mPLUG-Owl3 media -> prompt text + pixel views (docs/owl3.md §5.4, §6.4, §6.5): each image is preprocessed
(cut grid + template text), each video becomes its frames (never cut) + the variant's `<|video|>` text."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ...messages import IMAGE_MARKER, Video, describe
from .image_config import ImagePreprocessing
from .preprocess import preprocess_image

NO_VIDEO_WITH_IMAGES = ("240728",)      # its processor refuses images beside videos and cuts nothing then


@dataclass(frozen=True)
class Expanded:
    """One image or video after preprocessing: the text its marker becomes and one pixel view per `<|image|>`."""
    text: str
    views: np.ndarray                  # [N, 3, S, S] float32, in placeholder order
    kind: str                          # "image" | "video"
    grid: Optional[tuple] = None       # (rows, cols) of a cut image


def video_text(n_frames: int, variant: str) -> str:
    """`<|video|>` expanded (docs/owl3.md §6.5): bare placeholders for 240728, framed by markers for later ones."""
    body = IMAGE_MARKER * n_frames
    return body if variant == "240728" else f"<|start_video_frame|>{body}<|end_video_frame|>"


def expand_media(media: Sequence[Any], variant: str, config: ImagePreprocessing, cut: bool = True) -> list[Expanded]:
    """Preprocess media in order. 240728 turns cutting off for a call with videos and refuses images beside
    videos, as its processor does (docs/owl3.md §5.4, §6.5)."""
    has_video = any(isinstance(m, Video) for m in media)
    if variant in NO_VIDEO_WITH_IMAGES and has_video:
        if any(not isinstance(m, Video) for m in media):
            raise ValueError("mPLUG-Owl3-7B-240728 cannot take images and videos in the same request")
        cut = False
    out = []
    for k, m in enumerate(media):
        if isinstance(m, Video):
            views = [_preprocess(f, config, False, f"video {k}, frame {i}").pixels for i, f in enumerate(m.frames)]
            out.append(Expanded(video_text(len(views), variant), np.concatenate(views), "video"))
        else:
            p = _preprocess(m, config, cut, f"image {k}")
            out.append(Expanded(p.prompt, p.pixels, "image", p.grid))
    return out


def _preprocess(src, config: ImagePreprocessing, cut: bool, what: str):
    try:
        return preprocess_image(src, config, cut=cut)
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:
        raise type(e)(f"{what} ({describe(src)}): {e}") from e
