"""Ollama's context semantics as pure logic: the default num_ctx by GPU memory, the scheduler's use of
it, the engine's truncate/shift decisions, chat's message dropping and the protocol's two flags. The
same behaviour through the real daemon and a real model: tests/test_context_semantics.py."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from runner.daemon.context_default import GIB, default_num_ctx, tier_num_ctx
from runner.engine.context_limit import INPUT_TOO_LONG, PromptTooLong, context_full, fit_prompt, shifts
from runner.engine.protocol import CompletionRequest, ProtocolError, SamplingOptions
from runner.server.chat_truncation import fit_messages
from tests.test_scheduler_logic import model, run, scheduler, use


# -- the default num_ctx: Ollama's server/routes.go Serve ("vram-based default context") -------------

@pytest.mark.parametrize("gpus, expected", [
    ([], 4096),  # no GPU: totalVRAM is 0, the lowest tier
    ([8 * GIB], 4096),
    ([23 * GIB - 1], 4096),
    ([23 * GIB], 32768),  # `case totalVRAM >= 23*format.GibiByte`
    ([24 * GIB], 32768),
    ([47 * GIB - 1], 32768),
    ([47 * GIB], 262144),  # `case totalVRAM >= 47*format.GibiByte`
    ([139 * GIB], 262144),  # an H200
    ([12 * GIB, 12 * GIB], 32768),  # the GPUs' memory is summed
    ([24 * GIB, 24 * GIB], 262144),
])
def test_the_tier_follows_the_total_memory_of_all_gpus(gpus, expected):
    assert tier_num_ctx(gpus) == expected


def test_the_overhead_comes_off_each_gpu():
    # `totalVRAM += gpu.TotalMemory - envconfig.GpuOverhead()`, per GPU
    assert tier_num_ctx([24 * GIB, 24 * GIB], overhead_per_gpu=GIB) == 32768
    assert tier_num_ctx([GIB], overhead_per_gpu=2 * GIB) == 4096  # never below nothing


@pytest.mark.parametrize("gpus, trained, expected", [
    ([139 * GIB], 8192, 8192),  # capped at the trained context (server/sched.go effectiveContext)
    ([139 * GIB], 131072, 131072),
    ([139 * GIB], 1 << 20, 262144),
    ([], 2048, 2048),
    ([], 8192, 4096),
    ([], None, 4096),  # unknown trained context: no cap
    ([], 0, 4096),
])
def test_the_default_is_at_most_the_trained_context(gpus, trained, expected):
    assert default_num_ctx(gpus, trained) == expected


def _trained(name: str, context_length: int):
    m = model(name)
    return dataclasses.replace(m, info=dataclasses.replace(m.info, context_length=context_length))


@pytest.mark.parametrize("backend, capacity, trained, expected", [
    ("cpu", 64 * GIB, 8192, 4096),  # a CPU host: Ollama's no-GPU default, whatever its RAM
    ("cpu", 64 * GIB, 2048, 2048),
    ("cuda", 16 * GIB, 8192, 4096),
    ("cuda", 40 * GIB, 65536, 32768),
    ("cuda", 80 * GIB, 1 << 20, 262144),
    ("cuda", 80 * GIB, 8192, 8192),
])
def test_the_scheduler_loads_with_the_default_when_nothing_sets_num_ctx(backend, capacity, trained, expected):
    a = _trained("a", trained)
    sched, runners, _ = scheduler(a, capacity=capacity, backend=backend, context_length=None)

    async def scenario():
        await use(sched, a)
        assert runners.made[-1].ctx == expected
        await sched.shutdown()

    run(scenario)


def test_request_modelfile_and_setting_win_over_the_default():
    a = _trained("a", 8192)
    with_param = dataclasses.replace(_trained("b", 8192), parameters={"num_ctx": 1000})

    async def scenario(sched, runners):
        await use(sched, a, {"num_ctx": 300})  # the request's num_ctx (not capped: as before)
        assert runners.made[-1].ctx == 300
        await use(sched, with_param)  # the Modelfile's PARAMETER num_ctx
        assert runners.made[-1].ctx == 1000
        await sched.shutdown()

    sched, runners, _ = scheduler(a, with_param, capacity=80 * GIB, backend="cuda", context_length=None)
    run(lambda: scenario(sched, runners))
    # LM_CONTEXT_LENGTH / OLLAMA_CONTEXT_LENGTH: not automatic, so neither tier nor cap applies
    sched, runners, _ = scheduler(a, capacity=80 * GIB, backend="cuda", context_length=20000)

    async def setting():
        await use(sched, a)
        assert runners.made[-1].ctx == 20000
        await sched.shutdown()

    run(setting)


def test_the_gpus_are_asked_once():
    a = _trained("a", 8192)
    sched, _, memory = scheduler(a, capacity=80 * GIB, backend="cuda", context_length=None)
    asked = []
    gpus = memory.gpus
    memory.gpus = lambda: asked.append(1) or gpus()  # type: ignore[method-assign]
    sched._num_ctx(a, {})
    sched._num_ctx(a, {})
    assert len(asked) == 1


# -- the engine: truncate (runner/ollamarunner/runner.go NewSequence) and shift ---------------------

def test_a_prompt_that_fits_is_kept_whole():
    prompt = list(range(9))
    assert fit_prompt(prompt, 10, 4) is prompt
    assert fit_prompt(prompt, 10, 4, truncate=False) is prompt


def test_truncate_keeps_num_keep_and_the_newest_tokens():
    prompt = list(range(100))
    kept = fit_prompt(prompt, 20, 4)
    assert len(kept) == 19 and kept[:4] == [0, 1, 2, 3] and kept[4:] == list(range(85, 100))
    assert fit_prompt(prompt, 20, 0) == list(range(81, 100))
    assert fit_prompt(prompt, 20, 100)[:9] == list(range(9))  # num_keep at most half the room


def test_truncate_false_refuses_an_overlong_prompt_with_ollamas_words():
    # `if !params.truncate { return nil, errorInputTooLong }`, answered 400 by the runner's completion
    with pytest.raises(PromptTooLong) as err:
        fit_prompt(list(range(20)), 20, 4, truncate=False)
    assert str(err.value) == INPUT_TOO_LONG == "the input length exceeds the context length"


def test_shift_false_stops_at_the_full_context():
    # `if !seq.shift { s.removeSequence(seqIdx, llm.DoneReasonLength) }`; else ShiftCacheSlot
    assert context_full(9, 10) and not context_full(8, 10)
    assert shifts(True, True)
    assert not shifts(True, False)
    assert not shifts(False, True)  # a KV cache that cannot shift stops there too


# -- chat: whole messages dropped (server/prompt.go chatPrompt) ----------------------------------------

def _render(msgs: list[dict]) -> str:
    return "".join(f"<{m['role']}>{m['content']}" for m in msgs)


async def _count(text: str) -> int:
    return len(text.split("<")) - 1 + sum(len(part.split()) for part in text.split(">")[1:])


def _chat() -> list[dict]:
    return [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "one " * 40}, {"role": "assistant", "content": "two " * 40},
            {"role": "system", "content": "now be kind"},
            {"role": "user", "content": "three " * 40}, {"role": "assistant", "content": "four " * 40},
            {"role": "user", "content": "last"}]


def test_a_chat_that_fits_keeps_every_message():
    msgs = _chat()
    assert asyncio.run(fit_messages(msgs, 10_000, _render, _count)) is msgs


def test_the_oldest_messages_go_first_and_system_messages_stay():
    msgs = _chat()
    # the 2 system messages (3 and 4 tokens with their tags) + 2 x 41 + "last" (2): 91 fits, 132 does not
    kept = asyncio.run(fit_messages(msgs, 100, _render, _count))
    assert kept == [msgs[0], msgs[3], msgs[4], msgs[5], msgs[6]]
    kept = asyncio.run(fit_messages(msgs, 60, _render, _count))
    assert kept == [msgs[0], msgs[3], msgs[5], msgs[6]]


def test_the_newest_message_is_kept_even_when_it_alone_is_too_long():
    msgs = _chat() + [{"role": "user", "content": "long " * 500}]
    kept = asyncio.run(fit_messages(msgs, 50, _render, _count))
    assert kept == [msgs[0], msgs[3], msgs[-1]]


def test_a_short_prompt_needs_no_token_count():
    async def never(_text: str) -> int:
        raise AssertionError("tokenized a prompt shorter in bytes than the context")

    msgs = _chat()[-2:]
    assert asyncio.run(fit_messages(msgs, 1000, _render, never)) is msgs


# -- the protocol carries the flags --------------------------------------------------------------------

def test_the_completion_request_carries_truncate_and_shift():
    plain = CompletionRequest("hi", SamplingOptions())
    assert b"truncate" not in plain.to_json() and b"shift" not in plain.to_json()  # unchanged when on
    back = CompletionRequest.from_json(plain.to_json())
    assert (back.truncate, back.shift) == (True, True)
    off = CompletionRequest("hi", SamplingOptions(), [1, 2], truncate=False, shift=False)
    assert CompletionRequest.from_json(off.to_json()) == off
    with pytest.raises(ProtocolError, match="truncate must be a boolean"):
        CompletionRequest.from_json({"prompt": "x", "options": {}, "truncate": "no"})
