"""Thinking through every dialect, with the real openai and anthropic clients: /v1/chat/completions
(`reasoning_effort` in, `reasoning` out, as Ollama's openai layer), the Responses API (`reasoning` in,
reasoning output items out) and Anthropic's Messages API (`thinking` config in, thinking blocks out).

The model thinks for sure: smollm2 continuing a few-shot text that ends in `<think>` (see
test_chat_capabilities.py), so every answer is thinking "a", then content "b".
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.test_chat_capabilities import CONTINUE_TEMPLATE, FEW_SHOT

PARAMS = {"stop": ["\n"], "temperature": 0}


@pytest.fixture(scope="module")
def thinker(daemon, smollm2_path) -> str:
    daemon.create_from_gguf("dialect-think", smollm2_path, template=CONTINUE_TEMPLATE, parameters=PARAMS)
    return "dialect-think"


USER = [{"role": "user", "content": FEW_SHOT}]


# ----------------------------------------------------------------------------- chat completions
def test_chat_completion_returns_reasoning(oai, thinker):
    for extra in ({}, {"reasoning_effort": "high"}, {"reasoning_effort": "minimal"},
                  {"extra_body": {"reasoning": {"effort": "medium"}}}):
        r = oai.chat.completions.create(model=thinker, messages=USER, max_tokens=60, **extra)
        message = r.choices[0].message
        assert (message.model_extra["reasoning"], message.content) == ("a", "b"), extra
    r = oai.chat.completions.create(model=thinker, messages=USER, max_tokens=60, reasoning_effort="none")
    assert r.choices[0].message.content == "a</think>b" and "reasoning" not in r.choices[0].message.model_extra


def test_chat_completion_streams_reasoning_first(oai, thinker):
    chunks = list(oai.chat.completions.create(model=thinker, messages=USER, max_tokens=60, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [(d.model_extra or {}).get("reasoning") or "" for d in deltas]
    content = [d.content or "" for d in deltas]
    assert ("".join(reasoning), "".join(content)) == ("a", "b")
    assert max(i for i, t in enumerate(reasoning) if t) < min(i for i, c in enumerate(content) if c)
    assert deltas[0].role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"


def test_chat_completion_reasoning_given_back_reaches_the_template(oai, thinker):
    def prompt_tokens(assistant: dict) -> int:
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "b", **assistant},
                    {"role": "user", "content": "y"}]
        return oai.chat.completions.create(model=thinker, messages=messages, max_tokens=1).usage.prompt_tokens

    plain = prompt_tokens({})
    assert prompt_tokens({"reasoning": "a long thought"}) > plain  # <think>a long thought</think> rendered
    assert prompt_tokens({"reasoning_content": "a long thought"}) > plain


def test_chat_completion_reasoning_errors(oai, thinker, smollm2):
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=thinker, messages=USER, reasoning_effort="bogus")
    assert exc.value.body["message"] == ('invalid reasoning value: "bogus" (must be "minimal", "low", "medium", '
                                         '"high", "xhigh", "ultra", "max", or "none")')
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=smollm2, messages=USER, reasoning_effort="high")
    assert exc.value.body["message"] == '"smollm2:135m" does not support thinking'
    r = oai.chat.completions.create(model=smollm2, messages=USER, max_tokens=2, reasoning_effort="none")
    assert r.choices[0].finish_reason in ("stop", "length")


# ----------------------------------------------------------------------------- Responses API
def test_responses_reasoning_item(oai, thinker):
    r = oai.responses.create(model=thinker, input=FEW_SHOT, max_output_tokens=60)
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert r.output[0].summary[0].text == "a" and r.output[0].id.startswith("rs_")
    assert r.output_text == "b"
    r = oai.responses.create(model=thinker, input=FEW_SHOT, max_output_tokens=60, reasoning={"effort": "none"})
    assert [item.type for item in r.output] == ["message"] and r.output_text == "a</think>b"


def test_responses_stream_reasoning_events(oai, thinker):
    events = list(oai.responses.create(model=thinker, input=FEW_SHOT, max_output_tokens=60, stream=True,
                                       reasoning={"effort": "high"}))
    kinds = [e.type for e in events]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta") == "a"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "b"
    assert kinds.index("response.reasoning_summary_text.done") < kinds.index("response.output_text.delta")
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["reasoning", "message"]
    final = events[-1].response
    assert events[-1].type == "response.completed" and [i.type for i in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "a" and final.reasoning.effort == "high"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_reasoning_item_given_back(oai, thinker):
    def input_tokens(items: list) -> int:
        return oai.responses.create(model=thinker, input=items, max_output_tokens=1).usage.input_tokens

    base = [{"role": "user", "content": "x"}]
    answer = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]}
    thought = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "a long thought"}]}
    after = [{"role": "user", "content": "y"}]
    assert input_tokens(base + [thought, answer] + after) > input_tokens(base + [answer] + after)


# ----------------------------------------------------------------------------- Anthropic Messages
def test_messages_thinking_blocks(claude, thinker):
    for extra in ({}, {"thinking": {"type": "enabled", "budget_tokens": 1024}}):
        m = claude.messages.create(model=thinker, max_tokens=60, messages=USER, **extra)
        assert [b.type for b in m.content] == ["thinking", "text"]
        assert (m.content[0].thinking, m.content[1].text) == ("a", "b")
    m = claude.messages.create(model=thinker, max_tokens=60, messages=USER, thinking={"type": "disabled"})
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "a</think>b"


def test_messages_stream_thinking_deltas(claude, thinker):
    whole = claude.messages.create(model=thinker, max_tokens=60, messages=USER)
    with claude.messages.stream(model=thinker, max_tokens=60, messages=USER,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert "".join(d.thinking for d in deltas if d.type == "thinking_delta") == "a"
    assert "".join(d.text for d in deltas if d.type == "text_delta") == "b"
    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text")]
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in final.content] == \
        [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in whole.content]


def test_messages_thinking_given_back_and_errors(claude, thinker, smollm2):
    def input_tokens(assistant_blocks: list) -> int:
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": assistant_blocks},
                    {"role": "user", "content": "y"}]
        return claude.messages.create(model=thinker, max_tokens=1, messages=messages).usage.input_tokens

    text = {"type": "text", "text": "b"}
    thought = {"type": "thinking", "thinking": "a long thought", "signature": ""}
    assert input_tokens([thought, text]) > input_tokens([text])
    assert input_tokens([{"type": "redacted_thinking", "data": "xx"}, text]) == input_tokens([text])
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(model=smollm2, max_tokens=5, messages=USER,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert "does not support thinking" in exc.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=thinker, max_tokens=5, messages=USER, extra_body={"thinking": "yes"})
