"""JSON mode on random-weight tiny models (byte-level BPE qwen2, sentencepiece llama): under
response_format="json" every answer json.loads to a dict, or is cut by max_tokens (finish "length") as a valid
prefix of one; greedy and sampled, streamed, and with concurrent generations decoded in batches."""
import json
import threading

import pytest

import owl_cpp
from owl_cpp import _core


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request, tiny_gguf):
    return owl_cpp.load(tiny_gguf(request.param), n_ctx=1024, threads=1)


def check_json_answer(info: dict) -> bool:
    """True when the answer is a whole object; else it must be a valid prefix cut by the length limit."""
    text = info["text"]
    if info["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict), text
        return True
    assert info["finish_reason"] == "length"
    m = _core.JsonMachine(True)
    assert m.feed(text.encode()) == len(text.encode()) and not m.done, text
    return False


def test_every_answer_is_json_or_cut_by_max_tokens(model):
    complete = 0
    for temperature in (0.0, 0.7, 1.5):
        for seed in range(3):
            info = model.generate("Answer in JSON:", max_tokens=300, temperature=temperature, seed=seed,
                                  response_format="json", return_info=True)
            complete += check_json_answer(info)
            if temperature == 0.0:                  # greedy is deterministic
                assert info["text"] == model.generate("Answer in JSON:", max_tokens=300, response_format="json")
    assert complete >= 1                            # the test sees whole objects, not only cut ones
    # Cut short by max_tokens: a valid prefix, finish "length".
    assert not check_json_answer(model.generate("x", max_tokens=3, temperature=1.0, seed=0, response_format="json",
                                                return_info=True))


def test_without_json_mode_the_answer_is_free_text(model):
    free = model.generate("Answer in JSON:", max_tokens=20, return_info=True)
    forms = [None, "text", {"type": "text"}]
    assert all(model.generate("Answer in JSON:", max_tokens=20, response_format=f) == free["text"] for f in forms)
    assert free["text"] != model.generate("Answer in JSON:", max_tokens=20, response_format={"type": "json_object"})


def test_streamed_json_is_the_same_answer(model):
    want = model.generate("{", max_tokens=200, temperature=1.5, seed=0, response_format="json_object")
    assert "".join(model.generate("{", max_tokens=200, temperature=1.5, seed=0, response_format="json",
                                  stream=True)) == want


def test_bad_response_formats_are_value_errors(model):
    with pytest.raises(ValueError, match="root schema must be an object"):
        model.generate("x", max_tokens=2, response_format={"type": "json_schema", "json_schema": {"schema": {}}})
    with pytest.raises(ValueError, match="needs"):
        model.generate("x", max_tokens=2, response_format={"type": "json_schema"})
    with pytest.raises(ValueError, match="response_format"):
        model.generate("x", max_tokens=2, response_format="xml")


def test_chat_in_json_mode(tiny_gguf):
    m = owl_cpp.load(tiny_gguf("qwen2"), n_ctx=1024, threads=1)
    infos = [m.chat("Give me JSON", max_tokens=300, temperature=1.5, seed=s, response_format="json",
                    return_info=True) for s in range(4)]
    assert sum(check_json_answer(i) for i in infos) >= 1
    s = m.session()
    check_json_answer(s.ask("JSON please", max_tokens=100, temperature=1.0, seed=1, response_format="json",
                            return_info=True))


def test_concurrent_json_generations_decode_in_batches(model):
    """Each generation keeps its own constraint state while the steps of all of them run in one batch."""
    kw = dict(max_tokens=150, temperature=1.0, response_format="json", return_info=True)
    alone = [model.generate("JSON:", seed=s, **kw) for s in range(4)]
    got = [None] * 4
    batches_before = model._batcher.batches if model.batch_decode else 0

    def run(i):
        got[i] = model.generate("JSON:", seed=i, **kw)

    model.reserve_contexts(4)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, got):
        assert b["text"] == a["text"] and b["finish_reason"] == a["finish_reason"]
        check_json_answer(b)
    if model.batch_decode:
        assert model._batcher.steps > model._batcher.batches > batches_before   # some steps ran together
