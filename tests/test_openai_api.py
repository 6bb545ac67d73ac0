"""The OpenAI-compatible API through the official `openai` SDK and raw HTTP."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused")


def test_chat_completion(client, smollm2):
    r = client.chat.completions.create(model=smollm2, messages=[{"role": "user", "content": "Why is the sky blue?"}],
                                       temperature=0, max_tokens=40, seed=3)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert any(w in choice.message.content.lower() for w in ("scatter", "light", "sun", "atmosphere"))
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_completion_stream_matches(client, smollm2):
    kwargs = dict(model=smollm2, messages=[{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": [{"type": "text", "text": "Name a color."}]}],
                  temperature=0, max_tokens=20)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    pieces, usage, reasons = [], None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    assert "".join(pieces) == whole
    assert usage is not None and usage.completion_tokens > 0
    assert reasons[-1] in ("stop", "length") and all(r is None for r in reasons[:-1])


def test_stop_and_length(client, smollm2):
    r = client.chat.completions.create(model=smollm2, messages=[{"role": "user", "content": "Count: 1, 2, 3,"}],
                                       temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_json_schema_response_format(client, smollm2):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=smollm2, messages=[{"role": "user", "content": "Describe a city as JSON."}], temperature=0,
        max_tokens=80, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj["city"], str) and isinstance(obj["population"], int)
    r = client.chat.completions.create(model=smollm2, messages=[{"role": "user", "content": "A JSON object."}],
                                       temperature=0, max_tokens=60, response_format={"type": "json_object"})
    assert r.choices[0].message.content.strip().startswith("{")


def test_completions(client, gemma3):
    r = client.completions.create(model=gemma3, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=gemma3, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_models(client, smollm2):
    ids = [m.id for m in client.models.list().data]
    assert smollm2 in ids
    m = client.models.retrieve(smollm2)
    assert m.id == smollm2 and m.owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_errors_in_openai_shape(daemon, client, smollm2):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert "not found" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=smollm2, messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=smollm2, messages=[{"role": "user", "content": "x"}], n=2)
    req = urllib.request.Request(daemon.url + "/v1/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    body = json.loads(err.value.read())
    assert err.value.code == 400 and set(body["error"]) == {"message", "type", "param", "code"}


def test_sse_ends_with_done(daemon, smollm2):
    req = urllib.request.Request(daemon.url + "/v1/chat/completions", method="POST", data=json.dumps({
        "model": smollm2, "stream": True, "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}).encode())
    lines = [line for line in urllib.request.urlopen(req).read().decode().splitlines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
