"""mPLUG-2's caption decoder in the runtime (owl_cpp/src/models/mplug2.cpp) against the PyTorch reference
(owl_export/mplug2/reference.py) on a tiny random checkpoint in the official layout, exported by
owl_export.mplug2.language: logits at every step, greedy decoding, quantized files, copy_state_from (beams),
decode_step across contexts, and the errors of a wrong video."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from owl_cpp import _core  # noqa: E402
from owl_export.mplug2.config import load_checkpoint  # noqa: E402
from owl_export.mplug2.fixtures import make_tiny_mplug2_checkpoint  # noqa: E402
from owl_export.mplug2.language import read_vocab_tokens, write_decoder_gguf  # noqa: E402
from owl_export.mplug2.reference import Mplug2CaptionReference  # noqa: E402

N_POS = 40  # the fixture's max_positions


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_mplug2_checkpoint(tmp_path_factory.mktemp("mplug2dec") / "tiny", seed=3, max_positions=N_POS)


@pytest.fixture(scope="module")
def ref(ckpt):
    return Mplug2CaptionReference.from_dir(ckpt)


@pytest.fixture(scope="module")
def gguf_path(ckpt, tmp_path_factory):
    sd, cfg = load_checkpoint(ckpt)
    tokens = read_vocab_tokens(ckpt)
    out = {}
    for quant in ("f32", "f16", "q8_0"):
        out[quant] = tmp_path_factory.mktemp("mplug2gguf") / f"decoder-{quant}.gguf"
        write_decoder_gguf(sd, cfg, tokens, out[quant], quant)
    return out


@pytest.fixture(scope="module")
def model(gguf_path):
    return _core.Model.load(str(gguf_path["f32"]))


def encode(ref, seed):
    g = torch.Generator().manual_seed(seed)
    return ref.encode_video(torch.randn(ref.cfg.num_frames, 3, 224, 224, generator=g))


@pytest.fixture(scope="module")
def video(ref):
    return encode(ref, 5)


def ctx_for(model, video=None, n_batch=256, n_ctx=N_POS, kv_type="f32"):
    c = _core.Context(model, n_ctx, 2, n_batch, kv_type=kv_type)
    if video is not None:
        c.add_image(np.asarray(video, np.float32), 0)
    return c


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def sequence(ref, n=20, seed=0):
    rng = np.random.default_rng(seed)
    return [ref.cfg.bos_id] + [int(t) for t in rng.integers(0, ref.cfg.vocab_size, n - 1)]


def test_gguf_layout(gguf_path, model, ref):
    hp = model.hparams
    cfg = ref.cfg
    assert tuple(hp[k] for k in ("arch", "n_embd", "n_layer", "n_head", "n_ff", "n_vocab", "n_ctx_train")) == (
        "mplug2", cfg.text_width, cfg.decoder_layers, cfg.text_heads, cfg.text_intermediate, cfg.vocab_size, N_POS)
    from gguf import GGUFReader
    names = {t.name: t.tensor_type.name for t in GGUFReader(str(gguf_path["q8_0"])).tensors}
    assert names["position_embd.weight"] == "F32" and names["blk.0.cross_attn_k.weight"] == "Q8_0"
    assert names["blk.1.layer_output_norm.bias"] == "F32" and "output.weight" not in names
    # The vocabulary travels in the file: the runtime's WordPiece gives the reference tokenizer's ids.
    text = "A video of a man playing the unaffable game"
    assert model.tokenizer.encode(text, add_special=True) == ref.tok.encode(text)


def test_logits_every_step_match_reference(model, ref, video):
    ids = sequence(ref)
    want = ref.decoder_logits(video, ids, cache=True).numpy()
    ctx = ctx_for(model, video)
    got = np.stack([ctx.eval([t]) for t in ids])
    errs = [rel(got[i], want[i]) for i in range(len(ids))]
    assert max(errs) < 1e-4, errs
    # The whole sequence as one batch (causal self-attention inside a piece, pieces of 7) gives the same.
    ctx2 = ctx_for(model, video, n_batch=7)
    assert rel(ctx2.decode(ids=ids, all_logits=True), want) < 1e-4
    # Only the last row asked for: the last layer prunes the others.
    ctx3 = ctx_for(model, video, n_batch=7)
    assert rel(ctx3.eval(ids), want[-1]) < 1e-4
    # A different video changes the logits (the cross-attention is really read).
    other = ctx_for(model, encode(ref, 6))
    assert rel(other.eval(ids[:3]), want[2]) > 1e-2


def runtime_greedy(ctx, bos, n):
    out, tok = [], bos
    for _ in range(n):
        tok = int(np.argmax(ctx.eval([tok])))
        out.append(tok)
    return out


def test_greedy_20_tokens_identical(model, ref, video):
    want = ref.greedy(video, max_len=20, stop_at_eos=False)
    assert runtime_greedy(ctx_for(model, video), ref.cfg.bos_id, 20) == want


@pytest.mark.parametrize("quant,tol,gap", [("f16", 3e-3, 0.05), ("q8_0", 3e-2, 0.75)])
def test_quantized_files_stay_close(gguf_path, ref, video, quant, tol, gap):
    # Measured on this fixture (width 64, so a Q8_0 block is half a row): f16 5-6e-4, q8_0 1.7-2.0e-2 (weights
    # and activations rounded to int8 blocks; q4_0 gives 0.13). Another video moves the reference's logits by only
    # 3-9e-2 here, so each step is also held to a fraction of that distance: measured 0.013 (f16) and 0.47 (q8_0)
    # of it; a runtime that misread the video would sit near 1.
    m = _core.Model.load(str(gguf_path[quant]))
    ids = sequence(ref, seed=1)
    want = ref.decoder_logits(video, ids, cache=True).numpy()
    elsewhere = ref.decoder_logits(encode(ref, 6), ids, cache=True).numpy()
    ctx = ctx_for(m, video)
    got = np.stack([ctx.eval([t]) for t in ids])
    assert rel(got, want) < tol
    for i in range(len(ids)):
        assert rel(got[i], want[i]) < gap * rel(elsewhere[i], want[i]), i


def test_copy_state_from_continues_as_the_original(model, ref, video):
    ids = sequence(ref, seed=2)
    a = ctx_for(model, video)
    a.eval(ids[:8])
    b = ctx_for(model)                  # no video of its own: it comes with the state
    b.copy_state_from(a)
    assert (b.n_past, b.n_images, b.visual_bytes) == (8, 1, a.visual_bytes)
    np.testing.assert_array_equal(b.eval(ids[8:12], all_logits=True), a.eval(ids[8:12], all_logits=True))
    # Diverging beams: b takes another continuation, a is untouched by it, both agree with fresh contexts.
    c = ctx_for(model)
    c.copy_state_from(a)
    got_c = c.eval([7, 8])
    got_a = a.eval([9])
    want = ref.decoder_logits(video, ids[:12] + [7, 8]).numpy()[-1]
    assert rel(got_c, want) < 1e-4
    assert rel(got_a, ref.decoder_logits(video, ids[:12] + [9]).numpy()[-1]) < 1e-4
    # A longer context into a shorter one whose n_ctx still holds the prefix is fine; one that does not is not.
    short = ctx_for(model, n_ctx=16)
    short.copy_state_from(b)
    with pytest.raises(_core.OwlError, match="more than this context"):
        ctx_for(model, n_ctx=4).copy_state_from(b)


def test_copy_state_from_refuses_another_model_or_cache_type(model, gguf_path, video):
    a = ctx_for(model, video)
    a.eval([101])
    other = _core.Model.load(str(gguf_path["f32"]))
    with pytest.raises(_core.OwlError, match="another model"):
        ctx_for(other).copy_state_from(a)
    with pytest.raises(_core.OwlError, match="KV cache"):
        ctx_for(model, kv_type="f16").copy_state_from(a)


def test_decode_step_over_three_contexts_equals_single_steps(model, ref, video):
    # The stacked pass (mplug2's step_layer): projections and FFN over the three rows, each context's own
    # self-attention cache and video cross-attention.
    videos = [video, encode(ref, 7), encode(ref, 8)]
    prefixes = [sequence(ref, n, seed=10 + n) for n in (3, 5, 1)]
    batched = [ctx_for(model, v) for v in videos]
    single = [ctx_for(model, v) for v in videos]
    for b, s, p in zip(batched, single, prefixes):
        b.eval(p)
        s.eval(p)
    for step_tokens in ([11, 12, 13], [14, 15, 16]):
        got = _core.decode_step(batched, step_tokens)
        want = np.stack([s.eval([t]) for s, t in zip(single, step_tokens)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert [c.n_past for c in batched] == [5, 7, 3]
    # One context without its video: the step is refused and no context changes.
    bare = ctx_for(model)
    with pytest.raises(_core.OwlError, match="no video attached"):
        _core.decode_step([batched[0], bare], [1, 2])
    assert (batched[0].n_past, bare.n_past) == (5, 0)
    np.testing.assert_allclose(_core.decode_step(batched[:1], [17])[0], single[0].eval([17]), rtol=0,
                               atol=1e-5 * np.abs(want).max())


def test_decode_step_over_beams_sharing_a_video(model, ref, video):
    # Beams copied from one context share its video's K/V: consecutive ones attend to it in one call. Order
    # [a, a', b, a'']: a run of two, another video, a run of one.
    other = encode(ref, 7)
    root = ctx_for(model, video)
    root.eval(sequence(ref, 4, seed=20))
    b = ctx_for(model, other)
    b.eval(sequence(ref, 2, seed=21))
    beams = [ctx_for(model) for _ in range(3)]
    for c in beams:
        c.copy_state_from(root)
    beams[1].eval([40])                      # a' one token further on than a
    order = [beams[0], beams[1], b, beams[2]]
    twins = [ctx_for(model) for _ in order]
    for t, c in zip(twins, order):
        t.copy_state_from(c)
    for step in ([50, 51, 52, 53], [54, 55, 56, 57]):
        got = _core.decode_step(order, step)
        want = np.stack([t.eval([tok]) for t, tok in zip(twins, step)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # and against the reference for the beam that went its own way
    ids = sequence(ref, 4, seed=20) + [40, 51, 55]
    assert rel(got[1], ref.decoder_logits(video, ids).numpy()[-1]) < 1e-4


def test_video_errors(model, ref, video):
    v = np.asarray(video, np.float32)
    ctx = ctx_for(model)
    with pytest.raises(ValueError, match=rf"\[n_tokens, {ref.cfg.text_width}\]"):
        ctx.add_image(v[:, :-1], 0)
    bad = v.copy()
    bad[3, 5] = np.nan
    with pytest.raises(_core.OwlError, match="non-finite"):
        ctx.add_image(bad, 0)
    with pytest.raises(_core.OwlError, match="no video attached"):
        ctx.eval([101])
    assert ctx.n_past == 0
    with pytest.raises(_core.OwlError, match="start 0"):
        ctx.add_image(v, 3)
    ctx.add_image(v, 0)
    ctx.eval([101, 2000 % ref.cfg.vocab_size])
    with pytest.raises(_core.OwlError, match="truncate"):
        ctx.add_image(v, 0)
    # An empty context takes a new video in place of the old one.
    ctx.truncate(0)
    other = encode(ref, 9)
    ctx.add_image(np.asarray(other, np.float32), 0)
    assert ctx.n_images == 1
    assert rel(ctx.eval([101]), ref.decoder_logits(other, [101]).numpy()[0]) < 1e-4


def test_context_longer_than_the_positions_is_refused(model):
    with pytest.raises(_core.OwlError, match=f"{N_POS} learned positions"):
        _core.Context(model, N_POS + 1, 1)
    ctx = ctx_for(model, np.zeros((2, model.hparams["n_embd"]), np.float32), n_ctx=N_POS)
    with pytest.raises(_core.OwlError, match=f"position {N_POS} is past"):
        ctx.decode(ids=[101], pos=[N_POS])
    assert ctx.n_past == 0


GPU_BACKENDS = [b for b in _core.available_backends() if b != "cpu"]


@pytest.mark.parametrize("backend", GPU_BACKENDS or [pytest.param("cuda", marks=pytest.mark.skip("no GPU backend here"))])
def test_decoder_on_cuda(model, ref, video, backend):
    # The same checks on a device backend (tests/run_gpu_checks.sh runs them): every step's logits, a copied
    # context continuing as its source, and decode_step (one context after another there).
    ids = sequence(ref)
    want = ref.decoder_logits(video, ids, cache=True).numpy()

    def dev_ctx(v=video):
        c = _core.Context(model, N_POS, 2, 256, kv_type="f32", backend=backend)
        if v is not None:
            c.add_image(np.asarray(v, np.float32), 0)
        return c

    a = dev_ctx()
    got = np.stack([a.eval([t]) for t in ids[:12]])
    assert rel(got, want[:12]) < 1e-4
    b = dev_ctx(None)
    b.copy_state_from(a)
    np.testing.assert_allclose(b.eval(ids[12:16], all_logits=True), want[12:16], rtol=0, atol=1e-4 * np.abs(want).max())
    steps = _core.decode_step([a, b], [ids[12], ids[16]])
    assert rel(steps[0], want[12]) < 1e-4 and rel(steps[1], want[16]) < 1e-4


def test_loader_names_a_missing_or_foreign_tensor(ckpt, tmp_path):
    import gguf as gg
    from owl_export.convert_text import PlannedTensor, write_gguf
    from owl_export.mplug2.language import add_mplug2_keys, mplug2_tensor_plan
    from owl_export.vocab import wordpiece_vocab, write_vocab

    sd, cfg = load_checkpoint(ckpt)
    vocab = wordpiece_vocab(read_vocab_tokens(ckpt))

    def setup(w: gg.GGUFWriter):
        add_mplug2_keys(w, cfg)
        write_vocab(w, vocab)

    plan = mplug2_tensor_plan(sd, cfg)
    missing = tmp_path / "missing.gguf"
    write_gguf(missing, setup, "mplug2", [t for t in plan if t.name != "blk.1.cross_attn_v.bias"], "f32",
               tied_embeddings=True, progress=False)
    with pytest.raises(ValueError, match="blk.1.cross_attn_v.bias"):
        _core.Model.load(str(missing))
    untied = tmp_path / "untied.gguf"
    embd = next(t for t in plan if t.name == "token_embd.weight")
    write_gguf(untied, setup, "mplug2", plan + [PlannedTensor("output.weight", "x", embd.shape, embd.load)], "f32",
               tied_embeddings=True, progress=False)
    with pytest.raises(ValueError, match="tied"):
        _core.Model.load(str(untied))
