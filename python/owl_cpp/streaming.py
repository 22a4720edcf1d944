"""What stream=True returns, and text clean-up that works piece by piece."""
from __future__ import annotations

from typing import Iterator, Optional


class TextStream:
    """An iterator of text pieces; once exhausted, .info holds what return_info=True gives (text, tokens,
    counts, finish_reason, timings). close() stops generation early (what was said so far still counts).
    .logprobs: with logprobs=k, the entries of the tokens sampled so far (it grows as the stream goes), else None."""

    def __init__(self, run: Iterator[tuple[str, dict]], logprobs: Optional[list] = None):
        self._run = run
        self.info: Optional[dict] = None
        self.logprobs = logprobs

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while True:
            piece, info = next(self._run)
            if info:
                self.info = info
            if piece:
                return piece

    def close(self) -> None:
        self._run.close()


class StrippedText:
    """str.strip() over a stream: leading whitespace dropped, trailing whitespace held until text follows."""

    def __init__(self):
        self.started, self.held, self.parts = False, "", []

    def push(self, s: str) -> str:
        if not self.started:
            s = s.lstrip()
            if not s:
                return ""
            self.started = True
        s = self.held + s
        body = s.rstrip()
        self.held = s[len(body):]
        self.parts.append(body)
        return body

    @property
    def text(self) -> str:
        return "".join(self.parts)
