"""Ollama's context semantics through the real daemon and smollm2 on the CPU: the default num_ctx,
`truncate` and `shift` on /api/generate and /api/chat, and chat's truncation by whole messages.

Ollama's source these follow (github.com/ollama/ollama):
- server/routes.go Serve: the default num_ctx by total GPU memory (4096 without a GPU);
  server/sched.go effectiveContext: at most the model's trained context.
- api/types.go GenerateRequest/ChatRequest: Truncate and Shift (*bool, unset is true).
- runner/ollamarunner/runner.go NewSequence: `if !params.truncate { return nil, errorInputTooLong }`,
  errorInputTooLong = "the input length exceeds the context length", answered 400 (http.StatusBadRequest).
- the same file's batch loop: `if !seq.shift { s.removeSequence(seqIdx, llm.DoneReasonLength) }`
  (done_reason "length"), else ShiftCacheSlot.
- server/prompt.go chatPrompt: drop the oldest messages until the rendered prompt's tokens fit num_ctx,
  keeping the system messages and the newest message.
The pure logic underneath: tests/test_context_limits_logic.py.
"""

from __future__ import annotations

import pytest

from modelfiles import render
from tests.conftest import Daemon

TOO_LONG = "the input length exceeds the context length"
CHATML = ("{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
          "<|im_start|>assistant\n")
RGB = ("red green blue " * 30).strip()  # about 90 tokens that smollm2 goes on repeating at temperature 0


@pytest.fixture(scope="module")
def d(tmp_path_factory, smollm2_path, tiny_gguf):
    # No LM_CONTEXT_LENGTH: the default is the automatic one
    daemon = Daemon(tmp_path_factory.mktemp("context-models"), {"LM_NUM_PARALLEL": "2"}).start()
    daemon.create_from_gguf("smol", smollm2_path)
    daemon.create_from_gguf("chatml", smollm2_path, template=CHATML)
    daemon.create_from_gguf("tiny", tiny_gguf)
    yield daemon
    daemon.stop()


def _ps_context(d: Daemon, name: str) -> int:
    return {m["name"]: m["context_length"] for m in d.get("/api/ps")[1]["models"]}[name]


def _count(d: Daemon, model: str, text: str, num_ctx: int) -> int:
    status, body = d.post("/api/tokenize", {"model": model, "content": text, "add_special": True,
                                            "options": {"num_ctx": num_ctx}})
    assert status == 200, body
    return len(body["tokens"])


def test_the_default_context_on_the_cpu_is_ollamas_without_a_gpu(d):
    # No GPU: totalVRAM 0, so 4096; the tiny model was trained on 2048, which caps it.
    for name, expected in (("smol", 4096), ("tiny", 2048)):
        status, body = d.post("/api/generate", {"model": name, "prompt": "hi", "stream": False,
                                                "options": {"num_predict": 1}})
        assert status == 200, body
        assert _ps_context(d, f"{name}:latest") == expected


def test_truncate_false_refuses_an_overlong_prompt(d):
    body = {"model": "smol", "raw": True, "prompt": RGB * 2, "truncate": False,
            "options": {"num_ctx": 128, "num_predict": 1}}
    for stream in (False, True):  # refused before the first chunk: a plain 400 either way
        status, answer = d.post("/api/generate", {**body, "stream": stream})
        assert (status, answer) == (400, {"error": TOO_LONG})
    status, answer = d.post("/api/generate", {**body, "truncate": True, "stream": False})
    assert status == 200 and answer["prompt_eval_count"] < 128, answer  # cut to the context instead
    status, answer = d.post("/api/generate", {**body, "truncate": "no"})
    assert status == 400 and "truncate" in answer["error"]


def test_shift_false_stops_at_the_end_of_the_context(d):
    n_prompt = _count(d, "smol", RGB, 128)
    body = {"model": "smol", "raw": True, "prompt": RGB, "stream": False,
            "options": {"num_ctx": 128, "num_predict": 120, "temperature": 0}}
    status, stopped = d.post("/api/generate", {**body, "shift": False})
    assert status == 200, stopped
    assert stopped["done_reason"] == "length" and n_prompt + stopped["eval_count"] <= 128, stopped
    status, shifted = d.post("/api/generate", body)  # shift: true (the default) goes past the end
    assert status == 200 and shifted["eval_count"] == 120 and n_prompt + 120 > 128, shifted
    assert shifted["response"].startswith(stopped["response"])


def _render(msgs: list[dict]) -> str:
    """The prompt the daemon renders for these messages (the same Go template engine, which also merges
    adjacent messages of one role, as Ollama's collate does)."""
    return render(CHATML, messages=msgs)


def test_chat_drops_whole_old_messages_and_keeps_system_and_newest(d):
    num_ctx = 256
    msgs = [{"role": "system", "content": "You answer in one word."}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"Tell me about topic {i}. " + "words " * 30},
                 {"role": "assistant", "content": f"Topic {i} is " + "long " * 30}]
    msgs.insert(5, {"role": "system", "content": "Be kind."})
    msgs.append({"role": "user", "content": "Say yes."})
    # chatPrompt's loop, done here with the daemon's tokenizer: the first start that fits
    expected = None
    for i in range(len(msgs)):
        kept = [m for m in msgs[:i] if m["role"] == "system"] + msgs[i:]
        if _count(d, "chatml", _render(kept), num_ctx) <= num_ctx or i == len(msgs) - 1:
            expected = kept
            break
    assert 2 < len(expected) < len(msgs) - 2 and expected[0] == msgs[0] and expected[-1] == msgs[-1]
    assert {"role": "system", "content": "Be kind."} in expected  # it came before the kept ones
    status, answer = d.post("/api/chat", {"model": "chatml", "messages": msgs, "stream": False,
                                          "options": {"num_ctx": num_ctx, "num_predict": 1}})
    assert status == 200, answer
    # The first request on this runner: nothing cached, so every prompt token is counted. A cut token by
    # token (what lm did before) would have kept num_ctx - 1 = 255.
    n_expected = _count(d, "chatml", _render(expected), num_ctx)
    assert answer["prompt_eval_count"] == n_expected < num_ctx - 1
    status, answer = d.post("/api/chat", {"model": "chatml", "messages": msgs, "stream": False, "truncate": False,
                                          "options": {"num_ctx": num_ctx, "num_predict": 1}})
    assert (status, answer) == (400, {"error": TOO_LONG})
