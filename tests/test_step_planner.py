"""The step planner (runner/engine/planner.py) alone: slot states in, step entries out, no llama.cpp.

What the engine relies on: a step never takes more than the batch, every generating sequence's token
(and its drafts) is in every decode step, prompts are cut by the budget, the oldest prompt goes first,
idle slots between busy ones get typed filler entries, and the batch-invariant policy runs a prompt
chunk alone, alternating with decode steps."""

from __future__ import annotations

import random

import pytest

from runner.engine.planner import (DecodeEntry, FillerEntry, PrefillEntry, SlotState, StepState, plan_step,
                                   slots_to_draft)
from runner.engine.prompt_blocks import best_block

idle, gen, pre = SlotState.idle, SlotState.generating, SlotState.prefilling


def state(*slots: SlotState, capacity: int = 64, mixed: bool = True, last_prefill: bool = False,
          spec_max: int = 4) -> StepState:
    assert [s.seq_id for s in slots] == list(range(len(slots)))
    return StepState(tuple(slots), capacity, mixed_prefill=mixed, last_step_was_prefill=last_prefill,
                     spec_max_sequences=spec_max)


def by_seq(plan) -> dict[int, object]:
    return {e.seq_id: e for e in plan.entries}


# -- the batch-invariant policy (the CPU's) --------------------------------------------------------

def test_invariant_policy_runs_the_oldest_prompt_alone_then_a_decode_step():
    st = state(gen(0), pre(1, 100, request_id=7), pre(2, 30, request_id=3), mixed=False)
    plan = plan_step(st)
    assert plan.entries == (PrefillEntry(2, 30, last=True),)  # request 3 came before request 7
    assert plan.last_step_was_prefill
    after = plan_step(state(gen(0), pre(1, 100, request_id=7), pre(2, 30, request_id=3), gen(3), mixed=False,
                            last_prefill=True))
    assert after.entries == (DecodeEntry(0), DecodeEntry(3))
    assert not after.last_step_was_prefill


def test_invariant_decode_step_fills_the_gap_left_by_a_waiting_prompt_only_if_idle():
    # Slot 1 prefills (busy, not in the decode step): it is no gap filler, so the step has two passes.
    plan = plan_step(state(gen(0), pre(1, 100, request_id=7), gen(2), mixed=False, last_prefill=True))
    assert plan.entries == (DecodeEntry(0), DecodeEntry(2))
    # An idle slot in the same place gets a filler.
    plan = plan_step(state(gen(0), idle(1), gen(2), mixed=False))
    assert plan.entries == (DecodeEntry(0), FillerEntry(1), DecodeEntry(2))


def test_invariant_prompt_chunks_are_cut_by_the_batch():
    plan = plan_step(state(pre(0, 150, request_id=1), capacity=64, mixed=False))
    assert plan.entries == (PrefillEntry(0, 64, last=False),)
    plan = plan_step(state(pre(0, 22, request_id=1), capacity=64, mixed=False))
    assert plan.entries == (PrefillEntry(0, 22, last=True),)


def test_invariant_prefill_without_decodes_goes_on_every_step():
    st = state(pre(0, 150, request_id=1), idle(1), mixed=False, last_prefill=True)
    assert plan_step(st).entries == (PrefillEntry(0, 64, last=False),)


def test_nothing_busy_plans_nothing():
    for mixed in (False, True):
        assert plan_step(state(idle(0), idle(1), mixed=mixed)).entries == ()


# -- mixed steps (the GPU's) -------------------------------------------------------------------

def test_mixed_step_carries_every_decode_and_one_token_of_each_prompt():
    st = state(gen(0), pre(1, 5, request_id=2), idle(2), gen(3), pre(4, 300, request_id=1), capacity=64)
    plan = by_seq(plan_step(st))
    assert plan[0] == DecodeEntry(0) and plan[3] == DecodeEntry(3)
    assert type(plan[2]) is FillerEntry
    assert plan[4].n_tokens >= 1 and plan[1].n_tokens >= 1
    assert plan_step(st).n_tokens <= 64


def test_mixed_prompt_budget_is_what_decodes_drafts_and_fillers_leave():
    # 2 decodes (one with 3 drafts), 1 filler, one prompt: 64 - 2 busy - 1 prompt token... exactly:
    # budget = 64 - busy(3) - fillers(1) - drafts(3) = 57 beyond the prompt's base token.
    st = state(gen(0, drafts=3), idle(1), gen(2), pre(3, 1000, request_id=1), capacity=64)
    plan = plan_step(st)
    assert by_seq(plan)[3] == PrefillEntry(3, 1 + 57, last=False)
    assert plan.n_tokens == 64


def test_mixed_prompt_alone_takes_the_whole_batch_in_one_block():
    st = state(pre(0, 1000, request_id=2), pre(1, 1000, request_id=1), idle(2), pre(3, 1000, request_id=3))
    plan = plan_step(st)
    # No decodes: one block only (a second would leave a filler pass between them).
    assert plan.n_tokens == 64
    assert all(type(e) is PrefillEntry for e in plan.entries)
    assert 1 in by_seq(plan)  # the oldest request is always in it
    assert 3 not in by_seq(plan)


def test_a_prompt_that_fits_ends_with_its_logits_wanted():
    plan = by_seq(plan_step(state(gen(0), pre(1, 10, request_id=1))))
    assert plan[1] == PrefillEntry(1, 10, last=True)


def test_mixed_steps_keep_the_last_step_flag_as_it_was():
    for flag in (False, True):
        st = state(gen(0), pre(1, 10, request_id=1), last_prefill=flag)
        assert plan_step(st).last_step_was_prefill is flag


def test_mixed_chunks_follow_prompt_blocks():
    # Three consecutive prompts beside no decode: best_block decides the first block.
    pending = [41, 277, 192]
    st = state(*(pre(i, n, request_id=i) for i, n in enumerate(pending)), capacity=512)
    a, b, chunk = best_block(pending, 0, 512)
    assert {e.seq_id: e.n_tokens for e in plan_step(st).entries} == {i: chunk for i in range(a, b + 1)}


# -- speculation -----------------------------------------------------------------------------

def test_a_speculating_slot_carries_its_token_and_its_drafts():
    st = state(gen(0, drafts=4), gen(1), gen(2, drafts=2))
    plan = plan_step(st)
    assert [e.n_tokens for e in plan.entries] == [5, 1, 3]
    assert plan.entries[0] == DecodeEntry(0, drafts=4)


def test_who_drafts():
    # Only generating slots with a draft source, only while few generate, never in a prompt-alone step.
    st = state(gen(0, can_draft=True), gen(1), pre(2, 9, request_id=1), gen(3, can_draft=True), spec_max=4)
    assert slots_to_draft(st) == [0, 3]
    assert slots_to_draft(state(gen(0, can_draft=True), gen(1), gen(2), spec_max=2)) == []
    assert slots_to_draft(state(gen(0, can_draft=True), spec_max=0)) == []
    inv = state(gen(0, can_draft=True), pre(1, 9, request_id=1), mixed=False, last_prefill=False)
    assert slots_to_draft(inv) == []  # this step is the prompt chunk
    inv = state(gen(0, can_draft=True), pre(1, 9, request_id=1), mixed=False, last_prefill=True)
    assert slots_to_draft(inv) == [0]


def test_a_prefilling_slot_needs_tokens_left():
    with pytest.raises(ValueError):
        SlotState.prefilling(0, 0, request_id=1)


# -- properties over random states --------------------------------------------------------------

def random_state(rng: random.Random, mixed: bool) -> StepState:
    n = rng.randint(1, 12)
    capacity = rng.choice([16, 64, 512])
    limit = capacity // n - 1  # speculative.draft_limit's batch room per slot
    slots = []
    for i in range(n):
        kind = rng.choice(["idle", "gen", "pre"])
        if kind == "idle":
            slots.append(idle(i))
        elif kind == "gen":
            slots.append(gen(i, drafts=rng.randint(0, max(limit, 0)) if rng.random() < 0.3 else 0))
        else:
            slots.append(pre(i, rng.randint(1, 900), request_id=rng.randint(0, 10**6)))
    return state(*slots, capacity=capacity, mixed=mixed, last_prefill=rng.random() < 0.5)


@pytest.mark.parametrize("mixed", [False, True])
def test_every_plan_keeps_the_engines_rules(mixed):
    rng = random.Random(21)
    for _ in range(3000):
        st = random_state(rng, mixed)
        plan = plan_step(st)
        entries = plan.entries
        ids = [e.seq_id for e in entries]
        assert ids == sorted(set(ids)), "one entry per sequence, in sequence id order"
        assert plan.n_tokens <= st.capacity, "the step fits the batch"
        slots = st.slots
        for e in entries:
            s = slots[e.seq_id]
            if type(e) is FillerEntry:
                assert not s.busy and min(ids) < e.seq_id < max(ids) and e.n_tokens == 1
            elif type(e) is DecodeEntry:
                assert s.is_generating and e.drafts == s.drafts
            else:
                assert type(e) is PrefillEntry and s.is_prefilling
                assert 1 <= e.n_tokens <= s.pending and e.last == (e.n_tokens == s.pending)
        # No gap: every slot between the step's first and last sequence is in it, or busy prefilling.
        if ids:
            for i in range(min(ids), max(ids) + 1):
                assert i in ids or slots[i].is_prefilling
        generating = [s.seq_id for s in slots if s.is_generating]
        prefilling = [s for s in slots if s.is_prefilling]
        has_decodes = any(type(e) is DecodeEntry for e in entries)
        if has_decodes or (mixed and generating):
            # A decode step carries every generating sequence, drafts and all.
            assert [e.seq_id for e in entries if type(e) is DecodeEntry] == generating
        if prefilling and (mixed or not has_decodes):
            oldest = min(prefilling, key=lambda s: s.request_id)
            assert oldest.seq_id in ids, "the oldest prompt always advances"
        if mixed and generating:
            assert all(s.seq_id in ids for s in prefilling), "each prompt has a token in the decodes' pass"
        if not mixed and prefilling and not has_decodes:
            assert len(entries) == 1 and plan.last_step_was_prefill
            assert entries[0].seq_id == oldest.seq_id
            assert entries[0].n_tokens == min(oldest.pending, st.capacity)
