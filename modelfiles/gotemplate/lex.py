"""Lexer for Go text/template syntax.

Written from the language definition in Go's text/template documentation: text is split into
plain text and actions delimited by "{{" and "}}"; "{{- " and " -}}" trim the white space
(ASCII space, tab, CR, LF) around the action; "{{/* ... */}}" is a comment.  Items carry the
character offset and the line they start on, so errors can name a line the way Go does.
"""

from __future__ import annotations

from dataclasses import dataclass

SPACE = " \t\r\n"
LEFT, RIGHT = "{{", "}}"
LCOMMENT, RCOMMENT = "/*", "*/"

# item types
ERROR = "error"
BOOL = "bool"
CHAR = "char"              # printable ASCII punctuation such as ','
CHAR_CONSTANT = "charconst"
COMPLEX = "complex"
ASSIGN = "="
DECLARE = ":="
EOF = "EOF"
FIELD = "field"
IDENTIFIER = "identifier"
LEFT_DELIM = "leftdelim"
LEFT_PAREN = "("
NUMBER = "number"
PIPE = "|"
RAW_STRING = "rawstring"
RIGHT_DELIM = "rightdelim"
RIGHT_PAREN = ")"
SPACE_ITEM = "space"
STRING = "string"
TEXT = "text"
VARIABLE = "variable"
# keywords
K_BLOCK, K_BREAK, K_CONTINUE, K_DOT, K_DEFINE, K_ELSE, K_END = (
    "block", "break", "continue", ".", "define", "else", "end")
K_IF, K_NIL, K_RANGE, K_TEMPLATE, K_WITH = "if", "nil", "range", "template", "with"
KEYWORDS = {K_BLOCK, K_BREAK, K_CONTINUE, K_DOT, K_DEFINE, K_ELSE, K_END, K_IF, K_NIL,
            K_RANGE, K_TEMPLATE, K_WITH}


@dataclass
class Item:
    typ: str
    pos: int     # character offset in the template text
    val: str
    line: int

    def __str__(self) -> str:
        from .gofmt import go_quote
        if self.typ == EOF:
            return "EOF"
        if self.typ == ERROR:
            return self.val
        if self.typ in KEYWORDS:
            return f"<{self.val}>"
        if len(self.val.encode()) > 10:
            return go_quote(self.val[:10]) + "..."
        return go_quote(self.val)


def is_space(c: str) -> bool:
    return c != "" and c in SPACE


def is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _has_left_trim(s: str, i: int) -> bool:
    return len(s) >= i + 2 and s[i] == "-" and s[i + 1] in SPACE


def _has_right_trim(s: str, i: int) -> bool:
    return len(s) >= i + 2 and s[i] in SPACE and s[i + 1] == "-"


class Lexer:
    """Produces items one at a time (next_item), as the parser asks for them."""

    def __init__(self, text: str, break_ok: bool = True, continue_ok: bool = True):
        self.input = text
        self.pos = 0
        self.start = 0
        self.line = 1
        self.start_line = 1
        self.inside = False
        self.paren_depth = 0
        self.break_ok = break_ok
        self.continue_ok = continue_ok
        self._item: Item | None = None

    # -- low level -----------------------------------------------------------------
    def next(self) -> str:
        if self.pos >= len(self.input):
            self.pos = len(self.input) + 1   # remember we hit EOF (backup is then a no-op)
            return ""
        c = self.input[self.pos]
        self.pos += 1
        if c == "\n":
            self.line += 1
        return c

    def backup(self) -> None:
        if self.pos > len(self.input):
            self.pos = len(self.input)
            return
        if self.pos > 0:
            self.pos -= 1
            if self.input[self.pos] == "\n":
                self.line -= 1

    def peek(self) -> str:
        return self.input[self.pos] if self.pos < len(self.input) else ""

    def _cur(self) -> int:
        return min(self.pos, len(self.input))

    def emit(self, typ: str) -> None:
        p = self._cur()
        self._item = Item(typ, self.start, self.input[self.start:p], self.start_line)
        self.start = p
        self.start_line = self.line

    def ignore(self) -> None:
        p = self._cur()
        self.line += self.input.count("\n", self.start, p)
        self.start = p
        self.start_line = self.line

    def errorf(self, msg: str) -> None:
        self._item = Item(ERROR, self.start, msg, self.start_line)
        self.input = ""
        self.start = self.pos = 0

    def accept(self, valid: str) -> bool:
        c = self.next()
        if c != "" and c in valid:
            return True
        self.backup()
        return False

    def accept_run(self, valid: str) -> None:
        while True:
            c = self.next()
            if c == "" or c not in valid:
                break
        self.backup()

    def at_right_delim(self) -> tuple[bool, bool]:
        s, p = self.input, self._cur()
        if _has_right_trim(s, p) and s.startswith(RIGHT, p + 2):
            return True, True
        if s.startswith(RIGHT, p):
            return True, False
        return False, False

    def at_terminator(self) -> bool:
        c = self.peek()
        if is_space(c):
            return True
        if c in ("", ".", ",", "|", ":", ")", "("):
            return True
        return self.input.startswith(RIGHT, self._cur())

    # -- driver ----------------------------------------------------------------------
    def next_item(self) -> Item:
        self._item = Item(EOF, self._cur(), "EOF", self.start_line)
        state = self.lex_inside if self.inside else self.lex_text
        while state is not None:
            state = state()
        return self._item

    # -- states --------------------------------------------------------------------------
    def lex_text(self):
        s = self.input
        x = s.find(LEFT, self.pos)
        if x >= 0:
            if x > self.pos:
                self.pos = x
                trim = 0
                if _has_left_trim(s, x + len(LEFT)):
                    seg = s[self.start:x]
                    trim = len(seg) - len(seg.rstrip(SPACE))
                self.pos -= trim
                self.line += s.count("\n", self.start, self.pos)
                item = Item(TEXT, self.start, s[self.start:self.pos], self.start_line)
                self.start = self.pos
                self.start_line = self.line
                self.pos += trim
                self.ignore()
                if item.val:
                    self._item = item
                    return None
            return self.lex_left_delim
        self.pos = len(s)
        if self.pos > self.start:
            self.line += s.count("\n", self.start, self.pos)
            self.emit(TEXT)
            return None
        self.emit(EOF)
        return None

    def lex_left_delim(self):
        s = self.input
        self.pos += len(LEFT)
        trim = _has_left_trim(s, self.pos)
        after = 2 if trim else 0
        if s.startswith(LCOMMENT, self.pos + after):
            self.pos += after
            self.ignore()
            return self.lex_comment
        self.emit(LEFT_DELIM)
        self.inside = True
        self.pos += after
        self.ignore()
        self.paren_depth = 0
        return None

    def lex_comment(self):
        s = self.input
        self.pos += len(LCOMMENT)
        x = s.find(RCOMMENT, self.pos)
        if x < 0:
            self.errorf("unclosed comment")
            return None
        self.pos = x + len(RCOMMENT)
        delim, trim = self.at_right_delim()
        if not delim:
            self.errorf("comment ends before closing delimiter")
            return None
        self.line += s.count("\n", self.start, self.pos)
        self.start = self.pos
        self.start_line = self.line
        if trim:
            self.pos += 2
        self.pos += len(RIGHT)
        if trim:
            rest = s[self.pos:]
            self.pos += len(rest) - len(rest.lstrip(SPACE))
        self.ignore()
        return self.lex_text

    def lex_right_delim(self):
        _, trim = self.at_right_delim()
        if trim:
            self.pos += 2
            self.ignore()
        self.pos += len(RIGHT)
        self.emit(RIGHT_DELIM)
        if trim:
            rest = self.input[self.pos:]
            self.pos += len(rest) - len(rest.lstrip(SPACE))
            self.ignore()
        self.inside = False
        return None

    def lex_inside(self):
        delim, _ = self.at_right_delim()
        if delim:
            if self.paren_depth == 0:
                return self.lex_right_delim
            self.errorf("unclosed left paren")
            return None
        c = self.next()
        if c == "":
            self.errorf("unclosed action")
        elif is_space(c):
            self.backup()
            return self.lex_space
        elif c == "=":
            self.emit(ASSIGN)
        elif c == ":":
            if self.next() != "=":
                self.errorf("expected :=")
            else:
                self.emit(DECLARE)
        elif c == "|":
            self.emit(PIPE)
        elif c == '"':
            return self.lex_quote
        elif c == "`":
            return self.lex_raw_quote
        elif c == "$":
            return self.lex_variable
        elif c == "'":
            return self.lex_char
        elif c == "." and self.pos < len(self.input) and not "0" <= self.input[self.pos] <= "9":
            return self.lex_field
        elif c == "." or c in "+-" or "0" <= c <= "9":
            self.backup()
            return self.lex_number
        elif is_alnum(c):
            self.backup()
            return self.lex_identifier
        elif c == "(":
            self.paren_depth += 1
            self.emit(LEFT_PAREN)
        elif c == ")":
            self.paren_depth -= 1
            if self.paren_depth < 0:
                self.errorf("unexpected right paren")
            else:
                self.emit(RIGHT_PAREN)
        elif ord(c) < 0x7F and c.isprintable():
            self.emit(CHAR)
        else:
            from .gofmt import go_rune_U
            self.errorf(f"unrecognized character in action: {go_rune_U(c)}")
        return None

    def lex_space(self):
        n = 0
        while is_space(self.peek()):
            self.next()
            n += 1
        s, p = self.input, self.pos
        if _has_right_trim(s, p - 1) and s.startswith(RIGHT, p + 1):
            self.backup()
            if n == 1:
                return self.lex_right_delim
        self.emit(SPACE_ITEM)
        return None

    def lex_identifier(self):
        while True:
            c = self.next()
            if is_alnum(c):
                continue
            self.backup()
            word = self.input[self.start:self.pos]
            if not self.at_terminator():
                from .gofmt import go_rune_U
                self.errorf(f"bad character {go_rune_U(c)}")
                return None
            if word in KEYWORDS and word != ".":
                if (word == K_BREAK and not self.break_ok) or (word == K_CONTINUE and not self.continue_ok):
                    self.emit(IDENTIFIER)
                else:
                    self.emit(word)
            elif word[0] == ".":
                self.emit(FIELD)
            elif word in ("true", "false"):
                self.emit(BOOL)
            else:
                self.emit(IDENTIFIER)
            return None

    def lex_field(self):
        return self._field_or_variable(FIELD)

    def lex_variable(self):
        if self.at_terminator():
            self.emit(VARIABLE)
            return None
        return self._field_or_variable(VARIABLE)

    def _field_or_variable(self, typ: str):
        if self.at_terminator():
            self.emit(VARIABLE if typ == VARIABLE else K_DOT)
            return None
        while True:
            c = self.next()
            if not is_alnum(c):
                self.backup()
                break
        if not self.at_terminator():
            from .gofmt import go_rune_U
            self.errorf(f"bad character {go_rune_U(c)}")
            return None
        self.emit(typ)
        return None

    def _lex_delimited(self, close: str, token, what: str):
        """A quoted char or string constant up to `close`, with backslash escapes, on one line."""
        while True:
            c = self.next()
            if c == "\\":
                if self.next() not in ("", "\n"):
                    continue
                self.errorf(f"unterminated {what}")
                return None
            if c in ("", "\n"):
                self.errorf(f"unterminated {what}")
                return None
            if c == close:
                break
        self.emit(token)
        return None

    def lex_char(self):
        return self._lex_delimited("'", CHAR_CONSTANT, "character constant")

    def lex_number(self):
        if not self._scan_number():
            self.errorf(f"bad number syntax: {_q(self.input[self.start:self._cur()])}")
            return None
        if self.peek() in ("+", "-") and self.peek() != "":
            if not self._scan_number() or self.input[self.pos - 1] != "i":
                self.errorf(f"bad number syntax: {_q(self.input[self.start:self._cur()])}")
                return None
            self.emit(COMPLEX)
            return None
        self.emit(NUMBER)
        return None

    def _scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if is_alnum(self.peek()):
            self.next()
            return False
        return True

    def lex_quote(self):
        return self._lex_delimited('"', STRING, "quoted string")

    def lex_raw_quote(self):
        while True:
            c = self.next()
            if c == "":
                self.errorf("unterminated raw quoted string")
                return None
            if c == "`":
                break
        self.emit(RAW_STRING)
        return None


def _q(s: str) -> str:
    from .gofmt import go_quote
    return go_quote(s)
