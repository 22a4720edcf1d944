"""JSON mode: `response_format` for generate()/chat(), constraining sampling so that the answer is valid JSON.

The work is in C++ (owl/json_constraint.h): a byte-level JSON automaton over the vocabulary's token bytes (a trie
built once per model, here) decides which tokens may come next; generation stops as soon as the value is complete.
Accepted forms: None, "text" or {"type": "text"} (no constraint); "json", "json_object" or
{"type": "json_object"} (the answer is one JSON object); {"type": "json_schema", "json_schema": {"schema": {...}}}
(OpenAI's shape: the answer is an object matching the schema, a subset of JSON Schema: json_schema.py).
"""
from __future__ import annotations

import threading
from typing import Optional, Union

from . import _core
from .json_schema import compile_schema

JSON_OBJECT = "json_object"

_vocab_lock = threading.Lock()


def parse_response_format(response_format) -> Union[None, str, "_core.JsonSchema"]:
    """None (free text), JSON_OBJECT, or a compiled schema; a clear ValueError for anything else."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    if kind == "text":
        return None
    if kind in ("json", JSON_OBJECT):
        return JSON_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ValueError("response_format json_schema needs {\"json_schema\": {\"schema\": {...}}}")
        return compile_schema(spec["schema"])
    raise ValueError(f"response_format must be None, \"text\", \"json\", or {{\"type\": \"text\" | \"json_object\" | "
                     f"\"json_schema\"}}, got {response_format!r}")


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


def make_constraint(model, kind, terminators) -> Optional["_core.JsonConstraint"]:
    """A fresh constraint for one generation (None when kind is None) from parse_response_format's result;
    terminators end it once the value is whole (the automaton stops generation itself when the object closes)."""
    if kind is None:
        return None
    schema = kind if isinstance(kind, _core.JsonSchema) else None
    return _core.JsonConstraint(json_vocab(model), sorted(int(t) for t in terminators), object_only=True,
                                schema=schema)
