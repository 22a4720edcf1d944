"""Random-weight GGUF decoders at the real model sizes, for benchmarks (the values do not affect speed).

Quantized blocks are written directly as random bytes with small fixed scales (quantizing gigabytes of
floats in numpy would take minutes); the files open in llama.cpp as well as in owl_cpp. The K-quant types
(q2_k .. q6_k: every matrix in that type) need row lengths that are multiples of 256 (not qwen2-0.5b's 896).

llama.cpp's own K-quant mixes (q4_k_m, q5_k_m, q6_k, ...) are made from the f16 file by its quantizer instead
(llama_quantized(): bench/llama_quantize.py under the llama-cpp-python environment's interpreter).
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import gguf
import numpy as np

# name: (arch, hidden, layers, heads, kv_heads, ffn, vocab, tied)
SIZES = {
    "qwen2-0.5b": ("qwen2", 896, 24, 14, 2, 4864, 151936, True),     # Owl3-1B decoder
    "qwen2-1.5b": ("qwen2", 1536, 28, 12, 2, 8960, 151936, True),    # Owl3-2B decoder
    "qwen2-7b": ("qwen2", 3584, 28, 28, 4, 18944, 152064, False),    # Owl3-7B decoder
    "llama-7b": ("llama", 4096, 32, 32, 32, 11008, 32000, False),    # Owl2 decoder
    "owl3-1b": ("owl3", 896, 24, 14, 2, 4864, 151851, True),         # mPLUG-Owl3-1B-241014 decoder
    "owl2-7b": ("owl2", 4096, 32, 32, 32, 11008, 32000, False),      # mPLUG-Owl2 decoder with its image branch
    "qwen2-tiny": ("qwen2", 256, 2, 4, 2, 512, 1024, True),           # seconds to make and run: checks the scripts
}
OWL3_HYPER = {"owl3-1b": [5, 12, 19, 21]}  # 0-based (docs/owl3.md 1.1)
QT = gguf.GGMLQuantizationType
QTYPES = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0, "f16": QT.F16, "q4_1": QT.Q4_1, "q5_0": QT.Q5_0, "q5_1": QT.Q5_1,
          "iq4_nl": QT.IQ4_NL, "q2_k": QT.Q2_K, "q3_k": QT.Q3_K, "q4_k": QT.Q4_K, "q5_k": QT.Q5_K, "q6_k": QT.Q6_K}
FILE_TYPE = {"q4_0": 2, "q8_0": 7, "f16": 1, "q4_1": 3, "q5_0": 8, "q5_1": 9, "iq4_nl": 25,
             "q2_k": 10, "q3_k": 12, "q4_k": 15, "q5_k": 17, "q6_k": 18}  # llama_ftype
# Blocks of 32 written as random bytes after their fp16 fields: bytes per block, then (scale, minimum) as multiples
# of the matrix's scale 1/sqrt(cols), chosen so the values span about +-scale (the minimum None: no such field).
RANDOM_BLOCKS = {"q8_0": (34, 1 / 64, None), "q4_0": (18, 1 / 4, None), "q4_1": (20, 1 / 8, -1.0),
                 "q5_0": (22, 1 / 16, None), "q5_1": (24, 1 / 16, -1.0), "iq4_nl": (18, 1 / 128, None)}
# K-quant super-blocks of 256: bytes, and the byte offsets of the fp16 scale d and (where there is one) dmin.
K_BLOCKS = {"q2_k": (84, 80, 82), "q3_k": (110, 108, None), "q4_k": (144, 0, 2), "q5_k": (176, 0, 2),
            "q6_k": (210, 208, None)}
# llama.cpp file types made by its quantizer from the f16 file (bench/llama_quantize.py).
LLAMA_FTYPES = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]


def random_matrix(rng, rows: int, cols: int, quant: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    scale = 1.0 / np.sqrt(cols)
    if quant == "f16":  # random bits: sign, 10 mantissa bits, exponent of 2^-7 or 2^-6 (no float maths: 7B in seconds)
        bits = (rng.integers(0, 1 << 16, (rows, cols), dtype=np.uint16) & np.uint16(0x87FF)) | np.uint16(0x2000)
        return bits.view(np.float16), QTYPES[quant]
    if quant in K_BLOCKS:
        size, d_at, dmin_at = K_BLOCKS[quant]
        if cols % 256:
            raise SystemExit(f"{quant}: a row of {cols} columns is not a whole number of 256-element super-blocks")
        blocks = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
        for at, v in ((d_at, scale / 64), (dmin_at, scale / 256)):
            if at is not None:
                blocks[..., at:at + 2] = np.frombuffer(np.float16(v).tobytes(), np.uint8)
        return blocks.reshape(rows, -1), QTYPES[quant]
    nb = cols // 32
    nbytes, d, m = RANDOM_BLOCKS[quant]
    head = 2 if m is None else 4
    blocks = np.empty((rows, nb, nbytes), np.uint8)
    blocks[..., :2] = np.frombuffer(np.float16(scale * d).tobytes(), np.uint8)
    if m is not None:
        blocks[..., 2:4] = np.frombuffer(np.float16(scale * m).tobytes(), np.uint8)
    if quant == "q8_0":  # -128 is not a level ggml's quantizer writes
        blocks[..., head:] = rng.integers(-127, 128, (rows, nb, nbytes - head), dtype=np.int8).view(np.uint8)
    else:
        blocks[..., head:] = rng.integers(0, 256, (rows, nb, nbytes - head), dtype=np.uint8)
    return blocks.reshape(rows, -1), QTYPES[quant]


def vocab(n: int):
    """A valid byte-level BPE vocabulary of n tokens (bytes, one merge, filler) for the tokenizer keys."""
    byte_chars = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(ord("¡"), ord("¬") + 1)] \
        + [chr(c) for c in range(ord("®"), ord("ÿ") + 1)]
    extra = [chr(256 + i) for i in range(256 - len(byte_chars))]
    tokens = byte_chars + extra + ["Ġt"]
    tokens += [f"tok{i}" for i in range(len(tokens), n - 3)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (n - 3) + [3, 3, 3]
    return tokens, types


def write(path: Path, size: str, quant: str, seed: int = 0) -> Path:
    arch, E, L, H, KV, F, V, tied = SIZES[size]
    hd = E // H
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"random {size} {quant}")
    w.add_file_type(FILE_TYPE[quant])
    w.add_context_length(32768 if arch == "qwen2" else 2048 if arch == "owl2" else 4096)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e4 if arch in ("llama", "owl2") else 1e6)
    if arch == "owl2":  # docs/owl2.md A1: 64 queries + vit_eos per image, 448 px, CLIP normalization
        w.add_string("owl2.variant", "owl2")
        w.add_uint32("owl2.image_tokens", 65)
        w.add_uint32("owl2.vision.image_size", 448)
        w.add_array("owl2.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
        w.add_array("owl2.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    if arch == "owl3":  # 241014: static gate vector, separate visual softmax
        w.add_string("owl3.variant", "241014")
        w.add_array("owl3.hyper_layers", OWL3_HYPER[size])
        w.add_string("owl3.hyper_gate", "vector")
        w.add_bool("owl3.fused", False)
        w.add_uint32("owl3.mi_rope_offset", 1)
    tokens, types = vocab(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(V - 3)
    w.add_eos_token_id(V - 1)
    w.add_add_bos_token(False)

    def mat(name, rows, cols):
        data, qt = random_matrix(rng, rows, cols, quant)
        w.add_tensor(name, data, raw_dtype=qt)

    def vec(name, n, scale=0.0):
        w.add_tensor(name, (1.0 + scale * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", V, E)
    for i in range(L):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", E)
        mat(p + "attn_q.weight", H * hd, E)
        mat(p + "attn_k.weight", KV * hd, E)
        mat(p + "attn_v.weight", KV * hd, E)
        if arch == "owl2":  # the modality-adaptive module's image branch (docs/owl2.md A5)
            vec(p + "img.attn_norm.weight", E)
            mat(p + "img.attn_k.weight", KV * hd, E)
            mat(p + "img.attn_v.weight", KV * hd, E)
            vec(p + "img.ffn_norm.weight", E)
        if arch not in ("llama", "owl2"):
            for n, rows in (("attn_q", H * hd), ("attn_k", KV * hd), ("attn_v", KV * hd)):
                w.add_tensor(p + n + ".bias", (0.1 * rng.standard_normal(rows)).astype(np.float32))
        mat(p + "attn_output.weight", E, H * hd)
        vec(p + "ffn_norm.weight", E)
        mat(p + "ffn_gate.weight", F, E)
        mat(p + "ffn_up.weight", F, E)
        mat(p + "ffn_down.weight", E, F)
        if i in OWL3_HYPER.get(size, ()):
            mat(p + "hyper_kv.weight", 2 * KV * hd, E)
            w.add_tensor(p + "hyper_kv.bias", (0.1 * rng.standard_normal(2 * KV * hd)).astype(np.float32))
            w.add_tensor(p + "hyper_gate.weight", rng.standard_normal(H * hd).astype(np.float32))
    vec("output_norm.weight", E)
    if not tied:
        mat("output.weight", V, E)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def ensure(workdir: Path, size: str, quant: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{size}-{quant}.gguf"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write(tmp, size, quant)
        tmp.rename(path)
    return path


def llama_quantized(workdir: Path, size: str, ftype: str, llama_python: str, threads: int = 2, src: str = "f16") -> Path:
    """{size}-{ftype}-llama.gguf: the random model quantized by llama.cpp's own quantizer (cached), from the f16 file
    or, where that is too big to keep (a 7B f16 file is 13.5 GB), requantized from src (e.g. q8_0)."""
    path = Path(workdir) / f"{size}-{ftype}-llama.gguf"
    if not path.exists():
        source = ensure(Path(workdir), size, src)
        tmp = path.with_suffix(".tmp")
        extra = [] if src == "f16" else ["--allow-requantize"]
        subprocess.run([llama_python, str(Path(__file__).resolve().parent / "llama_quantize.py"), str(source), str(tmp), ftype,
                        "--threads", str(threads), *extra], check=True, capture_output=True)
        tmp.rename(path)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("size", choices=list(SIZES))
    ap.add_argument("quant", choices=sorted(set(QTYPES) | set(LLAMA_FTYPES)))
    ap.add_argument("-o", "--workdir", default="bench/models")
    ap.add_argument("--llama-python", help="quantize the f16 file with llama.cpp's quantizer (K-quant mixes)")
    ap.add_argument("--llama-src", default="f16", choices=["f16", "q8_0"], help="the file llama.cpp quantizes from")
    a = ap.parse_args()
    if a.llama_python:
        print(llama_quantized(Path(a.workdir), a.size, a.quant, a.llama_python, src=a.llama_src))
    elif a.quant not in QTYPES:
        raise SystemExit(f"{a.quant} is a llama.cpp mix: give --llama-python")
    else:
        print(ensure(Path(a.workdir), a.size, a.quant))
