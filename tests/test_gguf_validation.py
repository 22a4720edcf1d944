"""Hostile and broken GGUF files: every mutation is a clean owl_cpp.FormatError, never a crash."""
import struct

import gguf
import numpy as np
import pytest

import owl_cpp
from owl_cpp import _core

SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def write_valid(path):
    """A small GGUF with every metadata value type, nested arrays and tensors of every supported type."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 700)
    w.add_int16("t.i16", -700)
    w.add_uint32("t.u32", 70000)
    w.add_int32("t.i32", -70000)
    w.add_float32("t.f32", 0.5)
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_str", ["a", "bc", "日本"])
    w.add_array("t.arr_f32", [0.5, 1.5])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((4, 32)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((2, 64)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    q4 = gguf.quants.quantize(rng.standard_normal((5, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor("q4", q4, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def layout(buf: bytes) -> dict:
    """Byte offsets of every header field, found by walking the file as the spec describes."""
    pos = 24
    out = {"n_tensors": 8, "n_kv": 16, "kv": [], "tensors": []}
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)

    def skip_value(t, pos):
        if t == 8:
            (n,) = struct.unpack_from("<Q", buf, pos)
            return pos + 8 + n
        if t == 9:
            (et,) = struct.unpack_from("<I", buf, pos)
            (n,) = struct.unpack_from("<Q", buf, pos + 4)
            pos += 12
            for _ in range(n):
                pos = skip_value(et, pos)
            return pos
        return pos + SCALAR_SIZES[t]

    for _ in range(n_kv):
        (klen,) = struct.unpack_from("<Q", buf, pos)
        key = buf[pos + 8: pos + 8 + klen].decode()
        tpos = pos + 8 + klen
        (t,) = struct.unpack_from("<I", buf, tpos)
        end = skip_value(t, tpos + 4)
        out["kv"].append({"key": key, "pos": pos, "type_pos": tpos, "value_pos": tpos + 4, "type": t, "end": end})
        pos = end
    for _ in range(n_tensors):
        (nlen,) = struct.unpack_from("<Q", buf, pos)
        name = buf[pos + 8: pos + 8 + nlen].decode()
        dpos = pos + 8 + nlen
        (nd,) = struct.unpack_from("<I", buf, dpos)
        ne_pos = dpos + 4
        type_pos = ne_pos + 8 * nd
        out["tensors"].append({"name": name, "pos": pos, "ndims_pos": dpos, "ne_pos": ne_pos, "n_dims": nd,
                               "type_pos": type_pos, "offset_pos": type_pos + 4})
        pos = type_pos + 12
    out["header_end"] = pos
    return out


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "valid.gguf"
    buf = write_valid(path)
    return buf, layout(buf)


def put(buf: bytes, pos: int, fmt: str, value) -> bytes:
    b = bytearray(buf)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def open_bytes(tmp_path, data: bytes, name="m.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return _core.GGUFFile.open(str(p))


def test_valid_file_reads_every_type(valid, tmp_path):
    buf, _ = valid
    f = open_bytes(tmp_path, buf)
    assert f.version == 3
    assert f["t.u8"] == 7 and f["t.i8"] == -7 and f["t.u16"] == 700 and f["t.i16"] == -700
    assert f["t.u32"] == 70000 and f["t.i32"] == -70000 and f["t.u64"] == 1 << 40 and f["t.i64"] == -(1 << 40)
    assert f["t.f32"] == 0.5 and f["t.f64"] == 0.25 and f["t.bool"] is True and f["t.str"] == "héllo"
    assert f["t.arr_i32"] == [1, -2, 3] and f["t.arr_str"] == ["a", "bc", "日本"] and f["t.arr_f32"] == [0.5, 1.5]
    shapes = {t["name"]: (t["type"], t["shape"]) for t in f.tensors()}
    assert shapes == {"f32": ("F32", [32, 4]), "f16": ("F16", [64, 2]), "q8": ("Q8_0", [64, 3]), "q4": ("Q4_0", [32, 5])}
    # Same view as the reference reader of the gguf package.
    ref = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert [t.name for t in ref.tensors] == [t["name"] for t in f.tensors()]
    assert [int(t.data_offset - ref.data_offset) for t in ref.tensors] == [t["offset"] for t in f.tensors()]


def mutations(buf: bytes, L: dict):
    """(description, bytes, expected message fragment)."""
    kv = {k["key"]: k for k in L["kv"]}
    ten = {t["name"]: t for t in L["tensors"]}
    yield "empty file", b"", "empty"
    yield "wrong magic", b"GGUX" + buf[4:], "magic"
    yield "version 1", put(buf, 4, "<I", 1), "version"
    yield "version 99", put(buf, 4, "<I", 99), "version"
    yield "absurd tensor count", put(buf, L["n_tensors"], "<Q", 1 << 60), "tensor count"
    yield "absurd kv count", put(buf, L["n_kv"], "<Q", 1 << 62), "metadata count"
    yield "kv count one too many", put(buf, L["n_kv"], "<Q", len(L["kv"]) + 1), ""
    yield "absurd key length", put(buf, kv["t.u8"]["pos"], "<Q", 1 << 50), "length"
    yield "unknown value type", put(buf, kv["t.u8"]["type_pos"], "<I", 13), "unknown value type"
    yield "bool of 2", put(buf, kv["t.bool"]["value_pos"], "<B", 2), "bool"
    yield "absurd string length", put(buf, kv["t.str"]["value_pos"], "<Q", 1 << 40), "length"
    yield "absurd array length", put(buf, kv["t.arr_i32"]["value_pos"] + 4, "<Q", 1 << 61), "array"
    yield "absurd string array", put(buf, kv["t.arr_str"]["value_pos"] + 4, "<Q", 1 << 40), "array"
    yield "array of unknown type", put(buf, kv["t.arr_i32"]["value_pos"], "<I", 77), "unknown value type"
    # Duplicate key: rename t.i8 to t.u8 (same length).
    b = bytearray(buf)
    p = kv["t.i8"]["pos"] + 8
    b[p:p + 4] = b"t.u8"
    yield "duplicate key", bytes(b), "duplicate metadata key"
    b = bytearray(buf)
    p = ten["f16"]["pos"] + 8
    b[p:p + 3] = b"f32"
    yield "duplicate tensor", bytes(b), "duplicate tensor name"
    yield "zero dims", put(buf, ten["f32"]["ndims_pos"], "<I", 0), "dimensions"
    yield "five dims", put(buf, ten["f32"]["ndims_pos"], "<I", 5), "dimensions"
    yield "dim of size 0", put(buf, ten["f32"]["ne_pos"] + 8, "<Q", 0), "size 0"
    yield "overflowing dims", put(put(buf, ten["f32"]["ne_pos"], "<Q", 1 << 40), ten["f32"]["ne_pos"] + 8, "<Q", 1 << 40), "overflow"
    yield "huge dim past end", put(buf, ten["q4"]["ne_pos"] + 8, "<Q", 1 << 30), "past the end"
    yield "unknown dtype", put(buf, ten["f16"]["type_pos"], "<I", 99), "unsupported tensor type"
    yield "unsupported dtype IQ2_XXS", put(buf, ten["f16"]["type_pos"], "<I", 16), "unsupported tensor type"
    yield "row not a block multiple", put(buf, ten["q8"]["ne_pos"], "<Q", 48), "block size"
    yield "offset past end", put(buf, ten["q4"]["offset_pos"], "<Q", 1 << 40), "past the end"
    yield "misaligned offset", put(buf, ten["q4"]["offset_pos"], "<Q", 33), "aligned"
    yield "overlapping tensors", put(buf, ten["f16"]["offset_pos"], "<Q", 0), "overlap"
    yield "wrong tensor size (bigger type)", put(buf, ten["f16"]["type_pos"], "<I", 0), ""
    yield "data section cut", buf[: len(buf) - 10], "past the end"
    yield "header cut inside tensor infos", buf[: ten["q8"]["type_pos"] + 2], "truncated"


def test_mutations_raise_format_error(valid, tmp_path):
    buf, L = valid
    n = 0
    for desc, data, fragment in mutations(buf, L):
        with pytest.raises(owl_cpp.FormatError) as e:
            open_bytes(tmp_path, data)
        assert fragment.lower() in str(e.value).lower(), (desc, str(e.value))
        assert isinstance(e.value, ValueError)
        n += 1
    assert n >= 30


def test_every_truncation_is_clean(valid, tmp_path):
    buf, L = valid
    # The last tensor (q4: 90 bytes) is followed by 6 bytes of alignment padding: cut 7 to lose data.
    cuts = sorted(set(list(range(0, L["header_end"] + 40, 3)) + [len(buf) - 7]))
    for cut in cuts:
        with pytest.raises(owl_cpp.FormatError):
            open_bytes(tmp_path, buf[:cut])


def test_alignment_key_is_checked(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    w.add_uint32("general.alignment", 48)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(owl_cpp.FormatError, match="alignment"):
        _core.GGUFFile.open(str(tmp_path / "a.gguf"))


def test_random_byte_flips_never_crash(valid, tmp_path):
    buf, L = valid
    rng = np.random.default_rng(7)
    header = L["header_end"]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        b = bytearray(buf)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, header))] = int(rng.integers(0, 256))
        try:
            f = open_bytes(tmp_path, bytes(b))
            [f[k] for k in f.keys()]
            f.tensors()
            outcomes["ok"] += 1
        except owl_cpp.FormatError:
            outcomes["error"] += 1
    assert outcomes["error"] > 50


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(owl_cpp.OwlError, match="cannot open"):
        _core.GGUFFile.open(str(tmp_path / "nope.gguf"))
    with pytest.raises(owl_cpp.OwlError, match="not a regular file"):
        _core.GGUFFile.open(str(tmp_path))


def raw_gguf(kvs=(), tensors=(), data=b"", alignment=32) -> bytes:
    """A GGUF v3 from parts: kvs (key, type id, value bytes), tensors (name, ne list, type id, offset)."""
    def s(x):
        return struct.pack("<Q", len(x.encode())) + x.encode()
    out = struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), len(kvs))
    out += b"".join(s(k) + struct.pack("<I", t) + v for k, t, v in kvs)
    for name, ne, t, off in tensors:
        out += s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t, off)
    return out + b"\0" * (-len(out) % alignment) + data


def test_tensor_byte_size_cannot_wrap(tmp_path):
    # 2^62 F32 elements are 2^64 bytes: computed naively that is 0, which "fits" in any file.
    for ne, t in [([1 << 62], 0), ([1 << 31, 1 << 31], 0), ([1 << 61, 2], 1), ([32 << 57], 8)]:
        with pytest.raises(owl_cpp.FormatError, match=r"m\.gguf': tensor 'huge': \d+ \w+ elements lie past the end"):
            open_bytes(tmp_path, raw_gguf(tensors=[("huge", ne, t, 0)], data=b"\0" * 64))


def test_bad_bool_in_an_array_names_file_and_key(tmp_path):
    data = raw_gguf([("t.flags", 9, struct.pack("<IQ", 7, 3) + bytes([1, 0, 2]))])
    with pytest.raises(owl_cpp.FormatError, match=r"GGUF '.*m\.gguf': key 't\.flags': bool element 2 is 2"):
        open_bytes(tmp_path, data)


def test_u64_max_reads_as_unsigned(tmp_path):
    top = 2**64 - 1
    f = open_bytes(tmp_path, raw_gguf([("t.u64", 10, struct.pack("<Q", top)),
                                       ("t.arr", 9, struct.pack("<IQQ", 10, 1, top))]))
    assert f["t.u64"] == top and f["t.arr"] == [top]
