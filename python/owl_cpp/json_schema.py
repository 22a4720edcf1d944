"""A JSON Schema subset compiled for the C++ JSON constraint (_core.JsonSchema, owl/json_constraint.h).

Supported: type (object, array, string, number, integer, boolean, null, or a list of them), properties,
required, enum, const, items (one schema), additionalProperties. Only the listed properties are ever generated
(as with additionalProperties false); an object schema without properties allows any object. Annotations
(title, description, default, examples, $schema, $id, $comment) are ignored. Any other keyword (pattern,
minimum, anyOf, $ref, ...) is a ValueError naming it: an answer not held to a constraint would break the
contract silently. The root must be an object schema. "integer" numbers have no fraction and no exponent.
Enum/const values and property names are written in one spelling: compact JSON with non-ASCII characters as
UTF-8 (not backslash-u escapes), as json.dumps(v, separators=(",", ":"), ensure_ascii=False) gives.
"""
from __future__ import annotations

import json

from . import _core

TYPES = {"object": 1, "array": 2, "string": 4, "number": 8, "integer": 16, "boolean": 32, "null": 64}
ANY = 127
SUPPORTED = {"type", "properties", "required", "enum", "const", "items", "additionalProperties"}
IGNORED = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "strict"}
MAX_PROPERTIES = 64
MAX_ENUM = 255


def _literal(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class _Compiler:
    def __init__(self):
        self.nodes: list = []

    def node(self, schema, path: str) -> int:
        if schema is True or schema == {}:
            schema = {}
        elif not isinstance(schema, dict):
            raise ValueError(f"json_schema: {path} must be a schema object, got {schema!r}")
        unknown = sorted(set(schema) - SUPPORTED - IGNORED)
        if unknown:
            raise ValueError(f"json_schema: {path}: unsupported keyword(s) {', '.join(unknown)} (supported: "
                             f"{', '.join(sorted(SUPPORTED))})")
        n = _core.JsonSchemaNode()
        index = len(self.nodes)
        self.nodes.append(n)
        n.types = self.types(schema, path)
        if "enum" in schema or "const" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            if not isinstance(values, list) or not values:
                raise ValueError(f"json_schema: {path}.enum must be a non-empty list")
            try:
                lits = sorted({_literal(v) for v in values})
            except ValueError as e:
                raise ValueError(f"json_schema: {path}.enum: {e}") from None
            if len(lits) > MAX_ENUM or any(len(x) > 255 for x in lits):
                raise ValueError(f"json_schema: {path}.enum: at most {MAX_ENUM} values of at most 255 bytes each")
            n.enum_values = lits
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise ValueError(f"json_schema: {path}.properties must be an object")
        if len(props) > MAX_PROPERTIES:
            raise ValueError(f"json_schema: {path}: at most {MAX_PROPERTIES} properties, got {len(props)}")
        names = sorted(props, key=lambda k: _literal(k))
        if any(len(_literal(k)) > 255 for k in names):
            raise ValueError(f"json_schema: {path}: property names must be at most 253 bytes")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(r not in props for r in required):
            raise ValueError(f"json_schema: {path}.required must list names from properties, got {required!r}")
        n.keys = [_literal(k) for k in names]
        n.key_node = [self.node(props[k], f"{path}.properties.{k}") for k in names]
        n.required = sum(1 << names.index(r) for r in set(required))
        items = schema.get("items")
        if items is not None:
            if isinstance(items, list):
                raise ValueError(f"json_schema: {path}.items: tuple validation (a list of schemas) is not supported")
            n.items = self.node(items, f"{path}.items")
        return index

    @staticmethod
    def types(schema: dict, path: str) -> int:
        t = schema.get("type")
        if t is None:
            if "properties" in schema or "required" in schema:
                return TYPES["object"]
            return TYPES["array"] if "items" in schema else ANY
        names = t if isinstance(t, list) else [t]
        if not names or any(x not in TYPES for x in names):
            raise ValueError(f"json_schema: {path}.type must be one or a list of {', '.join(TYPES)}, got {t!r}")
        return sum({TYPES[x] for x in names})


def compile_schema(schema) -> "_core.JsonSchema":
    """The schema (a dict) as a _core.JsonSchema; ValueError naming what is unsupported or malformed."""
    c = _Compiler()
    c.node(schema, "schema")
    if c.nodes[0].types != TYPES["object"] or c.nodes[0].enum_values:
        raise ValueError("json_schema: the root schema must be an object (type: object)")
    return _core.JsonSchema(c.nodes)
