"""The model's streamed text for one answer, split as Ollama splits it: thinking, content, tool calls.

Behaviour follows Ollama's generic parsers (thinking/parser.go, tools/tools.go, tools/template.go),
the ones it uses for models whose Go TEMPLATE drives the prompt:

* Thinking is parsed only when the request's think is on (true or a level).  The tags are the ones
  the template wraps ``.Thinking`` in (e.g. ``<think>``/``</think>``), else ``<think>``/``</think>``.
  The block counts only at the very start of the answer (leading whitespace aside), or when the
  prompt already ends with the opening tag (a prefilled think block).  With think off, a think block
  the model writes stays in the content, as in Ollama.
* Tool calls are parsed only when the request has tools, from the content (never from thinking).
  The call prefix is the first text the template writes under ``{{ if .ToolCalls }}``, cut before any
  ``{``: ``<tool_call>`` for Qwen, ``[TOOL_CALLS]`` for Mistral; none (Llama 3) means bare JSON, and
  then ``{`` or ``[`` must open the answer.  After the prefix, each complete JSON object naming one
  of the request's tools (``{"name", "arguments"|"parameters"}``, also in a list or nested) becomes a
  call ``{"id", "function": {"index", "name", "arguments"}}``, sent as soon as it is complete.  Text
  that may still become a call is held back; held text that turns out not to be one is content.
"""

from __future__ import annotations

import functools
import json
import random
import string
from dataclasses import dataclass, field

from modelfiles import TemplateError
from modelfiles.gotemplate import Template as GoTemplate
from modelfiles.gotemplate import nodes as P
from modelfiles.prompt import OLLAMA_FUNCS

__all__ = ["ChatOutputParser", "Delta", "OutputTags", "output_tags", "think_enabled"]

THINK_LEVELS = ("high", "medium", "low", "max")
DEFAULT_THINK_TAGS = ("<think>", "</think>")


def think_enabled(think) -> bool:
    """Ollama's ThinkValue.Bool: true, or any level, turns thinking on."""
    return think is True or (isinstance(think, str) and think in THINK_LEVELS)


@dataclass
class Delta:
    """What one piece of model text adds to the answer."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


# ----------------------------------------------------------------------------- template analysis
@dataclass(frozen=True)
class OutputTags:
    think_open: str = ""
    think_close: str = ""
    tool_prefix: str = "{"


def _walk(node, ancestors: list, visit) -> None:
    """Depth-first over a parse tree, `visit(node, ancestors)` before the children."""
    if node is None:
        return
    visit(node, ancestors)
    ancestors.append(node)
    if isinstance(node, P.ListNode):
        children = node.nodes
    elif isinstance(node, P.BranchNode):
        children = [node.pipe, node.list, node.else_list]
    elif isinstance(node, (P.ActionNode, P.TemplateNode)):
        children = [node.pipe]
    elif isinstance(node, P.PipeNode):
        children = node.cmds
    elif isinstance(node, P.CommandNode):
        children = node.args
    else:
        children = []
    for child in children:
        _walk(child, ancestors, visit)
    ancestors.pop()


def _uses_field(node, name: str) -> bool:
    found = []
    _walk(node, [], lambda n, _: found.append(n) if isinstance(n, P.FieldNode) and n.ident[0] == name else None)
    return bool(found)


def _think_tags(root: P.ListNode) -> tuple[str, str]:
    """Ollama's InferTags: for each ``.Thinking`` inside a range over ``.Messages``, the first and last
    text of the nearest enclosing list are the opening and closing tags (later uses win)."""
    tags = ["", ""]

    def visit(node, ancestors):
        if not (isinstance(node, P.FieldNode) and node.ident[0] == "Thinking"):
            return
        ranges = [a for a in ancestors if isinstance(a, P.RangeNode)]
        if not ranges or not _uses_field(ranges[-1].pipe, "Messages"):
            return
        lst = next((a for a in reversed(ancestors) if isinstance(a, P.ListNode)), None)
        if lst is None or not lst.nodes:
            return
        if isinstance(lst.nodes[0], P.TextNode):
            tags[0] = lst.nodes[0].text.strip()
        if isinstance(lst.nodes[-1], P.TextNode):
            tags[1] = lst.nodes[-1].text.strip()

    _walk(root, [], visit)
    return tags[0], tags[1]


def _tool_calls_if(nodes: list):
    """The first ``{{ if }}`` testing ``.ToolCalls``, searched through ifs, ranges and withs."""
    for n in nodes:
        if isinstance(n, P.IfNode) and any(isinstance(a, P.FieldNode) and "ToolCalls" in a.ident
                                           for cmd in n.pipe.cmds for a in cmd.args):
            return n
        if isinstance(n, P.ListNode):
            lists = [n]
        elif isinstance(n, P.BranchNode):
            lists = [n.list, n.else_list]
        else:
            continue
        for lst in lists:
            if lst is not None and (found := _tool_calls_if(lst.nodes)):
                return found
    return None


def _first_text(nodes: list) -> str | None:
    """The first non-blank text in nodes; an action, or a branch without text, ends the search
    (text written after a value is not a prefix the model writes first)."""
    for n in nodes:
        if isinstance(n, P.TextNode):
            if n.text.strip():
                return n.text
        elif isinstance(n, P.ListNode):
            if (text := _first_text(n.nodes)) is not None:
                return text
        elif isinstance(n, P.BranchNode):
            for lst in (n.list, n.else_list):
                if lst is not None and (text := _first_text(lst.nodes)) is not None:
                    return text
            return None
        elif isinstance(n, P.ActionNode):
            return None
    return None


def _tool_prefix(root: P.ListNode) -> str:
    """Ollama's parseTag: the text the template writes first for tool calls, up to any JSON."""
    node = _tool_calls_if(root.nodes)
    text = _first_text(node.list.nodes) if node is not None else None
    if text is None:
        return "{"
    tag = text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or "{"


@functools.lru_cache(maxsize=128)
def output_tags(template: str | None) -> OutputTags:
    """Thinking tags and the tool-call prefix a template implies (cached per template text)."""
    if not template:
        return OutputTags()
    try:
        root = GoTemplate(template, funcs=OLLAMA_FUNCS).root
    except TemplateError:
        return OutputTags()
    think_open, think_close = _think_tags(root)
    return OutputTags(think_open, think_close, _tool_prefix(root))


def _overlap(text: str, tag: str) -> int:
    """Length of the longest end of text that is a start of tag: text that may become the tag."""
    for n in range(min(len(text), len(tag)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


# ----------------------------------------------------------------------------- thinking
class _ThinkSplitter:
    """Ollama's thinking state machine: a think block at the start of the answer becomes thinking;
    whitespace right after either tag is dropped; anything before the opening tag means no thinking."""

    LOOKING, OPENED, THINKING, CLOSED, DONE = range(5)

    def __init__(self, open_tag: str, close_tag: str):
        self.open, self.close = open_tag, close_tag
        self.state = self.LOOKING
        self.acc = ""

    def feed(self, text: str) -> tuple[str, str]:
        self.acc += text
        thinking, content = [], []
        while True:
            t, c, again = self._step()
            thinking.append(t)
            content.append(c)
            if not again:
                return "".join(thinking), "".join(content)

    def _step(self) -> tuple[str, str, bool]:
        acc = self.acc
        if self.state == self.LOOKING:
            trimmed = acc.lstrip()
            if trimmed.startswith(self.open):
                self.acc = trimmed[len(self.open):].lstrip()
                self.state = self.THINKING if self.acc else self.OPENED
                return "", "", True
            if self.open.startswith(trimmed):  # blank, or a part of the tag: wait
                return "", "", False
            self.state, self.acc = self.DONE, ""
            return "", acc, False
        if self.state == self.OPENED:
            self.acc = acc.lstrip()
            if not self.acc:
                return "", "", False
            self.state = self.THINKING
            return "", "", True
        if self.state == self.THINKING:
            if self.close in acc:
                thinking, rest = acc.split(self.close, 1)
                rest = rest.lstrip()
                self.state, self.acc = (self.DONE if rest else self.CLOSED), ""
                return thinking, rest, False
            keep = _overlap(acc, self.close)  # may be the closing tag: hold it back
            self.acc = acc[len(acc) - keep:] if keep else ""
            return acc[:len(acc) - keep], "", False
        if self.state == self.CLOSED:
            rest, self.acc = acc.lstrip(), ""
            if rest:
                self.state = self.DONE
            return "", rest, False
        self.acc = ""
        return "", acc, False

    def finish(self) -> tuple[str, str]:
        """Held text at the end: a part of a closing tag was thinking, anything else content.
        (Ollama drops it; showing what the model wrote is kinder.)"""
        held, self.acc = self.acc, ""
        if self.state == self.THINKING:
            return held, ""
        if self.state == self.LOOKING:
            return "", held
        return "", ""


# ----------------------------------------------------------------------------- tool calls
_NOT_A_CALL = object()


def _as_arguments(value):
    """Arguments are an object, or a string holding one (some models write them so)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _find_call(obj: dict, names: list[str]):
    """(name, arguments) of the first call-shaped object in obj, depth first, or None.
    Call-shaped: ``{"name": ..., "arguments"|"parameters": {...}}`` or ``{"<tool name>": {...}}``."""
    if "name" in obj:
        name = obj["name"] if isinstance(obj["name"], str) else None
        for key in ("arguments", "parameters"):
            if (args := _as_arguments(obj.get(key))) is not None:
                return name, args
        # A call without arguments is {} (Ollama leaves it unparsed: a known TODO there).
        return name, ({} if "arguments" not in obj and "parameters" not in obj else _NOT_A_CALL)
    for name in names:
        if name in obj and (args := _as_arguments(obj[name])) is not None:
            return name, args
    for value in obj.values():
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, dict) and (found := _find_call(child, names)) is not None:
                return found
    return None


def _outside_strings(text: str):
    """(index, character) for each character of text outside JSON strings (quotes and escapes followed)."""
    in_string, escaped = False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_string = not in_string
        elif not in_string:
            yield i, ch


def _first_object(text: str) -> tuple[dict, int] | None:
    """The first complete, valid JSON object in text and where it ends; braces inside strings do not count."""
    depth, start = 0, -1
    for i, ch in _outside_strings(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                try:
                    obj = json.loads(text[start:i + 1])
                except ValueError:
                    continue  # not JSON after all: look further
                return obj, i + 1
    return None


def _closes(text: str, opener: str) -> bool:
    """Whether text, starting with opener ({ or [), closes it again (strings followed)."""
    closer = "}" if opener == "{" else "]"
    depth = 0
    for _, ch in _outside_strings(text):
        if ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return True
    return False


def _named_in(text: str, names: list[str]) -> str | None:
    """The tool name written first in text (the longest one where names start alike)."""
    best, best_at = None, -1
    for name in names:
        at = text.find(name)
        if at != -1 and (best is None or at < best_at or (at == best_at and len(name) > len(best))):
            best, best_at = name, at
    return best


def _call_id() -> str:
    # Ollama's shape: call_ and 8 of [a-z0-9]; OpenAI clients need one to answer a call.
    return "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))


class _ToolCallParser:
    LOOKING, CALLING, DONE = range(3)

    def __init__(self, prefix: str, tools: list):
        self.prefix = prefix
        self.names = [n for t in tools if isinstance(t, dict)
                      if isinstance(n := (t.get("function") or {}).get("name"), str) and n]
        # Bare JSON calls (no prefix in the template): only an answer that opens with { or [ may be one.
        self.bare = prefix in ("{", "[")
        self.state = self.LOOKING
        self.buf = ""
        self.count = 0

    def feed(self, text: str, final: bool = False) -> tuple[list[dict], str]:
        if self.state == self.DONE:
            return [], text
        self.buf += text
        content = ""
        if self.state == self.LOOKING:
            at = self.buf.find(self.prefix)
            cut = at if at != -1 else len(self.buf) - _overlap(self.buf, self.prefix)
            if final and at == -1:
                cut = len(self.buf)
            content, self.buf = self.buf[:cut], self.buf[cut:]
            if self.bare and content.strip():
                self.state = self.DONE
                content, self.buf = content + self.buf, ""
                return [], content
            if at == -1:
                return [], content
            self.state = self.CALLING
        calls = []
        if not final and "}" not in text and "]" not in text:
            return calls, content  # nothing can have closed: spare the rescan of a long call
        while (call := self._next_call()) is not None:
            calls.append(call)
        if self.count == 0 and ((self.bare and _closes(self.buf, self.prefix)) or final):
            # The JSON closed (or the answer ended) without naming a tool: it was text after all.
            self.state = self.DONE
            content, self.buf = content + self.buf, ""
        return calls, content

    def _next_call(self) -> dict | None:
        found = _first_object(self.buf)
        if found is None:
            return None
        obj, end = found
        call = _find_call(obj, self.names)
        if call is None:  # arguments alone: the name is written before them (DeepSeek's format)
            name, args = _named_in(self.buf[:end], self.names), obj
        else:
            name, args = call
        if name not in self.names or args is _NOT_A_CALL:
            return None
        self.buf = self.buf[end:]
        index, self.count = self.count, self.count + 1
        return {"id": _call_id(), "function": {"index": index, "name": name, "arguments": args}}


# ----------------------------------------------------------------------------- the whole answer
class ChatOutputParser:
    """Splits one answer's streamed text: `feed` each piece, then `finish` once at the end.

    ``template``: the model's Go TEMPLATE (None: defaults, bare JSON tool calls); ``tools``: the
    request's tools (tool calls are parsed only when there are some); ``think``: the request's
    think value, after the server's defaulting; ``prompt``: the rendered prompt, to notice a think
    block the template already opened."""

    def __init__(self, template: str | None, *, tools: list | None = None, think=None, prompt: str = ""):
        tags = output_tags(template)
        self._think = None
        if think_enabled(think):
            open_tag, close_tag = (tags.think_open, tags.think_close) if tags.think_open and tags.think_close \
                else DEFAULT_THINK_TAGS
            self._think = _ThinkSplitter(open_tag, close_tag)
            if prompt.strip().endswith(open_tag):
                self._think.feed(open_tag)
        self._tools = _ToolCallParser(tags.tool_prefix, tools) if tools else None

    @property
    def passthrough(self) -> bool:
        """No thinking and no tool calls to split out: every piece is content, as it comes (and finish()
        gives nothing), so a caller may skip feed() per piece."""
        return self._think is None and self._tools is None

    def feed(self, text: str) -> Delta:
        thinking, content = self._think.feed(text) if self._think else ("", text)
        return self._split_calls(thinking, content, final=False)

    def finish(self) -> Delta:
        thinking, content = self._think.finish() if self._think else ("", "")
        return self._split_calls(thinking, content, final=True)

    def _split_calls(self, thinking: str, content: str, final: bool) -> Delta:
        if self._tools is None:
            return Delta(content, thinking)
        calls, content = self._tools.feed(content, final)
        return Delta(content, thinking, calls)
