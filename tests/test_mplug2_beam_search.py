"""The runtime's caption search (owl_cpp/families/mplug2/beam_search.py, numpy) against the reference's
transcription of predictor.py (owl_export/mplug2/reference.py, torch): same hypotheses in the same order with
the same scores, on random logits tables (many seeds, beam sizes, length limits) and over the tiny decoder."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from owl_cpp.families.mplug2.beam_search import beam_search, greedy_search  # noqa: E402
from owl_export.mplug2.fixtures import make_tiny_mplug2_checkpoint  # noqa: E402
from owl_export.mplug2.reference import Mplug2CaptionReference, predictor_beam_search  # noqa: E402


class PrefixLogits:
    """Deterministic logits per history: each beam's row depends on its whole prefix (so parents matter), with
    a strong end token now and then, so that hypotheses finish at different steps."""

    def __init__(self, V: int, eos: int, seed: int):
        self.V, self.eos, self.seed = V, eos, seed
        self.histories = None

    def row(self, prefix: tuple) -> np.ndarray:
        g = np.random.default_rng([self.seed, *prefix])
        x = g.normal(0, 2.0, self.V).astype(np.float32)
        if g.random() < 0.3:
            x[self.eos] += 4.0
        return x

    def numpy_step(self, tokens, parents):
        if parents is None:
            self.histories = [(int(t),) for t in tokens]
        else:
            self.histories = [self.histories[p] + (int(t),) for p, t in zip(parents, tokens)]
        return np.stack([self.row(h) for h in self.histories])

    def torch_step(self, alive, parents):
        return torch.from_numpy(np.stack([self.row(tuple(r)) for r in alive.tolist()]))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("B,min_len,max_len", [(5, 4, 20), (3, 0, 6), (1, 2, 9), (4, 1, 3)])
def test_matches_reference_on_random_tables(seed, B, min_len, max_len):
    V, bos, eos = 37, 1, 2
    ref = predictor_beam_search(PrefixLogits(V, eos, seed).torch_step, bos, eos, B, min_len, max_len,
                                return_all=True)
    ours = beam_search(PrefixLogits(V, eos, seed).numpy_step, bos, eos, B, min_len, max_len)
    assert [ids for _, ids in ours] == [ids for _, ids in ref]
    np.testing.assert_allclose([s for s, _ in ours], [s for s, _ in ref], rtol=1e-5, atol=1e-6)  # float32 exp/log rounding


def test_min_length_and_errors():
    V, bos, eos = 9, 0, 3
    always_eos = lambda tokens, parents: np.tile(np.eye(V, dtype=np.float32)[eos] * 50, (len(tokens), 1))  # noqa: E731
    (_, ids), *_ = beam_search(always_eos, bos, eos, 2, 4, 10)
    assert ids[1:5].count(eos) == 0 and ids[-1] == eos and len(ids) == 6
    assert greedy_search(always_eos, bos, eos, 10, min_length=2)[2] == eos
    with pytest.raises(ValueError, match="beam size 12 exceeds the vocabulary"):
        beam_search(always_eos, bos, eos, 12)
    with pytest.raises(ValueError, match="shape"):
        beam_search(lambda t, p: np.zeros((1, V), np.float32), bos, eos, 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ref = Mplug2CaptionReference.from_dir(make_tiny_mplug2_checkpoint(tmp_path_factory.mktemp("m2") / "t", seed=3))
    video = ref.encode_video(torch.randn(ref.cfg.num_frames, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    return ref, video


def test_matches_reference_over_the_tiny_decoder(tiny):
    """The reference decoder as the step function (its KV cache reordered by parents, as the runtime does)."""
    ref, video = tiny
    cfg = ref.cfg
    B = cfg.beam_size
    cross = [(k.expand(B, *k.shape), v.expand(B, *v.shape)) for k, v in ref.cross_kv(video)]
    state = {"kv": None}

    def step(tokens, parents):
        if parents is not None:
            idx = torch.from_numpy(parents)
            state["kv"] = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in state["kv"]]
        logits, state["kv"] = ref.decoder_step(torch.from_numpy(tokens).view(-1, 1), cross, state["kv"])
        return logits[:, -1].numpy()

    ours = beam_search(step, cfg.bos_id, cfg.eos_id, B, cfg.min_length, cfg.max_length)
    ids, score = ref.beam_search(video)
    assert ours[0][1] == ids and ours[0][0] == pytest.approx(score, rel=1e-5)

    one = [(k[:1], v[:1]) for k, v in cross]
    state["kv"] = None

    def step1(tokens, parents):
        logits, state["kv"] = ref.decoder_step(torch.from_numpy(tokens).view(1, 1), one, state["kv"])
        return logits[:, -1].numpy()

    assert greedy_search(step1, cfg.bos_id, cfg.eos_id, 20) == ref.greedy(video, 20)
