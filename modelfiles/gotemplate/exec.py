"""Executes parsed templates with Go's semantics: variables and their scopes, dot, pipelines
(the previous command's result is the last argument of the next), field/map/method access,
if/with/range (lists, maps in key order, integers; else; break/continue), template calls, and
Go's truthiness.  Execution errors read like Go's: ``template: :1:3: executing "" at <.X.Y>: ...``.
"""

from __future__ import annotations

from typing import Any

from . import nodes as P
from .parse import parse as _parse
from .errors import TemplateError
from .funcs import BUILTINS, printable_value, truth
from .gofmt import go_quote, sprint
from .values import (NIL_IFACE, GoCallError, GoFunc, GoMap, GoNil, GoStruct, iface_elem, is_true,
                     kind, methods_of, type_name)

MAX_EXEC_DEPTH = 100000
_PY_DEPTH = 100  # template calls nested deeper than this report Go's depth error (Python's stack is small)

_MISSING = object()   # "no final value" marker of a pipeline stage


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _ExecError(Exception):
    pass


class Template:
    """A parsed template set (the top-level template plus its define/block templates).

    ``funcs``: extra functions (name -> GoFunc) beside Go's builtins.  ``missingkey``: Go's
    option for missing map keys: 'default'/'invalid' (prints "<no value>"), 'zero', 'error'."""

    def __init__(self, text: str, funcs: dict[str, GoFunc] | None = None, missingkey: str = "default",
                 name: str = ""):
        self.text = text
        self.name = name
        self.funcs = dict(funcs or {})
        self.missingkey = missingkey
        self.trees = _parse(text, frozenset(BUILTINS) | frozenset(self.funcs), name)

    @property
    def root(self) -> P.ListNode:
        return self.trees[self.name].root

    def execute(self, data: Any) -> str:
        return execute_tree(self.trees[self.name], data, trees=self.trees, funcs=self.funcs,
                            missingkey=self.missingkey)


def execute_tree(tree: P.Tree, data: Any, *, trees: dict[str, P.Tree] | None = None,
                 funcs: dict[str, GoFunc] | None = None, missingkey: str = "default") -> str:
    st = _State(tree, trees if trees is not None else {tree.name: tree}, funcs or {}, missingkey)
    st.vars = [["$", data]]
    try:
        if tree.root is None:
            st.errorf(f"{go_quote(tree.name)} is an incomplete or empty template")
        st.walk(data, tree.root)
    except _ExecError as e:
        raise TemplateError(str(e)) from None
    except RecursionError:
        raise TemplateError(f"template: {tree.name}: exceeded maximum template depth ({MAX_EXEC_DEPTH})") from None
    return "".join(st.out)


class _State:
    def __init__(self, tree: P.Tree, trees: dict[str, P.Tree], funcs: dict[str, GoFunc], missingkey: str):
        self.tree = tree
        self.trees = trees
        self.funcs = funcs
        self.missingkey = missingkey
        self.out: list[str] = []
        self.node: P.Node | None = None
        self.vars: list[list[Any]] = []
        self.depth = 0

    # -- errors ----------------------------------------------------------------------------
    def errorf(self, msg: str):
        name = self.tree.name
        n = self.node
        if n is None or n.tree is None:
            raise _ExecError(f"template: {name}: {msg}")
        location = n.tree.location(n.pos)
        raise _ExecError(f"template: {location}: executing {go_quote(name)} at <{n.string()}>: {msg}")

    # -- variables ---------------------------------------------------------------------------
    def push(self, name: str, value: Any) -> None:
        self.vars.append([name, value])

    def mark(self) -> int:
        return len(self.vars)

    def pop(self, mark: int) -> None:
        del self.vars[mark:]

    def set_var(self, name: str, value: Any) -> None:
        for v in reversed(self.vars):
            if v[0] == name:
                v[1] = value
                return
        self.errorf(f"undefined variable: {name}")

    def set_top_var(self, n: int, value: Any) -> None:
        self.vars[-n][1] = value

    def var_value(self, name: str) -> Any:
        for v in reversed(self.vars):
            if v[0] == name:
                return v[1]
        self.errorf(f"undefined variable: {name}")

    # -- walking -----------------------------------------------------------------------------
    def walk(self, dot: Any, node: P.Node) -> None:
        self.node = node
        if isinstance(node, P.ActionNode):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.print_value(node, val)
        elif isinstance(node, P.TextNode):
            self.out.append(node.text)
        elif isinstance(node, P.ListNode):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, (P.IfNode, P.WithNode)):
            self.walk_if_or_with(isinstance(node, P.WithNode), dot, node)
        elif isinstance(node, P.RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, P.TemplateNode):
            self.walk_template(dot, node)
        elif isinstance(node, P.BreakNode):
            raise _Break()
        elif isinstance(node, P.ContinueNode):
            raise _Continue()
        elif isinstance(node, P.CommentNode):
            pass
        else:
            self.errorf(f"unknown node: {node}")

    def walk_if_or_with(self, is_with: bool, dot: Any, node: P.BranchNode) -> None:
        mark = self.mark()
        try:
            val = self.eval_pipeline(dot, node.pipe)
            t, ok = is_true(val)
            if not ok:
                self.errorf(f"if/with can't use {sprint_v(val)}")
            if t:
                self.walk(val if is_with else dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            self.pop(mark)

    def walk_range(self, dot: Any, r: P.RangeNode) -> None:
        self.node = r
        outer = self.mark()
        try:
            val = self.eval_pipeline(dot, r.pipe)
            if isinstance(val, GoStruct) and val.pointer:
                from .gofmt import _deref
                val = _deref(val)
            mark = self.mark()
            decl = r.pipe.decl

            def one(index: Any, elem: Any) -> None:
                if decl:
                    if r.pipe.is_assign:
                        self.set_var(decl[0].ident[0], index if len(decl) > 1 else elem)
                    else:
                        self.set_top_var(1, elem)
                if len(decl) > 1:
                    if r.pipe.is_assign:
                        self.set_var(decl[1].ident[0], elem)
                    else:
                        self.set_top_var(2, index)
                try:
                    self.walk(elem, r.list)
                except _Continue:
                    pass
                finally:
                    self.pop(mark)

            k = kind(val)
            ran = False
            try:
                if k == "int":
                    if len(decl) > 1:
                        self.errorf(f"can't use {sprint_v(val)} to iterate over more than one variable")
                    for i in range(val):
                        ran = True
                        one(None, i)
                elif k == "slice":
                    if not isinstance(val, GoNil):
                        for i, e in enumerate(list(val)):
                            ran = True
                            one(i, iface_elem(val, e))
                elif k == "map":
                    if not isinstance(val, GoNil):
                        for key in sorted(val):
                            ran = True
                            one(key, iface_elem(val, val[key]))
                elif k == "invalid":
                    pass
                else:
                    self.errorf(f"range can't iterate over {sprint_v(val)}")
            except _Break:
                return
            if not ran and r.else_list is not None:
                self.walk(dot, r.else_list)
        finally:
            self.pop(outer)

    def walk_template(self, dot: Any, t: P.TemplateNode) -> None:
        self.node = t
        tree = self.trees.get(t.name)
        if tree is None or tree.root is None:
            self.errorf(f"template {go_quote(t.name)} not defined")
        if self.depth >= _PY_DEPTH:
            self.errorf(f"exceeded maximum template depth ({MAX_EXEC_DEPTH})")
        dot = self.eval_pipeline(dot, t.pipe)
        new = _State(tree, self.trees, self.funcs, self.missingkey)
        new.out = self.out
        new.depth = self.depth + 1
        new.vars = [["$", dot]]
        new.walk(dot, tree.root)

    # -- evaluation ------------------------------------------------------------------------
    def eval_pipeline(self, dot: Any, pipe: P.PipeNode | None) -> Any:
        if pipe is None:
            return None
        self.node = pipe
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if isinstance(value, GoNil) and value.kind == "interface":
                value = None
        for v in pipe.decl:
            if pipe.is_assign:
                self.set_var(v.ident[0], value)
            else:
                self.push(v.ident[0], value)
        return value

    def not_a_function(self, args: list[P.Node], final: Any) -> None:
        if (args is not None and len(args) > 1) or final is not _MISSING:
            self.errorf(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: Any, cmd: P.CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, P.FieldNode):
            return self.eval_field_node(dot, first, cmd.args, final)
        if isinstance(first, P.ChainNode):
            return self.eval_chain_node(dot, first, cmd.args, final)
        if isinstance(first, P.IdentifierNode):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, P.PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, P.VariableNode):
            return self.eval_variable_node(dot, first, cmd.args, final)
        self.node = first
        self.not_a_function(cmd.args, final)
        if isinstance(first, P.BoolNode):
            return first.value
        if isinstance(first, P.DotNode):
            return dot
        if isinstance(first, P.NilNode):
            self.errorf("nil is not a command")
        if isinstance(first, P.NumberNode):
            return self.ideal_constant(first)
        if isinstance(first, P.StringNode):
            return first.text
        self.errorf(f"can't evaluate command {go_quote(str(first))}")

    def ideal_constant(self, c: P.NumberNode) -> Any:
        self.node = c
        t = c.text
        is_hex_int = len(t) > 2 and t[0] == "0" and t[1] in "xX" and not any(ch in t for ch in "pP")
        if c.is_complex:
            return c.complex128
        if c.is_float and not is_hex_int and not t.startswith("'") and any(ch in t for ch in ".eEpP"):
            return c.float64
        if c.is_int:
            return c.int64
        if c.is_uint:
            self.errorf(f"{t} overflows int")
        return None

    def eval_field_node(self, dot, field: P.FieldNode, args, final):
        self.node = field
        return self.eval_field_chain(dot, dot, field, field.ident, args, final)

    def eval_chain_node(self, dot, chain: P.ChainNode, args, final):
        self.node = chain
        if not chain.field:
            self.errorf("internal error: no fields in evalChainNode")
        if isinstance(chain.node, P.NilNode):
            self.errorf(f"indirection through explicit nil in {chain}")
        pipe = self.eval_arg(dot, None, chain.node)
        return self.eval_field_chain(dot, pipe, chain, chain.field, args, final)

    def eval_variable_node(self, dot, var: P.VariableNode, args, final):
        self.node = var
        value = self.var_value(var.ident[0])
        if len(var.ident) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, var, var.ident[1:], args, final)

    def eval_field_chain(self, dot, receiver, node, ident, args, final):
        iface = False  # the receiver was read out of an interface-typed slot (Go names its type so)
        for name in ident[:-1]:
            parent = receiver
            receiver = self.eval_field(dot, name, node, None, _MISSING, receiver, iface)
            iface = _iface_container(parent)
        return self.eval_field(dot, ident[-1], node, args, final, receiver, iface)

    def eval_function(self, dot, node: P.IdentifierNode, cmd, args, final):
        self.node = node
        name = node.ident
        fn = self.funcs.get(name)
        builtin = False
        if fn is None:
            fn = BUILTINS.get(name)
            builtin = fn is not None
        if fn is None:
            self.errorf(f"{go_quote(name)} is not a defined function")
        return self.eval_call(dot, fn, builtin, cmd, name, args, final)

    def eval_field(self, dot, name: str, node, args, final, receiver, iface: bool = False):
        if receiver is None:
            if self.missingkey == "error":
                self.errorf(f"nil data; no entry for key {go_quote(name)}")
            return None
        typ = "interface {}" if iface else type_name(receiver)
        if isinstance(receiver, GoNil) and receiver.kind == "interface":
            self.errorf(f"nil pointer evaluating {typ}.{name}")
        method = methods_of(receiver).get(name)
        if method is not None:
            return self.eval_call(dot, method(receiver), False, node, name, args, final)
        has_args = (args is not None and len(args) > 1) or final is not _MISSING
        if isinstance(receiver, GoStruct):
            if name in receiver.fields:
                if has_args:
                    self.errorf(f"{name} has arguments but cannot be invoked as function")
                return receiver.fields[name]
        elif isinstance(receiver, dict):
            if has_args:
                self.errorf(f"{name} is not a method but has arguments")
            if name in receiver:
                return iface_elem(receiver, receiver[name])
            if self.missingkey == "zero":
                return receiver.elem_zero() if isinstance(receiver, GoMap) else NIL_IFACE
            if self.missingkey == "error":
                self.errorf(f"map has no entry for key {go_quote(name)}")
            return None
        elif isinstance(receiver, GoNil) and receiver.kind == "ptr":
            self.errorf(f"nil pointer evaluating {typ}.{name}")
        elif isinstance(receiver, GoNil) and receiver.kind == "map":
            if has_args:
                self.errorf(f"{name} is not a method but has arguments")
            return NIL_IFACE if self.missingkey == "zero" else None
        self.errorf(f"can't evaluate field {name} in type {typ}")

    def eval_call(self, dot, fn: GoFunc, builtin: bool, node, name: str, args, final):
        args = list(args[1:]) if args is not None else []
        num_in = len(args) + (0 if final is _MISSING else 1)
        nparams = len(fn.params)
        num_fixed = len(args)
        if fn.variadic:
            num_fixed = nparams - 1
            if num_in < num_fixed:
                self.errorf(f"wrong number of args for {name}: want at least {nparams - 1} got {len(args)}")
        elif num_in != nparams:
            self.errorf(f"wrong number of args for {name}: want {nparams} got {num_in}")

        if builtin and name in ("and", "or"):
            v: Any = None
            for a in args:
                v = self.eval_arg(dot, "value", a)
                if truth(v) == (name == "or"):
                    return v
            if final is not _MISSING:
                v = self.validate_type(final, "value")
            return v

        argv: list[Any] = []
        i = 0
        while i < num_fixed and i < len(args):
            argv.append(self.eval_arg(dot, fn.params[i], args[i]))
            i += 1
        if fn.variadic:
            et = fn.params[-1]
            while i < len(args):
                argv.append(self.eval_arg(dot, et, args[i]))
                i += 1
        if final is not _MISSING:
            t = fn.params[-1]
            if fn.variadic and num_in - 1 < num_fixed:
                t = fn.params[num_in - 1]
            argv.append(self.validate_type(final, t))

        if builtin and name == "call":
            return self._call(node, args, final, argv)

        try:
            return fn.fn(*argv)
        except GoCallError as e:
            self.node = node
            self.errorf(f"error calling {name}: {e}")
        except TemplateError:
            raise
        except RecursionError:
            raise
        except Exception as e:  # a panic inside the function
            self.node = node
            self.errorf(f"error calling {name}: {e}")

    def _call(self, node, args, final, argv):
        callee = str(args[0]) if args else str(final)
        fn = argv[0]
        if isinstance(fn, GoNil) and fn.kind == "interface":
            fn = None
        if fn is None:
            self.node = node
            self.errorf("error calling call: call of nil")
        if not isinstance(fn, GoFunc):
            self.node = node
            self.errorf(f"error calling call: non-function {callee} of type {type_name(fn)}")
        rest = argv[1:]
        if fn.variadic:
            if len(rest) < len(fn.params) - 1:
                self.errorf(f"error calling call: wrong number of args for {callee}: got {len(rest)} want at least {len(fn.params) - 1}")
        elif len(rest) != len(fn.params):
            self.errorf(f"error calling call: wrong number of args for {callee}: got {len(rest)} want {len(fn.params)}")
        try:
            return fn.fn(*[None if a is NIL_IFACE else a for a in rest])
        except GoCallError as e:
            self.node = node
            self.errorf(f"error calling call: {e}")

    def validate_type(self, value: Any, typ: str | None) -> Any:
        if value is None:
            if typ is None or typ in ("any", "value"):
                return None
            self.errorf(f"invalid value; expected {typ}")
        if typ is None or typ == "value":
            return value
        if typ == "any":
            return None if value is NIL_IFACE else value
        k = kind(value)
        want = {"string": "string", "int": "int", "bool": "bool", "float64": "float64"}.get(typ)
        if want is not None and k == want and not isinstance(value, (GoMap, GoStruct, GoNil)):
            return value
        self.errorf(f"wrong type for value; expected {typ}; got {type_name(value)}")

    def eval_arg(self, dot: Any, typ: str | None, n: P.Node) -> Any:
        self.node = n
        if isinstance(n, P.DotNode):
            return self.validate_type(dot, typ)
        if isinstance(n, P.NilNode):
            if typ in ("any", "value"):
                return None
            self.errorf(f"cannot assign nil to {typ}")
        if isinstance(n, P.FieldNode):
            return self.validate_type(self.eval_field_node(dot, n, [n], _MISSING), typ)
        if isinstance(n, P.VariableNode):
            return self.validate_type(self.eval_variable_node(dot, n, None, _MISSING), typ)
        if isinstance(n, P.PipeNode):
            return self.validate_type(self.eval_pipeline(dot, n), typ)
        if isinstance(n, P.IdentifierNode):
            return self.validate_type(self.eval_function(dot, n, n, None, _MISSING), typ)
        if isinstance(n, P.ChainNode):
            return self.validate_type(self.eval_chain_node(dot, n, None, _MISSING), typ)
        if typ == "bool":
            if isinstance(n, P.BoolNode):
                return n.value
            self.errorf(f"expected bool; found {n}")
        if typ == "float64":
            if isinstance(n, P.NumberNode) and n.is_float:
                return n.float64
            self.errorf(f"expected float; found {n}")
        if typ == "int":
            if isinstance(n, P.NumberNode) and n.is_int:
                return n.int64
            self.errorf(f"expected integer; found {n}")
        if typ == "string":
            if isinstance(n, P.StringNode):
                return n.text
            self.errorf(f"expected string; found {n}")
        if typ in ("any", "value"):
            return self.eval_empty_interface(dot, n)
        self.errorf(f"can't handle {n} for arg of type {typ}")

    def eval_empty_interface(self, dot: Any, n: P.Node) -> Any:
        self.node = n
        if isinstance(n, P.BoolNode):
            return n.value
        if isinstance(n, P.NumberNode):
            return self.ideal_constant(n)
        if isinstance(n, P.StringNode):
            return n.text
        self.errorf(f"can't handle assignment of {n} to empty interface argument")

    # -- printing --------------------------------------------------------------------------------
    def print_value(self, node: P.Node, v: Any) -> None:
        self.node = node
        pv, ok = printable_value(v)
        if not ok:
            self.errorf(f"can't print {node} of type {type_name(v)}")
        self.out.append(sprint([pv]))


def _iface_container(v: Any) -> bool:
    """Whether values read out of v by field name have Go's static type interface {}."""
    if isinstance(v, GoMap):
        return v.elem_zero() is NIL_IFACE
    return isinstance(v, dict)


def sprint_v(v: Any) -> str:
    """%v of a value, as in Go's error messages."""
    from .gofmt import _Printer
    p = _Printer()
    if v is None:
        return "<invalid reflect.Value>"
    p.print_arg(v, "v") if not isinstance(v, GoStruct) else p.print_value(v, "v", 0)
    return "".join(p.buf)
