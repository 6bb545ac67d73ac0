"""encoding/json's Marshal for values as values.py represents them: map keys sorted, HTML
characters escaped (\\u003c \\u003e \\u0026), U+2028/U+2029 escaped, floats as ES6 numbers,
nil slices and maps as null, struct fields by name or by their json tags with omitempty."""

from __future__ import annotations

import math
from typing import Any

from .gofmt import json_float
from .values import GoFunc, GoMap, GoNil, GoSlice, GoStruct


class UnsupportedValue(ValueError):
    pass


class JSONObject(list):
    """An object whose keys keep their insertion order (a custom MarshalJSON of an ordered map)."""


_HEX = "0123456789abcdef"


def json_string(s: str) -> str:
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif o < 0x20 or c in "<>&":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
                c, "\\u00" + _HEX[o >> 4] + _HEX[o & 0xF]))
        elif c in "\u2028\u2029":
            out.append("\\u202" + _HEX[o & 0xF])
        elif 0xD800 <= o < 0xE000:
            out.append("\\ufffd")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _empty(v: Any) -> bool:
    if v is None or isinstance(v, GoNil):
        return True
    if isinstance(v, (bool, int, float, str, list, dict)):
        return not v
    return False


def marshal(v: Any) -> str:
    """json.Marshal(v); raises UnsupportedValue for NaN/Inf or functions."""
    if v is None or isinstance(v, GoNil):
        return "null"
    jf = getattr(v, "json_func", None)
    if jf is not None:
        return marshal(jf(v))
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise UnsupportedValue("json: unsupported value: " + repr(v))
        return json_float(v)
    if isinstance(v, str):
        return json_string(v)
    if isinstance(v, JSONObject):
        return "{" + ",".join(json_string(k) + ":" + marshal(x) for k, x in v) + "}"
    if isinstance(v, dict):
        if isinstance(v, GoMap) and v.nil:
            return "null"
        return "{" + ",".join(json_string(k) + ":" + marshal(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        if isinstance(v, GoSlice) and v.nil:
            return "null"
        return "[" + ",".join(marshal(x) for x in v) + "]"
    if isinstance(v, GoStruct):
        parts = []
        if v.json_fields is None:
            for name, fv in v.fields.items():
                parts.append(json_string(name) + ":" + marshal(fv))
        else:
            for name, jname, omitempty in v.json_fields:
                fv = v.fields.get(name)
                if omitempty and _empty(fv):
                    continue
                parts.append(json_string(jname) + ":" + marshal(fv))
        return "{" + ",".join(parts) + "}"
    if isinstance(v, (GoFunc, complex)):
        raise UnsupportedValue("json: unsupported type")
    raise UnsupportedValue("json: unsupported type " + type(v).__name__)


def from_json(v: Any) -> Any:
    """A decoded JSON value as Go's encoding/json decodes into interface {}: numbers are
    float64, objects map[string]interface {}, arrays []interface {}."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): from_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [from_json(x) for x in v]
    return v
