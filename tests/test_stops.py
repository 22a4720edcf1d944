"""Generation ends at the model's terminators, not at every control token: Owl3 at <|im_end|> and
<|endoftext|> (the official generate()); text models at EOS, the GGUF's EOT/EOM tokens and llama.cpp's
end-of-generation tokens (<|im_end|>, <|endoftext|>, <|eot_id|>, <|fim_pad|>, ... whatever their type). ignore_eos=True runs on to max_tokens. The sampler is scripted so
each test knows which tokens come."""
from __future__ import annotations

import numpy as np
import pytest

import owl_cpp
import gguf

from gguf_edit import ARRAY, INT32, STRING, UINT32, rewrite

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4




def special(model, text):
    ids = model.tokenize(text, add_special=False)
    assert len(ids) == 1 and model.tokenizer.is_control(ids[0]), text
    return ids[0]


@pytest.fixture(scope="module")
def qwen2(tiny_gguf):
    return owl_cpp.load(tiny_gguf("qwen2", "f32"), n_ctx=128, threads=1)


def test_chatml_text_model_terminators(qwen2):
    im_start, im_end, eot = (special(qwen2, t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    assert qwen2.eos_token_id == im_end
    assert qwen2.terminators == {im_end, eot}                  # <|im_start|> is a control token, not an end


def test_llama_terminators_are_its_eos(tiny_gguf):
    m = owl_cpp.load(tiny_gguf("llama", "f32"), n_ctx=64, threads=1)
    assert m.terminators == {m.eos_token_id} and m.eos_token_id is not None


def test_gguf_end_of_turn_and_message_tokens(tiny_gguf, tmp_path):
    path = rewrite(tiny_gguf("qwen2", "f32"), tmp_path / "m.gguf", set_keys={
        "tokenizer.ggml.eot_token_id": (UINT32, 100), "tokenizer.ggml.eom_token_id": (UINT32, 101)})
    m = owl_cpp.load(path, n_ctx=64, threads=1)
    assert {100, 101} <= m.terminators


def with_tokens(src, dst, named: dict, **keys):
    """src's vocabulary with padding rows renamed: text -> token type; returns (path, text -> id)."""
    r = gguf.GGUFReader(str(src))
    tokens = list(r.fields["tokenizer.ggml.tokens"].contents())
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    ids = {}
    for k, (text, kind) in enumerate(named.items()):
        i = tokens.index(f"[PAD{1003 + k}]")
        tokens[i], types[i], ids[text] = text, kind, i
    set_keys = {"tokenizer.ggml.tokens": (ARRAY, tokens, STRING), "tokenizer.ggml.token_type": (ARRAY, types, INT32)}
    set_keys.update({k: (UINT32, v) for k, v in keys.items()})
    return rewrite(src, dst, set_keys=set_keys), ids


def test_llama_cpp_end_of_generation_set(tiny_gguf, tmp_path):
    # llama-vocab.cpp: EOG texts of any token type, the FIM pad / repo / file-separator tokens, EOS / EOT / EOM.
    named = {"<|eot_id|>": CONTROL, "<|eom_id|>": USER_DEFINED, "<end_of_turn>": NORMAL, "<|fim_pad|>": NORMAL,
             "<|repo_name|>": CONTROL, "<|file_sep|>": CONTROL, "<\uff5cend\u2581of\u2581sentence\uff5c>": CONTROL,
             "<|fim_prefix|>": CONTROL, "<|start_header_id|>": CONTROL, "<|end|>": CONTROL}
    path, ids = with_tokens(tiny_gguf("qwen2", "f32"), tmp_path / "m.gguf", named)
    m = owl_cpp.load(path, n_ctx=64, threads=1)
    im_end, eot = special(m, "<|im_end|>"), special(m, "<|endoftext|>")
    not_ends = {ids["<|fim_prefix|>"], ids["<|start_header_id|>"]}
    assert m.terminators == {im_end, eot} | {i for t, i in ids.items() if ids[t] not in not_ends}
    # A GGUF key names the FIM pad token: that one, not the one found by text.
    path, ids = with_tokens(tiny_gguf("qwen2", "f32"), tmp_path / "k.gguf", {"<|fim_pad|>": CONTROL, "<PAD>": CONTROL},
                            **{"tokenizer.ggml.fim_pad_token_id": 40})
    assert owl_cpp.load(path, n_ctx=64, threads=1).terminators == {im_end, eot, 40}


@pytest.mark.parametrize("pair", [("<|return|>", "<|call|>"), ("<|calls|>", "<|flush|>")])
def test_end_is_no_terminator_beside_return_and_call(tiny_gguf, tmp_path, pair):
    # gpt-oss (and Solar Open): <|end|> closes a message inside an answer; llama.cpp drops it from the set.
    path, ids = with_tokens(tiny_gguf("qwen2", "f32"), tmp_path / "m.gguf", dict.fromkeys(("<|end|>",) + pair, CONTROL))
    m = owl_cpp.load(path, n_ctx=64, threads=1)
    assert ids["<|end|>"] not in m.terminators and {ids[t] for t in pair} <= m.terminators
    path, ids = with_tokens(tiny_gguf("qwen2", "f32"), tmp_path / "s.gguf", {"</s>": CONTROL, "<|tool_response>": CONTROL})
    m = owl_cpp.load(path, n_ctx=64, threads=1)
    assert ids["</s>"] not in m.terminators and ids["<|tool_response>"] in m.terminators


def test_text_generation_stops_at_terminators_only(qwen2, script):
    im_start, im_end = special(qwen2, "<|im_start|>"), special(qwen2, "<|im_end|>")
    toks = [40, 41, im_start, 42, im_end, 43, 44]
    script(toks)
    info = qwen2.generate("Hello", max_tokens=10, return_info=True)
    assert info["tokens"] == toks[:4] and info["finish_reason"] == "stop"
    script(toks)
    info = qwen2.generate("Hello", max_tokens=6, return_info=True, ignore_eos=True)
    assert info["tokens"] == toks[:6] and info["finish_reason"] == "length"
    script(toks)
    assert "".join(qwen2.generate("Hello", max_tokens=6, stream=True, ignore_eos=True)) == info["text"]


@pytest.fixture(scope="module")
def owl(tiny_owl3_model):
    return owl_cpp.load(tiny_owl3_model("1b")[1], n_ctx=256, threads=1)


def test_owl3_terminators_are_the_official_ones(owl):
    assert owl.terminators == {special(owl, "<|im_end|>"), special(owl, "<|endoftext|>")}


@pytest.mark.parametrize("end", ["<|im_end|>", "<|endoftext|>"])
def test_owl3_chat_stops_at_its_terminators_only(owl, script, end):
    img = np.zeros((20, 20, 3), np.uint8)
    toks = [40, special(owl, "<|im_start|>"), 41, special(owl, end), 42, 43]
    script(toks)
    info = owl.chat(img, "Hi", max_tokens=10, cut=False, return_info=True)
    assert info["tokens"] == toks[:3] and info["finish_reason"] == "stop"
    script(toks)
    info = owl.chat(img, "Hi", max_tokens=5, cut=False, return_info=True, ignore_eos=True)
    assert info["tokens"] == toks[:5] and info["finish_reason"] == "length"
    script(toks)
    s = owl.session()
    assert s.ask("Hi", images=[img], max_tokens=5, cut=False, ignore_eos=True) == info["text"]
