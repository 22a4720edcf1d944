"""The C++ Owl3 decoder (hyper-attention, visual K/V cached beside the text KV cache) against the PyTorch
reference of docs/owl3.md, for all three variants: logits at prefill and at each of 16 decode steps, fp32
relative error < 1e-4, with no image, one image, two images at different positions, a cut image (5 views),
images added between turns, and prompts evaluated in small chunks across image boundaries."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from owl_cpp import _core
from owl_export.owl3 import Owl3Reference

VARIANTS = ["1b", "7b-240728", "7b-241101"]
TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tiny_owl3_model):
    """variant -> (hf_dir, model_dir, float64 reference)."""
    refs = {}

    def get(variant):
        hf, out = tiny_owl3_model(variant)
        if variant not in refs:
            refs[variant] = Owl3Reference.from_pretrained(hf, dtype=torch.float64)
        return hf, out, refs[variant]

    return get


def rel_err(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def chunks_to_ids(tok, chunks):
    """Each text chunk tokenized on its own, `<|image|>` included, as the official processor does
    (docs/owl3.md §6.1)."""
    ids, starts = [], []
    for c in chunks:
        if c == "<|image|>":
            starts.append(len(ids))
        ids += list(tok.encode(c, False, True))
    return ids, starts


def image_embeds(ref, n, seed):
    P, H = ref.variant.num_patches, ref.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, P, H, generator=g, dtype=torch.float64)


def run(model_dir, ids, embeds, starts, n_batch=256, steps=16, ref=None, n_ctx=512):
    """Runtime logits at every prompt position and greedy decode steps; checks each against `ref`."""
    model = _core.Model.load(str(model_dir / "decoder.gguf"))
    ctx = _core.Context(model, n_ctx, 2, n_batch, kv_type="f32")
    for e, s in zip(embeds, starts):
        ctx.add_image(e.numpy().astype(np.float32), s)
    got = ctx.eval(ids, all_logits=True)
    want = ref.forward(ids, embeds if starts else None, starts if starts else None).numpy()
    errs = [rel_err(got[t], want[t]) for t in range(len(ids))]
    assert max(errs) < TOL, f"prefill: max relative error {max(errs):.2e} at position {int(np.argmax(errs))}"
    seq, last = list(ids), got[-1]
    for step in range(steps):
        tok = int(np.argmax(last))
        assert tok == int(np.argmax(want[-1])), f"greedy token differs at decode step {step}"
        seq.append(tok)
        last = ctx.eval([tok])
        want = ref.forward(seq, embeds if starts else None, starts if starts else None).numpy()
        err = rel_err(last, want[-1])
        assert err < TOL, f"decode step {step}: relative error {err:.2e}"
    return ctx


def test_hparams_describe_the_variant(exported):
    for variant, name, fused in [("1b", "241014", False), ("7b-240728", "240728", False), ("7b-241101", "241101", True)]:
        _, out, ref = exported(variant)
        hp = _core.Model.load(str(out / "decoder.gguf")).hparams
        assert hp["arch"] == "owl3" and hp["hyper_variant"] == name and hp["hyper_fused"] is fused
        assert list(hp["hyper_layers"]) == list(ref.variant.hyper_layers)


@pytest.mark.parametrize("variant", VARIANTS)
def test_text_only(variant, exported):
    hf, out, ref = exported(variant)
    tok = _core.Model.load(str(out / "decoder.gguf")).tokenizer
    ids, starts = chunks_to_ids(tok, ["<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n"])
    run(out, ids, [], [], ref=ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_image(variant, exported):
    hf, out, ref = exported(variant)
    tok = _core.Model.load(str(out / "decoder.gguf")).tokenizer
    ids, starts = chunks_to_ids(tok, ["<|im_start|>user\n", "<|image|>", "Describe this image.<|im_end|>\n<|im_start|>assistant\n"])
    run(out, ids, image_embeds(ref, 1, 0), starts, ref=ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_images_at_different_positions_in_small_chunks(variant, exported):
    hf, out, ref = exported(variant)
    tok = _core.Model.load(str(out / "decoder.gguf")).tokenizer
    ids, starts = chunks_to_ids(tok, ["<|im_start|>user\nFirst ", "<|image|>", " and then a second one ", "<|image|>",
                                      " what changed?<|im_end|>\n<|im_start|>assistant\n"])
    run(out, ids, image_embeds(ref, 2, 1), starts, n_batch=3, steps=8, ref=ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cut_image_five_views(variant, exported):
    hf, out, ref = exported(variant)
    tok = _core.Model.load(str(out / "decoder.gguf")).tokenizer
    chunks = ["<|im_start|>user\n", "<|start_cut|>", "2*2", "\n"]
    for i in range(4):
        chunks += ["<|image|>"] + ([" "] if i % 2 == 0 else ["\n"])
    chunks += ["<|end_cut|>", "<|image|>", "\nRead the text.<|im_end|>\n<|im_start|>assistant\n"]
    ids, starts = chunks_to_ids(tok, chunks)
    assert len(starts) == 5
    run(out, ids, image_embeds(ref, 5, 2), starts, steps=4, ref=ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_added_in_a_later_turn(variant, exported):
    """Turn 1 is text only; turn 2 brings an image: the cached text of turn 1 is reused as is."""
    hf, out, ref = exported(variant)
    model = _core.Model.load(str(out / "decoder.gguf"))
    tok = model.tokenizer
    turn1, _ = chunks_to_ids(tok, ["<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"])
    turn2, s2 = chunks_to_ids(tok, ["<|im_start|>user\n", "<|image|>", "What is it?<|im_end|>\n<|im_start|>assistant\n"])
    starts = [len(turn1) + s for s in s2]
    emb = image_embeds(ref, 1, 4)
    ctx = _core.Context(model, 512, 2, 256, kv_type="f32")
    ctx.eval(turn1, return_logits=False)
    ctx.add_image(emb[0].numpy().astype(np.float32), starts[0])
    got = ctx.eval(turn2, all_logits=True)
    want = ref.forward(turn1 + turn2, emb, starts).numpy()[len(turn1):]
    assert max(rel_err(got[t], want[t]) for t in range(len(turn2))) < TOL


def test_visual_state_is_per_image_and_small(exported):
    hf, out, ref = exported("1b")
    model = _core.Model.load(str(out / "decoder.gguf"))
    ctx = _core.Context(model, 512, 1, kv_type="f32")
    P, H = ref.variant.num_patches, ref.config.hidden_size
    ctx.add_image(np.zeros((P, H), np.float32), 3)
    per_image = ctx.visual_bytes
    ctx.add_image(np.zeros((P, H), np.float32), 20)
    assert ctx.n_images == 2 and ctx.visual_bytes >= 2 * per_image * 0.99
    n_hyper = len(ref.variant.hyper_layers)
    assert per_image <= 2 * P * 2 * ref.config.num_kv_heads * ref.config.head_dim * 4 * n_hyper  # only hyper layers
    ctx.eval(list(range(1, 13)), return_logits=False)
    ctx.truncate(10)  # forgets the image starting at 20, keeps the one at 3
    assert ctx.n_images == 1 and ctx.n_past == 10


def test_image_errors(exported):
    hf, out, ref = exported("1b")
    model = _core.Model.load(str(out / "decoder.gguf"))
    ctx = _core.Context(model, 64, 1, kv_type="f32")
    P, H = ref.variant.num_patches, ref.config.hidden_size
    with pytest.raises(ValueError, match="must be"):
        ctx.add_image(np.zeros((P, H + 1), np.float32), 0)
    ctx.eval([1, 2, 3], return_logits=False)
    with pytest.raises(RuntimeError, match="before the 3 tokens"):
        ctx.add_image(np.zeros((P, H), np.float32), 1)
    ctx.add_image(np.zeros((P, H), np.float32), 5)
    with pytest.raises(RuntimeError, match="prompt order"):
        ctx.add_image(np.zeros((P, H), np.float32), 4)
    with pytest.raises(RuntimeError, match="outside the context"):
        ctx.add_image(np.zeros((P, H), np.float32), 64)
    with pytest.raises(RuntimeError, match="outside the context"):      # start + offset must not overflow
        ctx.add_image(np.zeros((P, H), np.float32), 2 ** 63 - 1)
    with pytest.raises(RuntimeError, match="before the 3 tokens"):
        ctx.add_image(np.zeros((P, H), np.float32), -2 ** 63)
    for bad in (np.nan, np.inf, -np.inf):                                 # a broken vision tower, not garbage
        e = np.zeros((P, H), np.float32)
        e[P - 1, 0] = bad
        with pytest.raises(RuntimeError, match=f"non-finite value .* at visual token {P - 1}"):
            ctx.add_image(e, 20)
    assert ctx.n_images == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_hyper_layer_model(variant, tmp_path):
    """A one-layer model whose only layer is a hyper layer: the logits are that layer's output through the final
    norm and lm_head, so this isolates one hyper layer (component test) from everything else."""
    from owl_export.cli import main as owl_export
    from owl_export.owl3.fixtures import make_tiny_owl3_checkpoint

    hf = make_tiny_owl3_checkpoint(tmp_path / "hf", variant, seed=5, num_layers=1, hyper_layers=[1])
    out = tmp_path / "model"
    assert owl_export([str(hf), "-o", str(out), "--quant", "f32", "-q"]) == 0
    ref = Owl3Reference.from_pretrained(hf, dtype=torch.float64)
    tok = _core.Model.load(str(out / "decoder.gguf")).tokenizer
    ids, starts = chunks_to_ids(tok, ["<|im_start|>user\nLook: ", "<|image|>", " and ", "<|image|>", " now?"])
    run(out, ids, image_embeds(ref, 2, 6), starts, steps=4, ref=ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_video_frames_and_32_greedy_tokens(variant, exported):
    """A video is a run of frame placeholders (docs/owl3.md 6.5: bare for 240728, framed for 241014/241101);
    the greedy continuation is checked for 32 tokens."""
    hf, out, ref = exported(variant)
    tok = _core.Model.load(str(out / "decoder.gguf")).tokenizer
    frames = ["<|image|>"] * 6
    if variant != "7b-240728":
        frames = ["<|start_video_frame|>"] + frames + ["<|end_video_frame|>"]
    ids, starts = chunks_to_ids(tok, ["<|im_start|>user\n"] + frames + ["What happens?<|im_end|>\n<|im_start|>assistant\n"])
    assert len(starts) == 6
    run(out, ids, image_embeds(ref, 6, 7), starts, steps=32, ref=ref)
