"""Sampler chains in the engine, on the CPU with smollm2: a slot's chain reused by the next request with
the same options samples exactly as a new one, and llama.cpp's backend sampling (chains attached to the
context, the decode graph samples) gives what the host-side chains give, grammars staying on the host;
and so do host chains sampling from a backend top_k's candidates.

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


def generate(model, option_sets: list[dict], *, backend: bool, sequential: bool = False,
             prompt: str = "Once upon a time", n: int = 24, backend_top_k: int = 0) -> list[str]:
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

    engine = Engine(model, 4, on_events, backend_sampling=backend, backend_top_k=backend_top_k)
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
    fresh = [generate(model, [o], backend=False)[0] for o in SEEDED]
    again = generate(model, [SEEDED[0]] * 3 + SEEDED[1:], backend=False, sequential=True)
    assert again[:3] == [fresh[0]] * 3
    assert again[3:] == fresh[1:]
    assert len(set(fresh)) == len(fresh)  # the seeds and options really differ


def test_backend_sampling_matches_the_host_chains(model):
    host = generate(model, [GREEDY, *SEEDED], backend=False)
    on_graph = generate(model, [GREEDY, *SEEDED], backend=True)
    assert on_graph[0] == host[0] and host[0].strip()  # greedy: the same argmax, whatever samples it
    assert on_graph[1:] == generate(model, SEEDED, backend=True)  # seeded: reproducible
    assert all(t.strip() for t in on_graph)
    # A random seed draws anew each time, also from a kept, reset chain.
    randoms = generate(model, [{"temperature": 1.0}] * 3, backend=True, sequential=True)
    assert len(set(randoms)) > 1


def test_backend_sampling_keeps_grammars_on_the_host(model):
    grammar = 'root ::= ("yes" | "no") "."'
    constrained = {"temperature": 1.0, "seed": 5, "grammar": grammar}
    texts = generate(model, [constrained, *SEEDED], backend=True, prompt="Is the sky blue? Answer:")
    assert texts[0] in ("yes.", "no.")
    assert texts == generate(model, [constrained, *SEEDED], backend=False, prompt="Is the sky blue? Answer:")


def test_host_chains_on_backend_top_k_candidates_sample_as_from_the_whole_vocabulary(model):
    # Requests the 40 candidates serve (top_k 40 and 20) and ones that need the whole vocabulary (top_k
    # off, top_k above 40, a grammar), at once and then one after another in the same slots, so that the
    # slots' top_k chains are detached and attached again between requests.
    grammar = 'root ::= ("yes" | "no") "."'
    mix = [GREEDY, *SEEDED, {"seed": 4, "temperature": 1.0, "top_k": 0},
           {"seed": 6, "temperature": 1.0, "top_k": 100}, {"seed": 5, "temperature": 1.0, "grammar": grammar}]
    host = generate(model, mix, backend=False)
    assert generate(model, mix, backend=False, backend_top_k=40) == host
    assert generate(model, mix, backend=False, backend_top_k=40, sequential=True) == host
    assert host[-1] in ("yes.", "no.") and len(set(host)) == len(host)
