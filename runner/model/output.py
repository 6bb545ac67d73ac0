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

from dataclasses import dataclass, field

from runner.model.template_tags import output_tags
from runner.model.thinking import DEFAULT_THINK_TAGS, ThinkSplitter, think_enabled
from runner.model.tool_calls import ToolCallParser

__all__ = ["ChatOutputParser", "Delta"]


@dataclass
class Delta:
    """What one piece of model text adds to the answer."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


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
            self._think = ThinkSplitter(open_tag, close_tag)
            if prompt.strip().endswith(open_tag):
                self._think.feed(open_tag)
        self._tools = ToolCallParser(tags.tool_prefix, tools) if tools else None

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
