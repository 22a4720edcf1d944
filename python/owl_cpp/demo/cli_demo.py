"""`owl-run --demo`: draw a random scene of coloured shapes (scenes.py), save it, show it in the terminal where
one can, and ask the model one question of each kind (questions.KINDS), streaming each answer beside the one
right answer (✓ / ✗) and the time to the first token and the decode speed.

With --image PATH, the questions are about that picture instead (shown the same way) and there is no right
answer to compare with: first "Describe the image.", then the others about the first object the description
names (a fixed object when it names none).
"""
from __future__ import annotations

import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import terminal

SAVE_DEFAULT = "owl-demo.png"
MAX_TOKENS = 64                  # the longest right answer (a description of three shapes) is ~25 tokens
PICTURE_COLUMNS = terminal.DEFAULT_WIDTH


@dataclass
class Asked:
    kind: str
    question: str
    truth: Optional[str]         # None: a picture of the user's, nothing to compare with
    answer: str = ""
    first_token_s: float = 0.0
    info: Optional[dict] = None

    @property
    def right(self) -> Optional[bool]:
        return None if self.truth is None else same_answer(self.answer, self.truth)


def normalize(text: str) -> str:
    """Lower case, single spaces, no final full stop: how answers compare."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def same_answer(answer: str, truth: str) -> bool:
    return normalize(answer) == normalize(truth)


def objects_named(text: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs in the order a description names them: "a red star at ... and a blue circle ..."."""
    from .scenes import COLOUR_NAMES, SHAPES

    pattern = rf"\b({'|'.join(COLOUR_NAMES)})\s+({'|'.join(SHAPES)})s?\b"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, text.lower())]


def picture_questions(description: str) -> list[tuple[str, str]]:
    """(kind, question) to ask after "Describe the image." about a picture of the user's: about the first object
    the description names, else about a red circle."""
    from .questions import COLOUR_QUESTIONS, COUNT_QUESTIONS, SHAPE_QUESTIONS, WHERE_QUESTIONS

    colour, shape = (objects_named(description) or [("red", "circle")])[0]
    return [("count", COUNT_QUESTIONS[0]), ("colour", COLOUR_QUESTIONS[0].format(shape=shape)),
            ("shape", SHAPE_QUESTIONS[0].format(colour=colour)), ("where", WHERE_QUESTIONS[0].format(shape=shape))]


class Printer:
    """The demo's stdout: questions, streamed answers, marks and timings; colour only on a colour terminal."""

    def __init__(self, out):
        self.out = out
        self.colour = terminal.colour_terminal(out)
        fancy = terminal.can_encode(out, "✓✗·")
        self.yes, self.no, self.dot = ("✓", "✗", "·") if fancy else ("OK", "WRONG", "|")

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def question(self, kind: str, question: str) -> None:
        self.write(f"\n[{kind}] {question}\n  ")

    def verdict(self, a: Asked) -> None:
        t = (a.info or {}).get("timings", {})
        timing = (f"first token {1000 * a.first_token_s:.0f} ms {self.dot} "
                  f"{t.get('decode_tokens_per_s', 0.0):.1f} tokens/s")
        if a.right is None:
            self.write(f"\n  {timing}\n")
        else:
            mark = terminal.coloured(self.yes if a.right else self.no, terminal.GREEN if a.right else terminal.RED,
                                     self.colour)
            self.write(f"\n  {mark} expected: {a.truth} {self.dot} {timing}\n")


def ask(model, image, asked: Asked, gen: dict, printer: Printer, verbose: bool) -> Asked:
    """Streams the model's answer to asked.question about image into the printer; fills in the answer, the
    time to its first piece and the run's info."""
    from ..cli import timing_line

    printer.question(asked.kind, asked.question)
    pieces, t0 = [], time.perf_counter()
    stream = model.chat(image, asked.question, stream=True, **gen)
    for piece in stream:
        if not pieces:
            asked.first_token_s = time.perf_counter() - t0
        pieces.append(piece)
        printer.write(piece)
    if not pieces:
        asked.first_token_s = time.perf_counter() - t0
    asked.answer, asked.info = "".join(pieces), stream.info
    printer.verdict(asked)
    if verbose and stream.info:
        print(timing_line(stream.info), file=sys.stderr)
    return asked


def run_demo(model, args, gen: dict, out, err) -> int:
    """owl-run --demo with the parsed arguments (seed, save, image, verbose) and the generation options."""
    if len(args.image) > 1 or args.video:
        print("owl-run: error: --demo asks about one picture: a random one, or one --image", file=err)
        return 2
    if args.prompt is not None:
        print("owl-run: error: --demo asks its own questions; leave out -p/--prompt", file=err)
        return 2
    printer = Printer(out)
    if args.image:
        if args.save:
            print("owl-run: error: --save saves the random picture; with --image there is none", file=err)
            return 2
        image = args.image[0]
        if terminal.can_show_pictures(out):
            from PIL import Image

            with Image.open(image) as picture:
                printer.write(terminal.half_blocks(picture, PICTURE_COLUMNS))
        described = ask(model, image, Asked("describe", "Describe the image.", None), gen, printer, args.verbose)
        for kind, question in picture_questions(described.answer):
            ask(model, image, Asked(kind, question, None), gen, printer, args.verbose)
        return 0

    import numpy as np

    from . import questions, scenes

    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    rng = np.random.default_rng(seed)
    scene = scenes.random_scene(rng)
    picture = scenes.draw(scene)
    path = args.save or SAVE_DEFAULT
    picture.save(path, format=None if Path(path).suffix else "PNG")     # the suffix says the format
    print(f"owl-run: saved the picture to {path} ({scene.width}x{scene.height}, seed {seed}: --seed {seed} draws "
          f"it again)", file=err)
    if terminal.can_show_pictures(out):
        printer.write(terminal.half_blocks(picture, PICTURE_COLUMNS))
    asked = [ask(model, picture, Asked(kind, *questions.ask(scene, kind, rng)), gen, printer, args.verbose)
             for kind in questions.KINDS]
    right = sum(bool(a.right) for a in asked)
    printer.write(f"\n{right} of {len(asked)} answers as expected\n")
    return 0
