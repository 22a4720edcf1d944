"""Pictures and colour in a terminal, with no dependency beyond Pillow: each character cell is "▀" with the
upper pixel as its foreground colour and the lower one as its background (24-bit ANSI colours), so a cell
shows two square-ish pixels.

Only on a terminal that can show them: stdout is a TTY, NO_COLOR is unset (https://no-color.org), TERM is
not "dumb", and the stream's encoding has "▀".
"""
from __future__ import annotations

import os
import shutil
from typing import Mapping, Optional

UPPER_HALF = "\u2580"      # ▀
RESET = "\x1b[0m"
GREEN, RED = "\x1b[32m", "\x1b[31m"
DEFAULT_WIDTH = 48


def can_encode(stream, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def colour_terminal(stream, env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether `stream` is a terminal we may write ANSI colours to."""
    env = os.environ if env is None else env
    isatty = getattr(stream, "isatty", None)
    try:
        if not (isatty and isatty()):
            return False
    except ValueError:           # closed
        return False
    return not env.get("NO_COLOR") and env.get("TERM", "") != "dumb"


def can_show_pictures(stream, env: Optional[Mapping[str, str]] = None) -> bool:
    return colour_terminal(stream, env) and can_encode(stream, UPPER_HALF)


def half_blocks(image, width: int = DEFAULT_WIDTH) -> str:
    """The picture as lines of "▀" in 24-bit colour, `width` columns wide (at most the terminal's width), its
    aspect ratio kept (a cell is about twice as tall as wide, and holds two pixel rows). Each line ends by
    resetting the colours."""
    from PIL import Image

    width = max(1, min(width, shutil.get_terminal_size((80, 24)).columns - 1))
    im = image.convert("RGB")
    rows = max(1, round(im.height / im.width * width / 2))
    px = im.resize((width, 2 * rows), Image.LANCZOS).load()
    lines = []
    for y in range(0, 2 * rows, 2):
        parts, last = [], None
        for x in range(width):
            colours = (px[x, y], px[x, y + 1])
            if colours != last:
                (r, g, b), (r2, g2, b2) = colours
                parts.append(f"\x1b[38;2;{r};{g};{b}m\x1b[48;2;{r2};{g2};{b2}m")
                last = colours
            parts.append(UPPER_HALF)
        lines.append("".join(parts) + RESET)
    return "\n".join(lines) + "\n"


def coloured(text: str, colour: str, enabled: bool) -> str:
    return f"{colour}{text}{RESET}" if enabled else text
