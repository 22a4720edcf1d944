"""The C++ tokenizers against their references (HF `tokenizers`, `sentencepiece`), decoding, streaming,
the HF -> Vocab -> GGUF path and vocabulary validation. Tiny tokenizers are trained once per session."""
from __future__ import annotations

import json
import shutil
import unicodedata

import gguf
import pytest
import sentencepiece as spm
import tokenizers

import owl_cpp
from owl_cpp._core import StreamDecoder, Tokenizer
from owl_export.tiny_tokenizers import train_llama_tokenizer, train_qwen2_tokenizer
from owl_export.vocab import Vocab, load_hf_vocab, read_gguf_vocab, vocab_to_dict, write_vocab

# Not the training corpus: other sentences, scripts the corpus lacks (byte fallback), NFD input.
TEXTS = [
    "",
    " ",
    "a",
    "Hello, world!",
    "The otter floated on its back, cracking a clam against a stone on its belly.",
    "We'll see whether they've found what I'd hidden. It's HERS, isn't it? WE'RE LATE, YOU'LL SEE.",
    "Prices: $3.50, €12, ¥980 — total 1234567890 (approx. 3.14e-2%).",
    "    x = foo(bar[3], baz={'k': 7})\n\tif not x:\n\t\treturn None\n",
    "for (size_t i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\r\n",
    "spaces:   three,     five,\t\ttabs,\n\n\nnewlines\r\n\r\nCRLF   \n  \t \n",
    "   leading and trailing   ",
    "\n",
    "\t\t",
    "北京的秋天很美，但是冬天非常冷。我们下周再聊吧！",
    "週末は山に登って、温泉に入りました。とても気持ちよかったです。",
    "도서관에서 책을 빌려서 집에서 읽었어요.",
    "Ёжик в тумане искал свою лошадку.",
    "Ο καιρός σήμερα είναι υπέροχος.",
    "مساء الخير يا أصدقائي",
    "Emoji: 🦀🐍 👩🏾‍🚀 👨‍👨‍👧‍👧 🏴‍☠️ 🧑🏻‍🤝‍🧑🏿 ✍🏽 🫠",
    "Accents: São Tomé, Kraków, Ærøskøbing, Đà Nẵng, Ğüşöç",
    unicodedata.normalize("NFD", "Crème brûlée à la française, Ångström, Hà Nội"),  # decomposed input
    "e\u0301 a\u0308 o\u0323\u0302 \u1100\u1161\u11a8 \u212b \u2126",  # NFC must compose / map these
    "Unseen scripts: ሰላም ለዓለም · ქართული ენა · ᠮᠣᠩᠭᠣᠯ · ꦧꦱꦗꦮ · 𓀀𓁐𓂀 · ᚠᚢᚦᚨᚱᚲ",
    "Math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 ∮ ∯ ⊕ ⊗ ℵ₀ x² + y² = z²",
    "ﬁﬂ ① Ⅻ ½ ㎏ ｶﾀｶﾅ ＡＢＣ",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'x ''s",
    "mixed1234abc5678 ١٢٣ ٤٥٦ ०१२",
    "ZWJ\u200d and ZWSP\u200b and NBSP\u00a0 and ideographic\u3000space and NEL\u0085here",
    "<p class=\"x\">&amp;&lt;&gt;</p> {{template}} [[link]] ***bold***",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!!!!!",
]

CHAT = ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay 你好 twice<|im_end|>\n"
        "<|im_start|>assistant\n你好你好<|im_end|><|endoftext|>")


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tok_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    train_qwen2_tokenizer(root / "qwen2")
    train_llama_tokenizer(root / "llama")
    return {"qwen2": root / "qwen2", "llama": root / "llama"}


@pytest.fixture(scope="session")
def qwen(tok_dirs):
    """(HF tokenizer, owl tokenizer) for the Qwen2-style vocabulary."""
    hf = tokenizers.Tokenizer.from_file(str(tok_dirs["qwen2"] / "tokenizer.json"))
    return hf, Tokenizer(vocab_to_dict(load_hf_vocab(tok_dirs["qwen2"])))


@pytest.fixture(scope="session")
def llama(tok_dirs):
    """(sentencepiece processor, owl tokenizer) for the LLaMA-style vocabulary."""
    sp = spm.SentencePieceProcessor(model_file=str(tok_dirs["llama"] / "tokenizer.model"))
    return sp, Tokenizer(vocab_to_dict(load_hf_vocab(tok_dirs["llama"])))


def valid_vocab(**changes) -> dict:
    """A tiny well-formed gpt2 vocabulary dict; `changes` break it."""
    d = {"model": "gpt2", "pre": "qwen2", "tokens": ["a", "b", "ab", "<|end|>"], "types": [1, 1, 1, 3],
         "merges": ["a b"], "eos_id": 3}
    d.update(changes)
    return d


# ------------------------------------------------------------------------------------------- Qwen2 / HF

@pytest.mark.parametrize("text", TEXTS)
def test_qwen2_ids_match_tokenizers(qwen, text):
    hf, tok = qwen
    assert tok.encode(text) == hf.encode(text).ids
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_qwen2_special_tokens(qwen):
    hf, tok = qwen
    ids = tok.encode(CHAT)
    assert ids == hf.encode(CHAT).ids
    assert [i for i in ids if tok.is_control(i)] == [1001, 1002, 1001, 1002, 1001, 1002, 1000]
    assert tok.decode(ids, render_special=True) == CHAT
    assert tok.decode(ids) == CHAT.replace("<|im_start|>", "").replace("<|im_end|>", "").replace("<|endoftext|>", "")
    # Overlapping/partial special texts and specials glued to words.
    tricky = "<|im_start|<|im_end|>x<|im_end|><|im_start|>>>< |im_end|>"
    assert tok.encode(tricky) == hf.encode(tricky).ids
    # parse_special=False: special texts are plain text (HF: encode_special_tokens=True).
    hf.encode_special_tokens = True
    try:
        assert tok.encode(CHAT, parse_special=False) == hf.encode(CHAT).ids
    finally:
        hf.encode_special_tokens = False
    assert not any(tok.is_control(i) for i in tok.encode(CHAT, parse_special=False))
    # Qwen2 adds no BOS/EOS.
    assert tok.encode("hi", add_special=True) == tok.encode("hi", add_special=False)


def test_qwen2_long_text_matches(qwen):
    hf, tok = qwen
    text = "\n".join(TEXTS) * 20 + " " * 300 + "x" * 500
    assert tok.encode(text) == hf.encode(text).ids


# ------------------------------------------------------------------------------------------- LLaMA / sentencepiece

@pytest.mark.parametrize("text", TEXTS)
def test_llama_ids_match_sentencepiece(llama, text):
    sp, tok = llama
    assert tok.encode(text, add_special=False) == sp.encode(text)
    assert tok.encode(text) == [sp.bos_id()] + sp.encode(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == sp.decode(ids) == text  # byte fallback makes it exact


def test_llama_byte_fallback_and_specials(llama):
    sp, tok = llama
    ids = tok.encode("ሰላም 𓀀", add_special=False)
    byte_ids = [i for i in ids if tok.token_to_bytes(i) and len(tok.token_to_bytes(i)) == 1
                and tok.token_to_bytes(i)[0] >= 0x80]
    assert len(byte_ids) >= 8 and ids == sp.encode("ሰላም 𓀀")
    assert tok.token_to_bytes(sp.piece_to_id("<0xE1>")) == b"\xe1"
    # Control texts: matched only with parse_special; decode hides them unless render_special.
    assert tok.encode("a</s>b", add_special=False, parse_special=False) == sp.encode("a</s>b")
    ids = tok.encode("a</s>b", add_special=False, parse_special=True)
    assert sp.eos_id() in ids
    assert tok.decode([sp.bos_id()] + sp.encode("hi")) == "hi"
    assert tok.decode([sp.bos_id()] + sp.encode("hi"), render_special=True) == "<s> hi"


# ------------------------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("which", ["qwen", "llama"])
def test_stream_decoder_matches_decode(which, request):
    _, tok = request.getfixturevalue(which)
    split_chars = 0
    for text in TEXTS + [CHAT]:
        ids = tok.encode(text)
        for render in (False, True):
            dec = StreamDecoder(tok, render_special=render)
            pieces = [dec.push(i) for i in ids]
            pieces.append(dec.flush())
            assert "".join(pieces) == tok.decode(ids, render_special=render)
            assert all("\ufffd" not in p for p in pieces)  # never half a character
        for i in ids:
            b = tok.token_to_bytes(i)
            try:
                b.decode("utf-8")
            except UnicodeDecodeError:
                split_chars += 1
    assert split_chars > 20  # the texts do put multi-byte characters across tokens


@pytest.mark.parametrize("which", ["qwen", "llama"])
def test_invalid_utf8_and_bad_ids(which, request):
    _, tok = request.getfixturevalue(which)
    lead = next(i for i in range(tok.n_vocab) if tok.token_to_bytes(i) == b"\xe4")
    letter = next(i for i in range(tok.n_vocab) if tok.token_to_bytes(i) == b"z")
    assert tok.decode([lead]) == "\ufffd"
    assert tok.decode([lead, letter]).endswith("\ufffdz")
    dec = StreamDecoder(tok)
    assert dec.push(lead) == ""  # could still become a character
    assert dec.push(letter).endswith("\ufffdz")
    dec.push(lead)
    assert dec.flush() == "\ufffd" and dec.flush() == ""
    # Raw bytes in (C++ callers, or bytes from Python): kept byte for byte, never rejected.
    raw = b"ok \xff\xe4\xb8 \xed\xa0\x80 \xc0\xaf end"
    ids = tok.encode(raw, add_special=False)
    assert tok.decode(ids) == raw.decode("utf-8", "replace")
    n = tok.n_vocab
    for bad in (n, -1, 2**40, 10**30):
        with pytest.raises(IndexError):
            tok.decode([0, bad])
        with pytest.raises(IndexError):
            tok.token_to_bytes(bad)
        with pytest.raises(IndexError):
            tok.is_control(bad)
        with pytest.raises(IndexError):
            StreamDecoder(tok).push(bad)
    with pytest.raises(TypeError):
        tok.decode(["a"])


# ------------------------------------------------------------------------------------------- HF vocab / GGUF

def test_load_hf_vocab_qwen2_dense_layout(tok_dirs, tmp_path):
    v = load_hf_vocab(tok_dirs["qwen2"])
    assert (v.model, v.pre, len(v.tokens), v.scores) == ("gpt2", "qwen2", 1003, [])
    assert v.tokens[1000:] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert v.types == [1] * 1000 + [3, 3, 3]
    assert (v.bos_id, v.eos_id, v.pad_id, v.unk_id, v.add_bos, v.add_eos) == (None, 1002, 1000, None, False, False)
    assert all(m.count(" ") == 1 for m in v.merges) and len(v.merges) > 500

    # A published-style directory: config.json pads the embedding, an extra non-special added token
    # leaves a gap, merges stored as "a b" strings instead of pairs.
    d = tmp_path / "qwen2"
    shutil.copytree(tok_dirs["qwen2"], d)
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    tj["added_tokens"].append({"id": 1010, "content": "<tool_call>", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": False})
    tj["model"]["merges"] = [" ".join(m) for m in tj["model"]["merges"]]
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    (d / "config.json").write_text(json.dumps({"vocab_size": 1024, "bos_token_id": 1000, "eos_token_id": 1002}))
    w = load_hf_vocab(d)
    assert len(w.tokens) == len(w.types) == 1024
    assert w.tokens[1003:1006] == ["[PAD1003]", "[PAD1004]", "[PAD1005]"] and w.tokens[1023] == "[PAD1023]"
    assert w.tokens[1010] == "<tool_call>" and w.types[1010] == 4
    assert w.types[1003:1010] == [5] * 7 and w.types[1011:] == [5] * 13
    assert w.merges == v.merges and (w.bos_id, w.eos_id) == (1000, 1002)
    tok = Tokenizer(vocab_to_dict(w))
    assert tok.encode("a<tool_call>b", parse_special=False)[1] == 1010  # user-defined: always matched

    # Slow-tokenizer files only (vocab.json + merges.txt + added_tokens_decoder): same vocabulary.
    (d / "tokenizer.json").unlink()
    (d / "config.json").unlink()
    assert load_hf_vocab(d) == v


def test_load_hf_vocab_llama(tok_dirs, llama):
    sp, _ = llama
    v = load_hf_vocab(tok_dirs["llama"])
    assert (v.model, len(v.tokens), v.merges) == ("llama", sp.get_piece_size(), [])
    assert v.tokens == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert v.scores == [sp.get_score(i) for i in range(sp.get_piece_size())]
    assert v.types[:3] == [2, 3, 3] and v.types[3:259] == [6] * 256 and set(v.types[259:]) == {1}
    assert (v.bos_id, v.eos_id, v.unk_id, v.pad_id) == (1, 2, 0, None)
    assert (v.add_bos, v.add_eos, v.add_space_prefix) == (True, False, True)


def test_load_hf_vocab_errors(tok_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        load_hf_vocab(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_hf_vocab(tmp_path / "missing")
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_hf_vocab(bad)
    slow = tmp_path / "slow"
    slow.mkdir()
    shutil.copy(tok_dirs["qwen2"] / "vocab.json", slow)
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_hf_vocab(slow)
    sp = tmp_path / "sp"
    sp.mkdir()
    (sp / "tokenizer.model").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ValueError, match="tokenizer.model"):
        load_hf_vocab(sp)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_gguf_round_trip(tok_dirs, tmp_path, arch):
    v = load_hf_vocab(tok_dirs[arch])
    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    write_vocab(writer, v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = read_gguf_vocab(gguf.GGUFReader(str(path)))
    assert back == v
    text = TEXTS[4] + TEXTS[13]
    assert Tokenizer(vocab_to_dict(back)).encode(text) == Tokenizer(vocab_to_dict(v)).encode(text)


# ------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, message", [
    ({"model": "t5"}, "unsupported tokenizer model 't5'"),
    ({"model": "bert"}, "unknown_token_id is required"),
    ({"merges": ["a c"]}, "'c'"),
    ({"merges": ["b a"]}, "'ba'"),
    ({"merges": ["ab"]}, "merges\\[0\\]"),
    ({"scores": [0.0, 1.0]}, "scores"),
    ({"types": [1, 1]}, "token_type"),
    ({"types": [1, 1, 1, 9]}, "token_type\\[3\\]"),
    ({"bos_id": 4}, "bos_token_id"),
    ({"eos_id": -7}, "eos_token_id"),
    ({"add_bos": True}, "bos_token_id"),
    ({"pre": "no-such-pre"}, r"unsupported pre-tokenizer .no-such-pre. .*supported: default, gpt2, gpt-2, .*smollm.*llama-bpe.*tekken\)"),
    ({"tokens": []}, "empty"),
    ({"model": "llama", "merges": [], "scores": []}, "scores"),
])
def test_bad_vocabularies_raise_format_error(changes, message):
    with pytest.raises(owl_cpp.FormatError, match=message) as info:
        Tokenizer(valid_vocab(**changes))
    assert isinstance(info.value, ValueError)


def test_vocab_dict_keys():
    Tokenizer(valid_vocab())  # the baseline is fine
    for key in ("tokens", "model"):
        d = valid_vocab()
        del d[key]
        with pytest.raises(owl_cpp.FormatError, match=key):
            Tokenizer(d)
    with pytest.raises(owl_cpp.FormatError, match="typo"):
        Tokenizer(valid_vocab(typo=1))
    with pytest.raises(owl_cpp.FormatError, match="tokens"):
        Tokenizer(valid_vocab(tokens="abc"[0]))
    tok = Tokenizer(vocab_to_dict(Vocab(model="gpt2", pre="qwen2", tokens=["a", "b", "ab"], merges=["a b"])))
    assert tok.encode("abba") == [2, 1, 0] and tok.n_vocab == 3 and tok.bos_id is None


def test_training_is_deterministic(tok_dirs, tmp_path):
    train_qwen2_tokenizer(tmp_path / "again")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (tok_dirs["qwen2"] / name).read_bytes()
