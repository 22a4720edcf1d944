// owl_cpp chat page: streams answers from POST /v1/chat/completions (stream: true, server-sent events) with
// fetch + ReadableStream. Plain JS, no build step, nothing loaded from elsewhere. Model text is only ever set
// as text (textContent / text nodes), never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    log: $("log"), empty: $("empty"), form: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    files: $("file-input"), thumbs: $("thumbs"), notice: $("notice"), model: $("model-name"), health: $("health"),
    newChat: $("new-chat"), settings: $("settings"), apiKey: $("api-key"), system: $("system-prompt"),
    maxTokens: $("max-tokens"), temperature: $("temperature"),
  };
  const STORE = "owl_cpp.chat.";              // localStorage keys: STORE + "apiKey", "system", ...
  const MAX_IMAGE_BYTES = 20 * 1024 * 1024;  // the server's default limits
  const MAX_VIDEO_BYTES = 64 * 1024 * 1024;

  let history = [];     // the conversation as OpenAI messages (the system prompt is added when sending)
  let pending = [];     // images for the next message: {name, url} with url a data: URI
  let reading = 0;      // images still being read from disk
  let controller = null; // the AbortController of the answer being streamed
  let modelId = null;
  let conversation = 0;  // bumped by New chat: an answer still arriving then stays out of the new one

  // ---- settings, kept in this browser ----
  const saved = [["apiKey", ui.apiKey], ["system", ui.system], ["maxTokens", ui.maxTokens],
                 ["temperature", ui.temperature]];
  for (const [key, el] of saved) {
    const v = localStorage.getItem(STORE + key);
    if (v !== null) el.value = v;
    el.addEventListener("change", () => {
      if (el.value === "") localStorage.removeItem(STORE + key); else localStorage.setItem(STORE + key, el.value);
      if (el === ui.apiKey) loadInfo();
    });
  }

  function authHeaders(extra) {
    const h = Object.assign({}, extra);
    const key = ui.apiKey.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  // ---- model info: GET /health (public) and GET /v1/models (needs the key when the server has one) ----
  async function loadInfo() {
    try {
      const r = await fetch("/health", {cache: "no-store"});
      const j = await r.json();
      const ok = r.ok && j.status === "ok";
      setHealth(ok ? "ok" : "down", ok ? "server ok" : "server: " + (j.status || r.status));
    } catch (e) {
      setHealth("down", "server unreachable");
    }
    try {
      const r = await fetch("/v1/models", {headers: authHeaders(), cache: "no-store"});
      if (r.status === 401) {
        modelId = null;
        ui.model.textContent = "(set the API key under Settings)";
        return;
      }
      const j = await r.json();
      const ids = (j.data || []).map((m) => m.id);
      modelId = ids[0] || null;
      ui.model.textContent = ids.length ? ids.join(", ") : "(none)";
      if (modelId) document.title = modelId + " · owl_cpp chat";
    } catch (e) {
      ui.model.textContent = "(unknown)";
    }
  }

  function setHealth(state, text) {
    ui.health.dataset.state = state;
    ui.health.textContent = text;
  }

  // ---- images: file picker, drag and drop, paste ----
  function notice(text) {
    ui.notice.textContent = text || "";
  }

  function addFiles(files) {
    notice("");
    for (const file of files) {
      const video = !!file && file.type.startsWith("video/");
      if (!file || !(video || file.type.startsWith("image/"))) {
        notice((file && file.name ? file.name : "That") + " is not an image or a video.");
        continue;
      }
      if (file.size > (video ? MAX_VIDEO_BYTES : MAX_IMAGE_BYTES)) {
        notice(file.name + " is larger than " + (video ? "64" : "20") + " MB.");
        continue;
      }
      const reader = new FileReader();
      reading++;
      updateButtons();
      reader.onload = () => pending.push({name: file.name || "pasted image", url: reader.result, video: video});
      reader.onerror = () => notice("Could not read " + (file.name || "the image") + ".");
      reader.onloadend = () => {
        reading--;
        renderThumbs();
        updateButtons();
      };
      reader.readAsDataURL(file);
    }
  }

  function preview(item) {
    if (item.video) {  // no player: the page's CSP allows no media; the name stands for the video
      const chip = document.createElement("span");
      chip.className = "video-chip";
      chip.textContent = "\u25b6 " + item.name;
      chip.title = item.name;
      return chip;
    }
    const pic = document.createElement("img");
    pic.src = item.url;
    pic.alt = item.name;
    return pic;
  }

  function renderThumbs() {
    ui.thumbs.replaceChildren(...pending.map((img, i) => {
      const li = document.createElement("li");
      li.className = "thumb";
      const pic = preview(img);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = "Remove " + img.name;
      remove.setAttribute("aria-label", "Remove " + (img.video ? "video " : "image ") + img.name);
      remove.addEventListener("click", () => {
        pending.splice(i, 1);
        renderThumbs();
        ui.prompt.focus();
      });
      li.append(pic, remove);
      return li;
    }));
  }

  ui.files.addEventListener("change", () => {
    addFiles(Array.from(ui.files.files));
    ui.files.value = "";  // picking the same file again still adds it
  });

  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  let dragDepth = 0;
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", (e) => {
    if (!hasFiles(e)) return;
    if (--dragDepth <= 0) {
      dragDepth = 0;
      document.body.classList.remove("dragging");
    }
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    document.body.classList.remove("dragging");
    addFiles(Array.from(e.dataTransfer.files));
  });
  document.addEventListener("paste", (e) => {
    const items = Array.from((e.clipboardData && e.clipboardData.items) || []);
    const images = items.filter((it) => it.kind === "file" && it.type.startsWith("image/")).map((it) => it.getAsFile());
    if (images.length) {  // pasted text goes where it was pasted, as usual
      e.preventDefault();
      addFiles(images);
    }
  });

  // ---- the conversation ----
  function addMessage(role, text, images) {
    ui.empty.hidden = true;
    const box = document.createElement("article");
    box.className = "msg " + role;
    box.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
    if (images && images.length) {
      const strip = document.createElement("div");
      strip.className = "images";
      for (const img of images) {
        strip.append(preview(img));
      }
      box.append(strip);
    }
    const body = document.createElement("p");
    body.className = "text";
    body.textContent = text;
    box.append(body);
    const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
    ui.log.append(box);
    if (nearBottom || role === "user") box.scrollIntoView({block: "end"});
    return box;
  }

  function footnote(box, className, text) {
    const p = document.createElement("p");
    p.className = className;
    p.textContent = text;
    box.append(p);
    return p;
  }

  function updateButtons() {
    const busy = controller !== null;
    document.body.dataset.busy = String(busy);
    ui.send.disabled = busy || reading > 0;
    ui.stop.disabled = !busy;
  }

  // Server-sent events from a fetch body: yields each `data:` payload parsed as JSON, until [DONE].
  async function* serverEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (!data) continue;
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function errorMessage(r) {
    let text = "";
    try {
      text = await r.text();
      const j = JSON.parse(text);
      if (j && j.error && j.error.message) text = j.error.message;
    } catch (e) { /* not JSON: keep the text */ }
    if (r.status === 401) {
      ui.settings.open = true;
      return "The server wants an API key: set it under Settings. (" + text + ")";
    }
    return "Error " + r.status + ": " + (text || r.statusText);
  }

  function options() {
    const opts = {};
    const n = parseInt(ui.maxTokens.value, 10);
    if (n > 0) opts.max_tokens = n;
    const t = parseFloat(ui.temperature.value);
    if (!Number.isNaN(t)) opts.temperature = t;
    return opts;
  }

  const FINISHED = {stop: "done", length: "token limit reached"};

  const TIMING_HELP = "first token: from sending to the first text, as seen by this page. tokens/s: the tokens " +
    "after the first, over the time after the first. Counts come from the server's usage; ≈ marks a count made " +
    "here (a stopped answer gets no usage).";

  function timingText(t) {
    const parts = [];
    if (t.first !== null) parts.push("first token " + ((t.first - t.start) / 1000).toFixed(2) + " s");
    const tokens = t.usage ? t.usage.completion_tokens : t.pieces;
    const approx = t.usage ? "" : "≈";
    // Decode speed: the tokens after the first, over the time after the first arrived.
    if (t.first !== null && tokens > 1 && t.end > t.first) {
      parts.push(approx + ((tokens - 1) / ((t.end - t.first) / 1000)).toFixed(1) + " tokens/s");
    }
    parts.push(approx + tokens + (tokens === 1 ? " token" : " tokens"));
    if (t.usage) parts.push("prompt " + t.usage.prompt_tokens + " tokens");
    parts.push(t.stopped ? "stopped" : (FINISHED[t.finish] || t.finish || "ended"));
    return parts.join(" · ");
  }

  async function send() {
    if (controller !== null || reading > 0) return;
    const text = ui.prompt.value.trim();
    if (!text && !pending.length) return;
    const images = pending;
    const content = images.map((img) => (img.video ? {type: "video_url", video_url: {url: img.url}}
      : {type: "image_url", image_url: {url: img.url}}));
    if (text) content.push({type: "text", text: text});
    const turn = {role: "user", content: images.length ? content : text};
    pending = [];
    renderThumbs();
    ui.prompt.value = "";
    notice("");

    const userBox = addMessage("user", text, images);
    const mine = conversation;
    history.push(turn);
    const box = addMessage("assistant", "");
    box.dataset.state = "streaming";
    box.setAttribute("aria-busy", "true");
    const out = box.querySelector(".text");
    controller = new AbortController();
    updateButtons();

    const system = ui.system.value.trim();
    const body = Object.assign({
      messages: (system ? [{role: "system", content: system}] : []).concat(history),
      stream: true, stream_options: {include_usage: true},
    }, options());
    if (modelId) body.model = modelId;
    const t = {start: performance.now(), first: null, end: null, pieces: 0, usage: null, finish: null, stopped: false};
    let answer = "", failure = null;
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST", headers: authHeaders({"Content-Type": "application/json"}), body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!r.ok) throw new Error(await errorMessage(r));
      for await (const chunk of serverEvents(r.body)) {
        if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
        if (chunk.usage) t.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (t.first === null) t.first = performance.now();
          t.pieces++;
          answer += piece;
          const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
          out.append(piece);  // a text node: the model's text is never read as HTML
          if (nearBottom) ui.log.scrollTop = ui.log.scrollHeight;
        }
        if (choice.finish_reason) t.finish = choice.finish_reason;
      }
      if (t.finish === null) failure = "The answer ended early (the connection closed).";
    } catch (e) {
      if (e.name === "AbortError") t.stopped = true;
      else failure = e.message || String(e);
    }
    t.end = performance.now();
    controller = null;
    box.removeAttribute("aria-busy");

    if (mine !== conversation) {
      // New chat was pressed meanwhile: this exchange is gone from the page and from the history.
    } else if (answer) {
      history.push({role: "assistant", content: answer});  // a stopped answer stays, as far as it got
    } else if (failure || t.stopped) {
      history.pop();  // nothing came back: the question is left out of the conversation
      userBox.classList.add("dropped");
      userBox.title = "Not part of the conversation (no answer)";
    }
    box.dataset.state = failure ? "error" : (t.stopped ? "stopped" : "done");
    if (failure) footnote(box, "error", failure).setAttribute("role", "alert");
    if (answer || !failure) footnote(box, "timing", timingText(t)).title = TIMING_HELP;
    updateButtons();
    if (document.activeElement === ui.stop || document.activeElement === document.body) ui.prompt.focus();
  }

  function stop() {
    if (controller !== null) controller.abort();  // the server stops generating when the connection closes
  }

  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  ui.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && controller !== null) stop();
  });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", () => {
    stop();
    conversation++;
    history = [];
    ui.log.replaceChildren(ui.empty);
    ui.empty.hidden = false;
    ui.prompt.focus();
  });

  updateButtons();
  loadInfo();
  ui.prompt.focus();
})();
