"""Speculative decoding in the batching engine (runner/engine/speculative.py, batch.py), run in this
process: the n-gram proposer's logic, greedy output token for token as without speculation (alone and
beside other requests), stop strings / num_predict / logprobs under speculation, and a statistical test
that sampling keeps the target's distribution.

CPU: decode steps of single tokens are batch-invariant here (DESIGN.md), and a verify step's rows
measured the same, so "the same tokens as without speculation" is exact for greedy and seeded runs."""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest

from runner.engine import speculative
from runner.engine.batch import Request
from runner.engine.model import LoadedModel
from runner.engine.protocol import LaunchConfig
from runner.engine.sampling import SamplingOptions
from runner.engine.speculative import NgramDraft, draft_limit, verify
from tests.engine_harness import EngineRun

PARAGRAPH = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How "
             "vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.")
COPY_PROMPT = f"<|im_start|>user\nRepeat this text exactly: {PARAGRAPH}<|im_end|>\n<|im_start|>assistant\n"
NGRAM = {"draft_type": "ngram", "draft_num_predict": 4}


# ------------------------------------------------------------------------------ pure logic


def test_ngram_proposes_what_followed_the_latest_earlier_occurrence():
    d = NgramDraft()
    history = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert d.propose(history, 4) == [4, 5, 9, 1]
    assert d.propose(history, 2) == [4, 5]  # asked again before anything followed: the same answer
    history += [4, 7, 8, 2, 3]  # "2 3" again; the trigram "8 2 3" is new, so the bigram answers
    assert d.propose(history, 3) == [4, 7, 8]  # its latest earlier occurrence (positions 7, 8)


def test_ngram_prefers_the_trigram_and_the_most_recent_match():
    d = NgramDraft()
    # "5 6" is followed by 10 most recently, but "4 5 6" only ever by 7.
    history = [4, 5, 6, 7, 0, 5, 6, 10, 4, 5, 6]
    assert d.propose(history, 1) == [7]
    e = NgramDraft()
    history = [4, 5, 6, 7, 0, 4, 5, 6, 8, 4, 5, 6]
    assert e.propose(history, 2) == [8, 4]


def test_ngram_backs_off_after_rejected_proposals():
    d = NgramDraft()
    history = [1, 2, 3, 4, 1, 2, 3]
    assert d.propose(history, 2) == [4, 1]
    history.append(9)  # rejected: the model went on with 9, not 4
    history += [1, 2, 3]
    assert d.propose(history, 2) == []  # one chance skipped
    assert d.propose(history, 2) == [9, 1]  # then it proposes again (the latest match)
    history += [5, 1, 2, 3]  # rejected again: two chances skipped
    assert [d.propose(history, 2) for _ in range(3)] == [[], [], [5, 1]]
    history += [5]  # accepted: no back-off after it
    history += [1, 2, 3]
    assert d.propose(history, 2) == [5, 1]


def test_ngram_without_a_match_or_room_proposes_nothing():
    # One NgramDraft per history (per request: its history only grows).
    assert NgramDraft().propose([], 4) == []
    assert NgramDraft().propose([1], 4) == []
    assert NgramDraft().propose([1, 2, 3, 4], 4) == []
    assert NgramDraft().propose([1, 2, 1, 2], 0) == []
    # A match ending just before the query: the proposal reaches into the query itself.
    assert NgramDraft().propose([1, 2, 1, 2], 4) == [1, 2]
    assert NgramDraft().propose([1, 1, 1], 2) == [1]
    d = NgramDraft()
    history = [1, 2, 3]
    assert d.propose(history, 2) == []
    history += [9, 1, 2]  # the index grows with the history, one call after another
    assert d.propose(history, 2) == [3, 9]


def test_verify_accepts_the_longest_agreeing_prefix_and_adds_the_targets_token():
    rows = {10: 5, 11: 6, 12: 99, 13: 7}  # what the chain samples on each output row
    seen = []

    def sample(i):
        seen.append(i)
        return rows[i]

    assert verify(sample, 10, [5, 6, 8]) == [5, 6, 99]  # the third draft is corrected
    assert seen == [10, 11, 12]  # and the chain sampled nothing past the mismatch
    seen.clear()
    rows.update({12: 8})
    assert verify(sample, 10, [5, 6, 8]) == [5, 6, 8, 7]  # all accepted: the bonus token from the last row
    assert verify(sample, 10, [4]) == [5]


def test_draft_limit_keeps_context_num_predict_and_batch_room():
    common = dict(n_ctx=100, generated=0, num_predict=-1, capacity=512, slots=4)
    assert draft_limit(4, cached=10, **common) == 4
    assert draft_limit(4, cached=95, **common) == 2  # positions 95..97 decode, 98 stays checkable
    assert draft_limit(4, cached=97, **common) == 0
    assert draft_limit(4, cached=10, **{**common, "num_predict": 10, "generated": 7}) == 2
    assert draft_limit(32, cached=10, **{**common, "capacity": 16}) == 3


def test_draft_options_are_checked():
    SamplingOptions.from_options({"draft_type": "ngram", "draft_num_predict": 8})
    for bad in ({"draft_type": "eagle"}, {"draft_num_predict": -1}, {"draft_num_predict": 33},
                {"draft_type": 3}):
        with pytest.raises(ValueError):
            SamplingOptions.from_options(bad)


# ------------------------------------------------------------------------------ the engine, smollm2


class Run(EngineRun):
    def submit(self, prompt: list[int], **options) -> Request:
        # The copy prompt's answers below were read at repeat_penalty 1.1 (lm's default before it took
        # Ollama's 1.0): with no penalty smollm2 repeats one sentence until num_predict, and a stop
        # string or an answer that ends by itself would not be tested.
        return super().submit(prompt, **{"repeat_penalty": 1.1, **options})


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    m = LoadedModel(LaunchConfig(model=str(smollm2_path), num_ctx=512, parallel=4, num_thread=1))
    yield m
    m.close()


def generated(req: Request) -> list[int]:
    return req.context[len(req.context) - req.eval_count:]


@pytest.fixture(scope="module")
def copy_prompt(smollm2):
    return smollm2.tokenize(COPY_PROMPT)


@pytest.fixture(scope="module")
def greedy_base(smollm2, copy_prompt):
    """The greedy answer without speculation: (tokens, text, logprob entries)."""
    with Run(smollm2) as run:
        req = run.submit(copy_prompt, temperature=0, num_predict=48, logprobs=True, top_logprobs=2)
        text = run.wait(req)
        assert not req.speculative and req.draft_count == 0
        return generated(req), text, run.logprobs[req.id]


def test_greedy_is_token_for_token_the_same_and_drafts_are_accepted(smollm2, copy_prompt, greedy_base):
    tokens, text, _ = greedy_base
    with Run(smollm2) as run:
        req = run.submit(copy_prompt, temperature=0, num_predict=48, **NGRAM)
        assert run.wait(req) == text
        assert generated(req) == tokens
        assert req.speculative and req.draft_count > 0
        assert 0 < req.draft_accepted_count <= req.draft_count  # a copy: most drafts are right


def test_concurrent_requests_with_and_without_speculation_change_nothing(smollm2, copy_prompt, greedy_base):
    tokens, text, _ = greedy_base
    with Run(smollm2) as run:
        reqs = [run.submit(copy_prompt, temperature=0, num_predict=48, draft_type="ngram", draft_num_predict=k)
                for k in (1, 4, 8)]
        plain = run.submit(copy_prompt, temperature=0, num_predict=48)
        for req in reqs + [plain]:
            assert run.wait(req) == text
            assert generated(req) == tokens
        assert all(r.draft_accepted_count > 0 for r in reqs)
        assert plain.draft_count == 0


def test_no_speculation_under_load(smollm2, copy_prompt, greedy_base):
    tokens, _, _ = greedy_base
    with Run(smollm2, spec_max_sequences=0) as run:  # every step counts as "under load"
        req = run.submit(copy_prompt, temperature=0, num_predict=48, **NGRAM)
        run.wait(req)
        assert generated(req) == tokens and req.draft_count == 0


def test_mixed_prefill_steps_carry_drafts_beside_prompt_chunks(smollm2, copy_prompt, greedy_base):
    """The GPU's step shape (prompt chunks mixed into decode steps): a request alone decodes as before,
    and a newcomer's prompt shares steps with another's drafts without overflowing the batch."""
    tokens, _, _ = greedy_base
    with Run(smollm2, mixed_prefill=True) as run:
        alone = run.submit(copy_prompt, temperature=0, num_predict=48, **NGRAM)
        run.wait(alone)
        assert generated(alone) == tokens and alone.draft_accepted_count > 0
        first = run.submit(copy_prompt, temperature=0, num_predict=48, **NGRAM)
        while first.eval_count < 2:
            assert not run.ended[first.id].is_set()
            time.sleep(0.01)
        later = [run.submit(smollm2.tokenize(COPY_PROMPT + "Again: "), temperature=0, num_predict=8, **NGRAM)
                 for _ in range(2)]
        for req in [first, *later]:
            run.wait(req)  # and no engine error
        # Mixed steps are not batch-invariant (DESIGN.md): lengths, not tokens, are what must hold.
        assert first.eval_count == len(tokens) and run.reason[first.id] == "stop"
        assert all(r.eval_count == 8 and run.reason[r.id] == "length" for r in later)
        assert first.draft_accepted_count > 0


def test_num_predict_stop_strings_and_logprobs_hold(smollm2, copy_prompt, greedy_base):
    tokens, text, entries = greedy_base
    with Run(smollm2) as run:
        short = run.submit(copy_prompt, temperature=0, num_predict=7, **NGRAM)
        run.wait(short)
        assert generated(short) == tokens[:7] and run.reason[short.id] == "length"

        stop = "liquor"
        assert stop in text
        cut = run.submit(copy_prompt, temperature=0, num_predict=48, stop=[stop], **NGRAM)
        assert run.wait(cut) == text[:text.index(stop)]
        assert run.reason[cut.id] == "stop" and cut.draft_accepted_count > 0

        lp = run.submit(copy_prompt, temperature=0, num_predict=48, logprobs=True, top_logprobs=2, **NGRAM)
        run.wait(lp)
        assert lp.draft_accepted_count > 0
        got = run.logprobs[lp.id]
        assert len(got) == lp.eval_count == len(entries)  # one entry per emitted token
        for mine, theirs in zip(got, entries):
            assert mine["token"] == theirs["token"]
            assert [t["token"] for t in mine["top_logprobs"]] == [t["token"] for t in theirs["top_logprobs"]]
            assert mine["logprob"] == pytest.approx(theirs["logprob"], abs=1e-3)


def test_context_shift_falls_where_it_does_without_speculation(smollm2_path):
    """A 128-token context, a 90-token prompt and an answer that runs past the end: the context shifts
    (drafts never reach past the room the engine checks for), and the tokens are the same."""
    m = LoadedModel(LaunchConfig(model=str(smollm2_path), num_ctx=128, parallel=4, num_thread=1))
    try:
        prompt = m.tokenize(("red green blue " * 30).strip())
        with Run(m) as run:
            plain = run.submit(prompt, temperature=0, num_predict=120)
            run.wait(plain)
            spec = run.submit(prompt, temperature=0, num_predict=120, **NGRAM)
            run.wait(spec)
        assert len(prompt) + plain.eval_count > 128  # it went past the context's end
        assert generated(spec) == generated(plain) and run.reason[spec.id] == run.reason[plain.id]
        assert spec.draft_accepted_count > 0
    finally:
        m.close()


def test_seeded_sampling_with_penalties_gives_the_same_text(smollm2, copy_prompt):
    """The chain accepts exactly the emitted tokens (penalty history, RNG draws): a seeded request gives
    the same text with speculation as without."""
    options = dict(temperature=0.7, top_k=20, repeat_penalty=1.2, num_predict=40)
    with Run(smollm2) as run:
        base = [run.submit(copy_prompt, seed=s, **options) for s in (1, 2)]
        spec = [run.submit(copy_prompt, seed=s, **options, **NGRAM) for s in (1, 2)]
        for a, b in zip(base, spec):
            assert run.wait(a) == run.wait(b)
        assert sum(r.draft_accepted_count for r in spec) > 0


# ------------------------------------------------------------------------------ sampled distribution


def _chi2_quantile(df: int, alpha: float) -> float:
    """Upper alpha quantile of chi-square(df), by the Wilson-Hilferty approximation (good to ~1% here)."""
    z = {1e-3: 3.090, 2e-4: 3.540, 1e-4: 3.719}[alpha]
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _two_sample_chi2(a: Counter, b: Counter) -> tuple[float, int]:
    """Chi-square statistic of two equal-sized samples over their categories, with its degrees of freedom.
    Rare categories (fewer than 10 between both) are pooled into one."""
    cells, rare = [], [0, 0]
    for key in set(a) | set(b):
        if a[key] + b[key] < 10:
            rare[0] += a[key]
            rare[1] += b[key]
        else:
            cells.append((a[key], b[key]))
    if sum(rare):
        cells.append(tuple(rare))
    stat = sum((x - y) ** 2 / (x + y) for x, y in cells)
    return stat, len(cells) - 1


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    m = LoadedModel(LaunchConfig(model=str(tiny_gguf), num_ctx=256, parallel=4, num_thread=1))
    yield m
    m.close()


def test_sampling_keeps_the_targets_distribution(tiny):
    """The first three sampled tokens of 1,000 seeded runs with n-gram drafts and 1,000 without (other
    seeds), top_k 2 at temperature 1: the frequencies of (token 1, token 2) and of all three agree by a
    two-sample chi-square test at significance 1e-4 each (together: a false alarm below 2e-4; the seeds
    are fixed, so the outcome is too).

    The prompt is the tiny model's own greedy text, which ends in a loop, so the n-gram lookup proposes
    the loop's next token, which the model gives p near 0.4 (measured: 42% of drafts accepted). A rule that always
    accepted drafts, or drew the correction from the whole distribution (draft included), fails by far;
    the test checks that drafts were both accepted and rejected."""
    with Run(tiny) as run:
        seedreq = run.submit(tiny.tokenize("once upon a time"), temperature=0, num_predict=120)
        run.wait(seedreq)
        prompt = list(seedreq.context)
        assert NgramDraft().propose(prompt, 4), "the prompt must give the n-gram lookup a match"

        options = dict(temperature=1.0, top_k=2, top_p=1.0, repeat_penalty=1.0, num_predict=3)
        n = 1000
        samples = {}
        drafted = accepted = 0
        for arm, extra, seeds in (("plain", {}, range(n)), ("spec", NGRAM, range(n, 2 * n))):
            reqs = [run.submit(prompt, seed=s, **options, **extra) for s in seeds]
            for r in reqs:
                run.wait(r)
                assert r.eval_count == 3
            samples[arm] = [tuple(generated(r)) for r in reqs]
            if extra:
                drafted = sum(r.draft_count for r in reqs)
                accepted = sum(r.draft_accepted_count for r in reqs)
    assert 0 < accepted < drafted, (accepted, drafted)  # both branches of the rule ran
    for length in (2, 3):
        a = Counter(t[:length] for t in samples["plain"])
        b = Counter(t[:length] for t in samples["spec"])
        stat, df = _two_sample_chi2(a, b)
        assert df >= 1
        assert stat < _chi2_quantile(df, 1e-4), (length, stat, df, a.most_common(6), b.most_common(6))


def test_max_sequences_setting(monkeypatch):
    """LM_SPEC_MAX_SEQUENCES reaches the runner as LaunchConfig.spec_max_sequences (the daemon reads it)."""
    from runner.engine.protocol import LaunchConfig
    from runner.settings import BY_NAME

    setting = BY_NAME["SPEC_MAX_SEQUENCES"]
    monkeypatch.setenv("LM_SPEC_MAX_SEQUENCES", "2")
    assert setting.read() == 2
    monkeypatch.setenv("LM_SPEC_MAX_SEQUENCES", "-3")
    assert setting.read() == 0
    monkeypatch.setenv("LM_SPEC_MAX_SEQUENCES", "many")
    assert setting.read() == speculative.DEFAULT_MAX_SEQUENCES
    monkeypatch.delenv("LM_SPEC_MAX_SEQUENCES")
    assert setting.read() == speculative.DEFAULT_MAX_SEQUENCES == LaunchConfig("m").spec_max_sequences
    launch = LaunchConfig("m", socket="s", spec_max_sequences=0, profile_every=50)
    assert LaunchConfig.from_argv(launch.to_argv()) == launch


def test_a_stateless_greedy_chain_reads_each_verify_row_as_the_chain_would(smollm2, copy_prompt):
    """greedy_row (the verify rows' shortcut) gives the chain's own token on every row of a real step,
    and only chains with no state of their own take the shortcut."""
    import llama_cpp as ll

    from runner.engine.batch_buffer import BatchBuffer
    from runner.engine.sampling import SamplerChain

    ctx, mem = smollm2.contexts[0]
    ll.llama_memory_seq_rm(mem, 0, -1, -1)
    buf = BatchBuffer(len(copy_prompt))
    first = buf.add(copy_prompt, 0, 0, True, all_logits=True) - len(copy_prompt) + 1
    assert ll.llama_decode(ctx, buf.as_llama_batch()) == 0
    greedy = SamplerChain(SamplingOptions(temperature=0), smollm2.vocab, smollm2.n_vocab)
    try:
        assert greedy.stateless_greedy
        rows = range(first, first + len(copy_prompt))
        assert [greedy.greedy_row(ctx, i) for i in rows] == [greedy.sample(ctx, i) for i in rows]
    finally:
        greedy.free()
        ll.llama_memory_seq_rm(mem, 0, -1, -1)
    for opts in (SamplingOptions(temperature=0, repeat_penalty=1.1), SamplingOptions(temperature=0.8),
                 SamplingOptions(temperature=0, grammar='root ::= "a"')):
        chain = SamplerChain(opts, smollm2.vocab, smollm2.n_vocab)
        assert not chain.stateless_greedy
        chain.free()
