"""A request parsed once into typed values (runner/server/request.py), the load-only result type
(runner/server/generate.py), the limits applied after model resolution (security.apply_limits), and
openapi.py's option ranges against the ones the daemon enforces. Pure: no daemon, no store, no runner."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import pytest

from runner.server.errors import ApiError
from runner.server.generate import LoadOnly, Prepared, prepare_chat, prepare_generate, prepare_turns
from runner.server.openapi import _schemas
from runner.server.request import CompletionParams, completion_params, model_request
from runner.server.security import apply_limits, check_limits, option_bounds
from runner.settings import Settings


def _cfg(capabilities=("completion",), **parameters):
    """What the parse reads of a ModelConfig: its capabilities, parameters and names."""
    return SimpleNamespace(capabilities=list(capabilities), parameters=parameters, display="m",
                           stored=SimpleNamespace(name="m"), key="m")


def _settings(**kw) -> Settings:
    base = dict(host="127.0.0.1", port=0, models_dir=None, keep_alive=300, num_parallel=0, max_loaded_models=0,
                max_queue=8, context_length=2048, flash_attention=None, kv_cache_type="f16", load_timeout=60,
                debug=False, noprune=False)
    return Settings(**{**base, **kw})


def _refused(call, *args, **kw) -> ApiError:
    with pytest.raises(ApiError) as exc:
        call(*args, **kw)
    return exc.value


def test_options_are_the_models_parameters_under_the_requests_validated_once():
    cfg = _cfg(temperature=0.7, num_ctx=4096, stop=["<end>"])
    req = completion_params(cfg, {"model": "m", "options": {"temperature": 0, "seed": 3}}, chat=True)
    assert req.options == {"temperature": 0, "num_ctx": 4096, "stop": ["<end>"], "seed": 3}
    assert (req.model, req.cfg, req.chat, req.stream, req.keep_alive, req.grammar) == ("m", cfg, True, True, None, None)
    assert cfg.parameters == {"temperature": 0.7, "num_ctx": 4096, "stop": ["<end>"]}  # not written through
    assert "temperature" in _refused(completion_params, cfg, {"options": {"temperature": "hot"}}, chat=True).message
    assert _refused(completion_params, cfg, {"options": [1]}, chat=True).status == 400


def test_format_logprobs_keep_alive_and_stream_are_read_into_the_request():
    req = completion_params(_cfg(), {"format": "json", "logprobs": True, "top_logprobs": 3, "keep_alive": "5m",
                                      "stream": False}, chat=False)
    assert req.grammar and req.options["grammar"] == req.grammar
    assert (req.logprobs, req.top_logprobs, req.options["logprobs"], req.options["top_logprobs"]) == (True, 3, True, 3)
    assert (req.keep_alive, req.stream, req.chat) == (300.0, False, False)
    assert completion_params(_cfg(), {"top_logprobs": 3}, chat=False).top_logprobs == 0  # only with logprobs
    assert "top_logprobs" in _refused(completion_params, _cfg(), {"top_logprobs": 21}, chat=False).message
    assert "format" in _refused(completion_params, _cfg(), {"format": 3}, chat=False).message
    assert "stream" in _refused(completion_params, _cfg(), {"stream": "yes"}, chat=False).message
    assert _refused(completion_params, _cfg(), {"keep_alive": "soon"}, chat=False).status == 400


def test_think_defaults_as_ollamas():
    assert completion_params(_cfg(("completion", "thinking")), {}, chat=True).think is True
    assert completion_params(_cfg(("completion", "thinking")), {"think": "low"}, chat=True).think == "low"
    assert completion_params(_cfg(), {}, chat=True).think is None
    assert "does not support thinking" in _refused(completion_params, _cfg(), {"model": "m", "think": True},
                                                   chat=True).message


def test_model_request_is_frozen_and_what_inference_takes():
    req = model_request(_cfg(num_ctx=512), {"model": "e", "options": {"num_thread": 2}, "keep_alive": 0})
    assert (req.model, req.options, req.keep_alive) == ("e", {"num_ctx": 512, "num_thread": 2}, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.keep_alive = 5


def _run(coro):
    return asyncio.run(coro)


NO_IO = object()  # the aiohttp request: touching it (its app, its store) would fail the test


def test_nothing_to_complete_is_load_only_and_nothing_is_loaded_while_preparing():
    prep = _run(prepare_chat(NO_IO, {"model": "m", "messages": [], "keep_alive": 0}, _cfg()))
    assert type(prep) is LoadOnly and prep.params.keep_alive == 0 and prep.params.chat
    prep = _run(prepare_generate(NO_IO, {"model": "m"}, _cfg()))
    assert type(prep) is LoadOnly and not prep.params.chat
    assert isinstance(prep.params, CompletionParams)


def test_the_dialects_answer_no_messages_with_a_400_naming_their_field():
    for param in ("messages", "input"):
        with pytest.raises(ApiError) as exc:
            _run(prepare_turns(NO_IO, {"model": "m", "messages": []}, param, _cfg()))
        assert (exc.value.status, exc.value.param, exc.value.message) == (400, param, f"{param} must not be empty")


def test_a_raw_prompt_is_prepared_with_its_parsed_request():
    prep = _run(prepare_generate(NO_IO, {"model": "m", "prompt": "hi", "raw": True, "options": {"seed": 1}},
                                 _cfg(top_k=5)))
    assert type(prep) is Prepared and prep.prompt == "hi" and prep.params.options == {"top_k": 5, "seed": 1}
    assert not prep.chat


def test_limits_come_after_the_model_and_respect_its_own_num_predict():
    s = _settings(max_predict=8)
    request = SimpleNamespace(app={"settings": s}, path="/api/generate")
    body = {"model": "m", "prompt": "x"}
    apply_limits(request, body, _cfg(num_predict=5))  # the model's own limit is within LM_MAX_PREDICT
    assert "options" not in body
    apply_limits(request, body, _cfg(num_predict=50))
    assert body["options"] == {"num_predict": 8}
    v1 = SimpleNamespace(app={"settings": s}, path="/v1/chat/completions")
    body = {"model": "m", "messages": [], "max_tokens": 9}
    with pytest.raises(ApiError) as exc:
        apply_limits(v1, body, _cfg())
    assert exc.value.param == "max_tokens" and "LM_MAX_PREDICT" in exc.value.message
    apply_limits(SimpleNamespace(app={}, path="/api/generate"), {"options": {"num_ctx": -5}}, _cfg())  # no settings


@pytest.mark.parametrize("max_predict", [0, 8])
def test_openapi_states_the_option_ranges_the_daemon_enforces(max_predict):
    s = _settings(max_context=4096, max_predict=max_predict)
    schema = _schemas(s)
    options = next(v for v in _walk(schema) if isinstance(v, dict) and "num_ctx" in v.get("properties", {}))
    props = options["properties"]
    bounds = option_bounds(s)
    for name, (low, high, _) in bounds.items():
        assert (props[name]["minimum"], props[name]["maximum"]) == (low, high), name
        for value in (low, high):
            check_limits("/api/generate", {"options": {name: value}}, s)
        for value in (low - 1, high + 1):
            with pytest.raises(ApiError, match=f"options.{name} must be between {low} and {high}"):
                check_limits("/api/generate", {"options": {name: value}}, s)
    assert props["num_predict"]["maximum"] == (8 if max_predict else 2**63 - 1)
    assert props["num_ctx"]["maximum"] == 4096


def _walk(obj):
    yield obj
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    for child in children:
        yield from _walk(child)
