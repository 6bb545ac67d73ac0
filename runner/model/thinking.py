"""Thinking in a streamed answer: a think block at the very start (Ollama's thinking/parser.go) split
from the content, piece by piece, holding back text that may still become a tag."""

from __future__ import annotations

from runner.model.template_tags import partial_tag_len

THINK_LEVELS = ("high", "medium", "low", "max")
DEFAULT_THINK_TAGS = ("<think>", "</think>")


def think_enabled(think) -> bool:
    """Ollama's ThinkValue.Bool: true, or any level, turns thinking on."""
    return think is True or (isinstance(think, str) and think in THINK_LEVELS)

class ThinkSplitter:
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
            keep = partial_tag_len(acc, self.close)  # may be the closing tag: hold it back
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
