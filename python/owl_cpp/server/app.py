"""The HTTP layer: FastAPI routes over one loaded model. Generation runs in worker threads (the runtime releases
the GIL), at most `parallel` at once, each on a context of its own from the model's pool; requests beyond that
wait in a bounded queue and get 503 when it is full."""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .openai_shapes import (RequestError, chat_chunk, chat_response, check_messages, completion_id, error_body,
                            sampling_options, text_response, usage, FINISH)


class Slots:
    """At most `parallel` generations at once and at most `queue` requests waiting for one (503 beyond)."""

    def __init__(self, parallel: int, queue: int):
        self._free = threading.BoundedSemaphore(parallel)
        self._lock = threading.Lock()
        self._waiting, self._queue = 0, queue

    def acquire(self) -> None:
        if self._free.acquire(blocking=False):
            return
        with self._lock:
            if self._waiting >= self._queue:
                raise RequestError("the server is busy: too many requests are waiting; retry later", status=503,
                                   code="server_busy")
            self._waiting += 1
        try:
            self._free.acquire()
        finally:
            with self._lock:
                self._waiting -= 1

    def release(self) -> None:
        self._free.release()


def create_app(model, *, model_name: Optional[str] = None, api_key: Optional[str] = None, parallel: int = 1,
               queue: int = 16, max_tokens_limit: int = 4096) -> FastAPI:
    """An app serving `model` (from owl_cpp.load). api_key: required as `Authorization: Bearer KEY` on /v1/*;
    parallel: generations at once; queue: requests allowed to wait for one."""
    name = model_name or os.path.basename(str(getattr(model, "model_dir", None) or model.path).rstrip("/"))
    slots = Slots(parallel, queue)
    app = FastAPI(title="owl_cpp", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def request_error(_, e: RequestError):
        kind = "server_error" if e.status >= 500 else "invalid_request_error"
        return JSONResponse(error_body(str(e), kind, e.param, e.code), status_code=e.status)

    @app.exception_handler(ValueError)  # the model's own checks (bad option, prompt past the context, bad image)
    async def value_error(_, e: ValueError):
        return JSONResponse(error_body(str(e)), status_code=400)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/") and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse(error_body("invalid or missing API key (Authorization: Bearer ...)",
                                           code="invalid_api_key"), status_code=401)
        return await call_next(request)

    async def json_body(request: Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON")
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def run(call):
        """Runs a blocking generation in a slot (in a worker thread)."""
        slots.acquire()
        try:
            return call()
        finally:
            slots.release()

    def sse(stream, cid: str, make_chunk, include_usage: bool):
        """Server-sent events over a TextStream; the slot is released (and generation stopped) when it ends,
        also when the client goes away."""
        try:
            for piece in stream:
                yield f"data: {json.dumps(make_chunk(piece, None))}\n\n"
            info = stream.info or {}
            yield f"data: {json.dumps(make_chunk(None, FINISH.get(info.get('finish_reason'), 'stop')))}\n\n"
            if include_usage and info:
                yield f"data: {json.dumps({**make_chunk(None, None), 'choices': [], 'usage': usage(info)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            stream.close()
            slots.release()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                            "owned_by": "owl_cpp"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await json_body(request)
        messages = check_messages(body.get("messages"))
        opts = sampling_options(body, max_tokens_limit)
        cid = completion_id("chatcmpl")
        if not body.get("stream"):
            info = await run_in_threadpool(run, lambda: model.chat(messages=messages, return_info=True, **opts))
            return chat_response(cid, name, info)
        await run_in_threadpool(slots.acquire)
        try:
            stream = await run_in_threadpool(lambda: model.chat(messages=messages, stream=True, **opts))
        except BaseException:
            slots.release()
            raise

        def chunk(piece, finish):
            return chat_chunk(cid, name, {"content": piece} if piece is not None else {}, finish)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = f"data: {json.dumps(chat_chunk(cid, name, {'role': 'assistant', 'content': ''}))}\n\n"

        def events():
            yield head
            yield from sse(stream, cid, chunk, include_usage)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string", "prompt")
        opts = sampling_options(body, max_tokens_limit)
        if body.get("stream"):
            raise RequestError("stream=true is not supported on /v1/completions yet; use /v1/chat/completions",
                               "stream")
        info = await run_in_threadpool(run, lambda: model.generate(prompt, return_info=True, **opts))
        return text_response(completion_id("cmpl"), name, info)

    return app
