"""K-quant tensor types (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): block layouts and dequantization bit-identical to
gguf.quants, the Q8_K activation quantizer of every kernel variant bit-identical to llama.cpp's rule, every
matmul kernel variant against the float64 reference and against an exact emulation of its integer arithmetic,
and whole models in these types against the same model dequantized to F32.

Tolerances: the kernels quantize activations to int8 per 256 (Q8_K), as llama.cpp does; against the float64
reference that costs a relative error (max |y - y_ref| / max |y_ref|) of 0.5-1.7e-2 on standard-normal data,
so the bound is 3e-2 from 32 outputs on (5e-2 below). Against the float64 emulation of the arithmetic itself
(Q8_K activations, exact integer block sums) every variant is within 1e-5, which pins the kernels down.
"""
import struct
import zlib

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

import owl_cpp
from owl_cpp import _core, _testing
from kquant_blocks import BLOCK, BLOCK_BYTES, QK_K, TYPE_IDS, q8_k_activations, quantize, quantize_q8_k, random_blocks

ops = _testing.ops
KTYPES = list(TYPE_IDS)
ALL_ISAS = ["generic", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "neon"]
SUPPORTED = ops.supported_isas()
# rows x cols: odd row counts, one super-block, odd super-block counts, and more columns than one column chunk at
# T = 64 (4096 int8 columns: 4352 leaves a second chunk of one super-block).
SHAPES = [(1, 256), (3, 256), (7, 512), (13, 768), (33, 1280), (9, 4352)]
TOKENS = [1, 2, 3, 5, 17, 64]


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def emulate(raw, type_name, rows, cols, x, bias=None):
    w = quants.dequantize(raw, QT[type_name]).reshape(rows, cols).astype(np.float64)
    return q8_k_activations(x) @ w.T + (0 if bias is None else bias.astype(np.float64))


@pytest.mark.parametrize("type_name", KTYPES)
def test_dequantize_is_bit_identical_to_gguf(type_name):
    """Arbitrary bytes (NaN / inf / subnormal scales included: hostile files must not crash) and our quantizer's
    blocks, through ops.dequantize (quant.cpp) and get_rows (the embedding lookup)."""
    rng = np.random.default_rng(zlib.crc32(type_name.encode()))
    n = 64
    hostile = rng.integers(0, 256, n * BLOCK_BYTES[type_name], dtype=np.uint8)
    made = quantize(rng.standard_normal(n * QK_K).astype(np.float32), type_name)
    for raw in (hostile, made, random_blocks(type_name, n, rng)):
        with np.errstate(invalid="ignore", over="ignore"):
            want = quants.dequantize(raw, QT[type_name]).reshape(-1)
        got = ops.dequantize(raw, TYPE_IDS[type_name], n * QK_K)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        rows = ops.get_rows(raw, TYPE_IDS[type_name], 8, n * QK_K // 8, np.array([5, 0, 7], np.int32))
        np.testing.assert_array_equal(rows.view(np.uint32), want.reshape(8, -1)[[5, 0, 7]].view(np.uint32))


@pytest.mark.parametrize("type_name", KTYPES)
def test_block_sizes_and_shape_checks(type_name):
    raw = random_blocks(type_name, 2, np.random.default_rng(0))
    assert raw.size == 2 * BLOCK_BYTES[type_name] == 2 * {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[type_name]
    ops.matmul(raw, TYPE_IDS[type_name], 1, 512, np.ones((1, 512), np.float32))
    with pytest.raises(ValueError, match="wrong size"):
        ops.matmul(raw[:-1], TYPE_IDS[type_name], 1, 512, np.ones((1, 512), np.float32))
    with pytest.raises(ValueError, match="bad matrix shape"):
        ops.matmul(raw, TYPE_IDS[type_name], 4, 128, np.ones((1, 128), np.float32))


def test_our_quantizer_is_close():
    """The tests' numpy quantizer (kquant_blocks.quantize) writes valid blocks: relative RMS error of the
    round trip through gguf.quants on standard-normal rows, per type, as expected of 2..6 bits."""
    x = np.random.default_rng(1).standard_normal((16, 512)).astype(np.float32)
    bound = {"Q2_K": 0.4, "Q3_K": 0.2, "Q4_K": 0.1, "Q5_K": 0.05, "Q6_K": 0.025}
    for t in KTYPES:
        y = quants.dequantize(quantize(x, t), QT[t]).reshape(x.shape)
        err = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
        assert err < bound[t], (t, err)


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_q8_k_activations_are_llama_cpps_rule(isa, isa_restore):
    """Every variant's quantizer gives the bytes of the numpy rule and of quantize_row_q8_k_ref: ties between
    +-amax (the first wins), an all-zero block, values on rounding half-points, a huge block next to a tiny one."""
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(256 * 8).astype(np.float32)
    x[256:512] = 0
    x[600], x[700] = -3.0, 3.0                       # first of two equal magnitudes decides the sign
    x[800:1024] = np.arange(224, dtype=np.float32) * np.float32(0.5)  # many exact .5 products
    x[1024:1280] *= 1e30
    x[1280:1536] *= 1e-30
    want = quantize_q8_k(x).view(np.uint8).reshape(-1)
    np.testing.assert_array_equal(np.frombuffer(ops.quantize_q8_k(x, ref=True), np.uint8), want)
    np.testing.assert_array_equal(np.frombuffer(ops.quantize_q8_k(x), np.uint8), want)


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("type_name", KTYPES)
def test_every_isa_matches_reference(isa, type_name, isa_restore):
    if isa not in SUPPORTED:
        pytest.skip(f"this CPU / build cannot run {isa}")
    ops.set_isa(isa)
    rng = np.random.default_rng(zlib.crc32(f"{isa} {type_name}".encode()))
    for rows, cols in SHAPES:
        raw = random_blocks(type_name, rows * cols // QK_K, rng)
        bias = rng.standard_normal(rows).astype(np.float32)
        for T in TOKENS:
            x = rng.standard_normal((T, cols)).astype(np.float32)
            b = bias if T % 2 else None
            ref = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x, b, ref=True)
            exact = emulate(raw, type_name, rows, cols, x, b)
            first = None
            for threads in (1, 2, 3):
                got = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x, b, threads=threads)
                assert rel_err(got, exact) < 1e-5, (isa, type_name, rows, cols, T, threads, rel_err(got, exact))
                if rows * T >= 32:
                    assert rel_err(got, ref) < 3e-2, (isa, type_name, rows, cols, T, threads, rel_err(got, ref))
                if first is None:
                    first = got
                else:  # any split over threads gives bit-identical results
                    np.testing.assert_array_equal(got, first, err_msg=f"{isa} {type_name} {rows}x{cols} T={T} threads={threads}")


@pytest.mark.parametrize("type_name", KTYPES)
def test_token_does_not_depend_on_batch_and_isas_agree(type_name, isa_restore):
    """A token's result is the same alone (decode) and inside a batch of 11 (prefill tiles of 4 / 8 tokens, below
    the rows-in-lanes threshold of 16);
    all variants sum exact integer block products, so they agree to fp32 accumulation order."""
    rng = np.random.default_rng(7)
    rows, cols = 29, 1024
    raw = random_blocks(type_name, rows * cols // QK_K, rng)
    x = 3 * rng.standard_normal((11, cols)).astype(np.float32)
    x[:, 256:512] = 0  # an all-zero activation block: d = 0
    ops.set_isa("generic")
    want = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x)
    for isa in SUPPORTED:
        ops.set_isa(isa)
        batch = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x, threads=2)
        assert rel_err(batch, want) < 1e-6, isa
        for t in range(11):
            one = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x[t:t + 1], threads=2)
            np.testing.assert_array_equal(one[0], batch[t], err_msg=f"{isa} {type_name} token {t}")


@pytest.mark.parametrize("type_name", KTYPES)
def test_long_batches_do_not_depend_on_batch(type_name, isa_restore):
    """From 16 tokens on, avx512_vnni runs the rows-in-lanes prefill (other variants their tiles): a token's result
    is the same inside any batch of 16 or more, whatever its position, the thread split, the partial 16-row
    group (37 rows) or the 512-token passes (530 tokens); and it matches the exact emulation. (2048 columns: one
    column chunk at every batch size; the chunking, which depends on the batch, is covered by the tests above.)"""
    rng = np.random.default_rng(13)
    rows, cols = 37, 2048
    raw = random_blocks(type_name, rows * cols // QK_K, rng)
    bias = rng.standard_normal(rows).astype(np.float32)
    x = rng.standard_normal((530, cols)).astype(np.float32)
    exact = emulate(raw, type_name, rows, cols, x, bias)
    for isa in SUPPORTED:
        ops.set_isa(isa)
        whole = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x, bias, threads=2)
        assert rel_err(whole, exact) < 1e-5, isa
        for t0, t1, threads in ((0, 16, 1), (5, 22, 3), (500, 530, 2), (3, 520, 1)):
            part = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x[t0:t1], bias, threads=threads)
            np.testing.assert_array_equal(part, whole[t0:t1], err_msg=f"{isa} {type_name} tokens {t0}:{t1}")


@pytest.mark.parametrize("type_name", KTYPES)
def test_extreme_blocks_do_not_saturate(type_name, isa_restore):
    """Every quant at its largest (or smallest) value, the largest scales, against activations of +-1 (which
    Q8_K represents exactly as +-127): the byte-pair sums reach 2 * 63 * 127 (Q6_K) and must not saturate."""
    rows, cols = 6, 512
    b = np.zeros(rows * cols // QK_K, BLOCK[type_name])
    for f in b.dtype.names:
        if f not in ("d", "dmin"):
            b[f] = -1 if b.dtype[f].base == np.int8 else 0xFF
    b["d"] = 0.5
    if "dmin" in b.dtype.names:
        b["dmin"] = 0.25
    b[1::2] = b[0]
    if type_name == "Q6_K":
        b["scales"][1::2] = 127
        b["ql"][1::2] = 0  # element value -32 (the most negative), under the largest positive scale
        b["qh"][1::2] = 0
    raw = b.view(np.uint8).reshape(-1)
    x = np.stack([np.ones(cols), -np.ones(cols), np.where(np.arange(cols) % 3, 1.0, -1.0)]).astype(np.float32)
    ref = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x, ref=True)
    for isa in SUPPORTED:
        ops.set_isa(isa)
        got = ops.matmul(raw, TYPE_IDS[type_name], rows, cols, x)
        assert rel_err(got, ref) < 1e-5, (isa, rel_err(got, ref))


def test_hostile_blocks_do_not_crash(isa_restore):
    """Arbitrary bytes (NaN and inf scales) through every variant's matmul: results may be anything, no crash."""
    rng = np.random.default_rng(9)
    for t in KTYPES:
        raw = rng.integers(0, 256, 5 * 2 * BLOCK_BYTES[t], dtype=np.uint8)
        x = rng.standard_normal((6, 512)).astype(np.float32)
        x[2, 3] = np.nan
        x[4, 7] = np.inf
        for isa in SUPPORTED:
            ops.set_isa(isa)
            assert ops.matmul(raw, TYPE_IDS[t], 5, 512, x, threads=2).shape == (6, 5)


# ---- whole models ----

E, L, H, KV, F = 256, 2, 4, 2, 512
HD = E // H


def _vocab():
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "a", "b", "▁a", "ab"]
    return toks, [2, 3, 3] + [6] * 256 + [1] * 5


def _matrices(rng):
    V = len(_vocab()[0])
    shapes = {"token_embd.weight": (V, E), "output.weight": (V, E)}
    for i in range(L):
        p = f"blk.{i}."
        shapes.update({p + "attn_q.weight": (H * HD, E), p + "attn_k.weight": (KV * HD, E), p + "attn_v.weight": (KV * HD, E),
                       p + "attn_output.weight": (E, H * HD), p + "ffn_gate.weight": (F, E), p + "ffn_up.weight": (F, E),
                       p + "ffn_down.weight": (E, F)})
    return {n: rng.standard_normal(s).astype(np.float32) * (0.5 / np.sqrt(s[1])) * (8 if n == "token_embd.weight" else 1)
            for n, s in shapes.items()}


def write_model(path, types):
    """A tiny llama GGUF (hidden 256, 2 layers) whose matrices are quantized by kquant_blocks.quantize to
    types[name] (a K type; "F32" keeps them float), and the same model with those matrices dequantized by
    gguf.quants to F32 at path.f32.gguf."""
    rng = np.random.default_rng(0)
    toks, ttypes = _vocab()
    mats = _matrices(rng)
    norms = {"output_norm.weight": np.ones(E, np.float32)}
    for i in range(L):
        norms[f"blk.{i}.attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(E)).astype(np.float32)
        norms[f"blk.{i}.ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(E)).astype(np.float32)
    out = {}
    for kind in ("q", "f32"):
        p = path if kind == "q" else path.with_suffix(".f32.gguf")
        w = gguf.GGUFWriter(str(p), "llama")
        w.add_context_length(128)
        w.add_embedding_length(E)
        w.add_block_count(L)
        w.add_feed_forward_length(F)
        w.add_head_count(H)
        w.add_head_count_kv(KV)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(1e4)
        w.add_tokenizer_model("llama")
        w.add_token_list(toks)
        w.add_token_scores([0.0] * len(toks))
        w.add_token_types(ttypes)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        for name, v in norms.items():
            w.add_tensor(name, v)
        for name, m in mats.items():
            t = types(name)
            if t == "F32":
                w.add_tensor(name, m)
                continue
            raw = quantize(m, t).reshape(m.shape[0], -1)
            if kind == "q":
                w.add_tensor(name, raw, raw_dtype=QT[t])
            else:
                w.add_tensor(name, quants.dequantize(raw, QT[t]).reshape(m.shape).astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        out[kind] = p
    return out["q"], out["f32"]


def q4_k_m_mix(name):
    """llama.cpp's Q4_K_M idea: Q6_K for the output matrix and some ffn_down / attn_v, Q4_K elsewhere."""
    if name == "output.weight" or name in ("blk.0.ffn_down.weight", "blk.1.attn_v.weight"):
        return "Q6_K"
    return "Q4_K"


MIXES = {t: (lambda name, t=t: t) for t in KTYPES}
MIXES["Q4_K_M"] = q4_k_m_mix
MIXES["Q5_K_M"] = lambda name: "Q6_K" if name == "output.weight" else "Q5_K"
# Logit error of the runtime (Q8_K activations) vs the dequantized F32 model, max |diff| / max |logit|: measured
# 1.1-1.5e-2 over these mixes (top-1 agreement 90-100%); the weight quantization itself is not part of it.
LOGIT_TOL = 3e-2


@pytest.mark.parametrize("mix", list(MIXES))
def test_model_logits_match_the_dequantized_model(mix, tmp_path, isa_restore):
    qpath, fpath = write_model(tmp_path / f"tiny-{mix}.gguf", MIXES[mix])
    info = {t["name"]: t for t in _core.GGUFFile.open(str(qpath)).tensors()}
    assert {info["blk.0.ffn_up.weight"]["type"], info["output.weight"]["type"]} <= set(KTYPES + ["Q4_K", "Q6_K"])
    ref_model = owl_cpp.load(fpath, threads=2)
    ids = [1, 259, 260, 262, 263, 100, 17, 200, 261, 5]
    want = ref_model.logits(ids)
    spread = np.abs(want).max()
    for isa in SUPPORTED:
        ops.set_isa(isa)
        m = owl_cpp.load(qpath, threads=2)
        got = m.logits(ids)
        err = np.abs(got - want).max() / spread
        assert err < LOGIT_TOL, (mix, isa, err)
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8, (mix, isa)
        # decode after a prompt gives the same logits as the prompt pass (single-token kernels vs tiles)
        assert np.abs(m.logits(ids[:6])[-1] - got[5]).max() / spread < 1e-4


def test_row_length_not_a_multiple_of_256_is_refused(tmp_path):
    """A K-type matrix whose rows are not whole super-blocks fails at load, naming the tensor and the type."""
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    raw = random_blocks("Q4_K", 3, np.random.default_rng(0))
    w.add_tensor("blk.0.attn_q.weight", raw.reshape(1, -1), raw_dtype=QT.Q4_K)  # [1, 768]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    buf = bytearray(path.read_bytes())
    name = b"blk.0.attn_q.weight"
    dims = buf.index(name) + len(name) + 4  # after the name and n_dims
    assert struct.unpack_from("<QQ", buf, dims) == (768, 1)
    struct.pack_into("<QQ", buf, dims, 384, 2)  # the same 768 elements as rows of 384
    path.write_bytes(bytes(buf))
    with pytest.raises(Exception, match=r"blk\.0\.attn_q\.weight.*384.*Q4_K.*256"):
        _core.GGUFFile.open(str(path))
