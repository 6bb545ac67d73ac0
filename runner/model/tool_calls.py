"""Tool calls in a streamed answer (Ollama's tools/tools.go): after the template's call prefix, each
complete JSON object naming one of the request's tools becomes a call, sent as soon as it is complete."""

from __future__ import annotations

import json
import random
import string

from runner.model.template_tags import partial_tag_len

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


class ToolCallParser:
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
            cut = at if at != -1 else len(self.buf) - partial_tag_len(self.buf, self.prefix)
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
