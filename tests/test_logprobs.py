"""Logprobs (`logprobs` / `top_logprobs`) through /api/generate, /api/chat and /v1, with smollm2:135m.

The values are checked against llama.cpp itself: the test loads the same GGUF through the low-level
bindings, decodes the same prompt and takes the log-softmax of the logits row in float64.
"""

from __future__ import annotations

import math

import llama_cpp as ll
import numpy as np
import openai
import pytest

PROMPT = "The capital of France is"


def _reference_logprobs(gguf, prompt: str) -> np.ndarray:
    """log-softmax of llama.cpp's logits for the token after `prompt` (BOS added, as the runner does)."""
    ll.llama_backend_init()
    params = ll.llama_model_default_params()
    params.n_gpu_layers = 0
    model = ll.llama_model_load_from_file(str(gguf).encode(), params)
    vocab = ll.llama_model_get_vocab(model)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch = 256, 256
    ctx = ll.llama_init_from_model(model, cparams)
    try:
        data = prompt.encode()
        buf = (ll.llama_token * 64)()
        n = ll.llama_tokenize(vocab, data, len(data), buf, 64, True, True)
        batch = ll.llama_batch_get_one(buf, n)
        assert ll.llama_decode(ctx, batch) == 0
        n_vocab = ll.llama_vocab_n_tokens(vocab)
        row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).astype(np.float64)
        return row - (row.max() + np.log(np.exp(row - row.max()).sum()))
    finally:
        ll.llama_free(ctx)
        ll.llama_model_free(model)


def _generate(daemon, model, **extra):
    status, body = daemon.post("/api/generate", {"model": model, "prompt": PROMPT, "raw": True, "stream": False,
                                                 "options": {"temperature": 0, "num_predict": 6, "seed": 1},
                                                 **extra})
    assert status == 200, body
    return body


def test_generate_logprobs_match_llama_cpp(daemon, smollm2, smollm2_path):
    body = _generate(daemon, smollm2, logprobs=True, top_logprobs=5)
    entries = body["logprobs"]
    assert len(entries) == body["eval_count"] > 0  # one entry per generated token
    assert "".join(e["token"] for e in entries) == body["response"]
    reference = _reference_logprobs(smollm2_path, PROMPT)
    first = entries[0]
    tops = first["top_logprobs"]
    assert len(tops) == 5
    assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
    best = np.argsort(-reference)[:5]
    for entry, token_id in zip(tops, best):
        assert entry["logprob"] == pytest.approx(reference[token_id], abs=2e-3)
    # Greedy: the sampled token is the most likely one, with its logprob and bytes
    assert first["token"] == tops[0]["token"] and first["logprob"] == pytest.approx(tops[0]["logprob"])
    assert bytes(first["bytes"]).decode() == first["token"]
    assert all(e["logprob"] <= 0 for e in entries)
    assert sum(math.exp(t["logprob"]) for t in tops) <= 1 + 1e-6


def test_logprobs_off_by_default_and_top_zero(daemon, smollm2):
    assert "logprobs" not in _generate(daemon, smollm2)
    entries = _generate(daemon, smollm2, logprobs=True)["logprobs"]
    assert entries and all("top_logprobs" not in e for e in entries)
    # top_logprobs without logprobs asks for nothing, as in Ollama
    assert "logprobs" not in _generate(daemon, smollm2, top_logprobs=3)


def test_streamed_chat_logprobs_equal_the_merged_answer(daemon, smollm2):
    req = {"model": smollm2, "messages": [{"role": "user", "content": "Say hello."}], "logprobs": True,
           "top_logprobs": 2, "options": {"temperature": 0, "num_predict": 12}}
    status, lines = daemon.post("/api/chat", req)
    assert status == 200
    streamed = [e for line in lines for e in line.get("logprobs", [])]
    status, merged = daemon.post("/api/chat", {**req, "stream": False})
    assert status == 200
    assert len(streamed) == merged["eval_count"] == len(merged["logprobs"])
    assert [e["token"] for e in streamed] == [e["token"] for e in merged["logprobs"]]
    assert "".join(e["token"] for e in streamed) == merged["message"]["content"]


def test_sampled_tokens_have_logprobs(daemon, smollm2):
    body = _generate(daemon, smollm2, logprobs=True,
                     options={"temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_predict": 8, "seed": 5})
    assert len(body["logprobs"]) == body["eval_count"]
    assert all(-50 < e["logprob"] <= 0 for e in body["logprobs"])


@pytest.mark.parametrize("extra, message", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs must be between 0 and 20"),
    ({"logprobs": "yes"}, "invalid value for logprobs"),
    ({"logprobs": True, "top_logprobs": "2"}, "invalid value for top_logprobs"),
])
def test_bad_logprobs_fields(daemon, smollm2, extra, message):
    for path, body in (("/api/generate", {"prompt": "hi"}), ("/api/chat", {"messages": [{"role": "user",
                                                                                           "content": "hi"}]})):
        status, answer = daemon.post(path, {"model": smollm2, **body, **extra})
        assert status == 400 and message in answer["error"], (path, answer)


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused")


def test_openai_chat_logprobs(client, smollm2):
    kwargs = dict(model=smollm2, messages=[{"role": "user", "content": "Name a fruit."}], temperature=0,
                  max_tokens=10, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content)
    assert "".join(c.token for c in content) == whole.choices[0].message.content
    streamed = [c for chunk in client.chat.completions.create(**kwargs, stream=True)
                for choice in chunk.choices if choice.logprobs for c in choice.logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    plain = client.chat.completions.create(**{**kwargs, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_openai_completion_logprobs(client, smollm2):
    r = client.completions.create(model=smollm2, prompt=PROMPT, temperature=0, max_tokens=5, logprobs=2)
    entries = r.choices[0].logprobs.content  # Ollama's /v1 shape: {"content": [...]} as for chat
    assert len(entries) == r.usage.completion_tokens
    assert all(len(e["top_logprobs"]) == 2 for e in entries)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=smollm2, prompt=PROMPT, max_tokens=5, logprobs=25)
