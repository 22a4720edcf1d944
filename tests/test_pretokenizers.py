"""Every byte-level BPE pre-tokenizer (tokenizer.ggml.pre) against HF `tokenizers`: for each name a tiny BPE is
trained with the pre-tokenizer configuration the published models use, its vocab and merges are written into a
GGUF with that tokenizer.ggml.pre, and the ids owl_cpp gives must be the ids `tokenizers` gives on awkward text.
The split pieces themselves are also checked against Python's `regex` module running llama.cpp's regex lists."""
from __future__ import annotations

import json
import unicodedata

import gguf
import pytest
import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers, trainers

import owl_cpp
from owl_cpp._core import Tokenizer
from owl_cpp._testing import unicode as ou
from owl_export.tiny_tokenizers import corpus_lines
from owl_export.vocab import Vocab, load_hf_vocab, vocab_to_dict, write_vocab

regex = pytest.importorskip("regex")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# The regexes as the published tokenizer.json files write them (llama.cpp's llama-vocab.cpp lists the same,
# sometimes rewritten for std::regex).
from owl_export.pretokenizers import (DEEPSEEK_CODER, DEEPSEEK_LLM, DEEPSEEK_V3, DEFAULT, GPT2, GPT4O,  # noqa: E402
                                      LLAMA3, QWEN2, TEKKEN)


def split_steps(patterns):
    return [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in patterns]


def byte_level(use_regex):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def starcoder_like():
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)])


def splits_then_bytes(patterns):
    return pre_tokenizers.Sequence(split_steps(patterns) + [byte_level(False)])


# name -> (HF normalizer, HF pre-tokenizer, ignore_merges, the regex list owl_cpp's pieces follow)
CASES = {
    "default": (None, lambda: splits_then_bytes(DEFAULT), False, DEFAULT),
    "gpt2": (None, lambda: byte_level(True), False, [GPT2]),
    "gpt-2": (None, lambda: byte_level(True), False, [GPT2]),
    "mpt": (None, lambda: byte_level(True), False, [GPT2]),
    "olmo": (None, lambda: byte_level(True), False, [GPT2]),
    "starcoder": (None, starcoder_like, False, [r"\p{N}", GPT2]),
    "smollm": (None, starcoder_like, False, [r"\p{N}", GPT2]),
    "refact": (None, starcoder_like, False, [r"\p{N}", GPT2]),
    "command-r": ("nfc", starcoder_like, False, [r"\p{N}", GPT2]),
    # Falcon cuts digits (and [0-9]{3}) after the byte-level map; its pieces before that follow these two.
    "falcon": (None, lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation("contiguous"), byte_level(True), pre_tokenizers.Digits(individual_digits=False),
        *split_steps(["[0-9][0-9][0-9]"])]), False, [r"[\p{P}\$\+<=>\^~\|`]+", GPT2]),
    "llama-bpe": (None, lambda: splits_then_bytes([LLAMA3]), True, [LLAMA3]),
    "llama3": (None, lambda: splits_then_bytes([LLAMA3]), True, [LLAMA3]),
    "llama-v3": (None, lambda: splits_then_bytes([LLAMA3]), True, [LLAMA3]),
    "dbrx": (None, lambda: splits_then_bytes([LLAMA3]), False, [LLAMA3]),
    "smaug-bpe": (None, lambda: splits_then_bytes([LLAMA3]), False, [LLAMA3]),
    "qwen2": ("nfc", lambda: splits_then_bytes([QWEN2]), False, [QWEN2]),
    "stablelm2": (None, lambda: splits_then_bytes([QWEN2]), False, [QWEN2]),
    "deepseek-llm": (None, lambda: splits_then_bytes(DEEPSEEK_LLM), False, DEEPSEEK_LLM),
    "deepseek-coder": (None, lambda: splits_then_bytes(DEEPSEEK_CODER), False, DEEPSEEK_CODER),
    "deepseek-v3": (None, lambda: splits_then_bytes(DEEPSEEK_V3), False, DEEPSEEK_V3),
    "gpt-4o": (None, lambda: splits_then_bytes([GPT4O]), False, [GPT4O]),
    "tekken": (None, lambda: splits_then_bytes([TEKKEN]), True, [TEKKEN]),
}

# ------------------------------------------------------------------------------------- the corpus

AWKWARD = [
    "", " ", "a", "  leading spaces", "trailing spaces   ", "\n", "\r\n", "\t\t", "   \n\n\n   ",
    # digit runs of 1..10, in and around words
    " ".join("1234567890"[:n] for n in range(1, 11)),
    "v1.2.3 3.14159 x=10000000;y=7 2024-06-01T12:30:45Z 0x1F600 1e-10 $1,234,567.89 99% a1b22c333d4444",
    "12345678901234567890 007 42nd 3rd",
    # non-ASCII digits, numerals, fractions (several UTF-8 bytes are digits after the byte-level map)
    "١٢٣ ٤٥٦ ०१२३ ௧௨ Ⅻ ⅷ ① ½ ¼ ¾ x² y³ ¹ 𝟙𝟚𝟛",
    "ü ó ù ò ý þ ² ³ ¹ ¼ ½ ¾ Müller Straße Ångström naïve café résumé",
    # CJK, kana, hangul, full-width
    "北京的秋天很美，但是冬天非常冷。我们下周再聊吧！",
    "週末は山に登って、温泉に入りました。カタカナ ｶﾀｶﾅ ＡＢＣ１２３！？",
    "도서관에서 책을 빌려서 집에서 읽었어요. 한국어123",
    "中文English混合mixed日本語テキスト한국어text",
    # emoji, ZWJ sequences, flags, skin tones, variation selectors
    "Emoji: 🦀🐍 👩🏾‍🚀 👨‍👨‍👧‍👧 🏴‍☠️ 🧑🏻‍🤝‍🧑🏿 ✍🏽 🫠 🇫🇷🇯🇵 ❤️‍🔥 1️⃣",
    "ZWJ\u200d and ZWSP\u200b and NBSP\u00a0 and ideographic\u3000space and NEL\u0085here\u2028line\u2029para",
    # whitespace runs
    "spaces:   three,     five,\t\ttabs,\n\n\nnewlines\r\n\r\nCRLF   \n  \t \n",
    "a \n b \r\n c\t\n d  \n\n  e\r\rf \t \t g",
    "    x = foo(bar[3], baz={'k': 7})\n\tif not x:\n\t\treturn None\n",
    # contractions, both cases, and look-alikes
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'Ll 'lL 'x ''s",
    "We'll see whether they've found what I'd hidden. It's HERS, isn't it? WE'RE LATE, YOU'LL SEE. I'M O'NEILL",
    "it'ſ ſtop 'ſ ’s don’t",
    # letters by case (GPT-4o / Tekken split on case changes)
    "HelloWorld XMLHttpRequest iPhone ÉCOLE École camelCaseWord SCREAMING_SNAKE_CASE ǅemal ǈubljana Ǳ",
    "ΣΊΣΥΦΟΣ σίσυφος Ὅμηρος ᾼᾳ ДОМ дом Ёлка",
    # accents and combining marks, composed and decomposed
    "Accents: São Tomé, Kraków, Ærøskøbing, Đà Nẵng, Ğüşöç",
    unicodedata.normalize("NFD", "Crème brûlée à la française, Ångström, Hà Nội"),
    "e\u0301 a\u0308 o\u0323\u0302 \u0301x \u0301 \u1100\u1161\u11a8 \u212b \u2126 \u212a",
    "हिन्दी भाषा ภาษาไทย العربية עברית",
    # punctuation and symbol runs
    "<p class=\"x\">&amp;&lt;&gt;</p> {{template}} [[link]] ***bold*** ... !!! ??? --- ___ ~~~ ``` ''' \"\"\"",
    "$$$ +++ <=> ^^ ~~ || `` @#% a/b//c\n/d /// \\\\ ©®™ → ⇒ ∀∃ ≤≥ ¿¡ «» „“ —–",
    "for (size_t i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\r\n",
    "Prices: $3.50, €12, ¥980 — total (approx. 3.14e-2%).",
    # mixed scripts and odd characters
    "Ёжик в тумане, Ο καιρός, مساء الخير, ሰላም ለዓለም, ქართული, 𓀀𓁐",
    "Math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ ∯ ⊕ ⊗ ℵ₀ ﬁﬂ ㎏",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!!!!!!!!!!!!!!  ",
]


def training_texts():
    lines = corpus_lines()
    chunks = ["\n".join(lines[i:i + 8]) + "\n" for i in range(0, len(lines), 8)]
    return chunks + AWKWARD * 3  # the awkward strings too, so their merges exist


# ------------------------------------------------------------------------------------- fixtures

def hf_tokenizer(name: str, tmp_path_factory) -> tokenizers.Tokenizer:
    norm, pre, ignore_merges, _ = CASES[name]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    if norm == "nfc":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = training_texts()
    tok.train_from_iterator(texts, trainer, length=len(texts))
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = ignore_merges
    # Whole words no merge reaches: only ignore_merges finds them.
    for word in UNMERGED:
        spec["model"]["vocab"][byte_level_text(word)] = len(spec["model"]["vocab"])
    # First-rank merges across the cuts Falcon makes after the byte-level map (they must never apply).
    for a, b in FALCON_CROSSING if name == "falcon" else ():
        spec["model"]["vocab"].setdefault(a + b, len(spec["model"]["vocab"]))
        spec["model"]["merges"].insert(0, [a, b])
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


UNMERGED = [" Zyxwvut", " Ωμέγα", "Qqqq"]
FALCON_CROSSING = [("Ã", "¼"), ("3", "4")]  # 'ü' is C3 BC, BC's byte-level character '¼' a number; "123|45"


def byte_level_text(word: str) -> str:
    return "".join(t for t, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(word))


def vocab_of(hf: tokenizers.Tokenizer, pre: str) -> Vocab:
    spec = json.loads(hf.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return Vocab(model="gpt2", pre=pre, tokens=tokens, types=[1] * len(tokens), merges=merges,
                 add_bos=False, add_eos=False, add_space_prefix=False)


def write_gguf(hf: tokenizers.Tokenizer, pre: str, path) -> None:
    v = vocab_of(hf, pre)
    w = gguf.GGUFWriter(str(path), "llama")
    write_vocab(w, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            hf = hf_tokenizer(name, tmp_path_factory)
            path = tmp_path_factory.mktemp("pretok") / f"{name}.gguf"
            write_gguf(hf, name, path)
            cache[name] = hf, Tokenizer.from_gguf(str(path))
        return cache[name]
    return get


# ------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", list(CASES))
def test_ids_match_tokenizers(pair, name):
    hf, owl = pair(name)
    texts = AWKWARD + ["".join(AWKWARD), " ".join(corpus_lines()[:40]), "\n".join(UNMERGED)]
    for text in texts:
        want = hf.encode(text, add_special_tokens=False).ids
        got = owl.encode(text, False, False)
        assert got == want, f"{name}: {text!r}"
        assert owl.decode(got) == (unicodedata.normalize("NFC", text) if CASES[name][0] == "nfc" else text)


def regex_pieces(patterns, text):
    """HF's Split(behavior="isolated") for each pattern in turn, with Python's `regex`."""
    pieces = [text] if text else []
    for p in patterns:
        rx = regex.compile(p)
        out = []
        for piece in pieces:
            last = 0
            for m in rx.finditer(piece):
                if m.start() == m.end():
                    continue
                if last < m.start():
                    out.append(piece[last:m.start()])
                out.append(m.group())
                last = m.end()
            if last < len(piece):
                out.append(piece[last:])
        pieces = out
    return pieces


@pytest.mark.parametrize("name", list(CASES))
def test_pieces_match_regex_module(name):
    norm, _, _, patterns = CASES[name]
    for text in AWKWARD:
        if norm == "nfc":
            text = unicodedata.normalize("NFC", text)
        assert ou.pre_tokenize(name, text) == regex_pieces(patterns, text), f"{name}: {text!r}"


# Characters every rule cares about: each class, case pairs, marks, the spaces and newlines, contraction parts.
ALPHABET = list(" \t\n\r'sStTlLdDmMrReEvV/!$+<=>^~|`.,-_09aZ") + [
    "\u00a0", "\u3000", "\u0085", "\u2028", "\u017f", "\u0301", "\u0308", "\u01c5", "\u01c4", "\u02b0", "\u4e00",
    "\u3042", "\u30a2", "\uac00", "\u0800", "\U0001f600", "\u200d", "\u00b2", "\u00bd", "\u0660", "\u2167",
    "\u00e9", "\u00c9", "\u03a9", "\u2126", "\uff01", "\uff21", "\u2018", "\u00b5", "\u00a9", "\u2192", "\u05d0"]


@pytest.mark.parametrize("name", list(CASES))
@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(ALPHABET), max_size=16))
def test_pieces_match_regex_module_on_random_text(name, text):
    norm, _, _, patterns = CASES[name]
    if norm == "nfc":
        text = unicodedata.normalize("NFC", text)
    assert ou.pre_tokenize(name, text) == regex_pieces(patterns, text)


def test_categories_agree_with_unicodedata():
    # The tables are Unicode 16 (as the Oniguruma in `tokenizers`); Python's unicodedata is older, so every code
    # point it assigns must have the same category group here.
    group = {"Lu": 1, "Ll": 2, "Lt": 3, "Lm": 4, "Lo": 5, "M": 6, "N": 7, "P": 8, "S": 9}
    seen = set()
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        if cat != "Cn":
            want = group.get(cat, group.get(cat[0], 0))
            assert ou.category(cp) == want, (hex(cp), cat)
            seen.add(want)
    assert seen == set(range(10))


def test_names_sharing_a_regex_list_split_alike():
    text = "".join(AWKWARD)
    for group in (["llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe"], ["gpt2", "gpt-2", "mpt", "olmo"],
                  ["starcoder", "smollm", "refact"], ["qwen2", "deepseek-r1-qwen"]):
        first = ou.pre_tokenize(group[0], text)
        assert all(ou.pre_tokenize(n, text) == first for n in group[1:]), group


def test_ignore_merges_takes_whole_words(pair):
    text = "\n".join(UNMERGED)  # three pieces and a newline
    for name in ("llama-bpe", "tekken", "dbrx", "gpt-4o"):
        hf, owl = pair(name)
        ids = owl.encode(text, False, False)
        assert ids == hf.encode(text, add_special_tokens=False).ids
        assert (len(ids) == 2 * len(UNMERGED) - 1) == CASES[name][2], name


def test_falcon_cuts_digit_bytes_after_the_byte_level_map(pair):
    # 'ü' is C3 BC and BC's byte-level character is '¼', a number: HF's Digits cuts it off its lead byte.
    hf, owl = pair("falcon")
    vocab = hf.get_vocab()
    for text in ("über", "12345678", "x²=½", "½12³", "ü 1234"):
        ids = owl.encode(text, False, False)
        assert ids == hf.encode(text, add_special_tokens=False).ids
        assert vocab["Ã¼"] not in ids and vocab["34"] not in ids
    uncut = Tokenizer(vocab_to_dict(vocab_of(hf, "gpt2")))  # the same merges without the cuts do apply
    assert vocab["Ã¼"] in uncut.encode("über", False, False) and vocab["34"] in uncut.encode("1234", False, False)


def test_unknown_pre_tokenizer_names_itself_and_the_supported_ones(tmp_path):
    v = Vocab(model="gpt2", pre="mistral-v9", tokens=["a", "b", "ab"], types=[1, 1, 1], merges=["a b"])
    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    write_vocab(w, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(owl_cpp.FormatError, match=r"unsupported pre-tokenizer 'mistral-v9' .*\(supported: .*"
                                                  r"smollm.*llama-bpe.*deepseek-coder.*tekken\)") as e:
        Tokenizer.from_gguf(str(path))
    assert isinstance(e.value, ValueError)
    for name in CASES:
        assert name in str(e.value)


@pytest.mark.parametrize("name, adds", [("llama-bpe", True), ("tekken", True), ("dbrx", False), ("qwen2", False)])
def test_bos_default_when_the_gguf_does_not_say(pair, tmp_path, name, adds):
    # llama.cpp adds BOS for the Llama 3 and Tekken vocabularies unless tokenizer.ggml.add_bos_token says otherwise.
    from gguf_edit import BOOL, rewrite
    hf, _ = pair(name)
    v = vocab_of(hf, name)
    v.bos_id = 7
    path = tmp_path / "with.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    write_vocab(w, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    silent = rewrite(path, tmp_path / "silent.gguf", drop=("tokenizer.ggml.add_bos_token",))
    assert Tokenizer.from_gguf(str(silent)).encode("hi")[:1] == ([7] if adds else hf.encode("hi").ids[:1])
    said = rewrite(path, tmp_path / "said.gguf", set_keys={"tokenizer.ggml.add_bos_token": (BOOL, not adds)})
    assert (Tokenizer.from_gguf(str(said)).encode("hi")[:1] == [7]) == (not adds)


# What owl-export writes for each configuration: llama.cpp's name for that behaviour.
DETECTED = {"gpt2": "gpt-2", "mpt": "gpt-2", "olmo": "gpt-2", "starcoder": "smollm", "refact": "smollm",
            "llama3": "llama-bpe", "llama-v3": "llama-bpe", "smaug-bpe": "dbrx"}


@pytest.mark.parametrize("name", list(CASES))
def test_owl_export_names_the_pre_tokenizer_of_a_tokenizer_json(pair, tmp_path, name):
    hf, _ = pair(name)
    hf.save(str(tmp_path / "tokenizer.json"))
    v = load_hf_vocab(tmp_path)
    assert v.pre == DETECTED.get(name, name)
    owl = Tokenizer(vocab_to_dict(v))
    text = "".join(AWKWARD)
    assert owl.encode(text, False, False) == hf.encode(text, add_special_tokens=False).ids


def test_owl_export_refuses_a_pre_tokenizer_it_does_not_know(pair, tmp_path):
    hf, _ = pair("llama-bpe")
    spec = json.loads(hf.to_str())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}+"
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"unsupported pre_tokenizer .*llama-bpe.*"):
        load_hf_vocab(tmp_path)
