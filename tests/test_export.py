"""Export side for plain text decoders: checkpoint reading, the PyTorch reference, GGUF conversion, CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as QT  # noqa: E402

from owl_export import cli  # noqa: E402
from owl_export.checkpoint import (CheckpointError, PrefixView, TextConfig, UnsupportedModelError,  # noqa: E402
                                   load_checkpoint, open_weights)
from owl_export.convert_text import llama_permute, llama_unpermute  # noqa: E402
from owl_export.fixtures import make_tiny_checkpoint  # noqa: E402
from owl_export.quantize import tensor_qtype  # noqa: E402
from owl_export.reference import TextDecoder  # noqa: E402

QUANTS = ["f32", "f16", "bf16", "q8_0", "q4_0"]
ARCHS = ["qwen2", "llama"]


# ------------------------------------------------------------------------------------------ checkpoint

@pytest.mark.parametrize("arch", ARCHS)
def test_all_weight_layouts_load_identically(tmp_path, arch):
    base = load_checkpoint(make_tiny_checkpoint(tmp_path / "st", arch, seed=3, num_layers=1))
    for fmt in ["safetensors_sharded", "bin", "bin_sharded"]:
        d = make_tiny_checkpoint(tmp_path / fmt, arch, seed=3, num_layers=1, weights_format=fmt)
        other = load_checkpoint(d)
        assert other.config == base.config
        assert sorted(other.tensors) == sorted(base.tensors)
        for name in base.tensors:
            assert torch.equal(other.tensors[name], base.tensors[name]), (fmt, name)
        if fmt.endswith("sharded"):
            assert len(other.tensors.files) == 2


def test_checkpoint_names_follow_hf(tiny_qwen2_dir, tiny_llama_dir):
    q = set(open_weights(tiny_qwen2_dir))
    assert "model.layers.1.self_attn.q_proj.bias" in q and "lm_head.weight" not in q   # tied, as published
    l_ = set(open_weights(tiny_llama_dir))
    assert "lm_head.weight" in l_ and not any(n.endswith(".bias") for n in l_)
    cfg = json.loads((tiny_qwen2_dir / "config.json").read_text())
    for key in ["architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                "max_position_embeddings", "tie_word_embeddings", "torch_dtype", "vocab_size", "bos_token_id",
                "eos_token_id", "hidden_act", "use_sliding_window", "transformers_version"]:
        assert key in cfg, key
    assert cfg["vocab_size"] % 64 == 0 and cfg["eos_token_id"] < cfg["vocab_size"]


def test_bf16_checkpoint_keeps_dtype(tmp_path):
    d = make_tiny_checkpoint(tmp_path / "bf", "qwen2", num_layers=1, dtype="bfloat16")
    _, tensors, _ = load_checkpoint(d)
    assert tensors["model.norm.weight"].dtype == torch.bfloat16
    assert json.loads((d / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_checkpoint_errors_name_the_file(tmp_path, tiny_qwen2_dir):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(tmp_path / "nope")

    d = tmp_path / "c"
    shutil.copytree(tiny_qwen2_dir, d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(d)

    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(d)

    e = tmp_path / "e"
    e.mkdir()
    with pytest.raises(FileNotFoundError, match="no weights"):
        open_weights(e)

    s = make_tiny_checkpoint(tmp_path / "s", "llama", num_layers=1, weights_format="safetensors_sharded")
    (s / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        open_weights(s)


def test_corrupt_weights_and_prefix_view(tmp_path, tiny_qwen2_dir):
    d = tmp_path / "c"
    shutil.copytree(tiny_qwen2_dir, d)
    store = open_weights(d)
    name = "model.layers.0.mlp.down_proj.weight"
    assert store.shape(name) == tuple(store[name].shape) == (64, 128)
    view = PrefixView(store, "model.layers.0.")
    assert "mlp.down_proj.weight" in view and view.shape("mlp.down_proj.weight") == (64, 128)
    assert len(view) == sum(n.startswith("model.layers.0.") for n in store)

    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        open_weights(d)


def test_text_config_defaults_and_errors():
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32}
    c = TextConfig.from_dict(base)
    assert (c.rope_theta, c.num_kv_heads, c.head_dim, c.tie_word_embeddings, c.qkv_bias) == (10000.0, 2, 4, False, False)
    assert TextConfig.from_dict({**base, "model_type": None, "architectures": ["Qwen2ForCausalLM"]}).arch == "qwen2"
    with pytest.raises(UnsupportedModelError, match="bert"):
        TextConfig.from_dict({**base, "model_type": "bert"})
    with pytest.raises(UnsupportedModelError, match="rope_scaling"):
        TextConfig.from_dict({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})


# ------------------------------------------------------------------------------------------ reference

@pytest.fixture(scope="module")
def ref_models(tiny_qwen2_dir, tiny_llama_dir):
    return {"qwen2": tiny_qwen2_dir, "llama": tiny_llama_dir}


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_f32_matches_f64(ref_models, arch):
    ids = list(range(3, 40, 3))
    l32 = TextDecoder.from_pretrained(ref_models[arch], torch.float32).forward(ids)
    l64 = TextDecoder.from_pretrained(ref_models[arch], torch.float64).forward(ids)
    assert l32.dtype == torch.float32 and l64.dtype == torch.float64
    rel = (l32.double() - l64).norm() / l64.norm()
    assert rel < 1e-5, rel
    # logits spread over several units and the argmax is not a near-tie
    assert l64.std() > 1.0
    top2 = l64.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_is_causal_and_greedy_deterministic(ref_models, arch):
    m = TextDecoder.from_pretrained(ref_models[arch], torch.float64)
    ids = [5, 17, 99, 250, 7, 42, 300, 11]
    full = m.forward(ids)
    prefix = m.forward(ids[:5])
    torch.testing.assert_close(full[:5], prefix, rtol=1e-12, atol=1e-12)
    g1, g2 = m.greedy(ids, 8), m.greedy(torch.tensor(ids), 8)
    assert g1 == g2 and len(g1) == 8
    assert g1[0] == int(full[-1].argmax())
    assert len(set(g1)) > 1                      # the tiny model does not just echo one token


def test_reference_attention_matches_sdpa():
    # independent check of the GQA causal attention against torch's fused kernel
    from owl_export.reference.decoder import causal_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 7, 16, generator=g, dtype=torch.float64) for n in (4, 2, 2))
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 0), v.repeat_interleave(2, 0), is_causal=True)
    torch.testing.assert_close(causal_attention(q, k, v), want)


def test_reference_unknown_arch_is_clear(tmp_path, tiny_llama_dir):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "mistral", ["MistralForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="mistral"):
        TextDecoder.from_pretrained(d)


# ------------------------------------------------------------------------------------------ quant rules

def test_quant_rules():
    assert tensor_qtype("blk.0.attn_norm.weight", (64,), "q4_0") == QT.F32
    assert tensor_qtype("blk.0.attn_q.bias", (64,), "f16") == QT.F32
    assert tensor_qtype("blk.0.attn_q.weight", (64, 64), "f32") == QT.F32
    assert tensor_qtype("blk.0.attn_q.weight", (64, 64), "bf16") == QT.BF16
    assert tensor_qtype("blk.0.attn_q.weight", (64, 48), "q8_0") == QT.F16      # 48 % 32 != 0
    assert tensor_qtype("blk.0.attn_q.weight", (64, 48), "f16") == QT.F16
    assert tensor_qtype("output.weight", (1000, 64), "q4_0") == QT.Q8_0
    assert tensor_qtype("token_embd.weight", (1000, 64), "q4_0") == QT.Q4_0
    assert tensor_qtype("token_embd.weight", (1000, 64), "q4_0", tied_embeddings=True) == QT.Q8_0
    with pytest.raises(ValueError, match="q3_k"):
        tensor_qtype("x", (32, 32), "q3_k")


def test_llama_permute_is_ggml_interleave():
    # per head, HF pairs (i, i + d/2); after the permute ggml's NORM rope pairs rows (2i, 2i + 1)
    n_head, d = 2, 8
    w = np.arange(n_head * d * 3, dtype=np.float32).reshape(n_head * d, 3)
    p = llama_permute(w, n_head)
    for h in range(n_head):
        for i in range(d // 2):
            np.testing.assert_array_equal(p[h * d + 2 * i], w[h * d + i])
            np.testing.assert_array_equal(p[h * d + 2 * i + 1], w[h * d + i + d // 2])
    np.testing.assert_array_equal(llama_unpermute(p, n_head), w)


# ------------------------------------------------------------------------------------------ GGUF

def _field(reader, key):
    f = reader.fields.get(key)
    assert f is not None, f"missing key {key}"
    return f.contents()


def _source_gguf_layout(cfg: TextConfig, tensors):
    """HF tensors renamed and permuted the way the GGUF should hold them (float32)."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    sub = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    out = {}
    for hf_name in tensors:
        if hf_name in names:
            g = names[hf_name]
        else:
            _, _, i, rest = hf_name.split(".", 3)
            mod, kind = rest.rsplit(".", 1)
            g = f"blk.{i}.{sub[mod]}.{kind}"
        a = tensors[hf_name].float().numpy()
        if cfg.arch == "llama" and (".attn_q." in g or ".attn_k." in g):
            a = llama_permute(a, cfg.num_heads if ".attn_q." in g else cfg.num_kv_heads)
        out[g] = a
    if cfg.tie_word_embeddings:
        out.pop("output.weight", None)
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("quant", QUANTS)
def test_gguf_round_trip(tiny_gguf, ref_models, arch, quant):
    path = tiny_gguf(arch, quant)
    config, tensors, _ = load_checkpoint(ref_models[arch])
    cfg = TextConfig.from_dict(config)
    r = gguf.GGUFReader(path)

    # metadata, llama.cpp's names
    expect = {
        "general.architecture": arch,
        "general.file_type": {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}[quant],
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.block_count": cfg.num_layers,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": cfg.num_heads,
        f"{arch}.attention.head_count_kv": cfg.num_kv_heads,
        f"{arch}.rope.dimension_count": cfg.head_dim,
        f"{arch}.vocab_size": cfg.vocab_size,
    }
    for key, val in expect.items():
        assert _field(r, key) == val, key
    assert _field(r, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.rms_norm_eps)
    assert _field(r, f"{arch}.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _field(r, "general.name") == ref_models[arch].name
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size                        # llama.cpp: n_tokens == token_embd rows
    if arch == "qwen2":                                         # padded rows past the tokenizer
        assert tokens[-1] == f"[PAD{cfg.vocab_size - 1}]"
        assert _field(r, "tokenizer.ggml.token_type")[-1] == int(gguf.TokenType.UNUSED)

    # tensors: names, shapes, types, data
    src = _source_gguf_layout(cfg, tensors)
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(src)
    assert ("output.weight" in got) == (not cfg.tie_word_embeddings)
    for name, a in src.items():
        t = got[name]
        assert tuple(int(x) for x in reversed(t.shape)) == a.shape, name     # GGUF stores ne reversed
        qt = tensor_qtype(name, a.shape, quant, tied_embeddings=cfg.tie_word_embeddings)
        assert t.tensor_type == qt, name
        data = np.asarray(t.data)
        if qt == QT.F32:
            np.testing.assert_array_equal(data.reshape(a.shape), a, err_msg=name)
        elif qt == QT.F16:
            np.testing.assert_array_equal(data.reshape(a.shape), a.astype(np.float16), err_msg=name)
        elif qt == QT.BF16:
            want = torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy()
            np.testing.assert_array_equal(data.view(np.int16).reshape(a.shape), want, err_msg=name)
        else:
            np.testing.assert_array_equal(data, gguf.quants.quantize(a, qt), err_msg=name)
            deq = gguf.quants.dequantize(data, qt).reshape(a.shape)
            rel = np.linalg.norm(deq - a) / np.linalg.norm(a)
            assert rel < (0.01 if qt == QT.Q8_0 else 0.15), (name, rel)

    if arch == "llama" and quant == "f32":   # q/k un-permute back to the HF tensors exactly
        w = got["blk.0.attn_k.weight"].data.reshape(src["blk.0.attn_k.weight"].shape)
        np.testing.assert_array_equal(llama_unpermute(w, cfg.num_kv_heads),
                                      tensors["model.layers.0.self_attn.k_proj.weight"].numpy())
        w = got["blk.1.attn_q.weight"].data.reshape(src["blk.1.attn_q.weight"].shape)
        np.testing.assert_array_equal(llama_unpermute(w, cfg.num_heads),
                                      tensors["model.layers.1.self_attn.q_proj.weight"].numpy())


def test_gguf_sizes_shrink_with_quant(tiny_gguf):
    sizes = [tiny_gguf("llama", q).stat().st_size for q in ["f32", "f16", "q8_0", "q4_0"]]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


# ------------------------------------------------------------------------------------------ CLI

def test_cli_converts(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "m.gguf"
    assert cli.main([str(tiny_llama_dir), "-o", str(out), "--quant", "q8_0"]) == 0
    assert out.is_file() and not (tmp_path / "m.gguf.tmp").exists()
    err = capsys.readouterr().err
    assert "llama q8_0" in err and "tensors" in err


def test_cli_missing_dir(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing"), "-o", str(tmp_path / "x.gguf")]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def test_cli_unknown_model_type(tmp_path, tiny_qwen2_dir, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_qwen2_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))
    assert cli.main([str(d), "-o", str(tmp_path / "x.gguf")]) == 2
    assert "'bert'" in capsys.readouterr().err


def test_cli_rejects_unknown_quant(tmp_path, tiny_qwen2_dir):
    with pytest.raises(SystemExit) as e:
        cli.main([str(tiny_qwen2_dir), "-o", str(tmp_path / "x.gguf"), "--quant", "q3_k"])
    assert e.value.code == 2
