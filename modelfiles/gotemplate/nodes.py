"""Parse-tree nodes of Go text/template.  ``string()`` gives the source-like form Go prints in
error messages (``<.Messages.Foo>``, ``{{template "x" .}}``)."""

from __future__ import annotations


class Tree:
    """One named template: its root list, plus the text it came from (for error positions)."""

    def __init__(self, name: str, text: str, parse_name: str):
        self.name = name
        self.text = text
        self.parse_name = parse_name
        self.root: ListNode | None = None

    def location(self, pos: int) -> str:
        before = self.text[:pos]
        nl = before.rfind("\n")
        col = len(before.encode()) if nl < 0 else len(before[nl + 1:].encode())
        return f"{self.parse_name}:{1 + before.count(chr(10))}:{col}"


# ----------------------------------------------------------------------------- nodes
class Node:
    pos = 0
    tree: Tree | None = None

    def __str__(self) -> str:  # the source-like form Go uses in error messages
        return self.string()

    def string(self) -> str:
        raise NotImplementedError


class ListNode(Node):
    def __init__(self, pos, nodes=None):
        self.pos, self.nodes = pos, nodes if nodes is not None else []

    def string(self):
        return "".join(n.string() for n in self.nodes)


class TextNode(Node):
    def __init__(self, pos, text):
        self.pos, self.text = pos, text

    def string(self):
        return self.text


class CommentNode(Node):
    def __init__(self, pos, text):
        self.pos, self.text = pos, text

    def string(self):
        return "{{" + self.text + "}}"


class PipeNode(Node):
    def __init__(self, pos, line, decl=None):
        self.pos, self.line = pos, line
        self.is_assign = False
        self.decl: list[VariableNode] = decl or []
        self.cmds: list[CommandNode] = []

    def string(self):
        s = ""
        if self.decl:
            s = ", ".join(v.string() for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(c.string() for c in self.cmds)


class ActionNode(Node):
    def __init__(self, pos, line, pipe):
        self.pos, self.line, self.pipe = pos, line, pipe

    def string(self):
        return "{{" + self.pipe.string() + "}}"


class CommandNode(Node):
    def __init__(self, pos):
        self.pos, self.args = pos, []

    def string(self):
        return " ".join(f"({a.string()})" if isinstance(a, PipeNode) else a.string() for a in self.args)


class IdentifierNode(Node):
    def __init__(self, pos, ident):
        self.pos, self.ident = pos, ident

    def string(self):
        return self.ident


class VariableNode(Node):
    def __init__(self, pos, ident: str):
        self.pos, self.ident = pos, ident.split(".")

    def string(self):
        return ".".join(self.ident)


class DotNode(Node):
    def __init__(self, pos):
        self.pos = pos

    def string(self):
        return "."


class NilNode(Node):
    def __init__(self, pos):
        self.pos = pos

    def string(self):
        return "nil"


class FieldNode(Node):
    def __init__(self, pos, ident: str):
        self.pos, self.ident = pos, ident[1:].split(".")

    def string(self):
        return "".join("." + i for i in self.ident)


class ChainNode(Node):
    def __init__(self, pos, node):
        self.pos, self.node, self.field = pos, node, []

    def add(self, field: str):
        if not field or field[0] != ".":
            raise ValueError("no dot in field")
        field = field[1:]
        if not field:
            raise ValueError("empty field")
        self.field.append(field)

    def string(self):
        s = f"({self.node.string()})" if isinstance(self.node, PipeNode) else self.node.string()
        return s + "".join("." + f for f in self.field)


class BoolNode(Node):
    def __init__(self, pos, value: bool):
        self.pos, self.value = pos, value

    def string(self):
        return "true" if self.value else "false"


class NumberNode(Node):
    def __init__(self, pos, text):
        self.pos, self.text = pos, text
        self.is_int = self.is_uint = self.is_float = self.is_complex = False
        self.int64 = self.uint64 = 0
        self.float64 = 0.0
        self.complex128 = 0j

    def string(self):
        return self.text


class StringNode(Node):
    def __init__(self, pos, quoted, text):
        self.pos, self.quoted, self.text = pos, quoted, text

    def string(self):
        return self.quoted


class EndNode(Node):
    def __init__(self, pos):
        self.pos = pos

    def string(self):
        return "{{end}}"


class ElseNode(Node):
    def __init__(self, pos, line):
        self.pos, self.line = pos, line

    def string(self):
        return "{{else}}"


class BranchNode(Node):
    keyword = ""

    def __init__(self, pos, line, pipe, list_, else_list):
        self.pos, self.line, self.pipe, self.list, self.else_list = pos, line, pipe, list_, else_list

    def string(self):
        s = "{{" + self.keyword + " " + self.pipe.string() + "}}" + self.list.string()
        if self.else_list is not None:
            s += "{{else}}" + self.else_list.string()
        return s + "{{end}}"


class IfNode(BranchNode):
    keyword = "if"


class RangeNode(BranchNode):
    keyword = "range"


class WithNode(BranchNode):
    keyword = "with"


class BreakNode(Node):
    def __init__(self, pos, line):
        self.pos, self.line = pos, line

    def string(self):
        return "{{break}}"


class ContinueNode(Node):
    def __init__(self, pos, line):
        self.pos, self.line = pos, line

    def string(self):
        return "{{continue}}"


class TemplateNode(Node):
    def __init__(self, pos, line, name, pipe):
        self.pos, self.line, self.name, self.pipe = pos, line, name, pipe

    def string(self):
        from .gofmt import go_quote
        if self.pipe is None:
            return "{{template " + go_quote(self.name) + "}}"
        return "{{template " + go_quote(self.name) + " " + self.pipe.string() + "}}"


_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def is_empty_tree(n: Node | None) -> bool:
    if n is None or isinstance(n, CommentNode):
        return True
    if isinstance(n, ListNode):
        return all(is_empty_tree(c) for c in n.nodes)
    if isinstance(n, TextNode):
        return n.text.strip(_GO_SPACE) == ""
    return False
