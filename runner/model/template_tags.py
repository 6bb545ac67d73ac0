"""What a model's Go TEMPLATE says about its output: the tags it wraps thinking in, and the text it writes
before tool calls (read from the parsed template, as Ollama's thinking/template.go and tools/template.go do)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from modelfiles import TemplateError
from modelfiles.gotemplate import Template as GoTemplate
from modelfiles.gotemplate import nodes as P
from modelfiles.prompt import OLLAMA_FUNCS

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


def partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest end of text that is a start of tag: streamed text that may become the tag,
    so it is held back until the next piece decides."""
    for n in range(min(len(text), len(tag)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
