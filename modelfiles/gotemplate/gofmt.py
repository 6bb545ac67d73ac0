"""Go's fmt (Sprint, Sprintln, Sprintf) and strconv quoting, for values as values.py represents
them.  Behaviour follows the fmt package documentation: %v and friends, flags '+-# 0', width and
precision (also '*'), error forms such as %!d(string=x), %!v(MISSING) and %!(EXTRA ...)."""

from __future__ import annotations

import decimal
import math
import struct
from typing import Any

from .values import GoFunc, GoMap, GoNil, GoSlice, GoStruct, kind, stringer, type_name

# ----------------------------------------------------------------------------- strconv
_ESC = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}


def _escape_rune(c: str, quote: str, ascii_only: bool) -> str:
    if c == quote or c == "\\":
        return "\\" + c
    o = ord(c)
    if ascii_only:
        if o < 0x80 and c.isprintable():
            return c
    elif c.isprintable():
        return c
    if c in _ESC:
        return _ESC[c]
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    if 0xD800 <= o < 0xE000:  # not a valid rune
        return "\\ufffd"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def go_quote(s: str, ascii_only: bool = False) -> str:
    """strconv.Quote (or QuoteToASCII)."""
    return '"' + "".join(_escape_rune(c, '"', ascii_only) for c in s) + '"'


def go_quote_rune(c: str, ascii_only: bool = False) -> str:
    return "'" + _escape_rune(c, "'", ascii_only) + "'"


def can_backquote(s: str) -> bool:
    for c in s:
        if c == "`" or c == "\ufeff":
            return False
        if c != "\t" and (ord(c) < 0x20 or ord(c) == 0x7F):
            return False
    return True


def go_rune_U(c: str) -> str:
    """%#U: U+0041 'A'."""
    o = ord(c) if c else 0
    s = f"U+{o:04X}"
    if c and c.isprintable():
        s += " '" + c + "'"
    return s


# ----------------------------------------------------------------------------- floats
def _shortest_digits(f: float) -> tuple[str, int]:
    """Shortest decimal digits that round-trip (Python's repr, like Go's shortest formatting),
    and the decimal point position: value = 0.DIGITS * 10**dp."""
    if f == 0:
        return "0", 1
    _, digits, exp = decimal.Decimal(repr(abs(f))).as_tuple()
    ds = "".join(map(str, digits)).lstrip("0")
    return ds.rstrip("0"), len(ds) + exp


def format_float(f: float, fmt: str, prec: int) -> str:
    """strconv.FormatFloat(f, fmt, prec, 64) for fmt in e E f g G (prec -1 = shortest)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    neg = math.copysign(1.0, f) < 0
    sign = "-" if neg else ""
    if prec >= 0:
        if fmt in "gG":
            p = prec if prec > 0 else 1
            s = f"{abs(f):.{p}{fmt}}"
            return sign + s
        return sign + f"{abs(f):.{prec}{fmt}}"
    digits, dp = _shortest_digits(f)
    nd = len(digits)
    if fmt in "gG":
        exp = dp - 1
        if exp < -4 or exp >= 6:  # shortest %g decides with precision 6, as strconv does
            return sign + _fmt_e(digits, dp, nd - 1, "e" if fmt == "g" else "E")
        return sign + _fmt_f(digits, dp, max(nd - dp, 0))
    if fmt in "eE":
        return sign + _fmt_e(digits, dp, nd - 1, fmt)
    return sign + _fmt_f(digits, dp, max(nd - dp, 0))


def _fmt_e(digits: str, dp: int, prec: int, e: str) -> str:
    s = digits[0]
    if prec > 0:
        s += "." + (digits[1:] + "0" * prec)[:prec]
    exp = dp - 1 if digits != "0" else 0
    es = "-" if exp < 0 else "+"
    exp = abs(exp)
    return s + e + es + (f"{exp:02d}")


def _fmt_f(digits: str, dp: int, prec: int) -> str:
    if dp > 0:
        ip = (digits[:dp] + "0" * max(0, dp - len(digits)))
    else:
        ip = "0"
    s = ip
    if prec > 0:
        frac = ""
        for i in range(prec):
            j = dp + i
            frac += digits[j] if 0 <= j < len(digits) else "0"
        s += "." + frac
    return s


def json_float(f: float) -> str:
    """encoding/json's float64 encoding (ES6 number-to-string)."""
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        s = format_float(f, "e", -1)
        n = len(s)
        if n >= 4 and s[n - 4] == "e" and s[n - 3] == "-" and s[n - 2] == "0":
            s = s[:n - 2] + s[n - 1]
        return s
    return format_float(f, "f", -1)


# ----------------------------------------------------------------------------- printer
class _Printer:
    def __init__(self) -> None:
        self.buf: list[str] = []
        self.erroring = False
        self.clear()

    def clear(self) -> None:
        self.plus = self.minus = self.sharp = self.space = self.zero = False
        self.plus_v = self.sharp_v = False
        self.wid = self.prec = 0
        self.wid_present = self.prec_present = False

    def w(self, s: str) -> None:
        self.buf.append(s)

    # -- padding -----------------------------------------------------------------------
    def padding(self, n: int) -> str:
        if n <= 0:
            return ""
        return ("0" if self.zero and not self.minus else " ") * n

    def pad(self, s: str) -> None:
        if not self.wid_present or self.wid == 0:
            self.w(s)
            return
        width = self.wid - len(s)
        if not self.minus:
            self.w(self.padding(width) + s)
        else:
            self.w(s + self.padding(width))

    # -- basic kinds -----------------------------------------------------------------------
    def fmt_bool(self, v: bool, verb: str, arg: Any) -> None:
        if verb in "tv":
            self.pad("true" if v else "false")
        else:
            self.bad_verb(verb, arg)

    def fmt_integer(self, v: int, verb: str, arg: Any) -> None:
        if verb in "vd":
            self._integer(v, 10, verb, "0123456789abcdefx")
        elif verb == "b":
            self._integer(v, 2, verb, "0123456789abcdefx")
        elif verb in "oO":
            self._integer(v, 8, verb, "0123456789abcdefx")
        elif verb == "x":
            self._integer(v, 16, verb, "0123456789abcdefx")
        elif verb == "X":
            self._integer(v, 16, verb, "0123456789ABCDEFX")
        elif verb == "c":
            self.pad(chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v < 0xE000 else "\ufffd")
        elif verb == "q":
            c = chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v < 0xE000 else "\ufffd"
            if self.sharp and c != "'" and can_backquote(c) and c.isprintable():
                self.pad("'" + c + "'")
            else:
                self.pad(go_quote_rune(c, self.plus))
        elif verb == "U":
            u = v & ((1 << 64) - 1)
            prec = self.prec if self.prec_present and self.prec > 4 else 4
            s = "U+" + f"{u:X}".rjust(prec, "0")
            if self.sharp and u <= 0x10FFFF and not 0xD800 <= u < 0xE000 and chr(u).isprintable():
                s += " '" + chr(u) + "'"
            old, self.zero = self.zero, False
            self.pad(s)
            self.zero = old
        else:
            self.bad_verb(verb, arg)

    def _integer(self, v: int, base: int, verb: str, digits: str) -> None:
        negative = v < 0
        u = -v if negative else v
        prec = 0
        if self.prec_present:
            prec = self.prec
            if prec == 0 and u == 0:
                old, self.zero = self.zero, False
                self.w(self.padding(self.wid))
                self.zero = old
                return
        elif self.zero and not self.minus and self.wid_present:
            prec = self.wid
            if negative or self.plus or self.space:
                prec -= 1
        if base == 10:
            s = str(u)
        elif base == 16:
            s = "".join(digits[int(c, 16)] for c in f"{u:x}")
        elif base == 8:
            s = f"{u:o}"
        else:
            s = f"{u:b}"
        if len(s) < prec:
            s = "0" * (prec - len(s)) + s
        if self.sharp:
            if base == 2:
                s = "0b" + s
            elif base == 8 and s[0] != "0":
                s = "0" + s
            elif base == 16:
                s = "0" + digits[16] + s
        if verb == "O":
            s = "0o" + s
        if negative:
            s = "-" + s
        elif self.plus:
            s = "+" + s
        elif self.space:
            s = " " + s
        old, self.zero = self.zero, False
        self.pad(s)
        self.zero = old

    def fmt_float(self, v: float, verb: str, arg: Any) -> None:
        if verb == "v":
            self._float(v, "g", -1)
        elif verb in "gG":
            self._float(v, verb, -1)
        elif verb in "feE":
            self._float(v, verb, 6)
        elif verb == "F":
            self._float(v, "f", 6)
        elif verb in "bxX":
            self._float(v, verb, -1)
        else:
            self.bad_verb(verb, arg)

    def _float(self, v: float, verb: str, prec: int) -> None:
        if self.prec_present:
            prec = self.prec
        if verb in "xX":
            num = _hex_float(v, prec, verb) if math.isfinite(v) else format_float(v, "g", prec)
        elif verb == "b":
            num = _bin_float(v) if math.isfinite(v) else format_float(v, "g", prec)
        else:
            num = format_float(v, verb, prec)
        if num[0] not in "+-":
            num = "+" + num
        if self.space and num[0] == "+" and not self.plus:
            num = " " + num[1:]
        if num[1] in "IN":
            old, self.zero = self.zero, False
            if num[1] == "N" and not self.space and not self.plus:
                num = num[1:]
            self.pad(num)
            self.zero = old
            return
        if self.sharp and verb != "b":
            digits = 0
            if verb in "vgGx":
                digits = prec if prec != -1 else 6
            tail = ""
            body = num
            for i in range(1, len(body)):
                if body[i] in "eEpP" and not (body[i] in "eE" and verb in "xX"):
                    tail, num = body[i:], body[:i]
                    break
            has_point = "." in num
            seen_nonzero = False
            for ch in num[1:]:
                if ch == ".":
                    continue
                if ch != "0":
                    seen_nonzero = True
                if seen_nonzero:
                    digits -= 1
            if not has_point:
                if len(num) == 2 and num[1] == "0":
                    digits -= 1
                num += "."
            if verb in "vgGx" and digits > 0:
                num += "0" * digits
            num += tail
        if self.plus or num[0] != "+":
            if self.zero and not self.minus and self.wid_present and self.wid > len(num):
                self.w(num[0] + "0" * (self.wid - len(num)) + num[1:])
                return
            self.pad(num)
            return
        self.pad(num[1:])

    def fmt_complex(self, v: complex, verb: str, arg: Any) -> None:
        if verb not in "vbgGxXfFeE":
            self.bad_verb(verb, arg)
            return
        old_plus = self.plus
        self.w("(")
        self.fmt_float(v.real, verb, arg)
        self.plus = True
        self.fmt_float(v.imag, verb, arg)
        self.w("i)")
        self.plus = old_plus

    def fmt_string(self, v: str, verb: str, arg: Any) -> None:
        if verb == "v":
            if self.sharp_v:
                self._q(v)
            else:
                self._s(v)
        elif verb == "s":
            self._s(v)
        elif verb in "xX":
            self._sx(v, verb)
        elif verb == "q":
            self._q(v)
        else:
            self.bad_verb(verb, arg)

    def _trunc(self, s: str) -> str:
        return s[:self.prec] if self.prec_present else s

    def _s(self, s: str) -> None:
        self.pad(self._trunc(s))

    def _q(self, s: str) -> None:
        s = self._trunc(s)
        if self.sharp and can_backquote(s):
            self.pad("`" + s + "`")
        else:
            self.pad(go_quote(s, self.plus))

    def _sx(self, s: str, verb: str) -> None:
        b = s.encode("utf-8", "surrogateescape")
        if self.prec_present:
            b = b[:self.prec]
        if not b:
            if self.wid_present:
                self.w(self.padding(self.wid))
            return
        hx = "0x" if verb == "x" else "0X"
        parts = [f"{c:02x}" if verb == "x" else f"{c:02X}" for c in b]
        if self.space:
            out = " ".join((hx + p) if self.sharp else p for p in parts)
        else:
            out = (hx if self.sharp else "") + "".join(parts)
        width = len(out)
        if self.wid_present and self.wid > width and not self.minus:
            self.w(self.padding(self.wid - width))
        self.w(out)
        if self.wid_present and self.wid > width and self.minus:
            self.w(self.padding(self.wid - width))

    def bad_verb(self, verb: str, arg: Any, value_is_arg: bool = True) -> None:
        self.erroring = True
        self.w("%!" + verb + "(")
        if arg is not None and not (isinstance(arg, GoNil) and arg.kind == "interface"):
            self.w(type_name(arg) + "=")
            self.print_arg(arg, "v")  # with the flags, width and precision still set, as Go does
        else:
            self.w("<nil>")
        self.w(")")
        self.erroring = False

    # -- generic --------------------------------------------------------------------------
    def handle_methods(self, v: Any, verb: str) -> bool:
        if self.erroring:
            return False
        if verb == "T":
            return False
        if self.sharp_v:
            return False
        if verb in "vsxXq":
            s = stringer(v)
            if s is not None:
                self.fmt_string(s(), verb, v)
                return True
        return False

    def print_arg(self, arg: Any, verb: str) -> None:
        if arg is None or (isinstance(arg, GoNil) and arg.kind == "interface"):
            if verb in "Tv":
                self.pad("<nil>")
            else:
                self.bad_verb(verb, None)
            return
        if verb == "T":
            self._s(type_name(arg))
            return
        if verb == "p":
            self.w(f"%!p({type_name(arg)}=")
            self.print_value(arg, "v", 0)
            self.w(")")
            return
        k = kind(arg)
        typed = isinstance(arg, (GoStruct, GoMap, GoSlice, GoNil, GoFunc))
        if not typed:
            if k == "bool":
                return self.fmt_bool(arg, verb, arg)
            if k == "int":
                return self.fmt_integer(arg, verb, arg)
            if k == "float64":
                return self.fmt_float(arg, verb, arg)
            if k == "complex128":
                return self.fmt_complex(arg, verb, arg)
            if k == "string":
                return self.fmt_string(arg, verb, arg)
        if not self.handle_methods(arg, verb):
            self.print_value(arg, verb, 0)

    def print_value(self, v: Any, verb: str, depth: int) -> None:
        if depth > 0 and v is not None and self.handle_methods(v, verb):
            return
        k = kind(v)
        if k == "invalid":
            if depth == 0:
                self.w("<invalid reflect.Value>")
            elif verb == "v":
                self.w("<nil>")
            else:
                self.bad_verb(verb, None)
        elif k == "bool":
            self.fmt_bool(v, verb, v)
        elif k == "int":
            self.fmt_integer(v, verb, v)
        elif k == "float64":
            self.fmt_float(v, verb, v)
        elif k == "complex128":
            self.fmt_complex(v, verb, v)
        elif k == "string":
            self.fmt_string(v, verb, v)
        elif k == "map":
            if isinstance(v, GoNil):
                self.w(type_name(v) + "(nil)" if self.sharp_v else "map[]")
                return
            self.w(type_name(v) + "{" if self.sharp_v else "map[")
            for i, key in enumerate(sorted(v)):
                if i:
                    self.w(", " if self.sharp_v else " ")
                self.print_value(key, verb, depth + 1)
                self.w(":")
                self.print_value(_elem(v, v[key]), verb, depth + 1)
            self.w("}" if self.sharp_v else "]")
        elif k == "struct":
            if self.sharp_v:
                self.w(v.type_name)
            self.w("{")
            for i, (name, fv) in enumerate(v.fields.items()):
                if i:
                    self.w(", " if self.sharp_v else " ")
                if self.plus_v or self.sharp_v:
                    self.w(name + ":")
                self.print_value(fv, verb, depth + 1)
            self.w("}")
        elif k == "interface":  # a nil interface
            self.w(type_name(v) + "(nil)" if self.sharp_v else "<nil>")
        elif k == "slice":
            if isinstance(v, GoNil):
                self.w(type_name(v) + "(nil)" if self.sharp_v else "[]")
                return
            if self.sharp_v:
                self.w(type_name(v) + "{")
                for i, e in enumerate(v):
                    if i:
                        self.w(", ")
                    self.print_value(_elem(v, e), verb, depth + 1)
                self.w("}")
                return
            self.w("[")
            for i, e in enumerate(v):
                if i:
                    self.w(" ")
                self.print_value(_elem(v, e), verb, depth + 1)
            self.w("]")
        elif k == "ptr":
            if isinstance(v, GoNil):
                if verb == "v":
                    self.pad("<nil>")
                else:
                    self.bad_verb(verb, v)
                return
            if depth == 0:
                self.w("&")
                self.print_value(_deref(v), verb, depth + 1)
                return
            self.w("0xc000010000")
        elif k == "func":
            self.w("0x4a5b60")
        else:
            self.w(str(v))


def _elem(container: Any, v: Any) -> Any:
    from .values import iface_elem
    return iface_elem(container, v)


def _deref(v: GoStruct) -> GoStruct:
    return GoStruct(v.type_name, v.fields, methods=v.methods, pointer=False,
                    json_fields=v.json_fields, json_func=v.json_func)


def _float_bits(v: float) -> tuple[bool, int, int]:
    """(negative, mantissa with the implicit bit, unbiased exponent) as strconv takes them."""
    bits = struct.unpack(">Q", struct.pack(">d", v))[0]
    neg = bool(bits >> 63)
    exp = (bits >> 52) & 0x7FF
    mant = bits & ((1 << 52) - 1)
    if exp == 0:
        exp += 1
    else:
        mant |= 1 << 52
    return neg, mant, exp - 1023


def _bin_float(v: float) -> str:
    """%b: decimalless scientific notation with a power of two exponent (-123456p-78)."""
    neg, mant, exp = _float_bits(v)
    exp -= 52
    return ("-" if neg else "") + str(mant) + "p" + ("+" if exp >= 0 else "") + str(exp)


def _hex_float(v: float, prec: int, verb: str) -> str:
    """%x / %X on floats: -0x1.23abcp+20."""
    neg, mant, exp = _float_bits(v)
    if mant == 0:
        exp = 0
    mant <<= 60 - 52
    while mant != 0 and mant & (1 << 60) == 0:
        mant <<= 1
        exp -= 1
    mask = (1 << 64) - 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant = (mant << (60 - shift)) & mask
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    digits = "0123456789abcdef" if verb == "x" else "0123456789ABCDEF"
    out = ("-" if neg else "") + "0" + verb + chr(48 + ((mant >> 60) & 1))
    mant = (mant << 4) & mask
    if prec < 0 and mant != 0:
        out += "."
        while mant != 0:
            out += digits[(mant >> 60) & 15]
            mant = (mant << 4) & mask
    elif prec > 0:
        out += "."
        for _ in range(prec):
            out += digits[(mant >> 60) & 15]
            mant = (mant << 4) & mask
    out += "p" if verb == "x" else "P"
    out += "-" if exp < 0 else "+"
    exp = abs(exp)
    out += f"{exp:02d}"
    return out


# ----------------------------------------------------------------------------- entry points
def _is_string_arg(a: Any) -> bool:
    return isinstance(a, str)


def sprint(args: list[Any]) -> str:
    p = _Printer()
    prev_string = False
    for i, a in enumerate(args):
        is_string = _is_string_arg(a)
        if i > 0 and not is_string and not prev_string:
            p.w(" ")
        p.print_arg(a, "v")
        prev_string = is_string
    return "".join(p.buf)


def sprintln(args: list[Any]) -> str:
    p = _Printer()
    for i, a in enumerate(args):
        if i > 0:
            p.w(" ")
        p.print_arg(a, "v")
    p.w("\n")
    return "".join(p.buf)


def _parsenum(s: str, i: int) -> tuple[int, bool, int]:
    start = i
    n = 0
    while i < len(s) and "0" <= s[i] <= "9":
        n = n * 10 + ord(s[i]) - 48
        if n > 1_000_000:
            return 0, False, len(s)
        i += 1
    return n, i > start, i


def sprintf(fmt: str, args: list[Any]) -> str:
    p = _Printer()
    end = len(fmt)
    arg_num = 0
    after_index = False
    reordered = False
    i = 0
    while i < end:
        good_arg_num = True
        lasti = i
        while i < end and fmt[i] != "%":
            i += 1
        if i > lasti:
            p.w(fmt[lasti:i])
        if i >= end:
            break
        i += 1
        p.clear()
        while i < end:
            c = fmt[i]
            if c == "#":
                p.sharp = True
            elif c == "0":
                p.zero = True
            elif c == "+":
                p.plus = True
            elif c == "-":
                p.minus = True
            elif c == " ":
                p.space = True
            else:
                break
            i += 1

        def arg_number(arg_num: int, i: int) -> tuple[int, int, bool]:
            nonlocal reordered, good_arg_num
            if i >= end or fmt[i] != "[":
                return arg_num, i, False
            reordered = True
            for j in range(i + 1, end):
                if fmt[j] == "]":
                    width, ok, newi = _parsenum(fmt, i + 1)
                    if not ok or newi != j:
                        good_arg_num = False
                        return arg_num, j + 1, True
                    idx = width - 1
                    if 0 <= idx < len(args):
                        return idx, j + 1, True
                    good_arg_num = False
                    return arg_num, j + 1, True
            good_arg_num = False
            return arg_num, i + 1, False

        arg_num, i, after_index = arg_number(arg_num, i)
        if i < end and fmt[i] == "*":
            i += 1
            if arg_num < len(args) and isinstance(args[arg_num], int) and not isinstance(args[arg_num], bool):
                p.wid, p.wid_present = args[arg_num], True
                if abs(p.wid) > 1_000_000:
                    p.wid, p.wid_present = 0, False
            else:
                p.wid_present = False
            arg_num += 1
            if not p.wid_present:
                p.w("%!(BADWIDTH)")
            if p.wid < 0:
                p.wid = -p.wid
                p.minus = True
                p.zero = False
            after_index = False
        else:
            p.wid, p.wid_present, i = _parsenum(fmt, i)
            if after_index and p.wid_present:
                good_arg_num = False
        if i + 1 < end and fmt[i] == ".":
            i += 1
            if after_index:
                good_arg_num = False
            arg_num, i, after_index = arg_number(arg_num, i)
            if i < end and fmt[i] == "*":
                i += 1
                if arg_num < len(args) and isinstance(args[arg_num], int) and not isinstance(args[arg_num], bool):
                    p.prec, p.prec_present = args[arg_num], True
                    if abs(p.prec) > 1_000_000:
                        p.prec, p.prec_present = 0, False
                else:
                    p.prec_present = False
                arg_num += 1
                if p.prec < 0:
                    p.prec, p.prec_present = 0, False
                if not p.prec_present:
                    p.w("%!(BADPREC)")
                after_index = False
            else:
                p.prec, p.prec_present, i = _parsenum(fmt, i)
                if not p.prec_present:
                    p.prec, p.prec_present = 0, True
        if not after_index:
            arg_num, i, after_index = arg_number(arg_num, i)
        if i >= end:
            p.w("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            p.w("%")
        elif not good_arg_num:
            p.w("%!" + verb + "(BADINDEX)")
        elif arg_num >= len(args):
            p.w("%!" + verb + "(MISSING)")
        else:
            if verb == "v" or verb == "w":
                p.sharp_v, p.sharp = p.sharp, False
                p.plus_v, p.plus = p.plus, False
            p.print_arg(args[arg_num], verb)
            arg_num += 1
    if not reordered and arg_num < len(args):
        p.clear()
        p.w("%!(EXTRA ")
        for j, a in enumerate(args[arg_num:]):
            if j:
                p.w(", ")
            if a is None:
                p.w("<nil>")
            else:
                p.w(type_name(a) + "=")
                p.print_arg(a, "v")
        p.w(")")
    return "".join(p.buf)
