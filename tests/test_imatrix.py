"""owl_export.imatrix and its use by owl-export / requantize.

- collect(): each entry is the mean of x^2 per column of that matrix's input, checked against the inputs
  recomputed from the reference decoder's hidden states (layer inputs after the RMS norm, the final norm).
- read(): llama.cpp's two file formats, written here field by field from their description (not with our
  writer), including the special cases (counts 0 -> ones, legacy ncall division, expert matrices refused).
- write() then read() gives back the same values (both formats).
- owl-export --imatrix-text: the file's weighted tensors are exactly imatrix_quants' bytes for the collected
  values; Q8_0 / F32 tensors are as without an imatrix; requantize --imatrix FILE on the F32 export gives the
  same file's tensors; the GGUF records llama-quantize's quantize.imatrix.* keys.
"""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

from owl_export import imatrix, imatrix_quants
from owl_export.checkpoint import TextConfig, load_checkpoint
from owl_export.cli import main as export_main
from owl_export.reference.decoder import TextDecoder, rms_norm
from owl_export.requantize import requantize_gguf

TEXT = "The quick brown fox jumps over the lazy dog. 1, 2, 3: def f(x): return x * x\n" * 3


def test_collect_equals_the_mean_square_of_each_matrix_input(tiny_qwen2_dir):
    im = imatrix.collect(tiny_qwen2_dir, TEXT, chunk=64)
    ids = imatrix.tokenize(tiny_qwen2_dir, TEXT)
    config, tensors, _ = load_checkpoint(tiny_qwen2_dir)
    cfg = TextConfig.from_dict(config)
    ref = TextDecoder(cfg, tensors)
    expect_sum = {}
    for s in range(0, len(ids), 64):               # the same chunks: attention sees only its own chunk
        hs = ref.hidden_states(ids[s:s + 64])
        for i in range(cfg.num_layers):
            x = rms_norm(hs[i], ref.w[f"model.layers.{i}.input_layernorm"], cfg.rms_norm_eps)
            expect_sum[f"blk.{i}.attn_q.weight"] = expect_sum.get(f"blk.{i}.attn_q.weight", 0) + \
                x.double().square().sum(0).numpy()
        x = rms_norm(hs[-1], ref.w["norm"], cfg.rms_norm_eps)
        expect_sum["token_embd.weight"] = expect_sum.get("token_embd.weight", 0) + x.double().square().sum(0).numpy()
    assert im.chunk_count == -(-len(ids) // 64)
    layer_names = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    assert set(im.sums) == {f"blk.{i}.{n}.weight" for i in range(cfg.num_layers) for n in layer_names} | \
        {"token_embd.weight"}                                    # tied: the output product uses token_embd
    for name, s in expect_sum.items():
        assert im.counts[name] == len(ids)
        np.testing.assert_allclose(im.sums[name], s, rtol=1e-6)
        np.testing.assert_allclose(im.values(name), s / len(ids), rtol=1e-6)
    # q, k and v read the same input
    np.testing.assert_array_equal(im.sums["blk.1.attn_k.weight"], im.sums["blk.1.attn_q.weight"])
    assert im.sums["blk.0.ffn_down.weight"].shape == (cfg.intermediate_size,)


def _gguf_imatrix(path, entries, datasets=("calib.txt",)):
    """entries: name -> (in_sum2 (n_mat, cols), counts (n_mat,)), in llama-imatrix's layout."""
    w = gguf.GGUFWriter(path, "imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", list(datasets))
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        w.add_tensor(f"{name}.in_sum2", np.asarray(sums, np.float32))
        w.add_tensor(f"{name}.counts", np.asarray(counts, np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_reads_llama_cpp_gguf_imatrix(tmp_path):
    path = tmp_path / "imatrix.gguf"
    sums = np.array([[3.0, 6.0, 9.0, 0.3]], np.float32)
    _gguf_imatrix(path, {"blk.0.ffn_down.weight": (sums, [3.0]), "blk.0.ffn_up.weight": (sums, [0.0])})
    im = imatrix.read(path)
    assert im.datasets == ["calib.txt"] and im.chunk_count == 7 and im.chunk_size == 512
    np.testing.assert_array_equal(im.values("blk.0.ffn_down.weight"),
                                  sums[0] / np.float32(3))        # float32 division, as llama-quantize
    np.testing.assert_array_equal(im.values("blk.0.ffn_up.weight"), np.ones(4, np.float32))  # never seen
    assert im.values("blk.0.attn_q.weight") is None
    with pytest.raises(ValueError, match="4 values but the tensor has 8 columns"):
        im.for_tensor("blk.0.ffn_down.weight", 8)


def test_expert_imatrix_is_refused(tmp_path):
    path = tmp_path / "moe.gguf"
    _gguf_imatrix(path, {"blk.0.ffn_down_exps.weight": (np.ones((2, 4)), [1.0, 2.0])})
    with pytest.raises(ValueError, match="expert"):
        imatrix.read(path)


def test_reads_llama_cpp_legacy_dat(tmp_path):
    path = tmp_path / "imatrix.dat"
    vals = np.array([2.0, 4.0, 8.0], "<f4")
    blob = struct.pack("<i", 2)
    for name, ncall in (("blk.3.attn_v.weight", 4), ("CUDA0#output.weight#0", 0)):
        b = name.encode()
        blob += struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, 3) + vals.tobytes()
    blob += struct.pack("<ii", 4, 8) + b"wiki.txt"
    path.write_bytes(blob)
    im = imatrix.read(path)
    np.testing.assert_array_equal(im.values("blk.3.attn_v.weight"), vals / np.float32(4))
    np.testing.assert_array_equal(im.values("output.weight"), vals)   # ncall 0: as stored; prefix removed
    assert im.chunk_count == 4 and im.datasets == ["wiki.txt"] and im.source == str(path)


@pytest.mark.parametrize("bad", [b"", b"\x00\x00\x00\x00", struct.pack("<i", 1) + struct.pack("<i", 5) + b"ab"])
def test_bad_imatrix_files_are_clear_errors(tmp_path, bad):
    path = tmp_path / "bad.dat"
    path.write_bytes(bad)
    with pytest.raises(ValueError, match="imatrix"):
        imatrix.read(path)


@pytest.mark.parametrize("suffix", [".gguf", ".dat"])
def test_write_then_read_gives_the_same_values(tmp_path, suffix):
    im = imatrix.Imatrix(sums={"blk.0.attn_q.weight": np.array([1.0, 2.5, 0.0, 7.0]),
                               "output.weight": np.array([0.5, 0.25])},
                         counts={"blk.0.attn_q.weight": 10, "output.weight": 3}, datasets=["x.txt"],
                         chunk_count=2, chunk_size=512)
    imatrix.write(im, tmp_path / f"im{suffix}")
    back = imatrix.read(tmp_path / f"im{suffix}")
    for name in im.sums:
        np.testing.assert_allclose(back.values(name), im.values(name), rtol=1e-6)


def test_export_with_imatrix_text_uses_it(tiny_qwen2_dir, tmp_path):
    out, plain, f32 = tmp_path / "im.gguf", tmp_path / "plain.gguf", tmp_path / "f32.gguf"
    saved = tmp_path / "im.dat"
    assert export_main([str(tiny_qwen2_dir), "-o", str(out), "--quant", "q4_k_m", "--imatrix-text", "-q",
                        "--imatrix-out", str(saved)]) == 0
    assert export_main([str(tiny_qwen2_dir), "-o", str(plain), "--quant", "q4_k_m", "-q"]) == 0
    assert export_main([str(tiny_qwen2_dir), "-o", str(f32), "--quant", "f32", "-q"]) == 0
    im = imatrix.read(saved)
    got = {t.name: t for t in gguf.GGUFReader(out).tensors}
    without = {t.name: t for t in gguf.GGUFReader(plain).tensors}
    source = {t.name: np.asarray(t.data, np.float32) for t in gguf.GGUFReader(f32).tensors}
    n_weighted = 0
    for name, t in got.items():
        assert t.tensor_type == without[name].tensor_type
        if t.tensor_type in imatrix_quants.TYPES and im.values(name) is not None:
            want = imatrix_quants.quantize(source[name], t.tensor_type, im.values(name))
            np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want, err_msg=name)
            assert not np.array_equal(np.asarray(t.data), np.asarray(without[name].data)), name
            n_weighted += 1
        else:                                                   # Q8_0, F32: no weighted form
            np.testing.assert_array_equal(np.asarray(t.data), np.asarray(without[name].data), err_msg=name)
    assert n_weighted == 12     # 7 matrices x 2 layers, less layer 1's attn_v and ffn_down (Q6_K -> Q8_0 at hidden 64)
    fields = gguf.GGUFReader(out).fields
    assert fields["quantize.imatrix.entries_count"].contents() == 15
    assert fields["quantize.imatrix.dataset"].contents() == "owl-export built-in text"

    # requantize --imatrix with the saved file: the same tensors from the F32 export
    again = tmp_path / "again.gguf"
    requantize_gguf(f32, again, "q4_k_m", imatrix=saved)
    for t in gguf.GGUFReader(again).tensors:
        np.testing.assert_array_equal(np.asarray(t.data), np.asarray(got[t.name].data), err_msg=t.name)


@pytest.mark.parametrize("args, message", [
    (["--quant", "f16", "--imatrix-text"], "does not use an importance matrix"),
    (["--quant", "q4_k_m", "--imatrix-text", "--imatrix", "x.gguf"], "give one"),
    (["--quant", "q4_k_m", "--imatrix-out", "x.gguf"], "needs --imatrix-text"),
    (["--quant", "q4_k_m", "--imatrix", "missing.gguf"], "not found"),
    (["--quant", "q4_k_m", "--imatrix-text", "missing.txt"], "not found"),
])
def test_export_imatrix_option_errors(tiny_qwen2_dir, tmp_path, capsys, args, message):
    assert export_main([str(tiny_qwen2_dir), "-o", str(tmp_path / "x.gguf"), *args]) == 2
    assert message in capsys.readouterr().err


def test_imatrix_of_another_model_is_refused(tiny_qwen2_dir, tmp_path):
    im = imatrix.Imatrix(sums={"blk.0.attn_q.weight": np.ones(7)}, counts={"blk.0.attn_q.weight": 1})
    imatrix.write(im, tmp_path / "other.gguf")
    assert export_main([str(tiny_qwen2_dir), "-o", str(tmp_path / "x.gguf"), "--quant", "q4_k_m",
                        "--imatrix", str(tmp_path / "other.gguf")]) == 2
    im = imatrix.Imatrix(sums={"blk.9.nothing.weight": np.ones(7)}, counts={"blk.9.nothing.weight": 1})
    imatrix.write(im, tmp_path / "none.gguf")
    with pytest.raises(ValueError, match="no entry for any tensor"):
        requantize_gguf(_f32(tiny_qwen2_dir, tmp_path), tmp_path / "y.gguf", "q4_k_m",
                        imatrix=tmp_path / "none.gguf")


def _f32(hf, tmp_path):
    out = tmp_path / "src-f32.gguf"
    assert export_main([str(hf), "-o", str(out), "--quant", "f32", "-q"]) == 0
    return out


def test_collect_on_llama_starts_chunks_with_bos(tiny_llama_dir):
    im = imatrix.collect(tiny_llama_dir, TEXT, chunk=16)
    n = len(imatrix.tokenize(tiny_llama_dir, TEXT))
    assert im.chunk_count == -(-n // 15)                     # 15 text tokens + BOS per chunk
    assert im.counts["output.weight"] == n + im.chunk_count   # untied llama: its own output matrix
