"""The demo model (#10): its training code against the Owl3 reference, the samples it learns from, and the
shipped files themselves — accuracy on held-out questions through owl_cpp.chat, agreement with the PyTorch
checkpoint, and that they are exactly what owl-export makes of the shipped checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import owl_cpp  # noqa: E402
from owl_cpp.demo import model_dir as demo  # noqa: E402
from owl_cpp.demo.questions import KINDS, ask  # noqa: E402
from owl_cpp.demo.scenes import Scene, Thing, draw, label_map, random_scene  # noqa: E402
from owl_export.demo import data  # noqa: E402
from owl_export.demo.config import DemoSizes  # noqa: E402
from owl_export.demo.evaluate import TARGETS, held_out, runtime_answers, score  # noqa: E402
from owl_export.demo.model import DemoOwl3  # noqa: E402
from owl_export.demo.train import save_checkpoint  # noqa: E402

SIZES = DemoSizes()
# The checkpoint the shipped files were exported from (python -m owl_export.demo.train writes it)
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "export" / "owl3-demo"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return data.train_tokenizer(tmp_path_factory.mktemp("demo-tok"), SIZES)


# ------------------------------------------------------------------------------------------- training code

def test_training_model_matches_the_owl3_reference(tokenizer, tmp_path):
    """The batched trainable model, saved in the official layout, gives the reference's logits for padded
    multi-turn batches with cut images (every parameter re-randomized: unit norms and zero biases hide bugs)."""
    from owl_export.owl3.language import Owl3Reference

    model = DemoOwl3(SIZES, len(tokenizer), seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    save_checkpoint(tmp_path / "ck", model, SIZES, tokenizer.path.parent, tokenizer)
    ref = Owl3Reference.from_pretrained(tmp_path / "ck")
    assert ref.variant.name == "240728" and ref.variant.hyper_layers == (1, 3)
    rng = np.random.default_rng(3)
    prep = data.preprocessing(SIZES)
    samples = [data.make_sample(rng, tokenizer, SIZES, prep, n_turns=n, cut=c) for n, c in ((1, True), (3, True), (2, False))]
    b = data.collate(samples, tokenizer.ids["<|endoftext|>"])
    with torch.no_grad():
        logits = model(b.ids, data.scatter_views(model.project(model.vision_features(b.pixels)), b), b.starts,
                       b.view_valid)
    for i, x in enumerate(samples):
        want = ref(torch.tensor(x.ids), ref.encode_images(torch.from_numpy(x.views)), x.starts)
        got = logits[i, :len(x.ids)]
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_samples_supervise_exactly_the_answers(tokenizer):
    rng = np.random.default_rng(4)
    x = data.make_sample(rng, tokenizer, SIZES, data.preprocessing(SIZES), n_turns=3,
                         kinds=["colour", "describe", "count"])
    targets = [t for t in x.labels if t != data.IGNORE]
    end = tokenizer.ids["<|im_end|>"]
    pieces, cur = [], []
    for t in targets:
        if t == end:
            pieces.append(tokenizer.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert pieces == [a for _, _, a in x.turns] and not cur
    assert len(x.starts) == len(x.views) == 5                      # a square picture: 2x2 tiles + global view
    assert all(tokenizer.tok.id_to_token(x.ids[s]) == "<|" for s in x.starts)


def test_lookups_point_at_the_answer_and_the_object_asked_about(tokenizer):
    """Each colour/shape/where question yields a lookup: its position predicts the answer's first token, and
    the batch's mask covers exactly the patches of the object whose colour, shape or cell is the answer."""
    rng = np.random.default_rng(8)
    prep = data.preprocessing(SIZES)
    samples = [data.make_sample(rng, tokenizer, SIZES, prep, n_turns=3, n_objects=3,
                                kinds=["colour", "count", "where"]),
               data.make_sample(rng, tokenizer, SIZES, prep, n_turns=2, n_objects=2, kinds=["describe", "shape"],
                                cut=False)]
    for x in samples:
        asked = [t for t, (kind, _, _) in enumerate(x.turns) if kind in data.LOOKUP_KINDS]
        answers, words = x.lookups[:x.n_answer_lookups], x.lookups[x.n_answer_lookups:]
        assert [turn for _, _, turn in answers] == asked
        for pos, obj, turn in answers:
            assert tokenizer.decode([x.labels[pos]]) == tokenizer.decode(tokenizer.encode(x.turns[turn][2])[:1])
            assert (x.objects == obj).any()
        for pos, obj, turn in words:            # the question's own word for the object, never the answer
            kind, question, answer = x.turns[turn]
            word = tokenizer.decode([x.ids[pos]]).strip()
            assert word in question.split(" ") or word + "?" in question or word + "." in question
            assert word != answer and (obj, turn) in [(o, t) for _, o, t in answers]
        assert {t for _, _, t in words} <= set(asked)
    assert len(samples[0].lookups) > samples[0].n_answer_lookups          # "What colour is the star?" names the star
    b = data.collate(samples, tokenizer.ids["<|endoftext|>"])
    n0, n1 = len(samples[0].lookups), len(samples[1].lookups)
    assert b.lookup_rows.tolist() == [0] * n0 + [1] * n1 and b.lookup_mask.shape == (n0 + n1, 5 * SIZES.num_patches)
    assert b.lookup_is_word.tolist() == [k >= x.n_answer_lookups for x in samples for k in range(len(x.lookups))]
    obj = samples[1].lookups[0][1]
    assert b.lookup_mask[n0, :SIZES.num_patches].tolist() == (samples[1].objects[0] == obj).tolist()
    assert not b.lookup_mask[n0, SIZES.num_patches:].any()          # one view: the other slots are padding
    scene = Scene((Thing("star", "red", 0, 0.8, 0, 0, 0), Thing("circle", "blue", 4, 0.8, 0, 0, 0)), "white",
                  (255, 255, 255), 112, 112, 0)
    assert [data.asked_object(scene, k, a) for k, a in (("colour", "blue"), ("shape", "star"), ("where", "center"),
                                                        ("count", "2"), ("colour", "green"))] == [1, 0, 1, None, None]


def test_attention_probes_are_the_hyper_attention(tokenizer):
    """attn_at returns, per hyper layer, the softmax over the visual rows at the asked positions (recomputed
    here by hand for a first-layer hyper layer, whose input is the embeddings) without changing the logits;
    the attention loss is -log of the head-averaged mass on the object's rows."""
    from dataclasses import replace

    from owl_export.demo.model import LM, _rms
    from owl_export.demo.train import attention_loss
    from owl_export.reference.decoder import apply_rope, rope_cos_sin

    s = replace(SIZES, hyper_layers=(1, 4))
    model = DemoOwl3(s, len(tokenizer), seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    x = data.make_sample(np.random.default_rng(9), tokenizer, s, data.preprocessing(s), n_turns=1, kinds=["where"])
    b = data.collate([x], tokenizer.ids["<|endoftext|>"])
    with torch.no_grad():
        vis = data.scatter_views(model.project(model.vision_features(b.pixels)), b)
        plain = model(b.ids, vis, b.starts, b.view_valid)
        logits, probes, keys = model(b.ids, vis, b.starts, b.view_valid, attn_at=(b.lookup_rows, b.lookup_pos))
        assert torch.equal(plain, logits) and len(probes) == 2
        assert probes[0].shape == (len(x.lookups), s.num_heads, 5 * s.num_patches) and len(x.lookups) == 2
        p, d, pos = LM + "layers.0.", s.head_dim, int(b.lookup_pos[0])
        norm = model.w(p + "input_layernorm.weight")
        xq = _rms(model.w(LM + "embed_tokens.weight")[b.ids[0, pos]], norm, s.rms_norm_eps)
        q = (model.w(p + "self_attn.q_proj.weight") @ xq + model.w(p + "self_attn.q_proj.bias")).view(s.num_heads, 1, d)
        cos, sin = rope_cos_sin(torch.tensor([pos]), d, s.rope_theta, q.dtype)
        q = apply_rope(q, cos, sin)
        rows = vis[0].reshape(-1, s.hidden_size)
        kv = torch.nn.functional.linear(_rms(rows, norm, s.rms_norm_eps), model.w(p + "self_attn.v_kv_proj.weight"),
                                        model.w(p + "self_attn.v_kv_proj.bias")).view(-1, s.num_kv_heads, 2, d)
        at = (torch.tensor(x.starts) + 1).repeat_interleave(s.num_patches)
        kcos, ksin = rope_cos_sin(at, d, s.rope_theta, q.dtype)
        k = apply_rope(kv[:, :, 0].transpose(0, 1), kcos, ksin).repeat_interleave(s.num_heads // s.num_kv_heads, 0)
        want = torch.softmax((q @ k.transpose(-1, -2)).squeeze(1) / d ** 0.5, -1)          # [heads, rows]
    torch.testing.assert_close(probes[0][0], want, rtol=1e-4, atol=1e-6)
    assert len(keys) == 2 and keys[0].shape == (1, 5 * s.num_patches, s.num_kv_heads * d)
    torch.testing.assert_close(keys[0][0], kv[:, :, 0].reshape(-1, s.num_kv_heads * d))
    mask = b.lookup_mask
    loss, mass = attention_loss(probes, mask)
    by_hand = torch.stack([(q_ * mask[:, None]).sum(-1).mean(-1) for q_ in probes])
    assert 0 < float(mass) < 1 and abs(float(mass) - float(by_hand.mean())) < 1e-6
    assert abs(float(loss) + float(torch.log(by_hand).mean())) < 1e-5
    on_object = [(mask / mask.sum(1, keepdim=True))[:, None].expand_as(q_) for q_ in probes]
    assert float(attention_loss(on_object, mask)[0]) < 1e-5


def test_key_shape_loss_reads_the_real_views(tokenizer):
    """The per-patch shape loss on the visual keys sees each real view's patches once, with their targets: a
    head that reads the targets planted in the keys scores near zero, one that reads padding slots would not."""
    from owl_export.demo.train import key_shape_loss

    rng = np.random.default_rng(10)
    prep = data.preprocessing(SIZES)
    samples = [data.make_sample(rng, tokenizer, SIZES, prep, cut=True), data.make_sample(rng, tokenizer, SIZES, prep, cut=False)]
    b = data.collate(samples, tokenizer.ids["<|endoftext|>"])
    B, V = b.starts.shape
    n = data.N_SHAPE_CLASSES
    keys = torch.zeros(B * V, SIZES.num_patches, n)
    keys[b.view_index] = torch.nn.functional.one_hot(b.patch_targets[..., 0], n).float()
    keys[~b.view_valid.reshape(-1)] = torch.nn.functional.one_hot(torch.zeros(SIZES.num_patches, dtype=torch.long), n).float()
    head = torch.nn.Linear(n, n)
    with torch.no_grad():
        head.weight.copy_(50 * torch.eye(n))
        head.bias.zero_()
    keys = [keys.view(B, V * SIZES.num_patches, n)]
    assert float(key_shape_loss([head], keys, b)) < 1e-6
    with torch.no_grad():
        head.weight.copy_(50 * torch.eye(n).roll(1, 0))
    assert float(key_shape_loss([head], keys, b)) > 10


def test_training_runs_end_to_end(tmp_path):
    """Two steps of the trainer's command: checkpoint, log, exported directory, and a second run that starts
    from the first one's weights."""
    import json

    from owl_export.demo.train import main as train

    assert train(["-o", str(tmp_path / "a"), "--steps", "2", "--batch", "2", "--eval-every", "2",
                  "--eval-per-kind", "1", "--threads", "1"]) == 0
    log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert log["steps"] == 2 and len(log["history"]) == 2 and set(log["held_out_torch"]) == set(KINDS) | {"average"}
    model = owl_cpp.load(tmp_path / "a" / "model", threads=1)
    assert model.variant == "240728" and isinstance(model.chat(draw(random_scene(np.random.default_rng(0))), "Hi",
                                                               max_tokens=2), str)
    assert train(["-o", str(tmp_path / "b"), "--steps", "1", "--batch", "2", "--eval-every", "1", "--eval-per-kind",
                  "1", "--threads", "1", "--init", str(tmp_path / "a" / "checkpoint"), "--no-export",
                  "--shape-focus", "2", "--focus", "colour=3,where=2", "--attn-supervision", "1", "--freeze-vision",
                  "--key-shape", "0.5", "--attn-words"]) == 0
    assert (tmp_path / "b" / "ema_weights.pt").is_file() and not (tmp_path / "b" / "model").exists()
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert log["focus"] == {"colour": 3.0, "where": 2.0} and log["attn_supervision"] == 1.0 and log["freeze_vision"]
    assert 0 < log["history"][0]["attn_mass"] < 1 and log["history"][0]["aux"] == 0 and log["key_shape"] == 0.5 and log["attn_words"]
    assert log["history"][0]["key_shape"] > 0


def test_trainer_refuses_bad_options_and_reports_a_failing_sample_thread(tmp_path, monkeypatch, capsys):
    from owl_export.demo import train as trainer

    for bad, why in ((["--steps", "0"], "must be a positive number"), (["--batch", "-1"], "must be a positive number"),
                     (["--lr", "nan"], "must be a positive number"), (["--lr", "x"], "is not a number"),
                     (["--focus", "colour=-2"], "must be a positive number"), (["--focus", "size=2"], "KIND=WEIGHT"),
                     (["--shape-focus", "0"], "must be a positive number"),
                     (["--attn-supervision", "-1"], "must be a finite weight >= 0"),
                     (["--key-shape", "inf"], "must be a finite weight >= 0")):
        with pytest.raises(SystemExit):
            trainer.main(["-o", str(tmp_path / "x"), *bad])
        assert why in capsys.readouterr().err, bad
    assert not (tmp_path / "x").exists()

    def broken(*a, **k):
        raise ValueError("no pictures today")

    monkeypatch.setattr(trainer, "make_sample", broken)
    with pytest.raises(RuntimeError, match="making training samples failed: no pictures today"):
        trainer.main(["-o", str(tmp_path / "y"), "--steps", "1", "--batch", "1", "--threads", "1"])


def test_patch_targets_sit_on_the_object():
    scene = Scene((Thing("square", "red", 0, 0.9, 0.0, 0.0, 0.0),), "white", (255, 255, 255), 112, 112, 0)
    objects = data.patch_objects(label_map(scene), (2, 2), 5, SIZES)
    side = SIZES.image_size // SIZES.patch_size
    glob = objects[4].reshape(side, side)
    assert glob[:3, :3].all() == 0 and (glob[:3, :3] == 0).sum() >= 4 and (glob[4:, :] == -1).all()
    assert (objects[3] == -1).all()                                 # bottom-right tile: nothing there
    assert (objects[0] == 0).sum() > (glob == 0).sum()              # the tile sees it larger


# ------------------------------------------------------------------------------------------- shipped model

@pytest.fixture(scope="module")
def shipped():
    import os
    if os.environ.get(demo.DEMO_ENV):
        pytest.fail(f"unset ${demo.DEMO_ENV}: these tests check the shipped files")
    return owl_cpp.load("demo", threads=2)


# What the shipped model reaches on held_out(40) through the runtime (1.0, 1.0, 0.975, 0.975, 0.625), a little
# lower where the margin allows: a runtime change that breaks any step of the path drops a kind to chance. Every
# one of issue #10's targets (evaluate.TARGETS) holds as well, on this set and on the 100-per-kind one
# (docs/demo.md).
SHIPPED_FLOORS = {"colour": 0.95, "shape": 0.95, "count": 0.95, "where": 0.95, "describe": 0.60}


def test_shipped_model_answers_held_out_questions(shipped):
    items = held_out(per_kind=40)
    scores = score(items, runtime_answers(shipped, items))
    assert all(scores[k] >= SHIPPED_FLOORS[k] for k in KINDS), scores
    assert all(scores[k] >= TARGETS[k] for k in KINDS), scores


def test_pytorch_checkpoint_and_runtime_agree(shipped):
    """The shipped files (Q8_0 decoder, fp32 vision) answer as the fp32 PyTorch model of the checkpoint."""
    from owl_export.demo.evaluate import checkpoint_answers

    items = held_out(per_kind=10, seed=5)
    ours, theirs = runtime_answers(shipped, items), checkpoint_answers(CHECKPOINT_DIR, items)
    differ = [(it.question, a, b) for it, a, b in zip(items, ours, theirs) if a.strip() != b.strip()]
    assert len(differ) <= 1, differ


def test_shipped_files_are_the_export_of_the_shipped_checkpoint(tmp_path):
    import onnxruntime as ort

    from owl_export.cli import main as owl_export

    assert owl_export([str(CHECKPOINT_DIR), "-o", str(tmp_path), "--quant", "q8_0", "-q"]) == 0
    assert (tmp_path / "decoder.gguf").read_bytes() == (demo.DEMO_DIR / "decoder.gguf").read_bytes()
    pixels = np.random.default_rng(6).uniform(-1, 1, (3, 3, SIZES.image_size, SIZES.image_size)).astype(np.float32)
    outs = [ort.InferenceSession(str(d / "vision.onnx"), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": pixels})[0]
            for d in (tmp_path, demo.DEMO_DIR)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5)


def test_answers_come_from_the_picture(shipped):
    """Another picture, another answer: the colour asked about follows the image, not the question."""
    rng = np.random.default_rng(7)
    changed = 0
    for _ in range(10):
        scene = random_scene(rng, n_objects=1)
        other = random_scene(rng, n_objects=1)
        q, _ = ask(scene, "colour", rng)
        a = shipped.chat(draw(scene), q)
        b = shipped.chat(draw(other), q.replace(scene.things[0].shape, other.things[0].shape))
        changed += (a != b) == (scene.things[0].colour != other.things[0].colour)
    assert changed >= 9


def test_owl_run_demo_with_the_shipped_model(tmp_path):
    """`owl-run --demo` in a subprocess on the shipped files: a picture saved, five questions streamed with marks."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k not in ("OWL_MODEL", demo.DEMO_ENV)}
    parent = str(Path(owl_cpp.__file__).resolve().parent.parent)
    environ.update(PYTHONPATH=os.pathsep.join([parent, environ.get("PYTHONPATH", "")]), PYTHONIOENCODING="utf-8")
    r = subprocess.run([sys.executable, "-m", "owl_cpp.cli", "--demo", "--seed", "2", "-t", "2"], capture_output=True,
                       text=True, encoding="utf-8", env=environ, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "owl-demo.png").is_file()
    assert r.stdout.count("\n[") == 5 and r.stdout.rstrip().endswith("of 5 answers as expected"), r.stdout
    count = r.stdout[r.stdout.index("[count]"):].split("\n")[2]        # the mark line of the count question
    assert "✓ expected:" in count, r.stdout                                # the model counts right (100% held out)
