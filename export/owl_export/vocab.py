"""Tokenizer vocabularies: Hugging Face checkpoint files -> Vocab -> GGUF tokenizer.ggml.* keys (and back).

`Vocab` mirrors owl::VocabData field for field. `load_hf_vocab` follows llama.cpp's convert_hf_to_gguf.py:
  - byte-level BPE (tokenizer.json, or Qwen2's vocab.json + merges.txt): model "gpt2", pre from the
    tokenizer.json's normalizer and pre_tokenizer (pretokenizers.detect_pre: "qwen2", "llama-bpe", "smollm",
    "deepseek-llm", "gpt-2", ...; "qwen2" for the slow-tokenizer files), a dense token
    list (ids nobody uses become "[PAD{id}]" of type UNUSED), added special tokens CONTROL, other added
    tokens USER_DEFINED, no BOS added.
  - LLaMA style (tokenizer.model): model "llama", pieces/scores/types from sentencepiece, BOS added,
    add_space_prefix from the model's normalizer spec.
  - Qwen (v1) style (qwen.tiktoken, tokenizer_class QWenTokenizer): model "gpt2", pre "qwen2" (QWenTokenizer
    NFC-normalises, then runs tiktoken with Qwen2's very regex), the ranks as tokens in byte-level form, merges
    recovered from the ranks as llama.cpp's convert_hf_to_gguf.py does, then <|endoftext|>, <|im_start|>,
    <|im_end|>, <|extra_0..204|> as CONTROL tokens; eos <|endoftext|>, no BOS.
Special ids come from tokenizer_config.json (token contents), then config.json and
generation_config.json (*_token_id), like gguf.SpecialVocab.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .pretokenizers import GPT2, QWEN2, detect_pre

# ggml token types (tokenizer.ggml.token_type); sentencepiece's piece types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

QWEN2_PATTERN, GPT2_PATTERN = QWEN2, GPT2
SPECIAL_KINDS = ("bos", "eos", "unk", "pad")


@dataclass
class Vocab:
    """Exactly owl::VocabData's fields; ids are None when absent."""
    model: str
    pre: str
    tokens: list[str]
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    merges: list[str] = field(default_factory=list)
    bos_id: Optional[int] = None
    eos_id: Optional[int] = None
    unk_id: Optional[int] = None
    pad_id: Optional[int] = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = True


def vocab_to_dict(vocab: Vocab) -> dict:
    """The dict owl_cpp._core.Tokenizer(...) takes."""
    return dataclasses.asdict(vocab)


def wordpiece_vocab(tokens: list[str]) -> Vocab:
    """BERT's uncased WordPiece vocabulary (mPLUG-2's text side) as GGUF keys, llama.cpp's model name "bert":
    [CLS] is the BOS the encoder adds, [SEP] the end of generation; no [SEP] is added (the official caption
    decoder starts from [CLS] alone). The runtime lowercases and strips accents, as bert-large-uncased does."""
    ids = {t: i for i, t in enumerate(tokens)}
    for needed in ("[CLS]", "[SEP]", "[UNK]"):
        if needed not in ids:
            raise ValueError(f"WordPiece vocabulary has no {needed} token")
    control = {"[CLS]", "[SEP]", "[PAD]", "[MASK]"}
    types = [UNKNOWN if t == "[UNK]" else CONTROL if t in control else NORMAL for t in tokens]
    return Vocab(model="bert", pre="", tokens=list(tokens), types=types, bos_id=ids["[CLS]"], eos_id=ids["[SEP]"],
                 unk_id=ids["[UNK]"], pad_id=ids.get("[PAD]"), add_bos=True, add_eos=False,
                 add_space_prefix=False)


# ------------------------------------------------------------------------------------------- reading HF

def _read_json(path: Path, required: bool = False):
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: file not found")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON: {e}") from e


def load_hf_vocab(hf_dir) -> Vocab:
    """Read the tokenizer of a Hugging Face checkpoint directory (Qwen2 or LLaMA style)."""
    d = Path(hf_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: checkpoint directory not found")
    if (d / "tokenizer.model").is_file():
        return _load_sentencepiece(d)
    tc = _read_json(d / "tokenizer_config.json") or {}
    if tc.get("tokenizer_class") == "QWenTokenizer" or (
            (d / "qwen.tiktoken").is_file() and not (d / "tokenizer.json").is_file()):
        return _load_qwen_tiktoken(d, tc)
    if (d / "tokenizer.json").is_file() or (d / "vocab.json").is_file():
        return _load_bpe(d)
    raise FileNotFoundError(f"{d}: no tokenizer.model, tokenizer.json or vocab.json")


def _merge_text(m, where: Path) -> str:
    if isinstance(m, str):
        return m
    if isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(x, str) and " " not in x for x in m):
        return f"{m[0]} {m[1]}"
    raise ValueError(f"{where}: merge {m!r} cannot be written as 'left right'")


def _load_bpe(d: Path) -> Vocab:
    tj_path = d / "tokenizer.json"
    tj = _read_json(tj_path)
    tc = _read_json(d / "tokenizer_config.json") or {}
    if tj is not None:
        model = tj.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{tj_path}: tokenizer model type {model.get('type')!r} is not BPE")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict):
            raise ValueError(f"{tj_path}: model.vocab is missing")
        merges = [_merge_text(m, tj_path) for m in model.get("merges", [])]
        added = [(int(a["id"]), a["content"], bool(a.get("special"))) for a in tj.get("added_tokens", [])]
        pre = detect_pre(tj, tj_path)
    else:  # the slow-tokenizer files
        vocab = _read_json(d / "vocab.json", required=True)
        merges_path = d / "merges.txt"
        if not merges_path.is_file():
            raise FileNotFoundError(f"{merges_path}: file not found (needed with vocab.json)")
        lines = merges_path.read_text(encoding="utf-8").splitlines()
        merges = [ln for ln in lines if ln and not ln.startswith("#version")]
        added = [(int(i), a["content"], bool(a.get("special")))
                 for i, a in (tc.get("added_tokens_decoder") or {}).items()]
        pre = "qwen2"

    id_to_token: dict[int, str] = {int(i): t for t, i in vocab.items()}
    id_to_type = {i: NORMAL for i in id_to_token}
    for i, content, special in added:
        id_to_token[i] = content
        id_to_type[i] = CONTROL if special else USER_DEFINED
    cfg = _read_json(d / "config.json") or {}
    n = max(id_to_token) + 1
    if isinstance(cfg.get("vocab_size"), int) and cfg["vocab_size"] > n:
        n = cfg["vocab_size"]  # the embedding is larger: llama.cpp lists every row
    tokens = [id_to_token.get(i, f"[PAD{i}]") for i in range(n)]
    types = [id_to_type.get(i, UNUSED) for i in range(n)]

    v = Vocab(model="gpt2", pre=pre, tokens=tokens, types=types, merges=merges,
              add_bos=False, add_eos=False, add_space_prefix=False)
    _special_ids(d, v, tc, cfg)
    if isinstance(tc.get("add_bos_token"), bool):
        v.add_bos = tc["add_bos_token"]
    if isinstance(tc.get("add_eos_token"), bool):
        v.add_eos = tc["add_eos_token"]
    return v


def _special_ids(d: Path, v: Vocab, tc: dict, cfg: dict) -> None:
    """bos/eos/unk/pad: tokenizer_config.json contents, then config.json / generation_config.json ids."""
    first_id: dict[str, int] = {}
    for i, t in enumerate(v.tokens):
        first_id.setdefault(t, i)
    found: dict[str, int] = {}
    for kind in SPECIAL_KINDS:
        entry = tc.get(f"{kind}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(content, str) and content in first_id:
            found[kind] = first_id[content]
    gen = _read_json(d / "generation_config.json") or {}
    for source in (cfg, gen):
        for kind in SPECIAL_KINDS:
            tid = source.get(f"{kind}_token_id")
            if isinstance(tid, list) and tid:
                tid = tid[0]
            if kind not in found and isinstance(tid, int) and 0 <= tid < len(v.tokens):
                found[kind] = tid
    v.bos_id, v.eos_id, v.unk_id, v.pad_id = (found.get(k) for k in SPECIAL_KINDS)


# tokenization_qwen.py: the specials follow the ranks in this order (ids n_ranks + i; 151643.. in Qwen-7B)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))


def _byte_level(b: bytes) -> str:
    """Raw bytes -> GPT-2's byte-level characters (the form tokenizer.ggml.tokens stores BPE tokens in)."""
    table = _byte_level.table
    return "".join(table[x] for x in b)


def byte_level_chars() -> list[str]:
    """GPT-2's printable character for each byte value 0..255 (how byte-level BPE vocabularies are written)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in bs:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


_byte_level.table = byte_level_chars()


def _rank_bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge loop on `token`'s bytes, merging only pairs whose rank is below max_rank."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """qwen.tiktoken: one "base64(token bytes) rank" per line; the ranks must be 0..n-1, each once."""
    import base64
    import binascii

    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e}") from e
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected two fields")
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error) as e:
            raise ValueError(f"{path}:{no}: not a 'base64 rank' line ({e})") from e
        if token in ranks:
            raise ValueError(f"{path}:{no}: token {token!r} is listed twice")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: the ranks are not 0..{len(ranks) - 1}, each once")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: {len(missing)} single bytes have no rank (first: {missing[0]:#04x})")
    return ranks


def _load_qwen_tiktoken(d: Path, tc: dict) -> Vocab:
    """Qwen v1's tiktoken BPE as a byte-level BPE with merges. A token of rank r is made, in tiktoken, by the
    lowest-ranked merge of its two parts once every merge below r is done; so running tiktoken's own loop on
    its bytes with merges limited to ranks below r leaves exactly its two parts, whose merge gets rank r
    (llama.cpp's QwenModel does the same)."""
    path = d / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (tokenizer_class QWenTokenizer)")
    ranks = read_tiktoken_ranks(path)
    by_rank = sorted(ranks, key=ranks.__getitem__)
    tokens = [_byte_level(t) for t in by_rank]
    merges = []
    for rank, token in enumerate(by_rank):
        if len(token) < 2:
            continue
        parts = _rank_bpe(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"{path}: token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
        merges.append(f"{_byte_level(parts[0])} {_byte_level(parts[1])}")
    n_ranks = len(tokens)
    tokens += list(QWEN_SPECIALS)
    types = [NORMAL] * n_ranks + [CONTROL] * len(QWEN_SPECIALS)
    cfg = _read_json(d / "config.json") or {}
    if isinstance(cfg.get("vocab_size"), int) and cfg["vocab_size"] > len(tokens):
        extra = cfg["vocab_size"] - len(tokens)
        tokens += [f"[PAD{i}]" for i in range(len(tokens), cfg["vocab_size"])]
        types += [UNUSED] * extra
    v = Vocab(model="gpt2", pre="qwen2", tokens=tokens, types=types, merges=merges,
              add_bos=False, add_eos=False, add_space_prefix=False)
    _special_ids(d, v, tc, cfg)
    v.bos_id = None                      # QWenTokenizer has no BOS (docs/owl2.md PART B 6)
    if v.eos_id is None:
        v.eos_id = n_ranks               # <|endoftext|>, the tokenizer's eod_id
    return v


def _proto_fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; enough to read sentencepiece models."""
    i, n = 0, len(buf)

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= n:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            yield num, wt, varint()
        elif wt == 1:
            yield num, wt, buf[i:i + 8]
            i += 8
        elif wt == 2:
            ln = varint()
            yield num, wt, buf[i:i + ln]
            i += ln
        elif wt == 5:
            yield num, wt, buf[i:i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")


def _sentencepiece_proto(data: bytes):
    """Piece types (ModelProto.pieces[].type, default NORMAL) and NormalizerSpec.add_dummy_prefix."""
    types, add_dummy_prefix = [], True
    for num, wt, val in _proto_fields(data):
        if num == 1 and wt == 2:  # SentencePiece
            t = NORMAL
            for pnum, pwt, pval in _proto_fields(val):
                if pnum == 3 and pwt == 0:
                    t = pval
            types.append(t)
        elif num == 3 and wt == 2:  # NormalizerSpec
            for snum, swt, sval in _proto_fields(val):
                if snum == 3 and swt == 0:
                    add_dummy_prefix = bool(sval)
    return types, add_dummy_prefix


def _load_sentencepiece(d: Path) -> Vocab:
    import sentencepiece as spm

    path = d / "tokenizer.model"
    data = path.read_bytes()
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
        types, add_dummy_prefix = _sentencepiece_proto(data)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own text
        raise ValueError(f"{path}: not a readable sentencepiece model: {e}") from e
    n_sp = sp.GetPieceSize()
    if len(types) != n_sp:
        raise ValueError(f"{path}: {len(types)} pieces in the proto but sentencepiece reports {n_sp}")
    tokens = [sp.IdToPiece(i) for i in range(n_sp)]
    scores = [float(sp.GetScore(i)) for i in range(n_sp)]

    tc = _read_json(d / "tokenizer_config.json") or {}
    # Tokens added on top of the sentencepiece model (added_tokens.json / added_tokens_decoder).
    extra = {int(i): (a["content"], bool(a.get("special")))
             for i, a in (tc.get("added_tokens_decoder") or {}).items()}
    for content, i in (_read_json(d / "added_tokens.json") or {}).items():
        extra.setdefault(int(i), (content, False))
    cfg = _read_json(d / "config.json") or {}
    n = max([n_sp, *[i + 1 for i in extra]])
    if isinstance(cfg.get("vocab_size"), int) and cfg["vocab_size"] > n:
        n = cfg["vocab_size"]
    for i in range(n_sp, n):
        content, special = extra.get(i, (f"[PAD{i}]", None))
        tokens.append(content)
        scores.append(-1000.0)
        types.append(UNUSED if special is None else CONTROL if special else USER_DEFINED)

    v = Vocab(model="llama", pre="default", tokens=tokens, scores=scores, types=types,
              add_bos=True, add_eos=False, add_space_prefix=add_dummy_prefix)
    _special_ids(d, v, tc, cfg)
    # Ids the HF files do not name come from the sentencepiece model itself (<unk>=0, <s>=1, </s>=2 in LLaMA).
    for kind, i in zip(SPECIAL_KINDS, (sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id())):
        if getattr(v, f"{kind}_id") is None and i >= 0:
            setattr(v, f"{kind}_id", i)
    if isinstance(tc.get("add_bos_token"), bool):
        v.add_bos = tc["add_bos_token"]
    if isinstance(tc.get("add_eos_token"), bool):
        v.add_eos = tc["add_eos_token"]
    return v


# ------------------------------------------------------------------------------------------- GGUF

def write_vocab(writer, vocab: Vocab) -> None:
    """Write the tokenizer.ggml.* keys with a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    if vocab.types:
        writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for value, add in ((vocab.bos_id, writer.add_bos_token_id), (vocab.eos_id, writer.add_eos_token_id),
                       (vocab.unk_id, writer.add_unk_token_id), (vocab.pad_id, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)


def read_gguf_vocab(reader) -> Vocab:
    """The inverse of write_vocab, from a gguf.GGUFReader (absent keys take VocabData's defaults)."""
    def get(key, default=None):
        f = reader.fields.get(f"tokenizer.ggml.{key}")
        return default if f is None else f.contents()

    model = get("model")
    if model is None:
        raise ValueError("GGUF has no tokenizer.ggml.model key")
    return Vocab(
        model=model, pre=get("pre", ""), tokens=list(get("tokens", [])),
        scores=[float(x) for x in get("scores", [])], types=[int(x) for x in get("token_type", [])],
        merges=list(get("merges", [])),
        bos_id=get("bos_token_id"), eos_id=get("eos_token_id"), unk_id=get("unknown_token_id"),
        pad_id=get("padding_token_id"),
        add_bos=bool(get("add_bos_token", False)), add_eos=bool(get("add_eos_token", False)),
        add_space_prefix=bool(get("add_space_prefix", True)),
    )
