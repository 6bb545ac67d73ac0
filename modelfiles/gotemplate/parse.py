"""Parse trees for Go text/template, and the parser that builds them.

The grammar follows Go's text/template documentation: a template is text and actions; an action
is a control structure (if/range/with/define/block/template/break/continue/else/end) or a
pipeline ``[decl :=|=] command | command ...`` whose commands are operands separated by spaces.
Error messages use Go's wording and name the line (``template: NAME:LINE: ...``).
"""

from __future__ import annotations

import math
import re

from . import lex as L
from .errors import TemplateError
from .nodes import (ActionNode, BoolNode, BreakNode, ChainNode, CommandNode, ContinueNode, DotNode,
                    ElseNode, EndNode, FieldNode, IdentifierNode, IfNode, ListNode, NilNode, Node, NumberNode,
                    PipeNode, RangeNode, StringNode, TemplateNode, TextNode, Tree, VariableNode, WithNode,
                    is_empty_tree)


# ----------------------------------------------------------------------------- Go literals
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def unquote_char(s: str, i: int, quote: str) -> tuple[str, int]:
    """Decode one (possibly escaped) character of a Go literal at s[i]; returns (char, next)."""
    c = s[i]
    if c == quote and quote in "'\"":
        raise ValueError("invalid syntax")
    if c != "\\":
        return c, i + 1
    if i + 1 >= len(s):
        raise ValueError("invalid syntax")
    e = s[i + 1]
    if e in _ESCAPES:
        return _ESCAPES[e], i + 2
    if e in "'\"":
        if e != quote:
            raise ValueError("invalid syntax")
        return e, i + 2
    if e in "xuU":
        n = {"x": 2, "u": 4, "U": 8}[e]
        h = s[i + 2:i + 2 + n]
        if len(h) != n or not all(ch in "0123456789abcdefABCDEF" for ch in h):
            raise ValueError("invalid syntax")
        v = int(h, 16)
        if e == "x":
            # a single byte; only valid as a whole UTF-8 sequence in strings
            return chr(v) if v < 0x80 else bytes([v]).decode("latin-1"), i + 2 + n
        if v > 0x10FFFF or 0xD800 <= v < 0xE000:
            raise ValueError("invalid syntax")
        return chr(v), i + 2 + n
    if e in "01234567":
        o = s[i + 1:i + 4]
        if len(o) != 3 or not all(ch in "01234567" for ch in o) or int(o, 8) > 255:
            raise ValueError("invalid syntax")
        v = int(o, 8)
        return chr(v) if v < 0x80 else bytes([v]).decode("latin-1"), i + 4
    raise ValueError("invalid syntax")


def unquote(s: str) -> str:
    """Go's strconv.Unquote for "..." and `...` literals."""
    if len(s) < 2:
        raise ValueError("invalid syntax")
    q = s[0]
    if q != s[-1]:
        raise ValueError("invalid syntax")
    body = s[1:-1]
    if q == "`":
        if "`" in body:
            raise ValueError("invalid syntax")
        return body.replace("\r", "")
    if q != '"':
        raise ValueError("invalid syntax")
    out, raw, i = [], [], 0
    # \x and octal escapes produce bytes: collect them as bytes and decode as UTF-8 at the end
    while i < len(body):
        if body[i] == "\n":
            raise ValueError("invalid syntax")
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in "x01234567":
            ch, i = unquote_char(body, i, '"')
            raw.append(ord(ch) if ord(ch) < 256 else 0)
            continue
        if raw:
            out.append(bytes(raw).decode("utf-8", "replace"))
            raw = []
        ch, i = unquote_char(body, i, '"')
        out.append(ch)
    if raw:
        out.append(bytes(raw).decode("utf-8", "replace"))
    return "".join(out)


_OCTAL_LEGACY = re.compile(r"^[+-]?0[0-7_]+$")


def _parse_go_int(text: str) -> int | None:
    """strconv.ParseInt/ParseUint with base 0 (sign allowed), without range checks."""
    t = text
    if _OCTAL_LEGACY.match(t):
        sign = -1 if t[0] == "-" else 1
        digits = t.lstrip("+-")[1:]
        if digits.startswith("_") or digits.endswith("_") or "__" in digits:
            return None
        return sign * int(digits.replace("_", ""), 8)
    try:
        if not re.match(r"^[+-]?[0-9]", t):
            return None
        body = t.lstrip("+-")
        if len(body) > 1 and body[0] == "0" and body[1] not in "xXoObB":
            return None
        return int(t, 0)
    except ValueError:
        return None


def _parse_go_float(text: str) -> float | None:
    t = text
    try:
        body = t.lstrip("+-")
        if body[:2] in ("0x", "0X"):
            if "p" not in body.lower():
                return None
            v = float.fromhex(body.replace("_", ""))
            return -v if t.startswith("-") else v
        if not re.match(r"^[+-]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d[\d_]*)?$", t):
            return None
        return float(t)
    except (ValueError, OverflowError):
        return None


def new_number(pos: int, text: str, typ: str) -> NumberNode:
    n = NumberNode(pos, text)
    if typ == L.CHAR_CONSTANT:
        ch, nxt = unquote_char(text, 1, "'")
        if text[nxt:] != "'":
            raise ValueError(f"malformed character constant: {text}")
        v = ord(ch)
        n.int64 = n.uint64 = v
        n.float64 = float(v)
        n.is_int = n.is_uint = n.is_float = True
        return n
    if typ == L.COMPLEX:
        try:
            c = complex(text.replace("i", "j").replace("_", ""))
        except ValueError:
            raise ValueError(f"expected integer; found {text}") from None
        n.is_complex, n.complex128 = True, c
        _simplify_complex(n)
        return n
    if text.endswith("i"):
        f = _parse_go_float(text[:-1]) if _parse_go_int(text[:-1]) is None else float(_parse_go_int(text[:-1]))
        if f is not None:
            n.is_complex, n.complex128 = True, complex(0, f)
            _simplify_complex(n)
            return n
    i = _parse_go_int(text)
    if i is not None:
        if 0 <= i < 1 << 64 and text[0] not in "+-":
            n.is_uint, n.uint64 = True, i
        if -(1 << 63) <= i < 1 << 63:
            n.is_int, n.int64 = True, i
            if i == 0:
                n.is_uint, n.uint64 = True, 0
    if n.is_int:
        n.is_float, n.float64 = True, float(n.int64)
    elif n.is_uint:
        n.is_float, n.float64 = True, float(n.uint64)
    else:
        f = _parse_go_float(text)
        if f is not None:
            if not any(c in text for c in ".eEpP"):
                raise ValueError(f"integer overflow: {_quote(text)}")
            n.is_float, n.float64 = True, f
            if math.isfinite(f) and f == int(f):
                iv = int(f)
                if -(1 << 63) <= iv < 1 << 63:
                    n.is_int, n.int64 = True, iv
                if 0 <= iv < 1 << 64:
                    n.is_uint, n.uint64 = True, iv
    if not (n.is_int or n.is_uint or n.is_float):
        raise ValueError(f"illegal number syntax: {_quote(text)}")
    return n


def _simplify_complex(n: NumberNode) -> None:
    n.is_float = n.complex128.imag == 0
    if n.is_float:
        f = n.float64 = n.complex128.real
        if math.isfinite(f) and f == int(f):
            iv = int(f)
            n.is_int, n.int64 = -(1 << 63) <= iv < 1 << 63, iv
            n.is_uint, n.uint64 = 0 <= iv < 1 << 64, iv


def _quote(s: str) -> str:
    from .gofmt import go_quote
    return go_quote(s)


# ----------------------------------------------------------------------------- parser
class _ParseError(Exception):
    pass


class Parser:
    """Parses one template text into a set of named trees (the top one plus define/block)."""

    def __init__(self, name: str, text: str, funcs: set[str] | frozenset[str]):
        self.name = name
        self.text = text
        self.funcs = funcs
        self.lex = L.Lexer(text, break_ok="break" not in funcs, continue_ok="continue" not in funcs)
        self.token: list[L.Item] = [None, None, None]  # type: ignore[list-item]
        self.peek_count = 0
        self.vars: list[str] = ["$"]
        self.action_line = 0
        self.range_depth = 0
        self.stack_depth = 0
        self.tree: Tree = Tree(name, text, name)
        self.tree_set: dict[str, Tree] = {}

    # -- token stream ---------------------------------------------------------------------
    def next(self) -> L.Item:
        if self.peek_count > 0:
            self.peek_count -= 1
        else:
            self.token[0] = self.lex.next_item()
        return self.token[self.peek_count]

    def backup(self) -> None:
        self.peek_count += 1

    def backup2(self, t1: L.Item) -> None:
        self.token[1] = t1
        self.peek_count = 2

    def backup3(self, t2: L.Item, t1: L.Item) -> None:
        self.token[1] = t1
        self.token[2] = t2
        self.peek_count = 3

    def peek(self) -> L.Item:
        if self.peek_count > 0:
            return self.token[self.peek_count - 1]
        self.peek_count = 1
        self.token[0] = self.lex.next_item()
        return self.token[0]

    def next_non_space(self) -> L.Item:
        while True:
            tok = self.next()
            if tok.typ != L.SPACE_ITEM:
                return tok

    def peek_non_space(self) -> L.Item:
        tok = self.next_non_space()
        self.backup()
        return tok

    # -- errors -------------------------------------------------------------------------
    def errorf(self, msg: str):
        line = self.token[0].line if self.token[0] is not None else 1
        raise _ParseError(f"template: {self.name}:{line}: {msg}")

    def expect(self, typ: str, context: str) -> L.Item:
        tok = self.next_non_space()
        if tok.typ != typ:
            self.unexpected(tok, context)
        return tok

    def expect_one_of(self, t1: str, t2: str, context: str) -> L.Item:
        tok = self.next_non_space()
        if tok.typ not in (t1, t2):
            self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: L.Item, context: str):
        if tok.typ == L.ERROR:
            extra = ""
            if self.action_line != 0 and self.action_line != tok.line:
                extra = f" in action started at {self.name}:{self.action_line}"
                if tok.val.endswith(" action"):
                    extra = extra[len(" in action"):]
            self.errorf(f"{tok}{extra}")
        self.errorf(f"unexpected {tok} in {context}")

    # -- entry -------------------------------------------------------------------------------
    def parse(self) -> dict[str, Tree]:
        try:
            self._parse_top()
        except _ParseError as e:
            raise TemplateError(str(e)) from None
        return self.tree_set

    def _add(self, tree: Tree) -> None:
        old = self.tree_set.get(tree.name)
        if old is None or is_empty_tree(old.root):
            self.tree_set[tree.name] = tree
            return
        if not is_empty_tree(tree.root):
            from .gofmt import go_quote
            self.errorf(f"template: multiple definition of template {go_quote(tree.name)}")

    def _with_tree(self, tree: Tree, fn):
        saved = self.tree, self.vars, self.range_depth, self.action_line
        self.tree, self.vars, self.range_depth, self.action_line = tree, ["$"], 0, 0
        try:
            return fn()
        finally:
            self.tree, self.vars, self.range_depth, self.action_line = saved

    def _parse_top(self) -> None:
        t = self.tree
        t.root = ListNode(self.peek().pos)
        while self.peek().typ != L.EOF:
            if self.peek().typ == L.LEFT_DELIM:
                delim = self.next()
                if self.next_non_space().typ == L.K_DEFINE:
                    new = Tree("definition", self.text, self.name)
                    self._with_tree(new, self._parse_definition)
                    continue
                self.backup2(delim)
            n = self.text_or_action()
            if isinstance(n, (EndNode, ElseNode)):
                self.errorf(f"unexpected {n}")
            t.root.nodes.append(n)
        self._add(t)

    def _parse_definition(self) -> None:
        context = "define clause"
        tok = self.expect_one_of(L.STRING, L.RAW_STRING, context)
        try:
            self.tree.name = unquote(tok.val)
        except ValueError as e:
            self.errorf(str(e))
        self.expect(L.RIGHT_DELIM, context)
        root, end = self.item_list()
        self.tree.root = root
        if not isinstance(end, EndNode):
            self.errorf(f"unexpected {end} in {context}")
        self._add(self.tree)

    def item_list(self) -> tuple[ListNode, Node]:
        lst = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != L.EOF:
            n = self.text_or_action()
            if isinstance(n, (EndNode, ElseNode)):
                return lst, n
            lst.nodes.append(n)
        self.errorf("unexpected EOF")

    def text_or_action(self) -> Node:
        tok = self.next_non_space()
        if tok.typ == L.TEXT:
            return self._mk(TextNode(tok.pos, tok.val))
        if tok.typ == L.LEFT_DELIM:
            self.action_line = tok.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        self.unexpected(tok, "input")

    def _mk(self, node: Node) -> Node:
        node.tree = self.tree
        return node

    def action(self) -> Node:
        tok = self.next_non_space()
        typ = tok.typ
        if typ == L.K_BLOCK:
            return self.block_control()
        if typ == L.K_BREAK:
            return self._loop_control(tok, BreakNode, "{{break}}")
        if typ == L.K_CONTINUE:
            return self._loop_control(tok, ContinueNode, "{{continue}}")
        if typ == L.K_ELSE:
            return self.else_control()
        if typ == L.K_END:
            return self._mk(EndNode(self.expect(L.RIGHT_DELIM, "end").pos))
        if typ == L.K_IF:
            return self._mk(IfNode(*self.parse_control("if")))
        if typ == L.K_RANGE:
            return self._mk(RangeNode(*self.parse_control("range")))
        if typ == L.K_TEMPLATE:
            return self.template_control()
        if typ == L.K_WITH:
            return self._mk(WithNode(*self.parse_control("with")))
        self.backup()
        tok = self.peek()
        return self._mk(ActionNode(tok.pos, tok.line, self.pipeline("command", L.RIGHT_DELIM)))

    def _loop_control(self, kw: L.Item, cls, context: str) -> Node:
        tok = self.next_non_space()
        if tok.typ != L.RIGHT_DELIM:
            self.unexpected(tok, context)
        if self.range_depth == 0:
            self.errorf(f"{context} outside {{{{range}}}}")
        return self._mk(cls(kw.pos, kw.line))

    def pipeline(self, context: str, end: str) -> PipeNode:
        tok = self.peek_non_space()
        pipe = self._mk(PipeNode(tok.pos, tok.line))
        while True:  # declarations
            v = self.peek_non_space()
            if v.typ != L.VARIABLE:
                break
            self.next()
            after = self.peek()
            nxt = self.peek_non_space()
            if nxt.typ in (L.ASSIGN, L.DECLARE):
                pipe.is_assign = nxt.typ == L.ASSIGN
                self.next_non_space()
                pipe.decl.append(self._mk(VariableNode(v.pos, v.val)))
                self.vars.append(v.val)
            elif nxt.typ == L.CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(self._mk(VariableNode(v.pos, v.val)))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (L.VARIABLE, L.RIGHT_DELIM, L.RIGHT_PAREN):
                        continue  # second variable of a range
                    self.errorf("range can only initialize variables")
                self.errorf(f"too many declarations in {context}")
            elif after.typ == L.SPACE_ITEM:
                self.backup3(v, after)
            else:
                self.backup2(v)
            break
        while True:
            tok = self.next_non_space()
            if tok.typ == end:
                self._check_pipeline(pipe, context)
                return pipe
            if tok.typ in (L.BOOL, L.CHAR_CONSTANT, L.COMPLEX, L.K_DOT, L.FIELD, L.IDENTIFIER,
                           L.NUMBER, L.K_NIL, L.RAW_STRING, L.STRING, L.VARIABLE, L.LEFT_PAREN):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.unexpected(tok, context)

    def _check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            self.errorf(f"missing value for {context}")
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                self.errorf(f"non executable command in pipeline stage {i + 2}")

    def parse_control(self, context: str):
        mark = len(self.vars)
        try:
            pipe = self.pipeline(context, L.RIGHT_DELIM)
            if context == "range":
                self.range_depth += 1
            lst, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list = None
            if isinstance(nxt, ElseNode):
                if context == "if" and self.peek().typ == L.K_IF:
                    self.next()
                    else_list = ListNode(nxt.pos)
                    else_list.nodes.append(self._mk(IfNode(*self.parse_control("if"))))
                elif context == "with" and self.peek().typ == L.K_WITH:
                    self.next()
                    else_list = ListNode(nxt.pos)
                    else_list.nodes.append(self._mk(WithNode(*self.parse_control("with"))))
                else:
                    else_list, nxt = self.item_list()
                    if not isinstance(nxt, EndNode):
                        self.errorf(f"expected end; found {nxt}")
            return pipe.pos, pipe.line, pipe, lst, else_list
        finally:
            del self.vars[mark:]

    def else_control(self) -> Node:
        peek = self.peek_non_space()
        if peek.typ in (L.K_IF, L.K_WITH):
            return self._mk(ElseNode(peek.pos, peek.line))
        tok = self.expect(L.RIGHT_DELIM, "else")
        return self._mk(ElseNode(tok.pos, tok.line))

    def _template_name(self, tok: L.Item, context: str) -> str:
        if tok.typ in (L.STRING, L.RAW_STRING):
            try:
                return unquote(tok.val)
            except ValueError as e:
                self.errorf(str(e))
        self.unexpected(tok, context)

    def block_control(self) -> Node:
        context = "block clause"
        tok = self.next_non_space()
        name = self._template_name(tok, context)
        pipe = self.pipeline(context, L.RIGHT_DELIM)
        block = Tree(name, self.text, self.name)

        def body():
            root, end = self.item_list()
            block.root = root
            if not isinstance(end, EndNode):
                self.errorf(f"unexpected {end} in {context}")
            self._add(block)
        self._with_tree(block, body)
        return self._mk(TemplateNode(tok.pos, tok.line, name, pipe))

    def template_control(self) -> Node:
        context = "template clause"
        tok = self.next_non_space()
        name = self._template_name(tok, context)
        pipe = None
        if self.next_non_space().typ != L.RIGHT_DELIM:
            self.backup()
            pipe = self.pipeline(context, L.RIGHT_DELIM)
        return self._mk(TemplateNode(tok.pos, tok.line, name, pipe))

    def command(self) -> CommandNode:
        cmd = self._mk(CommandNode(self.peek_non_space().pos))
        while True:
            self.peek_non_space()
            op = self.operand()
            if op is not None:
                cmd.args.append(op)
            tok = self.next()
            if tok.typ == L.SPACE_ITEM:
                continue
            if tok.typ in (L.RIGHT_DELIM, L.RIGHT_PAREN):
                self.backup()
            elif tok.typ == L.PIPE:
                pass
            else:
                self.unexpected(tok, "operand")
            break
        if not cmd.args:
            self.errorf("empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == L.FIELD:
            chain = self._mk(ChainNode(self.peek().pos, node))
            while self.peek().typ == L.FIELD:
                chain.add(self.next().val)
            if isinstance(node, FieldNode):
                node = self._mk(FieldNode(chain.pos, chain.string()))
            elif isinstance(node, VariableNode):
                node = self._mk(VariableNode(chain.pos, chain.string()))
            elif isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                self.errorf(f"unexpected . after term {_quote(node.string())}")
            else:
                node = chain
        return node

    def term(self) -> Node | None:
        tok = self.next_non_space()
        typ = tok.typ
        if typ == L.IDENTIFIER:
            if tok.val not in self.funcs:
                self.errorf(f"function {_quote(tok.val)} not defined")
            return self._mk(IdentifierNode(tok.pos, tok.val))
        if typ == L.K_DOT:
            return self._mk(DotNode(tok.pos))
        if typ == L.K_NIL:
            return self._mk(NilNode(tok.pos))
        if typ == L.VARIABLE:
            v = self._mk(VariableNode(tok.pos, tok.val))
            if v.ident[0] not in self.vars:
                self.errorf(f"undefined variable {_quote(v.ident[0])}")
            return v
        if typ == L.FIELD:
            return self._mk(FieldNode(tok.pos, tok.val))
        if typ == L.BOOL:
            return self._mk(BoolNode(tok.pos, tok.val == "true"))
        if typ in (L.CHAR_CONSTANT, L.COMPLEX, L.NUMBER):
            try:
                return self._mk(new_number(tok.pos, tok.val, typ))
            except ValueError as e:
                self.errorf(str(e))
        if typ == L.LEFT_PAREN:
            if self.stack_depth >= 10000:
                self.errorf("max expression depth exceeded")
            self.stack_depth += 1
            try:
                return self.pipeline("parenthesized pipeline", L.RIGHT_PAREN)
            finally:
                self.stack_depth -= 1
        if typ in (L.STRING, L.RAW_STRING):
            try:
                s = unquote(tok.val)
            except ValueError as e:
                self.errorf(str(e))
            return self._mk(StringNode(tok.pos, tok.val, s))
        self.backup()
        return None


def parse(text: str, funcs: set[str] | frozenset[str], name: str = "") -> dict[str, Tree]:
    """Parses text; returns the trees by name (the top-level one under `name`)."""
    return Parser(name, text, funcs).parse()
