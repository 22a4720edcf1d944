"""mPLUG-Owl2 and Owl v1 prompts: normalized messages -> token ids with one run of placeholder tokens per
image (their rows are replaced by the image's embeddings at evaluation), exactly as the official code builds
them (docs/owl2.md A8, PART C).

  Owl2: "USER: <|image|>{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:"   (template mplug_owl2, TWO_NO_SYS)
        the text is split at each <|image|>; each piece is tokenized alone (its own dummy prefix); BOS once in
        front of the first piece (tokenizer_image_token); a prompt that starts with an image gets its BOS after it
  2.1:  the same template (the repository has no other; docs/owl2.md PART B 6) with Qwen's tokenizer: no BOS,
        and "</s>" is plain text there
  v1:   "{SYSTEM}\\nHuman: <image>\\nHuman: {q1}\\nAI: {a1}\\nHuman: {q2}\\nAI: "   (README / pipeline/interface.py)
        BOS, then each piece tokenized alone; every image marker becomes one "Human: <image>\\n" line
Whitespace right after a message's leading image markers is dropped: Owl2's conversation strips the text it
puts after the image marker, and v1 starts a new line there anyway.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...messages import IMAGE_MARKER, turns_to_answer

V1_SYSTEM = ("The following is a conversation between a curious human and AI assistant. The assistant gives "
             "helpful, detailed, and polite answers to the user's questions.")
PLACEHOLDER_ID = 0          # the ids standing for an image's rows (never embedded: the rows replace them)
_LEADING_MARKERS = re.compile(r"^((?:<\|image\|>)+)\s+")


@dataclass
class Owl2Prompt:
    ids: list[int]
    image_starts: list[int]            # first placeholder token of each image (absolute indices)
    views: np.ndarray                  # [n_images, 3, S, S]
    chunks: list = field(default_factory=list)


def _user_text(content: str, variant: str) -> str:
    content = _LEADING_MARKERS.sub(r"\1", content)
    if variant != "owl1":
        return f"USER: {content} "
    return "Human: " + content.replace(IMAGE_MARKER, IMAGE_MARKER + "\nHuman: ") + "\n"


def _answer_text(content: str, variant: str) -> str:
    return f"AI: {content}\n" if variant == "owl1" else f"ASSISTANT: {content}</s>"


def _reply_header(variant: str) -> str:
    return "AI: " if variant == "owl1" else "ASSISTANT:"


def head_text(system, variant: str) -> str:
    """What comes before the first turn: Owl2's template has no system prompt (a given one is put in front
    as plain text); v1's conversation starts with its system sentence."""
    if variant != "owl1":
        return "" if system is None else f"{system} "
    return (V1_SYSTEM if system is None else system) + "\n"


def conversation_text(messages: Sequence[dict], variant: str) -> str:
    """The whole conversation as the official template writes it, ending with the assistant's header."""
    msgs = turns_to_answer(messages)
    system = None
    if msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"], msgs[1:]
    text = head_text(system, variant)
    for m in msgs:
        if m["role"] == "system":
            raise ValueError("a system message may only come first")
        text += _user_text(m["content"], variant) if m["role"] == "user" else _answer_text(m["content"], variant)
    return text + _reply_header(variant)


def tokenize_pieces(tokenizer, text: str, n_image_tokens: int, bos: int, *, add_bos: bool = True) -> tuple[list[int], list[int]]:
    """text split at each image marker, each piece tokenized alone (special tokens such as </s> parsed),
    n_image_tokens placeholders per marker -> (ids, image starts)."""
    pieces = text.split(IMAGE_MARKER)
    ids: list[int] = []
    starts: list[int] = []
    for k, piece in enumerate(pieces):
        if k:
            starts.append(len(ids))
            ids += [PLACEHOLDER_ID] * n_image_tokens
        if piece:
            # Owl2: every piece gets BOS from the tokenizer and all but the prompt's first lose it again
            # (offset 1), unless the first piece is empty: then nothing is stripped (docs/owl2.md A8)
            keep_bos = add_bos and (k == 0 or not pieces[0])
            ids += ([bos] if keep_bos else []) + list(tokenizer.encode(piece, False, True))
    return ids, starts


def build_prompt(tokenizer, messages: Sequence[dict], views: np.ndarray, variant: str, n_image_tokens: int,
                 bos: int) -> Owl2Prompt:
    """bos: the BOS id (Owl2, v1); unused for Owl2.1, whose tokenizer adds none."""
    text = conversation_text(messages, variant)
    if variant == "owl2_1":
        ids, starts = tokenize_pieces(tokenizer, text, n_image_tokens, bos, add_bos=False)
    elif variant == "owl2":
        ids, starts = tokenize_pieces(tokenizer, text, n_image_tokens, bos)
    else:   # v1: BOS, then each piece without special tokens
        ids, starts = tokenize_pieces(tokenizer, text, n_image_tokens, bos, add_bos=False)
        ids = [bos] + ids
        starts = [s + 1 for s in starts]
    return _checked(ids, starts, views, text)


def question_prompt(tokenizer, message: dict, views: np.ndarray, variant: str, n_image_tokens: int,
                    bos: int) -> Owl2Prompt:
    """One user turn through the assistant header, tokenized on its own: what a Session appends after the
    turns before it (image starts relative to its first token)."""
    text = _user_text(message["content"], variant) + _reply_header(variant)
    ids, starts = tokenize_pieces(tokenizer, text, n_image_tokens, bos, add_bos=False)
    return _checked(ids, starts, views, text)


def answer_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, False, True))


def turn_end_ids(tokenizer, variant: str, eos: int) -> list[int]:
    """What closes an answer: Owl2's "</s>" (the eos token), Owl2.1's "</s>" (text), v1's newline."""
    if variant == "owl2":
        return [eos]
    return list(tokenizer.encode("</s>" if variant == "owl2_1" else "\n", False, True))


def _checked(ids, starts, views, text) -> Owl2Prompt:
    if len(starts) != len(views):
        raise ValueError(f"the prompt has {len(starts)} {IMAGE_MARKER} markers for {len(views)} images")
    return Owl2Prompt(ids, starts, views, [text])
