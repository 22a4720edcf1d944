"""mPLUG-Owl3 prompts: normalized messages + expanded media -> token ids, the start of each `<|image|>`, and
the pixel views, exactly as the official processor builds them (docs/owl3.md §6.1-6.3).

ChatML chunks, each tokenized on its own; user text split on `<|image|>` so BPE never merges across a
placeholder; s_j = index of the first token of the j-th placeholder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...messages import IMAGE_MARKER, MARKERS, turns_to_answer
from .media import Expanded

EMPTY_SYSTEM = "<|im_start|>system\n<|im_end|>"          # not Qwen's default "You are a helpful assistant."
ASSISTANT_HEADER = "\n<|im_start|>assistant\n"
TERMINATORS = ("<|im_end|>", "<|endoftext|>")            # the official generate()'s eos_token_id (docs/owl3.md §6.6)
ANSWER_END = ("<|im_end|>", "<|endoftext|>")             # what follows an earlier answer (official quirk, §6.1)
_SPLIT_IMAGE = re.compile(r"(<\|image\|>)")


@dataclass
class Owl3Prompt:
    ids: list[int]
    image_starts: list[int]            # s_j of each view, in order (absolute token indices)
    views: np.ndarray                  # [n_views, 3, S, S]
    chunks: list = field(default_factory=list)   # the chunks (text, or ids of a Session's answers)


def chat_chunks(messages: Sequence[dict]) -> list:
    """ChatML chunks of `build_text_qwen` in inference mode (docs/owl3.md §6.1), media markers already expanded.
    A prompt always ends with the assistant header: a final user turn gets one, and a final empty assistant
    turn is just that header. An assistant message may carry "ids", the tokens the model generated for its
    content (a Session does so): a sampled answer need not be the tokenizer's own split of its text, and its
    cached K/V stay valid only with the same tokens. The chunk is then those ids, not text."""
    msgs = turns_to_answer(messages)
    chunks: list = []
    if msgs[0]["role"] != "system":
        chunks.append(system_chunk(None))
    for k, m in enumerate(msgs):
        role, content = m["role"], m["content"]
        if role == "system":
            if k:
                raise ValueError("a system message may only come first")
            chunks.append(system_chunk(content))
        elif role == "user":
            chunks += user_chunks(content)
        elif m.get("ids") is not None:   # an answer of ours: its own tokens, as they sit in the KV cache
            chunks += [ASSISTANT_HEADER, [int(t) for t in m["ids"]], *ANSWER_END]
        else:   # an earlier answer keeps <|im_end|><|endoftext|> (official quirk, §6.1)
            chunks += [ASSISTANT_HEADER, f"{content}<|im_end|>", "<|endoftext|>"]
    chunks.append(ASSISTANT_HEADER)
    return chunks


def system_chunk(system) -> str:
    return EMPTY_SYSTEM if system is None else f"<|im_start|>system\n{system}<|im_end|>"


def user_chunks(content: str) -> list:
    """A user turn (markers expanded), split at each `<|image|>`."""
    return [c for c in _SPLIT_IMAGE.split(f"\n<|im_start|>user\n{content}<|im_end|>") if c]


def expand_markers(messages: Sequence[dict], expanded: Sequence[Expanded]) -> list[dict]:
    """Replace each user marker, in order, with its media's text."""
    it = iter(expanded)

    def sub(match):
        e = next(it, None)
        want = "image" if match.group(0) == IMAGE_MARKER else "video"
        if e is None or e.kind != want:
            raise ValueError("media do not match the prompt's markers")
        return e.text

    out = [dict(m, content=MARKERS.sub(sub, m["content"])) if m["role"] == "user" else dict(m) for m in messages]
    if next(it, None) is not None:
        raise ValueError("more media than markers in the prompt")
    return out


def tokenize_chunks(tokenizer, chunks: Sequence) -> tuple[list[int], list[int]]:
    """Each chunk on its own, special tokens parsed, nothing added; s_j at each `<|image|>` chunk.
    A chunk that is a list of ids is taken as is."""
    ids: list[int] = []
    starts: list[int] = []
    for c in chunks:
        if not isinstance(c, str):
            ids += c
            continue
        if c == IMAGE_MARKER:
            starts.append(len(ids))
        ids += list(tokenizer.encode(c, False, True))
    return ids, starts


def build_prompt(tokenizer, messages: Sequence[dict], expanded: Sequence[Expanded]) -> Owl3Prompt:
    """Normalized messages (string content, markers) + their expanded media -> ids, starts and views."""
    return _prompt(tokenizer, chat_chunks(expand_markers(messages, expanded)), expanded)


def question_prompt(tokenizer, message: dict, expanded: Sequence[Expanded]) -> Owl3Prompt:
    """One user message through the assistant header: what a Session appends to the turns before it (image
    starts relative to its first token). Its ids are those build_prompt gives that turn."""
    [m] = expand_markers([message], expanded)
    return _prompt(tokenizer, user_chunks(m["content"]) + [ASSISTANT_HEADER], expanded)


def _prompt(tokenizer, chunks: list, expanded: Sequence[Expanded]) -> Owl3Prompt:
    ids, starts = tokenize_chunks(tokenizer, chunks)
    if len(expanded) == 1:
        views = expanded[0].views                   # one image (a chat about it, a batch job): no copy
    else:
        views = np.concatenate([e.views for e in expanded]) if expanded else np.zeros((0, 3, 1, 1), np.float32)
    if len(starts) != len(views):
        raise ValueError(f"the prompt has {len(starts)} {IMAGE_MARKER} placeholders for {len(views)} image views")
    return Owl3Prompt(ids, starts, views, chunks)


def answer_chunk_ids(tokenizer, text: str) -> list[int]:
    """An answer's text as the official builder tokenizes the assistant content (one chunk)."""
    return list(tokenizer.encode(text, False, True))
