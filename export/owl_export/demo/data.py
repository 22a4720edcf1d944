"""Training and evaluation samples for the demo model, built with owl_cpp's own image preprocessing and prompt
code (families/owl3: the adaptive cut, the v2_global cut text, ChatML chunks each tokenized alone), so the
model trains on exactly the ids and pixels the runtime will give it.

A sample is one picture and 1..3 question/answer turns about it (the first turn carries the image, as
`owl_cpp.chat(image, prompt)` writes it: "<|image|>\\n" + question). The loss covers each answer and the
<|im_end|> after it. Per view and patch there are also auxiliary targets for training only: the shape,
colour and 3x3 cell of the object under that patch (background otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from owl_cpp.demo import questions as Q
from owl_cpp.demo.scenes import CELLS, COLOUR_NAMES, SHAPES, Scene, draw, label_map, random_scene
from owl_cpp.families.owl3.image_config import ImagePreprocessing
from owl_cpp.families.owl3.media import Expanded
from owl_cpp.families.owl3.preprocess import preprocess_image
from owl_cpp.families.owl3.prompt import build_prompt, chat_chunks, expand_markers
from owl_cpp.messages import IMAGE_MARKER

from ..owl3.convert import preprocessing_metadata
from .config import DemoSizes

IGNORE = -100
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
N_SHAPE_CLASSES, N_COLOUR_CLASSES, N_CELL_CLASSES = len(SHAPES) + 1, len(COLOUR_NAMES) + 1, 10   # + background


def preprocessing(s: DemoSizes) -> ImagePreprocessing:
    """The preprocessing owl-export writes into decoder.gguf for a 240728-style model of this image size."""
    return ImagePreprocessing.from_metadata(preprocessing_metadata(s.image_size, "v2_global"), "demo")


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind owl_cpp's Tokenizer.encode(text, add_bos, parse_special) signature.
    Added tokens are always matched in the text, which is owl_cpp's parse_special=True."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer
        self.path = Path(path)
        self.tok = Tokenizer.from_file(str(path))
        self.ids = {t: self.tok.token_to_id(t) for t in SPECIALS}

    def encode(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def __len__(self) -> int:
        return self.tok.get_vocab_size()


def tokenizer_corpus(s: DemoSizes, seed: int = 12345, n_scenes: int = 3000) -> list[str]:
    """The text the tokenizer learns from: conversations as the runtime builds them (system chunk, the cut
    text of every grid, each question phrasing and answer of the task)."""
    from owl_cpp.families.owl3.preprocess import cut_prompt
    rng = np.random.default_rng(seed)
    anchors = preprocessing(s).anchors
    texts = []
    for k in range(n_scenes):
        scene = random_scene(rng, min_side=8, max_side=8)
        r, c = anchors[k % len(anchors)]
        text = f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{cut_prompt(r, c, 'v2_global')}\n"
        for kind in Q.KINDS:
            q, a = Q.ask(scene, kind, rng)
            text += f"{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|><|endoftext|>\n<|im_start|>user\n"
        texts.append(text)
    return texts


def train_tokenizer(out_dir: Path, s: DemoSizes) -> HFTokenizer:
    """Qwen2-style byte-level BPE on the task's text (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json)."""
    from ..tiny_tokenizers import train_qwen2_tokenizer
    train_qwen2_tokenizer(out_dir, vocab_size=s.bpe_vocab, texts=tokenizer_corpus(s))
    return HFTokenizer(Path(out_dir) / "tokenizer.json")


# ---------------------------------------------------------------------------------------------- samples

@dataclass
class Sample:
    ids: list                   # token ids of the whole conversation
    labels: list                # next-token targets aligned with ids (IGNORE where no loss)
    starts: list                # s_j of each view's placeholder
    views: np.ndarray           # [V, 3, S, S]
    patch_targets: np.ndarray   # [V, P, 3] (shape, colour, cell) class per patch
    turns: list                 # [(kind, question, answer)]
    objects: np.ndarray | None = None   # [V, P] index into scene.things of the object under each patch (-1: none)
    # [(position, object, turn)]: positions whose hyper-attention should find the object a question is about
    # (training only): the one predicting the answer's first token, and after it each word of the question
    # that names the object (its shape, its colour), in the order of the turns
    lookups: list = field(default_factory=list)
    n_answer_lookups: int = 0   # lookups[:n] are the answer positions, lookups[n:] the naming words


def patch_objects(lmap: np.ndarray, grid, n_views: int, s: DemoSizes, samples: int = 4) -> np.ndarray:
    """[V, P] index of the object under each patch of each view (-1: background): an object owns a patch
    when it covers at least a quarter of a samples x samples lattice in it. Views: the grid's tiles row-major,
    then the whole picture (the runtime's order)."""
    H, W = lmap.shape
    side = s.image_size // s.patch_size
    n = side * samples
    regions = []
    if grid is not None:
        rows, cols = grid
        regions += [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows) for r in range(rows) for c in range(cols)]
    regions.append((0.0, 0.0, 1.0, 1.0))
    if len(regions) != n_views:
        raise ValueError(f"{len(regions)} regions for {n_views} views")
    out = np.full((len(regions), side * side), -1, np.int64)
    centre = (np.arange(n) + 0.5) / n
    for v, (x0, y0, x1, y1) in enumerate(regions):
        xs = np.minimum(((x0 + centre * (x1 - x0)) * W).astype(int), W - 1)
        ys = np.minimum(((y0 + centre * (y1 - y0)) * H).astype(int), H - 1)
        lab = lmap[ys[:, None], xs[None, :]].astype(np.int64)                   # [n, n]
        blocks = lab.reshape(side, samples, side, samples).transpose(0, 2, 1, 3).reshape(side * side, -1)
        for k in range(int(lmap.max()) + 1):
            frac = (blocks == k).mean(1)
            better = frac >= 0.25
            out[v][better] = k          # objects sit in separate cells: overlaps are rare, last one wins
    return out


def _targets(scene: Scene, objects: np.ndarray) -> np.ndarray:
    shape = np.array([SHAPES.index(t.shape) for t in scene.things] + [len(SHAPES)])
    colour = np.array([COLOUR_NAMES.index(t.colour) for t in scene.things] + [len(COLOUR_NAMES)])
    cell = np.array([t.cell for t in scene.things] + [9])
    return np.stack([shape[objects], colour[objects], cell[objects]], -1)      # index -1 -> background row


LOOKUP_KINDS = ("colour", "shape", "where")     # questions about one object, named by its shape and/or colour


def asked_object(scene: Scene, kind: str, answer: str) -> int | None:
    """Index of the object a colour/shape/where question is about (the answer names it: colours, shapes and
    cells are distinct within a scene); None for questions about the whole picture."""
    key = {"colour": lambda t: t.colour, "shape": lambda t: t.shape, "where": lambda t: CELLS[t.cell]}.get(kind)
    if key is None:
        return None
    hits = [i for i, t in enumerate(scene.things) if key(t) == answer]
    return hits[0] if len(hits) == 1 else None


def make_sample(rng: np.random.Generator, tok: HFTokenizer, s: DemoSizes, prep: ImagePreprocessing, *,
                n_turns: int = 1, n_objects=None, cut: bool = True, kinds=None, scene: Scene | None = None) -> Sample:
    scene = scene or random_scene(rng, n_objects=n_objects)
    image = draw(scene)
    pre = preprocess_image(image, prep, cut=cut)
    turns = []
    for t in range(n_turns):
        kind = kinds[t] if kinds else Q.KINDS[int(rng.integers(len(Q.KINDS)))]
        q, a = Q.ask(scene, kind, rng)
        turns.append((kind, q, a))
    messages = []
    for t, (_, q, a) in enumerate(turns):
        messages.append({"role": "user", "content": (IMAGE_MARKER + "\n" if t == 0 else "") + q})
        if t < n_turns - 1:
            messages.append({"role": "assistant", "content": a})
    chunks = chat_chunks(expand_markers(messages, [Expanded(pre.prompt, pre.pixels, "image", pre.grid)]))
    answers = {f"{a}<|im_end|>" for _, _, a in turns[:-1]}
    ids, supervised, starts, answer_pos, word_pos = [], [], [], [], []
    pending = 0                 # the next turn whose question is still to come
    for c in chunks:
        if c == IMAGE_MARKER:
            starts.append(len(ids))
        if c in answers:
            answer_pos.append(len(ids) - 1)
        piece = tok.encode(c)
        if pending < len(turns) and turns[pending][1] in c:
            word_pos.append(_naming_words(scene, turns[pending], c, tok, len(ids)))
            pending += 1
        ids += piece
        supervised += [c in answers] * len(piece)
    answer_pos.append(len(ids) - 1)
    final = tok.encode(turns[-1][2]) + [tok.ids["<|im_end|>"]]
    ids += final
    supervised += [True] * len(final)
    # position t predicts ids[t + 1]
    labels = [ids[t + 1] if supervised[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    objects = patch_objects(label_map(scene), pre.grid, pre.num_views, s)
    lookups, words = [], []
    if len(answer_pos) == len(turns) == len(word_pos):
        for turn, (pos, (kind, _, a)) in enumerate(zip(answer_pos, turns)):
            obj = asked_object(scene, kind, a)
            if obj is not None and (objects == obj).any():
                lookups.append((pos, obj, turn))
                words += [(w, obj, turn) for w in word_pos[turn]]
    return Sample(ids, labels, starts, pre.pixels, _targets(scene, objects), turns, objects, lookups + words,
                  len(lookups))


def _naming_words(scene: Scene, turn, chunk: str, tok: HFTokenizer, offset: int) -> list:
    """Token positions (offset + index in the chunk's tokens) of the last token of each word in the turn's
    question that names the object asked about (its shape or colour word)."""
    kind, question, answer = turn
    obj = asked_object(scene, kind, answer)
    if obj is None:
        return []
    thing = scene.things[obj]
    enc = tok.tok.encode(chunk, add_special_tokens=False)
    start = chunk.index(question)
    out = []
    for word in (thing.shape, thing.colour):
        at = question.find(word)
        if at < 0 or (kind == "colour" and word == thing.colour) or (kind == "shape" and word == thing.shape):
            continue            # the answer's own word never appears in its question; guard all the same
        end = start + at + len(word)
        hit = [i for i, (a, b) in enumerate(enc.offsets) if a < end <= b]
        if hit:
            out.append(offset + hit[0])
    return out


@dataclass
class Batch:
    ids: torch.Tensor           # [B, T]
    labels: torch.Tensor        # [B, T]
    pixels: torch.Tensor        # [N, 3, S, S] all views of all samples
    view_index: torch.Tensor    # [N] flat index b * V + j into the [B, V] view slots
    starts: torch.Tensor        # [B, V]
    view_valid: torch.Tensor    # [B, V]
    patch_targets: torch.Tensor  # [N, P, 3]
    lookup_rows: torch.Tensor | None = None    # [M] sample of each object lookup (Sample.lookups, flattened)
    lookup_pos: torch.Tensor | None = None     # [M] its query position
    lookup_mask: torch.Tensor | None = None    # [M, V*P] bool: the visual rows of the object asked about
    lookup_is_word: torch.Tensor | None = None  # [M] bool: a naming word's position, not an answer's


def collate(samples: list[Sample], pad_id: int) -> Batch:
    B = len(samples)
    T = max(len(x.ids) for x in samples)
    V = max(len(x.starts) for x in samples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    starts = torch.zeros((B, V), dtype=torch.long)
    valid = torch.zeros((B, V), dtype=torch.bool)
    index = []
    for b, x in enumerate(samples):
        ids[b, :len(x.ids)] = torch.tensor(x.ids)
        labels[b, :len(x.labels)] = torch.tensor(x.labels)
        n = len(x.starts)
        starts[b, :n], valid[b, :n] = torch.tensor(x.starts), True
        index += [b * V + j for j in range(n)]
    pixels = torch.from_numpy(np.concatenate([x.views for x in samples]))
    targets = torch.from_numpy(np.concatenate([x.patch_targets for x in samples]))
    P = targets.shape[1]
    rows, pos, mask, word = [], [], [], []
    for b, x in enumerate(samples):
        for k, (p, obj, _) in enumerate(x.lookups):
            m = np.zeros((V, P), bool)
            m[:len(x.objects)] = x.objects == obj
            rows.append(b), pos.append(p), mask.append(m.reshape(-1)), word.append(k >= x.n_answer_lookups)
    lookups = (torch.tensor(rows, dtype=torch.long), torch.tensor(pos, dtype=torch.long),
               torch.from_numpy(np.stack(mask)) if mask else torch.zeros((0, V * P), dtype=torch.bool),
               torch.tensor(word, dtype=torch.bool))
    return Batch(ids, labels, pixels, torch.tensor(index), starts, valid, targets, *lookups)


def scatter_views(rows: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[N, P, H] projected rows of all views -> [B, V, P, H] in the batch's view slots (zeros elsewhere)."""
    B, V = batch.starts.shape
    out = rows.new_zeros((B * V,) + tuple(rows.shape[1:]))
    out = out.index_copy(0, batch.view_index, rows)
    return out.view(B, V, *rows.shape[1:])


def prompt_sample(scene: Scene, question: str, tok: HFTokenizer, s: DemoSizes, prep: ImagePreprocessing) -> Sample:
    """The prompt `owl_cpp.chat(draw(scene), question)` builds, ending with the assistant header (no answer)."""
    pre = preprocess_image(draw(scene), prep, cut=True)
    messages = [{"role": "user", "content": IMAGE_MARKER + "\n" + question}]
    p = build_prompt(tok, messages, [Expanded(pre.prompt, pre.pixels, "image", pre.grid)])
    return Sample(p.ids, [IGNORE] * len(p.ids), p.image_starts, p.views,
                  np.zeros((pre.num_views, s.num_patches, 3), np.int64), [])
