"""Ollama's prompt templates: its data model over Go text/template, and the ``render`` entry point.

What a template sees, as Ollama (template/template.go, server/prompt.go) gives it:

* Templates that use ``.Messages`` (anywhere, also as ``$.Messages``) get ``.System`` (every
  system message's content joined by blank lines), ``.Messages`` (consecutive messages of the
  same role merged, except tool messages), ``.Tools``, ``.Response`` (empty), ``.Think``,
  ``.ThinkLevel``, ``.IsThinkSet``.  Each message has ``.Role .Content .Thinking .Images
  .ToolCalls .ToolName .ToolCallID``; a tool call ``.ID .Function.Index .Function.Name
  .Function.Arguments`` (Arguments print as JSON).  Tools: ``.Type .Items .Function.Name
  .Function.Description .Function.Parameters.{Type,Defs,Items,Required,Properties}``; each
  property has ``.Type .Description .Enum .Items .Properties .Required .AnyOf`` and the method
  ``.ToTypeScriptType``.  ``.Tools``, a tool, ``.Arguments`` and ``.Properties`` print as JSON.
* Legacy templates (only ``.System``/``.Prompt``/``.Response``) are run once per turn: a turn is
  flushed when a system message follows a prompt or response, or a user message follows a
  response; the last turn runs a copy of the template cut right after its ``{{ .Response }}``,
  so the reply is left open.  A template naming neither ``.Messages`` nor ``.Response`` gets
  ``{{ .Response }}`` appended at parse time.
* With a suffix (fill-in-the-middle) and a prompt, only ``.Prompt``/``.Suffix`` are set.
* Missing map keys render as ``<no value>`` (Go's missingkey=zero on a map[string]any); extra
  functions: json, currentDate, yesterdayDate, toTypeScriptType.
"""

from __future__ import annotations

import base64
import copy
import datetime
import functools
import json as _pyjson
from typing import Any

from .gotemplate import (GoFunc, GoMap, GoNil, GoSlice, GoStruct, JSONObject,
                         TemplateError, from_json, marshal)
from .gotemplate import nodes as P
from .gotemplate.exec import Template as GoTemplate
from .gotemplate.exec import execute_tree
from .gotemplate.gojson import UnsupportedValue
from .gotemplate.values import NIL_IFACE

__all__ = ["TemplateError", "Template", "parse_template", "render", "template_vars"]


# ----------------------------------------------------------------------------- Ollama's functions
def _f_json(v: Any) -> str:
    try:
        return marshal(v)
    except UnsupportedValue:
        return ""


def _f_current_date(*_args: str) -> str:
    return datetime.date.today().isoformat()


def _f_yesterday_date(*_args: str) -> str:
    return (datetime.date.today() - datetime.timedelta(days=1)).isoformat()


def _f_to_typescript_type(v: Any) -> str:
    if isinstance(v, GoStruct) and v.type_name == "api.ToolProperty":
        return _ts_type(v)
    return "any"


OLLAMA_FUNCS: dict[str, GoFunc] = {
    "json": GoFunc("json", _f_json, ["any"]),
    "currentDate": GoFunc("currentDate", _f_current_date, ["string"], True),
    "yesterdayDate": GoFunc("yesterdayDate", _f_yesterday_date, ["string"], True),
    "toTypeScriptType": GoFunc("toTypeScriptType", _f_to_typescript_type, ["any"]),
}

_TS = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
       "array": "any[]", "object": "Record<string, any>", "null": "null"}


def _ts_type(prop: GoStruct) -> str:
    any_of = prop.fields["AnyOf"]
    if any_of:
        return " | ".join(_ts_type(p) for p in any_of)
    types = prop.fields["Type"]
    if not types:
        return "any"
    return " | ".join(_TS.get(t, "any") for t in types)


# ----------------------------------------------------------------------------- data model
def _stringer(fn):
    return {"String": lambda self: GoFunc("String", lambda: fn(self), [])}


def _args_string(m: GoMap) -> str:
    if m.nil:
        return "{}"
    return _f_json(m)


def _json_string(v: Any) -> str:
    return _f_json(v)


def _any(v: Any) -> Any:
    """A JSON value held in a Go field of type any (nil interface when absent)."""
    return NIL_IFACE if v is None else from_json(v)


def _strings(v: Any, type_name: str = "[]string") -> GoSlice:
    if v is None:
        return GoSlice(type_name=type_name, nil=True)
    if isinstance(v, str):
        v = [v]
    return GoSlice([str(x) for x in v], type_name=type_name)


def _property_type(v: Any) -> GoSlice:
    s = _strings(v, "api.PropertyType")
    s.methods = _stringer(lambda t: "" if not t else t[0] if len(t) == 1 else "[" + " ".join(t) + "]")
    s.json_func = lambda t: (t[0] if len(t) == 1 else list(t)) if not t.nil else None
    return s


def _properties_map(props: Any) -> Any:
    """*api.ToolPropertiesMap (nested properties keep their order; Len and ToMap work on nil)."""
    items = [(str(k), _tool_property(v)) for k, v in dict(props).items()] if props is not None else None

    def to_map(self):
        if items is None:
            return GoFunc("ToMap", lambda: GoMap(type_name="map[string]api.ToolProperty", nil=True,
                                                elem_zero=lambda: _tool_property({})), [])
        return GoFunc("ToMap", lambda: GoMap(dict(items), type_name="map[string]api.ToolProperty",
                                            elem_zero=lambda: _tool_property({})), [])

    methods = {"Len": lambda self: GoFunc("Len", lambda: len(items or ()), []), "ToMap": to_map}
    if items is None:
        return GoNil("*api.ToolPropertiesMap", "ptr", methods)
    return GoStruct("api.ToolPropertiesMap", {}, pointer=True, methods=methods,
                    json_func=lambda self: JSONObject(items))


_PROPERTY_JSON = [("AnyOf", "anyOf", True), ("Type", "type", True), ("Items", "items", True),
                  ("Description", "description", True), ("Enum", "enum", True),
                  ("Properties", "properties", True), ("Required", "required", True)]


def _tool_property(p: Any) -> GoStruct:
    p = p if isinstance(p, dict) else {}
    any_of = p.get("anyOf")
    enum = p.get("enum")
    return GoStruct("api.ToolProperty", {
        "AnyOf": GoSlice([_tool_property(x) for x in any_of], type_name="[]api.ToolProperty")
        if isinstance(any_of, list) else GoSlice(type_name="[]api.ToolProperty", nil=True),
        "Type": _property_type(p.get("type")),
        "Items": _any(p.get("items")),
        "Description": str(p.get("description") or ""),
        "Enum": GoSlice([from_json(x) for x in enum], elem_iface=True)
        if isinstance(enum, list) else GoSlice(nil=True, elem_iface=True),
        "Properties": _properties_map(p.get("properties")),
        "Required": _strings(p.get("required")),
    }, methods={"ToTypeScriptType": lambda self: GoFunc("ToTypeScriptType", lambda: _ts_type(self), [])},
        json_fields=_PROPERTY_JSON)


def _template_tool(t: dict) -> GoStruct:
    fn = t.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    properties = GoMap({str(k): _tool_property(v) for k, v in props.items()} if isinstance(props, dict) else {},
                       type_name="template.templateProperties", elem_zero=lambda: _tool_property({}),
                       nil=not isinstance(props, dict))
    properties.methods = _stringer(lambda m: "{}" if m.nil else _json_string(m))
    parameters = GoStruct("template.templateToolFunctionParameters", {
        "Type": str(params.get("type") or ""),
        "Defs": _any(params.get("$defs")),
        "Items": _any(params.get("items")),
        "Required": _strings(params.get("required")),
        "Properties": properties,
    }, json_fields=[("Type", "type", False), ("Defs", "$defs", True), ("Items", "items", True),
                    ("Required", "required", True), ("Properties", "properties", False)])
    function = GoStruct("template.templateToolFunction", {
        "Name": str(fn.get("name") or ""),
        "Description": str(fn.get("description") or ""),
        "Parameters": parameters,
    }, json_fields=[("Name", "name", False), ("Description", "description", False),
                    ("Parameters", "parameters", False)])
    tool = GoStruct("template.templateTool", {
        "Type": str(t.get("type") or ""),
        "Items": _any(t.get("items")),
        "Function": function,
    }, json_fields=[("Type", "type", False), ("Items", "items", True), ("Function", "function", False)])
    tool.methods = _stringer(_json_string)
    return tool


def _tools(tools: list[dict] | None) -> GoSlice:
    if tools is None:
        s = GoSlice(type_name="template.templateTools", nil=True)
    else:
        s = GoSlice([_template_tool(t) for t in tools], type_name="template.templateTools")
    s.methods = _stringer(_json_string)
    return s


def _arguments(args: Any) -> GoMap:
    if isinstance(args, str):
        try:
            args = _pyjson.loads(args)
        except ValueError:
            args = None
    nil = not isinstance(args, dict)
    m = GoMap(from_json(args) if not nil else {}, type_name="template.templateArgs", nil=nil)
    m.methods = _stringer(_args_string)
    return m


def _tool_call(tc: dict) -> GoStruct:
    fn = tc.get("function") or {}
    return GoStruct("template.templateToolCall", {
        "ID": str(tc.get("id") or ""),
        "Function": GoStruct("template.templateToolCallFunction", {
            "Index": int(fn.get("index") or 0),
            "Name": str(fn.get("name") or ""),
            "Arguments": _arguments(fn.get("arguments")),
        }),
    })


def _image(img: Any) -> GoSlice:
    """api.ImageData ([]byte): the API carries images as base64 text."""
    if isinstance(img, str):
        try:
            data = base64.b64decode(img, validate=True)
        except ValueError:
            data = img.encode()
    else:
        data = bytes(img)
    s = GoSlice(list(data), type_name="api.ImageData")
    s.json_func = lambda v: base64.b64encode(bytes(v)).decode()
    return s


def _template_message(m: dict) -> GoStruct:
    calls = m.get("tool_calls") or []
    images = m.get("images")
    return GoStruct("template.templateMessage", {
        "Role": m["role"],
        "Content": m["content"],
        "Thinking": str(m.get("thinking") or ""),
        "Images": GoSlice([_image(i) for i in images], type_name="[]api.ImageData") if images else
        GoSlice(type_name="[]api.ImageData", nil=True),
        "ToolCalls": GoSlice([_tool_call(tc) for tc in calls], type_name="[]template.templateToolCall")
        if calls else GoSlice(type_name="[]template.templateToolCall", nil=True),
        "ToolName": str(m.get("tool_name") or ""),
        "ToolCallID": str(m.get("tool_call_id") or ""),
    }, pointer=True)


def collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """Ollama's collate: all system contents joined by blank lines, and the messages with
    consecutive same-role messages merged (their contents joined by a blank line), tool
    messages excepted."""
    system: list[str] = []
    out: list[dict] = []
    for m in messages:
        if m["role"] == "system":
            system.append(m["content"])
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(m)
    return "\n\n".join(system), out


# ----------------------------------------------------------------------------- templates
def _identifiers(n: P.Node | None) -> list[str]:
    """Ollama's Identifiers: field and variable names used in a node."""
    if isinstance(n, P.ListNode):
        return [i for c in n.nodes for i in _identifiers(c)]
    if isinstance(n, P.TemplateNode):
        if n.pipe is None:
            raise TemplateError("undefined template specified")
        return _identifiers(n.pipe)
    if isinstance(n, P.ActionNode):
        return _identifiers(n.pipe)
    if isinstance(n, P.BranchNode):
        names = _identifiers(n.pipe)
        for lst in (n.list, n.else_list):
            if lst is not None:
                names += _identifiers(lst)
        return names
    if isinstance(n, P.PipeNode):
        return [i for c in n.cmds for a in c.args for i in _identifiers(a)]
    if isinstance(n, (P.FieldNode, P.VariableNode)):
        return list(n.ident)
    return []


def _delete_after_response(root: P.ListNode) -> P.ListNode:
    """Ollama's deleteNode as used by Execute: everything after the first .Response field goes."""
    cut = False

    def fn(n: P.Node) -> bool:
        nonlocal cut
        if isinstance(n, P.FieldNode) and "Response" in n.ident:
            cut = True
            return False
        return cut

    def walk(n: P.Node):
        if fn(n):
            return None
        if isinstance(n, P.ListNode):
            n.nodes = [c for c in (walk(c) for c in n.nodes) if c is not None]
        elif isinstance(n, P.BranchNode):
            n.list = walk(n.list) or P.ListNode(n.list.pos)
            if n.else_list is not None:
                n.else_list = walk(n.else_list)  # Go panics here; dropping the else is kinder
        elif isinstance(n, P.ActionNode):
            pipe = walk(n.pipe)
            if pipe is None:
                return None
            n.pipe = pipe
        elif isinstance(n, P.PipeNode):
            cmds = []
            for c in n.cmds:
                args = [a for a in (walk(a) for a in c.args) if a is not None]
                if not args:
                    return None
                c.args = args
                cmds.append(c)
            if not cmds:
                return None
            n.cmds = cmds
        return n

    return walk(root)


class Template:
    """A parsed Ollama prompt template (see the module doc for what it is given)."""

    def __init__(self, text: str):
        self.raw = text
        self._go = GoTemplate(text, funcs=OLLAMA_FUNCS, missingkey="zero")
        self.vars = template_vars(self._go)
        if "messages" not in self.vars and "response" not in self.vars:
            tree = self._go.trees[""]
            node = P.ActionNode(0, 1, P.PipeNode(0, 1))
            cmd = P.CommandNode(0)
            cmd.args.append(P.FieldNode(0, ".Response"))
            node.pipe.cmds.append(cmd)
            for x in (node, node.pipe, cmd, cmd.args[0]):
                x.tree = tree
            tree.root.nodes.append(node)
            self.vars = sorted(set(self.vars) | {"response"})
        self._cut: P.Tree | None = None

    def __str__(self) -> str:
        return self.raw

    @property
    def uses_messages(self) -> bool:
        return "messages" in self.vars

    def _run(self, data: dict) -> str:
        return self._go.execute(data)

    def _cut_tree(self) -> P.Tree:
        if self._cut is None:
            main = self._go.trees[""]
            memo = {id(t): t for t in self._go.trees.values()}
            root = _delete_after_response(copy.deepcopy(main.root, memo))
            cut = P.Tree("", main.text, "")
            cut.root = root
            self._cut = cut
        return self._cut

    def execute(self, messages: list[dict] | None = None, *, tools: list[dict] | None = None,
                prompt: str = "", suffix: str = "", think: bool = False, think_level: str = "",
                is_think_set: bool = False) -> str:
        """Ollama's Template.Execute for the given values."""
        system, msgs = collate(messages or [])
        thinking = {"Think": think, "ThinkLevel": think_level, "IsThinkSet": is_think_set}
        if prompt and suffix:
            return self._run({"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking})
        if self.uses_messages:
            return self._run({
                "System": system,
                "Messages": GoSlice([_template_message(m) for m in msgs],
                                    type_name="[]*template.templateMessage", nil=not msgs),
                "Tools": _tools(tools),
                "Response": "",
                **thinking,
            })
        out: list[str] = []
        system, prompt, response = "", "", ""

        def flush() -> None:
            nonlocal system, prompt, response
            out.append(self._run({"System": system, "Prompt": prompt, "Response": response, **thinking}))
            system = prompt = response = ""

        for m in msgs:
            role = m["role"]
            if role == "system":
                if prompt or response:
                    flush()
                system = m["content"]
            elif role == "user":
                if response:
                    flush()
                prompt = m["content"]
            elif role == "assistant":
                response = m["content"]
        out.append(execute_tree(self._cut_tree(), {"System": system, "Prompt": prompt, "Response": response,
                                                   **thinking}))
        return "".join(out)


def template_vars(t: GoTemplate) -> list[str]:
    """Ollama's Template.Vars: the lower-cased names of fields and variables used anywhere."""
    names: set[str] = set()
    for tree in t.trees.values():
        for n in tree.root.nodes:
            names.update(i.lower() for i in _identifiers(n))
    return sorted(names)


@functools.lru_cache(maxsize=256)
def parse_template(text: str) -> Template:
    """Parses (and validates) a Go template as Ollama does at create time; cached by text.
    Raises TemplateError with Go's message, e.g. ``template: :3: unexpected "}" in operand``."""
    return Template(text)


def _think_values(think: bool | str | None) -> tuple[bool, str, bool]:
    if think is None:
        return False, "", False
    if isinstance(think, bool):
        return think, "medium" if think else "", True
    level = str(think)
    return level in ("high", "medium", "low", "max"), level, True


def render(template: str, *, messages: list[dict], system: str | None = None, tools: list[dict] | None = None,
           think: bool | str | None = None, suffix: str | None = None) -> str:
    """Renders a prompt the way Ollama does for /api/chat and /api/generate.

    ``messages``: Ollama API messages ({"role", "content", optional "tool_calls", "tool_name",
    "thinking", "tool_call_id", "images"}).  ``system``: the model's default system prompt,
    put first when the conversation does not start with a system message.  ``think``: the
    request's think value (True/False or "low"/"medium"/"high").  ``suffix``: fill-in-the-middle;
    the prompt is then the last user message's content and only .Prompt/.Suffix are set."""
    t = parse_template(template)
    msgs = [_normalize(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    think_v, level, is_set = _think_values(think)
    if suffix:
        prompt = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        return t.execute(None, prompt=prompt, suffix=suffix, think=think_v, think_level=level,
                         is_think_set=is_set)
    return t.execute(msgs, tools=tools, think=think_v, think_level=level, is_think_set=is_set)


def _normalize(m: dict) -> dict:
    out = dict(m)
    out["role"] = str(m.get("role") or "").lower()
    out["content"] = str(m.get("content") or "")
    return out
