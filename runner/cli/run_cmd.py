"""`lm run MODEL [PROMPT]`: a one-shot answer, or an interactive chat as Ollama's REPL offers."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field

from runner.cli.client import Client, ClientError
from runner.cli.format import go_duration


@dataclass
class RunOptions:
    verbose: bool = False
    keepalive: str | None = None
    format: str | None = None
    wordwrap: bool = True
    think: bool | str | None = None
    hidethinking: bool = False
    options: dict = field(default_factory=dict)
    system: str | None = None
    truncate: bool | None = None  # embedding models: None leaves the server's default (true)
    dimensions: int = 0  # embedding models: 0 keeps every dimension


THINK_LEVELS = ("high", "medium", "low", "max")


def parse_think(value: str) -> bool | str:
    """--think's value as Ollama's flag takes it: bare --think (given here as "true"), true, false or a level."""
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    if value in THINK_LEVELS:
        return value
    raise ClientError(f'invalid value for --think: "{value}" (must be true, false, high, medium, low, or max)')


_GO_TRUE, _GO_FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


def parse_truncate(value: str) -> bool:
    """--truncate's value: a boolean flag that also takes =true / =false, as Go's flag package parses it."""
    if value in _GO_TRUE or value in _GO_FALSE:
        return value in _GO_TRUE
    raise ClientError(f'invalid value for --truncate: "{value}" (must be true or false)')


# Flags that may stand alone or take "=value" (Go's NoOptDefVal and boolean flags): alone they mean true.
# A bare one is written "--flag=true" before click parses, so that the word after it stays the prompt.
OPTIONAL_VALUE_FLAGS = ("--think", "--truncate")


def expand_optional_flags(argv: list[str]) -> list[str]:
    """argv of `lm run` with each bare --think / --truncate as --think=true (a "--" ends the options)."""
    if not argv or argv[0] != "run":
        return argv
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg in OPTIONAL_VALUE_FLAGS:
            out[i] = arg + "=true"
    return out


class _Wrapper:
    """Writes streamed text, breaking lines at word boundaries before the terminal's edge."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stdout.isatty()
        self.width = shutil.get_terminal_size((80, 24)).columns
        self.col = 0
        self.word = ""

    def write(self, text: str) -> None:
        if not self.enabled:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        for ch in text:
            if ch == "\n":
                sys.stdout.write(self.word + "\n")
                self.col, self.word = 0, ""
            elif ch == " ":
                self._emit_word()
                if self.col < self.width - 1:
                    sys.stdout.write(" ")
                    self.col += 1
            else:
                self.word += ch
        sys.stdout.flush()

    def _emit_word(self) -> None:
        if self.col + len(self.word) >= self.width:
            sys.stdout.write("\n")
            self.col = 0
        sys.stdout.write(self.word)
        self.col += len(self.word)
        self.word = ""

    def close(self) -> None:
        if self.enabled:
            self._emit_word()
        sys.stdout.flush()


def print_stats(final: dict) -> None:
    """Ollama's --verbose block (api.Metrics.Summary): each line only where its value is set."""
    count, ns = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0)
    eval_count, eval_ns = final.get("eval_count", 0), final.get("eval_duration", 0)
    lines = []
    if final.get("total_duration", 0) > 0:
        lines.append(f"total duration:       {go_duration(final['total_duration'])}")
    if final.get("load_duration", 0) > 0:
        lines.append(f"load duration:        {go_duration(final['load_duration'])}")
    if count > 0:
        lines.append(f"prompt eval count:    {count} token(s)")
    if ns > 0:
        lines.append(f"prompt eval duration: {go_duration(ns)}")
        lines.append(f"prompt eval rate:     {count / (ns / 1e9):.2f} tokens/s")
    if eval_count > 0:
        lines.append(f"eval count:           {eval_count} token(s)")
    if eval_ns > 0:
        lines.append(f"eval duration:        {go_duration(eval_ns)}")
        lines.append(f"eval rate:            {eval_count / (eval_ns / 1e9):.2f} tokens/s")
    drafted = final.get("draft_count")
    if isinstance(drafted, int):  # lm's own line: the request speculated (runner/engine/speculative.py)
        accepted = final.get("draft_accepted_count") or 0
        rate = f" ({100 * accepted / drafted:.1f}%)" if drafted else ""
        lines.append(f"draft acceptance:     {accepted}/{drafted} token(s){rate}")
    sys.stderr.write("".join(line + "\n" for line in lines))


GREY, BOLD, DEFAULT = "\033[38;5;245m", "\033[1m", "\033[0m"


class _Thinking:
    """Shows thinking as Ollama's CLI does: under a "Thinking..." header, greyed on a terminal, closed by
    "...done thinking." when the answer proper starts; --hidethinking shows none of it."""

    def __init__(self, opts: RunOptions):
        self.hidden = opts.hidethinking
        self.color = sys.stdout.isatty()
        self.open = False
        self.text = ""

    def _write(self, plain: str, styled: str) -> None:
        sys.stdout.write(styled if self.color else plain)
        sys.stdout.flush()

    def show(self, out: "_Wrapper", thinking: str) -> None:
        if not thinking or self.hidden:
            return
        if not self.open:
            self._write("Thinking...\n", GREY + BOLD + "Thinking...\n" + DEFAULT + GREY)
            self.open = True
        self.text += thinking
        out.write(thinking)

    def close(self, out: "_Wrapper") -> bool:
        """Ends the thinking block if one is open; True when it did (the caller starts a fresh line state)."""
        if not self.open:
            return False
        out.close()
        if not self.text.endswith("\n"):
            sys.stdout.write("\n")
        self._write("...done thinking.\n\n", GREY + BOLD + "...done thinking.\n\n" + DEFAULT)
        self.open = False
        return True


def _tool_calls_text(calls: list[dict], color: bool) -> str:
    # The CLI registers no tools, so any call is to a function that does not exist (Ollama's wording).
    grey, plain = (GREY + BOLD, DEFAULT) if color else ("", "")
    lines = [f"  Model called a non-existent function '{plain}{c['function']['name']}{grey}()' with arguments: "
             f"{plain}{json.dumps(c['function'].get('arguments', {}))}{grey}" for c in calls]
    return grey + "\n".join(lines) + (DEFAULT if color else "")


def chat_once(client: Client, model: str, messages: list[dict], opts: RunOptions) -> str:
    body: dict = {"model": model, "messages": messages, "stream": True}
    if opts.options:
        body["options"] = opts.options
    if opts.format:
        body["format"] = opts.format
    if opts.keepalive:
        body["keep_alive"] = opts.keepalive
    if opts.think is not None:
        body["think"] = opts.think
    out = _Wrapper(opts.wordwrap)
    thinking = _Thinking(opts)
    reply = []
    final = {}
    try:
        for chunk in client.stream("/api/chat", body):
            msg = chunk.get("message", {})
            thinking.show(out, msg.get("thinking", ""))
            if (msg.get("content") or msg.get("tool_calls")) and thinking.close(out):
                out = _Wrapper(opts.wordwrap)
            if msg.get("content"):
                reply.append(msg["content"])
                out.write(msg["content"])
            if msg.get("tool_calls"):
                out.close()
                sys.stdout.write(_tool_calls_text(msg["tool_calls"], thinking.color) + "\n")
            if chunk.get("done"):
                final = chunk
    finally:
        out.close()
        if thinking.open and thinking.color:
            sys.stdout.write(DEFAULT)  # the answer ended while thinking: leave the terminal's colour as it was
    shown = "".join(reply) or (thinking.text if thinking.open else "")
    sys.stdout.write("\n" if shown and not shown.endswith("\n") else "")
    sys.stdout.write("\n" if sys.stdout.isatty() else "")
    if opts.verbose and final:
        print_stats(final)
    return "".join(reply)


def _capabilities(client: Client, model: str) -> list[str]:
    return client.json("POST", "/api/show", {"model": model}).get("capabilities") or []  # 404: "not found"


def _print_embedding(client: Client, model: str, text: str, opts: RunOptions) -> None:
    """An embedding model answers with its vector, printed as a JSON array (as Ollama's CLI does)."""
    body: dict = {"model": model, "input": text}
    if opts.keepalive:
        body["keep_alive"] = opts.keepalive
    if opts.truncate is not None:
        body["truncate"] = opts.truncate
    if opts.dimensions:
        body["dimensions"] = opts.dimensions
    embeddings = client.json("POST", "/api/embed", body).get("embeddings") or []
    if not embeddings:
        raise ClientError("no embeddings returned")
    print(json.dumps(embeddings[0]))


def run_model(client: Client, model: str, prompt: str | None, opts: RunOptions) -> None:
    caps = _capabilities(client, model)
    if "embedding" in caps and "completion" not in caps:
        if not prompt:
            raise ClientError(f"{model} is an embedding model: give it text, e.g. lm run {model} \"some text\"")
        _print_embedding(client, model, prompt, opts)
        return
    if prompt is not None:
        chat_once(client, model, [{"role": "user", "content": prompt}], opts)
        return
    # Load the model before the first prompt, as Ollama does, so the first answer starts at once; think goes
    # with it so that a model that cannot think fails here, before the chat starts.
    body: dict = {"model": model}
    if opts.keepalive:
        body["keep_alive"] = opts.keepalive
    if opts.think is not None:
        body["think"] = opts.think
    client.json("POST", "/api/generate", body)
    from runner.cli.repl import Repl

    Repl(client, model, opts).loop()


__all__ = ["RunOptions", "chat_once", "parse_think", "parse_truncate", "print_stats", "run_model"]
