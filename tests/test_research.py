"""Research access: logits at every prompt position, log-probabilities of continuations (one prefill of the
prompt, each continuation from its cached prefix) and final hidden states, for a conversation with images,
against the PyTorch reference (float64) and against the runtime's own logits."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import owl_cpp
from owl_cpp import _core
from owl_cpp.context_pool import ContextPool
from owl_cpp.research import log_softmax
from owl_export.owl3 import Owl3Reference

TOL = 1e-4


def rel_err(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def image(w, h, seed):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


class CountingContext(_core.Context):
    """Records how many tokens each eval was given."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.evals = []

    def eval(self, tokens, *args, **kwargs):
        self.evals.append(len(tokens))
        return super().eval(tokens, *args, **kwargs)


def counting(model):
    def make():
        return CountingContext(model._model, *model._context_args, **model._context_kwargs)
    model._contexts = ContextPool(make, 1)
    return model._contexts.default.ctx


@pytest.fixture(scope="module")
def owl3(tiny_owl3_model):
    hf, out = tiny_owl3_model("1b")
    return owl_cpp.load(out, n_ctx=512, threads=2, kv_type="f32"), Owl3Reference.from_pretrained(hf, dtype=torch.float64)


IMG = image(60, 40, 31)                 # cut: 2 x 3 tiles + the global view
QUESTION = "What is in the picture?"


def reference_logits(ref, model, out):
    views = model._expand([IMG])[0].views
    emb = torch.as_tensor(np.stack(model.vision.encode(views)), dtype=torch.float64)   # the runtime's embeddings
    return ref.forward(out.ids, emb, out.image_starts).numpy()


def test_logits_at_every_prompt_position_match_the_reference(owl3):
    m, ref = owl3
    out = m.logits(QUESTION, images=[IMG])
    assert out.logits.shape == (len(out.ids), m.n_vocab) and len(out.image_starts) == 7
    assert len(out.ids) == m.chat(IMG, QUESTION, max_tokens=0, return_info=True)["prompt_tokens"]
    want = reference_logits(ref, m, out)
    assert max(rel_err(out.logits[t], want[t]) for t in range(len(out.ids))) < TOL
    msgs = [{"role": "user", "content": [{"type": "image", "image": IMG}, {"type": "text", "text": "\n" + QUESTION}]}]
    same = m.logits(msgs)                                  # messages give the same prompt
    assert same.ids == out.ids and np.array_equal(same.logits, out.logits)


def test_score_is_log_softmax_of_the_logits_at_the_continuation(owl3):
    m, ref = owl3
    conts = ["A cat.", "Two dogs on a red sofa.", "x"]
    ctx = counting(m)
    scores = m.score(QUESTION, conts, images=[IMG])
    prompt = m.logits(QUESTION, images=[IMG])
    n = len(prompt.ids)
    assert ctx.evals[:1 + sum(len(s.ids) > 1 for s in scores)] == \
        [n] + [len(s.ids) - 1 for s in scores if len(s.ids) > 1]        # one prefill, then each continuation
    views = m._expand([IMG])[0].views
    embeds = m.vision.encode(views)
    for text, s in zip(conts, scores):
        assert s.ids == m.tokenize(text, add_special=False)
        full = _core.Context(m._model, 512, 2, kv_type="f32")        # a fresh context: prompt + continuation at once
        for st, e in zip(prompt.image_starts, embeds):
            full.add_image(e, st)
        rows = log_softmax(full.eval(prompt.ids + s.ids, all_logits=True)[n - 1:n - 1 + len(s.ids)])
        want = rows[np.arange(len(s.ids)), s.ids]
        np.testing.assert_allclose(s.token_logprobs, want, rtol=0, atol=1e-4)
        assert s.logprob == pytest.approx(float(s.token_logprobs.sum()))
        np.testing.assert_allclose(log_softmax(prompt.logits[-1])[s.ids[0]], s.token_logprobs[0], atol=1e-5)
        # and the float64 reference
        emb = torch.as_tensor(np.stack(embeds), dtype=torch.float64)
        ref_rows = log_softmax(ref.forward(prompt.ids + s.ids, emb, prompt.image_starts).numpy()[n - 1:-1])
        np.testing.assert_allclose(s.token_logprobs, ref_rows[np.arange(len(s.ids)), s.ids], rtol=0, atol=1e-3)


def test_the_greedy_answer_scores_as_greedy(owl3):
    m, _ = owl3
    info = m.chat(IMG, QUESTION, max_tokens=6, return_info=True, ignore_eos=True)
    other = [(t + 1) % len(m.tokenizer) for t in info["tokens"]]
    greedy, not_greedy = m.score(QUESTION, [info["tokens"], other], images=[IMG])
    assert greedy.is_greedy and not not_greedy.is_greedy and greedy.logprob > not_greedy.logprob


def test_score_errors(owl3):
    m, _ = owl3
    with pytest.raises(ValueError, match="empty"):
        m.score(QUESTION, [""], images=[IMG])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.score(QUESTION, [[m.n_vocab]], images=[IMG])
    with pytest.raises(TypeError, match="list"):
        m.score(QUESTION, "A cat.", images=[IMG])


def test_text_model_score_and_logits_agree(tiny_gguf):
    m = owl_cpp.load(tiny_gguf("qwen2", "f32"), n_ctx=128, threads=2)
    prompt, conts = "The capital of France is", [" Paris", " a big city", " 42"]
    ids = m.tokenize(prompt)
    for s, text in zip(m.score(prompt, conts), conts):
        c = m.tokenize(text, add_special=False)
        rows = log_softmax(m.logits(ids + c)[len(ids) - 1:-1])
        assert s.ids == c
        np.testing.assert_allclose(s.token_logprobs, rows[np.arange(len(c)), c], rtol=0, atol=1e-5)


def output_matrix(gguf_path) -> np.ndarray:
    tensors = {t.name: t for t in gguf.GGUFReader(gguf_path).tensors}
    t = tensors.get("output.weight", tensors["token_embd.weight"])
    return np.asarray(t.data, np.float64).reshape(-1, t.data.shape[-1])


def test_hidden_states_give_the_logits_through_the_output_head(owl3, tiny_gguf):
    m, _ = owl3
    out = m.hidden_states(QUESTION, images=[IMG])
    assert out.hidden_states.shape == (len(out.ids), m.hparams["n_embd"]) and out.hidden_states.dtype == np.float32
    logits = m.logits(QUESTION, images=[IMG])
    assert out.ids == logits.ids
    assert rel_err(out.hidden_states @ output_matrix(m.path).T, logits.logits) < TOL
    t = owl_cpp.load(tiny_gguf("qwen2", "f32"), n_ctx=128, threads=2, kv_type="f32")
    ids = t.tokenize("Hello there")
    assert rel_err(t.hidden_states(ids) @ output_matrix(t.path).T, t.logits(ids)) < TOL
