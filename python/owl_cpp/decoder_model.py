"""What every model family shares: the decoder weights (loaded once), its tokenizer, the contexts calls run
on (context_pool.py), generation and research access over prepared prompts. Families add how a
conversation becomes a prepared prompt (text_model.py; families/<family>/model.py)."""
from __future__ import annotations

import numbers
import os
import re
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from . import _core
from .context_pool import ContextPool
from .context_slot import ContextSlot, PreparedPrompt
from .generation import SamplingOptions, check_logprobs, check_max_tokens, generate_tokens
from .json_mode import make_constraint, parse_response_format
from .research import ContinuationScore, score_continuations
from .step_batcher import StepBatcher, batching_enabled
from .stops import normalize_stop, text_model_terminators
from .streaming import TextStream

KV_TYPES = ("f16", "f32")


def check_device(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N', available in this build and on this machine; else a ValueError saying why."""
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or re.fullmatch(r"cuda:\d{1,3}", device)):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu" or "cuda" in _core.available_backends():
        return device
    info = _core.system_info()["cuda"]
    if not info["compiled"]:
        raise ValueError(f"device {device!r}: this build of owl_cpp has no CUDA backend (reinstall on a machine "
                         "with the CUDA toolkit, or with -C cmake.define.OWL_CUDA=ON)")
    raise ValueError(f"device {device!r}: the CUDA backend is compiled in but no GPU is visible (driver version "
                     f"{info['driver_version'] or 'none'})")


def check_n_gpu_layers(n_gpu_layers) -> int:
    """None or -1: every layer on the device; N >= 0: the first N layers there, the rest on the CPU (N >= the
    model's layer count: all). -1 for None; else a ValueError naming the bad value."""
    if n_gpu_layers is None:
        return -1
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, numbers.Integral):
        raise ValueError(f"n_gpu_layers must be an integer (-1: every layer on the GPU), got {n_gpu_layers!r}")
    if n_gpu_layers < -1:
        raise ValueError(f"n_gpu_layers must be -1 (every layer on the GPU) or a layer count >= 0, got {n_gpu_layers}")
    return int(n_gpu_layers)


class DecoderModel:
    """A GGUF decoder and its contexts. n_ctx: positions per context (default: the training context, at
    most 4096); threads: CPU threads (default: physical cores); kv_type: KV cache storage "f16" | "f32"
    (default f16: half the memory of f32, as llama.cpp); device: where the decoder runs, "cpu" or "cuda" (the
    first GPU; "cuda:N" the N-th); n_gpu_layers: on a GPU, how many of the first layers run there, the rest and
    the output head on the CPU (partial offload for a GPU smaller than the model, as llama.cpp's; None or -1:
    all; ignored on the CPU); max_spare_contexts: idle extra contexts kept for concurrent calls."""

    SPLICED = False     # how images enter its prompts (context_slot.PreparedPrompt); text models have none
    ARCH = ""           # a family's general.architecture (checked at load), and its name for messages
    FAMILY = ""

    def __init__(self, path: Union[str, os.PathLike], *, n_ctx: Optional[int] = None, threads: Optional[int] = None,
                 n_batch: int = 256, kv_type: Optional[str] = None, device: str = "cpu",
                 n_gpu_layers: Optional[int] = None, max_spare_contexts: int = 1):
        path = os.fspath(path)
        self.device = check_device(device)
        self.n_gpu_layers = check_n_gpu_layers(n_gpu_layers)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file not found: {path}")
        self.path = path
        self._model = _core.Model.load(path)
        self._gguf = _core.GGUFFile.open(path)
        self.hparams = dict(self._model.hparams)
        if self.ARCH and self.hparams["arch"] != self.ARCH:
            raise ValueError(f"{path}: architecture {self.hparams['arch']!r} is not an {self.FAMILY} decoder "
                             f"({self.ARCH!r}); load a plain .gguf text model by its file path")
        if n_ctx is None:
            n_ctx = min(4096, self.hparams["n_ctx_train"])
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        self._check_n_ctx(int(n_ctx))      # before any context (its KV cache) is allocated
        self._context_args = (int(n_ctx), int(threads) if threads else _core.default_threads(), int(n_batch))
        self._context_kwargs = {}
        if kv_type is not None:
            if kv_type not in KV_TYPES:
                raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
            self._context_kwargs["kv_type"] = kv_type
        self.kv_type = kv_type
        self._context_kwargs["backend"] = self.device
        if self.device != "cpu":     # on the CPU every layer is there already
            self._context_kwargs["n_gpu_layers"] = self.n_gpu_layers
        self.tokenizer = self._model.tokenizer
        self.terminators = self._terminators()
        # The pool makes its default context now, so on a GPU the weights are copied at load: a model too large
        # fails here, not at first use.
        self._contexts = ContextPool(self._make_context, max_spare_contexts)
        # Decode steps of concurrent generations run together (step_batcher.py); False: each on its own.
        self.batch_decode = batching_enabled()
        self._batcher = StepBatcher()

    def _check_n_ctx(self, n_ctx: int) -> None:
        """A family's limit on the context length (self.path, self._gguf and self.hparams are set); raise
        ValueError to refuse. Default: any length."""

    def _make_context(self, threads: Optional[int] = None):
        """A new context (KV cache) of this model; threads: its CPU threads (default the model's)."""
        n_ctx, n_threads, n_batch = self._context_args
        return _core.Context(self._model, n_ctx, int(threads) if threads else n_threads, n_batch, **self._context_kwargs)

    def _terminators(self) -> frozenset:
        return text_model_terminators(self.tokenizer, self._gguf)

    # ----- properties -------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._context_args[0]

    @property
    def threads(self) -> int:
        return self._context_args[1]

    @property
    def n_vocab(self) -> int:
        return self.hparams["n_vocab"]

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.tokenizer.eos_id

    @property
    def _ctx(self):
        """The default context's _core.Context, for benchmarks that drive it directly (bench/engine_runner.py).
        Not while other threads use the model; reset() afterwards keeps the pool's bookkeeping right."""
        return self._contexts.default.ctx

    def reserve_contexts(self, n: int) -> None:
        """Makes the contexts for n calls at once now (at most 1 + max_spare_contexts), as a server does for
        its slots: their memory is taken at start, and conversations that take turns keep their caches."""
        self._contexts.reserve(n)

    def cache_stats(self) -> dict:
        """What caches saved since loading: prompt tokens reused from a context's KV cache ("prompt_tokens_cached")
        and evaluated ("prompt_tokens_evaluated"), over every call and session of this model."""
        stats = self._contexts.stats
        return {"prompt_tokens_cached": stats.cached, "prompt_tokens_evaluated": stats.evaluated}

    def metadata(self, key: str):
        """A GGUF metadata value (KeyError when the file lacks it)."""
        return self._gguf[key]

    # ----- text <-> ids -----------------------------------------------------------------------
    def tokenize(self, text: Union[str, bytes], add_special: bool = True, special: bool = True) -> list[int]:
        """Text -> ids. add_special adds BOS where the model wants it; special parses <|im_start|>-style tokens."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return list(self.tokenizer.encode(text, add_special, special))

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), render_special)

    # ----- raw evaluation on the default context (tests, advanced use) ------------------------
    def reset(self) -> None:
        """Empties the default context and frees idle spare contexts (sessions keep theirs)."""
        self._contexts.reset()

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        """Appends ids to the default context and returns the last token's logits [n_vocab]. Waits while
        another thread uses the default context."""
        ids = self._check_ids(ids)
        with self._contexts.borrow(wait=True) as slot:
            self._check_room(slot, len(ids))
            return slot.append(ids, return_logits=True)

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("no tokens to evaluate")
        return ids

    def _check_room(self, slot: ContextSlot, n: int) -> None:
        n_past = slot.ctx.n_past
        if n_past + n > self.n_ctx:
            raise ValueError(f"prompt too long: {n_past} cached + {n} new tokens exceed the context "
                             f"of {self.n_ctx} tokens (load with a larger n_ctx)")

    # ----- generation --------------------------------------------------------------------------
    def _stream(self, prompt: PreparedPrompt, *, slot: Optional[ContextSlot] = None, max_tokens: int, sampler,
                stop=None, ignore_eos: bool = False, logprobs: Optional[list] = None,
                top_logprobs: int = 0, json: Optional[str] = None,
                batch_decode: Optional[bool] = None) -> Iterator[tuple[str, dict]]:
        """generate_tokens on a context of the pool (or `slot`), held until the generator ends; json: a
        json_mode kind (the answer constrained to JSON) or None; batch_decode: whether its decode steps join
        other generations' (step_batcher.py; None: self.batch_decode)."""
        terminators = frozenset() if ignore_eos else self.terminators
        constraint = make_constraint(self, json, terminators)
        stops = normalize_stop(stop)
        batcher = self._batcher if (self.batch_decode if batch_decode is None else batch_decode) else None
        with self._contexts.borrow(slot, prompt=prompt) as s:
            yield from generate_tokens(s, prompt, self.tokenizer, max_tokens=max_tokens, sampler=sampler,
                                       stops=stops, terminators=terminators, batcher=batcher, logprobs=logprobs,
                                       top_logprobs=top_logprobs, constraint=constraint)

    def generate(self, prompt: Union[str, Sequence[int]], *, max_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 seed: Optional[int] = None, stop: Union[None, str, Sequence[str]] = None, stream: bool = False,
                 add_special: bool = True, return_info: bool = False, ignore_eos: bool = False,
                 logprobs: Optional[int] = None, response_format=None):
        """Continues `prompt` (text or token ids), no chat template.

        Stops at the model's terminator tokens (ignore_eos=True: not), a stop string, max_tokens or the end of
        the context. Returns the text; stream=True: a TextStream of text pieces (.info at the end);
        return_info=True: a dict with the text, token ids, counts, finish_reason and timings.
        logprobs=k (0..20): info["logprobs"] (and a stream's .logprobs, growing as it goes) holds, per sampled
        token, {"id", "logprob", "top": [(id, logprob)] * k}: log-softmax of the model's logits, before sampling
        filters; None (default): not computed.
        response_format="json" (or "json_object", {"type": "json_object"}): the answer is one JSON object,
        sampled under a JSON constraint (json_mode.py); generation stops when the object closes (finish_reason
        "stop"), or it is cut by max_tokens ("length"). None / "text": free text. {"type": "json_schema",
        "json_schema": {"schema": {...}}}: an object matching the schema (the subset json_schema.py supports).
        Safe to call from several threads (context_pool.py says on which context each call runs)."""
        sampler = SamplingOptions(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed).make_sampler()
        json = parse_response_format(response_format)
        ids = self._prompt_ids(prompt, add_special)
        check_max_tokens(max_tokens)
        top, entries = self._logprobs(logprobs)
        run = self._answer_stream(PreparedPrompt(ids), None, slot=None, max_tokens=max_tokens, sampler=sampler,
                                  stop=stop, ignore_eos=ignore_eos, logprobs=entries, top_logprobs=top, json=json)
        return finish(run, stream, return_info, entries)

    @staticmethod
    def _logprobs(logprobs) -> tuple[int, Optional[list]]:
        """(alternatives per token, the list generation fills) for a logprobs= argument (None: off)."""
        top = check_logprobs(logprobs)
        return (0, None) if top is None else (top, [])

    def _prompt_ids(self, prompt, add_special: bool) -> list[int]:
        ids = self.tokenize(prompt, add_special) if isinstance(prompt, (str, bytes)) else [int(i) for i in prompt]
        if not ids:
            raise ValueError("empty prompt: nothing to condition on")
        return ids

    def _run(self, prepared: PreparedPrompt, vision: Optional[dict] = None, *, slot: Optional[ContextSlot] = None,
             stream: bool = False, return_info: bool = False, max_tokens: int = 512, temperature: float = 0.0,
             top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
             seed: Optional[int] = None, stop=None, ignore_eos: bool = False, on_done=None,
             logprobs: Optional[int] = None, response_format=None, batch_decode: Optional[bool] = None):
        """The answer to a prepared chat prompt (chat() and Session build these), as chat() returns it.
        on_done(raw_text, tokens or None) is called when the answer ends (tokens None: stopped early).
        response_format: as generate()'s; batch_decode: as _stream's."""
        sampler = SamplingOptions(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed).make_sampler()
        json = parse_response_format(response_format)
        check_max_tokens(max_tokens)
        top, entries = self._logprobs(logprobs)
        run = self._answer_stream(prepared, vision, slot=slot, max_tokens=max_tokens, sampler=sampler, stop=stop,
                                  ignore_eos=ignore_eos, on_done=on_done, logprobs=entries, top_logprobs=top,
                                  json=json, batch_decode=batch_decode)
        return finish(run, stream, return_info, entries)

    def _answer_stream(self, prepared: PreparedPrompt, vision: Optional[dict], *, slot, max_tokens, sampler, stop,
                       ignore_eos, on_done=None, logprobs=None, top_logprobs=0,
                       json=None, batch_decode=None) -> Iterator[tuple[str, dict]]:
        """_stream's pieces, the text joined into the final info; on_done as _run's (families add vision)."""
        pieces, ended = [], False
        try:
            for piece, info in self._stream(prepared, slot=slot, max_tokens=max_tokens, sampler=sampler, stop=stop,
                                            ignore_eos=ignore_eos, logprobs=logprobs, top_logprobs=top_logprobs,
                                            json=json, batch_decode=batch_decode):
                pieces.append(piece)
                if info:
                    info["text"], ended = "".join(pieces), True
                    if on_done is not None:
                        on_done(info["text"], info["tokens"])
                yield piece, info
        except GeneratorExit:                       # the caller stopped early: what was said still counts
            if on_done is not None and pieces and not ended:
                on_done("".join(pieces), None)
            raise

    # ----- research ------------------------------------------------------------------------------
    def _score(self, prompt: PreparedPrompt, continuations: Sequence[Sequence[int]]) -> list[ContinuationScore]:
        with self._contexts.borrow(prompt=prompt) as slot:
            return score_continuations(slot, prompt, continuations, self.n_vocab)


def finish(run: Iterator[tuple[str, dict]], stream: bool, return_info: bool, logprobs: Optional[list] = None):
    """A generation's result as the caller asked: a TextStream, the info dict, or the text."""
    if stream:
        return TextStream(run, logprobs)
    info = {}
    for _, info in run:
        pass
    return info if return_info else info["text"]
