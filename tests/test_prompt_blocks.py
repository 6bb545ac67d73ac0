"""Mixed steps (the GPU's engine mode) carry their prompt tokens in blocks that llama.cpp runs as one
micro-batch each (runner/engine/prompt_blocks.py).

The engine here is real (smollm2 on the CPU, mixed prefill forced on), driven step by step from the test
so that every batch it hands to llama_decode can be read back. `micro_batches` restates llama.cpp's
`split_equal` (src/llama-batch.cpp, per-sequence KV streams): micro-batches of consecutive sequence ids,
each taking as many tokens from every sequence as the shortest has left.
"""

from __future__ import annotations

import pytest

from runner.engine.batch import Engine, Request
from runner.engine.model import LoadedModel
from runner.engine.protocol import LaunchConfig
from runner.engine.prompt_blocks import best_block
from runner.engine.sampling import SamplingOptions


def micro_batches(seq_of_token: list[int], n_ubatch: int) -> list[int]:
    """Sizes of the micro-batches llama.cpp cuts this batch into (tokens in batch order)."""
    left: dict[int, int] = {}
    for s in seq_of_token:
        left[s] = left.get(s, 0) + 1
    sizes = []
    while left:
        run = []
        for s in dict.fromkeys(seq_of_token):  # first appearance order, as llama.cpp scans the batch
            if s in left and (not run or s == run[-1] + 1):
                run.append(s)
        per = min(min(left[s] for s in run), max(n_ubatch // len(run), 1))
        for s in run:
            left[s] -= per
            if not left[s]:
                del left[s]
        sizes.append(per * len(run))
    return sizes


def test_micro_batch_model_matches_the_known_bad_case():
    # Two prompts of 5 and 3 tokens beside a decode of sequence 0: 3 passes (1 token each, 2, then 2).
    assert micro_batches([0, 1, 1, 1, 1, 1, 2, 2, 2], 512) == [3, 4, 2]


@pytest.mark.parametrize("avail, must, budget, expected", [
    ([277], 0, 480, (0, 0, 277)),
    ([276, 276, 276], 0, 480, (0, 1, 240)),           # two of 240 beat one of 276 and three of 160
    ([35, 35, 275, 275], 0, 480, (0, 3, 35)),          # 4 x 35 ... up to where budget // n bites
    ([10, 300, 300], 1, 480, (1, 2, 240)),             # the block may leave a short neighbour out
    ([300, 300, 10], 2, 480, (0, 2, 10)),              # but must contain `must`
    ([5, 5], 0, 0, (0, 0, 0)),
])
def test_best_block(avail, must, budget, expected):
    assert best_block(avail, must, budget) == expected


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = LoadedModel(LaunchConfig(model=str(smollm2_path), num_ctx=512, parallel=8, num_batch=64, num_thread=2))
    yield m
    m.close()


def test_mixed_steps_make_no_small_micro_batches(model):
    events = []
    engine = Engine(model, 8, events.extend, mixed_prefill=True)  # not started: the test runs the steps
    group = engine.groups[0]
    capacity = group.buffer.capacity
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    requests = []

    def submit(n_words: int, n_predict: int) -> Request:
        text = " ".join(words[i % len(words)] for i in range(n_words))
        req = Request(prompt=model.tokenize(text), options=SamplingOptions(seed=1, num_predict=n_predict))
        requests.append(req)
        engine.submit(req)
        return req

    # Uneven prompts, arriving while others decode, and short requests leaving gaps behind them.
    for n_words, n_predict in ((40, 30), (13, 3), (70, 25), (25, 2), (55, 20)):
        submit(n_words, n_predict)
    steps = 0
    widest_block = 0  # the most sequences that took more than one prompt token in one step
    while engine._has_work():
        step_events: list = []
        engine._drop_cancelled(group, step_events)
        engine._admit(group, step_events)
        decoding = any(s.busy and not s.pending for s in group.slots)
        engine._launch(group)
        n = group.buffer.n
        seqs = group.buffer.seq[:n].tolist()
        sizes = micro_batches(seqs, capacity)
        widest_block = max(widest_block, sum(seqs.count(s) > 1 for s in set(seqs)))
        # The decodes' pass (every busy sequence's token), then prompt blocks: at most one of them small.
        small = [k for k in sizes[1:] if k < capacity // 4]
        assert len(small) <= 1 and (decoding or len(sizes) == 1), \
            f"step {steps}: micro-batches {sizes} for sequences {seqs}"
        if group.inflight:
            engine._complete(group, step_events)
        events.extend(step_events)
        steps += 1
        if steps == 6:  # more arrivals mid-way, into freed slots between busy ones
            submit(33, 10)
            submit(61, 12)
        assert steps < 500
    engine.stop()
    done = {e.request.id for e in events if e.done}
    assert done == {r.id for r in requests}
    assert not [e.error for e in events if e.error]
    for r in requests:
        assert 1 <= r.eval_count <= r.options.num_predict
        assert 1 <= r.prompt_eval_count <= len(r.prompt) and r.context[:len(r.prompt)] == r.prompt
    assert widest_block >= 2  # some step's budget went to a block of several prompts
