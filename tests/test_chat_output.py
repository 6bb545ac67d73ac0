"""runner.model.output: thinking and tool calls split out of streamed model text, as Ollama splits them."""

from __future__ import annotations

import re

import pytest

from runner.model.output import ChatOutputParser, Delta
from runner.model.template_tags import output_tags
from runner.model.thinking import think_enabled

# A Qwen-style template: tools in the system turn, calls as <tool_call> JSON, thinking in <think>.
QWEN = """{{- if or .System .Tools }}<|im_start|>system
{{ .System }}
{{- if .Tools }}
<tools>
{{- range .Tools }}
{{ . }}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}
{{- if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- else }}{{ .Content }}{{ end }}<|im_end|>
{{ else }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ if $.Think }}<think>
{{ end }}{{ end }}
{{- end }}"""

MISTRAL = """{{- range .Messages }}
{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST]
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]</s>
{{- else }}{{ .Content }}</s>
{{- end }}
{{- end }}"""

# Llama 3.1 style: calls are bare JSON objects, no prefix.
LLAMA3 = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}
{{- end }}{{ else }}{{ .Content }}{{ end }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

LIST = """{{ range .Messages }}{{ if .ToolCalls }}[{{ range .ToolCalls }}{{ . }}{{ end }}]{{ else }}{{ .Content }}{{ end }}
{{ end }}"""

DEEPSEEK = """{{ range .Messages }}{{ if .ToolCalls }}<|tool▁calls▁begin|>{{ range .ToolCalls }}<|tool▁call▁begin|>\
function<|tool▁sep|>{{ .Function.Name }}
```json
{{ .Function.Arguments }}
```<|tool▁call▁end|>{{ end }}<|tool▁calls▁end|>{{ else }}{{ .Content }}{{ end }}{{ end }}"""


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": name,
                                             "parameters": {"type": "object", "properties": {}}}}


TOOLS = [tool(n) for n in ("get_weather", "get_time", "say_hello", "say_hello_world", "add")]


def run(pieces, template=None, *, tools=TOOLS, think=None, prompt="") -> tuple[str, str, list[dict]]:
    parser = ChatOutputParser(template, tools=tools, think=think, prompt=prompt)
    deltas = [parser.feed(p) for p in pieces] + [parser.finish()]
    return ("".join(d.content for d in deltas), "".join(d.thinking for d in deltas),
            [c for d in deltas for c in d.tool_calls])


def calls_of(calls: list[dict]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def splits(text: str):
    """The text whole, char by char, and cut in two at every position."""
    yield [text]
    yield list(text)
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]


# ----------------------------------------------------------------------------- template analysis
@pytest.mark.parametrize("template, prefix", [
    (None, "{"),
    ("", "{"),
    ("{{ .Prompt }}", "{"),
    (QWEN, "<tool_call>"),
    (MISTRAL, "[TOOL_CALLS] ["),
    (LLAMA3, "{"),
    (LIST, "["),
    (DEEPSEEK, "<|tool▁calls▁begin|>"),
    ("{{if .ToolCalls}}{{end}}", "{"),
    ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
    ("{{if .ToolCalls}}\r\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "{"),  # text after a value is no prefix
    ("{{if .ToolCalls}}{{range .ToolCalls}}<call>{{ . }}</call>{{end}}{{end}}", "<call>"),
    ("{{if .ToolCalls}}Calls:{{if .X}}inner{{end}}more{{end}}", "Calls:"),
    ("{{if .Other}}x{{else}}{{if .ToolCalls}}<fn>{{end}}{{end}}", "<fn>"),
])
def test_tool_prefix_from_template(template, prefix):
    assert output_tags(template).tool_prefix == prefix


@pytest.mark.parametrize("template, tags", [
    (QWEN, ("<think>", "</think>")),
    ("{{ range .Messages }}{{ if .Thinking }}<reasoning>\n{{ .Thinking }}\n</reasoning>{{ end }}{{ end }}",
     ("<reasoning>", "</reasoning>")),
    # .Thinking outside a range over .Messages, or in a range over something else, names no tags
    ("{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}", ("", "")),
    ("{{ range .Messages }}{{ range .Other }}<t>{{ .Thinking }}</t>{{ end }}{{ end }}", ("", "")),
    (MISTRAL, ("", "")),
    (None, ("", "")),
])
def test_think_tags_from_template(template, tags):
    t = output_tags(template)
    assert (t.think_open, t.think_close) == tags


def test_broken_template_gives_defaults():
    assert output_tags("{{ if }").tool_prefix == "{"


def test_think_values():
    assert think_enabled(True) and think_enabled("low") and think_enabled("high") and think_enabled("medium")
    assert not think_enabled(False) and not think_enabled(None) and not think_enabled("sometimes")


# ----------------------------------------------------------------------------- thinking
THINK_CASES = [
    # (output, thinking, content)
    ("<think>Let me see.</think>The answer is 4.", "Let me see.", "The answer is 4."),
    ("  \n<think>\n\nplan\n</think>\n\nanswer", "plan\n", "answer"),
    ("<think></think>answer", "", "answer"),
    ("no thinking at all", "", "no thinking at all"),
    ("Hi <think>late</think> there", "", "Hi <think>late</think> there"),  # only at the start
    ("<think>a < b and </thin is not a tag</think>ok", "a < b and </thin is not a tag", "ok"),
    ("<think>still thinking when it stopped", "still thinking when it stopped", ""),
    ("<think>x</think>one</think>two<think>", "x", "one</think>two<think>"),
    ("<thi", "", "<thi"),  # a cut-off start of a tag is shown, not lost
]


@pytest.mark.parametrize("output, thinking, content", THINK_CASES)
def test_thinking_split_at_every_position(output, thinking, content):
    for pieces in splits(output):
        got = run(pieces, QWEN, tools=None, think=True)
        assert got == (content, thinking, []), pieces


@pytest.mark.parametrize("think", [False, None])
def test_think_off_leaves_the_block_in_content(think):
    text = "<think>hmm</think>Hello"
    assert run([text], QWEN, tools=None, think=think) == (text, "", [])


def test_think_level_turns_thinking_on():
    assert run(["<think>a</think>b"], QWEN, tools=None, think="low") == ("b", "a", [])


def test_prompt_that_opens_the_think_block():
    for pieces in splits("I should greet.</think>Hello!"):
        got = run(pieces, QWEN, tools=None, think=True, prompt="<|im_start|>assistant\n<think>\n")
        assert got == ("Hello!", "I should greet.", [])


def test_template_tags_replace_the_default():
    tmpl = "{{ range .Messages }}{{ if .Thinking }}<reasoning>{{ .Thinking }}</reasoning>{{ end }}{{ end }}"
    for pieces in splits("<reasoning>why</reasoning>because"):
        assert run(pieces, tmpl, tools=None, think=True) == ("because", "why", [])
    # <think> is plain text for this template
    assert run(["<think>x</think>y"], tmpl, tools=None, think=True) == ("<think>x</think>y", "", [])


def test_no_template_uses_think_tags():
    assert run(["<think>a</think>b"], None, tools=None, think=True) == ("b", "a", [])


def test_thinking_streams_before_the_block_closes():
    p = ChatOutputParser(QWEN, think=True)
    assert p.feed("<think>") == Delta()
    assert p.feed("step one") == Delta(thinking="step one")
    assert p.feed(" </thi") == Delta(thinking=" ")  # the start of the closing tag is held back
    assert p.feed("nk>Done") == Delta(content="Done")
    assert p.finish() == Delta()


# ----------------------------------------------------------------------------- tool calls
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'

TOOL_CASES = [
    # (template, output, content, calls)
    (QWEN, f"<tool_call>\n{WEATHER}\n</tool_call>", "", [("get_weather", {"city": "Paris"})]),
    (QWEN, f"Let me check. <tool_call>{WEATHER}</tool_call>", "Let me check. ",
     [("get_weather", {"city": "Paris"})]),
    (QWEN, '<tool_call>{"name": "get_time", "arguments": {}}</tool_call><tool_call>'
           '{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', "",
     [("get_time", {}), ("add", {"a": 1, "b": 2})]),
    (QWEN, '<tool_call>{"arguments": {"a": "5"}, "name": "add"}</tool_call>', "", [("add", {"a": "5"})]),
    (QWEN, '<tool_call>{"name": "say_hello_world", "arguments": {}}</tool_call>', "", [("say_hello_world", {})]),
    (QWEN, '<tool_call>{"name": "say_hello", "arguments": {}}</tool_call>', "", [("say_hello", {})]),
    (QWEN, '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>', "",
     [("get_weather", {"city": "Oslo"})]),  # arguments as a JSON string
    (QWEN, '<tool_call>{"name": "get_time"}</tool_call>', "", [("get_time", {})]),  # no arguments at all
    (QWEN, '<tool_call>{"type": "function", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}'
           '</tool_call>', "", [("get_time", {"tz": "UTC"})]),  # nested
    (QWEN, '<tool_call>{"get_weather": {"city": "Rome"}}</tool_call>', "", [("get_weather", {"city": "Rome"})]),
    (QWEN, 'A brace } and a "quote" first.<tool_call>{"name": "add", "arguments": {"s": "}{\\""}}</tool_call>',
     'A brace } and a "quote" first.', [("add", {"s": '}{"'})]),
    (QWEN, "No tools needed: the sky is blue.", "No tools needed: the sky is blue.", []),
    (MISTRAL, f'[TOOL_CALLS] [{WEATHER}, {{"name": "get_time", "parameters": {{"tz": "CET"}}}}]', "",
     [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
    (LLAMA3, '\n\n' + WEATHER, "\n\n", [("get_weather", {"city": "Paris"})]),
    (LLAMA3, f'{WEATHER}\n{{"name": "get_time", "parameters": {{}}}}', "",
     [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    (LLAMA3, f"Sure: {WEATHER}", f"Sure: {WEATHER}", []),  # bare JSON must open the answer
    (LLAMA3, '{"answer": 42} and more', '{"answer": 42} and more', []),  # JSON, but no call
    (LLAMA3, 'for { x() }', 'for { x() }', []),
    (LIST, f'[{WEATHER}]', "", [("get_weather", {"city": "Paris"})]),
    (LIST, "[special delivery]", "[special delivery]", []),
    (DEEPSEEK, '<|tool▁calls▁begin|><|tool▁call▁begin|>function<|tool▁sep|>get_weather\n```json\n'
               '{"city": "Tokyo"}\n```<|tool▁call▁end|><|tool▁calls▁end|>', "",
     [("get_weather", {"city": "Tokyo"})]),
]


@pytest.mark.parametrize("template, output, content, calls", TOOL_CASES)
def test_tool_calls_split_at_every_position(template, output, content, calls):
    for pieces in splits(output):
        got_content, thinking, got_calls = run(pieces, template)
        assert (got_content, thinking, calls_of(got_calls)) == (content, "", calls), pieces


MALFORMED = [
    (QWEN, '<tool_call>{"name": "get_weather", "arguments": {"city": }}</tool_call>'),
    (QWEN, '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'),  # cut off
    (QWEN, '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>'),  # not one of the tools
    (QWEN, '<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>'),
    (LLAMA3, '{"name": "get_weather", "arguments": {city: Paris}}'),
    (LLAMA3, '{"name": "get_weather", "arguments": {"city": "Paris"'),
    (LIST, '[{"name": "get_weather", "arguments": {"city": }}]'),
    (MISTRAL, '[TOOL_CALLS] [{"name": "unknown", "arguments": {}}]'),
]


@pytest.mark.parametrize("template, output", MALFORMED)
def test_what_is_not_a_call_comes_back_as_content(template, output):
    for pieces in splits(output):
        assert run(pieces, template) == (output, "", []), pieces


def test_call_shape_index_and_id():
    _, _, calls = run([f'<tool_call>{WEATHER}</tool_call><tool_call>{WEATHER}</tool_call>'], QWEN)
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", c["id"]) for c in calls)
    assert calls[0]["id"] != calls[1]["id"]
    assert calls[0] == {"id": calls[0]["id"],
                        "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}


def test_calls_stream_as_soon_as_complete():
    p = ChatOutputParser(QWEN, tools=TOOLS)
    assert p.feed("Checking. <tool") == Delta(content="Checking. ")  # may be the prefix: held back
    assert p.feed('_call>{"name": "get_weather", ') == Delta()
    first = p.feed('"arguments": {"city": "Paris"}}')
    assert calls_of(first.tool_calls) == [("get_weather", {"city": "Paris"})] and not first.content
    assert p.feed("</tool_call>") == Delta()
    assert p.finish() == Delta()  # what follows the calls (the closing tag) is not content


def test_text_that_only_looked_like_a_prefix_is_released():
    p = ChatOutputParser(QWEN, tools=TOOLS)
    assert p.feed("a <to") == Delta(content="a ")
    assert p.feed("ast>") == Delta(content="<toast>")


def test_without_tools_nothing_is_held_back():
    assert run([f"<tool_call>{WEATHER}</tool_call>"], QWEN, tools=None) == (f"<tool_call>{WEATHER}</tool_call>",
                                                                            "", [])
    assert run([WEATHER], LLAMA3, tools=[]) == (WEATHER, "", [])


def test_thinking_then_tool_call():
    out = f"<think>I need the weather.</think>\n<tool_call>{WEATHER}</tool_call>"
    for pieces in splits(out):
        content, thinking, calls = run(pieces, QWEN, think=True)
        assert (content, thinking, calls_of(calls)) == ("", "I need the weather.", [("get_weather", {"city": "Paris"})])


def test_a_call_written_while_thinking_is_thinking():
    out = f"<think>maybe <tool_call>{WEATHER}</tool_call></think>No call."
    assert run([out], QWEN, think=True) == ("No call.", f"maybe <tool_call>{WEATHER}</tool_call>", [])
