"""Sampler chains in the engine, on the CPU with smollm2: a slot's chain reused by the next request with
the same options samples exactly as a new one, and a grammar constrains its request alone.

The engine runs in this process here (no HTTP): what is under test is the decode loop's sampling."""

from __future__ import annotations

import threading

import pytest

from runner.engine.batch import Engine, Request
from runner.engine.model import LoadedModel
from runner.engine.protocol import LaunchConfig
from runner.engine.sampling import SamplingOptions

GREEDY = {"temperature": 0}
SEEDED = [{"seed": 1, "temperature": 1.0}, {"seed": 2, "temperature": 1.0},
          {"seed": 3, "temperature": 1.0, "repeat_penalty": 1.5, "top_k": 20, "top_p": 0.8}]


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = LoadedModel(LaunchConfig(model=str(smollm2_path), num_ctx=256, parallel=4, num_thread=2))
    yield m
    m.close()


def generate(model, option_sets: list[dict], *, sequential: bool = False,
             prompt: str = "Once upon a time", n: int = 24) -> list[str]:
    """Texts of one request per option set, all at once (or one after another: the same slot again)."""
    texts: dict[int, str] = {}
    done = threading.Event()
    finished: list = []

    def on_events(events):
        for e in events:
            assert e.error is None, e.error
            texts[e.request.id] = texts.get(e.request.id, "") + e.text
            if e.done:
                finished.append(e.request.id)
                done.set()

    engine = Engine(model, 4, on_events)
    engine.start()
    try:
        tokens = model.tokenize(prompt)
        requests = [Request(prompt=tokens, options=SamplingOptions(num_predict=n, **o)) for o in option_sets]
        for i, req in enumerate(requests):
            done.clear()
            engine.submit(req)
            if sequential:
                assert done.wait(60) and finished[-1] == req.id
        while len(finished) < len(requests):
            done.clear()
            if len(finished) < len(requests):
                assert done.wait(60), "the engine stopped answering"
    finally:
        engine.stop()
    return [texts.get(r.id, "") for r in requests]


def test_a_reused_chain_samples_as_a_new_one(model):
    """The same seeded request three times in a row takes the same slot and its kept chain, reset."""
    fresh = [generate(model, [o])[0] for o in SEEDED]
    again = generate(model, [SEEDED[0]] * 3 + SEEDED[1:], sequential=True)
    assert again[:3] == [fresh[0]] * 3
    assert again[3:] == fresh[1:]
    assert len(set(fresh)) == len(fresh)  # the seeds and options really differ


def test_a_random_seed_draws_anew_from_a_kept_chain(model):
    randoms = generate(model, [{"temperature": 1.0}] * 3, sequential=True)
    assert len(set(randoms)) > 1


def test_a_grammar_constrains_the_text_beside_unconstrained_requests(model):
    grammar = 'root ::= ("yes" | "no") "."'
    constrained = {"temperature": 1.0, "seed": 5, "grammar": grammar}
    texts = generate(model, [constrained, *SEEDED], prompt="Is the sky blue? Answer:")
    assert texts[0] in ("yes.", "no.")
    assert texts[1:] == generate(model, SEEDED, prompt="Is the sky blue? Answer:")
