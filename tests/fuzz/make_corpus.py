"""Writes the fuzzer's seed corpus (tests/fuzz/corpus/): tiny valid GGUFs, one per architecture and tokenizer
model, covering every tensor type, so mutations start from files that reach the loader, the repacking and the
tokenizers. Deterministic; run from the repository root: python tests/fuzz/make_corpus.py"""
from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

OUT = Path(__file__).resolve().parent / "corpus"
Q = gguf.GGMLQuantizationType


def spm_vocab():
    toks = ["<unk>", "<s>", "</s>", "<0x0A>", "<0xC3>", "<0xB6>", "▁", "a", "b", "▁a", "ab", "▁H", "ello", "<|im_start|>"]
    types = [2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1, 4]
    return toks, types, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -1.5, -1.5, -3.0, -3.0, 0.0]


def bpe_vocab():
    toks = ["a", "b", "Ġ", "Ġa", "ab", "H", "e", "l", "o", "ll", "Ċ", "<|im_start|>", "<|endoftext|>"]
    types = [1] * 11 + [3, 3]
    return toks, types, ["Ġ a", "a b", "l l"]


def wpm_vocab():
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "ab", "##b", "##a", "hello", "w", "##orld", ".",
            "'", "日", "本"]
    return toks, [3, 2, 3, 3, 3] + [1] * (len(toks) - 5)


def tensor(w, rng, name, shape, qtype=Q.F32):
    x = (rng.standard_normal(shape) * 0.3).astype(np.float32)
    if qtype == Q.F32:
        w.add_tensor(name, x)
    elif qtype == Q.F16:
        w.add_tensor(name, x.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)


def write(name, arch, *, E=8, H=2, KV=1, F=16, tok="spm", matrix_type=Q.F32, bias=False, tied=True, extra=None):
    rng = np.random.default_rng(len(name))
    w = gguf.GGUFWriter(str(OUT / name), arch)
    a = arch
    w.add_uint32(f"{a}.context_length", 64)
    w.add_uint32(f"{a}.embedding_length", E)
    w.add_uint32(f"{a}.block_count", 1)
    w.add_uint32(f"{a}.feed_forward_length", F)
    w.add_uint32(f"{a}.attention.head_count", H)
    w.add_uint32(f"{a}.attention.head_count_kv", KV)
    w.add_uint32(f"{a}.rope.dimension_count", E // H)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{a}.rope.freq_base", 10000.0)
    if tok == "spm":
        toks, types, scores = spm_vocab()
        w.add_string("tokenizer.ggml.model", "llama")
        w.add_array("tokenizer.ggml.scores", scores)
    elif tok == "wpm":
        toks, types = wpm_vocab()
        w.add_string("tokenizer.ggml.model", "bert")
        w.add_uint32("tokenizer.ggml.unknown_token_id", 1)
        w.add_bool("tokenizer.ggml.add_bos_token", True)
    else:
        toks, types, merges = bpe_vocab()
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "qwen2")
        w.add_array("tokenizer.ggml.merges", merges)
    w.add_array("tokenizer.ggml.tokens", toks)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_uint32("tokenizer.ggml.bos_token_id", {"spm": 1, "wpm": 2}.get(tok, 11))
    w.add_uint32("tokenizer.ggml.eos_token_id", {"spm": 2, "wpm": 3}.get(tok, 12))
    for key, (method, value) in (extra or {}).items():
        getattr(w, method)(key, value)
    V, HD = len(toks), E // H
    tensor(w, rng, "token_embd.weight", (V, E), matrix_type)
    tensor(w, rng, "output_norm.weight", (E,))
    if not tied:
        tensor(w, rng, "output.weight", (V, E), matrix_type)
    p = "blk.0."
    for n, shape in [("attn_q", (H * HD, E)), ("attn_k", (KV * HD, E)), ("attn_v", (KV * HD, E)),
                     ("attn_output", (E, H * HD)), ("ffn_gate", (F, E)), ("ffn_up", (F, E)), ("ffn_down", (E, F))]:
        tensor(w, rng, p + n + ".weight", shape, matrix_type)
    if bias:
        for n, rows in [("attn_q", H * HD), ("attn_k", KV * HD), ("attn_v", KV * HD)]:
            tensor(w, rng, p + n + ".bias", (rows,))
    tensor(w, rng, p + "attn_norm.weight", (E,))
    tensor(w, rng, p + "ffn_norm.weight", (E,))
    if arch == "owl3":
        tensor(w, rng, p + "hyper_kv.weight", (2 * KV * HD, E))
        tensor(w, rng, p + "hyper_kv.bias", (2 * KV * HD,))
        tensor(w, rng, p + "hyper_gate_proj.weight", (HD, HD))
        tensor(w, rng, p + "hyper_gate_proj.bias", (HD,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    OUT.mkdir(exist_ok=True)
    write("llama_spm_f32.gguf", "llama")
    write("qwen2_bpe_f16.gguf", "qwen2", tok="bpe", matrix_type=Q.F16, bias=True, tied=False)
    write("llama_q4_0.gguf", "llama", E=32, F=32, matrix_type=Q.Q4_0, tied=False)
    write("llama_q8_0.gguf", "llama", E=32, F=32, H=4, KV=2, matrix_type=Q.Q8_0)
    write("llama_wpm_f32.gguf", "llama", tok="wpm")  # BERT WordPiece (mPLUG-2's tokenizer model)
    write("owl3_proj_bf16.gguf", "owl3", tok="bpe", matrix_type=Q.BF16, bias=True, extra={
        "owl3.variant": ("add_string", "240728"), "owl3.hyper_gate": ("add_string", "proj"),
        "owl3.fused": ("add_bool", False), "owl3.mi_rope_offset": ("add_uint32", 1),
        "owl3.hyper_layers": ("add_array", [0])})
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:8d}  {f.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
