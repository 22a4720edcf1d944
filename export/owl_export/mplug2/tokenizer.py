"""bert-large-uncased WordPiece as mPLUG-2 calls it (models/tokenization_bert.py @ a46aa97, transformers 4.14).

encode(text) = [CLS] + WordPiece ids: the official BertTokenizer's build_inputs_with_special_tokens appends no
[SEP] to a single sequence (docs/owl2.md PART D, "Checked by running the official code").
decode(ids) = the slow tokenizer's decode with its defaults: tokens joined by spaces, " ##" removed, then
clean_up_tokenization (" ." -> "." and so on). caption_text() then does what video_caption_mplug2.evaluation
does: drop "[SEP]", "[CLS]", "[PAD]", strip, keep what follows the last occurrence of the prompt.

Text holding a literal special token ("[CLS]" inside a sentence) is not split out as the slow tokenizer's
never_split would; captioning never encodes such text.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path


def _is_whitespace(ch):
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")          # transformers' rule: every C* category


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_chinese_char(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


class BertWordPiece:
    def __init__(self, vocab: list[str], lowercase: bool = True, unk: str = "[UNK]", max_chars: int = 100):
        self.vocab = list(vocab)
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.lowercase, self.unk, self.max_chars = lowercase, unk, max_chars
        self.cls_id, self.sep_id = self.ids["[CLS]"], self.ids["[SEP]"]
        self.pad_id = self.ids.get("[PAD]", 0)

    @classmethod
    def from_file(cls, path: str | Path) -> "BertWordPiece":
        with open(path, encoding="utf-8") as f:           # load_vocab: one token a line, rstrip("\n")
            return cls([line.rstrip("\n") for line in f])

    def basic_tokens(self, text: str) -> list[str]:
        out = []
        for ch in text:                                   # _clean_text
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            out.append(" " if _is_whitespace(ch) else ch)
        text = "".join(f" {c} " if _is_chinese_char(ord(c)) else c for c in "".join(out))
        words = []
        for tok in text.split():
            if self.lowercase:
                tok = "".join(c for c in unicodedata.normalize("NFD", tok.lower())
                              if unicodedata.category(c) != "Mn")
            cur = ""
            for c in tok:                                 # _run_split_on_punc
                if _is_punctuation(c):
                    if cur:
                        words.append(cur)
                        cur = ""
                    words.append(c)
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_chars:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end, cur = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.ids:
                    cur = sub
                    break
                end -= 1
            if cur is None:
                return [self.unk]
            pieces.append(cur)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self.basic_tokens(text) for p in self.wordpiece(w)]

    def encode(self, text: str, add_cls: bool = True) -> list[int]:
        ids = [self.ids[t] for t in self.tokenize(text)]
        return [self.cls_id] + ids if add_cls else ids

    def decode(self, ids) -> str:
        toks = [self.vocab[int(i)] for i in ids]
        s = " ".join(toks).replace(" ##", "").strip()
        for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            s = s.replace(a, b)
        return s

    def caption_text(self, ids, prompt: str = "a video of") -> str:
        s = self.decode(ids).replace("[SEP]", "").replace("[CLS]", "").replace("[PAD]", "").strip()
        if prompt:
            s = s.split(prompt)[-1].strip()
        return s
