"""When generation ends: the model's terminator tokens, and the caller's stop strings.

Terminators are the tokens that end an answer, not every control token (a model may well write one that
is not an end, e.g. `<|im_start|>`):
- text models (qwen2, llama GGUF): llama.cpp's end-of-generation set (llama-vocab.cpp): the tokenizer's EOS,
  the GGUF's end-of-turn / end-of-message tokens (tokenizer.ggml.eot_token_id, tokenizer.ggml.eom_token_id),
  the fill-in-the-middle pad / repo / file-separator tokens (their GGUF keys, else found by text: `<|fim_pad|>`,
  `<|repo_name|>`, `<|file_sep|>`, ...), and every token whose text ends a turn in the common chat formats
  (EOG_TEXTS: `<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`, ...), whatever its token type, as
  llama.cpp does; with llama.cpp's two exceptions (`<|end|>` is no end beside gpt-oss's `<|return|>` and
  `<|call|>`, or `<|calls|>` and `<|flush|>`; `</s>` is none beside `<|tool_response>`);
- families name their own (Owl3: `<|im_end|>` and `<|endoftext|>`, as the official generate() passes).
`ignore_eos=True` turns terminators off: generation runs to max_tokens, a stop string or the context's end.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Union

GGUF_END_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
CHATML_START = "<|im_start|>"
CHATML_ENDS = ("<|im_end|>", "<|endoftext|>")
# Token texts llama.cpp's vocabulary loader puts in its end-of-generation set (llama-vocab.cpp).
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
             "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
             "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
             "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[")
# Fill-in-the-middle tokens llama.cpp also ends on: GGUF key -> the texts it looks for when the key is absent.
FIM_END_KEYS = {
    "tokenizer.ggml.fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "tokenizer.ggml.fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "tokenizer.ggml.fim_sep_token_id": ("<|file_sep|>",),
}


def special_token_id(tokenizer, text: str) -> Optional[int]:
    """The id of `text` when the vocabulary has it as one control token, else None."""
    ids = list(tokenizer.encode(text, False, True))
    return ids[0] if len(ids) == 1 and tokenizer.is_control(ids[0]) else None


def special_token_ids(tokenizer, texts: Iterable[str]) -> frozenset:
    return frozenset(i for i in (special_token_id(tokenizer, t) for t in texts) if i is not None)


def text_model_terminators(tokenizer, meta: Mapping) -> frozenset:
    """Terminators of a plain text model (module doc); meta: the GGUF's key -> value."""
    n = len(tokenizer)
    tokens = list(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else []
    first_id: dict[str, int] = {}
    for i, t in enumerate(tokens):
        first_id.setdefault(t, i)

    def key_id(key):
        v = meta[key] if key in meta else None
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n else None

    ids = set()
    if tokenizer.eos_id is not None:
        ids.add(int(tokenizer.eos_id))
    for key in GGUF_END_KEYS:
        if key_id(key) is not None:
            ids.add(key_id(key))
    for key, texts in FIM_END_KEYS.items():
        i = key_id(key)
        if i is None:  # llama.cpp looks the token up by its text
            i = min((first_id[t] for t in texts if t in first_id), default=None)
        if i is not None:
            ids.add(i)
    ids |= {first_id[t] for t in EOG_TEXTS if t in first_id and first_id[t] < n}
    present = {tokens[i]: i for i in ids if i < len(tokens)}
    if "<|end|>" in present and ({"<|return|>", "<|call|>"} <= present.keys()
                                 or {"<|calls|>", "<|flush|>"} <= present.keys()):
        ids.discard(present["<|end|>"])   # gpt-oss / Solar Open: <|end|> ends a message, not the answer
    if "</s>" in present and "<|tool_response>" in present:
        ids.discard(present["</s>"])
    return frozenset(ids)


def normalize_stop(stop: Union[None, str, Sequence[str]]) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    out = [s for s in stop if s]
    if not all(isinstance(s, str) for s in out):
        raise TypeError("stop must be a string or a list of strings")
    return out


class StopMatcher:
    """Feeds decoded text and releases only what cannot be the start of a stop string."""

    def __init__(self, stops: Iterable[str]):
        self.stops = list(stops)
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.held += text
        cut = min((self.held.find(s) for s in self.stops if s in self.held), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.held = self.held[:cut], ""
            return out
        # Keep the longest tail that is a proper prefix of some stop string.
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.held)), keep, -1):
                if self.held.endswith(s[:n]):
                    keep = n
                    break
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out
