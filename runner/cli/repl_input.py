"""Line input for the REPL: prompt_toolkit's editor on a terminal, a plain line reader elsewhere.

On a terminal the arrow keys edit the line and walk the history, Tab completes the `/` commands, and
the history is kept across sessions in the user's data dir (LM_NOHISTORY / OLLAMA_NOHISTORY keep it
from being written, as Ollama's OLLAMA_NOHISTORY does). prompt_toolkit is imported only here, when an
interactive session starts, so the other commands start as fast as before.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

from runner.settings import setting

PLACEHOLDER = "Send a message (/? for help)"  # Ollama's readline placeholders
ALT_PLACEHOLDER = "Press Enter to send"

COMMANDS = ("/set", "/show", "/load", "/save", "/clear", "/list", "/bye", "/exit", "/help", "/?")
SUBCOMMANDS = {
    "/set": ("parameter", "system", "history", "nohistory", "wordwrap", "nowordwrap", "format", "noformat",
             "verbose", "quiet", "think", "nothink"),
    "/show": ("info", "license", "modelfile", "parameters", "system", "template"),
    "/help": ("set", "show", "shortcuts"),
    "/?": ("set", "show", "shortcuts"),
}


class LineInterrupted(KeyboardInterrupt):
    """Ctrl-C at the prompt; `line` is what had been typed (Ollama hints how to leave only when it is empty)."""

    def __init__(self, line: str = ""):
        super().__init__()
        self.line = line


def history_path() -> Path:
    return Path(platformdirs.user_data_dir("lm")) / "history"


def history_saved() -> bool:
    return not setting("NOHISTORY")


def completions(text: str) -> list[str]:
    """What Tab may put in place of the last word of `text` (the text before the cursor)."""
    if not text.startswith("/"):
        return []
    words = text.split(" ")
    if len(words) == 1:
        return [c for c in COMMANDS if c.startswith(text)]
    if len(words) == 2:
        return [s for s in SUBCOMMANDS.get(words[0], ()) if s.startswith(words[1])]
    return []


class PlainReader:
    """Lines from a stdin that is not a terminal (or a terminal whose output is redirected)."""

    history_enabled = False

    def read(self, prompt: str, alt: bool = False) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")


class TerminalReader:
    """prompt_toolkit's line editor: emacs keys, history, Tab completion, Ollama's grey placeholder."""

    def __init__(self, save_history: bool):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.application import get_app
        from prompt_toolkit.completion import Completer, Completion
        from prompt_toolkit.formatted_text import FormattedText
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        class CommandCompleter(Completer):
            def get_completions(self, document, complete_event):
                before = document.text_before_cursor
                word = before.split(" ")[-1]
                for choice in completions(before):
                    yield Completion(choice, start_position=-len(word))

        class SessionHistory(FileHistory):
            """The history file, read at start; lines are written only while saving is on (/set nohistory)."""

            def __init__(self, path: Path, save: bool):
                self.save = save
                super().__init__(str(path))

            def store_string(self, string: str) -> None:
                if not self.save:
                    return
                try:
                    path = Path(self.filename)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.close(os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))  # private, as Ollama's
                    super().store_string(string)
                except OSError:
                    self.save = False  # a read-only or full disk loses the history, never the chat

        keys = KeyBindings()

        @keys.add("c-c")
        def _interrupt(event) -> None:
            event.app.exit(exception=LineInterrupted(event.current_buffer.text), style="class:aborting")

        def grey_while_editing(text: str):
            # Shown in an empty line while it is edited, not left on the screen once the line is done.
            return lambda: [] if get_app().is_done else FormattedText([("fg:#8a8a8a", text)])

        self._placeholders = {False: grey_while_editing(PLACEHOLDER), True: grey_while_editing(ALT_PLACEHOLDER)}
        self.history = SessionHistory(history_path(), save_history)
        self.session = PromptSession(history=self.history, completer=CommandCompleter(),
                                     complete_while_typing=False, key_bindings=keys, enable_open_in_editor=False)

    @property
    def history_enabled(self) -> bool:
        return self.history.save

    @history_enabled.setter
    def history_enabled(self, on: bool) -> None:
        self.history.save = on

    def read(self, prompt: str, alt: bool = False) -> str:
        return self.session.prompt(prompt, placeholder=self._placeholders[alt])


def make_reader() -> PlainReader | TerminalReader:
    if sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        return TerminalReader(history_saved())
    return PlainReader()
