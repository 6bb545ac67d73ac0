"""Ollama's prompt rendering (modelfiles.prompt) and the GGUF Jinja fallback (modelfiles.jinja).

The named templates must reproduce Ollama's expected renderings byte for byte; the other
expectations below come from Ollama's template.Execute run under Go on the same inputs.
"""

import json
from pathlib import Path

import pytest

from modelfiles.jinja import (TEMPLATES_DIR, levenshtein, load_named_template, named_template_for,
                              render_jinja)
from modelfiles.prompt import TemplateError, parse_template, render


def _compat_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    for d in (root.parent / "shared", root / "shared"):
        if (d / "compat" / "ollama-templates" / "index.json").is_file():
            return d / "compat" / "ollama-templates"
    raise RuntimeError("shared/compat/ollama-templates not found beside the repository")


COMPAT = _compat_dir()
NAMES = sorted(p.stem for p in COMPAT.glob("*.gotmpl"))

USER = [{"role": "user", "content": "Hello, how are you?"}]
USER_ASSISTANT_USER = USER + [
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]
CONVERSATIONS = {
    "user": USER,
    "user-assistant-user": USER_ASSISTANT_USER,
    "system-user-assistant-user": [{"role": "system", "content": "You are a helpful assistant."}] + USER_ASSISTANT_USER,
}


# ----------------------------------------------------------------------------- named templates
def test_all_named_templates_are_shipped():
    assert len(NAMES) == 20
    for name in NAMES:
        text, params = load_named_template(name)
        assert text == (COMPAT / f"{name}.gotmpl").read_text()
        assert params == {"stop": json.loads((COMPAT / f"{name}.json").read_text())["stop"]}
    assert (TEMPLATES_DIR / "index.json").read_text() == (COMPAT / "index.json").read_text()


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", NAMES)
def test_named_template_renders_like_ollama(name, conversation):
    text, _ = load_named_template(name)
    expected = (COMPAT / "testdata" / f"{name}.gotmpl" / conversation).read_bytes().decode()
    assert render(text, messages=CONVERSATIONS[conversation]) == expected


def test_named_template_for_matches_ollama_on_gguf_templates():
    for line in (COMPAT / "testdata" / "templates.jsonl").read_text().splitlines():
        for name, jinja_src in json.loads(line).items():
            assert named_template_for(jinja_src) == name
            parse_template(load_named_template(name)[0])


def test_named_template_for_rejects_unknown_templates():
    assert named_template_for("{{ messages[0]['content'] }} something else entirely") is None
    assert named_template_for("") is None
    with pytest.raises(KeyError):
        load_named_template("../etc/passwd")


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("héllo", "hello") == 1
    assert levenshtein("a" * 300, "a" * 299 + "b") == 1


# ----------------------------------------------------------------------------- Ollama's data model
QWEN_LIKE = '{{- if .Messages }}\n{{- if or .System .Tools }}<|im_start|>system\n{{- if .System }}\n{{ .System }}\n{{- end }}\n{{- if .Tools }}\n\n# Tools\n\n<tools>\n{{- range .Tools }}\n{"type": "function", "function": {{ .Function }}}\n{{- end }}\n</tools>\n{{- end }}<|im_end|>\n{{ end }}\n{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ if .Content }}{{ .Content }}\n{{- else if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n{{ end }}</tool_call>\n{{- end }}{{ if not $last }}<|im_end|>\n{{ end }}\n{{- else if eq .Role "tool" }}<|im_start|>user\n<tool_response>\n{{ .Content }}\n</tool_response><|im_end|>\n{{ end }}\n{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant\n{{ end }}\n{{- end }}\n{{- else }}\n{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}\n'

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
          "parameters": {"type": "object", "required": ["city"],
                         "properties": {"city": {"type": "string", "description": "City <name>"},
                                        "days": {"type": ["integer", "null"]}}}}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}]},
    {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
]
S = [{"role": "system", "content": "S"}]
SYSTEMS = [{"role": "system", "content": "S1"}, {"role": "system", "content": "S2"}, {"role": "user", "content": "a"},
           {"role": "user", "content": "b"}, {"role": "tool", "content": "t1"}, {"role": "tool", "content": "t2"}]
MID_SYSTEM = [{"role": "system", "content": "S1"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
              {"role": "system", "content": "S2"}, {"role": "user", "content": "c"}]
THINK_T = "{{ range .Messages }}{{ end }}{{ .Think }} {{ .ThinkLevel }} {{ .IsThinkSet }}"
TOOLS_T = ("{{ range .Messages }}{{ end }}{{ .Tools }}\n{{ range .Tools }}{{ .Function.Name }}: {{ .Function.Description }} "
           "{{ .Function.Parameters.Required }}\n{{ range $name, $p := .Function.Parameters.Properties }}- {{ $name }} "
           "({{ $p.Type }}, {{ $p.ToTypeScriptType }}): {{ $p.Description }}\n{{ end }}{{ .Function.Parameters.Properties }}{{ end }}")
CALLS_T = ("{{ range .Messages }}{{ .Role }}: {{ .Content }}{{ range .ToolCalls }}{{ .Function.Name }}({{ .Function.Arguments }}) "
           "{{ json .Function.Arguments }} {{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }} {{ end }}{{ end }}"
           "{{ if .ToolName }} [{{ .ToolName }}]{{ end }}\n{{ end }}")
TOOLS_NULL_T = "{{ range .Messages }}{{ end }}{{ .Tools }}|{{ json .Tools }}|{{ if .Tools }}yes{{ else }}no{{ end }}"
SUFFIX_T = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"

CASES = {
    # name: (template, messages, keyword arguments of render)
    "legacy_prompt_only": ("{{ .Prompt }}", USER_ASSISTANT_USER, {}),
    "legacy_system_prompt": ("{{ .System }} {{ .Prompt }}", S + USER_ASSISTANT_USER, {}),
    "legacy_open_last_response": ("[INST] {{ .Prompt }}[/INST] {{ .Response }}</s>",
                                  USER_ASSISTANT_USER + [{"role": "assistant", "content": "My name is"}], {}),
    "legacy_system_mid_conversation": ("{{ if .System }}<<{{ .System }}>>{{ end }}U:{{ .Prompt }} A:{{ .Response }}|", MID_SYSTEM, {}),
    "collate_merges_consecutive": ("{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}[{{ .System }}]", SYSTEMS, {}),
    "think_values_unset": (THINK_T, USER, {}),
    "think_values_true": (THINK_T, USER, {"think": True}),
    "think_values_false": (THINK_T, USER, {"think": False}),
    "think_values_high": (THINK_T, USER, {"think": "high"}),
    "missing_value_in_messages_template": ("{{ range .Messages }}{{ end }}{{ .Prompt }}|{{ .Suffix }}", USER, {}),
    "tools_json_and_properties": (TOOLS_T, USER, {"tools": TOOLS}),
    "tool_calls": (CALLS_T, TOOL_CONVERSATION, {}),
    "qwen_like_tools": (QWEN_LIKE, TOOL_CONVERSATION, {"tools": TOOLS}),
    "no_tools_is_null": (TOOLS_NULL_T, USER, {}),
    "empty_tools_is_empty_list": (TOOLS_NULL_T, USER, {"tools": []}),
    "message_struct_print": ("{{ range .Messages }}{{ . }}|{{ json . }}{{ end }}",
                             [{"role": "user", "content": "hi", "thinking": "hmm"}], {}),
    "suffix": (SUFFIX_T, [{"role": "user", "content": "def add("}], {"suffix": "return x"}),
}

EXPECTED = dict([
('legacy_prompt_only', "Hello, how are you?I'm doing great. How can I help you today?I'd like to show off how chat templating works!"),
('legacy_system_prompt', "S Hello, how are you?I'm doing great. How can I help you today? I'd like to show off how chat templating works!"),
('legacy_open_last_response', "[INST] Hello, how are you?[/INST] I'm doing great. How can I help you today?</s>[INST] I'd like to show off how chat templating works![/INST] My name is"),
('legacy_system_mid_conversation', '<<S1>>U:a A:b|<<S2>>U:c A:'),
('collate_merges_consecutive', 'system=S1\n\nS2;user=a\n\nb;tool=t1;tool=t2;[S1\n\nS2]'),
('think_values_unset', 'false  false'),
('think_values_true', 'true medium true'),
('think_values_false', 'false  true'),
('think_values_high', 'true high true'),
('missing_value_in_messages_template', '<no value>|<no value>'),
('tools_json_and_properties', '[{"type":"function","function":{"name":"get_weather","description":"Get the weather","parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string","description":"City \\u003cname\\u003e"},"days":{"type":["integer","null"]}}}}}]\nget_weather: Get the weather [city]\n- city (string, string): City <name>\n- days ([integer null], number | null): \n{"city":{"type":"string","description":"City \\u003cname\\u003e"},"days":{"type":["integer","null"]}}'),
('tool_calls', 'user: Weather in Paris?\nassistant: get_weather({"city":"Paris","days":3}) {"city":"Paris","days":3} city=Paris days=3 \ntool: sunny [get_weather]\n'),
('qwen_like_tools', '<|im_start|>system\n\n# Tools\n\n<tools>\n{"type": "function", "function": {get_weather Get the weather {object <nil> <nil> [city] {"city":{"type":"string","description":"City \\u003cname\\u003e"},"days":{"type":["integer","null"]}}}}}\n</tools><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris","days":3}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n\n'),
('no_tools_is_null', 'null|null|no'),
('empty_tools_is_empty_list', '[]|[]|no'),
('message_struct_print', '{user hi hmm [] []  }|{"Role":"user","Content":"hi","Thinking":"hmm","Images":null,"ToolCalls":null,"ToolName":"","ToolCallID":""}'),
('suffix', '<PRE> def add( <SUF>return x <MID>'),
])


@pytest.mark.parametrize("name", sorted(CASES))
def test_renders_like_ollama(name):
    template, messages, kw = CASES[name]
    assert render(template, messages=messages, **kw) == EXPECTED[name]


def test_ollama_execute_examples():
    # the cases of Ollama's TestExecuteWithMessages: legacy and .Messages templates agree
    mistral = [
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n{{- if eq .Role \"user\" }}{{ .Content }}[/INST] "
        "{{ else if eq .Role \"assistant\" }}{{ .Content }}[INST] {{ end }}\n{{- end }}",
    ]
    chat = [{"role": "user", "content": "Hello friend!"}, {"role": "assistant", "content": "Hello human!"},
            {"role": "user", "content": "What is your name?"}]
    for t in mistral:
        assert render(t, messages=chat) == "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
        assert render(t, messages=[{"role": "system", "content": "You are a helpful assistant!"}] + chat) == (
            "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] ")
    chatml = [
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
        "\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    ]
    for t in chatml:
        assert render(t, messages=chat, system="You are a helpful assistant!") == (
            "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
            "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
            "<|im_start|>assistant\n")


def test_system_argument_is_the_default_system_prompt():
    t = "{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    assert render(t, messages=USER, system="D") == "system:D;user:Hello, how are you?;"
    assert render(t, messages=S + USER, system="D") == "system:S;user:Hello, how are you?;"
    assert render(t, messages=[], system="D") == "system:D;"


def test_roles_are_lowercased_and_arguments_may_be_json_text():
    t = "{{ range .Messages }}{{ .Role }}{{ range .ToolCalls }} {{ .Function.Arguments }}{{ end }};{{ end }}"
    msgs = [{"role": "USER", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": '{"b": 1, "a": "<"}'}}]}]
    assert render(t, messages=msgs) == 'user;assistant {"a":"\\u003c","b":1};'


def test_parse_template_errors_and_cache():
    with pytest.raises(TemplateError) as e:
        parse_template("{{ .System }}\n{{ range .Messages }}\n{{ .Content }\n{{ end }}")
    assert str(e.value) == 'template: :3: unexpected "}" in operand'
    with pytest.raises(TemplateError, match="unclosed action"):
        parse_template("{{ .Prompt ")
    with pytest.raises(TemplateError, match="undefined template specified"):
        parse_template('{{define "x"}}{{template "x"}}{{end}}{{template "x"}}')
    t = parse_template("{{ .Prompt }}")
    assert parse_template("{{ .Prompt }}") is t
    assert t.vars == ["prompt", "response"]


def test_execution_errors_raise_template_error():
    with pytest.raises(TemplateError, match='at <.Messages.Foo>: can\'t evaluate field Foo'):
        render("{{ .Messages.Foo }}", messages=USER)
    with pytest.raises(TemplateError, match="wrong number of args for json: want 1 got 2"):
        render("{{ range .Messages }}{{ json .Role .Content }}{{ end }}", messages=USER)


def test_date_functions():
    import datetime
    out = render("{{ range .Messages }}{{ end }}{{ currentDate }}|{{ yesterdayDate \"%Y\" }}", messages=USER)
    today = datetime.date.today()
    assert out == f"{today.isoformat()}|{(today - datetime.timedelta(days=1)).isoformat()}"


# ----------------------------------------------------------------------------- Jinja fallback
SMOLLM2_JINJA = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
                 "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_jinja_chatml():
    out = render_jinja(SMOLLM2_JINJA, messages=USER_ASSISTANT_USER)
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                   "<|im_start|>user\nHello, how are you?<|im_end|>\n"
                   "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n"
                   "<|im_start|>user\nI'd like to show off how chat templating works!<|im_end|>\n"
                   "<|im_start|>assistant\n")
    assert not render_jinja(SMOLLM2_JINJA, messages=USER, add_generation_prompt=False).endswith("assistant\n")
    assert named_template_for(SMOLLM2_JINJA) == "chatml"


def test_jinja_helpers_and_tokens():
    t = ("{{ bos_token }}{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}"
         "{{ m.content | tojson }}{% endfor %}{% generation %}{{ tools[0].name }}{% endgeneration %}"
         "{{ eos_token }}{{ strftime_now('%Y') | length }}")
    out = render_jinja(t, messages=[{"role": "user", "content": "héllo"}, {"role": "user", "content": "skip"}],
                       bos_token="<s>", eos_token="</s>", tools=[{"name": "f"}])
    assert out == '<s>"héllo"f</s>4'


def test_jinja_errors_raise_template_error():
    with pytest.raises(TemplateError, match="Conversation roles must alternate"):
        render_jinja("{{ raise_exception('Conversation roles must alternate') }}", messages=[])
    with pytest.raises(TemplateError):
        render_jinja("{% for %}", messages=[])
    with pytest.raises(TemplateError):  # the sandbox refuses to mutate
        render_jinja("{{ messages.append(1) }}", messages=[])
