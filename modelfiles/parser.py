"""Modelfile parsing and writing, with Ollama's rules.

One instruction per line, names case-insensitive, whole-line `#` comments. A value runs to the end of
its line and is trimmed; a value that starts with `"` or `\"\"\"` runs on, over line breaks, until a line
ends with the same quote, and the text between the quotes is kept exactly (no escapes, as in Ollama).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .options import DEPRECATED_OPTIONS, OptionError, format_parameter, parse_parameter

__all__ = [
    "COMMANDS",
    "MESSAGE_ROLES",
    "Modelfile",
    "ModelfileError",
    "format_modelfile",
    "parse_modelfile",
]

# Instructions Ollama's parser accepts (DRAFT, RENDERER and PARSER are newer, undocumented ones).
COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
MESSAGE_ROLES = ("system", "user", "assistant")

# Instructions whose value may be empty (Ollama's own `show --modelfile` writes `SYSTEM ` or
# `MESSAGE assistant ` for empty strings).
_MAY_BE_EMPTY = frozenset({"template", "system", "license", "message"})

# Go's unicode.IsSpace, which strings.TrimSpace uses.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_BLANK = " \t"  # what separates an instruction from its arguments
_LINE_BREAKS = "\r\n"

_ERR_COMMAND = "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS[:-1]) + f', or "{COMMANDS[-1]}"'
_ERR_ROLE = 'message role must be one of "system", "user", or "assistant"'

# golang.org/x/mod/semver.IsValid, after Ollama prefixes a missing "v": vMAJOR[.MINOR[.PATCH[-pre][+build]]]
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER_RE = re.compile(
    rf"v{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?\Z"
)


class ModelfileError(ValueError):
    """A Modelfile that cannot be parsed (or a Modelfile object that cannot be written)."""

    def __init__(self, message: str, line: int | None = None):
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass
class Modelfile:
    from_: str | None = None
    parameters: dict[str, object] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    requires: str | None = None
    # Beyond the brief, as Ollama accepts them:
    extra_from: list[str] = field(default_factory=list)  # FROM lines after the first (e.g. a projector)
    draft: str | None = None  # DRAFT: draft model for speculative decoding
    renderer: str | None = None  # RENDERER: name of a built-in prompt renderer
    parser: str | None = None  # PARSER: name of a built-in output parser
    # Notes for the user (deprecated parameters skipped); not part of the Modelfile's value.
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)


# --------------------------------------------------------------------------------------------- reading


_BREAK_RE = re.compile(r"[\r\n]")


def _line_end(text: str, pos: int) -> int:
    """Index of the first line break at or after pos (len(text) if none)."""
    m = _BREAK_RE.search(text, pos)
    return m.start() if m else len(text)


def _skip_break(text: str, pos: int) -> int:
    """pos is at a line break (or the end): skip it, taking CR LF as one break."""
    if pos < len(text) and text[pos] == "\r":
        pos += 1
        if pos < len(text) and text[pos] == "\n":
            pos += 1
    elif pos < len(text):
        pos += 1
    return pos


def _read_value(text: str, pos: int, line: int) -> tuple[str | None, bool, int, int]:
    """Read a value starting at pos (within a line).

    Returns (value, quoted, pos after the value's last line break, line number there). value is None
    when a quote is never closed. As in Ollama, the text read so far is checked at each line break: once
    it is, trimmed, either unquoted or closed by the quote it opened with, the value ends; otherwise the
    line break becomes part of the value.
    """
    n = len(text)
    end = _line_end(text, pos)
    first = text[pos:end]
    trimmed = first.strip(_GO_SPACE)
    if trimmed.startswith('"""'):
        quote = '"""'
    elif trimmed.startswith('"'):
        quote = '"'
    else:
        return trimmed, False, _skip_break(text, end), line + (end < n)
    start = pos + len(first) - len(first.lstrip(_GO_SPACE))
    size = len(quote)
    while True:
        e = end
        while e > start and text[e - 1] in _GO_SPACE:
            e -= 1
        if e - start >= 2 * size and text.endswith(quote, start, e):
            return text[start + size : e - size], True, _skip_break(text, end), line + (end < n)
        if end >= n:
            return None, True, n, line
        pos = _skip_break(text, end)
        line += 1
        end = _line_end(text, pos)


def _read_word(text: str, pos: int) -> tuple[str, int]:
    """A run of non-blank, non-line-break characters at pos, and the position after it."""
    end = pos
    n = len(text)
    while end < n and text[end] not in _BLANK and text[end] not in _LINE_BREAKS:
        end += 1
    return text[pos:end], end


def _skip_blank(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _BLANK:
        pos += 1
    return pos


def _at_line_end(text: str, pos: int) -> bool:
    return pos >= len(text) or text[pos] in _LINE_BREAKS


def parse_modelfile(text: str | bytes) -> Modelfile:
    """Parse a Modelfile. Bytes are decoded as Ollama does: UTF-8, or UTF-16 with a byte-order mark."""
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text))
    if text.startswith("\ufeff"):
        text = text[1:]

    mf = Modelfile()
    seen_from = False
    seen_any = False
    pos, line, n = 0, 1, len(text)
    while pos < n:
        ch = text[pos]
        if ch in _BLANK:
            pos += 1
            continue
        if ch in _LINE_BREAKS:
            pos = _skip_break(text, pos)
            line += 1
            continue
        if ch == "#":
            end = _line_end(text, pos)
            pos = _skip_break(text, end)
            line += end < n
            continue

        start_line = line
        word, pos = _read_word(text, pos)
        cmd = word.lower()
        if cmd not in COMMANDS:
            raise ModelfileError(f'unknown instruction "{word}": {_ERR_COMMAND}', start_line)
        seen_any = True
        name = word.upper()
        pos = _skip_blank(text, pos)

        arg = None  # the parameter name or message role
        if cmd in ("parameter", "message"):
            arg, pos = _read_word(text, pos)
            if not arg:
                what = "a name and a value" if cmd == "parameter" else "a role and a message"
                raise ModelfileError(f"{name} needs {what}", start_line)
            if cmd == "message" and arg not in MESSAGE_ROLES:
                raise ModelfileError(f'invalid message role "{arg}": {_ERR_ROLE}', start_line)
            pos = _skip_blank(text, pos)

        if _at_line_end(text, pos) and cmd not in _MAY_BE_EMPTY:
            if cmd == "parameter":
                raise ModelfileError(f"PARAMETER {arg} needs a value", start_line)
            raise ModelfileError(f"{name} needs a value", start_line)

        quote_char = '"""' if text.startswith('"""', pos) else '"'
        value, _, pos, line = _read_value(text, pos, line)
        if value is None:
            raise ModelfileError(
                f"unexpected EOF: the {quote_char} quote opened here for {name} is never closed", start_line
            )

        if cmd == "from":
            if not value:
                raise ModelfileError("FROM needs a value", start_line)
            if seen_from:
                mf.extra_from.append(value)
            else:
                mf.from_ = value
                seen_from = True
        elif cmd == "parameter":
            if arg in DEPRECATED_OPTIONS:
                mf.warnings.append(f"line {start_line}: parameter {arg} is deprecated and ignored")
                continue
            try:
                typed = parse_parameter(arg, value)
            except OptionError as e:
                raise ModelfileError(str(e), start_line) from None
            if isinstance(typed, list):
                mf.parameters.setdefault(arg, [])
                mf.parameters[arg].extend(typed)
            else:
                mf.parameters[arg] = typed
        elif cmd == "message":
            mf.messages.append({"role": arg, "content": value})
        elif cmd == "template":
            mf.template = value
        elif cmd == "system":
            mf.system = value
        elif cmd == "license":
            mf.license.append(value)
        elif cmd in ("adapter", "draft", "renderer", "parser"):
            if not value:
                raise ModelfileError(f"{name} needs a value", start_line)
            if cmd == "adapter":
                mf.adapters.append(value)
            else:
                setattr(mf, cmd, value)
        elif cmd == "requires":
            version = value if value.startswith("v") else "v" + value
            if not _SEMVER_RE.match(version):
                raise ModelfileError("requires must be a valid semver (e.g. 0.14.0)", start_line)
            mf.requires = version[1:]

    if not seen_from:
        raise ModelfileError("no FROM line" if seen_any else "no FROM line (the Modelfile is empty)")
    return mf


def _decode(data: bytes) -> str:
    if data.startswith(b"\xff\xfe") or data.startswith(b"\xfe\xff"):
        return data.decode("utf-16")
    return data.decode("utf-8-sig", errors="replace")


# --------------------------------------------------------------------------------------------- writing


def _quote(value: str, what: str) -> str:
    """Write a value so that the parser reads exactly `value` back."""
    if (
        value
        and not any(c in _LINE_BREAKS for c in value)
        and value == value.strip(_GO_SPACE)
        and not value.startswith('"')
    ):
        return value
    # Triple quotes for a value over several lines or holding a quote, plain ones otherwise (leading or
    # trailing blanks, empty); then check that the form reads back (a line inside the value that ends
    # with the closing quote would cut it short) and fall back to the other.
    multi = '"' in value or any(c in _LINE_BREAKS for c in value)
    for q in ('"""', '"') if multi else ('"', '"""'):
        written = q + value + q
        got, _, end, _ = _read_value(written, 0, 1)
        if got == value and end == len(written):
            return written
    raise ModelfileError(f'{what} cannot be written in a Modelfile: a line inside it ends with """')


def format_modelfile(mf: Modelfile, *, header: str | None = None) -> str:
    """Write mf as Modelfile text that parse_modelfile reads back into an equal Modelfile.

    header, if given, is written first as `#` comment lines, then a blank line (as `show --modelfile`).
    """
    if not mf.from_:
        raise ModelfileError("no FROM line")
    out: list[str] = []
    if header is not None:
        for h in header.splitlines() or [""]:
            out.append(h if h.startswith("#") else ("# " + h if h else "#"))
        out.append("")

    out.append("FROM " + _quote(mf.from_, "FROM"))
    for v in mf.extra_from:
        out.append("FROM " + _quote(v, "FROM"))
    for v in mf.adapters:
        out.append("ADAPTER " + _quote(v, "ADAPTER"))
    if mf.draft is not None:
        out.append("DRAFT " + _quote(mf.draft, "DRAFT"))
    if mf.template is not None:
        out.append("TEMPLATE " + _quote(mf.template, "TEMPLATE"))
    if mf.system is not None:
        out.append("SYSTEM " + _quote(mf.system, "SYSTEM"))
    if mf.renderer is not None:
        out.append("RENDERER " + _quote(mf.renderer, "RENDERER"))
    if mf.parser is not None:
        out.append("PARSER " + _quote(mf.parser, "PARSER"))
    for name, value in mf.parameters.items():
        if not name or any(c in _BLANK or c in _LINE_BREAKS for c in name):
            raise ModelfileError(f"parameter name {name!r} cannot be written in a Modelfile")
        for text in format_parameter(name, value):
            out.append(f"PARAMETER {name} " + _quote(text, f"PARAMETER {name}"))
    for v in mf.license:
        out.append("LICENSE " + _quote(v, "LICENSE"))
    for m in mf.messages:
        role = m.get("role", "")
        if not role or any(c in _BLANK or c in _LINE_BREAKS for c in role):
            raise ModelfileError(f"message role {role!r} cannot be written in a Modelfile")
        out.append(f"MESSAGE {role} " + _quote(m.get("content") or "", "MESSAGE"))
    if mf.requires is not None:
        out.append("REQUIRES " + _quote(mf.requires, "REQUIRES"))
    return "\n".join(out) + "\n"
