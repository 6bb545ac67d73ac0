"""Fuzzing every route of the running daemon from its own /openapi.json with schemathesis.

For each operation, schema-conforming (positive) and schema-violating (negative) requests are sent;
the daemon must answer every one with a status below 500, within a bound, and stay up. A tiny model
keeps generation fast and LM_MAX_PREDICT (the schema's maximum for num_predict) keeps it short.
/api/pull and /api/push are left out: they would reach for a remote registry.

LM_FUZZ_EXAMPLES (default 12) sets the examples per operation and mode; LM_FUZZ_SEED a seed (default:
derandomized, the same inputs every run).
"""

from __future__ import annotations

import os
import time

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from runner.settings import Settings  # noqa: E402
from runner.server.openapi import build_spec  # noqa: E402
from tests.conftest import Daemon  # noqa: E402

EXAMPLES = int(os.environ.get("LM_FUZZ_EXAMPLES", "12"))
SEED = os.environ.get("LM_FUZZ_SEED")
FUZZ_ENV = {"LM_MAX_PREDICT": "8", "LM_MAX_CONTEXT": "1024", "LM_CONTEXT_LENGTH": "256", "LM_NUM_PARALLEL": "2",
            "LM_KEEP_ALIVE": "10m", "LM_MAX_MESSAGES": "64", "LM_MAX_BATCH": "16"}
NETWORK = {("POST", "/api/pull"), ("POST", "/api/push")}
INFERENCE = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show", "/v1/chat/completions",
             "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages", "/api/tokenize", "/api/detokenize"}
TIMEOUT_S = 30


def _operations() -> list[tuple[str, str, str]]:
    s = Settings(host="127.0.0.1", port=0, models_dir=None, keep_alive=0, num_parallel=0, max_loaded_models=0,
                 max_queue=512, context_length=256, flash_attention=False, kv_cache_type="f16", load_timeout=60,
                 debug=False, noprune=False)
    spec = build_spec(s)
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if (method.upper(), path) in NETWORK:
                continue
            out.append((method.upper(), path, "positive"))
            if op.get("requestBody") or op.get("parameters"):  # otherwise there is nothing to get wrong
                out.append((method.upper(), path, "negative"))
    return out


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, tiny_gguf):
    d = Daemon(tmp_path_factory.mktemp("fuzz-models"), FUZZ_ENV).start()
    d.create_from_gguf("tiny", tiny_gguf)
    schema = schemathesis.openapi.from_url(d.url + "/openapi.json")
    yield d, schema
    d.stop()


def _steer(case, data, path: str) -> None:
    """Points most inference cases at the tiny model, and keeps most of them from forcing a reload
    (num_ctx, num_gpu, keep_alive): the fuzzing is of the HTTP surface, not of load times."""
    body = case.body
    if not isinstance(body, dict):
        return
    if path in INFERENCE and isinstance(body.get("model"), str) and data.draw(st.integers(0, 3), label="tiny") > 0:
        body["model"] = "tiny"
    if path == "/api/create" and data.draw(st.integers(0, 2), label="from-tiny") == 0:
        body["from"] = "tiny"
        body.pop("files", None)
    if data.draw(st.integers(0, 9), label="keep-load") > 0:
        body.pop("keep_alive", None)
        options = body.get("options")
        if isinstance(options, dict):
            options.pop("num_gpu", None)
            if "num_ctx" in options:
                options["num_ctx"] = 256


def _alive(d: Daemon) -> None:
    """The daemon is up and still generates (a wedged runner shows here, not only as one timeout)."""
    assert d.proc.poll() is None, f"daemon died: {d.log_path.read_text()[-3000:]}"
    assert requests.get(d.url + "/api/version", timeout=10).status_code == 200
    r = requests.post(d.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False,
                                                     "options": {"num_predict": 2, "num_ctx": 256}}, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("method,path,mode", _operations())
def test_no_server_error(fuzzed, method, path, mode):
    d, schema = fuzzed
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    session = requests.Session()
    failures: list[str] = []

    def check(case, data):
        _steer(case, data, path)
        started = time.monotonic()
        try:
            response = case.call(base_url=d.url, session=session, timeout=TIMEOUT_S)
        except requests.exceptions.Timeout:
            failures.append(f"no answer within {TIMEOUT_S}s: {case.as_curl_command()}")
            return
        except requests.exceptions.ConnectionError as exc:
            failures.append(f"connection failed ({exc}): {case.as_curl_command()}")
            return
        if response.status_code >= 500:
            failures.append(f"{response.status_code} {response.text[:300]!r} after {time.monotonic() - started:.1f}s:"
                            f" {case.as_curl_command()}")

    run = given(case=strategy, data=st.data())(check)
    if SEED is not None:
        run = seed(int(SEED))(run)
    run = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
                   suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])(run)
    run()
    _alive(d)
    assert not failures, "\n".join(failures[:5])


def test_served_spec_describes_every_route(fuzzed):
    d, _ = fuzzed
    spec = requests.get(d.url + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    for route in ["GET /", "GET /api/version", "POST /api/generate", "POST /api/chat", "POST /api/embed",
                  "POST /api/embeddings", "GET /api/tags", "POST /api/show", "POST /api/create",
                  "HEAD /api/blobs/{digest}", "POST /api/blobs/{digest}", "POST /api/copy", "DELETE /api/delete",
                  "POST /api/pull", "POST /api/push", "GET /api/ps", "POST /api/tokenize", "POST /api/detokenize",
                  "POST /v1/chat/completions",
                  "POST /v1/completions", "POST /v1/embeddings", "GET /v1/models", "GET /v1/models/{model}",
                  "POST /v1/responses", "POST /v1/messages", "GET /metrics", "GET /openapi.json"]:
        assert tuple(route.split(" ", 1)) in described, route
    # The maximums are this daemon's settings.
    options = spec["components"]["schemas"]["Options"]["properties"]
    assert options["num_predict"]["maximum"] == 8 and options["num_ctx"]["maximum"] == 1024


# Inputs the fuzzing found that the daemon once answered with 500 (a crash in a route's translation): kept
# as regression cases.
_USER = [{"role": "user", "content": "hi"}]
FOUND = [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi", "tool_calls": "x"}]},
     "openai._messages: tool_calls items are assumed to be objects"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "tool", "content": "x", "tool_call_id": [1]}]},
     "openai._messages: tool_call_id is assumed hashable"),
    ("/v1/chat/completions", {"model": "tiny", "messages": _USER, "stream": True, "stream_options": "x"},
     "openai.chat_completions: stream_options is assumed to be an object"),
    ("/v1/chat/completions", {"model": "tiny", "messages": _USER,
                              "response_format": {"type": "json_schema", "json_schema": "x"}},
     "openai._format: json_schema is assumed to be an object"),
    ("/v1/responses", {"model": "tiny", "input": "hi", "text": "x"}, "responses._format: text is assumed an object"),
    ("/v1/responses", {"model": "tiny", "input": "hi", "text": {"format": 5}},
     "responses._format: text.format is assumed an object"),
    ("/v1/responses", {"model": "tiny", "input": [{"type": "function_call", "arguments": 5}]},
     "responses._input_messages: arguments is assumed a string"),
    ("/v1/messages", {"model": "tiny", "max_tokens": 4, "messages": _USER, "tools": [1]},
     "anthropic._tools: tools items are assumed objects"),
    ("/v1/messages", {"model": "tiny", "max_tokens": 4, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": [1], "name": "f", "input": {}}]}]},
     "anthropic._messages: tool_use id is assumed hashable"),
    ("/v1/messages", {"model": "tiny", "max_tokens": 4, "messages": _USER, "system": [{"type": "text", "text": False}]},
     "anthropic._blocks_text: a text block's text is assumed a string"),
]


@pytest.mark.parametrize("path,body,bug", FOUND, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(FOUND)])
def test_found_by_fuzzing(fuzzed, path, body, bug):
    d, _ = fuzzed
    r = requests.post(d.url + path, json=body, timeout=TIMEOUT_S)
    assert 400 <= r.status_code < 500, (bug, r.status_code, r.text[:200])
