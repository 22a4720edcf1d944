"""How much of a context's KV cache a new prompt can keep: the longest common token prefix, cut at the first
image that differs. Images are compared by content key and start, not by their placeholder tokens: all
`<|image|>` placeholders have the same ids, so equal ids do not mean equal images."""
from __future__ import annotations

from typing import Sequence, Tuple

Image = Tuple[int, bytes]          # (start: absolute position of the placeholder's first token, content key)


def reusable_prefix(cached_ids: Sequence[int], cached_images: Sequence[Image], ids: Sequence[int],
                    images: Sequence[Image]) -> int:
    """Tokens of `ids` whose cached K/V (text and attached images) stay valid."""
    n = min(len(cached_ids), len(ids))
    if cached_ids[:n] == ids[:n]:      # the usual case (a session's next turn), compared in C, not token by token
        common = n
    else:
        common = 0
        for a, b in zip(cached_ids, ids):
            if a != b:
                break
            common += 1
    same = 0
    while same < min(len(cached_images), len(images)) and tuple(cached_images[same]) == tuple(images[same]):
        same += 1
    for start, _ in list(cached_images[same:]) + list(images[same:]):
        common = min(common, start)    # a cached image not in the prompt, or a new one: recompute from there
    return common
