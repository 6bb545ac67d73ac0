"""`lm run MODEL [PROMPT]`: a one-shot answer, or an interactive chat as Ollama's REPL offers."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field

from .client import Client, ClientError

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message."""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set think             Enable thinking
  /set nothink           Disable thinking"""


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


def _rate(count: int, ns: int) -> str:
    return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "0.00 tokens/s"


def print_stats(final: dict) -> None:
    def dur(ns: int) -> str:
        s = ns / 1e9
        return f"{s * 1000:.6f}ms" if s < 1 else f"{s:.6f}s"

    lines = [
        f"total duration:       {dur(final.get('total_duration', 0))}",
        f"load duration:        {dur(final.get('load_duration', 0))}",
        f"prompt eval count:    {final.get('prompt_eval_count', 0)} token(s)",
        f"prompt eval duration: {dur(final.get('prompt_eval_duration', 0))}",
        f"prompt eval rate:     {_rate(final.get('prompt_eval_count', 0), final.get('prompt_eval_duration', 0))}",
        f"eval count:           {final.get('eval_count', 0)} token(s)",
        f"eval duration:        {dur(final.get('eval_duration', 0))}",
        f"eval rate:            {_rate(final.get('eval_count', 0), final.get('eval_duration', 0))}",
    ]
    sys.stderr.write("\n".join(lines) + "\n")


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


def _chat_once(client: Client, model: str, messages: list[dict], opts: RunOptions) -> str:
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
    body = {"model": model, "input": text, **({"keep_alive": opts.keepalive} if opts.keepalive else {})}
    print(json.dumps(client.json("POST", "/api/embed", body)["embeddings"][0]))


def run_model(client: Client, model: str, prompt: str | None, opts: RunOptions) -> None:
    caps = _capabilities(client, model)
    if "embedding" in caps and "completion" not in caps:
        if not prompt:
            raise ClientError(f"{model} is an embedding model: give it text, e.g. lm run {model} \"some text\"")
        _print_embedding(client, model, prompt, opts)
        return
    if prompt is not None:
        _chat_once(client, model, [{"role": "user", "content": prompt}], opts)
        return
    # Load the model before the first prompt, as Ollama does, so the first answer starts at once.
    client.json("POST", "/api/generate", {"model": model, **({"keep_alive": opts.keepalive} if opts.keepalive else {})})
    Repl(client, model, opts).loop()


class Repl:
    def __init__(self, client: Client, model: str, opts: RunOptions):
        self.client, self.model, self.opts = client, model, opts
        self.messages: list[dict] = []

    def _read(self) -> str | None:
        try:
            line = input(">>> ")
        except EOFError:
            return None
        if line.strip().startswith('"""'):
            parts = [line.strip()[3:]]
            while not parts[-1].rstrip().endswith('"""') or len(parts) == 1 and parts[0].rstrip() == "":
                try:
                    parts.append(input("... "))
                except EOFError:
                    return None
                if parts[-1].rstrip().endswith('"""'):
                    break
            text = "\n".join(parts)
            return text.rstrip()[:-3] if text.rstrip().endswith('"""') else text
        return line

    def loop(self) -> None:
        while True:
            try:
                line = self._read()
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.")
                continue
            if line is None:
                print()
                return
            if not line.strip():
                continue
            if line.startswith("/"):
                if self._command(line.strip()):
                    return
                continue
            self.messages.append({"role": "user", "content": line})
            msgs = ([{"role": "system", "content": self.opts.system}] if self.opts.system else []) + self.messages
            try:
                reply = _chat_once(self.client, self.model, msgs, self.opts)
            except KeyboardInterrupt:  # stop this answer, stay in the chat
                print()
                self.messages.pop()
                continue
            except ClientError as exc:
                print(f"Error: {exc}")
                self.messages.pop()
                continue
            self.messages.append({"role": "assistant", "content": reply})

    def _command(self, line: str) -> bool:
        """Handles a /command; True means leave."""
        args = line.split()
        cmd = args[0]
        if cmd in ("/bye", "/exit"):
            return True
        if cmd in ("/?", "/help"):
            print(SET_HELP if len(args) > 1 and args[1] == "set" else HELP)
        elif cmd == "/clear":
            self.messages.clear()
            print("Cleared session context")
        elif cmd == "/set":
            self._set(line, args)
        elif cmd == "/show":
            self._show(args)
        elif cmd == "/load" and len(args) == 2:
            try:
                _ensure_model(self.client, args[1])
            except ClientError as exc:
                print(f"Error: {exc}")
                return False
            self.model = args[1]
            self.messages.clear()
            print(f"Loading model '{self.model}'")
        elif cmd == "/save" and len(args) == 2:
            self._save(args[1])
        else:
            print(f"Unknown command '{cmd}'. Type /? for help")
        return False

    def _set(self, line: str, args: list[str]) -> None:
        if len(args) < 2:
            print(SET_HELP)
            return
        what = args[1]
        if what == "parameter" and len(args) >= 4:
            name, raw = args[2], " ".join(args[3:])
            from modelfiles import OptionError, parse_parameter

            try:
                value = parse_parameter(name, raw)
            except OptionError as exc:
                print(f"Couldn't set parameter: {exc}")
                return
            if name == "stop":
                self.opts.options.setdefault("stop", []).append(value if isinstance(value, str) else value[0])
            else:
                self.opts.options[name] = value
            print(f"Set parameter '{name}' to '{raw}'")
        elif what == "system":
            self.opts.system = line.split(None, 2)[2].strip().strip('"') if len(args) > 2 else ""
            print("Set system message.")
        elif what in ("verbose", "quiet"):
            self.opts.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            self.opts.wordwrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif what == "think":
            self.opts.think = args[2] if len(args) > 2 else True  # a level; the server checks it
            print(f"Set 'think' mode to '{args[2]}'." if len(args) > 2 else "Set 'think' mode.")
        elif what == "nothink":
            self.opts.think = False
            print("Set 'nothink' mode.")
        elif what == "format" and len(args) > 2:
            self.opts.format = args[2]
            print(f"Set format to '{args[2]}' mode.")
        elif what == "noformat":
            self.opts.format = None
            print("Disabled format.")
        else:
            print(SET_HELP)

    def _show(self, args: list[str]) -> None:
        from .show_cmd import print_show

        try:
            info = self.client.json("POST", "/api/show", {"model": self.model})
        except ClientError as exc:
            print(f"Error: {exc}")
            return
        what = args[1] if len(args) > 1 else "info"
        if what == "info":
            print_show(info)
        elif what in ("license", "modelfile", "parameters", "system", "template"):
            print(info.get(what, "") or f"No {what} was specified for this model.")
        else:
            print("Available: /show info|license|modelfile|parameters|system|template")

    def _save(self, name: str) -> None:
        body = {"model": name, "from": self.model, "messages": self.messages}
        if self.opts.system:
            body["system"] = self.opts.system
        if self.opts.options:
            body["parameters"] = self.opts.options
        try:
            for _ in self.client.stream("/api/create", body):
                pass
        except ClientError as exc:
            print(f"Error: {exc}")
            return
        print(f"Created new model '{name}'")


__all__ = ["RunOptions", "run_model", "json"]
