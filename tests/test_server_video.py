"""owl-server with video_url parts: tiny mPLUG-2 caption and VideoQA directories and a tiny mPLUG-Owl3 behind the
server, asked with the official openai client; each answer must equal the model's own on the same video file
(frames written with PyAV), streamed or not; bad videos, wrong media and unsupported options are OpenAI-shaped
400s naming the problem."""
from __future__ import annotations

import base64
import contextlib
import threading

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("gguf")
av = pytest.importorskip("av")

import owl_cpp  # noqa: E402
from owl_cpp.server import create_app  # noqa: E402
from owl_export import cli as export_cli  # noqa: E402
from owl_export.mplug2.fixtures import make_tiny_mplug2_checkpoint, make_tiny_mplug2_qa_checkpoint  # noqa: E402
from serving import serve_app  # noqa: E402


def write_video(path, seed: int, n: int = 9, h: int = 48, w: int = 64, fps: int = 2, top: int = 256):
    """An mp4 of n frames of noise below `top` with a moving bright square (frames differ, as in a video)."""
    g = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(n):
            frame = g.integers(0, top, (h, w, 3), dtype=np.uint8)
            frame[5:20, 3 * t:3 * t + 15] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def data_url(path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def video_message(url, text=None) -> list:
    parts = [{"type": "video_url", "video_url": {"url": url}}]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def serve(model, **kw):
    base, server = serve_app(create_app(model, **kw))
    return openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120), base, server


def export(ckpt, out):
    assert export_cli.main([str(ckpt), "-o", str(out), "--quant", "f32", "--vision-quant", "none", "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    (d / "allowed").mkdir()
    # the second one dark: the tiny Owl3's answers differ then (its answers to two noise videos do not)
    return [write_video(d / "allowed" / f"v{i}.mp4", seed=i, top=256 >> 2 * i) for i in range(2)]


@pytest.fixture(scope="module")
def caption_server(tmp_path_factory, videos):
    root = tmp_path_factory.mktemp("m2cap")
    model_dir = export(make_tiny_mplug2_checkpoint(root / "ckpt", seed=11, max_positions=40), root / "model")
    model = owl_cpp.load(model_dir, threads=2)
    # a pixel cap that lets the 64 x 48 videos through, not an 80 x 48 one
    client, base, server = serve(model, model_name="tiny-m2", local_image_dir=str(videos[0].parent),
                                 max_video_bytes=200_000, max_image_pixels=3500)
    yield model, client, base
    server.should_exit = True


@pytest.fixture(scope="module")
def qa_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2qa")
    model_dir = export(make_tiny_mplug2_qa_checkpoint(root / "ckpt", seed=21), root / "model")
    model = owl_cpp.load(model_dir, threads=2)
    client, base, server = serve(model, model_name="tiny-m2-qa")
    yield model, client, base
    server.should_exit = True


@contextlib.contextmanager
def web_server(payload: bytes):
    """A local http server answering every GET with `payload`; yields its base URL."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{web.server_address[1]}"
    finally:
        web.shutdown()


def ask(client, messages, **kw):
    return client.chat.completions.create(model="x", messages=messages, **kw)


def streamed(client, messages, **kw):
    chunks = list(client.chat.completions.create(model="x", messages=messages, stream=True, **kw))
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_caption_model_answers_with_the_caption(caption_server, videos):
    import httpx
    model, client, base = caption_server
    for v in videos:
        info = model.caption(str(v), return_info=True)
        r = ask(client, video_message(data_url(v)))
        assert r.choices[0].message.content == info["text"] and r.object == "chat.completion"
        assert r.usage.prompt_tokens == info["tokens"] and r.usage.completion_tokens == len(info["ids"])
        ended = info["ids"][-1] == model.tokenizer.eos_id
        assert r.choices[0].finish_reason == ("stop" if ended else "length")
        # the text beside the video is ignored; a local path under --allow-local-dir is read as a data: URL is
        assert ask(client, video_message(v.name, "Describe this video.")).choices[0].message.content == info["text"]
    assert model.caption(str(videos[0])) != model.caption(str(videos[1]))       # the test can tell them apart
    with web_server(videos[1].read_bytes()) as url:                              # http(s) URLs as for images
        assert ask(client, video_message(url + "/v.mp4")).choices[0].message.content == model.caption(str(videos[1]))
    assert [m.id for m in client.models.list().data] == ["tiny-m2"]
    assert httpx.get(base + "/health", timeout=10).json() == {"status": "ok"}


def test_caption_streams_as_one_chunk(caption_server, videos):
    model, client, _ = caption_server
    chunks, text = streamed(client, video_message(data_url(videos[0])), stream_options={"include_usage": True})
    assert text == model.caption(str(videos[0]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:2]] == [text]
    assert chunks[2].choices[0].finish_reason in ("stop", "length") and chunks[2].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0
    assert len(chunks) == 4 and len({c.id for c in chunks}) == 1


def test_max_tokens_shortens_the_caption(caption_server, videos):
    model, client, _ = caption_server
    r = ask(client, video_message(data_url(videos[0])), max_tokens=2)
    assert r.choices[0].message.content == model.caption(str(videos[0]), max_length=2, min_length=2)
    # min length 2 = max length 2: [SEP] cannot come, the answer stops at the limit
    assert r.usage.completion_tokens == 2 and r.choices[0].finish_reason == "length"


def test_qa_model_answers_the_question(qa_server, videos):
    model, client, _ = qa_server
    answers = set()
    for v in videos:
        for q in ("what is the man doing?", "who is singing a song"):
            want = model.answer(str(v), q)
            answers.add(want)
            assert ask(client, video_message(data_url(v), q)).choices[0].message.content == want
            assert streamed(client, video_message(data_url(v), q))[1] == want
    # a system message and earlier turns are ignored: the model answers one question about one video
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "hello"}] + video_message(data_url(videos[0]), "who is singing a song")
    assert ask(client, history).choices[0].message.content == model.answer(str(videos[0]), "who is singing a song")
    assert len(answers) > 1                                          # answers depend on video and question


def bad_request(client, messages, match, **kw):
    with pytest.raises(openai.BadRequestError, match=match) as e:
        ask(client, messages, **kw)
    assert e.value.body["type"] == "invalid_request_error"
    return e.value


def test_video_errors(caption_server, qa_server, videos, tmp_path):
    model, client, _ = caption_server
    _, qa, _ = qa_server
    bad_request(client, video_message("data:video/mp4;base64,abc"), "not valid base64")
    noise = base64.b64encode(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()).decode()
    e = bad_request(client, video_message("data:video/mp4;base64," + noise), r"messages\[0\]: video 0 \(video_url\) "
                    "could not be decoded")
    assert e.code == "invalid_video" and "owl-video-" not in str(e)       # no temporary path leaks
    big = data_url(videos[0]).ljust(300_000, "A")
    bad_request(client, video_message(big), "larger than the limit of 200000 bytes")
    bad_request(client, video_message("../v.mp4"), "outside the allowed directory")
    wide = write_video(tmp_path / "wide.mp4", seed=5, w=80)
    e = bad_request(client, video_message(data_url(wide)), r"frames of 80x48 = 3840 pixels, over this server's "
                    r"limit of 3500 \(--max-image-pixels\)")
    assert e.code == "video_too_large"
    png = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    bad_request(client, [{"role": "user", "content": png + video_message(data_url(videos[0]))[0]["content"]}],
                "takes a video .video_url., not images")
    bad_request(client, [{"role": "user", "content": "hello"}], "exactly one video_url part")
    two = video_message(data_url(videos[0]))[0]["content"] * 2
    bad_request(client, [{"role": "user", "content": two}], "takes at most 1 per request")
    bad_request(client, video_message(data_url(videos[0])), "temperature 0.7", temperature=0.7)
    bad_request(client, video_message(data_url(videos[0])), "stop", stop=["x"])
    bad_request(qa, video_message(data_url(videos[0])), "needs the question")
    bad_request(qa, video_message(data_url(videos[0]), "  "), "needs the question")
    with pytest.raises(openai.BadRequestError, match="no text completions"):
        client.completions.create(model="x", prompt="hi")
    # temperature 0 and a seed are fine: the answer is deterministic
    assert ask(client, video_message(data_url(videos[0])), temperature=0, seed=3).choices[0].message.content == \
        model.caption(str(videos[0]))


class Owl2Like:
    """An Owl2-family model as the server sees it (it only reads FAMILY and model_dir before the check)."""
    FAMILY = "mPLUG-Owl2 / mPLUG-Owl"
    model_dir = "tiny-owl2"


def test_a_video_to_a_model_without_videos_is_a_400(tiny_gguf, videos):
    for model in (owl_cpp.load(tiny_gguf("qwen2", "q8_0"), n_ctx=256, threads=1), Owl2Like()):
        client, _, server = serve(model)
        try:
            e = bad_request(client, video_message(data_url(videos[0]), "what happens?"), "takes no videos")
            assert e.code == "videos_not_supported"
        finally:
            server.should_exit = True


def test_owl3_takes_videos_as_frames(tiny_owl3_model, videos):
    from owl_cpp.cli import read_video
    _, model_dir = tiny_owl3_model("1b")
    model = owl_cpp.load(model_dir, n_ctx=2048, threads=2)
    client, _, server = serve(model, max_videos=2)
    try:
        frames = [read_video(str(v)) for v in videos]
        assert len(frames[0]) >= 2
        answers = {model.chat(prompt="What happens?", videos=[f], max_tokens=8) for f in frames}
        assert len(answers) == 2                           # the answer depends on the video: the test can fail
        for f, v in zip(frames, videos):
            # parts join with no separator (as image parts do): the video's marker right before the text ...
            want = model.chat(prompt="<|video|>What happens?", videos=[f], max_tokens=8)
            parts = [{"type": "video", "video": f}, {"type": "text", "text": "What happens?"}]
            assert want == model.chat(messages=[{"role": "user", "content": parts}], max_tokens=8)
            assert ask(client, video_message(data_url(v), "What happens?"), max_tokens=8).choices[0].message.content \
                == want
            # ... and a leading newline in the text gives owl-run's prompt (the marker, a newline, the question)
            assert ask(client, video_message(data_url(v), "\nWhat happens?"), max_tokens=8).choices[0].message.content \
                == model.chat(prompt="What happens?", videos=[f], max_tokens=8)
        both = [{"role": "user", "content": video_message(data_url(videos[0]))[0]["content"]
                 + video_message(data_url(videos[1]), "\nCompare them.")[0]["content"]}]
        want = model.chat(prompt="Compare them.", videos=frames, max_tokens=8)
        assert ask(client, both, max_tokens=8).choices[0].message.content == want
        assert streamed(client, both, max_tokens=8)[1] == want
        three = [{"role": "user", "content": both[0]["content"] * 2}]
        bad_request(client, three, "takes at most 2 per request")
    finally:
        server.should_exit = True


def test_owl_server_checks_its_video_arguments(capsys):
    from owl_cpp.server.cli import build_parser, main
    assert main(["--max-video-bytes", "0"]) == 2 and "--max-video-bytes" in capsys.readouterr().err
    assert main(["--max-videos", "-1"]) == 2
    args = build_parser().parse_args([])
    assert (args.max_video_bytes, args.max_videos) == (64 << 20, 4)
