"""mPLUG-2 behind the chat API. The model is no chat model: it captions one video (caption directory) or
answers one question about one video (VideoQA directory, task "qa"), by the checkpoint's beam search. So:

  - the last message must be a user message holding exactly one video_url part (and the request no other
    video); earlier messages (a system prompt, earlier turns) are ignored, as the model has no conversation;
  - caption: the text of that message is ignored (clients send "Describe this video." and the like);
    VideoQA: its text parts, joined, are the question (a 400 when empty);
  - image_url parts are a 400; so are options the beam search cannot honour: temperature > 0, top_p < 1,
    stop, logprobs, response_format other than text, ignore_eos. seed is accepted (the answer is
    deterministic). max_tokens lowers the checkpoint's maximum answer length, never raises it;
  - usage: prompt_tokens = the rows the decoder attends to (video tokens; for VideoQA video + question),
    completion_tokens = the answer's ids (the closing [SEP] included when the search ended with it);
    finish_reason "length" when the answer reached the maximum length without [SEP], else "stop".
"""
from __future__ import annotations

from .openai_shapes import RequestError


def _refuse(what: str, param: str):
    raise RequestError(f"mPLUG-2 answers by beam search: {what} is not supported with this model", param,
                       code="unsupported_option")


class Mplug2Plan:
    """A checked request (before its video is fetched) and, given the resolved messages, its run."""

    def __init__(self, model, messages: list, body: dict, opts: dict):
        self.model, self.qa = model, model.task == "qa"
        label = "an mPLUG-2 VideoQA model" if self.qa else "an mPLUG-2 captioning model"
        for i, m in enumerate(messages):
            for p in m.get("content") if isinstance(m.get("content"), list) else []:
                if p.get("type") == "image_url":
                    raise RequestError(f"messages[{i}]: this is {label}: it takes a video (video_url), not images",
                                       "messages", code="images_not_supported")
        last = messages[-1]
        parts = last.get("content") if isinstance(last.get("content"), list) else []
        if last.get("role") != "user" or sum(p.get("type") == "video_url" for p in parts) != 1:
            what = "a question about one video" if self.qa else "one video to caption"
            raise RequestError(f"this is {label}: the last message must be a user message with exactly one "
                               f"video_url part ({what})", "messages", code="video_required")
        self.index = len(messages) - 1
        self.question = "".join(p.get("text") or "" for p in parts if p.get("type") == "text").strip()
        if self.qa and not self.question:
            raise RequestError("this is an mPLUG-2 VideoQA model: the last user message needs the question as "
                               "text beside its video", "messages", code="question_required")
        t = opts.get("temperature")
        if t is not None and t > 0:
            _refuse(f"temperature {t} (sampling)", "temperature")
        if opts.get("top_p") is not None and opts["top_p"] < 1:
            _refuse("top_p < 1 (sampling)", "top_p")
        for key in ("stop", "logprobs", "response_format"):
            if opts.get(key) not in (None, [], ""):
                _refuse(key, key)
        if opts.get("ignore_eos"):
            _refuse("ignore_eos", "ignore_eos")
        self.kwargs = {}
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        if asked is not None:
            hi = min(int(opts["max_tokens"]), model.options["max_length"])
            self.kwargs = {"max_length": hi, "min_length": min(model.options["min_length"], hi)}

    def run(self, messages: list) -> dict:
        """The answer as a generation info dict (text, prompt/completion tokens, finish reason)."""
        video = next(p["video"] for p in messages[self.index]["content"] if p.get("type") == "video")
        if self.qa:
            info = self.model.answer(video, self.question, return_info=True, **self.kwargs)
        else:
            info = self.model.caption(video, return_info=True, **self.kwargs)
        ids = list(info["ids"])
        ended = bool(ids) and ids[-1] == self.model.tokenizer.eos_id
        hi = self.kwargs.get("max_length", self.model.options["max_length"])
        return {"text": info["text"], "prompt_tokens": int(info["tokens"]), "completion_tokens": len(ids),
                "finish_reason": "length" if not ended and len(ids) >= hi else "stop"}
