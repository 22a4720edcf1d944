"""The byte-level JSON automaton (owl/json_constraint.h) against Python's json module: every valid document is
accepted whole, every invalid one is refused at the byte where it stops being a prefix of a valid document
(hand-labelled), and random documents and their mutations get the same verdict from both."""
import json
import random

import pytest

from owl_cpp import _core


def feed(doc: bytes, object_only=False, **kw):
    m = _core.JsonMachine(object_only, **kw)
    return m.feed(doc), m


def python_accepts(doc: bytes) -> bool:
    """json.loads as the reference, with NaN/Infinity (a Python extension) refused."""
    def no_constant(name):
        raise ValueError(name)
    try:
        json.loads(doc.decode("utf-8"), parse_constant=no_constant)
    except ValueError:      # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return True


VALID = [
    b'{}', b'[]', b'""', b'0', b'-0', b'-0.5e+10', b'1E5', b'12.25', b'-1.0E-3', b'0e0', b'1e-0', b'true', b'false',
    b'null', b'{"a":1}', b'{"":""}', b'[true,false,null]', b'[[[[]]]]', b'[{}, [], {"a": {}}]',
    b'{ "a" : [1, 2.5, {"b": null}], "c": "x\\"y\\\\z\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\ude00" }',
    '["é", "日本語", "😀", "\x7f", "ÿ"]'.encode(), b'\n\t{"k"\r:\n0}', b' [ 1 , 2 ]',
    '{"emoji": "\U0010FFFF", "max3": "\uFFFF", "e0": "\u0800", "ed": "\uD7FF"}'.encode("utf-8", "surrogatepass"),
]

# (document, index of the first refused byte; None: every byte is taken but the document is unfinished)
INVALID = [
    (b'{"a":1,}', 7), (b'[1,]', 3), (b'01', 1), (b'-01', 2), (b'-', None), (b'-a', 1), (b'1.', None), (b'1.e5', 2),
    (b'.5', 0), (b'+1', 0), (b'1e', None), (b'1e+', None), (b'1ee', 2), (b'1e+-1', 3), (b'"\x01"', 1),
    (b'"\\x"', 2), (b'"\\u12g4"', 5), (b'"\xc3\x28"', 2), (b'"\xc0\x80"', 1), (b'"\xc1\xbf"', 1),
    (b'"\xe0\x80\x80"', 2), (b'"\xed\xa0\x80"', 2), (b'"\xf0\x80\x80\x80"', 2), (b'"\xf4\x90\x80\x80"', 2),
    (b'"\xf5"', 1), (b'"\x80"', 1), (b'"\xe6\x97', None), (b'"\xe6\x97"', 3), (b'{"a" 1}', 5), (b'{a:1}', 1), (b'{"a":1}}', 7),
    (b'[1}', 2), (b'{"a":1]', 6), (b'tru', None), (b'trUe', 2), (b'nul', None), (b'nulL', 3), (b'NaN', 0),
    (b'Infinity', 0), (b'[1 2]', 3), (b'"abc', None), (b'{"a":"\n"}', 6), (b'{"a":1,,}', 7), (b'{,}', 1),
    (b'[,1]', 1), (b'{"a"}', 4), (b'{"a":}', 5), (b"{'a':1}", 1), (b'[1]2', 3), (b'[01]', 2), (b'', None),
    (b'{"a":1} ', 7), (b'"x"\n', 3),       # nothing after a complete value (our rule; json.loads allows it)
]


@pytest.mark.parametrize("doc", VALID)
def test_valid_documents_are_accepted_whole(doc):
    assert python_accepts(doc)
    n, m = feed(doc)
    assert n == len(doc) and m.can_end, (doc, n)
    if doc.lstrip()[:1] == b"{":
        n, m = feed(doc, object_only=True)
        assert n == len(doc) and m.done


@pytest.mark.parametrize("doc,at", INVALID)
def test_invalid_documents_are_refused_at_the_right_byte(doc, at):
    if not doc.endswith((b" ", b"\n")):
        assert not python_accepts(doc)
    n, m = feed(doc)
    if at is None:
        assert n == len(doc) and not m.can_end
    else:
        assert n == at, (doc, n)
        prefix_n, _ = feed(doc[:at])
        assert prefix_n == at


def test_object_only_mode_wants_an_object_at_the_top():
    for doc in (b'[]', b'"x"', b'1', b'true', b'null'):
        assert feed(doc, object_only=True)[0] == 0
    assert feed(b'  {"a": [1]}', object_only=True)[1].done
    n, m = feed(b'{"a": 1}', object_only=True)
    assert m.done and m.can_end and m.feed(b"}") == 0 and m.feed(b" ") == 0


def test_top_level_number_ends_only_with_the_text():
    n, m = feed(b"-12.5e3")
    assert n == 7 and m.can_end and not m.done     # could still grow
    assert m.feed(b"4") == 1 and m.feed(b" ") == 0


def test_depth_and_whitespace_limits():
    deep = b"[" * 32 + b"]" * 32
    assert feed(deep)[0] == len(deep)
    assert feed(b"[" * 33)[0] == 32
    assert feed(b"[" * 3, max_depth=2)[0] == 2
    assert feed(b"{" + b" " * 16 + b"}")[1].done
    assert feed(b"{" + b" " * 17 + b"}")[0] == 17
    assert feed(b'{"a":' + b"\n" + b" " * 15 + b"1}")[1].done     # runs count again after every token
    assert feed(b'["' + b" " * 100 + b'"]')[1].done                 # inside strings whitespace is text
    with pytest.raises(ValueError, match="max_depth"):
        _core.JsonMachine(True, max_depth=65)
    with pytest.raises(ValueError, match="max_ws"):
        _core.JsonMachine(True, max_ws=-1)


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 7)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.randint(-10 ** rng.randint(0, 20), 10 ** rng.randint(0, 20))
    if kind == 2:
        return rng.choice([0.0, -0.5e10, 1.5e-7, 3.25, -1e300, 2.5e+15]) * rng.random()
    if kind in (3, 4, 5, 6):
        alphabet = 'ab "\\/\n\t\x00\x1féü日本😀\x7f\u2028'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_value(rng, 99) if rng.random() < 0.5 else "k": random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def test_random_documents_and_mutations_agree_with_json_loads():
    rng = random.Random(1234)
    n_valid = n_invalid = 0
    for _ in range(1500):
        value = random_value(rng)
        if isinstance(value, (dict, list, str)) or rng.random() < 0.3:
            doc = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1, 2]),
                             separators=rng.choice([None, (",", ":"), (" , ", " : ")])).encode()
        else:
            doc = json.dumps(value).encode()
        n, m = feed(doc, max_ws=255)
        assert n == len(doc) and m.can_end, doc
        # Mutations: replace, insert or delete a byte; both judges must agree on the whole document.
        for _ in range(4):
            d = bytearray(doc)
            i = rng.randrange(len(d) + 1)
            op = rng.randrange(3)
            b = rng.choice(b'{}[]",:.-+eE0123456789 \n\\utrfnal\x00\xc3\xa9\xe6\x97\xa5\xff')
            if op == 0 and i < len(d):
                d[i] = b
            elif op == 1:
                d.insert(i, b)
            elif i < len(d):
                del d[i]
            d = bytes(d)
            n, m = feed(d, max_ws=255)
            ours = n == len(d) and m.can_end
            ref = python_accepts(d) and not d[-1:].isspace()
            assert ours == ref, (d, n)
            n_valid += ref
            n_invalid += not ref
    assert n_valid > 500 and n_invalid > 2000     # both verdicts well exercised
