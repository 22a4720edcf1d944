"""`owl_cpp.load("model.gguf")`: a plain qwen2 / llama GGUF text decoder behind a llama-cpp-python-like API."""
from __future__ import annotations

import os
import time
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from . import _core
from .generation import SamplingOptions, StopMatcher, normalize_stop

Prompt = Union[str, Sequence[int]]


class TextModel:
    """A GGUF decoder with one KV cache. Consecutive calls reuse the cached prefix they share."""

    def __init__(self, path: Union[str, os.PathLike], *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
                 n_batch: int = 256):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file not found: {path}")
        self.path = path
        self._model = _core.Model.load(path)
        self.hparams = dict(self._model.hparams)
        if n_ctx is None:
            n_ctx = min(4096, self.hparams["n_ctx_train"])
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        self.threads = int(threads) if threads else _core.default_threads()
        self._ctx = _core.Context(self._model, n_ctx, self.threads, n_batch)
        self.tokenizer = self._model.tokenizer
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order

    # ----- properties -------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._ctx.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.hparams["n_vocab"]

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_id

    def metadata(self, key: str):
        return _core.GGUFFile.open(self.path)[key]

    # ----- text <-> ids -----------------------------------------------------------------------
    def tokenize(self, text: Union[str, bytes], add_special: bool = True, special: bool = True) -> list[int]:
        """Text -> ids. add_special adds BOS where the model wants it; special parses <|im_start|>-style tokens."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return list(self.tokenizer.encode(text, add_special, special))

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), render_special)

    # ----- raw evaluation (tests, advanced use) -----------------------------------------------
    def reset(self) -> None:
        self._ctx.truncate(0)
        self._cached = []

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        """Appends ids to the cache and returns the last token's logits [n_vocab]."""
        ids = self._check_ids(ids)
        logits = self._ctx.eval(ids)
        self._cached += ids
        return logits

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of `ids` from an empty cache: [len(ids), n_vocab]."""
        ids = self._check_ids(ids)
        self.reset()
        out = self._ctx.eval(ids, all_logits=True)
        self._cached = list(ids)
        return out

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("no tokens to evaluate")
        if self._ctx.n_past + len(ids) > self.n_ctx:
            raise ValueError(f"prompt too long: {self._ctx.n_past} cached + {len(ids)} new tokens exceed the context "
                             f"of {self.n_ctx} tokens (load with a larger n_ctx)")
        return ids

    def _prefill(self, ids: list[int]) -> None:
        """Evaluates ids, reusing the longest prefix already in the cache (at least one token is recomputed)."""
        if len(ids) > self.n_ctx:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the context of {self.n_ctx} tokens "
                             f"(load with a larger n_ctx)")
        common = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        self._ctx.truncate(common)
        self._cached = self._cached[:common]
        self._ctx.eval(ids[common:], return_logits=False)
        self._cached = list(ids)

    # ----- generation --------------------------------------------------------------------------
    def generate(self, prompt: Prompt, *, max_tokens: int = 256, temperature: float = 0.0, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: Optional[int] = None,
                 stop: Union[None, str, Sequence[str]] = None, stream: bool = False, add_special: bool = True,
                 return_info: bool = False):
        """Generates a continuation of `prompt` (text or token ids).

        Returns the text; with stream=True an iterator of text pieces; with return_info=True a dict with
        the text, token ids, counts, finish_reason and timings.
        """
        opts = SamplingOptions(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        sampler = opts.make_sampler()
        ids = self.tokenize(prompt, add_special) if isinstance(prompt, (str, bytes)) else [int(i) for i in prompt]
        if not ids:
            raise ValueError("empty prompt: nothing to condition on")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        run = self._run(ids, max_tokens, sampler, normalize_stop(stop))
        if stream:
            return (piece for piece, _ in run)
        text = []
        info = {}
        for piece, info in run:
            text.append(piece)
        info["text"] = "".join(text)
        return info if return_info else info["text"]

    def _run(self, ids: list[int], max_tokens: int, sampler, stops: list[str]) -> Iterator[tuple[str, dict]]:
        t0 = time.perf_counter()
        self._prefill(ids)
        t1 = time.perf_counter()
        decoder = _core.StreamDecoder(self.tokenizer, False)
        matcher = StopMatcher(stops)
        n_tok = len(self.tokenizer)
        history = list(ids)
        generated: list[int] = []
        finish = "length"
        while len(generated) < max_tokens:
            if len(history) >= self.n_ctx:
                finish = "context"
                break
            tok = sampler.sample(self._ctx, history, n_tok)
            if tok == self.tokenizer.eos_id or self.tokenizer.is_control(tok):  # end of generation
                finish = "stop"
                break
            generated.append(tok)
            history.append(tok)
            piece = matcher.push(decoder.push(tok))
            if matcher.stopped:
                finish = "stop"
                if piece:
                    yield piece, {}
                break
            if piece:
                yield piece, {}
            if len(generated) < max_tokens:
                self._ctx.eval([tok], return_logits=False)
                self._cached.append(tok)
        tail = matcher.push(decoder.flush()) + matcher.flush()
        t2 = time.perf_counter()
        info = {
            "tokens": generated,
            "prompt_tokens": len(ids),
            "completion_tokens": len(generated),
            "finish_reason": finish,
            "timings": {
                "prefill_s": t1 - t0,
                "decode_s": t2 - t1,
                "prefill_tokens_per_s": len(ids) / (t1 - t0) if t1 > t0 else float("inf"),
                "decode_tokens_per_s": len(generated) / (t2 - t1) if generated and t2 > t1 else 0.0,
            },
        }
        yield tail, info
