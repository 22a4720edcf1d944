"""JSON mode: `response_format` for generate()/chat(), constraining sampling so that the answer is valid JSON.

The work is in C++ (owl/json_constraint.h): a byte-level JSON automaton over the vocabulary's token bytes (a trie
built once per model, here) decides which tokens may come next; generation stops as soon as the value is complete.
Accepted forms: None, "text" or {"type": "text"} (no constraint); "json", "json_object" or
{"type": "json_object"} (the answer is one JSON object). JSON schemas are not supported (ValueError).
"""
from __future__ import annotations

import threading
from typing import Optional

from . import _core

JSON_OBJECT = "json_object"

_vocab_lock = threading.Lock()


def parse_response_format(response_format) -> Optional[str]:
    """None (free text) or JSON_OBJECT; a clear ValueError for anything else."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    if kind == "text":
        return None
    if kind in ("json", JSON_OBJECT):
        return JSON_OBJECT
    if kind == "json_schema":
        raise ValueError("response_format json_schema is not supported (no schema-driven constraint yet); use "
                         "{\"type\": \"json_object\"} and describe the schema in the prompt")
    raise ValueError(f"response_format must be None, \"text\", \"json\", or {{\"type\": \"text\" | \"json_object\"}}, "
                     f"got {response_format!r}")


def json_vocab(model) -> "_core.JsonVocab":
    """The model's vocabulary trie, built on first use (tens of ms for 150k tokens) and shared by all its
    generations."""
    v = getattr(model, "_json_vocab", None)
    if v is None:
        with _vocab_lock:
            v = getattr(model, "_json_vocab", None)
            if v is None:
                v = model._json_vocab = _core.JsonVocab.from_tokenizer(model.tokenizer)
    return v


def make_constraint(model, kind: Optional[str], terminators) -> Optional["_core.JsonConstraint"]:
    """A fresh constraint for one generation (None when kind is None); terminators end it once the value is
    whole (the automaton stops generation itself when the object closes)."""
    if kind is None:
        return None
    return _core.JsonConstraint(json_vocab(model), sorted(int(t) for t in terminators), object_only=True)
