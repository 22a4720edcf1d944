"""mPLUG-Owl2.1's language side (docs/owl2.md PART B): the Qwen (v1) tokenizer read from qwen.tiktoken, the
PyTorch reference, the GGUF converter and the C++ owl2 decoder with variant "owl2_1" (only the fused Q|K|V is
per modality, with bias; shared norms, c_proj and w1/w2 MLP), on the tiny random Owl2.1 checkpoint."""
from __future__ import annotations

import base64
import unicodedata

import gguf
import numpy as np
import pytest
import regex
import torch

import owl_cpp
from owl_cpp import _core
from owl_export.convert_text import llama_unpermute
from owl_export.owl2.convert import PreparedOwl2Decoder
from owl_export.owl2.fixtures import QWEN_SPECIALS, make_tiny_owl2_checkpoint
from owl_export.owl2.language import IMAGE_TOKEN_INDEX as IMG
from owl_export.tiny_tokenizers import CORPUS
from owl_export.vocab import load_hf_vocab, vocab_to_dict

from test_owl2_decoder import (ERRORS, TOL, check_teacher_forced, context, feed, images, owl2, prompt,  # noqa: F401
                               rel_err, run_and_check, runtime_greedy)
from test_tokenizer import CHAT, TEXTS

H, LAYERS, HEADS = 64, 2, 4


@pytest.fixture(scope="session")
def owl21(owl2):
    """test_owl2_decoder's tiny decoders: "owl21" (2 layers), "owl21-1layer"; "owl21:q8_0" quantized."""
    return owl2


def _hf(owl21, name="owl21"):
    owl21(name)
    return owl21.root / name


# ------------------------------------------------------------------------------------------- the file

def test_gguf_layout(owl21):
    ref, path = owl21("owl21")
    r = gguf.GGUFReader(path)
    names = [t.name for t in r.tensors]
    per_block = ["attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
                 "attn_v.weight", "attn_v.bias", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight",
                 "ffn_up.weight", "ffn_down.weight", "img.attn_q.weight", "img.attn_q.bias", "img.attn_k.weight",
                 "img.attn_k.bias", "img.attn_v.weight", "img.attn_v.bias"]
    assert names == (["token_embd.weight"] + [f"blk.{i}.{n}" for i in range(LAYERS) for n in per_block]
                     + ["output_norm.weight", "output.weight"])
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.")
         and not k.startswith("GGUF.")}
    assert f["general.architecture"] == "owl2" and f["owl2.variant"] == "owl2_1"
    assert f["owl2.context_length"] == 2048 and f["owl2.feed_forward_length"] == 128
    assert f["owl2.image_tokens"] == ref.cfg.image_tokens
    assert f["owl2.vision.image_size"] == 448
    tok = {k[len("tokenizer.ggml."):]: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.ggml.")}
    assert tok["model"] == "gpt2" and tok["pre"] == "qwen2" and not tok["add_bos_token"]
    assert "bos_token_id" not in tok
    assert tok["tokens"][tok["eos_token_id"]] == "<|endoftext|>"
    hp = _core.Model.load(str(path)).hparams
    assert hp["arch"] == "owl2" and hp["rope_mode"] == "norm" and hp["owl2_variant"] == "owl2_1"
    assert hp["multiway"] is True and hp["image_tokens"] == ref.cfg.image_tokens


def test_c_attn_is_cut_into_thirds_and_permuted(owl21):
    """blk.0.{,img.}attn_{q,k,v} are multiway.{0,1}'s contiguous thirds; q and k (weights and biases)
    permuted for NORM rope; ffn_gate is w2 (the one under silu), ffn_up w1."""
    from owl_export.checkpoint import load_checkpoint

    _, path = owl21("owl21")
    _, w, _ = load_checkpoint(_hf(owl21))
    t = {x.name: np.asarray(x.data).reshape(list(reversed([int(n) for n in x.shape]))) for x in
         gguf.GGUFReader(path).tensors}
    for b, prefix in ((0, "blk.0."), (1, "blk.0.img.")):
        for kind in ("weight", "bias"):
            fused = w[f"transformer.h.0.attn.c_attn.multiway.{b}.{kind}"].numpy()
            for part, g in enumerate(("attn_q", "attn_k", "attn_v")):
                got = t[f"{prefix}{g}.{kind}"]
                if g != "attn_v":
                    got = llama_unpermute(got, HEADS)
                np.testing.assert_array_equal(got, fused[part * H:(part + 1) * H])
    np.testing.assert_array_equal(t["blk.0.ffn_gate.weight"], w["transformer.h.0.mlp.w2.weight"].numpy())
    np.testing.assert_array_equal(t["blk.0.ffn_up.weight"], w["transformer.h.0.mlp.w1.weight"].numpy())


# ------------------------------------------------------------------------------------------- parity

def test_one_layer_mixed_tokens_and_wrong_branch_is_detected(owl21):
    ref, path = owl21("owl21-1layer")
    ids = [17, IMG, 230, 45, IMG, 9]
    embeds, mod = ref.splice(ids, images(ref, 2, seed=3))
    assert mod.tolist() == [0] + [1] * ref.cfg.image_tokens + [0, 0] + [1] * ref.cfg.image_tokens + [0]
    want, _ = ref(embeds, mod)
    got = feed(context(path), embeds, mod)
    err = rel_err(got, want)
    ERRORS["owl2_1 1-layer MAM"] = err
    assert err < TOL, f"one Owl2.1 layer: relative error {err:.2e}"
    text_only, _ = ref(embeds, torch.zeros_like(mod))
    assert rel_err(text_only, want) > 1e-2
    wrong = feed(context(path), embeds, [0] * len(mod))
    assert rel_err(wrong, want) > 1e-2 and rel_err(wrong, text_only) < TOL
    assert rel_err(feed(context(path, n_batch=4), embeds, mod), want) < TOL


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_prefill_and_decode_match_reference(owl21, n_images):
    ref, path = owl21("owl21")
    run_and_check(ref, path, n_images, key="owl2_1 f32")


@pytest.mark.skipif("cuda" not in _core.available_backends(), reason="no CUDA GPU visible")
def test_cuda_backend_matches_reference(owl21):
    """On the GPU: the image Q/K/V, their biases and the copied shared norms are uploaded and used."""
    ref, path = owl21("owl21")
    embeds, mod = ref.splice(prompt(2), images(ref, 2))
    want, past = ref(embeds, mod)
    ctx = _core.Context(_core.Model.load(str(path)), 512, 2, 256, kv_type="f32", backend="cuda")
    got = feed(ctx, embeds, mod)
    assert rel_err(got, want) < 1e-3
    for _ in range(8):
        tok = int(want[-1].argmax())
        got_step = ctx.decode(ids=[tok])
        want, past = ref(ref.embed([tok]), [0], past)
        assert rel_err(got_step, want[-1]) < 1e-3


def test_greedy_32_tokens_identical(owl21):
    ref, path = owl21("owl21")
    embeds, mod = ref.splice(prompt(1), images(ref, 1, seed=5))
    want = ref.greedy(embeds, mod, 32)
    ctx = context(path)
    assert runtime_greedy(ctx, feed(ctx, embeds, mod, all_logits=False), 32) == want


@pytest.mark.parametrize("quant,tol,min_corr,min_agree", [("q8_0", 1e-1, 0.999, 0.9), ("q4_0", 1.0, 0.95, 0.5)])
def test_quantized_exports(owl21, quant, tol, min_corr, min_agree):
    """Teacher-forced on the reference's greedy tokens (1 image); the image Q/K/V are repacked with the rest
    (a matrix left out of the repacking would read as garbage under the packed kernels)."""
    ref, path = owl21(f"owl21:{quant}")
    check_teacher_forced(ref, path, f"owl2_1 {quant}", tol, min_corr, min_agree)


def test_q4_0_image_branch_is_repacked(owl21):
    """Every Q4_0 block matrix, the image Q/K/V included, goes through the load-time repacking. (The file's Q8_0
    output matrix is repacked too where the kernels have a BlockQ8_0x16 path: 16-row groups, 64-byte aligned.)"""
    from owl_cpp import _testing

    _, path = owl21("owl21:q4_0")
    m = _core.Model.load(str(path))
    if not _testing.ops.kernels_use_q4x8():
        pytest.skip("the active kernels keep Q4_0 in the file's layout")
    tensors = gguf.GGUFReader(path).tensors
    q4 = {t.name: int(t.n_bytes) for t in tensors if t.tensor_type.name == "Q4_0"}
    assert any(".img.attn_q." in k for k in q4)
    q8 = 0
    if _testing.ops.kernels_use_q8x16():
        for t in tensors:
            if t.tensor_type.name == "Q8_0" and (t.name.startswith("blk.") or t.name == "output.weight"):
                cols, rows = int(t.shape[0]), int(t.shape[1])
                q8 += -(-(-(-rows // 16) * 16 * (cols // 32) * 34) // 64) * 64
    assert m.packed_bytes == sum(n for k, n in q4.items() if k.startswith("blk.")) + q8


# ------------------------------------------------------------------------------------------- hostile files

def _write(hf, out, edit):
    p = PreparedOwl2Decoder(hf, "f32")
    p.plan = edit(p.plan)
    p.write(out, progress=False)
    return out


def _without(*names):
    return lambda plan: [t for t in plan if t.name not in names]


def test_hostile_owl2_1_files_are_refused_by_name(owl21, tmp_path):
    import dataclasses

    hf = _hf(owl21)

    def with_img_norm(plan):
        norm = next(t for t in plan if t.name == "blk.1.attn_norm.weight")
        return plan + [dataclasses.replace(norm, name="blk.1.img.attn_norm.weight")]

    cases = [(_without("blk.1.img.attn_q.bias"), r"blk\.1\.img\.attn_q\.bias"),
             (_without("blk.0.img.attn_v.weight"), r"blk\.0\.img\.attn_v\.weight"),
             (_without(*[f"blk.{i}.img.{g}.{k}" for i in range(LAYERS) for g in ("attn_q", "attn_k", "attn_v")
                         for k in ("weight", "bias")]), r"blk\.0\.img\.attn_q\.weight"),
             (with_img_norm, r"blk\.1\.img\.attn_norm\.weight"),
             (_without(*[f"blk.{i}.attn_{g}.bias" for i in range(LAYERS) for g in "qkv"]), r"blk\.0\.attn_q\.bias"),
             (_without("blk.1.attn_k.bias"), r"blk\.1\.attn_k\.bias")]
    for k, (edit, match) in enumerate(cases):
        path = _write(hf, tmp_path / f"bad{k}.gguf", edit)
        with pytest.raises(owl_cpp.FormatError, match=match):
            _core.Model.load(str(path))


def test_variant_key_must_agree_with_the_tensors(owl21, tmp_path):
    from gguf_edit import STRING, rewrite

    _, p21 = owl21("owl21")
    for variant, match in (("owl2", r"blk\.0\.(img\.attn_q\.weight|attn_q\.bias)"), ("owl1", "owl2_1|attn_q")):
        with pytest.raises(owl_cpp.FormatError, match=match):
            _core.Model.load(str(rewrite(p21, tmp_path / f"{variant}.gguf", {"owl2.variant": (STRING, variant)})))


def test_owl2_file_labelled_owl2_1_is_refused(tmp_path):
    from gguf_edit import STRING, rewrite

    hf = make_tiny_owl2_checkpoint(tmp_path / "owl2", "owl2")
    p = tmp_path / "owl2.gguf"
    PreparedOwl2Decoder(hf, "f32").write(p, progress=False)
    with pytest.raises(owl_cpp.FormatError, match=r"owl2_1.*blk\.0\.attn_q\.bias|blk\.0\.attn_q\.bias.*missing"):
        _core.Model.load(str(rewrite(p, tmp_path / "x.gguf", {"owl2.variant": (STRING, "owl2_1")})))


# ------------------------------------------------------------------------------------------- tokenizer

PAT = regex.compile(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _ranks(hf) -> dict[bytes, int]:
    out = {}
    for line in (hf / "qwen.tiktoken").read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            out[base64.b64decode(tok)] = int(rank)
    return out


def qwen_encode(ranks: dict[bytes, int], text: str) -> list[int]:
    """QWenTokenizer.tokenize written out: NFC, the specials (all allowed) split out, Qwen's regex, then per
    piece tiktoken's rank BPE (merge the adjacent pair whose concatenation has the lowest rank, until none)."""
    specials = {s: len(ranks) + i for i, s in enumerate(QWEN_SPECIALS)}
    text = unicodedata.normalize("NFC", text)
    out = []
    for chunk in regex.split("(" + "|".join(regex.escape(s) for s in specials) + ")", text):
        if chunk in specials:
            out.append(specials[chunk])
            continue
        for piece in PAT.findall(chunk):
            parts = [bytes([b]) for b in piece.encode("utf-8")]
            while len(parts) > 1:
                best = min(range(len(parts) - 1), key=lambda i: (ranks.get(parts[i] + parts[i + 1], 1 << 62), i))
                if parts[best] + parts[best + 1] not in ranks:
                    break
                parts[best:best + 2] = [parts[best] + parts[best + 1]]
            out += [ranks[p] for p in parts]
    return out


def _texts():
    lines = CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
    corpus = ["".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    extra = ["12345678901234 3.14159 0x1F 1,000,000", "a  b   c    d\t\te\n\n\n f \r\n\r\n g   \n  ",
             "   ", "\n\n", "x" * 200, "ﬁ Ⅻ ＡＢＣ é", unicodedata.normalize("NFD", "Crème brûlée, Ångström"),
             "I'm SURE they'RE 'LL 've", CHAT, "<|extra_7|><|extra_204|>text<|im_end|>"]
    return TEXTS + corpus + extra


def test_qwen_tiktoken_vocab(owl21):
    v = load_hf_vocab(_hf(owl21))
    ranks = _ranks(_hf(owl21))
    n = len(ranks)
    assert v.model == "gpt2" and v.pre == "qwen2" and not v.add_bos and v.bos_id is None
    assert v.tokens[n:n + len(QWEN_SPECIALS)] == list(QWEN_SPECIALS) and v.eos_id == n
    assert v.types[n:n + len(QWEN_SPECIALS)] == [3] * len(QWEN_SPECIALS) and set(v.types[:n]) == {1}
    assert len(v.merges) == sum(len(t) > 1 for t in ranks)
    assert v.tokens[ranks[b" the"]] == "Ġthe"


def test_tokenizer_matches_rank_bpe(owl21):
    hf = _hf(owl21)
    ranks = _ranks(hf)
    tok = _core.Tokenizer(vocab_to_dict(load_hf_vocab(hf)))
    gguf_tok = _core.Model.load(str(owl21("owl21")[1])).tokenizer       # what the GGUF carries
    texts = _texts()
    for text in texts:
        want = qwen_encode(ranks, text)
        assert tok.encode(text) == want, text[:60]
        assert tok.decode(want, render_special=True) == unicodedata.normalize("NFC", text)
        assert gguf_tok.encode(text) == want
    assert tok.encode("a<|im_start|>b", parse_special=False) != tok.encode("a<|im_start|>b")


def test_tokenizer_matches_tiktoken(owl21):
    tiktoken = pytest.importorskip("tiktoken")
    hf = _hf(owl21)
    ranks = _ranks(hf)
    enc = tiktoken.Encoding("qwen-tiny", pat_str=PAT.pattern, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(QWEN_SPECIALS)})
    tok = _core.Tokenizer(vocab_to_dict(load_hf_vocab(hf)))
    # and random strings over the characters where regex engines differ (case folding of 's / ſ, the
    # whitespace classes, numbers that are not digits, CR/LF runs)
    rng = np.random.default_rng(0)
    alphabet = list("ab ' \n\t\r1²ſK\u212a\u0085\u00a0\u3000\u2028\u200bé.!,-_'S5")
    fuzz = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))) for _ in range(1000)]
    for text in _texts() + fuzz:
        nfc = unicodedata.normalize("NFC", text)    # QWenTokenizer.tokenize normalises before tiktoken
        assert tok.encode(text) == enc.encode(nfc, allowed_special="all", disallowed_special=()), repr(text[:60])


def test_qwen_tiktoken_errors(owl21, tmp_path):
    import json
    import shutil

    src = _hf(owl21)
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(src / "tokenizer_config.json", d)
    with pytest.raises(FileNotFoundError, match="qwen.tiktoken"):
        load_hf_vocab(d)
    lines = (src / "qwen.tiktoken").read_text().splitlines()
    for bad, match in [(lines[:-2] + [lines[-1]], "ranks are not"),            # rank n-2 missing
                       (lines + [lines[300].split()[0] + " 1000"], "listed twice"),
                       (lines[:5] + ["%%% 5"] + lines[6:], "not a 'base64 rank' line"),
                       (["AAE= 0"] + lines[1:], "single bytes have no rank")]:   # b"\x00\x01" for "!"
        (d / "qwen.tiktoken").write_text("\n".join(bad) + "\n")
        with pytest.raises(ValueError, match=match):
            load_hf_vocab(d)
    # a token that is not the merge of two lower-ranked tokens ("xyz" without "xy" or "yz")
    ranks = [bytes([i]) for i in range(256)] + [b"ab", b"abc", b"xyz"]
    (d / "qwen.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "QWenTokenizer"}))
    with pytest.raises(ValueError, match="is not the merge of two lower-ranked tokens"):
        load_hf_vocab(d)
    (d / "qwen.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks[:-1])))
    v = load_hf_vocab(d)
    assert v.merges == ["a b", "ab c"] and v.tokens[256:258] == ["ab", "abc"] and v.eos_id == 258


def test_report_owl21_errors():
    for k, v in ERRORS.items():
        if k.startswith("owl2_1"):
            print(f"  {k}: {v:.3e}")
