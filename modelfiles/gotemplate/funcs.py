"""The builtin functions of Go's text/template: and, or, not, len, index, slice, print, printf,
println, html, js, urlquery, call, eq, ne, lt, le, gt, ge.  (and/or short-circuit inside the
executor.)  Errors are raised as GoCallError with Go's wording."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

from . import gofmt
from .values import (NIL_IFACE, GoCallError, GoFunc, GoMap, GoNil, GoSlice, GoStruct, iface_elem,
                     indirect_interface, is_nil_value, is_true, kind, type_name)


def _indirect(v: Any) -> tuple[Any, bool]:
    """Go's indirect: through pointers and interfaces; (value, is_nil)."""
    if isinstance(v, GoNil) and v.kind in ("ptr", "interface"):
        return v, True
    return v, False


def truth(v: Any) -> bool:
    return is_true(indirect_interface(v))[0]


def _index_arg(index: Any, cap: int) -> int:
    if index is None:
        raise GoCallError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise GoCallError(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise GoCallError(f"index out of range: {index}")
    return index


def _prepare_key(index: Any) -> str:
    if index is None:
        raise GoCallError("value is nil; should be of type string")
    if not isinstance(index, str):
        raise GoCallError(f"value has type {type_name(index)}; should be string")
    return index


def f_index(item: Any, *indexes: Any) -> Any:
    item = indirect_interface(item)
    if item is None:
        raise GoCallError("index of untyped nil")
    for index in indexes:
        index = indirect_interface(index)
        item, isnil = _indirect(item)
        if isnil:
            raise GoCallError("index of nil pointer")
        k = kind(item)
        if k in ("slice", "string"):
            if isinstance(item, GoNil):
                n = 0
            else:
                n = len(item.encode()) if k == "string" else len(item)
            x = _index_arg(index, n)
            if x >= n:
                raise GoCallError(f"reflect: {'string' if k == 'string' else 'slice'} index out of range")
            item = item.encode()[x] if k == "string" else iface_elem(item, item[x])
        elif k == "map":
            key = _prepare_key(index)
            if isinstance(item, GoNil):
                item = NIL_IFACE
            elif key in item:
                item = iface_elem(item, item[key])
            else:
                item = item.elem_zero() if isinstance(item, GoMap) else NIL_IFACE
        else:
            raise GoCallError(f"can't index item of type {type_name(item)}")
    return item


def f_slice(item: Any, *indexes: Any) -> Any:
    item = indirect_interface(item)
    if item is None:
        raise GoCallError("slice of untyped nil")
    item, isnil = _indirect(item)
    if isnil:
        raise GoCallError("slice of nil pointer")
    if len(indexes) > 3:
        raise GoCallError(f"too many slice indexes: {len(indexes)}")
    k = kind(item)
    if k == "string":
        if len(indexes) == 3:
            raise GoCallError("cannot 3-index slice a string")
        data: Any = item.encode()
    elif k == "slice":
        data = [] if isinstance(item, GoNil) else item
    else:
        raise GoCallError(f"can't slice item of type {type_name(item)}")
    cap = len(data)
    idx = [0, len(data), 0]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(indirect_interface(index), cap)
    if idx[0] > idx[1]:
        raise GoCallError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise GoCallError(f"invalid slice index: {idx[1]} > {idx[2]}")
    part = data[idx[0]:idx[1]]
    if k == "string":
        return part.decode("utf-8", "replace")
    if isinstance(item, GoSlice):
        return GoSlice(part, type_name=item.type_name, methods=item.methods, elem_iface=item.elem_iface)
    if isinstance(item, GoNil):
        return GoSlice(part, type_name=item.type_name, nil=True)
    return list(part)


def f_len(item: Any) -> int:
    item, isnil = _indirect(item)
    if isnil:
        raise GoCallError("len of nil pointer")
    k = kind(item)
    if item is None:
        raise GoCallError("reflect: call of reflect.Value.Type on zero Value")
    if k == "string":
        return len(item.encode())
    if k in ("map", "slice"):
        return 0 if isinstance(item, GoNil) else len(item)
    raise GoCallError(f"len of type {type_name(item)}")


def f_not(arg: Any) -> bool:
    return not truth(arg)


def _basic_kind(v: Any) -> str:
    k = kind(v)
    if k in ("bool", "int", "string"):
        return k
    if k == "float64":
        return "float"
    if k == "complex128":
        return "complex"
    return "invalid"


def _comparable(v: Any) -> bool:
    k = kind(v)
    if k in ("map", "slice", "func"):
        return False
    if k == "struct":
        return all(_comparable(f) for f in v.fields.values())
    return True


def _go_equal(a: Any, b: Any) -> bool:
    if isinstance(a, GoStruct) and isinstance(b, GoStruct):
        if a.pointer or b.pointer:
            return a is b
        return a.type_name == b.type_name and all(
            _go_equal(a.fields[k], b.fields[k]) for k in a.fields)
    return type_name(a) == type_name(b) and a == b


def f_eq(arg1: Any, *arg2: Any) -> bool:
    arg1 = indirect_interface(arg1)
    if not arg2:
        raise GoCallError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in arg2:
        arg = indirect_interface(arg)
        k2 = _basic_kind(arg)
        t = False
        if k1 != k2:
            if arg1 is not None and arg is not None:
                raise GoCallError(f"incompatible types for comparison: {type_name(arg1)} and {type_name(arg)}")
        elif k1 != "invalid":
            t = arg1 == arg
        else:
            k1r, k2r = kind(arg1), kind(arg)
            if k1r != k2r and k1r != "invalid" and k2r != "invalid":
                raise GoCallError(gofmt.sprintf("non-comparable types %s: %v, %s: %v",
                                                [arg1, type_name(arg1), type_name(arg), arg]))
            if is_nil_value(arg1) or is_nil_value(arg):
                t = is_nil_value(arg) == is_nil_value(arg1)
            else:
                if not _comparable(arg):
                    raise GoCallError(gofmt.sprintf("non-comparable type %s: %v", [arg, type_name(arg)]))
                t = _go_equal(arg1, arg)
        if t:
            return True
    return False


def f_ne(a: Any, b: Any) -> bool:
    return not f_eq(a, b)


def f_lt(a: Any, b: Any) -> bool:
    a = indirect_interface(a)
    k1 = _basic_kind(a)
    if k1 == "invalid":
        raise GoCallError("invalid type for comparison")
    b = indirect_interface(b)
    k2 = _basic_kind(b)
    if k2 == "invalid":
        raise GoCallError("invalid type for comparison")
    if k1 != k2:
        raise GoCallError(f"incompatible types for comparison: {type_name(a)} and {type_name(b)}")
    if k1 in ("bool", "complex"):
        raise GoCallError("invalid type for comparison")
    return a < b


def f_le(a: Any, b: Any) -> bool:
    return f_lt(a, b) or f_eq(a, b)


def f_gt(a: Any, b: Any) -> bool:
    return not f_le(a, b)


def f_ge(a: Any, b: Any) -> bool:
    return not f_lt(a, b)


# ----------------------------------------------------------------------------- escaping
def printable_value(v: Any) -> tuple[Any, bool]:
    """text/template's printableValue: what is printed for v (and whether it can be)."""
    if isinstance(v, GoStruct) and v.pointer:
        from .gofmt import _deref
        v = _deref(v)
    if v is None or v is NIL_IFACE:
        return "<no value>", True
    if isinstance(v, GoFunc):
        return None, False
    return v, True


def _eval_args(args: tuple) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    vals = []
    for a in args:
        pv, ok = printable_value(a)
        vals.append(pv if ok else a)
    return gofmt.sprint(vals)


def html_escape(s: str) -> str:
    if not any(c in s for c in "'\"&<>\0"):
        return s
    return (s.replace("&", "&amp;").replace("'", "&#39;").replace('"', "&#34;")
            .replace("<", "&lt;").replace(">", "&gt;").replace("\0", "\ufffd"))


def js_escape(s: str) -> str:
    out = []
    for c in s:
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif c == "'":
            out.append("\\'")
        elif c == '"':
            out.append('\\"')
        elif c == "<":
            out.append("\\u003C")
        elif c == ">":
            out.append("\\u003E")
        elif c == "&":
            out.append("\\u0026")
        elif c == "=":
            out.append("\\u003D")
        elif o < 0x20:
            out.append(f"\\u00{o:02X}")
        elif o < 0x80:
            out.append(c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{o:04X}")
    return "".join(out)


def f_html(*args: Any) -> str:
    return html_escape(_eval_args(args))


def f_js(*args: Any) -> str:
    return js_escape(_eval_args(args))


def f_urlquery(*args: Any) -> str:
    return quote_plus(_eval_args(args), safe="")


def f_print(*args: Any) -> str:
    return gofmt.sprint(list(args))


def f_println(*args: Any) -> str:
    return gofmt.sprintln(list(args))


def f_printf(fmt: str, *args: Any) -> str:
    return gofmt.sprintf(fmt, list(args))


def _unreachable(*_a: Any) -> Any:
    raise AssertionError("and/or/call are evaluated by the executor")


BUILTINS: dict[str, GoFunc] = {
    "and": GoFunc("and", _unreachable, ["value", "value"], True, "func(reflect.Value, ...reflect.Value) reflect.Value"),
    "or": GoFunc("or", _unreachable, ["value", "value"], True, "func(reflect.Value, ...reflect.Value) reflect.Value"),
    "call": GoFunc("call", _unreachable, ["value", "value"], True),
    "html": GoFunc("html", f_html, ["any"], True),
    "index": GoFunc("index", f_index, ["value", "value"], True),
    "slice": GoFunc("slice", f_slice, ["value", "value"], True),
    "js": GoFunc("js", f_js, ["any"], True),
    "len": GoFunc("len", f_len, ["value"]),
    "not": GoFunc("not", f_not, ["value"]),
    "print": GoFunc("print", f_print, ["any"], True),
    "printf": GoFunc("printf", f_printf, ["string", "any"], True),
    "println": GoFunc("println", f_println, ["any"], True),
    "urlquery": GoFunc("urlquery", f_urlquery, ["any"], True),
    "eq": GoFunc("eq", f_eq, ["value", "value"], True),
    "ge": GoFunc("ge", f_ge, ["value", "value"]),
    "gt": GoFunc("gt", f_gt, ["value", "value"]),
    "le": GoFunc("le", f_le, ["value", "value"]),
    "lt": GoFunc("lt", f_lt, ["value", "value"]),
    "ne": GoFunc("ne", f_ne, ["value", "value"]),
}
