"""owl-server's OpenAI API through the official `openai` client, against a server started here on loopback: the
answers are the model's own (same options, greedy), streamed or not, with images as data: URLs; errors come
in OpenAI's shape with the right status."""
import base64
import io
import threading
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

import owl_cpp  # noqa: E402
from owl_cpp.server import create_app  # noqa: E402
from serving import serve_app  # noqa: E402


def serve(model, **kw):
    """The app for `model` on a free loopback port; returns (base_url of the API, server)."""
    base, server = serve_app(create_app(model, **kw))
    return base + "/v1", server


@pytest.fixture(scope="module")
def text_server(tiny_gguf):
    model = owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=256, threads=1)
    url, server = serve(model, model_name="tiny-qwen2", api_key="sekret", parallel=2)
    yield model, openai.OpenAI(base_url=url, api_key="sekret", max_retries=0, timeout=60), url
    server.should_exit = True


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def test_chat_completion_is_the_models_answer(text_server):
    model, client, _ = text_server
    want = model.chat(messages=MESSAGES, max_tokens=12, return_info=True)
    r = client.chat.completions.create(model="anything", messages=MESSAGES, max_tokens=12)
    assert r.choices[0].message.content == want["text"]
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == want["prompt_tokens"] and r.usage.completion_tokens == want["completion_tokens"]
    assert r.model == "tiny-qwen2"
    assert [m.id for m in client.models.list().data] == ["tiny-qwen2"]


def test_streaming_gives_the_same_text(text_server):
    model, client, _ = text_server
    want = model.chat(messages=MESSAGES, max_tokens=12)
    chunks = list(client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0


def test_completions_for_text_models(text_server):
    model, client, _ = text_server
    want = model.generate("The sky is", max_tokens=8)
    assert client.completions.create(model="x", prompt="The sky is", max_tokens=8).choices[0].text == want
    chunks = list(client.completions.create(model="x", prompt="The sky is", max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want


def test_errors_have_the_openai_shape(text_server):
    _, client, url = text_server
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="allow-local-dir"):  # no local files unless allowed
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()


def test_concurrent_clients_get_their_own_answers(text_server):
    model, client, _ = text_server
    prompts = [f"Question number {i}" for i in range(6)]
    want = [model.chat(prompt=p, max_tokens=10) for p in prompts]
    got = [None] * len(prompts)

    def ask(i):
        got[i] = client.chat.completions.create(model="x", messages=[{"role": "user", "content": prompts[i]}],
                                                max_tokens=10).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want


def metric(url, name):
    import re

    return int(re.search(rf"^{name} (\d+)$", httpx_get(url.replace("/v1", "/metrics")), re.M).group(1))


def test_clients_taking_turns_keep_their_conversations_cached(tiny_gguf):
    """Two clients alternate turns (each resending its whole conversation) on a server with two slots: each
    follow-up turn finds its own earlier turns in a context's cache, and the answers are the model's own."""
    path = tiny_gguf("qwen2", "q8_0")
    model = owl_cpp.load(path, n_ctx=256, threads=1)
    alone = owl_cpp.load(path, n_ctx=256, threads=1, max_spare_contexts=0)      # each conversation by itself
    url, server = serve(model, parallel=2)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        convs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Tell me about {x}"}]
                 for x in ("cats", "the sea")]
        prev = [0, 0]                                                   # prompt tokens of each one's last turn
        for turn in range(3):
            for c, conv in enumerate(convs):
                cached = metric(url, "owl_prompt_tokens_cached_total")
                r = client.chat.completions.create(model="x", messages=conv, max_tokens=6)
                assert r.choices[0].message.content == alone.chat(messages=conv, max_tokens=6)
                # the previous turn's prompt, all of it, came from the cache (the system prompt alone is 5 tokens)
                assert metric(url, "owl_prompt_tokens_cached_total") - cached >= prev[c]
                prev[c] = r.usage.prompt_tokens
                conv += [{"role": "assistant", "content": r.choices[0].message.content},
                         {"role": "user", "content": f"And then {turn}?"}]
        assert metric(url, "owl_prompt_tokens_evaluated_total") > 0
    finally:
        server.should_exit = True


def png_bytes(seed=0):
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_message(url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What is this?"}]}]


def test_owl3_images_by_data_url_http_url_and_allowed_path(tiny_owl3_model, tmp_path):
    import http.server

    _, model_dir = tiny_owl3_model("1b")
    model = owl_cpp.load(model_dir, n_ctx=1024, threads=1)
    png = png_bytes()
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "a.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(png)
    (tmp_path / "allowed" / "big.png").write_bytes(png + bytes(60_000))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url, server = serve(model, local_image_dir=str(tmp_path / "allowed"), max_image_bytes=50_000)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)

        def ask(image_url):
            return client.chat.completions.create(model="x", messages=image_message(image_url),
                                                  max_tokens=8).choices[0].message.content

        want = model.chat(messages=image_message("data:image/png;base64," + base64.b64encode(png).decode()),
                          max_tokens=8)
        assert ask("data:image/png;base64," + base64.b64encode(png).decode()) == want
        assert ask(f"http://127.0.0.1:{web.server_address[1]}/a.png") == want
        assert ask("a.png") == want
        with pytest.raises(openai.BadRequestError, match="outside the allowed directory"):
            ask("../secret.png")
        with pytest.raises(openai.BadRequestError, match="larger than the limit"):
            ask("big.png")
        metrics = httpx_get(url.replace("/v1", "/metrics"))
        assert 'owl_requests_total{endpoint="chat"} 5' in metrics and 'owl_errors_total{status="400"} 2' in metrics
        assert "owl_tokens_total{kind=\"completion\"}" in metrics and "owl_slots_busy 0" in metrics
        assert metric(url, "owl_image_cache_hits_total") >= 3 and metric(url, "owl_image_cache_misses_total") >= 1
    finally:
        server.should_exit = True
        web.shutdown()


def httpx_get(url):
    import httpx

    return httpx.get(url, timeout=10).text


class BlockingModel:
    """Answers once `go` is set: holds the server's only slot for as long as a test needs."""
    path = "blocking.gguf"

    def __init__(self):
        self.go, self.entered = threading.Event(), threading.Event()

    def chat(self, messages, return_info=False, **opts):
        self.entered.set()
        self.go.wait(30)
        return {"text": "done", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}


def test_a_full_queue_answers_503_and_the_slot_comes_back():
    model = BlockingModel()
    url, server = serve(model, parallel=1, queue=0)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        first = []
        t = threading.Thread(target=lambda: first.append(
            client.chat.completions.create(model="x", messages=MESSAGES).choices[0].message.content))
        t.start()
        assert model.entered.wait(20)
        with pytest.raises(openai.InternalServerError) as e:  # the only slot is busy and no one may wait
            client.chat.completions.create(model="x", messages=MESSAGES)
        assert e.value.status_code == 503 and "busy" in str(e.value)
        model.go.set()
        t.join(30)
        assert first == ["done"]
        assert client.chat.completions.create(model="x", messages=MESSAGES).choices[0].message.content == "done"
    finally:
        server.should_exit = True


def test_owl_server_cli_checks_its_arguments(capsys, monkeypatch, tmp_path):
    from owl_cpp.server.cli import main

    assert main(["--model", "x", "--parallel", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["--port", "x"])
    monkeypatch.delenv("OWL_MODEL", raising=False)
    monkeypatch.setenv("OWL_DEMO_DIR", str(tmp_path / "no-demo"))     # no model, and no demo model to fall back on
    assert main([]) == 2
    assert "OWL_MODEL" in capsys.readouterr().err


class EndlessModel:
    """Streams a word every 10 ms up to max_tokens; `closed` is set when its generation is stopped or ends."""
    path = "endless.gguf"

    def __init__(self):
        self.closed = threading.Event()

    def chat(self, messages, stream=False, return_info=False, max_tokens=512, **opts):
        from owl_cpp.streaming import TextStream

        def run():
            try:
                for i in range(max_tokens):
                    time.sleep(0.01)
                    yield f"w{i} ", None
                yield "", {"finish_reason": "length", "prompt_tokens": 1, "completion_tokens": max_tokens}
            finally:
                self.closed.set()
        return TextStream(run())


def test_a_client_that_goes_away_mid_stream_frees_its_slot_at_once():
    import httpx

    model = EndlessModel()
    url, server = serve(model, parallel=1, queue=0)
    try:
        body = {"messages": MESSAGES, "stream": True, "max_tokens": 4000}
        with httpx.Client(timeout=10) as http:
            with http.stream("POST", url + "/chat/completions", json=body) as r:
                events = 0
                for line in r.iter_lines():
                    events += line.startswith("data:")
                    if events == 4:
                        break
        # Nothing else reaches the server meanwhile: the generation must stop on the disconnect itself, not when
        # a garbage collection happens to find the abandoned stream.
        assert model.closed.wait(5), "the generation went on after the client left"
        model.closed.clear()
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=30)
        chunks = list(client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=3, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2 "
        assert "owl_slots_busy 0" in httpx_get(url.replace("/v1", "/metrics"))
    finally:
        server.should_exit = True


def log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - (z.max() + np.log(np.exp(z - z.max()).sum()))


def test_chat_logprobs_have_the_openai_shape_and_the_models_values(text_server):
    model, client, _ = text_server
    want = model.chat(messages=MESSAGES, max_tokens=6, return_info=True, ignore_eos=True)
    r = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    ids = model._chat_ids(MESSAGES)
    rows = model.logits(ids + want["tokens"])[len(ids) - 1:]
    for c, tok, z in zip(content, want["tokens"], rows):
        lp = log_softmax(z)
        assert c.logprob == pytest.approx(lp[tok], abs=1e-4)
        assert bytes(c.bytes) == model.tokenizer.token_to_bytes(tok, False)
        assert len(c.top_logprobs) == 3 and c.top_logprobs[0].logprob == pytest.approx(lp.max(), abs=1e-4)
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob >= c.top_logprobs[2].logprob
    assert "".join(bytes(c.bytes).decode("utf-8", "replace") for c in content) == r.choices[0].message.content
    # streamed: the same entries, spread over the chunks
    chunks = list(client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=6, logprobs=True,
                                                 top_logprobs=2, stream=True))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content[:len(streamed)]]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content[:len(streamed)]], abs=1e-5)
    assert len(streamed) == len(model.chat(messages=MESSAGES, max_tokens=6, return_info=True)["tokens"])
    # none unless asked
    assert client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=2).choices[0].logprobs is None


def test_logprob_bounds(text_server):
    _, client, _ = text_server
    for bad in (21, -1):
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=2, logprobs=True,
                                           top_logprobs=bad)
    with pytest.raises(openai.BadRequestError, match="needs logprobs"):
        client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=2, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="x", prompt="Hi", max_tokens=2, logprobs=21)
    r = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=2, logprobs=True, top_logprobs=20)
    assert all(len(c.top_logprobs) == 20 for c in r.choices[0].logprobs.content)


def test_completion_logprobs_have_the_legacy_shape(text_server):
    model, client, _ = text_server
    want = model.generate("The sky is", max_tokens=5, ignore_eos=True, return_info=True, logprobs=2)
    r = client.completions.create(model="x", prompt="The sky is", max_tokens=5, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([e["logprob"] for e in want["logprobs"]], abs=1e-5)
    assert len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(len(t) <= 2 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    assert lp.text_offset == list(np.cumsum([0] + [len(t) for t in lp.tokens[:-1]]))
    chunks = list(client.completions.create(model="x", prompt="The sky is", max_tokens=5, logprobs=2, stream=True,
                                            extra_body={"ignore_eos": True}))
    streamed = [v for c in chunks if c.choices and c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-5)


def test_response_format(text_server):
    model, client, _ = text_server
    r = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=4, response_format={"type": "text"})
    assert r.choices[0].message.content == model.chat(messages=MESSAGES, max_tokens=4)
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^x"}}}}}
    with pytest.raises(openai.BadRequestError, match="unsupported keyword.*pattern") as e:
        client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=4, response_format=rf)
    assert e.value.body["param"] == "response_format" and e.value.body["code"] == "unsupported_response_format"
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=4,
                                       response_format={"type": "json_schema"})
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=4, response_format={"type": "xml"})


def test_json_answers_are_json_streamed_or_not(text_server):
    """response_format json_object: the answer json.loads to a dict (finish "stop"), or is a valid prefix of one
    cut by max_tokens (finish "length"); streamed, the same answer in pieces; the model's own JSON-mode answer.
    json_schema: whole answers have the schema's properties and types."""
    import json
    model, client, _ = text_server
    complete = 0
    for seed in range(6):
        kw = dict(model="x", messages=MESSAGES, max_tokens=120, temperature=1.5, seed=seed,
                  response_format={"type": "json_object"})
        r = client.chat.completions.create(**kw)
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert text == model.chat(messages=MESSAGES, max_tokens=120, temperature=1.5, seed=seed,
                                  response_format="json")
        if finish == "stop":
            assert isinstance(json.loads(text), dict)
            complete += 1
        else:
            assert finish == "length" and owl_cpp._core.JsonMachine(True).feed(text.encode()) == len(text.encode())
        chunks = list(client.chat.completions.create(stream=True, **kw))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert complete >= 1
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["age", "ok"]}
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema, "strict": True}}
    n_whole = 0
    for seed in range(3):
        r = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=150, temperature=1.5, seed=seed,
                                           response_format=rf)
        text = r.choices[0].message.content
        assert text == model.chat(messages=MESSAGES, max_tokens=150, temperature=1.5, seed=seed, response_format=rf)
        if r.choices[0].finish_reason == "stop":
            value = json.loads(text)
            assert set(value) == {"age", "ok"} and isinstance(value["age"], int) and isinstance(value["ok"], bool)
            n_whole += 1
    assert n_whole >= 1
    r = client.completions.create(model="x", prompt="{", max_tokens=60, temperature=1.5, seed=0,
                                  extra_body={"response_format": {"type": "json_object"}})
    assert r.choices[0].text == model.generate("{", max_tokens=60, temperature=1.5, seed=0, response_format="json")


def test_a_prompt_longer_than_the_context_is_a_400_streamed_or_not(text_server):
    _, client, _ = text_server
    long = [{"role": "user", "content": "word " * 400}]                 # n_ctx is 256
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="exceeds the context"):
            r = client.chat.completions.create(model="x", messages=long, max_tokens=4, stream=stream)
            list(r) if stream else None
    assert "owl_slots_busy 0" in httpx_get(client.base_url.__str__().replace("/v1/", "/metrics"))


def test_image_limits_per_request():
    model = BlockingModel()
    model.go.set()
    url, server = serve(model, max_images=2, max_image_pixels=40 * 60 - 1)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=30)
        png = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()       # 60 x 40
        three = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}] * 3}]
        with pytest.raises(openai.BadRequestError, match="at most 2 per request") as e:
            client.chat.completions.create(model="x", messages=three)
        assert "--max-images" in str(e.value)
        with pytest.raises(openai.BadRequestError, match="over this server's limit of 2399"):
            client.chat.completions.create(model="x", messages=image_message(png))
    finally:
        server.should_exit = True
    url, server = serve(model, max_images=2, max_image_bytes=100)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=30)
        with pytest.raises(openai.BadRequestError, match="larger than the limit of 100 bytes"):
            client.chat.completions.create(model="x", messages=image_message(png))
    finally:
        server.should_exit = True
