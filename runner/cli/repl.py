"""The interactive chat of `lm run MODEL` (no prompt), as Ollama's REPL: /commands, \"\"\" multi-line input,
Ctrl-C stops an answer (or, at the prompt, hints how to leave), Ctrl-D or /bye leaves."""

from __future__ import annotations

import sys

from runner.cli.client import Client, ClientError
from runner.cli.format import models_table
from runner.cli.repl_input import LineInterrupted, PlainReader, TerminalReader, make_reader

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /list           List models
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

SHORTCUTS_HELP = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit lm (/bye)
"""

PARAMETERS_HELP = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

QUOTES = '"""'
EXIT_HINT = "Use Ctrl + d or /bye to exit."


class Repl:
    def __init__(self, client: Client, model: str, opts, reader: PlainReader | TerminalReader | None = None):
        self.client, self.model, self.opts = client, model, opts
        self.reader = reader or make_reader()
        self.messages: list[dict] = []

    # -- input ----------------------------------------------------------------------------------
    def _rest_of_multiline(self, first: str) -> str:
        """The text of a \"\"\" block whose first line (quotes cut) is `first`: lines up to one ending in \"\"\"."""
        if first.endswith(QUOTES):
            return first[:-3]
        lines = [first]
        while True:
            line = self.reader.read("... ", alt=True)
            if line.endswith(QUOTES):
                lines.append(line[:-3])
                return "\n".join(lines)
            lines.append(line)

    def _read(self) -> tuple[str, bool]:
        """(text, is_message): a \"\"\" block is always a message, even when it starts with '/'."""
        line = self.reader.read(">>> ")
        if line.startswith(QUOTES):
            return self._rest_of_multiline(line[3:]), True
        return line, not line.startswith("/")

    def loop(self) -> None:
        while True:
            try:
                text, is_message = self._read()
            except EOFError:
                if isinstance(self.reader, PlainReader):
                    print()  # the line editor has already ended the line
                return
            except LineInterrupted as exc:
                if not exc.line:
                    print(EXIT_HINT)
                continue
            except KeyboardInterrupt:  # the plain reader cannot tell what was typed
                print("\n" + EXIT_HINT)
                continue
            try:
                if not is_message:
                    if self._command(text.strip()):
                        return
                elif text.strip():
                    self._send(text)
            except KeyboardInterrupt:  # Ctrl-C stops this answer (or command), not the chat
                print()

    def _send(self, text: str) -> None:
        from runner.cli.run_cmd import chat_once

        self.messages.append({"role": "user", "content": text})
        system = [{"role": "system", "content": self.opts.system}] if self.opts.system else []
        try:
            reply = chat_once(self.client, self.model, system + self.messages, self.opts)
        except (ClientError, KeyboardInterrupt) as exc:
            self.messages.pop()  # the question was not answered: it leaves the context
            if isinstance(exc, KeyboardInterrupt):
                raise
            print(f"Error: {exc}")
            return
        self.messages.append({"role": "assistant", "content": reply})

    # -- commands -------------------------------------------------------------------------------
    def _command(self, line: str) -> bool:
        """Handles a /command; True means leave."""
        args = line.split()
        cmd = args[0]
        if cmd in ("/bye", "/exit"):
            return True
        if cmd in ("/?", "/help"):
            topic = args[1].lstrip("/") if len(args) > 1 else ""
            print({"set": SET_HELP, "show": SHOW_HELP, "shortcut": SHORTCUTS_HELP,
                   "shortcuts": SHORTCUTS_HELP}.get(topic, HELP))
        elif cmd == "/clear":
            self.messages.clear()
            print("Cleared session context")
        elif cmd == "/list":
            self._list(args[1:])
        elif cmd == "/set":
            self._set(line, args)
        elif cmd == "/show":
            self._show(args)
        elif cmd == "/load":
            self._load(args)
        elif cmd == "/save":
            self._save(args)
        else:
            print(f"Unknown command '{cmd}'. Type /? for help")
        return False

    def _list(self, prefixes: list[str]) -> None:
        try:
            models = self.client.json("GET", "/api/tags").get("models", [])
        except ClientError as exc:
            print(f"Error: {exc}")
            return
        print(models_table([m for m in models if not prefixes or m["name"].startswith(prefixes[0])]))

    def _set(self, line: str, args: list[str]) -> None:
        if len(args) < 2:
            print(SET_HELP)
            return
        what = args[1]
        if what == "parameter":
            self._set_parameter(args)
        elif what == "system":
            self._set_system(line)
        elif what in ("history", "nohistory"):
            self.reader.history_enabled = what == "history"  # as Ollama: silently
        elif what in ("verbose", "quiet"):
            self.opts.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            self.opts.wordwrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif what == "think":
            self.opts.think = args[2] if len(args) > 2 else True  # a level; the server checks it, as Ollama's
            self._warn_without_thinking()
            print(f"Set 'think' mode to '{args[2]}'." if len(args) > 2 else "Set 'think' mode.")
        elif what == "nothink":
            self.opts.think = False
            self._warn_without_thinking()
            print("Set 'nothink' mode.")
        elif what == "format":
            if len(args) < 3 or args[2] != "json":
                print("Invalid or missing format. For 'json' mode use '/set format json'")
            else:
                self.opts.format = args[2]
                print(f"Set format to '{args[2]}' mode.")
        elif what == "noformat":
            self.opts.format = None
            print("Disabled format.")
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")

    def _set_parameter(self, args: list[str]) -> None:
        if len(args) < 4:
            print(PARAMETERS_HELP)
            return
        from modelfiles import OptionError, parse_parameter

        name, raw = args[2], " ".join(args[3:])
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

    def _set_system(self, line: str) -> None:
        parts = line.split(None, 2)
        if len(parts) < 3:
            print(SET_HELP)
            return
        text = parts[2]
        if text.startswith(QUOTES):
            text = self._rest_of_multiline(text[3:])
        self.opts.system = text
        print("Set system message.")

    def _warn_without_thinking(self) -> None:
        """Ollama warns at once when the model cannot think; the request would fail later."""
        try:
            caps = self.client.json("POST", "/api/show", {"model": self.model}).get("capabilities") or []
        except ClientError:
            return
        if "thinking" not in caps:
            sys.stderr.write(f'warning: model "{self.model}" does not support thinking output\n')

    def _show(self, args: list[str]) -> None:
        from runner.cli.show_cmd import print_show

        if len(args) < 2:
            print(SHOW_HELP)
            return
        try:
            info = self.client.json("POST", "/api/show", {"model": self.model})
        except ClientError as exc:
            print(f"Error: {exc}")
            return
        what = args[1]
        if what == "info":
            print_show(info)
        elif what == "parameters":
            print("Model defined parameters:")
            params = info.get("parameters") or ""
            for row in params.splitlines() or ["No additional parameters were specified for this model."]:
                print(f"  {row}")
            print()
            if self.opts.options:
                print("User defined parameters:")
                for name, value in self.opts.options.items():
                    print(f"  {name:<30} {value}")
                print()
        elif what == "system":
            system = self.opts.system or info.get("system")
            print(f"{system}\n" if system else "No system message was specified for this model.")
        elif what in ("license", "template", "modelfile"):
            missing = {"license": "No license was specified for this model.",
                       "template": "No prompt template was specified for this model."}
            print(info.get(what) or missing.get(what, ""))
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")

    def _load(self, args: list[str]) -> None:
        if len(args) != 2:
            print("Usage:\n  /load <modelname>")
            return
        name = args[1]
        print(f"Loading model '{name}'")
        body = {"model": name, **({"keep_alive": self.opts.keepalive} if self.opts.keepalive else {})}
        if self.opts.think is not None:
            body["think"] = self.opts.think
        try:
            self.client.json("POST", "/api/show", {"model": name})
            self.client.json("POST", "/api/generate", body)
        except ClientError as exc:
            print(f"Couldn't find model '{name}'" if exc.status == 404 else f"error: {exc}")
            return
        self.model = name
        self.messages.clear()

    def _save(self, args: list[str]) -> None:
        if len(args) != 2:
            print("Usage:\n  /save <modelname>")
            return
        name = args[1]
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
