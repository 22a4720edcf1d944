"""Copy a GGUF file with metadata keys set or removed, tensors untouched (a byte-level rewrite of the
header: tensor data offsets are relative to the data section, which is re-aligned)."""
from __future__ import annotations

import struct
from pathlib import Path

UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64 = 4, 5, 6, 7, 8, 9, 10
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _string(s) -> bytes:
    b = s if isinstance(s, bytes) else s.encode()  # bytes: any value, invalid UTF-8 included
    return struct.pack("<Q", len(b)) + b


def encode_value(vtype: int, value, elem_type: int = None) -> bytes:
    """The bytes of a value of GGUF type vtype (arrays: elem_type, a list)."""
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        return struct.pack("<IQ", elem_type, len(value)) + b"".join(encode_value(elem_type, v) for v in value)
    return struct.pack("<" + _SCALAR[vtype], value)


def _skip(buf: bytes, t: int, pos: int) -> int:
    if t == STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if t == ARRAY:
        et, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if et in _SCALAR:
            return pos + n * struct.calcsize("<" + _SCALAR[et])
        for _ in range(n):
            pos = _skip(buf, et, pos)
        return pos
    return pos + struct.calcsize("<" + _SCALAR[t])


def rewrite(src, dst, set_keys: dict = None, drop=()) -> Path:
    """set_keys: key -> (vtype, value) or (ARRAY, values, elem_type); drop: keys to remove."""
    buf = Path(src).read_bytes()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    assert magic == b"GGUF" and version >= 2, "not a GGUF v2+ file"
    pos, kvs, alignment = 24, [], 32
    for _ in range(n_kv):
        start = pos
        klen = struct.unpack_from("<Q", buf, pos)[0]
        key = buf[pos + 8: pos + 8 + klen].decode()
        t = struct.unpack_from("<I", buf, pos + 8 + klen)[0]
        pos = _skip(buf, t, pos + 12 + klen)
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", buf, pos - 4)[0]
        kvs.append((key, buf[start:pos]))
    tensors_start = pos
    for _ in range(n_tensors):
        pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
        nd = struct.unpack_from("<I", buf, pos)[0]
        pos += 4 + 8 * nd + 4 + 8
    tensor_infos = buf[tensors_start:pos]
    data_start = -(-pos // alignment) * alignment
    set_keys = dict(set_keys or {})
    out = []
    for key, raw in kvs:
        if key in drop:
            continue
        if key in set_keys:
            spec = set_keys.pop(key)
            raw = _string(key) + struct.pack("<I", spec[0]) + encode_value(*spec)
        out.append(raw)
    out += [_string(k) + struct.pack("<I", spec[0]) + encode_value(*spec) for k, spec in set_keys.items()]
    head = struct.pack("<4sIQQ", magic, version, n_tensors, len(out)) + b"".join(out) + tensor_infos
    head += b"\0" * (-len(head) % alignment)
    Path(dst).write_bytes(head + buf[data_start:])
    return Path(dst)
