"""End to end: tiny qwen2 / llama GGUFs whose layer matrices are Q4_1, Q5_0, Q5_1 or IQ4_NL give the logits of the
same model with those matrices dequantized to F32 (what the file means), up to the int8 rounding of the activations
that llama.cpp does too; and the quantized file loads and reports its type."""
import gguf
import numpy as np
import pytest

import owl_cpp
from q32_quant import TYPES, dequantize, quantize

PROMPT = "the quick brown fox jumps over 13 lazy dogs"


def retyped_pair(src, tmp_path, type_name):
    """(quantized file, its dequantized F32 twin): blk.* matrices quantized to type_name in the first, and exactly
    their dequantized values in the second; every other tensor and key as in src."""
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    paths = (tmp_path / f"{type_name}.gguf", tmp_path / f"{type_name}-f32.gguf")
    writers = [gguf.GGUFWriter(str(p), arch) for p in paths]
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        for w in writers:
            w.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    n_quantized = 0
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.name.startswith("blk.") and data.ndim == 2 and t.tensor_type == gguf.GGMLQuantizationType.F32:
            rows, cols = data.shape
            q = quantize(data.astype(np.float32), type_name)
            writers[0].add_tensor(t.name, q, raw_dtype=gguf.GGMLQuantizationType[type_name])
            writers[1].add_tensor(t.name, dequantize(q, type_name, rows, cols).astype(np.float32))
            n_quantized += 1
        else:
            for w in writers:
                w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    for w in writers:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    assert n_quantized >= 7
    return paths


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("type_name", list(TYPES))
def test_logits_match_dequantized_model(arch, type_name, tiny_gguf, tmp_path):
    quant_path, f32_path = retyped_pair(tiny_gguf(arch, "f32"), tmp_path, type_name)
    types = {t["name"]: t["type"] for t in owl_cpp._core.GGUFFile.open(str(quant_path)).tensors()}
    assert types["blk.0.ffn_down.weight"] in (type_name, TYPES[type_name])
    q = owl_cpp.load(quant_path, threads=2)
    ref = owl_cpp.load(f32_path, threads=1)
    ids = ref.tokenize(PROMPT)
    assert len(ids) >= 8
    got, want = np.asarray(q.logits(ids), np.float64), np.asarray(ref.logits(ids), np.float64)
    assert got.shape == want.shape and np.isfinite(got).all()
    # The activations' int8 rounding in every matmul: on these tiny random models 2-5% of the largest logit, as for
    # Q8_0 and Q4_0 files against their own dequantized twins (3.8% on qwen2); a wrong block decode or scale is off
    # by O(1).
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 8e-2, err
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8


@pytest.mark.skipif("cuda" not in owl_cpp._core.available_backends(), reason="no CUDA GPU visible")
@pytest.mark.parametrize("type_name", list(TYPES))
def test_cuda_names_the_type_it_lacks(type_name, tiny_gguf, tmp_path):
    """The CUDA backend has no kernels for these types: loading on it fails with a message naming the type."""
    quant_path, _ = retyped_pair(tiny_gguf("qwen2", "f32"), tmp_path, type_name)
    with pytest.raises(owl_cpp._core.OwlError, match=f"CUDA backend has no kernel for {type_name}; use the CPU"):
        owl_cpp.load(quant_path, device="cuda").logits([1, 2, 3])


@pytest.mark.parametrize("type_name", list(TYPES))
def test_repacked_equals_file_layout(type_name, tiny_gguf, tmp_path, monkeypatch):
    """Matrices repacked at load into their x8 layout (where the active kernels have one) give the logits of the file's
    layout, prefill and a decode step: both sum exact integer block products; only the fp32 accumulation order
    differs, which can flip one int8 rounding of a later activation (a ~1e-3 step at an isolated position, as for
    Q4_0x8 in test_decoder_parity.py)."""
    from owl_cpp import _testing

    quant_path, _ = retyped_pair(tiny_gguf("qwen2", "f32"), tmp_path, type_name)
    packed = owl_cpp.load(quant_path, threads=2)
    assert (packed._model.packed_bytes > 0) == _testing.ops.kernels_use_q32x8(TYPES[type_name])
    monkeypatch.setenv("OWL_REPACK", "0")
    plain = owl_cpp.load(quant_path, threads=2)
    assert plain._model.packed_bytes == 0
    ids = plain.tokenize(PROMPT)
    a, b = np.asarray(packed.logits(ids)), np.asarray(plain.logits(ids))
    per_row = np.abs(a - b).max(axis=1) / np.abs(b).max()
    assert np.mean(per_row < 1e-5) >= 0.9 and per_row.max() < 5e-3, per_row
    for m in (packed, plain):
        m.reset()
        m.eval(ids[:-1])
    step_a, step_b = np.asarray(packed.eval(ids[-1:])), np.asarray(plain.eval(ids[-1:]))
    assert np.abs(step_a - step_b).max() / np.abs(step_b).max() < 5e-3
