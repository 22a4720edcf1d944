"""The runtime's WordPiece tokenizer (tokenizer model "bert", mPLUG-2's bert-large-uncased vocabulary) against the
Python reference (owl_export.mplug2.tokenizer.BertWordPiece) and HF `tokenizers` (WordPiece + BertNormalizer +
BertPreTokenizer): ids on awkward and random text, decode and streaming against the reference's decode, hostile
input, and loading from GGUF. Vocabularies: one trained with `tokenizers`' WordPiece trainer on a generated corpus
(3000 entries plus a few decode-only tokens) and the fixture vocabulary tiny_vocab()."""
from __future__ import annotations

import random
import unicodedata

import gguf
import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

import owl_cpp
from gguf_edit import ARRAY, BOOL, INT32, STRING, UINT32, rewrite
from owl_cpp._core import Model, StreamDecoder, Tokenizer
from owl_export.mplug2.fixtures import tiny_vocab
from owl_export.mplug2.tokenizer import BertWordPiece
from owl_export.vocab import read_gguf_vocab, vocab_to_dict, wordpiece_vocab, write_vocab

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Tokens encode never produces but decode must handle: the clean-up rules' pieces.
DECODE_ONLY = ["n't", "'s", "'m", "'ve", "'re", "##s", "##m", "##ve", "##re", "##t", "re", "ve", "s", "m", "t", "n",
               "##.", ".x", "...", "##'", "σ", "ς", "##ς", "do", "a", "man", "play", "##ing"]


def _corpus(rng: random.Random) -> list[str]:
    syll = ["ka", "lo", "mi", "ne", "ru", "sta", "pre", "con", "ing", "ed", "tion", "er", "ly", "un", "re", "the",
            "and", "of", "play", "man", "wo", "vid", "eo", "cat", "dog", "run", "walk", "talk", "ca", "fe", "na", "ive",
            "ang", "str", "om"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice([".", "!", "?", ",", ""])
             for _ in range(20000)]
    # Other scripts and accents, so the vocabulary has Greek (both sigmas), Cyrillic, CJK and digits.
    lines += ["café naïve ångström σοφία οδος ΟΔΟΣ москва 你好世界 中文 日本語 東京 don't it's I'm we've 123 4567 3.14"] * 50
    return lines


@pytest.fixture(scope="module")
def trained_vocab() -> list[str]:
    tok = tokenizers.BertWordPieceTokenizer(lowercase=True, strip_accents=True, clean_text=True,
                                            handle_chinese_chars=True)
    tok.train_from_iterator(_corpus(random.Random(0)), vocab_size=3000, min_frequency=2, special_tokens=SPECIALS,
                            limit_alphabet=500, wordpieces_prefix="##", show_progress=False)
    v = tok.get_vocab()
    vocab = sorted(v, key=v.get)
    assert vocab[:5] == SPECIALS and len(vocab) == 3000
    return vocab + [t for t in DECODE_ONLY if t not in v]


@pytest.fixture(scope="module", params=["trained", "tiny"])
def vocab(request, trained_vocab) -> list[str]:
    return trained_vocab if request.param == "trained" else tiny_vocab()


class Refs:
    """The three tokenizers of one vocabulary."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.ours = Tokenizer(vocab_to_dict(wordpiece_vocab(vocab)))
        self.ref = BertWordPiece(vocab)
        hf = tokenizers.Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                                   max_input_chars_per_word=100))
        hf.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True,
                                                   lowercase=True)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        self.hf = hf
        self.cls = vocab.index("[CLS]")

    def encode(self, text: str) -> list[int]:
        return self.ours.encode(text, add_special=True, parse_special=False)

    def hf_encode(self, text: str) -> list[int]:
        return [self.cls] + self.hf.encode(text, add_special_tokens=False).ids

    def check(self, text: str) -> None:
        """Same ids as the reference and as `tokenizers`, where they follow BertTokenizer (see
        test_other_categories_are_dropped_like_transformers and the capital sigma in test_known_segmentations)."""
        ours = self.encode(text)
        assert ours == self.ref.encode(_drop(text, "Co", "Cn")), repr(text)
        if "\u03a3" not in text:  # `tokenizers` lowercases char by char: always σ, never the final ς
            assert ours == self.hf_encode(_drop(text, "Cn")), repr(text)


@pytest.fixture(scope="module")
def refs(vocab) -> Refs:
    return Refs(vocab)


LONG = "pneumonoultramicroscopicsilicovolcanoconiosis"
TEXTS = [
    "a video of a man playing a guitar",
    "Café naïve Ångström résumé CRÈME BRÛLÉE façade",
    "ÀÁÂÃÄÅ àáâãäå ÈÉÊË ìíîï ÑÒÓÔÕÖ ùúûü ÿ Ç ç",
    "e\u0301 combining acute, a\u0308\u0304 stacked marks, \u0301 alone",
    "你好世界 中文字 日本語の東京 한국어 조선말",
    "mixed中文and english中",
    "emoji 😀😃 🎉🎊 👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷",
    "punctuation!!! ??? ... ,,, ;;; --- ((())) [[]] {{}} <<>> \"quoted\" 'single' `back`",
    "don't it's I'm we've they're can't won't y'all o'clock",
    "digits 0123456789 3.14159 1,000,000 12:30 2024-01-01 #1 $5 50% 1/2",
    "control\x00chars\x01\x02\x07\x1b\x7f\x80\x9f here\u200b\u200c\u200d\ufeff",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em\u3000ideographic\u2028line\u2029para   runs",
    "    leading and trailing    ",
    "",
    " ",
    "\t\n\r",
    LONG,
    LONG * 3,
    "x" * 100,
    "x" * 101,
    "a" * 99 + "é",
    "MiXeD CaSe WoRdS HeLLo WORLD",
    "ΟΔΟΣ ΟΔΟΣ. ΣΑΣ Σ ΑΣ' Α.Σ σοφία ΣΟΦΙΑ",
    "İstanbul ıi İ I",
    "ﬁ ﬂ ligatures Ⅷ ① ²³ ½ fullwidth ＡＢＣ１２３",
    "greek ᾼ ᾳ ῼ Ἀθῆναι",
    "qwxzv zzzqqq unknownwords xylophone",
    "¿Qué? ¡Hola! «guillemets» „quotes“ — dash – en‐dash …",
    "math ∑∫√ ≤≥≠ ±×÷ °C №",
    "\ufffd replacement \ufffd",
    "a.b,c;d:e!f?g",
    "[CLS] literal [SEP] specials [MASK] [UNK] [PAD]",
    "##not a continuation ##",
    "the cat sat on the mat. the dog ran! a man walks?",
]


def _drop(text: str, *categories: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in categories)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_ids_match_reference_and_tokenizers(refs, text):
    refs.check(text)


# Code points from blocks assigned long ago (so the Unicode versions of Python and of the Rust crates inside
# `tokenizers` agree on them), weighted toward what BERT treats specially.
_POOL = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 4
         + list(" \t\n\r\x0b\x0c\x00\x01\x1c\x1f\x7f\x85\xa0\xad") + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") * 2
         + [chr(c) for c in range(0xC0, 0x180)] + [chr(c) for c in range(0x300, 0x370)]
         + [chr(c) for c in range(0x391, 0x3CA)] + [chr(c) for c in range(0x410, 0x450)]
         + [chr(c) for c in range(0x2000, 0x2065)] + [chr(c) for c in range(0x3000, 0x3040)]
         + [chr(c) for c in range(0x4E00, 0x4E80)] + [chr(c) for c in range(0xAC00, 0xAC40)]
         + [chr(c) for c in range(0xFF01, 0xFF5F)] + [chr(c) for c in range(0x1F600, 0x1F650)]
         + ["\u0130", "\u03a3", "\ufffd", "\ufeff", "\u1fbc", "\u1e9e", "\u2126", "\u212b", "\uf900", "\u0345"])


def _random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_POOL) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_random_text_matches_reference_and_tokenizers(refs):
    for text in _random_texts(1, 400):
        refs.check(text)


def test_random_words_from_the_vocabulary(trained_vocab):
    """Sentences glued from real pieces exercise the longest-match search (not only single characters / [UNK])."""
    r = Refs(trained_vocab)
    rng = random.Random(2)
    pieces = [t for t in trained_vocab if not t.startswith("[")]
    for _ in range(300):
        words = []
        for _ in range(rng.randint(1, 8)):
            w = "".join(rng.choice(pieces).removeprefix("##") for _ in range(rng.randint(1, 4)))
            words.append(w.upper() if rng.random() < 0.2 else w)
        text = rng.choice([" ", "  ", "\t", ", ", ". "]).join(words)
        r.check(text)


def test_known_segmentations(trained_vocab):
    """Fixed expectations that do not lean on either reference."""
    r = Refs(trained_vocab)
    ids = {t: i for i, t in enumerate(trained_vocab)}
    assert r.encode("") == [ids["[CLS]"]]
    assert r.ours.encode("", add_special=False, parse_special=False) == []
    assert r.encode("x" * 101) == [ids["[CLS]"], ids["[UNK]"]]            # over max_input_chars_per_word
    assert r.encode("ΟΔΟΣ") == r.encode("οδος")                          # final sigma, as str.lower
    assert r.encode("ΑΣ'Β") == r.encode("ασ'β")                          # ' is case-ignorable: not final
    assert "".join(r.ref.tokenize("ΟΔΟΣ")).endswith("ς") and r.encode("ΣΟΦΙΑ") == r.encode("σοφια")
    assert r.encode("Ç\u0301") == r.encode("c")                            # NFD, marks dropped
    assert r.encode("\x00\ufffd\u200b") == [ids["[CLS]"]]                  # removed by clean-up
    assert r.encode("a\u3000b") == r.encode("a b")                         # Zs is a space


def test_other_categories_are_dropped_like_transformers(refs):
    """The official BertTokenizer imports transformers' _is_control, which drops every C* character: private
    use (Co) and unassigned (Cn) included; the runtime does the same. `tokenizers` keeps Cn, and the reference
    BertWordPiece in export/ keeps Co and Cn (Google BERT's original Cc/Cf rule): these strings are where they
    differ."""
    for text in ["a\ue000b", "x\U000f0000y \U0010fffd", "un\u0378assigned", "\ue000", "b\u03a2c"]:
        assert _drop(text, "Co", "Cn") != text
        ours = refs.encode(text)
        assert ours == refs.encode(_drop(text, "Co", "Cn"))
        assert ours == refs.ref.encode(_drop(text, "Co", "Cn")) == refs.hf_encode(_drop(text, "Cn"))


def test_parse_special(refs):
    ids = {t: i for i, t in enumerate(refs.vocab)}
    text = "[CLS] hello [SEP] [MASK]x [UNK]"
    got = refs.ours.encode(text, add_special=False, parse_special=True)
    # Control tokens ([CLS] [SEP] [PAD] [MASK]) are matched as single tokens; [UNK] (type UNKNOWN) is text.
    assert got[0] == ids["[CLS]"] and ids["[SEP]"] in got and ids["[MASK]"] in got
    assert got == ([ids["[CLS]"]] + refs.ref.encode(" hello ", add_cls=False) + [ids["[SEP]"], ids["[MASK]"]]
                   + refs.ref.encode("x [UNK]", add_cls=False))
    assert refs.ours.encode(text, add_special=False, parse_special=False) == refs.ref.encode(text, add_cls=False)


# ------------------------------------------------------------------------------------------------- decode

def _stream(tok: Tokenizer, ids: list[int], render_special: bool) -> tuple[str, list[str]]:
    dec = StreamDecoder(tok, render_special)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    return "".join(pieces), pieces


def _hidden(vocab: list[str]) -> set[int]:
    return {i for i, t in enumerate(vocab) if t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")}


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_decode_matches_reference(refs, text):
    ids = refs.encode(text)
    hidden = _hidden(refs.vocab)
    assert refs.ours.decode(ids, render_special=True) == refs.ref.decode(ids)
    assert refs.ours.decode(ids) == refs.ref.decode([i for i in ids if i not in hidden])
    for render in (False, True):
        assert _stream(refs.ours, ids, render)[0] == refs.ours.decode(ids, render_special=render)


def test_decode_examples(trained_vocab):
    r = Refs(trained_vocab)
    enc = lambda s: r.ours.encode(s, add_special=False, parse_special=False)  # noqa: E731
    assert r.ours.decode(enc("Don't stop, it's ok. Really?! I'm here")) == "don't stop, it's ok. really?! i'm here"
    assert r.ours.decode(enc("Café playing")) == "cafe playing"
    ids = {t: i for i, t in enumerate(trained_vocab)}
    seq = [ids[t] for t in ("[CLS]", "play", "##ing", "[SEP]")]
    assert r.ours.decode(seq) == "playing"
    assert r.ours.decode(seq, render_special=True) == "[CLS] playing [SEP]"
    # token_to_bytes: what a token adds after another one.
    assert r.ours.token_to_bytes(ids["play"], False) == b" play"
    assert r.ours.token_to_bytes(ids["##ing"], False) == b"ing"
    assert r.ours.token_to_bytes(ids["."], False) == b"."
    assert r.ours.token_to_bytes(ids["[SEP]"], False) == b""
    assert r.ours.token_to_bytes(ids["[SEP]"], True) == b" [SEP]"


def test_decode_random_sequences_and_streaming(trained_vocab):
    """Random id sequences rich in what the clean-up rules touch (' n t s m re ve . , ? ! ## specials): decode is
    the reference's decode, the stream concatenates to it, and the stream never holds back more than the tail
    a later token could change."""
    r = Refs(trained_vocab)
    ids = {t: i for i, t in enumerate(trained_vocab)}
    hot = [ids[t] for t in ["'", "n", "t", "s", "m", "re", "ve", ".", ",", "?", "!", "##s", "##m", "##re", "##ve",
                            "##t", "n't", "'s", "'m", "'ve", "'re", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]",
                            "##.", ".x", "...", "##'", "a", "do", "man", "play", "##ing"]]
    rng = random.Random(3)
    hidden = _hidden(trained_vocab)
    for _ in range(3000):
        seq = [rng.choice(hot) if rng.random() < 0.8 else rng.randrange(len(trained_vocab))
               for _ in range(rng.randint(0, 12))]
        for render in (False, True):
            want = r.ref.decode(seq if render else [i for i in seq if i not in hidden])
            assert r.ours.decode(seq, render_special=render) == want, (seq, render)
            text, pieces = _stream(r.ours, seq, render)
            assert text == want, (seq, render)
            # What went out after k tokens is a prefix of the decode of those k tokens.
            for k in range(1, len(seq) + 1):
                sent = "".join(pieces[:k])
                assert r.ours.decode(seq[:k], render_special=render).startswith(sent), (seq, k)


def test_streaming_lag_is_small(trained_vocab):
    """Plain words stream as they come; only a tail that a later token may glue ("n" before "'t", a "'")
    waits."""
    r = Refs(trained_vocab)
    ids = {t: i for i, t in enumerate(trained_vocab)}
    dec = StreamDecoder(r.ours, False)
    assert [dec.push(ids[t]) for t in ("[CLS]", "a", "man", "play", "##ing", ".")] == ["", "a", " man", " play",
                                                                                        "ing", "."]
    dec = StreamDecoder(r.ours, False)
    assert [dec.push(ids[t]) for t in ("do", "n", "'", "t", "play")] == ["do", "", "", "n't", " play"]
    assert dec.flush() == ""
    dec = StreamDecoder(r.ours, False)
    assert [dec.push(ids[t]) for t in ("man", "'", "s")] == ["man", "", "'s"]
    dec = StreamDecoder(r.ours, False)
    assert [dec.push(ids[t]) for t in ("man", "'")] + [dec.flush()] == ["man", "", " '"]


# --------------------------------------------------------------------------------------------- hostile input

def test_invalid_utf8_is_dropped_like_replacement_characters(refs):
    for raw in [b"caf\xc3 ok", b"\xff\xfe\xfd", b"ab\x80cd", b"\xed\xa0\x80x", b"\xf4\x90\x80\x80y", b"z\xe4\xb8",
                b"\xc3\xa9\xe4"]:
        assert refs.ours.encode(raw, True, False) == refs.ref.encode(raw.decode("utf-8", "replace")), raw


def test_long_inputs(refs):
    big_word = "é" * 200_000
    assert refs.encode(big_word) == [refs.cls, refs.vocab.index("[UNK]")]
    text = ("the cat sat on the mat, naïve café! " * 5000)
    assert refs.encode(text) == refs.ref.encode(text)
    ids, hidden = refs.encode(text), _hidden(refs.vocab)
    assert refs.ours.decode(ids) == refs.ref.decode([i for i in ids if i not in hidden])


def test_bad_vocabularies():
    base = wordpiece_vocab(tiny_vocab())
    d = vocab_to_dict(base)
    with pytest.raises(owl_cpp.FormatError, match="unknown_token_id is required.*bert"):
        Tokenizer({**d, "unk_id": None})
    with pytest.raises(owl_cpp.FormatError, match="bos_token_id"):
        Tokenizer({**d, "bos_id": None})                     # add_bos without [CLS]
    with pytest.raises(owl_cpp.FormatError, match="unknown_token_id"):
        Tokenizer({**d, "unk_id": len(base.tokens)})
    for missing in ("[UNK]", "[CLS]", "[SEP]"):
        with pytest.raises(ValueError, match=missing.replace("[", r"\[").replace("]", r"\]")):
            wordpiece_vocab([t for t in tiny_vocab() if t != missing])
    # Without [CLS] and without add_bos the tokenizer works, adding nothing.
    vocab = ["[UNK]", "a", "##b"]
    t = Tokenizer({"model": "bert", "tokens": vocab, "unk_id": 0})
    assert t.encode("ab c", True, False) == [1, 2, 0]
    assert t.decode([1, 2, 0]) == "ab [UNK]"  # no token types: every token is normal text


def test_bad_ids(refs):
    with pytest.raises(IndexError):
        refs.ours.decode([len(refs.vocab)])
    with pytest.raises(IndexError):
        refs.ours.token_to_bytes(-1)
    dec = StreamDecoder(refs.ours, False)
    with pytest.raises(IndexError):
        dec.push(len(refs.vocab))
    assert dec.push(refs.vocab.index("[CLS]")) == "" and dec.flush() == ""


def test_duplicate_tokens_take_the_last_id():
    """As BERT's vocab dict ({token: index}) and the reference do."""
    vocab = ["[UNK]", "[CLS]", "[SEP]", "dup", "x", "dup"]
    t = Tokenizer(vocab_to_dict(wordpiece_vocab(vocab)))
    assert t.encode("dup", True, False) == BertWordPiece(vocab).encode("dup") == [1, 5]


# ------------------------------------------------------------------------------------------------------ GGUF

def _write_gguf(path, vocab: list[str]):
    writer = gguf.GGUFWriter(str(path), "mplug2")
    write_vocab(writer, wordpiece_vocab(vocab))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_round_trip(tmp_path, trained_vocab):
    path = tmp_path / "wpm.gguf"
    _write_gguf(path, trained_vocab)
    back = read_gguf_vocab(gguf.GGUFReader(str(path)))
    assert back == wordpiece_vocab(trained_vocab)
    r = Refs(trained_vocab)
    from_file = Tokenizer.from_gguf(str(path))
    assert from_file.model == "bert" and from_file.bos_id == r.cls and len(from_file) == len(trained_vocab)
    for text in TEXTS + _random_texts(4, 50):
        assert from_file.encode(text, True, False) == r.encode(text)
    ids = r.encode(TEXTS[8])
    assert from_file.decode(ids) == r.ours.decode(ids)


def test_model_tokenizer_from_gguf(tmp_path, tiny_gguf):
    """Model.tokenizer of a GGUF whose tokenizer keys are a WordPiece vocabulary (a tiny llama's weights with
    the mPLUG-2 keys swapped in: the tokenizer path does not depend on the architecture)."""
    vocab = tiny_vocab()
    src = tiny_gguf("llama")
    n_rows = Model.load(str(src)).hparams["n_vocab"]
    assert n_rows >= len(vocab)
    v = wordpiece_vocab(vocab)
    path = rewrite(src, tmp_path / "bert-tok.gguf",
                   set_keys={"tokenizer.ggml.model": (STRING, "bert"),
                             "tokenizer.ggml.tokens": (ARRAY, v.tokens, STRING),
                             "tokenizer.ggml.token_type": (ARRAY, v.types, INT32),
                             "tokenizer.ggml.bos_token_id": (UINT32, v.bos_id),
                             "tokenizer.ggml.eos_token_id": (UINT32, v.eos_id),
                             "tokenizer.ggml.unknown_token_id": (UINT32, v.unk_id),
                             "tokenizer.ggml.padding_token_id": (UINT32, v.pad_id),
                             "tokenizer.ggml.add_bos_token": (BOOL, True),
                             "tokenizer.ggml.add_eos_token": (BOOL, False)},
                   drop=("tokenizer.ggml.scores", "tokenizer.ggml.merges", "tokenizer.ggml.pre",
                         "tokenizer.ggml.add_space_prefix"))
    tok = Model.load(str(path)).tokenizer
    ref = BertWordPiece(vocab)
    assert tok.model == "bert"
    for text in TEXTS:
        assert tok.encode(text, True, False) == ref.encode(text)
    ids = ref.encode("a video of a man playing. don't stop!")
    assert tok.decode(ids, render_special=True) == ref.decode(ids)


# ------------------------------------------------------------------------------------------- Unicode tables

def _every_char() -> str:
    return "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


def _transformers_class(ch: str) -> int:
    """transformers' BasicTokenizer predicates as one number (the layout of _testing.unicode.bert_class)."""
    cat, cp = unicodedata.category(ch), ord(ch)
    if ch in "\t\n\r" or cat == "Zs":
        return 2
    if cat[0] == "C":
        return 1
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or cat[0] == "P":
        return 3
    return 4 if cat == "Mn" else 0


def test_unicode_tables_match_python_on_every_code_point():
    from owl_cpp._testing import unicode as u
    assert u.bert_unicode_version == unicodedata.unidata_version
    every = _every_char()
    assert u.python_lower(every) == every.lower()
    assert u.nfd(every) == unicodedata.normalize("NFD", every)
    assert [u.bert_class(ord(c)) for c in every] == [_transformers_class(c) for c in every]
    spaced = " ".join(every)
    assert u.bert_basic_tokens(spaced) == BertWordPiece(["[CLS]", "[SEP]"]).basic_tokens(_drop(spaced, "Co", "Cn"))


def test_final_sigma_like_str_lower():
    """The final-sigma context (cased letter before, none after, case-ignorables skipped) on random strings."""
    from owl_cpp._testing import unicode as u
    pool = ["Σ", "Σ", "Σ", "A", "a", "Ω", "1", " ", ".", "'", ":", "^", "\u0301", "\u00ad", "\u2019", "\u0345",
            "\u02b0", "ǅ", "\u1fbc", "\u0130", "中", "-"]
    rng = random.Random(5)
    for _ in range(5000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
        assert u.python_lower(s) == s.lower(), repr(s)
