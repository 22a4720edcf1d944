"""The C++ owl2 decoder (mPLUG-Owl2's modality-adaptive module; Owl v1's plain LLaMA) against the PyTorch
reference of docs/owl2.md A5 on the tiny random checkpoints: one MAM layer with mixed text/image tokens, logits
at prefill and at 16 decode steps (text branch) with 0, 1 and 2 spliced images, greedy tokens, a second turn
after truncating the cache, v1, quantized exports, and files whose image branch is malformed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import owl_cpp
from owl_cpp import _core
from owl_export.owl2.convert import PreparedOwl2Decoder
from owl_export.owl2.fixtures import make_tiny_owl2_checkpoint
from owl_export.owl2.language import IMAGE_TOKEN_INDEX as IMG, Owl2LanguageReference

TOL = 1e-4
ERRORS: dict[str, float] = {}         # measured maxima, printed by the last test (pytest -s)


@pytest.fixture(scope="session")
def owl2(tmp_path_factory):
    """name -> (reference float64, gguf path); built once. Names: "owl2", "owl2-1layer", "owl1", "owl21" (Owl2.1),
    "owl21-1layer"; quantized exports as "owl2:q8_0" etc. get.root / name is a name's checkpoint directory."""
    root = tmp_path_factory.mktemp("owl2")
    cache: dict = {}

    def get(name: str):
        if name in cache:
            return cache[name]
        base, _, quant = name.partition(":")
        hf = root / base
        if not hf.exists():
            variant = {"owl1": "owl1", "owl21": "owl2_1"}.get(base.split("-")[0], "owl2")
            make_tiny_owl2_checkpoint(hf, variant, num_layers=1 if base.endswith("-1layer") else 2)
        out = root / f"{base}.{quant or 'f32'}.gguf"
        PreparedOwl2Decoder(hf, quant or "f32").write(out, progress=False)
        ref = cache[base][0] if base in cache else Owl2LanguageReference.from_pretrained(hf, torch.float64)
        cache[name] = (ref, out)
        return cache[name]

    get.root = root
    return get


def rel_err(a, b) -> float:
    b = b.numpy() if torch.is_tensor(b) else np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def images(ref, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(ref.cfg.image_tokens, ref.c.hidden_size, generator=g, dtype=torch.float64) for _ in range(n)]


def prompt(n_images):
    ids = [1, 17, 230, 45]
    for k in range(n_images):
        ids += [IMG, 12 + k, 99, 7]
    return ids + [300, 31, 42, 5]


def context(path, n_batch=256):
    return _core.Context(_core.Model.load(str(path)), 512, 2, n_batch, kv_type="f32")


def feed(ctx, embeds, modality, all_logits=True):
    return ctx.decode(embeds=np.asarray(embeds, np.float32), modality=[int(m) for m in modality],
                      all_logits=all_logits)


def runtime_greedy(ctx, logits, n) -> list[int]:
    """n argmax tokens from the context, starting from the prefill's last logits; each fed back as text."""
    got = []
    for _ in range(n):
        got.append(int(np.argmax(logits)))
        logits = ctx.decode(ids=[got[-1]])
    return got


def run_and_check(ref, path, n_images, steps=16, tol=TOL, n_batch=256, key=None):
    """Prefill (embeds + modality when there are images, ids otherwise) and `steps` greedy decode steps of
    text tokens: every logit row against the reference; returns the tokens and the max errors."""
    ids = prompt(n_images)
    embeds, mod = ref.splice(ids, images(ref, n_images))
    want, past = ref(embeds, mod)
    ctx = context(path, n_batch)
    got = feed(ctx, embeds, mod) if n_images else ctx.decode(ids=ids, all_logits=True)
    assert got.shape == tuple(want.shape)
    pre = rel_err(got, want)
    assert pre < tol, f"prefill with {n_images} images: relative error {pre:.2e}"
    dec, toks, last, want_last = 0.0, [], got[-1], want[-1]
    for step in range(steps):
        tok = int(want_last.argmax())
        assert int(np.argmax(last)) == tok, f"greedy token differs at decode step {step}"
        toks.append(tok)
        last = ctx.decode(ids=[tok])
        want_step, past = ref(ref.embed([tok]), [0], past)        # every decode step: the text branch
        want_last = want_step[-1]
        dec = max(dec, rel_err(last, want_last))
        assert dec < tol, f"decode step {step} ({n_images} images): relative error {dec:.2e}"
    if key:
        ERRORS[f"{key} prefill"] = max(ERRORS.get(f"{key} prefill", 0.0), pre)
        ERRORS[f"{key} decode"] = max(ERRORS.get(f"{key} decode", 0.0), dec)
    return toks


# ------------------------------------------------------------------------------------------- the MAM layer

def test_hparams_describe_the_variant(owl2):
    for name, variant, multiway in [("owl2", "owl2", True), ("owl1", "owl1", False)]:
        ref, path = owl2(name)
        hp = _core.Model.load(str(path)).hparams
        assert hp["arch"] == "owl2" and hp["rope_mode"] == "norm"
        assert hp["owl2_variant"] == variant and hp["multiway"] is multiway
        assert hp["image_tokens"] == ref.cfg.image_tokens


def test_one_mam_layer_mixed_tokens_and_wrong_branch_is_detected(owl2):
    ref, path = owl2("owl2-1layer")
    ids = [1, 17, IMG, 230, 45, IMG, 9]
    embeds, mod = ref.splice(ids, images(ref, 2, seed=3))
    assert mod.tolist() == [0, 0] + [1] * ref.cfg.image_tokens + [0, 0] + [1] * ref.cfg.image_tokens + [0]
    want, _ = ref(embeds, mod)
    got = feed(context(path), embeds, mod)
    err = rel_err(got, want)
    ERRORS["1-layer MAM"] = err
    assert err < TOL, f"one MAM layer: relative error {err:.2e}"
    # the same tokens through the text branch only: clearly different, in the reference and in the runtime
    text_only, _ = ref(embeds, torch.zeros_like(mod))
    assert rel_err(text_only, want) > 1e-2
    wrong = feed(context(path), embeds, [0] * len(mod))
    assert rel_err(wrong, want) > 1e-2 and rel_err(wrong, text_only) < TOL
    # and the image rows pieces in small batches (pieces split inside an image run) still match
    got_small = feed(context(path, n_batch=4), embeds, mod)
    assert rel_err(got_small, want) < TOL


# ------------------------------------------------------------------------------------------- f32 parity

@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_prefill_and_decode_match_reference(owl2, n_images):
    ref, path = owl2("owl2")
    run_and_check(ref, path, n_images, key="f32")


def test_greedy_32_tokens_identical(owl2):
    ref, path = owl2("owl2")
    ids = prompt(1)
    embeds, mod = ref.splice(ids, images(ref, 1, seed=5))
    want = ref.greedy(embeds, mod, 32)
    ctx = context(path)
    assert runtime_greedy(ctx, feed(ctx, embeds, mod, all_logits=False), 32) == want


def test_second_turn_after_truncate_matches_full_recompute(owl2):
    """Turn 1 (text, image, text) + 6 generated tokens; the cache cut back to 3 of them, turn 2 appended:
    the same logits as evaluating the whole conversation at once (image K/V kept from the prefill)."""
    ref, path = owl2("owl2")
    embeds, mod = ref.splice(prompt(1), images(ref, 1, seed=7))
    ctx = context(path)
    gen = runtime_greedy(ctx, feed(ctx, embeds, mod, all_logits=False), 6)
    keep = len(mod) + 3
    ctx.truncate(keep)
    assert ctx.n_past == keep
    turn2 = [13, 77, 301, 2, 64]
    got = ctx.decode(ids=turn2, all_logits=True)
    whole = torch.cat([embeds, ref.embed(gen[:3] + turn2)])
    whole_mod = torch.cat([mod, torch.zeros(3 + len(turn2), dtype=torch.long)])
    want, _ = ref(whole, whole_mod)
    err = rel_err(got, want[keep:])
    ERRORS["f32 second turn"] = err
    assert err < TOL, f"second turn: relative error {err:.2e}"
    # and an image in the second turn, appended after the truncation
    ctx.truncate(keep)
    e2, m2 = ref.splice([13, IMG, 77], images(ref, 1, seed=8))
    got = feed(ctx, e2, m2)
    want, _ = ref(torch.cat([embeds, ref.embed(gen[:3]), e2]), torch.cat([mod, torch.zeros(3, dtype=torch.long), m2]))
    assert rel_err(got, want[keep:]) < TOL


# ------------------------------------------------------------------------------------------- v1, llama

def test_owl1_plain_llama(owl2):
    ref, path = owl2("owl1")
    import gguf

    assert not any(".img." in t.name for t in gguf.GGUFReader(path).tensors)
    for n_images in (0, 1):
        run_and_check(ref, path, n_images, steps=8, key="owl1 f32")


def test_plain_llama_gguf_still_loads_as_llama(tiny_gguf):
    m = _core.Model.load(str(tiny_gguf("llama", "f32")))
    assert m.hparams["arch"] == "llama" and "multiway" not in m.hparams


# ------------------------------------------------------------------------------------------- quantized

@pytest.mark.parametrize("quant,tol,min_corr,min_agree", [("q8_0", 1e-1, 0.999, 0.9), ("q4_0", 1.0, 0.95, 0.5)])
def test_quantized_exports(owl2, quant, tol, min_corr, min_agree):
    """Teacher-forced on the reference's greedy tokens (1 image): logits close, correlated, mostly the same
    argmax; the quantized image K/V are repacked with the rest."""
    ref, path = owl2(f"owl2:{quant}")
    check_teacher_forced(ref, path, quant, tol, min_corr, min_agree)


def check_teacher_forced(ref, path, key, tol, min_corr, min_agree, steps=16):
    """A quantized file teacher-forced on the reference's greedy tokens after a 1-image prompt: logits close,
    correlated, mostly the same argmax, and the image branch still matters (text-only is clearly worse)."""
    embeds, mod = ref.splice(prompt(1), images(ref, 1))
    want_tokens = ref.greedy(embeds, mod, steps)
    full = torch.cat([embeds, ref.embed(want_tokens)])
    want, _ = ref(full, torch.cat([mod, torch.zeros(steps, dtype=torch.long)]))
    ctx = context(path)
    got = np.concatenate([feed(ctx, embeds, mod)] + [ctx.decode(ids=[t])[None] for t in want_tokens])[: len(full)]
    err = rel_err(got, want)
    corr = float(np.corrcoef(got.ravel(), want.numpy().ravel())[0, 1])
    agree = float(np.mean(got.argmax(-1) == want.numpy().argmax(-1)))
    ERRORS[f"{key} rel"], ERRORS[f"{key} corr"], ERRORS[f"{key} argmax agree"] = err, corr, agree
    assert err < tol and corr > min_corr and agree >= min_agree, (err, corr, agree)
    wrong = feed(context(path), embeds, [0] * len(mod))
    assert rel_err(wrong, want[: len(mod)]) > 2 * rel_err(got[: len(mod)], want[: len(mod)])


def test_q4_0_image_branch_is_repacked(owl2):
    _, p2 = owl2("owl2:q4_0")
    _, p1 = owl2("owl1:q4_0")
    m2, m1 = _core.Model.load(str(p2)), _core.Model.load(str(p1))
    if m1.packed_bytes == 0:
        pytest.skip("the active kernels keep Q4_0 in the file's layout")
    hp = m2.hparams
    kv = hp["n_head_kv"] * hp["head_dim"]
    extra = m2.packed_bytes - m1.packed_bytes      # the layouts differ only by the image K/V matrices
    assert extra > 0 and extra % (2 * hp["n_layer"]) == 0
    assert extra // (2 * hp["n_layer"]) >= kv * hp["n_embd"] // 2   # at least 4 bits per weight


# ------------------------------------------------------------------------------------------- hostile files

@pytest.fixture(scope="session")
def owl2_hf(tmp_path_factory):
    hf = tmp_path_factory.mktemp("owl2-hostile") / "owl2"
    make_tiny_owl2_checkpoint(hf, "owl2")
    return hf


def _write(hf, out, edit):
    p = PreparedOwl2Decoder(hf, "f32")
    p.plan = edit(p.plan)
    p.write(out, progress=False)
    return out


def test_img_tensor_with_wrong_shape_is_refused(owl2_hf, tmp_path):
    import dataclasses

    def bad_v(plan):
        out = []
        for t in plan:
            if t.name == "blk.1.img.attn_v.weight":
                t = dataclasses.replace(t, shape=(t.shape[0] // 2, t.shape[1]),
                                        load=lambda: np.zeros((32, 64), np.float32))
            out.append(t)
        return out

    def bad_norm(plan):
        return [dataclasses.replace(t, shape=(t.shape[0] + 1,), load=lambda: np.ones(65, np.float32))
                if t.name == "blk.0.img.ffn_norm.weight" else t for t in plan]

    for edit, name in [(bad_v, "blk.1.img.attn_v.weight"), (bad_norm, "blk.0.img.ffn_norm.weight")]:
        path = _write(owl2_hf, tmp_path / "bad.gguf", edit)
        with pytest.raises(owl_cpp.FormatError, match=name.replace(".", r"\.")):
            _core.Model.load(str(path))


def test_img_tensors_in_some_layers_only_are_refused(owl2_hf, tmp_path):
    def without(prefix):
        return lambda plan: [t for t in plan if not t.name.startswith(prefix)]

    only_layer0 = _write(owl2_hf, tmp_path / "l0.gguf", without("blk.1.img."))
    with pytest.raises(owl_cpp.FormatError, match=r"blk\.1\.img\.attn_norm\.weight"):
        _core.Model.load(str(only_layer0))
    only_layer1 = _write(owl2_hf, tmp_path / "l1.gguf", without("blk.0.img."))
    with pytest.raises(owl_cpp.FormatError, match=r"blk\.0\.img\.attn_norm\.weight"):
        _core.Model.load(str(only_layer1))
    one_missing = _write(owl2_hf, tmp_path / "k.gguf", without("blk.1.img.attn_k.weight"))
    with pytest.raises(owl_cpp.FormatError, match=r"blk\.1\.img\.attn_k\.weight"):
        _core.Model.load(str(one_missing))


def test_variant_key_must_agree_with_the_tensors(owl2, tmp_path):
    from gguf_edit import STRING, rewrite

    _, p2 = owl2("owl2")
    _, p1 = owl2("owl1")
    with pytest.raises(owl_cpp.FormatError, match="img"):
        _core.Model.load(str(rewrite(p2, tmp_path / "a.gguf", {"owl2.variant": (STRING, "owl1")})))
    with pytest.raises(owl_cpp.FormatError, match=r"blk\.0\.img\.attn_norm\.weight"):
        _core.Model.load(str(rewrite(p1, tmp_path / "b.gguf", {"owl2.variant": (STRING, "owl2")})))
    with pytest.raises(owl_cpp.FormatError, match="owl2.variant"):
        _core.Model.load(str(rewrite(p1, tmp_path / "c.gguf", {"owl2.variant": (STRING, "owl3")})))


def test_owl2_1_tensors_are_refused_by_name(owl2_hf, tmp_path):
    """blk.N.img.attn_q.weight belongs to mPLUG-Owl2.1's layout (owl2.variant owl2_1, tests/test_owl21_decoder.py):
    in an owl2 file it is named, not silently ignored."""
    import dataclasses

    def with_img_q(plan):
        q = next(t for t in plan if t.name == "blk.0.attn_q.weight")
        k = next(i for i, t in enumerate(plan) if t.name == "blk.0.img.ffn_norm.weight")
        return plan[:k + 1] + [dataclasses.replace(q, name="blk.0.img.attn_q.weight")] + plan[k + 1:]

    path = _write(owl2_hf, tmp_path / "q.gguf", with_img_q)
    with pytest.raises(owl_cpp.FormatError, match=r"blk\.0\.img\.attn_q\.weight"):
        _core.Model.load(str(path))


def test_report_errors():
    for k, v in ERRORS.items():
        print(f"  {k}: {v:.3e}")
