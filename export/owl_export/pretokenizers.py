"""tokenizer.json's normalizer + pre_tokenizer -> llama.cpp's tokenizer.ggml.pre name.

The published byte-level BPE tokenizers describe their splitting as a chain of HF pre-tokenizers; llama.cpp (and
the runtime, owl_cpp/src/pretokenize.cpp) know each chain by a name. `detect_pre` reduces the chain to its steps
and looks them up; a chain no name stands for is a ValueError (converting it under another name would tokenize
differently from the model).
"""
from __future__ import annotations

import json

# The regexes as the published tokenizer.json files write them.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
_U, _W = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_C = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_U}*{_W}+{_C}|[^\r\n\p{{L}}\p{{N}}]?{_U}+{_W}*{_C}|\p{{N}}{{1,3}}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_U}*{_W}+|[^\r\n\p{{L}}\p{{N}}]?{_U}+{_W}*|\p{{N}}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM's letter class: the cased letters its tokenizer.json lists, as code point ranges.
_DS_LETTERS = [
    (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA), (0x1BC, 0x1BF),
    (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377), (0x37B, 0x37D), (0x37F, 0x37F),
    (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481),
    (0x48A, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102),
    (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126),
    (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149),
    (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3),
    (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF),
    (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F),
    (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF),
    (0x1E900, 0x1E943),
]
DS_LETTERS = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in _DS_LETTERS)
DEEPSEEK_LLM = ["[\r\n]", rf"\s?[{DS_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", "[一-龥ࠀ-一가-퟿]+", r"\p{N}+"]
DEEPSEEK_CODER = ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"]
DEEPSEEK_V3 = [r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
               r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
               r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]  # llama.cpp's own fallback


def _splits(patterns) -> tuple:
    return tuple(("split", p) for p in patterns)


BYTES, BYTES_REGEX = ("bytes", False), ("bytes", True)
DIGIT, DIGITS = ("digits", True), ("digits", False)
# (steps, NFC first, model.ignore_merges) -> name. Steps: ("split", regex) for Split(isolated),
# ("bytes", use_regex) for ByteLevel, ("digits", individual) for Digits, ("punct",) for Punctuation(contiguous).
SIGNATURES = [
    ((BYTES_REGEX,), False, False, "gpt-2"),
    (_splits([GPT2]) + (BYTES,), False, False, "gpt-2"),
    ((DIGIT, BYTES_REGEX), False, False, "smollm"),
    ((DIGIT, BYTES_REGEX), True, False, "command-r"),
    ((("punct",), BYTES_REGEX, DIGITS, ("split", "[0-9][0-9][0-9]")), False, False, "falcon"),
    (_splits([LLAMA3]) + (BYTES,), False, True, "llama-bpe"),
    (_splits([LLAMA3]) + (BYTES,), False, False, "dbrx"),
    (_splits([QWEN2]) + (BYTES,), True, False, "qwen2"),
    (_splits([QWEN2]) + (BYTES,), False, False, "stablelm2"),
    (_splits(DEEPSEEK_LLM) + (BYTES,), False, False, "deepseek-llm"),
    (_splits(DEEPSEEK_LLM[:-1]) + (DIGITS, BYTES), False, False, "deepseek-llm"),
    (_splits(DEEPSEEK_CODER) + (BYTES,), False, False, "deepseek-coder"),
    (_splits(DEEPSEEK_CODER[:-1]) + (DIGIT, BYTES), False, False, "deepseek-coder"),
    (_splits(DEEPSEEK_V3) + (BYTES,), False, False, "deepseek-v3"),
    (_splits([GPT4O]) + (BYTES,), False, False, "gpt-4o"),
    (_splits([TEKKEN]) + (BYTES,), False, True, "tekken"),
    (_splits(DEFAULT) + (BYTES,), False, False, "default"),
]


def _steps(node, where) -> list:
    if node is None:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [s for child in node.get("pretokenizers", []) for s in _steps(child, where)]
    if kind == "ByteLevel" and not node.get("add_prefix_space", False):
        return [("bytes", bool(node.get("use_regex", True)))]
    if kind == "Split" and isinstance(node.get("pattern"), dict) and "Regex" in node["pattern"] \
            and str(node.get("behavior", "")).lower() == "isolated" and not node.get("invert", False):
        return [("split", node["pattern"]["Regex"])]
    if kind == "Digits":
        return [("digits", bool(node.get("individual_digits", False)))]
    if kind == "Punctuation" and str(node.get("behavior", "")).lower() == "contiguous":
        return [("punct",)]
    raise ValueError(f"{where}: unsupported pre_tokenizer step {json.dumps(node)[:200]}")


def _nfc(normalizer, where) -> bool:
    if normalizer is None:
        return False
    kind = normalizer.get("type")
    if kind == "NFC":
        return True
    if kind == "Sequence":
        parts = [_nfc(n, where) for n in normalizer.get("normalizers", [])]
        if len(parts) <= 1:
            return any(parts)
    raise ValueError(f"{where}: unsupported normalizer {json.dumps(normalizer)[:200]}")


def detect_pre(tokenizer_json: dict, where="tokenizer.json") -> str:
    """llama.cpp's tokenizer.ggml.pre for a byte-level BPE tokenizer.json (dict), or ValueError."""
    steps = tuple(_steps(tokenizer_json.get("pre_tokenizer"), where))
    nfc = _nfc(tokenizer_json.get("normalizer"), where)
    ignore_merges = bool((tokenizer_json.get("model") or {}).get("ignore_merges", False))
    for sig, sig_nfc, sig_ignore, name in SIGNATURES:
        if (steps, nfc, ignore_merges) == (sig, sig_nfc, sig_ignore):
            return name
    raise ValueError(f"{where}: unsupported pre_tokenizer (none of llama.cpp's pre-tokenizers that the runtime "
                     f"knows: {', '.join(sorted({s[-1] for s in SIGNATURES}))}): "
                     f"{json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]}")
