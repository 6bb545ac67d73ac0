"""/v1/responses through the openai SDK and /v1/messages through the anthropic SDK."""

from __future__ import annotations

import anthropic
import openai
import pytest


def test_responses_create(oai, smollm2):
    r = oai.responses.create(model=smollm2, input="Why is the sky blue?", instructions="Answer in one sentence.",
                             temperature=0, max_output_tokens=40)
    assert r.status in ("completed", "incomplete")
    assert any(w in r.output_text.lower() for w in ("scatter", "light", "sun", "atmosphere"))
    assert r.usage.output_tokens > 0


def test_responses_items_and_stream(oai, smollm2):
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Say hi."}]},
             {"role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
             {"role": "user", "content": "Now say bye."}]
    whole = oai.responses.create(model=smollm2, input=items, temperature=0, max_output_tokens=16).output_text
    events = list(oai.responses.create(model=smollm2, input=items, temperature=0, max_output_tokens=16, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole


def test_responses_errors(oai, smollm2):
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="missing", input="hi")
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=smollm2, input=[])


def test_messages_create(claude, smollm2):
    m = claude.messages.create(model=smollm2, max_tokens=40, system="Be concise.", extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": "Why is the sky blue?"}])
    assert m.role == "assistant" and m.content[0].type == "text"
    assert any(w in m.content[0].text.lower() for w in ("scatter", "light", "sun", "atmosphere"))
    assert m.stop_reason in ("end_turn", "max_tokens") and m.usage.output_tokens > 0


def test_messages_stream_matches(claude, smollm2):
    kwargs = dict(model=smollm2, max_tokens=20, extra_body={"temperature": 0},
                  messages=[{"role": "user", "content": [{"type": "text", "text": "Name a fruit."}]}])
    whole = claude.messages.create(**kwargs).content[0].text
    with claude.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == whole and final.stop_reason in ("end_turn", "max_tokens")


def test_messages_errors(claude, smollm2):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="missing", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=smollm2, max_tokens=0, messages=[{"role": "user", "content": "hi"}])


def test_input_that_makes_no_messages_is_a_400_in_openais_shape(oai, smollm2):
    # A reasoning item alone gives the chat no turn: /v1 has no load-only request (Ollama's /api/chat has),
    # so this is the client's mistake, answered before anything is loaded or run.
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=smollm2, input=[{"type": "reasoning", "summary": []}])
    assert exc.value.body["param"] == "input" and exc.value.body["message"] == "input must not be empty"
    assert exc.value.body["type"] == "invalid_request_error"
