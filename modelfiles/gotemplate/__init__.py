"""A Go text/template interpreter (lexer, parser, executor, Go's fmt and encoding/json where
templates reach them).  Ollama's data model and entry point live in modelfiles.prompt."""

from .errors import TemplateError
from .exec import Template, execute_tree
from .funcs import BUILTINS
from .gofmt import go_quote, sprint, sprintf, sprintln
from .gojson import JSONObject, from_json, marshal
from .values import NIL_IFACE, GoCallError, GoFunc, GoMap, GoNil, GoSlice, GoStruct

__all__ = [
    "TemplateError", "Template", "execute_tree", "BUILTINS", "go_quote", "sprint", "sprintf",
    "sprintln", "JSONObject", "from_json", "marshal", "NIL_IFACE", "GoCallError", "GoFunc",
    "GoMap", "GoNil", "GoSlice", "GoStruct",
]
