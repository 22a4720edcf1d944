"""results.jsonl: one JSON object per line, one line per (image id, prompt), answered or failed.

Fields: id, image (the path read), prompt, prompt_index, answer (None on error), error (None, or
"ExceptionType: message"), prompt_tokens, prompt_tokens_cached (reused from the KV cache), completion_tokens,
finish_reason, vision_ms, prefill_ms, decode_ms, total_ms.

Resuming: the lines already there are done work (errors too, unless retried); a line cut off by a kill (no
newline at the end of the file) is dropped and its item done again. Each line is written whole by one write()
call of the process that owns the file, so a Ctrl-C between writes leaves only whole lines."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Union

RESULT_FIELDS = ("id", "image", "prompt", "prompt_index", "answer", "error", "prompt_tokens", "prompt_tokens_cached",
                 "completion_tokens", "finish_reason", "vision_ms", "prefill_ms", "decode_ms", "total_ms")


def result_key(rec: dict) -> tuple:
    return (rec["id"], rec["prompt"])


def error_record(image_id: str, path: str, prompt: str, prompt_index: int, exc: BaseException) -> dict:
    rec = dict.fromkeys(RESULT_FIELDS)
    rec.update(id=image_id, image=path, prompt=prompt, prompt_index=prompt_index,
               error=f"{type(exc).__name__}: {exc}")
    return rec


def answer_record(image_id: str, path: str, prompt: str, prompt_index: int, info: dict, total_s: float) -> dict:
    """A result line from chat(..., return_info=True)'s info."""
    t = info["timings"]
    return {"id": image_id, "image": path, "prompt": prompt, "prompt_index": prompt_index, "answer": info["text"],
            "error": None, "prompt_tokens": info["prompt_tokens"],
            "prompt_tokens_cached": info["prompt_tokens"] - info["prompt_tokens_evaluated"],
            "completion_tokens": info["completion_tokens"], "finish_reason": info["finish_reason"],
            "vision_ms": round(t.get("vision_ms", 0.0), 3), "prefill_ms": round(1e3 * t["prefill_s"], 3),
            "decode_ms": round(1e3 * t["decode_s"], 3), "total_ms": round(1e3 * total_s, 3)}


def read_results(path: Union[str, os.PathLike], *, repair: bool = False) -> dict:
    """key -> record of every whole, valid line (a later line for the same key wins). repair=True cuts a
    half-written last line off the file (a job killed mid-write), so that appending starts on a fresh line."""
    p = Path(path)
    if not p.exists():
        return {}
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if repair:
            with open(p, "r+b") as f:
                f.truncate(cut)
            print(f"owl-batch: {p}: dropped a half-written last line ({len(data) - cut} bytes); that item is "
                  "done again", file=sys.stderr)
        data = data[:cut]
    out, bad = {}, 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[result_key(rec)] = rec
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        print(f"owl-batch: {p}: {bad} unreadable line(s) ignored; their items are done again", file=sys.stderr)
    return out


class ResultsWriter:
    """Appends result lines to results.jsonl, each in one write() and at once (a kill loses at most the line
    being written, which the next run drops)."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab", buffering=0)
        self.written = 0

    def write(self, rec: dict) -> None:
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:                                  # a regular file takes it whole; loop for the odd short write
            view = view[self._f.write(view):]
        self.written += 1

    def close(self) -> None:
        if not self._f.closed:
            try:
                os.fsync(self._f.fileno())
            except OSError:
                pass
            self._f.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def done_keys(results: dict, retry_errors: bool = False) -> set:
    """Keys a rerun skips: every line, or with retry_errors only the answered ones."""
    return {k for k, r in results.items() if not (retry_errors and r.get("error"))}


def summary_counts(results: dict) -> dict:
    n_err = sum(1 for r in results.values() if r.get("error"))
    return {"results": len(results), "answered": len(results) - n_err, "errors": n_err}


