"""Request checking and response shapes of the OpenAI API (chat completions, completions, errors), kept apart
from the HTTP layer so they can be read against the API reference."""
from __future__ import annotations

import time
import uuid
from typing import Optional

from ..json_mode import parse_response_format

# Sampling options a request may carry, and the model's keyword for each.
SAMPLING = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature",
            "top_p": "top_p", "seed": "seed", "stop": "stop",
            "ignore_eos": "ignore_eos"}      # an extension, as llama.cpp's server has it (benchmarks)
FINISH = {"stop": "stop", "length": "length", "context": "length"}  # the runtime's reasons -> OpenAI's


class RequestError(ValueError):
    """A request the API answers with 400 (or `status`), in OpenAI's error shape."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400, code: Optional[str] = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sampling_options(body: dict, max_tokens_limit: int) -> dict:
    """The request's sampling options as the model's keywords; greedy unless a temperature is given (the
    official Owl default, and reproducible)."""
    opts = {}
    for key, name in SAMPLING.items():
        if body.get(key) is not None:
            opts[name] = body[key]
    n = opts.get("max_tokens", 512)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_tokens_limit:
        raise RequestError(f"max_tokens must be an integer in [1, {max_tokens_limit}], got {n!r}", "max_tokens")
    opts["max_tokens"] = n
    for key in ("temperature", "top_p"):
        v = opts.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise RequestError(f"{key} must be a number, got {v!r}", key)
    if not isinstance(opts.get("ignore_eos", False), bool):
        raise RequestError(f"ignore_eos must be a boolean, got {opts['ignore_eos']!r}", "ignore_eos")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", "n")
    return opts


MAX_TOP_LOGPROBS = 20


def logprob_options(body: dict, chat: bool) -> Optional[int]:
    """How many alternatives per token a request wants log-probabilities for (None: no logprobs). Chat:
    `logprobs` true/false and `top_logprobs` 0..20 (which needs logprobs true); completions: `logprobs` an
    integer 0..20 (OpenAI's legacy API allows up to 5; we allow up to 20)."""
    lp = body.get("logprobs")
    if chat:
        top = body.get("top_logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise RequestError(f"logprobs must be a boolean, got {lp!r}", "logprobs")
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
                raise RequestError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}",
                                   "top_logprobs")
            if not lp:
                raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        return (top or 0) if lp else None
    if lp is None or lp is False:
        return None
    if isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_TOP_LOGPROBS:
        raise RequestError(f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {lp!r}", "logprobs")
    return lp


def check_response_format(body: dict):
    """response_format: {"type": "text"} (or none) is free text (None); {"type": "json_object"} and
    {"type": "json_schema", "json_schema": {"schema": {...}}} constrain sampling so that the answer is one JSON
    object (matching the schema: a subset of JSON Schema, json_schema.py) and are returned for the model's
    response_format. A schema using what the constraint cannot hold the answer to is a 400: an unconstrained
    answer would silently break the contract."""
    rf = body.get("response_format")
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind in ("json_object", "json_schema"):
        try:
            parse_response_format(rf)
        except ValueError as e:
            raise RequestError(str(e), "response_format", code="unsupported_response_format") from None
        return rf
    raise RequestError(f"response_format must be an object with type text, json_object or json_schema, got {rf!r}",
                       "response_format")


def check_messages(messages, max_images: Optional[int] = None) -> list:
    """OpenAI chat messages: roles and content parts (images.py resolves the image URLs, videos.py the video
    URLs), at most max_images images in all."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    n_images = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}] must be an object with role system, user or assistant", "messages")
        content = m.get("content")
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url", "video_url"):
                raise RequestError(f"messages[{i}]: content parts must be text, image_url or video_url", "messages")
            n_images += part["type"] == "image_url"
    if max_images is not None and n_images > max_images:
        raise RequestError(f"the request has {n_images} images; this server takes at most {max_images} per request "
                           "(--max-images)", "messages", code="too_many_images")
    return messages


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(info: dict) -> dict:
    p, c = info["prompt_tokens"], info["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def token_bytes(tokenizer, token_id: int) -> bytes:
    """A token's bytes as they enter the answer's text (a byte-level piece may be part of one UTF-8 character)."""
    return bytes(tokenizer.token_to_bytes(int(token_id), False))


def chat_logprobs(tokenizer, entries: Optional[list]) -> Optional[dict]:
    """Generation logprob entries ({"id", "logprob", "top"}) in the chat API's shape: {"content": [{token,
    logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""
    if entries is None:
        return None

    def one(tok, lp):
        b = token_bytes(tokenizer, tok)
        return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [{**one(e["id"], e["logprob"]), "top_logprobs": [one(t, lp) for t, lp in e["top"]]}
                        for e in entries]}


def text_logprobs(tokenizer, entries: Optional[list], offset: int = 0) -> Optional[dict]:
    """The same in the legacy completions shape: tokens, token_logprobs, top_logprobs (a {token: logprob} per
    position) and text_offset (each token's start in the text, counting from `offset`)."""
    if entries is None:
        return None
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        text = token_bytes(tokenizer, e["id"]).decode("utf-8", "replace")
        out["tokens"].append(text)
        out["token_logprobs"].append(e["logprob"])
        out["top_logprobs"].append({token_bytes(tokenizer, t).decode("utf-8", "replace"): lp for t, lp in e["top"]})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_response(cid: str, model: str, info: dict, logprobs: Optional[dict] = None) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": info["text"]},
                         "logprobs": logprobs, "finish_reason": FINISH.get(info["finish_reason"], "stop")}],
            "usage": usage(info)}


def chat_chunk(cid: str, model: str, delta: dict, finish: Optional[str] = None, usage_: Optional[dict] = None,
               logprobs: Optional[dict] = None) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [choice]}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def text_response(cid: str, model: str, info: dict, logprobs: Optional[dict] = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": info["text"], "finish_reason": FINISH.get(info["finish_reason"], "stop"),
                         "logprobs": logprobs}],
            "usage": usage(info)}


def text_chunk(cid: str, model: str, text: str, finish: Optional[str] = None,
               logprobs: Optional[dict] = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}]}
