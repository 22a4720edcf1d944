"""response_format json_schema: the schema subset compiled for the C++ constraint (json_schema.py). Documents the
schema allows are accepted whole; whatever the automaton accepts as whole validates with the `jsonschema` package
(the reference); constrained random walks and tiny-model answers validate; unsupported keywords are clear errors."""
import json
import random

import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core
from owl_cpp.json_schema import compile_schema

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "ignored annotation"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", 1, 12, None]}},
        "ok": {"type": ["boolean", "null"]},
        "kind": {"const": "café"},
        "inner": {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "integer"}},
                                                   "y": {}}, "required": ["x"]},
        "free": {"type": "object"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def closed(schema):
    """The schema as the constraint reads it (only listed properties): additionalProperties false everywhere."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if "properties" in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def reference_accepts(doc: bytes, schema, unique_keys: bool = False) -> bool:
    """unique_keys: refuse a name twice in any object (the constraint holds only schema objects to that)."""
    try:
        value = json.loads(doc.decode("utf-8"), object_pairs_hook=no_duplicates if unique_keys else dict)
    except ValueError:
        return False
    return jsonschema.Draft202012Validator(closed(schema)).is_valid(value)


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def machine(schema=SCHEMA):
    return _core.JsonMachine(True, schema=compile_schema(schema))


def whole(doc: bytes, schema=SCHEMA) -> bool:
    m = machine(schema)
    return m.feed(doc) == len(doc) and m.done


@pytest.mark.parametrize("doc", [
    b'{"name": "x", "age": 3}', b'{"age":-0,"name":""}',
    b'{"name":"x","age":1,"tags":["a", 12, 1, null],"ok":null,"score":-1.5e3}',
    '{"kind": "café", "name": "q", "age": 7, "ok": true}'.encode(),
    b'{"name":"n","age":2,"inner":{"x":[1,2],"y":{"any":["thing"]}},"free":{"z":1}}',
])
def test_documents_the_schema_allows_are_accepted(doc):
    assert reference_accepts(doc, SCHEMA)
    assert whole(doc)


@pytest.mark.parametrize("doc,at", [
    (b'{"age": 3}', 9),                         # '}' before the required "name"
    (b'{"name": "x", "age": 3.5}', 22),         # an integer has no fraction
    (b'{"name":"x","name":"y"}', 13),           # no property twice
    (b'{"nam":1}', 5),                          # no property the schema does not list
    (b'{"name":"x","age":1,"tags":["c"]}', 29),  # not in the enum
    (b'{"name":1}', 8),                         # wrong type
    (b'{"name":"x","age":1,"kind":"cafe"}', 31),
    (b'{"name":"x","age":1,"inner":{}}', 29),   # the nested required "x"
    (b'{"name":"x","age":1,"tags":[1 2]}', 30),
])
def test_documents_the_schema_refuses_are_refused_at_the_right_byte(doc, at):
    assert not reference_accepts(doc, SCHEMA, unique_keys=True)
    m = machine()
    assert m.feed(doc) == at


def test_enum_values_are_matched_in_their_compact_form():
    s = {"type": "object", "properties": {"e": {"enum": [{"k": [1, "x"]}, [2], 1.5]}}}
    for ok in (b'{"e":{"k":[1,"x"]}}', b'{"e": [2]}', b'{"e":1.5 }'):
        assert whole(ok, s), ok
    for bad in (b'{"e":{"k": [1,"x"]}}', b'{"e":1.50}', b'{"e":[2 ]}'):
        assert not whole(bad, s), bad


def test_comma_only_when_a_property_is_left():
    s = {"type": "object", "properties": {"a": {"type": "integer"}}}
    m = machine(s)
    assert m.feed(b'{"a":1') == 6 and m.copy().feed(b",") == 0 and m.feed(b"}") == 1 and m.done


def random_instance(schema, rng):
    """A random value the schema allows (the generator for the acceptance test)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    t = schema.get("type", rng.choice(["string", "integer", "object", "null"]))
    t = rng.choice(t) if isinstance(t, list) else t
    if t == "object":
        props = schema.get("properties", {})
        keys = [k for k in props if k in schema.get("required", []) or rng.random() < 0.5]
        rng.shuffle(keys)
        return {k: random_instance(props[k], rng) for k in keys}
    if t == "array":
        return [random_instance(schema.get("items", {}), rng) for _ in range(rng.randint(0, 3))]
    return {"string": lambda: rng.choice(["", "x y", "é\n\"", "日本"]), "integer": lambda: rng.randint(-99, 10 ** 9),
            "number": lambda: rng.choice([0.5, -2.5e-8, 3, 1e21]), "boolean": lambda: rng.random() < 0.5,
            "null": lambda: None}[t]()


def test_random_instances_are_accepted_and_whatever_is_accepted_validates():
    rng = random.Random(7)
    n_accepted_mutants = 0
    for _ in range(400):
        # enum values and names have one spelling: UTF-8 characters, not \u escapes (json_schema.py)
        doc = json.dumps(random_instance(SCHEMA, rng), ensure_ascii=False,
                         indent=rng.choice([None, 2]), separators=rng.choice([None, (",", ":")])).encode()
        assert reference_accepts(doc, SCHEMA) and whole(doc), doc
        for _ in range(5):                      # soundness under mutation: accepted whole => valid
            d = bytearray(doc)
            i = rng.randrange(len(d))
            d[i:i + rng.randint(0, 2)] = bytes([rng.choice(b'{}[]",:.-e0129 nulltrueab')])
            d = bytes(d)
            if whole(d):
                assert reference_accepts(d, SCHEMA), d
                n_accepted_mutants += d != doc
    assert n_accepted_mutants > 20


def test_constrained_random_walks_end_in_valid_documents():
    toks = [b"<|end|>"] + [bytes([b]) for b in range(32, 127)] + [b'"name"', b'":', b'{"', b'12', b', "', b'ca',
                                                                    'é'.encode(), b'true', b'null', b'"a"', b']}']
    vocab = _core.JsonVocab(toks, [False] + [True] * (len(toks) - 1))
    schema = compile_schema(SCHEMA)
    n_done = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        c = _core.JsonConstraint(vocab, [0], schema=schema)
        text = b""
        for step in range(600):
            mask = c.mask(len(toks))
            m = _core.JsonMachine(True, schema=schema)
            m.feed(text)
            for i in rng.choice(len(toks), 25):     # the mask against the automaton, token by token
                if i:
                    assert mask[i] == (m.copy().feed(toks[i]) == len(toks[i])), (text, toks[i])
            allowed = np.flatnonzero(mask)
            # Later on, prefer bytes that close things so that walks finish.
            closing = [i for i in allowed if toks[i] in (b'"', b"}", b"]", b"1", b"e", b"l", b"u")]
            pick = int(rng.choice(closing if step > 200 and closing else allowed))
            c.accept(pick)
            if pick == 0:
                break
            text += toks[pick]
            if c.done:
                break
        if c.done:
            n_done += 1
            assert reference_accepts(text, SCHEMA), text
    assert n_done >= 10


@pytest.mark.parametrize("schema,match", [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}, "pattern"),
    ({"anyOf": [{"type": "object"}]}, "anyOf"),
    ({"type": "array"}, "root schema must be an object"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "required"),
    ({"type": "object", "properties": {"a": {"type": "text"}}}, "type"),
    ({"type": "object", "properties": {"a": {"items": [{}]}}}, "tuple"),
    ({"type": "object", "properties": {f"p{i}": {} for i in range(65)}}, "at most 64"),
])
def test_unsupported_or_malformed_schemas_are_value_errors(schema, match):
    with pytest.raises(ValueError, match=match):
        compile_schema(schema)


SMALL = {"type": "object", "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"},
                                          "kind": {"enum": ["cat", "dog", None]},
                                          "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
         "required": ["age", "ok"]}


def test_tiny_model_answers_match_the_schema(tiny_gguf):
    m = owl_cpp.load(tiny_gguf("qwen2"), n_ctx=1024, threads=1)
    rf = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SMALL}}
    complete = 0
    for temperature, seed in [(0.0, 0), (1.0, 0), (1.0, 1), (1.5, 0), (1.5, 1), (1.5, 2)]:
        info = m.generate("JSON:", max_tokens=300, temperature=temperature, seed=seed, response_format=rf,
                          return_info=True)
        if info["finish_reason"] == "stop":
            assert reference_accepts(info["text"].encode(), SMALL, unique_keys=True), info["text"]
            complete += 1
        else:
            assert machine(SMALL).feed(info["text"].encode()) == len(info["text"].encode())
    assert complete >= 3
