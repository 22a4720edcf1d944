"""mPLUG-2 video captioning reference (owl_export/mplug2/reference.py) on a tiny random checkpoint.

The NumPy side (float64) is written from docs/owl2.md PART D alone and shares no code with the reference: one
video block (local temporal conv, per-frame attention, local temporal conv, MLP) and one decoder layer (causal
self-attention, cross-attention to the video, FFN). Then: the cached decoder against the re-run-everything
decoder, greedy both ways, predictor.py's beam search corner cases on a scripted logits table, WordPiece
against tokenizers' BertWordPiece. (Checked once against the official modules on CPU: docs/owl2.md PART E.)
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from owl_export.mplug2.config import load_checkpoint  # noqa: E402
from owl_export.mplug2.fixtures import make_tiny_mplug2_checkpoint  # noqa: E402
from owl_export.mplug2.reference import (Mplug2CaptionReference, predictor_beam_search,  # noqa: E402
                                         sample_frame_indices)
from owl_export.mplug2.tokenizer import BertWordPiece  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_mplug2_checkpoint(tmp_path_factory.mktemp("mplug2") / "tiny", seed=0)


@pytest.fixture(scope="module")
def ref(ckpt):
    return Mplug2CaptionReference.from_dir(ckpt)


@pytest.fixture(scope="module")
def video(ref):
    g = torch.Generator().manual_seed(5)
    return ref.encode_video(torch.randn(ref.cfg.num_frames, 3, 224, 224, generator=g))


def _np(sd, k):
    return sd[k].double().numpy()


def np_ln(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def np_softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_mha(q, k, v, heads, mask=None):
    n, d = q.shape[0], q.shape[1] // heads
    out = np.zeros_like(q)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(d)
        if mask is not None:
            s = s + mask
        out[:, sl] = np_softmax(s) @ v[:, sl]
    return out


def quick_gelu(x):
    return x / (1 + np.exp(-1.702 * x))


def np_video_block(sd, p, x, heads):
    """docs/owl2.md PART D 1, x [T, 1+HW, C] per frame."""
    T, N, C = x.shape

    def temporal(pp, patches):                       # [T, HW, C]
        h = np_ln(patches, _np(sd, pp + "ln.weight"), _np(sd, pp + "ln.bias"), 1e-5)
        h = h @ _np(sd, pp + "down_proj.weight")[:, :, 0, 0, 0].T + _np(sd, pp + "down_proj.bias")
        k = _np(sd, pp + "conv.weight")[:, 0, :, 0, 0]        # [Cb, 3]
        out = np.zeros_like(h)
        for t in range(T):
            for j, dt in enumerate((-1, 0, 1)):
                if 0 <= t + dt < T:
                    out[t] += h[t + dt] * k[:, j]
        h = quick_gelu(out + _np(sd, pp + "conv.bias"))
        return h @ _np(sd, pp + "up_proj.weight")[:, :, 0, 0, 0].T + _np(sd, pp + "up_proj.bias")

    x = x.copy()
    x[:, 1:] += temporal(p + "lmhra1.", x[:, 1:])
    W, bW = _np(sd, p + "attn.in_proj_weight"), _np(sd, p + "attn.in_proj_bias")
    for t in range(T):
        h = np_ln(x[t], _np(sd, p + "ln_1.weight"), _np(sd, p + "ln_1.bias"), 1e-5)
        qkv = h @ W.T + bW
        o = np_mha(qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:], heads)
        x[t] = x[t] + o @ _np(sd, p + "attn.out_proj.weight").T + _np(sd, p + "attn.out_proj.bias")
    x[:, 1:] += temporal(p + "lmhra2.", x[:, 1:])
    h = np_ln(x, _np(sd, p + "ln_2.weight"), _np(sd, p + "ln_2.bias"), 1e-5)
    h = quick_gelu(h @ _np(sd, p + "mlp.c_fc.weight").T + _np(sd, p + "mlp.c_fc.bias"))
    return x + h @ _np(sd, p + "mlp.c_proj.weight").T + _np(sd, p + "mlp.c_proj.bias")


def test_video_block_matches_numpy(ckpt):
    sd, cfg = load_checkpoint(ckpt)
    ref64 = Mplug2CaptionReference(sd, cfg, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(cfg.num_frames, 1 + cfg.tokens_per_frame, cfg.vision_width, generator=g, dtype=torch.float64)
    got = ref64.video_block(x, 1).numpy()
    want = np_video_block(sd, "visual_encoder.visual.transformer.resblocks.1.", x.numpy(), cfg.vision_width // 64)
    assert np.abs(got - want).max() < 1e-9
    # the temporal convolution matters: frames are not independent
    x2 = x.clone()
    x2[0, 1:] += torch.randn(x.shape[1] - 1, x.shape[2], generator=g, dtype=torch.float64)
    assert (ref64.video_block(x2, 1)[1] - ref64.video_block(x, 1)[1]).abs().max() > 1e-3


def test_video_tokens_layout(ref, video):
    cfg = ref.cfg
    assert video.shape == (1 + cfg.num_frames * cfg.tokens_per_frame, cfg.text_width)


def np_bert_attention(sd, p, x, kv, heads, eps, mask=None):
    q = x @ _np(sd, p + "self.query.weight").T + _np(sd, p + "self.query.bias")
    k = kv @ _np(sd, p + "self.key.weight").T + _np(sd, p + "self.key.bias")
    v = kv @ _np(sd, p + "self.value.weight").T + _np(sd, p + "self.value.bias")
    o = np_mha(q, k, v, heads, mask) @ _np(sd, p + "output.dense.weight").T + _np(sd, p + "output.dense.bias")
    return np_ln(o + x, _np(sd, p + "output.LayerNorm.weight"), _np(sd, p + "output.LayerNorm.bias"), eps)


def test_decoder_layer_matches_numpy(ckpt):
    sd, cfg = load_checkpoint(ckpt)
    ref64 = Mplug2CaptionReference(sd, cfg, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    n, N = 6, 40
    x = torch.randn(n, cfg.text_width, generator=g, dtype=torch.float64)
    vid = torch.randn(N, cfg.text_width, generator=g, dtype=torch.float64)
    p = "text_decoder.bert.encoder.layer.1."
    a = p + "attention.self."
    k, v = ref64._heads(ref64._lin(x, a + "key.")), ref64._heads(ref64._lin(x, a + "value."))
    mask = (1.0 - torch.ones(n, n, dtype=torch.float64).tril()) * -10000.0
    got = ref64._decoder_layer(x, 1, k, v, ref64.cross_kv(vid)[1], mask).numpy()
    xn, vn, eps, H = x.numpy(), vid.numpy(), cfg.text_eps, cfg.text_heads
    h = np_bert_attention(sd, p + "attention.", xn, xn, H, eps, np.triu(np.full((n, n), -np.inf), 1))
    h = np_bert_attention(sd, p + "crossattention.", h, vn, H, eps)
    f = h @ _np(sd, p + "intermediate.dense.weight").T + _np(sd, p + "intermediate.dense.bias")
    f = 0.5 * f * (1 + np.vectorize(math.erf)(f / math.sqrt(2)))          # exact erf GELU
    f = f @ _np(sd, p + "output.dense.weight").T + _np(sd, p + "output.dense.bias")
    want = np_ln(f + h, _np(sd, p + "output.LayerNorm.weight"), _np(sd, p + "output.LayerNorm.bias"), eps)
    assert np.abs(got - want).max() < 1e-9


def test_cached_decoder_equals_rerun(ref, video):
    ids = [101, 110, 150, 200, 102, 180, 120, 130]
    a = ref.decoder_logits(video, ids, cache=True)
    b = ref.decoder_logits(video, ids, cache=False)
    assert a.shape == (len(ids), ref.cfg.vocab_size)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    # a multi-token step on top of a cache equals the re-run too
    cross = ref.cross_kv(video)
    l1, kv = ref.decoder_step(torch.tensor([ids[:3]]), cross, None)
    l2, _ = ref.decoder_step(torch.tensor([ids[3:]]), cross, kv)
    assert float((torch.cat([l1, l2], 1)[0] - b).abs().max() / b.abs().max()) < 1e-5


def test_greedy_cached_equals_uncached(ref, video):
    a = ref.greedy(video, 20, cache=True, stop_at_eos=False)
    b = ref.greedy(video, 20, cache=False, stop_at_eos=False)
    assert len(a) == 20 and a == b


def test_beam_search_deterministic_and_cache_free(ref, video):
    a = ref.beam_search(video)
    assert a == ref.beam_search(video)
    assert a[0] == ref.beam_search(video, cache=False)[0]
    assert a[0][0] == 101 and len(a[0]) <= 1 + ref.cfg.max_length
    assert abs(a[1] - ref.beam_search(video, cache=False)[1]) < 1e-5


def _scripted(table, V, default):
    """step() whose next-token distribution depends on the prefix (as a tuple) only."""
    def step(alive, parents):
        out = torch.empty(alive.shape[0], V)
        for r, row in enumerate(alive.tolist()):
            out[r] = torch.log(torch.tensor(table.get(tuple(row), default)))
        return out
    return step


def test_beam_min_length_blocks_eos():
    V, bos, eos = 5, 0, 1
    always_eos = [0.01, 0.96, 0.01, 0.01, 0.01]
    for min_len in (0, 1, 3):
        ids, _ = predictor_beam_search(_scripted({}, V, always_eos), bos, eos, 2, min_len, 10)
        assert ids[-1] == eos and len(ids) == min_len + 2 and eos not in ids[1:-1]


def test_beam_finished_hypothesis_beats_final_top_beam():
    V, bos, eos = 5, 0, 1
    flat = [0.2] * 5
    table = {(bos,): [0.0, 0.4, 0.6, 0.0, 0.0]}        # top beam continues with 2; [SEP] finishes second
    hyps = predictor_beam_search(_scripted(table, V, flat), bos, eos, 2, 0, 3, return_all=True)
    best_score, best_ids = hyps[0]
    assert best_ids == [bos, eos]
    assert abs(best_score - math.log(0.4) / 1.0) < 1e-6          # penalty ((5+1)/6)^0.6 = 1 at step 0
    # the finished beam stayed alive: its continuations past [SEP] compete in the last step
    ids, score = predictor_beam_search(_scripted(table, V, flat), bos, eos, 2, 0, 3)
    assert ids == [bos, eos] and score == best_score


def test_beam_length_penalty_form():
    V, bos, eos = 4, 0, 1
    table = {(bos,): [0.0, 0.0, 1.0, 0.0], (bos, 2): [0.0, 0.5, 0.5, 0.0]}
    ids, score = predictor_beam_search(_scripted(table, V, [0.25] * 4), bos, eos, 1, 0, 5)
    # one beam: step 1 picks [SEP] or 2 (a tie, topk's first = 1 = [SEP]); score = log(0.5) / ((5+2)/6)^0.6
    assert ids == [bos, 2, eos]
    assert abs(score - math.log(0.5) / ((5 + 2) / 6) ** 0.6) < 1e-6


AWKWARD = ["a video of a man playing", "Hello, WORLD!!", "  Café   naïve résumé  ", "unaffable playing",
           "don't stop", "2020-1999", "中文 text", "tabs\tand\nnewlines\r\n", "x" * 101, "zzzqqq", "",
           "ÀÉÎÕÜ ß", "\u00a0nbsp\u2003em space", "control\x07char", "(a)[b]{c}<d>", "what's up?",
           "e\u0301", "who? how. what;", "##ing", "playinged walked"]


def test_wordpiece_matches_tokenizers(ckpt):
    tokenizers = pytest.importorskip("tokenizers")
    ours = BertWordPiece.from_file(ckpt / "vocab.txt")
    theirs = tokenizers.BertWordPieceTokenizer(str(ckpt / "vocab.txt"), lowercase=True)
    for s in AWKWARD:
        assert ours.encode(s, add_cls=False) == theirs.encode(s, add_special_tokens=False).ids, s
    assert ours.encode("a video of") == [101] + theirs.encode("a video of", add_special_tokens=False).ids
    assert ours.ids["[PAD]"] == 0 and ours.ids["[UNK]"] == 100 and ours.ids["[CLS]"] == 101
    assert ours.ids["[SEP]"] == 102 and ours.ids["[MASK]"] == 103


def test_caption_text_strips_prompt_and_specials(ckpt):
    tok = BertWordPiece.from_file(ckpt / "vocab.txt")
    ids = [tok.cls_id] + [tok.ids[t] for t in "a video of a man play ##ing".split()] + [tok.sep_id]
    assert tok.caption_text(ids) == "a man playing"
    assert tok.decode([tok.ids[t] for t in ["don", "'", "t", "."]]) == "don't."


def test_frame_sampling_and_config(ckpt):
    assert sample_frame_indices(160, 16) == [4 + 10 * i for i in range(16)]
    assert len(set(sample_frame_indices(20, 16))) == 16
    sd, cfg = load_checkpoint(ckpt)
    assert (cfg.vision_heads, cfg.grid, cfg.num_latents, cfg.universal_layers) == (1, 16, 50, [1, 2])
    assert (cfg.beam_size, cfg.min_length, cfg.max_length, cfg.prompt) == (5, 4, 20, "a video of")
