"""Request checking and response shapes of the OpenAI API (chat completions, completions, errors), kept apart
from the HTTP layer so they can be read against the API reference."""
from __future__ import annotations

import time
import uuid
from typing import Optional

# Sampling options a request may carry, and the model's keyword for each.
SAMPLING = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature",
            "top_p": "top_p", "seed": "seed", "stop": "stop"}
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
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", "n")
    return opts


def check_messages(messages) -> list:
    """OpenAI chat messages: roles and content parts (images.py resolves the image URLs)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}] must be an object with role system, user or assistant", "messages")
        content = m.get("content")
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                raise RequestError(f"messages[{i}]: content parts must be text or image_url", "messages")
    return messages


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(info: dict) -> dict:
    p, c = info["prompt_tokens"], info["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def chat_response(cid: str, model: str, info: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": info["text"]},
                         "finish_reason": FINISH.get(info["finish_reason"], "stop")}],
            "usage": usage(info)}


def chat_chunk(cid: str, model: str, delta: dict, finish: Optional[str] = None, usage_: Optional[dict] = None) -> dict:
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def text_response(cid: str, model: str, info: dict) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": info["text"], "finish_reason": FINISH.get(info["finish_reason"], "stop"),
                         "logprobs": None}],
            "usage": usage(info)}


def text_chunk(cid: str, model: str, text: str, finish: Optional[str] = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
