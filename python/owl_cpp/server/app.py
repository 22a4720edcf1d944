"""The HTTP layer: FastAPI routes over one loaded model. Generation runs in worker threads (the runtime releases
the GIL), at most `parallel` at once, each on a context of its own from the model's pool; requests beyond that
wait in a bounded queue and get 503 when it is full."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from .images import ImageFetcher
from .metrics import Metrics
from .mplug2_route import Mplug2Plan
from .openai_shapes import (FINISH, RequestError, chat_chunk, chat_logprobs, chat_response, check_messages,
                            check_response_format, completion_id, error_body, logprob_options, sampling_options,
                            text_chunk, text_logprobs, text_response, usage)
from .videos import MAX_VIDEO_BYTES, VideoResolver, frame_decoder, video_family

# The chat page (GET /) and its script and style (GET /static/...): package files, nothing from elsewhere.
STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page may load and call only this server: no other host can inject a script, or receive what is typed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Slots:
    """At most `parallel` generations at once and at most `queue` requests waiting for one (503 beyond)."""

    def __init__(self, parallel: int, queue: int):
        self._free = threading.BoundedSemaphore(parallel)
        self._lock = threading.Lock()
        self.waiting, self.busy, self._queue = 0, 0, queue

    def acquire(self) -> None:
        if not self._free.acquire(blocking=False):
            with self._lock:
                if self.waiting >= self._queue:
                    raise RequestError("the server is busy: too many requests are waiting; retry later",
                                       status=503, code="server_busy")
                self.waiting += 1
            try:
                self._free.acquire()
            finally:
                with self._lock:
                    self.waiting -= 1
        with self._lock:
            self.busy += 1

    def release(self) -> None:
        with self._lock:
            self.busy -= 1
        self._free.release()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body when it ends, also when the client went away mid-stream.
    Starlette stops reading the body then but leaves the generator suspended until the garbage collector finds
    it, which on a quiet server can be never: the generation would stay stalled in its slot. Closing it stops
    the generation and frees the slot at once."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


def create_app(model, *, model_name: Optional[str] = None, api_key: Optional[str] = None, parallel: int = 1,
               queue: int = 16, max_tokens_limit: int = 4096, fetch_images: bool = True,
               local_image_dir: Optional[str] = None, max_image_bytes: int = 20 << 20,
               max_image_pixels: Optional[int] = None, max_images: int = 8, max_video_bytes: int = MAX_VIDEO_BYTES,
               max_videos: int = 4, web_page: bool = True) -> FastAPI:
    """An app serving `model` (from owl_cpp.load). api_key: required as `Authorization: Bearer KEY` on /v1/*;
    parallel: generations at once; queue: requests allowed to wait for one; fetch_images: whether http(s) image
    URLs are fetched; local_image_dir: the one directory image paths may name (none by default); max_images,
    max_image_bytes, max_image_pixels (default owl_cpp.images.MAX_PIXELS): per-request limits (400 beyond);
    max_video_bytes: per video_url part; max_videos: per request for mPLUG-Owl3 (mPLUG-2 takes one; videos.py);
    web_page: serve the chat page at / (public, like /health: it holds no data, and its API calls send the key)."""
    name = model_name or os.path.basename(str(getattr(model, "model_dir", None) or model.path).rstrip("/"))
    slots = Slots(parallel, queue)
    if hasattr(model, "reserve_contexts"):
        # A context per slot from the start: clients taking turns then each find their conversation's cache
        # (context_pool.py), and a model too large for `parallel` contexts fails now, not under load.
        model.reserve_contexts(parallel)
    fetcher = ImageFetcher(allow_http=fetch_images, local_dir=local_image_dir, max_bytes=max_image_bytes,
                           max_pixels=max_image_pixels)
    family = video_family(model)
    videos = VideoResolver(fetcher, frame_decoder(model, family) if family else None, max_bytes=max_video_bytes,
                           max_videos=max_videos if family == "owl3" else 1,
                           model_label=f"{getattr(model, 'FAMILY', '') or 'this'} model {name}")
    metrics = Metrics()
    tokenizer = getattr(model, "tokenizer", None)        # token texts for logprobs
    app = FastAPI(title="owl_cpp", docs_url=None, redoc_url=None)

    def failed(status: int, body: dict) -> JSONResponse:
        metrics.error(status)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestError)
    async def request_error(_, e: RequestError):
        kind = "server_error" if e.status >= 500 else "invalid_request_error"
        return failed(e.status, error_body(str(e), kind, e.param, e.code))

    @app.exception_handler(ValueError)  # the model's own checks (bad option, prompt past the context, bad image)
    async def value_error(_, e: ValueError):
        return failed(400, error_body(str(e)))

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/") and request.headers.get("authorization") != f"Bearer {api_key}":
            return failed(401, error_body("invalid or missing API key (Authorization: Bearer ...)",
                                          code="invalid_api_key"))
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
            t = time.perf_counter()
            info = call()
            metrics.generation(info, time.perf_counter() - t)
            return info
        finally:
            slots.release()

    def sse(stream, started: tuple, make_chunk, include_usage: bool):
        """Server-sent events over a TextStream whose first piece was taken already (`started`: the time it
        started, the piece or None, and when it came); `streamed` stops it and frees the slot. make_chunk(piece,
        finish, logprob entries or None): with logprobs asked, each chunk carries those of the tokens sampled
        since the previous one."""
        t, piece, first = started
        seen = 0

        def entries():
            nonlocal seen
            lp = getattr(stream, "logprobs", None)
            if lp is None:
                return None
            out = lp[seen:]
            seen += len(out)
            return out

        if piece is not None:
            yield f"data: {json.dumps(make_chunk(piece, None, entries()))}\n\n"
            for piece in stream:
                yield f"data: {json.dumps(make_chunk(piece, None, entries()))}\n\n"
        info = stream.info or {}
        metrics.generation(info, time.perf_counter() - t, first)
        yield f"data: {json.dumps(make_chunk(None, FINISH.get(info.get('finish_reason'), 'stop'), entries()))}\n\n"
        if include_usage and info:
            yield f"data: {json.dumps({**make_chunk(None, None, None), 'choices': [], 'usage': usage(info)})}\n\n"
        yield "data: [DONE]\n\n"

    if web_page:
        @app.get("/", include_in_schema=False)
        async def page():
            return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        caches = model.cache_stats() if hasattr(model, "cache_stats") else {}
        return PlainTextResponse(metrics.text(slots.busy, slots.waiting, caches),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                            "owned_by": "owl_cpp"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        metrics.request("chat")
        body = await json_body(request)
        opts = sampling_options(body, max_tokens_limit)
        rf = check_response_format(body)
        if rf is not None:
            opts["response_format"] = rf
        top = logprob_options(body, chat=True)
        if top is not None:
            opts["logprobs"] = top
        raw = check_messages(body.get("messages"), max_images)
        videos.check(raw)
        cid = completion_id("chatcmpl")
        if family == "mplug2":
            return await mplug2_chat(cid, raw, body, opts)
        messages = await run_in_threadpool(fetcher.resolve, await run_in_threadpool(videos.resolve, raw))
        if not body.get("stream"):
            info = await run_in_threadpool(run, lambda: model.chat(messages=messages, return_info=True, **opts))
            return chat_response(cid, name, info, chat_logprobs(tokenizer, info.get("logprobs")))

        def chunk(piece, finish, entries):
            return chat_chunk(cid, name, {"content": piece} if piece is not None else {}, finish,
                              logprobs=chat_logprobs(tokenizer, entries))

        head = chat_chunk(cid, name, {"role": "assistant", "content": ""})
        return await streamed(lambda: model.chat(messages=messages, stream=True, **opts), chunk, body, head)

    async def mplug2_chat(cid: str, raw: list, body: dict, opts: dict):
        """mPLUG-2 (mplug2_route.py): the whole answer first (beam search has no partial text), then either a
        chat.completion or, with stream=true, the same text as one content chunk and the finish chunk."""
        plan = Mplug2Plan(model, raw, body, opts)          # checked before the video is fetched
        messages = await run_in_threadpool(videos.resolve, raw)
        info = await run_in_threadpool(run, lambda: plan.run(messages))
        if not body.get("stream"):
            return chat_response(cid, name, info)
        finish = FINISH.get(info["finish_reason"], "stop")
        chunks = [chat_chunk(cid, name, {"role": "assistant", "content": ""}),
                  chat_chunk(cid, name, {"content": info["text"]}), chat_chunk(cid, name, {}, finish)]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**chat_chunk(cid, name, {}), "choices": [], "usage": usage(info)})
        events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
        return StreamingResponse(iter(events), media_type="text/event-stream")

    async def streamed(start, make_chunk, body: dict, head: Optional[dict] = None) -> StreamingResponse:
        """Takes a slot (503 while the queue is full, before any byte is sent), starts the stream and waits for
        its first piece (so that a request the model refuses, e.g. a prompt longer than the context, is a 400, not
        a broken stream), and answers with its server-sent events."""
        await run_in_threadpool(slots.acquire)
        stream = None
        try:
            t = time.perf_counter()
            stream = await run_in_threadpool(start)
            piece = await run_in_threadpool(next, stream, None)
            started = (t, piece, time.perf_counter() - t)
        except BaseException:
            try:
                if stream is not None:
                    stream.close()
            finally:
                slots.release()
            raise
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            """The events, each made in a worker thread; however the response ends (done, error, or the client
            went away), the generation is stopped and the slot freed here, at once."""
            pieces = sse(stream, started, make_chunk, include_usage)
            try:
                if head is not None:
                    yield f"data: {json.dumps(head)}\n\n"
                while (event := await run_in_threadpool(next, pieces, None)) is not None:
                    yield event
            finally:  # no worker is inside `pieces` now: a cancelled run_in_threadpool waits for its thread
                try:
                    pieces.close()
                    stream.close()
                finally:
                    slots.release()

        return ClosingStreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        metrics.request("completions")
        if family == "mplug2":
            raise RequestError(f"{name} is an mPLUG-2 model: it has no text completions; send a video_url part to "
                               "/v1/chat/completions", code="unsupported_endpoint")
        body = await json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string", "prompt")
        opts = sampling_options(body, max_tokens_limit)
        rf = check_response_format(body)      # an extension here, as llama.cpp's server has it
        if rf is not None:
            opts["response_format"] = rf
        top = logprob_options(body, chat=False)
        if top is not None:
            opts["logprobs"] = top
        cid = completion_id("cmpl")
        if body.get("stream"):
            offset = 0

            def chunk(piece, finish, entries):
                nonlocal offset
                lp = text_logprobs(tokenizer, entries, offset)
                if lp is not None:
                    offset += sum(map(len, lp["tokens"]))
                return text_chunk(cid, name, piece or "", finish, lp)

            return await streamed(lambda: model.generate(prompt, stream=True, **opts), chunk, body)
        info = await run_in_threadpool(run, lambda: model.generate(prompt, return_info=True, **opts))
        return text_response(cid, name, info, text_logprobs(tokenizer, info.get("logprobs")))

    return app
