"""`lm run`'s interactive chat driven through a pseudo-terminal (pexpect), and the run flags Ollama has:
--think[=level], --verbose's stats block, --truncate / --dimensions for embedding models.

Keys are sent as a terminal sends them: arrows as escape sequences, Ctrl-C as \\x03, Ctrl-D as \\x04.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.conftest import REPO
from tests.test_chat_capabilities import FEW_SHOT, models  # noqa: F401 (fixture)
from tests.test_embed import all_minilm  # noqa: F401 (fixture)

from runner.cli.format import go_duration
from runner.cli.repl_input import completions
from runner.cli.run_cmd import expand_optional_flags

UP, LEFT, BACKSPACE, TAB, CTRL_C, CTRL_D = "\x1b[A", "\x1b[D", "\x7f", "\t", "\x03", "\x04"
PROMPT = ">>> "


def spawn_repl(daemon, model: str, data_home: Path, *args: str, env: dict | None = None) -> pexpect.spawn:
    """`lm run MODEL` on a pseudo-terminal, its history under `data_home` (XDG_DATA_HOME)."""
    child = pexpect.spawn(sys.executable, ["-m", "runner.cli", "run", model, *args], cwd=str(REPO),
                          env={**daemon.env, "XDG_DATA_HOME": str(data_home), "TERM": "xterm",
                               # pexpect is no terminal emulator: it cannot answer a cursor position request
                               "PROMPT_TOOLKIT_NO_CPR": "1", **(env or {})},
                          encoding="utf-8", timeout=120, dimensions=(40, 200))
    return child


def command(child: pexpect.spawn, line: str, answer: str) -> None:
    """Types `line` at the prompt and waits for `answer`, then for the next prompt."""
    child.send(line + "\r")
    child.expect_exact(answer)
    child.expect_exact(PROMPT)


def leave(child: pexpect.spawn) -> None:
    child.send(CTRL_D)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def history_lines(data_home: Path) -> list[str]:
    path = data_home / "lm" / "history"
    return [line[1:] for line in path.read_text().splitlines() if line.startswith("+")] if path.exists() else []


# -- line editing and history ------------------------------------------------------------------------

def test_history_recalls_edits_and_persists(daemon, tiny, tmp_path):
    data = tmp_path / "data"
    child = spawn_repl(daemon, tiny, data)
    child.expect_exact(PROMPT)
    command(child, "/set system abcd", "Set system message.")
    # Up recalls the line; Left moves before "d"; Backspace deletes "c": the edited line is sent.
    child.send(UP + LEFT + BACKSPACE + "\r")
    child.expect_exact("Set system message.")
    child.expect_exact(PROMPT)
    command(child, "/show system", "abd\r\n")
    leave(child)
    assert history_lines(data) == ["/set system abcd", "/set system abd", "/show system"]

    # A second session walks the first one's history: Up twice is "/set system abd".
    child = spawn_repl(daemon, tiny, data)
    child.expect_exact(PROMPT)
    child.send(UP + UP + "\r")
    child.expect_exact("Set system message.")
    child.expect_exact(PROMPT)
    command(child, "/show system", "abd\r\n")
    leave(child)
    assert history_lines(data)[-2:] == ["/set system abd", "/show system"]


@pytest.mark.parametrize("variable", ["LM_NOHISTORY", "OLLAMA_NOHISTORY"])
def test_nohistory_writes_nothing(daemon, tiny, tmp_path, variable):
    data = tmp_path / "data"
    child = spawn_repl(daemon, tiny, data, env={variable: "1"})
    child.expect_exact(PROMPT)
    command(child, "/set system kept in memory", "Set system message.")
    child.send(UP + "\r")  # the session's own lines are still there to recall
    child.expect_exact("Set system message.")
    child.expect_exact(PROMPT)
    leave(child)
    assert not (data / "lm" / "history").exists()


def test_set_nohistory_stops_writing(daemon, tiny, tmp_path):
    data = tmp_path / "data"
    child = spawn_repl(daemon, tiny, data)
    child.expect_exact(PROMPT)
    command(child, "/set wordwrap", "Set 'wordwrap' mode.")
    child.send("/set nohistory\r")
    child.expect_exact(PROMPT)
    command(child, "/set nowordwrap", "Set 'nowordwrap' mode.")
    leave(child)
    assert history_lines(data) == ["/set wordwrap", "/set nohistory"]


def test_plain_reader_when_output_is_not_a_terminal(daemon, tiny, tmp_path):
    """`lm run MODEL | cat`: no line editor on a pipe, a plain prompt and line reader (no history written)."""
    child = pexpect.spawn("bash", ["-c", f"{sys.executable} -m runner.cli run {tiny} | cat"], cwd=str(REPO),
                          env={**daemon.env, "XDG_DATA_HOME": str(tmp_path / "data"), "TERM": "xterm"},
                          encoding="utf-8", timeout=120)
    child.expect_exact(PROMPT)
    command(child, "/set parameter num_predict 3", "Set parameter")
    command(child, "/set verbose", "Set 'verbose' mode.")
    child.send('"""two\r')
    child.expect_exact("... ")
    child.send('lines"""\r')
    child.expect_exact("eval count:")
    child.expect_exact(PROMPT)
    assert "\x1b[" not in child.before  # no escape sequences: nothing drew on the terminal
    leave(child)
    assert not (tmp_path / "data" / "lm" / "history").exists()


def test_history_file_is_private(daemon, tiny, tmp_path):
    child = spawn_repl(daemon, tiny, tmp_path / "data")
    child.expect_exact(PROMPT)
    command(child, "/set quiet", "Set 'quiet' mode.")
    leave(child)
    assert ((tmp_path / "data" / "lm" / "history").stat().st_mode & 0o777) == 0o600


def test_tab_completion_list_and_load(daemon, tiny, tmp_path):
    child = spawn_repl(daemon, tiny, tmp_path / "data")
    child.expect_exact(PROMPT)
    # "/se" + Tab is "/set"; "verb" + Tab is "verbose". Each completion is waited for before typing on:
    # the screen shows the part that changed ("t", "ose"; or the whole line when drawn at once).
    child.send("/se" + TAB)
    child.expect_exact("t")
    child.send(" verb" + TAB)
    child.expect_exact("ose")
    child.send("\r")
    child.expect_exact("Set 'verbose' mode.")
    child.expect_exact(PROMPT)
    command(child, "/list", "tiny:latest")
    command(child, "/load no-such-model", "Couldn't find model 'no-such-model'")
    command(child, "/load tiny", "Loading model 'tiny'")
    command(child, "/bogus", "Unknown command '/bogus'. Type /? for help")
    child.send("/bye\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert history_lines(tmp_path / "data")[0] == "/set verbose"


def test_completions():
    assert completions("/se") == ["/set"]
    assert completions("/s") == ["/set", "/show", "/save"]
    assert completions("/set th") == ["think"]
    assert completions("/show mo") == ["modelfile"]
    assert completions("hello /se") == [] and completions("/set think hi") == []


# -- a chat with smollm2 and the commands (moved here from test_generate.py, now on pexpect) ----------------

def test_chat_remembers_and_commands_work(daemon, smollm2, tmp_path):
    child = spawn_repl(daemon, smollm2, tmp_path / "data")
    child.expect_exact(PROMPT)
    command(child, "/set parameter temperature 0", "Set parameter 'temperature' to '0'")
    command(child, "/set parameter num_predict 30", "Set parameter 'num_predict' to '30'")
    command(child, "/set parameter bogus 1", "Couldn't set parameter")
    child.send("My name is Ada. Please remember it.\r")
    child.expect_exact(PROMPT, timeout=300)
    child.send('"""What is\r')
    child.expect_exact("... ")
    child.send('my name?"""\r')
    child.expect_exact(PROMPT, timeout=300)
    assert "Ada" in child.before
    command(child, "/show parameters", "User defined parameters:")
    command(child, "/clear", "Cleared session context")
    command(child, "/?", "Available Commands")
    command(child, "/? set", "/set nothink           Disable thinking")
    child.send("/bye\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# -- messages: multi-line, Ctrl-C, Ctrl-D --------------------------------------------------------------

def test_multiline_message_is_one_message(daemon, tiny, tmp_path):
    child = spawn_repl(daemon, tiny, tmp_path / "data")
    child.expect_exact(PROMPT)
    command(child, "/set parameter num_predict 3", "Set parameter 'num_predict' to '3'")
    child.send('"""first line\r')
    child.expect_exact("... ")
    child.send("/not a command\r")
    child.expect_exact("... ")
    child.send('last line"""\r')
    child.expect_exact(PROMPT)
    command(child, "/save multiline-session", "Created new model 'multiline-session'")
    leave(child)
    status, show = daemon.post("/api/show", {"model": "multiline-session"})
    assert status == 200, show
    assert show["messages"][0] == {"role": "user", "content": "first line\n/not a command\nlast line"}
    assert show["messages"][1]["role"] == "assistant" and len(show["messages"]) == 2


def _active(d, model: str) -> float:
    _, text = d.get("/metrics")
    found = re.search(rf'^lm_requests_active\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_ctrl_c_stops_the_answer_not_the_chat(make_daemon, tiny_gguf, tmp_path):
    d = make_daemon({"LM_NUM_PARALLEL": "1"})  # one slot: an answer left running would hold it
    d.create_from_gguf("tiny", tiny_gguf)
    child = spawn_repl(d, "tiny", tmp_path / "data")
    child.expect_exact(PROMPT)
    command(child, "/set parameter num_predict 100000", "Set parameter")
    command(child, "/set parameter temperature 0", "Set parameter")  # greedy: no early end-of-text
    child.send("go\r")
    deadline = time.time() + 60
    while _active(d, "tiny:latest") < 1:
        assert time.time() < deadline, "the answer never started"
        time.sleep(0.1)
    time.sleep(1)  # the answer is streaming
    child.send(CTRL_C)
    child.expect_exact(PROMPT, timeout=20)
    deadline = time.time() + 10
    while _active(d, "tiny:latest") > 0:  # the daemon stopped generating: the stream was closed
        assert time.time() < deadline, "the daemon kept generating after Ctrl-C"
        time.sleep(0.1)
    # The chat goes on: the next question is answered, with the stats block of /set verbose.
    command(child, "/set parameter num_predict 4", "Set parameter")
    command(child, "/set verbose", "Set 'verbose' mode.")
    child.send("hello\r")
    child.expect_exact("eval count:           4 token(s)")
    child.expect_exact(PROMPT)
    # Ctrl-C at an empty prompt only says how to leave; Ctrl-C with text typed drops the line.
    child.send(CTRL_C)
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(PROMPT)
    child.send("half typed" + CTRL_C)
    child.expect_exact(PROMPT)
    assert "Use Ctrl + d" not in child.before
    command(child, "/save after-ctrl-c", "Created new model 'after-ctrl-c'")
    leave(child)
    status, show = d.post("/api/show", {"model": "after-ctrl-c"})
    # The interrupted question left the context; the answered one is in it.
    assert [m["content"] for m in show["messages"] if m["role"] == "user"] == ["hello"]


# -- --verbose -------------------------------------------------------------------------------------

STAT_LINES = [
    ("total duration:       ", "duration"), ("load duration:        ", "duration"),
    ("prompt eval count:    ", "count"), ("prompt eval duration: ", "duration"), ("prompt eval rate:     ", "rate"),
    ("eval count:           ", "count"), ("eval duration:        ", "duration"), ("eval rate:            ", "rate"),
]
VALUE = {"duration": r"(\d+h)?(\d+m)?\d+(\.\d+)?(ns|µs|ms|s)", "count": r"\d+ token\(s\)",
         "rate": r"\d+\.\d\d tokens/s"}


def test_verbose_prints_ollamas_stats_block(daemon, smollm2):
    daemon.post("/api/generate", {"model": smollm2, "keep_alive": 0})  # unloaded: the load takes time
    r = daemon.cli("run", smollm2, "--verbose", "Say hi.")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == len(STAT_LINES), r.stderr
    for line, (label, kind) in zip(lines, STAT_LINES):
        assert line.startswith(label) and re.fullmatch(VALUE[kind], line[len(label):]), line


def test_go_duration():
    assert [go_duration(ns) for ns in (0, 999, 1500, 41_000, 12_345_678, 1_000_000_000, 1_500_000_000,
                                       62_500_000_000, 3_600_000_000_000, 3_723_000_000_001)] == [
        "0s", "999ns", "1.5µs", "41µs", "12.345678ms", "1s", "1.5s", "1m2.5s", "1h0m0s", "1h2m3.000000001s"]


# -- --think ---------------------------------------------------------------------------------------

def test_think_flag_reaches_the_daemon(daemon, smollm2, models):  # noqa: F811
    refused = 'Error: "smollm2:135m" does not support thinking\n'
    for flag in ("--think", "--think=true", "--think=high", "--think=max"):
        r = daemon.cli("run", smollm2, flag, "hi")  # bare --think leaves "hi" the prompt, as Ollama's flag
        assert (r.returncode, r.stderr) == (1, refused), flag
    r = daemon.cli("run", smollm2, "--think=bogus", "hi")
    assert (r.returncode, r.stderr) == (1, 'Error: invalid value for --think: "bogus" (must be true, false, high, '
                                           'medium, low, or max)\n')
    # A thinking model: --think shows the thinking, --think=false (and --nothink) turn it off.
    shown = daemon.cli("run", models["think"], "--think", FEW_SHOT)
    assert shown.returncode == 0 and shown.stdout.startswith("Thinking...\n"), shown.stderr
    for flag in ("--think=false", "--nothink"):
        off = daemon.cli("run", models["think"], flag, FEW_SHOT)
        assert off.returncode == 0 and "Thinking..." not in off.stdout and off.stdout.strip(), off.stderr


def test_think_in_the_repl(daemon, tiny, tmp_path):
    # --think on a model that cannot think fails before the chat starts, as Ollama's does.
    child = spawn_repl(daemon, tiny, tmp_path / "data", "--think")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and 'Error: "tiny" does not support thinking' in child.before
    child = spawn_repl(daemon, tiny, tmp_path / "data")
    child.expect_exact(PROMPT)
    command(child, "/set parameter num_predict 2", "Set parameter")
    child.send("/set think high\r")
    child.expect_exact('warning: model "tiny" does not support thinking output')
    child.expect_exact("Set 'think' mode to 'high'.")
    child.expect_exact(PROMPT)
    command(child, "hello", 'Error: "tiny" does not support thinking')
    command(child, "/set nothink", "Set 'nothink' mode.")
    command(child, "/set verbose", "Set 'verbose' mode.")
    command(child, "hello", "eval count:           2 token(s)")
    leave(child)


def test_expand_optional_flags():
    assert expand_optional_flags(["run", "m", "--think", "hi"]) == ["run", "m", "--think=true", "hi"]
    assert expand_optional_flags(["run", "m", "--think=low", "--truncate"]) == ["run", "m", "--think=low",
                                                                                   "--truncate=true"]
    assert expand_optional_flags(["run", "m", "--", "--think"]) == ["run", "m", "--", "--think"]
    assert expand_optional_flags(["show", "--think"]) == ["show", "--think"]


# -- embedding models ------------------------------------------------------------------------------

def test_run_embedding_model_dimensions_and_truncate(daemon, all_minilm):  # noqa: F811
    r = daemon.cli("run", all_minilm, "--dimensions", "8", "a cat")
    assert r.returncode == 0, r.stderr
    vector = json.loads(r.stdout)
    _, expected = daemon.post("/api/embed", {"model": all_minilm, "input": "a cat", "dimensions": 8})
    assert len(vector) == 8 and vector == pytest.approx(expected["embeddings"][0], abs=1e-6)
    assert abs(sum(x * x for x in vector) - 1) < 1e-3
    long_text = "word " * 2000  # past all-minilm's 512-token context
    r = daemon.cli("run", all_minilm, "--truncate=false", long_text)
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "context" in r.stderr
    for flag in ("--truncate", "--truncate=true"):
        r = daemon.cli("run", all_minilm, flag, long_text)
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 384, r.stderr
    for bad, message in (("--dimensions=-1", "--dimensions must not be negative"), ("--truncate=maybe", "--truncate")):
        r = daemon.cli("run", all_minilm, bad, "a cat")
        assert r.returncode == 1 and r.stderr.startswith("Error: ") and message in r.stderr, r.stderr
