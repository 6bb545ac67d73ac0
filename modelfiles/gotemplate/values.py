"""How Go values are represented in Python, for the template executor.

Plain Python values stand for Go's dynamic values as encoding/json would decode them:
``str`` string, ``bool`` bool, ``int`` int, ``float`` float64, ``dict`` map[string]interface {},
``list`` []interface {}, ``None`` the invalid reflect.Value (an untyped nil).  Typed values that
Ollama hands its templates (structs with fields and methods, slices and maps with a String
method, typed nils) use the classes below, so printing, truthiness, comparison and error
messages come out as Go's do.
"""

from __future__ import annotations

from typing import Any, Callable


class GoNil:
    """A typed nil: a nil interface{} (e.g. a missing map key under missingkey=zero), pointer,
    slice or map.  ``kind`` is one of 'interface', 'ptr', 'slice', 'map'."""

    __slots__ = ("type_name", "kind", "methods")

    def __init__(self, type_name: str, kind: str, methods: dict | None = None):
        self.type_name, self.kind = type_name, kind
        self.methods = methods or {}  # methods with pointer receivers still run on a nil pointer

    def __repr__(self) -> str:
        return f"GoNil({self.type_name})"


NIL_IFACE = GoNil("interface {}", "interface")


class GoFunc:
    """A Go function or bound method.  ``params`` are type names: 'any' (interface {}),
    'value' (reflect.Value: receives typed nils as they are), 'string', 'int', 'bool',
    'float64'.  With ``variadic`` the last param is the element type of the ... parameter.
    ``fn`` raises GoCallError for Go's error return."""

    __slots__ = ("name", "fn", "params", "variadic", "type_name")

    def __init__(self, name: str, fn: Callable[..., Any], params: list[str], variadic: bool = False,
                 type_name: str = ""):
        self.name, self.fn, self.params, self.variadic = name, fn, params, variadic
        self.type_name = type_name or self._signature()

    def _signature(self) -> str:
        names = {"any": "interface {}", "value": "reflect.Value"}
        ps = [names.get(p, p) for p in self.params]
        if self.variadic and ps:
            ps[-1] = "..." + ps[-1]
        return "func(" + ", ".join(ps) + ") string"


class GoCallError(Exception):
    """The error result of a Go function called from a template."""


class GoStruct:
    """A struct value (or a non-nil pointer to one, with ``pointer``).  ``fields`` keep Go's
    declaration order; ``methods`` maps method names to GoFunc-making callables taking the struct;
    ``json_fields``: list of (field, json name, omitempty) for encoding/json, None for no tags."""

    __slots__ = ("type_name", "fields", "methods", "pointer", "json_fields", "json_func")

    def __init__(self, type_name: str, fields: dict[str, Any], *, methods: dict | None = None,
                 pointer: bool = False, json_fields: list[tuple[str, str, bool]] | None = None,
                 json_func: Callable[["GoStruct"], Any] | None = None):
        self.type_name, self.fields = type_name, fields
        self.methods = methods or {}
        self.pointer = pointer
        self.json_fields = json_fields
        self.json_func = json_func

    def __repr__(self) -> str:
        return f"GoStruct({self.type_name}, {self.fields!r})"


class GoMap(dict):
    """A typed Go map (string keys).  ``elem_zero`` makes the zero value of the element type."""

    def __init__(self, *args, type_name: str = "map[string]interface {}", elem_zero=None,
                 methods: dict | None = None, nil: bool = False, **kw):
        super().__init__(*args, **kw)
        self.type_name = type_name
        self.elem_zero = elem_zero or (lambda: NIL_IFACE)
        self.methods = methods or {}
        self.nil = nil


class GoSlice(list):
    """A typed Go slice; ``nil`` marks a nil slice (prints as [], encodes as JSON null)."""

    def __init__(self, items=(), *, type_name: str = "[]interface {}", methods: dict | None = None,
                 nil: bool = False, elem_iface: bool = False):
        super().__init__(items)
        self.type_name = type_name
        self.methods = methods or {}
        self.nil = nil
        self.elem_iface = elem_iface


# Go's names for the scalar kinds; bool first, since bool is an int in Python.
_SCALARS = ((bool, "bool"), (int, "int"), (float, "float64"), (str, "string"), (complex, "complex128"))


def _scalar_name(v: Any) -> str | None:
    for py_type, go_name in _SCALARS:
        if isinstance(v, py_type):
            return go_name
    return None


def kind(v: Any) -> str:
    """Go's reflect.Kind name for a value ('invalid' for None)."""
    if v is None:
        return "invalid"
    if (name := _scalar_name(v)) is not None:
        return name
    if isinstance(v, dict):
        return "map"
    if isinstance(v, (list, tuple)):
        return "slice"
    if isinstance(v, GoStruct):
        return "ptr" if v.pointer else "struct"
    if isinstance(v, GoNil):
        return v.kind
    if isinstance(v, GoFunc):
        return "func"
    return "struct"


def type_name(v: Any) -> str:
    """Go's reflect.Type.String() for a value."""
    if (name := _scalar_name(v)) is not None:
        return name
    if isinstance(v, (GoMap, GoSlice, GoNil, GoFunc)):
        return v.type_name
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, GoStruct):
        return ("*" if v.pointer else "") + v.type_name
    return type(v).__name__


def is_nil_value(v: Any) -> bool:
    """Go's isNil helper of the comparison functions (invalid or a nil of a nilable kind)."""
    if v is None or isinstance(v, GoNil):
        return True
    if isinstance(v, (GoMap, GoSlice)):
        return v.nil
    return False


def indirect_interface(v: Any) -> Any:
    """The concrete value inside an interface value; a nil interface becomes None."""
    return None if v is NIL_IFACE or (isinstance(v, GoNil) and v.kind == "interface") else v


def is_true(v: Any) -> tuple[bool, bool]:
    """Go's template truth: (truth, ok)."""
    v = indirect_interface(v)
    if v is None:
        return False, True
    k = kind(v)
    if k in ("map", "slice", "string"):
        return len(v) > 0, True
    if k == "bool":
        return bool(v), True
    if k in ("int", "float64", "complex128"):
        return v != 0, True
    if k in ("ptr", "interface", "func"):
        return not isinstance(v, GoNil), True
    if k == "struct":
        return True, True
    return False, False


def methods_of(v: Any) -> dict:
    if isinstance(v, (GoStruct, GoMap, GoSlice, GoNil)):
        return v.methods
    return {}


def stringer(v: Any) -> Callable[[], str] | None:
    """v.String if the value has Go's fmt.Stringer method."""
    m = methods_of(v).get("String")
    if m is None:
        return None
    return lambda: m(v).fn()


def iface_elem(container: Any, v: Any) -> Any:
    """An element read out of a container: nil elements of interface type are nil interfaces."""
    if v is None:
        if isinstance(container, GoSlice) and not container.elem_iface:
            return None
        return NIL_IFACE
    return v
