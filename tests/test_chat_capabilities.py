"""Tool calls, thinking, structured outputs and raw mode through the real daemon and a real model.

smollm2 is too small to call tools or close a think block on its own, so its output is forced: tool
calls by a `format` JSON schema (the grammar makes it write exactly a call), thinking by a template
that continues a few-shot text ending in `<think>` (a 135M model repeats a pattern reliably).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import ollama
import pytest

from modelfiles import render

# Bare JSON tool calls (Llama 3 style): no prefix under .ToolCalls, so a call is an answer opening with {.
TOOLS_TEMPLATE = """{{- if .Tools }}<|im_start|>system
You can call these functions. Answer with a JSON object {"name": ..., "arguments": ...}.
{{ range .Tools }}{{ . }}
{{ end }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}
{{- else }}{{ .Content }}{{ end }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

# Calls written as one JSON list (the prefix is "[").
LIST_TEMPLATE = TOOLS_TEMPLATE.replace(
    '{{ if .ToolCalls }}{{ range .ToolCalls }}{"name"', '{{ if .ToolCalls }}[{{ range .ToolCalls }}{"name"')

# The conversation is the prompt, verbatim: a few-shot text ending in <think> makes the model think, close
# the block and answer. .Thinking inside the range names the tags; .Think makes the model thinking-capable.
CONTINUE_TEMPLATE = ("{{- range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}"
                     "{{ end }}{{ if .Think }}{{ end }}")
FEW_SHOT = "<think>a</think>b\n<think>a</think>b\n<think>a</think>b\n<think>"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL_SCHEMA = {"type": "object", "properties": {
    "name": {"enum": ["get_weather"]},
    "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]},
}, "required": ["name", "arguments"]}
GREEDY = {"temperature": 0, "num_predict": 60}


@pytest.fixture(scope="module")
def models(daemon, smollm2_path) -> dict[str, str]:
    names = {"tools": ("cap-tools", TOOLS_TEMPLATE, ["<|im_end|>"]),
             "list": ("cap-list-tools", LIST_TEMPLATE, ["<|im_end|>"]),
             "think": ("cap-think", CONTINUE_TEMPLATE, ["\n"])}
    for name, template, stop in names.values():
        # greedy by default too, so that the CLI (which sends no options) answers the same every time
        daemon.create_from_gguf(name, smollm2_path, template=template, parameters={"stop": stop, "temperature": 0})
    return {key: name for key, (name, _, _) in names.items()}


def chat(daemon, model: str, content: str, **body):
    return daemon.post("/api/chat", {"model": model, "messages": [{"role": "user", "content": content}], **body})


def check_call(call: dict, index: int = 0) -> str:
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    fn = call["function"]
    assert fn["index"] == index and fn["name"] == "get_weather" and set(fn["arguments"]) == {"city"}
    return fn["arguments"]["city"]


# ----------------------------------------------------------------------------- tools
def test_capabilities_follow_the_templates(daemon, models):
    assert "tools" in daemon.post("/api/show", {"model": models["tools"]})[1]["capabilities"]
    assert "thinking" in daemon.post("/api/show", {"model": models["think"]})[1]["capabilities"]


def test_tool_call_returned_not_streaming(daemon, models):
    status, body = chat(daemon, models["tools"], "What is the weather in Paris?", tools=[WEATHER_TOOL],
                        format=CALL_SCHEMA, stream=False, options=GREEDY)
    assert status == 200, body
    message = body["message"]
    assert message["content"] == "" and message["role"] == "assistant"
    assert len(message["tool_calls"]) == 1
    assert check_call(message["tool_calls"][0])
    assert body["done"] and body["done_reason"] == "stop" and body["eval_count"] > 0


def test_tool_call_streams_once_complete(daemon, models):
    status, lines = chat(daemon, models["tools"], "What is the weather in Paris?", tools=[WEATHER_TOOL],
                         format=CALL_SCHEMA, options=GREEDY)
    assert status == 200
    calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
    assert len(calls) == 1 and check_call(calls[0])
    # the JSON went into the call, none of it into content; the call came before the final chunk
    assert "".join(x["message"]["content"] for x in lines) == ""
    assert "tool_calls" in lines[-2]["message"] and lines[-1]["done"]


def test_several_tool_calls_in_a_list(daemon, models):
    schema = {"type": "array", "items": CALL_SCHEMA, "minItems": 2, "maxItems": 2}
    status, body = chat(daemon, models["list"], "Weather in Paris and in Rome?", tools=[WEATHER_TOOL],
                        format=schema, stream=False, options={"temperature": 0, "num_predict": 80})
    assert status == 200
    calls = body["message"]["tool_calls"]
    assert [check_call(c, i) is not None for i, c in enumerate(calls)] == [True, True]
    assert calls[0]["id"] != calls[1]["id"] and body["message"]["content"] == ""


def test_json_that_is_no_call_stays_content(daemon, models):
    schema = {"type": "object", "properties": {"answer": {"enum": ["sunny"]}}, "required": ["answer"]}
    status, body = chat(daemon, models["tools"], "What is the weather in Paris?", tools=[WEATHER_TOOL],
                        format=schema, stream=False, options=GREEDY)
    assert status == 200
    assert json.loads(body["message"]["content"]) == {"answer": "sunny"}
    assert "tool_calls" not in body["message"]


def test_without_tools_a_call_shaped_answer_is_content(daemon, models):
    status, body = chat(daemon, models["tools"], "What is the weather in Paris?", format=CALL_SCHEMA, stream=False,
                        options=GREEDY)
    assert json.loads(body["message"]["content"])["name"] == "get_weather"
    assert "tool_calls" not in body["message"]


def test_tools_need_a_template_that_takes_them(daemon, smollm2):
    for messages in ([{"role": "user", "content": "hi"}], []):  # a load-only request is refused too
        status, body = daemon.post("/api/chat", {"model": smollm2, "messages": messages, "tools": [WEATHER_TOOL]})
        assert (status, body) == (400, {"error": "registry.ollama.ai/library/smollm2:135m does not support tools"})


# ----------------------------------------------------------------------------- thinking
def test_think_splits_reasoning_in_chat(daemon, models):
    for think in ({}, {"think": True}, {"think": "medium"}):  # a thinking model thinks unless told not to
        status, body = chat(daemon, models["think"], FEW_SHOT, stream=False, options=GREEDY, **think)
        assert status == 200, body
        assert (body["message"]["thinking"], body["message"]["content"]) == ("a", "b")
    status, lines = chat(daemon, models["think"], FEW_SHOT, options=GREEDY)
    thinking = [x["message"].get("thinking", "") for x in lines]
    content = [x["message"]["content"] for x in lines]
    assert ("".join(thinking), "".join(content)) == ("a", "b")
    # thinking streams first, and no chunk carries the tags
    assert max(i for i, t in enumerate(thinking) if t) < min(i for i, c in enumerate(content) if c)
    assert not any("think>" in t + c for t, c in zip(thinking, content))


def test_think_false_leaves_the_block_in_content(daemon, models):
    status, body = chat(daemon, models["think"], FEW_SHOT, think=False, stream=False, options=GREEDY)
    assert status == 200
    assert body["message"]["content"] == "a</think>b" and "thinking" not in body["message"]


def test_generate_returns_thinking(daemon, models):
    for raw in (True, False):  # raw: the prompt itself; else through the template (the same text here)
        status, body = daemon.post("/api/generate", {"model": models["think"], "prompt": FEW_SHOT, "raw": raw,
                                                     "stream": False, "options": GREEDY})
        assert status == 200, body
        assert (body["thinking"], body["response"]) == ("a", "b")
    status, lines = daemon.post("/api/generate", {"model": models["think"], "prompt": FEW_SHOT, "think": False,
                                                  "options": GREEDY})
    assert "".join(x["response"] for x in lines) == "a</think>b"
    assert not any("thinking" in x for x in lines)


def test_think_validation(daemon, smollm2, models):
    msgs = [{"role": "user", "content": "hi"}]
    for think in (True, "high"):
        for path, body in (("/api/chat", {"messages": msgs}), ("/api/generate", {"prompt": "hi"})):
            status, answer = daemon.post(path, {"model": smollm2, "think": think, **body})
            assert (status, answer) == (400, {"error": '"smollm2:135m" does not support thinking'})
    status, body = daemon.post("/api/chat", {"model": smollm2, "messages": msgs, "think": False, "stream": False,
                                             "options": {"num_predict": 3}})
    assert status == 200 and "thinking" not in body["message"]
    status, body = daemon.post("/api/chat", {"model": models["think"], "messages": msgs, "think": "bogus"})
    assert (status, body["error"]) == (400, 'invalid think value: "bogus" (must be "high", "medium", "low", "max", '
                                            'true, or false)')
    status, body = daemon.post("/api/chat", {"model": models["think"], "messages": msgs, "think": 1})
    assert (status, body["error"]) == (400, 'think must be a boolean or string ("high", "medium", "low", "max", '
                                            'true, or false)')


def test_cli_shows_and_hides_thinking(daemon, models):
    shown = daemon.cli("run", models["think"], FEW_SHOT)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "Thinking...\na\n...done thinking.\n\nb\n"
    hidden = daemon.cli("run", models["think"], "--hidethinking", FEW_SHOT)
    assert hidden.returncode == 0 and hidden.stdout == "b\n"


# ----------------------------------------------------------------------------- format and raw
def person_answer(daemon, model: str, name_schema: dict, seed: int) -> tuple[str, str]:
    """(content, done_reason) of a sampled answer to a person schema."""
    schema = {"type": "object", "properties": {"name": name_schema, "age": {"type": "integer"},
                                               "pet": {"enum": ["cat", "dog", "none"]}},
              "required": ["name", "age", "pet"]}
    status, body = chat(daemon, model, "Invent a person.", format=schema, stream=False,
                        options={"temperature": 1.0, "seed": seed, "num_predict": 200})
    assert status == 200, body
    return body["message"]["content"], body["done_reason"]


def check_person(text: str) -> None:
    obj = json.loads(text)
    assert isinstance(obj["name"], str) and isinstance(obj["age"], int) and obj["pet"] in ("cat", "dog", "none")


def test_format_schema_gives_valid_json_for_every_seed(daemon, smollm2):
    name = {"type": "string", "pattern": "^[A-Z][a-z]{1,12}( [A-Z][a-z]{1,12})?$"}
    with ThreadPoolExecutor(10) as pool:  # together: the daemon batches them, and the test stays quick
        answers = list(pool.map(lambda seed: person_answer(daemon, smollm2, name, seed), range(10)))
    for text, reason in answers:
        assert reason == "stop"
        check_person(text)
    assert len(set(answers)) > 1  # the seeds did sample differently


def test_format_schema_free_strings_stay_valid_json(daemon, smollm2):
    for seed in range(10):  # one at a time, as measured: seed 1 writes a newline into the name
        text, reason = person_answer(daemon, smollm2, {"type": "string", "maxLength": 24}, seed)
        assert reason == "stop"
        check_person(text)


def test_raw_mode_bypasses_the_template(daemon, smollm2):
    opts = {"temperature": 0, "num_predict": 20}
    status, templated = daemon.post("/api/generate", {"model": smollm2, "prompt": "Why is the sky blue?",
                                                      "stream": False, "options": opts})
    assert status == 200
    # The same text, rendered here and sent raw, is the same prompt: the same tokens, the same answer.
    smollm2_template = daemon.post("/api/show", {"model": smollm2})[1]["template"]
    rendered = render(smollm2_template, messages=[{"role": "user", "content": "Why is the sky blue?"}],
                      system="You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    status, raw = daemon.post("/api/generate", {"model": smollm2, "prompt": rendered, "raw": True, "stream": False,
                                                "options": opts})
    assert (raw["response"], raw["prompt_eval_count"]) == (templated["response"], templated["prompt_eval_count"])
    status, bare = daemon.post("/api/generate", {"model": smollm2, "prompt": "Why is the sky blue?", "raw": True,
                                                 "stream": False, "options": opts})
    assert bare["prompt_eval_count"] < templated["prompt_eval_count"]
    assert "context" not in bare or isinstance(bare["context"], list)
    for extra in ({"system": "x"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2]}):
        status, body = daemon.post("/api/generate", {"model": smollm2, "prompt": "hi", "raw": True, **extra})
        assert (status, body) == (400, {"error": "raw mode does not support template, system, or context"})


# ----------------------------------------------------------------------------- the official client
def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city to look up
    """
    return "sunny"


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_client_chat_with_tools(daemon, models, stream):
    client = ollama.Client(host=daemon.url)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat(model=models["tools"], messages=messages, tools=[get_weather], format=CALL_SCHEMA,
                         stream=stream, options=GREEDY)
    parts = list(answer) if stream else [answer]
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)
    assert parts[-1].done and "".join(p.message.content or "" for p in parts) == ""
    # the call goes back to the model as Ollama's clients send it, and the template renders it
    messages += [{"role": "assistant", "content": "", "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
                 {"role": "tool", "content": get_weather(**calls[0].function.arguments), "tool_name": "get_weather"}]
    again = client.chat(model=models["tools"], messages=messages, tools=[get_weather],
                        options={"temperature": 0, "num_predict": 8})
    assert again.done


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_client_chat_with_format(daemon, smollm2, stream):
    client = ollama.Client(host=daemon.url)
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]}
    answer = client.chat(model=smollm2, messages=[{"role": "user", "content": "Pick a color."}], format=schema,
                         stream=stream, options={"temperature": 0, "num_predict": 30})
    parts = list(answer) if stream else [answer]
    assert json.loads("".join(p.message.content for p in parts))["color"] in ("red", "green", "blue")
    answer = client.chat(model=smollm2, messages=[{"role": "user", "content": "A JSON object, please."}],
                         format="json", stream=stream, options={"temperature": 0, "num_predict": 60})
    parts = list(answer) if stream else [answer]
    assert "".join(p.message.content for p in parts).lstrip().startswith("{")


def test_ollama_client_thinking(daemon, models):
    client = ollama.Client(host=daemon.url)
    answer = client.chat(model=models["think"], messages=[{"role": "user", "content": FEW_SHOT}], think=True,
                         options=GREEDY)
    assert (answer.message.thinking, answer.message.content) == ("a", "b")
    answer = client.generate(model=models["think"], prompt=FEW_SHOT, raw=True, options=GREEDY)
    assert (answer.thinking, answer.response) == ("a", "b")
