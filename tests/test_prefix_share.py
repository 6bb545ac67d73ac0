"""prefix_share.py's decisions (pure): which free slot a request takes, and whether its prompt's prefix
is copied from another slot of the group, waited for, or computed."""

from __future__ import annotations

from runner.engine.prefix_share import Decision, Rules, SlotView, choose_slot, decide, usable

CHUNK = Rules(granule=8, min_copy=8)  # batch-invariant steps with 8-token prefill chunks
MIXED = Rules(granule=1, min_copy=4)

SYSTEM = list(range(100, 132))  # a 32-token shared prefix
PROMPT = SYSTEM + [1, 2, 3]


def done(seq_id, tokens, prefilled=None, last_used=0):
    """An idle (or generating) slot whose cache holds `tokens`, `prefilled` of them by prefill."""
    return SlotView(seq_id, tokens, len(tokens) if prefilled is None else prefilled, (), last_used)


def test_usable_keeps_one_token_to_evaluate_and_whole_chunks_only():
    assert usable(PROMPT, len(PROMPT), PROMPT, MIXED) == len(PROMPT) - 1
    assert usable(PROMPT, len(PROMPT), PROMPT, CHUNK) == 32
    assert usable(SYSTEM[:20], 20, PROMPT, CHUNK) == 16
    assert usable(PROMPT, 12, PROMPT, CHUNK) == 8  # only what prefill computed counts
    assert usable([7] + SYSTEM, 33, PROMPT, MIXED) == 0
    assert usable([], 0, [5], MIXED) == 0


def test_copies_the_longest_prefix_from_another_slot():
    dst = done(0, [9, 9, 9])
    others = [done(1, SYSTEM[:16] + [0] * 20), done(2, SYSTEM + [4, 4]), done(3, [])]
    assert decide(PROMPT, dst, others, CHUNK) == Decision("copy", 2, 32)


def test_generated_tokens_of_the_source_are_not_shared():
    # slot 1 computed the first 16 tokens by prefill; the rest of its cache it generated
    dst = done(0, [])
    assert decide(PROMPT, dst, [done(1, PROMPT, prefilled=16)], CHUNK) == Decision("copy", 1, 16)


def test_computes_when_the_own_cache_is_as_good_or_a_copy_saves_too_little():
    assert decide(PROMPT, done(0, SYSTEM), [done(1, SYSTEM + [1])], CHUNK) == Decision("compute", None, 32)
    assert decide(PROMPT, done(0, SYSTEM[:16]), [done(1, SYSTEM[:20])], CHUNK) == Decision("compute", None, 16)
    # mixed steps: 3 tokens more is below min_copy
    assert decide(PROMPT, done(0, SYSTEM[:29]), [done(1, SYSTEM)], MIXED) == Decision("compute", None, 29)
    assert decide(PROMPT, done(0, []), [], MIXED) == Decision("compute", None, 0)


def test_waits_for_a_slot_still_prefilling_the_shared_prefix():
    prefilling = SlotView(1, SYSTEM[:8], 8, SYSTEM[8:] + [7, 7], 5)
    assert decide(PROMPT, done(0, []), [prefilling], CHUNK) == Decision("wait", 1)
    # once its prefill has passed the shared prefix, the copy is taken
    further = SlotView(1, SYSTEM + [7], 33, [7], 5)
    assert decide(PROMPT, done(0, []), [further], CHUNK) == Decision("copy", 1, 32)
    finished = done(1, SYSTEM + [7, 7, 42])
    assert decide(PROMPT, done(0, []), [finished], CHUNK) == Decision("copy", 1, 32)


def test_no_wait_when_the_prefill_would_bring_too_little():
    # the prefilling slot shares 4 tokens only: below a chunk
    other = SlotView(1, [], 0, SYSTEM[:4] + [0] * 30, 0)
    assert decide(PROMPT, done(0, []), [other], CHUNK) == Decision("compute", None, 0)
    # what it will add beyond the copy available now is under min_copy
    dst = done(0, [])
    others = [done(2, SYSTEM[:24]), SlotView(1, [], 0, SYSTEM + [0], 0)]
    assert decide(PROMPT, dst, others, Rules(granule=8, min_copy=16)) == Decision("copy", 2, 24)


def test_a_slot_without_pending_is_not_waited_for():
    # the engine gives a waiting (unsettled) slot no pending: nobody waits for a waiter
    waiter = SlotView(1, [], 0, (), 0)
    assert decide(PROMPT, done(0, []), [waiter], CHUNK) == Decision("compute", None, 0)


def test_choose_slot_prefers_its_own_cache_then_the_least_recently_used():
    free = [done(0, [5] * 40, last_used=3), done(1, SYSTEM, last_used=9), done(2, [6] * 40, last_used=1)]
    assert choose_slot(free, PROMPT, CHUNK).seq_id == 1
    other_prompt = [8] * 40
    assert choose_slot(free, other_prompt, CHUNK).seq_id == 2  # none serves it: the LRU goes
    free[2] = done(2, [6] * 40, last_used=10)
    assert choose_slot(free, other_prompt, CHUNK).seq_id == 0


def test_common_prefix_across_blocks():
    from runner.engine.prefix_share import common_prefix
    a = list(range(1000))
    assert common_prefix(a, a) == 1000
    assert common_prefix(a, a[:700] + [-1] + a[701:]) == 700
    assert common_prefix(a, a[:256] + [-1]) == 256
    assert common_prefix(a[:300], a) == 300
    assert common_prefix((), a) == 0
