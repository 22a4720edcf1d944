"""owl-server's chat page at /: served by the app from package files (nothing from another host), public while
the API behind it wants the key; and, in a real headless Chromium when one is installed, a conversation on a
tiny random Owl3 model: images added and removed, an answer streamed with its timings, a long answer stopped
(which frees the server's only slot), a follow-up turn, and a screenshot; and a video picked on the page.

The browser test needs Debian's `chromium` and `chromium-driver` and the `selenium` package (no browser is
downloaded); it skips, saying which is missing, without them. It saves web-page.png in its tmp dir, and in
$OWL_SCREENSHOT_DIR when that is set."""
from __future__ import annotations

import base64
import html.parser
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from owl_cpp.server import create_app  # noqa: E402
from owl_cpp.server.app import STATIC_DIR  # noqa: E402
from serving import serve_app  # noqa: E402


class NoModel:
    """The page's routes never touch the model."""
    path = "none.gguf"


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(NoModel(), model_name="m", api_key="sekret"))


class Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data") and v]


def test_the_page_is_public_and_the_api_behind_it_wants_the_key(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="/static/chat.js"' in r.text and 'id="prompt"' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer sekret"}).json()["data"][0]["id"] == "m"
    assert client.get("/health").json() == {"status": "ok"}


def test_the_page_loads_nothing_from_another_host(client):
    page = Refs()
    page.feed(client.get("/").text)
    assert page.refs and all(ref.startswith("/static/") or ref == "data:," for ref in page.refs), page.refs
    for ref in page.refs:
        if ref.startswith("/static/"):
            r = client.get(ref)
            assert r.status_code == 200, ref
    assert client.get("/static/chat.js").headers["content-type"].split(";")[0] in ("text/javascript",
                                                                                  "application/javascript")
    assert client.get("/static/chat.css").headers["content-type"].startswith("text/css")
    files = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"index.html", "chat.js", "chat.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?i)\b(?:https?|wss?|ftp):", text), f"{path.name} names another host"
        assert not re.search(r"""(?i)(?:src|href)\s*=\s*["']?//|url\(\s*["']?//|@import""", text), path.name
    js = (STATIC_DIR / "chat.js").read_text(encoding="utf-8")
    assert set(re.findall(r"""fetch\(\s*(["'`])(.)""", js)) == {('"', "/")}  # every call goes to this server


def test_model_text_is_never_read_as_html():
    js = (STATIC_DIR / "chat.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink


def test_static_files_stay_inside_their_directory(client):
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/nothing.js"):
        r = client.get(path)
        assert r.status_code == 404 and "Slots" not in r.text, path


def test_the_page_can_be_turned_off():
    plain = TestClient(create_app(NoModel(), model_name="m", web_page=False))
    assert plain.get("/").status_code == 404 and plain.get("/static/chat.js").status_code == 404
    assert plain.get("/v1/models").status_code == 200


# ---- the page in a real browser ----

def browser_paths():
    """(chromium, chromedriver, selenium webdriver module), or pytest.skip saying what is missing."""
    missing = []
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        missing.append("the selenium package (pip install selenium)")
    chromium = os.environ.get("OWL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("OWL_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium:
        missing.append("chromium (apt-get install chromium)")
    if not driver:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        pytest.skip("the browser test needs " + ", ".join(missing))
    return chromium, driver, webdriver


class PacedStream:
    """The real stream, one piece every `delay` seconds, so that a test can stop it mid-answer."""

    def __init__(self, inner, delay, closed: threading.Event):
        self.inner, self.delay, self.closed = inner, delay, closed

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.delay)
        return next(self.inner)

    @property
    def info(self):
        return self.inner.info

    def close(self):
        self.inner.close()
        self.closed.set()


class PacedModel:
    """A loaded model whose streamed answers come at a walking pace and run to max_tokens (ignore_eos), and
    which keeps the messages of each request."""

    def __init__(self, model, delay=0.04):
        self.model, self.delay, self.path = model, delay, model.path
        self.FAMILY = getattr(model, "FAMILY", "")              # which media the server lets through
        self.requests, self.closed = [], threading.Event()

    def chat(self, messages, stream=False, **opts):
        self.requests.append(messages)
        if not stream:
            return self.model.chat(messages=messages, **opts)
        self.closed.clear()
        return PacedStream(self.model.chat(messages=messages, stream=True, ignore_eos=True, **opts), self.delay,
                           self.closed)


def write_png(path: Path, seed: int) -> str:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return str(path)


# What a drop or a paste of a file does: the event as the browser sends it, with a PNG (base64) as its file.
DISPATCH_FILE = """
const [kind, name, b64] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const files = new DataTransfer();
files.items.add(new File([bytes], name, {type: "image/png"}));
const target = kind === "drop" ? document.getElementById("log") : document.getElementById("prompt");
if (kind === "drop") {
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, {dataTransfer: files, bubbles: true, cancelable: true}));
  }
} else {
  target.dispatchEvent(new ClipboardEvent("paste", {clipboardData: files, bubbles: true, cancelable: true}));
}
"""


def test_a_conversation_in_headless_chromium(request, tmp_path):
    chromium, chromedriver, webdriver = browser_paths()
    pytest.importorskip("uvicorn")
    tiny_owl3_model = request.getfixturevalue("tiny_owl3_model")  # built only when there is a browser to use
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    import owl_cpp

    _, model_dir = tiny_owl3_model("1b")
    model = PacedModel(owl_cpp.load(model_dir, n_ctx=2048, threads=1))
    base, server = serve_app(create_app(model, model_name="tiny-owl3", api_key="sekret", parallel=1, queue=0))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        wait = WebDriverWait(driver, 30, poll_frequency=0.05)
        find = driver.find_element
        driver.get(base + "/")
        wait.until(lambda d: find(By.ID, "health").get_attribute("data-state") == "ok")
        wait.until(lambda d: "API key" in find(By.ID, "model-name").text)  # the API wants the key
        find(By.CSS_SELECTOR, "#settings summary").click()

        def setting(element_id, value):
            field = find(By.ID, element_id)
            field.clear()
            field.send_keys(value, Keys.TAB)  # leaving the field fires `change`: the page keeps the value

        setting("api-key", "sekret")
        wait.until(lambda d: find(By.ID, "model-name").text == "tiny-owl3")
        driver.refresh()  # the key is kept in the browser
        wait.until(lambda d: find(By.ID, "model-name").text == "tiny-owl3")
        find(By.CSS_SELECTOR, "#settings summary").click()
        assert find(By.ID, "api-key").get_attribute("value") == "sekret"
        setting("max-tokens", "10")

        # Images by the file picker, dropped on the page and pasted; one removed again: two go with the question.
        find(By.ID, "file-input").send_keys(write_png(tmp_path / "picked.png", 0))

        def thumbs(d):
            return [img.get_attribute("alt") for img in d.find_elements(By.CSS_SELECTOR, "#thumbs img")]

        wait.until(lambda d: thumbs(d) == ["picked.png"])
        for event, name, seed in (("drop", "dropped.png", 1), ("paste", "pasted.png", 2)):
            driver.execute_script(DISPATCH_FILE, event, name, base64.b64encode(Path(write_png(
                tmp_path / name, seed)).read_bytes()).decode())
            wait.until(lambda d: thumbs(d)[-1:] == [name])
        find(By.CSS_SELECTOR, "#thumbs .thumb:nth-child(2) button").click()
        assert thumbs(driver) == ["picked.png", "pasted.png"]
        find(By.ID, "prompt").send_keys("What is in these pictures?")
        find(By.ID, "send").click()

        def answer(i, state):
            box = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[i]
            wait.until(lambda d: box.get_attribute("data-state") == state)
            return box

        first = answer(0, "done")
        assert first.find_element(By.CSS_SELECTOR, ".text").text.strip(), "no text streamed in"
        timing = first.find_element(By.CSS_SELECTOR, ".timing").text
        assert re.search(r"first token \d+\.\d\d s · \d+\.\d tokens/s · 10 tokens · prompt \d+ tokens · token limit",
                         timing), timing
        assert len(driver.find_elements(By.CSS_SELECTOR, ".msg.user img")) == 2
        assert not driver.find_elements(By.CSS_SELECTOR, "#thumbs .thumb")

        # A long answer, stopped once it is under way: the server stops generating and frees its only slot.
        setting("max-tokens", "1500")
        find(By.ID, "prompt").send_keys("Tell me more.", Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2)
        second = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[1]
        wait.until(lambda d: len(second.find_element(By.CSS_SELECTOR, ".text").text) >= 3)
        assert find(By.ID, "send").get_attribute("disabled") is not None
        find(By.ID, "stop").click()
        answer(1, "stopped")
        assert model.closed.wait(5), "the server went on generating after the page stopped"
        assert "stopped" in second.find_element(By.CSS_SELECTOR, ".timing").text
        said = second.find_element(By.CSS_SELECTOR, ".text").text

        # The conversation goes on (the slot is free again: with parallel=1 and queue=0 it would be a 503).
        setting("max-tokens", "4")
        find(By.ID, "prompt").send_keys("Thanks! <b>bold</b>", Keys.ENTER)
        answer(2, "done")
        last = driver.find_elements(By.CSS_SELECTOR, ".msg.user")[-1]
        assert last.text == "Thanks! <b>bold</b>" and not last.find_elements(By.TAG_NAME, "b")  # text, not HTML
        assert second.find_element(By.CSS_SELECTOR, ".text").text == said
        sent = model.requests[-1]
        assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
        assert [p["type"] for p in sent[0]["content"]] == ["image_url", "image_url", "text"]
        assert " ".join(sent[3]["content"].split()) == " ".join(said.split())  # the stopped answer, as far as it got
        assert sent[4]["content"] == "Thanks! <b>bold</b>"

        find(By.CSS_SELECTOR, "#settings summary").click()  # settings closed: the conversation fills the page
        driver.execute_script("document.getElementById('log').scrollTop = 0")
        shot = tmp_path / "web-page.png"
        assert driver.save_screenshot(str(shot))
        if os.environ.get("OWL_SCREENSHOT_DIR"):
            os.makedirs(os.environ["OWL_SCREENSHOT_DIR"], exist_ok=True)
            shutil.copy(shot, Path(os.environ["OWL_SCREENSHOT_DIR"]) / "web-page.png")
        problems = [e["message"] for e in driver.get_log("browser")
                    if e["level"] == "SEVERE" and "/v1/models - Failed to load resource" not in e["message"]]
        assert not problems, problems  # no script error, nothing refused by the page's content policy
        # (the one expected failure: /v1/models answered 401 before the key was set)
    finally:
        driver.quit()
        server.should_exit = True


def test_a_video_by_the_file_picker_in_headless_chromium(request, tmp_path):
    """A video picked on the page goes to the server as a video_url part: the model gets the frames owl-run
    would read from the same file; the page shows the video by its name (its CSP loads no media)."""
    chromium, chromedriver, webdriver = browser_paths()
    pytest.importorskip("uvicorn")
    pytest.importorskip("av")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_server_video import write_video

    import owl_cpp
    from owl_cpp.cli import read_video

    _, model_dir = request.getfixturevalue("tiny_owl3_model")("1b")
    model = PacedModel(owl_cpp.load(model_dir, n_ctx=2048, threads=1), delay=0)
    base, server = serve_app(create_app(model, model_name="tiny-owl3"))
    video = write_video(tmp_path / "clip.mp4", seed=4)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        wait = WebDriverWait(driver, 30, poll_frequency=0.05)
        find = driver.find_element
        driver.get(base + "/")
        wait.until(lambda d: find(By.ID, "model-name").text == "tiny-owl3")
        find(By.CSS_SELECTOR, "#settings summary").click()
        field = find(By.ID, "max-tokens")
        field.clear()
        field.send_keys("4")
        find(By.ID, "file-input").send_keys(str(video))
        wait.until(lambda d: [c.text for c in d.find_elements(By.CSS_SELECTOR, "#thumbs .video-chip")] == ["▶ clip.mp4"])
        find(By.ID, "prompt").send_keys("What happens?")
        find(By.ID, "send").click()
        box = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant"))[0]
        wait.until(lambda d: box.get_attribute("data-state") not in (None, "", "streaming", "waiting"))
        assert box.get_attribute("data-state") == "done", (box.get_attribute("data-state"), box.text)
        assert driver.find_elements(By.CSS_SELECTOR, ".msg.user .video-chip")
        parts = model.requests[-1][0]["content"]
        assert [p["type"] for p in parts] == ["video", "text"]
        want = read_video(str(video))
        assert len(parts[0]["video"]) == len(want) and all(np.array_equal(a, b) for a, b in zip(parts[0]["video"], want))
        problems = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not problems, problems
    finally:
        driver.quit()
        server.should_exit = True
