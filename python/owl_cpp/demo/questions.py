"""Questions about a scene and their one right answer, each kind in several phrasings (users word things
differently). Answers are short and canonical so exact match can score them:

  colour    "What colour is the star?"            -> "red"
  shape     "What shape is the blue object?"      -> "circle"
  count     "How many shapes are there?"          -> "2"
  where     "Where is the red star?"              -> "top left"
  describe  "Describe the image."                 -> "a red star at the top left and a blue circle in the center."
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .scenes import CELLS, Scene, Thing

KINDS = ("colour", "shape", "count", "where", "describe")

COLOUR_QUESTIONS = ("What colour is the {shape}?", "What color is the {shape}?", "Which colour is the {shape}?",
                    "What is the colour of the {shape}?", "Tell me the color of the {shape}.",
                    "the {shape} is what colour?")
SHAPE_QUESTIONS = ("What shape is the {colour} object?", "Which shape is {colour}?", "What is the {colour} shape?",
                   "What kind of shape is {colour}?", "Name the {colour} shape.", "what is the {colour} thing?")
COUNT_QUESTIONS = ("How many shapes are there?", "How many objects are in the image?", "Count the shapes.",
                   "How many shapes do you see?", "What is the number of objects?", "how many things are in the picture?")
WHERE_QUESTIONS = ("Where is the {shape}?", "Where is the {colour} {shape}?", "Where is the {colour} object?",
                   "In which part of the image is the {shape}?", "Where can I find the {colour} shape?",
                   "where's the {shape}?")
DESCRIBE_QUESTIONS = ("Describe the image.", "What is in the picture?", "What do you see?",
                      "Describe this picture.", "What does the image show?", "describe it")


def where_words(cell: int) -> str:
    return CELLS[cell]


def describe(scene: Scene) -> str:
    """Every object in reading order (cells row-major): "a red star at the top left and an orange circle in
    the center." ("in the center", "at" elsewhere)."""
    def one(t: Thing) -> str:
        place = "in the center" if t.cell == 4 else f"at the {CELLS[t.cell]}"
        article = "an" if t.colour[0] in "aeiou" else "a"
        return f"{article} {t.colour} {t.shape} {place}"

    parts = [one(t) for t in sorted(scene.things, key=lambda t: t.cell)]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + "."


def ask(scene: Scene, kind: str, rng: np.random.Generator, phrasing: Optional[int] = None) -> tuple[str, str]:
    """(question, answer) of the given kind about the scene; phrasing picks the template (random if None)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    t = scene.things[int(rng.integers(len(scene.things)))]
    templates = {"colour": COLOUR_QUESTIONS, "shape": SHAPE_QUESTIONS, "count": COUNT_QUESTIONS,
                 "where": WHERE_QUESTIONS, "describe": DESCRIBE_QUESTIONS}[kind]
    k = int(rng.integers(len(templates))) if phrasing is None else phrasing % len(templates)
    question = templates[k].format(shape=t.shape, colour=t.colour)
    answer = {"colour": t.colour, "shape": t.shape, "count": str(len(scene.things)),
              "where": where_words(t.cell), "describe": describe(scene)}[kind]
    return question, answer


def random_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str]:
    """(kind, question, answer) with the kind drawn uniformly."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    q, a = ask(scene, kind, rng)
    return kind, q, a
