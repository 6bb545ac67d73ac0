"""Prefixes shared across the slots of a group (runner/engine/prefix_share.py, batch.py): a prompt
whose leading tokens another slot computed copies that slot's KV stream instead of computing them,
concurrent arrivals with one system prompt compute it once, and a free slot that must be overwritten is
the least recently used one.

CPU, smollm2, greedy: steps are batch-invariant and only whole prefill chunks are shared, so the text
with a copied prefix must equal the text computed from scratch. The engine runs in this process."""

from __future__ import annotations

import time

import pytest

from runner.engine.model import LoadedModel
from runner.engine.protocol import LaunchConfig
from tests.engine_harness import EngineRun

CHUNK = 32  # num_batch: the prefill chunk, and so the granule of what may be shared
SYSTEM = ("You are a careful assistant. Answer briefly, in plain words, and say when you do not know. "
          "Never invent facts, names or numbers. ") * 3


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = LoadedModel(LaunchConfig(model=str(smollm2_path), num_ctx=512, parallel=4, num_thread=2, num_batch=CHUNK))
    yield m
    m.close()


def prompt(model, user: str) -> list[int]:
    return model.tokenize(SYSTEM + "\nUser: " + user + "\nAssistant:")


def shared(model) -> int:
    """The tokens the test prompts share, rounded down to whole chunks (what a copy may take)."""
    a, b = prompt(model, "Name a colour."), prompt(model, "Why is the sky blue?")
    n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return n // CHUNK * CHUNK


def alone(model, tokens: list[int], n: int = 16) -> tuple[str, int]:
    """Greedy text and prompt_eval_count in a fresh engine: nothing to reuse."""
    with EngineRun(model) as run:
        req = run.submit(tokens, temperature=0, num_predict=n)
        return run.wait(req), req.prompt_eval_count


def holding(run: EngineRun, tokens: list[int]) -> list[int]:
    """The slots whose cache starts with `tokens`."""
    return [s.seq_id for s in run.engine.slots if s.cached[:len(tokens)] == tokens]


def test_a_prefix_in_a_busy_slot_is_copied_not_computed(model):
    n_shared = shared(model)
    assert n_shared >= 2 * CHUNK
    second = prompt(model, "Why is the sky blue?")
    expected, full_count = alone(model, second)
    assert full_count == len(second)
    with EngineRun(model) as run:
        first_prompt = prompt(model, "Name a colour.")
        first = run.submit(first_prompt, temperature=0, num_predict=400)
        while run.pieces.get(first.id, 0) < 2:  # generating: its prompt is in its slot
            time.sleep(0.01)
        req = run.submit(second, temperature=0, num_predict=16)
        text = run.wait(req)
        run.engine.cancel(first)
        assert len(holding(run, first_prompt)) == len(holding(run, second)) == 1
        assert holding(run, first_prompt) != holding(run, second)
    assert req.prompt_eval_count == len(second) - n_shared
    assert text == expected


def test_concurrent_arrivals_compute_the_shared_prefix_once(model):
    users = ["Name a colour.", "Why is the sky blue?", "Say hello.", "Count to three."]
    prompts = [prompt(model, u) for u in users]
    n_shared = shared(model)
    expected = [alone(model, p)[0] for p in prompts]
    with EngineRun(model) as run:
        reqs = [run.submit(p, temperature=0, num_predict=16) for p in prompts]
        texts = [run.wait(r) for r in reqs]
    counts = [r.prompt_eval_count for r in reqs]
    # one request computed the shared chunks; each of the others only its own tail
    assert sum(counts) == sum(len(p) for p in prompts) - 3 * n_shared, counts
    assert texts == expected


def test_a_free_slot_to_overwrite_is_the_least_recently_used(model):
    topics = ["apples", "rivers", "engines", "violins", "glaciers"]
    prompts = [model.tokenize(f"Write three long sentences about {t}, each with many details about {t}. " * 3)
               for t in topics]
    assert all(len(p) > CHUNK for p in prompts)
    with EngineRun(model) as run:
        for p in prompts[:4]:  # one after the other: slots 0..3, in that order
            run.wait(run.submit(p, temperature=0, num_predict=2))
        again = run.submit(prompts[0], temperature=0, num_predict=2)  # slot 0's cache serves it
        run.wait(again)
        assert again.prompt_eval_count < len(prompts[0])
        new = run.submit(prompts[4], temperature=0, num_predict=2)
        run.wait(new)
        held = [next((i for i, p in enumerate(prompts) if s.cached[:len(p)] == p), None) for s in run.engine.slots]
    # slot 1 (the first prompt's neighbour, used longest ago) went; slot 0, used just now, kept its prefix
    assert held == [0, 4, 2, 3]
