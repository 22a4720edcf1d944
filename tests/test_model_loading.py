"""Model-level validation: a structurally valid GGUF that lacks a key or tensor, or has a tensor of the
wrong shape, is a FormatError naming it; the API checks its own inputs."""
from pathlib import Path

import gguf
import numpy as np
import pytest

import owl_cpp
from gguf_edit import ARRAY, STRING, UINT32, UINT64, rewrite

INT64 = 11

E, L, H, KV, F = 32, 1, 4, 2, 64
HD = E // H


def vocab_tokens():
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "a", "b", "▁a", "ab"]
    types = [2, 3, 3] + [6] * 256 + [1] * 5
    return toks, types


def write_model(path, drop_key=None, drop_tensor=None, reshape=None, extra_keys=None):
    """A minimal llama GGUF with random weights; the keyword arguments break it in one way."""
    rng = np.random.default_rng(0)
    toks, types = vocab_tokens()
    V = len(toks)
    w = gguf.GGUFWriter(str(path), "llama")
    keys = {
        "llama.context_length": ("add_uint32", 128), "llama.embedding_length": ("add_uint32", E),
        "llama.block_count": ("add_uint32", L), "llama.feed_forward_length": ("add_uint32", F),
        "llama.attention.head_count": ("add_uint32", H), "llama.attention.head_count_kv": ("add_uint32", KV),
        "llama.attention.layer_norm_rms_epsilon": ("add_float32", 1e-5), "llama.rope.freq_base": ("add_float32", 1e4),
        "tokenizer.ggml.model": ("add_string", "llama"), "tokenizer.ggml.tokens": ("add_array", toks),
        "tokenizer.ggml.scores": ("add_array", [0.0] * V), "tokenizer.ggml.token_type": ("add_array", types),
        "tokenizer.ggml.bos_token_id": ("add_uint32", 1), "tokenizer.ggml.eos_token_id": ("add_uint32", 2),
    }
    keys.update(extra_keys or {})
    for k, (method, v) in keys.items():
        if k != drop_key:
            getattr(w, method)(k, v)
    shapes = {"token_embd.weight": (V, E), "output_norm.weight": (E,), "output.weight": (V, E)}
    for i in range(L):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (E,), p + "attn_q.weight": (H * HD, E), p + "attn_k.weight": (KV * HD, E),
                       p + "attn_v.weight": (KV * HD, E), p + "attn_output.weight": (E, H * HD),
                       p + "ffn_norm.weight": (E,), p + "ffn_gate.weight": (F, E), p + "ffn_up.weight": (F, E),
                       p + "ffn_down.weight": (E, F)})
    for name, shape in shapes.items():
        if name == drop_tensor:
            continue
        if reshape and name == reshape[0]:
            shape = reshape[1]
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_minimal_model_loads_and_runs(tmp_path):
    m = owl_cpp.load(write_model(tmp_path / "ok.gguf"), threads=1)
    assert m.hparams["n_layer"] == L and m.hparams["rope_mode"] == "norm"
    ids = m.tokenize("ab a")
    assert ids[0] == 1  # llama adds BOS
    out = m.logits(ids)
    assert out.shape == (len(ids), m.n_vocab) and np.isfinite(out).all()


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                                 "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
                                 "tokenizer.ggml.tokens", "llama.context_length"])
def test_missing_key_is_named(tmp_path, key):
    with pytest.raises(owl_cpp.FormatError, match=key.replace(".", r"\.")):
        owl_cpp.load(write_model(tmp_path / "m.gguf", drop_key=key))


@pytest.mark.parametrize("tensor", ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight",
                                    "output_norm.weight", "blk.0.attn_norm.weight"])
def test_missing_tensor_is_named(tmp_path, tensor):
    with pytest.raises(owl_cpp.FormatError, match=tensor.replace(".", r"\.")):
        owl_cpp.load(write_model(tmp_path / "m.gguf", drop_tensor=tensor))


@pytest.mark.parametrize("tensor,shape", [("blk.0.attn_k.weight", (H * HD, E)), ("blk.0.ffn_up.weight", (F, E + 1)),
                                          ("output_norm.weight", (E + 1,)), ("output.weight", (10, E))])
def test_wrong_tensor_shape_is_named(tmp_path, tensor, shape):
    with pytest.raises(owl_cpp.FormatError, match=tensor.replace(".", r"\.")):
        owl_cpp.load(write_model(tmp_path / "m.gguf", reshape=(tensor, shape)))


def test_wrong_key_type_and_bad_values(tmp_path):
    with pytest.raises(owl_cpp.FormatError, match="llama.block_count.*string"):
        owl_cpp.load(write_model(tmp_path / "a.gguf", extra_keys={"llama.block_count": ("add_string", "x")}))
    with pytest.raises(owl_cpp.FormatError, match="head_count"):
        owl_cpp.load(write_model(tmp_path / "b.gguf", extra_keys={"llama.attention.head_count_kv": ("add_uint32", 3)}))
    with pytest.raises(owl_cpp.FormatError, match="block_count"):
        owl_cpp.load(write_model(tmp_path / "c.gguf", extra_keys={"llama.block_count": ("add_uint32", 0)}))
    with pytest.raises(owl_cpp.FormatError, match="eos_token_id"):
        owl_cpp.load(write_model(tmp_path / "d.gguf", extra_keys={"tokenizer.ggml.eos_token_id": ("add_uint32", 10**6)}))


def test_unknown_architecture(tmp_path):
    p = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(owl_cpp.FormatError, match="mamba"):
        owl_cpp.load(p)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        owl_cpp.load(tmp_path / "nope.gguf")


def test_unknown_tensor_is_rejected_by_name(tmp_path):
    """A tensor no architecture reads (a layer the file's block_count does not cover, a stray name) is an error,
    not silently ignored weights."""
    p = write_model(tmp_path / "extra.gguf", extra_keys={})
    r = gguf.GGUFReader(str(p))
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        w.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data))
    w.add_tensor("blk.0.attn_qkv.weight", np.zeros((4, E), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(owl_cpp.FormatError, match=r"does not use: 'blk\.0\.attn_qkv\.weight'"):
        owl_cpp.load(tmp_path / "x.gguf")


def test_block_count_beyond_the_file_fails_before_allocating(tmp_path):
    with pytest.raises(owl_cpp.FormatError, match="block_count 8388608"):
        owl_cpp.load(write_model(tmp_path / "b.gguf", extra_keys={"llama.block_count": ("add_uint32", 8388608)}))


@pytest.mark.parametrize("key,value", [("llama.rope.freq_base", float("nan")), ("llama.rope.freq_base", float("inf")),
                                       ("llama.attention.layer_norm_rms_epsilon", float("nan"))])
def test_non_finite_rope_base_or_epsilon(tmp_path, key, value):
    with pytest.raises(owl_cpp.FormatError, match="positive and finite"):
        owl_cpp.load(write_model(tmp_path / "n.gguf", extra_keys={key: ("add_float32", value)}))


# Findings of the GGUF fuzzer (tests/fuzz/): each message names the real fault, with the file's values as written.
SEEDS = Path(__file__).resolve().parent / "fuzz" / "corpus"


@pytest.mark.parametrize("keys,message", [
    ({"llama.attention.head_count": (UINT32, 3)}, "embedding_length 8 is not a multiple of head_count 3"),
    ({"llama.attention.key_length": (UINT32, 3)}, "head dimension 3 is odd"),
    ({"llama.rope.dimension_count": (UINT32, 2)}, r"partial rotary embeddings \(rope.dimension_count 2 < head dimension 4\)"),
    ({"llama.rope.dimension_count": (UINT64, 2**64 - 1)}, "rope.dimension_count 18446744073709551615 is larger"),
    ({"tokenizer.ggml.token_type": (ARRAY, [1] * 13 + [2**32 + 1], INT64)}, r"token_type\[13\] = 4294967297 is not"),
])
def test_hparam_messages_name_the_fault(tmp_path, keys, message):
    p = rewrite(SEEDS / "llama_spm_f32.gguf", tmp_path / "m.gguf", keys)
    with pytest.raises(owl_cpp.FormatError, match=message):
        owl_cpp.load(p)


@pytest.mark.parametrize("keys,message", [
    ({"owl3.mi_rope_offset": (UINT64, 2**64 - 1)}, "owl3.mi_rope_offset 18446744073709551615 must be 0 or 1"),
    ({"owl3.hyper_layers": (ARRAY, [2**64 - 1], UINT64)}, "element 0 = 18446744073709551615 is out of range"),
])
def test_u64_max_is_not_minus_one(tmp_path, keys, message):
    p = rewrite(SEEDS / "owl3_proj_bf16.gguf", tmp_path / "m.gguf", keys)
    with pytest.raises(owl_cpp.FormatError, match=message):
        owl_cpp._core.Model.load(str(p))  # a bare owl3 decoder: owl_cpp.load wants its model directory


def test_alignment_1_gives_the_same_logits(tmp_path):
    """general.alignment = 1 is legal and leaves Q4_0 blocks and floats at odd addresses (undefined behaviour for
    the kernels and the Q4_0 repacking, found by UBSan): the reader copies such tensors to aligned memory."""
    src = SEEDS / "llama_q4_0.gguf"
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(tmp_path / "a1.gguf"), "llama")
    w.add_custom_alignment(1)
    w.add_string("x.odd", "odd")  # the header, hence the data section, ends at an odd offset
    for field in r.fields.values():
        if not field.name.startswith("GGUF.") and field.name != "general.architecture":
            w.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = owl_cpp._core.GGUFFile.open(str(tmp_path / "a1.gguf"))
    data_start = (tmp_path / "a1.gguf").stat().st_size - max(t["offset"] + t["nbytes"] for t in f.tensors())
    assert f.alignment == 1 and data_start % 2 == 1
    a, b = owl_cpp.load(src, threads=1), owl_cpp.load(tmp_path / "a1.gguf", threads=1)
    ids = a.tokenize("ab a")
    np.testing.assert_array_equal(a.logits(ids), b.logits(ids))


@pytest.mark.parametrize("seed,key,shown", [
    ("llama_spm_f32.gguf", "general.architecture", "architecture 'll\ufffdama' is not supported"),
    ("qwen2_bpe_f16.gguf", "tokenizer.ggml.pre", "unsupported pre-tokenizer 'll\ufffdama'"),
    ("owl3_proj_bf16.gguf", "owl3.hyper_gate", "owl3.hyper_gate 'll\ufffdama' is not one of"),
])
def test_invalid_utf8_values_are_quoted_cleanly(tmp_path, seed, key, shown):
    # Was a UnicodeDecodeError from Python instead of the FormatError (found by the fuzzer).
    p = rewrite(SEEDS / seed, tmp_path / "m.gguf", {key: (STRING, b"ll\xffama")})
    with pytest.raises(owl_cpp.FormatError) as e:
        owl_cpp._core.Model.load(str(p))
    assert shown in str(e.value)
