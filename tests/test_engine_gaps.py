"""Idle slots between busy ones (runner/engine/batch.py, _gap_fillers): they decode a filler token in
each step so that llama.cpp runs the step as one micro-batch. The fillers must not change what the
busy sequences produce, and a slot that carried fillers must serve its next request as a fresh one.

CPU, smollm2, seeded sampling: decode steps are batch-invariant there, so "the same text as alone" is
exact. The engine runs in this process (what is under test is the step loop)."""

from __future__ import annotations

import time

import pytest

from runner.engine.batch import Request
from runner.engine.model import LoadedModel
from runner.engine.protocol import LaunchConfig
from tests.engine_harness import EngineRun

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = LoadedModel(LaunchConfig(model=str(smollm2_path), num_ctx=256, parallel=4, num_thread=2))
    yield m
    m.close()


class Run(EngineRun):
    """Seeded requests for PROMPT."""

    wait_s = 60

    def submit(self, seed: int, n: int = 40) -> Request:
        return super().submit(self.model.tokenize(PROMPT), seed=seed, temperature=1.0, num_predict=n)


def alone(model, seed: int) -> str:
    run = Run(model)
    try:
        return run.wait(run.submit(seed))
    finally:
        run.engine.stop()


def test_fillers_change_nothing_for_busy_sequences_or_the_next_request(model):
    solo = {seed: alone(model, seed) for seed in (1, 2, 3, 4)}
    run = Run(model)
    try:
        first = run.submit(1)
        second = run.submit(2, n=200)  # the one that leaves early: slot 1 becomes a gap
        rest = [run.submit(3), run.submit(4)]
        while run.pieces.get(second.id, 0) < 3:
            assert not run.ended[second.id].is_set()
            time.sleep(0.01)
        slots = {s.req.id: s.seq_id for s in run.engine.slots if s.req}
        assert slots == {first.id: 0, second.id: 1, rest[0].id: 2, rest[1].id: 3}
        run.engine.cancel(second)
        while run.engine.slots[1].busy:
            time.sleep(0.01)
        gap = len(run.engine.slots[1].cached)
        assert [run.wait(r) for r in (first, *rest)] == [solo[1], solo[3], solo[4]]
        assert len(run.engine.slots[1].cached) > gap  # slot 1 did decode fillers meanwhile
        again = run.submit(2)  # into slot 1, which decoded fillers while the others ran
        assert run.wait(again) == solo[2]
    finally:
        run.engine.stop()
