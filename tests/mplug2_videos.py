"""Videos for the mPLUG-2 tests: random frames with a moving square, and the reference's video tokens for the
frames the runtime samples from them."""
from __future__ import annotations

import numpy as np


def random_video(seed: int, n: int = 7, h: int = 48, w: int = 64) -> np.ndarray:
    """n frames of uint8 noise with a moving bright square (frames differ, as in a video)."""
    g = np.random.default_rng(seed)
    v = g.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        v[t, 5:20, 3 * t:3 * t + 15] = 255
    return v


def reference_video_tokens(ref, video: np.ndarray, model):
    """The PyTorch reference's video tokens for the frames model samples from `video` (torch.Tensor)."""
    import torch
    from owl_cpp.families.mplug2.preprocess import sample_frame_indices
    from owl_export.mplug2.reference import preprocess_frames

    frames = torch.from_numpy(video[sample_frame_indices(len(video), model.video_config.num_frames)])
    return ref.encode_video(preprocess_frames(frames, model.video_config.image_size))
