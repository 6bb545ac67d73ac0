"""What one engine step carries: a pure function from the slots' state to the step's entries.

The engine (batch.py) describes each slot of a group (idle, generating, generating with k drafts,
prefilling with n prompt tokens left) and the step's budget; `plan_step` answers with one entry per
sequence in the step, in the batch order llama.cpp wants (sequence ids ascending):

- DecodeEntry: a generating sequence's last token, plus its draft tokens when it speculates;
- PrefillEntry: a chunk of a prompt;
- FillerEntry: an idle slot's token that closes a gap between busy ones (see `FillerEntry`).

Two policies, chosen by `mixed_prefill`:

- Batch-invariant steps (the CPU's default): a prefill chunk runs in a step of its own, one sequence at
  a time, alternating with decode steps of everyone else. llama.cpp picks kernels by batch size, so a
  prompt prefilled beside other sequences' tokens could change its numbers; single tokens decoded
  together measured bit-identical to decoding alone.
- Mixed steps (the GPU's, where throughput needs them): every decode beside prompt chunks, the chunks
  shaped into blocks of equal size over consecutive sequences (prompt_blocks.py).

Speculation is planned in two calls, so that this module stays pure: `slots_to_draft` says which
sequences may propose drafts for the step; the engine asks their draft sources and passes the number
of drafts each got back in the state given to `plan_step`.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.engine.prompt_blocks import best_block


@dataclass(frozen=True)
class SlotState:
    """One slot as the planner sees it. Build it with idle / generating / prefilling."""

    seq_id: int
    busy: bool = False
    pending: int = 0  # prompt tokens still to prefill (busy with pending > 0: prefilling)
    drafts: int = 0  # draft tokens a generating sequence carries into this step
    can_draft: bool = False  # it has a draft source (speculative.py)
    request_id: int = 0  # the order of arrival: the oldest request's prompt goes first

    @classmethod
    def idle(cls, seq_id: int) -> "SlotState":
        return cls(seq_id)

    @classmethod
    def generating(cls, seq_id: int, *, drafts: int = 0, can_draft: bool = False) -> "SlotState":
        return cls(seq_id, busy=True, drafts=drafts, can_draft=can_draft or drafts > 0)

    @classmethod
    def prefilling(cls, seq_id: int, pending: int, request_id: int) -> "SlotState":
        if pending <= 0:
            raise ValueError("a prefilling slot has prompt tokens left")
        return cls(seq_id, busy=True, pending=pending, request_id=request_id)

    @property
    def is_generating(self) -> bool:
        return self.busy and not self.pending

    @property
    def is_prefilling(self) -> bool:
        return self.busy and self.pending > 0


@dataclass(frozen=True)
class StepState:
    """A group's slots (slots[i].seq_id == i) and what bounds its next step."""

    slots: tuple[SlotState, ...]
    capacity: int  # tokens one llama_decode takes (the batch)
    mixed_prefill: bool = False
    last_step_was_prefill: bool = False  # batch-invariant policy: the previous step was a prompt chunk
    spec_max_sequences: int = 0  # speculate only while at most this many sequences generate


@dataclass(frozen=True)
class DecodeEntry:
    """A generating sequence's last token, then its drafts to verify (every one with its logits)."""

    seq_id: int
    drafts: int = 0

    @property
    def n_tokens(self) -> int:
        return 1 + self.drafts


@dataclass(frozen=True)
class PrefillEntry:
    """The next n_tokens of a sequence's prompt; `last`: they end the prompt (its logits are wanted)."""

    seq_id: int
    n_tokens: int
    last: bool


@dataclass(frozen=True)
class FillerEntry:
    """One token for an idle slot between busy ones. With a KV stream per sequence llama.cpp cuts a
    batch into micro-batches of consecutive sequence ids, each one more pass over the weights: sequences
    0, 1, 3 decode in two passes, 0, 1, 2, 3 in one. The filler's token is recorded in the slot's cache
    like any other, so its KV stays correct, and the step stays one pass (docs/performance.md)."""

    seq_id: int
    n_tokens: int = 1


Entry = DecodeEntry | PrefillEntry | FillerEntry


@dataclass(frozen=True)
class StepPlan:
    entries: tuple[Entry, ...]  # sequence ids ascending: llama.cpp looks for runs of consecutive ids
    last_step_was_prefill: bool  # what the group remembers for its next step

    @property
    def n_tokens(self) -> int:
        return sum(e.n_tokens for e in self.entries)


def _prefill_alone(state: StepState) -> bool:
    """Batch-invariant policy: this step is one prompt chunk, not a decode step."""
    if state.mixed_prefill:
        return False
    prefilling = any(s.is_prefilling for s in state.slots)
    generating = any(s.is_generating for s in state.slots)
    return prefilling and (not generating or not state.last_step_was_prefill)


def slots_to_draft(state: StepState) -> list[int]:
    """Sequence ids whose draft sources are asked for proposals this step (maybe none).

    Only in a step that decodes, and only while at most spec_max_sequences sequences generate: under
    load a step costs what it would without speculation."""
    if _prefill_alone(state):
        return []
    generating = [s for s in state.slots if s.is_generating]
    if len(generating) > state.spec_max_sequences:
        return []
    return [s.seq_id for s in generating if s.can_draft]


def plan_step(state: StepState) -> StepPlan:
    """The group's next step: decodes, prompt chunks and gap fillers, within state.capacity tokens."""
    generating = [s for s in state.slots if s.is_generating]
    prefilling = sorted((s for s in state.slots if s.is_prefilling), key=lambda s: s.request_id)
    capacity = state.capacity
    entries: list[Entry] = []
    if not state.mixed_prefill:
        if _prefill_alone(state):
            s = prefilling[0]
            n = min(s.pending, capacity)
            return StepPlan((PrefillEntry(s.seq_id, n, n == s.pending),), last_step_was_prefill=True)
        entries = [DecodeEntry(s.seq_id, s.drafts) for s in generating]
        return StepPlan(_with_fillers(state, entries), last_step_was_prefill=False)
    entries = [DecodeEntry(s.seq_id, s.drafts) for s in generating]
    if prefilling:
        if generating:
            # Every prefilling sequence puts one prompt token into the decodes' micro-batch, so that no
            # busy slot leaves a gap in it (idle ones get fillers); the blocks below add a pass each.
            base = 1
            busy = [s.seq_id for s in state.slots if s.busy]
            drafts = sum(s.drafts for s in generating)
            budget = capacity - len(busy) - len(_gap_fillers(state, busy)) - drafts
        else:
            base, budget = 0, capacity
        chunks = _prompt_blocks(prefilling, base, budget, capacity, more_blocks=bool(generating))
        for s in prefilling:
            n = base + chunks.get(s.seq_id, 0)
            if n:
                entries.append(PrefillEntry(s.seq_id, n, n == s.pending))
    return StepPlan(_with_fillers(state, entries), last_step_was_prefill=state.last_step_was_prefill)


def _with_fillers(state: StepState, entries: list[Entry]) -> tuple[Entry, ...]:
    fillers = [FillerEntry(i) for i in _gap_fillers(state, [e.seq_id for e in entries])]
    return tuple(sorted(entries + fillers, key=lambda e: e.seq_id))


def _gap_fillers(state: StepState, seq_ids: list[int]) -> list[int]:
    """Idle slots whose sequence ids lie between those of a step's sequences."""
    if len(seq_ids) < 2:
        return []
    return [s.seq_id for s in state.slots[min(seq_ids):max(seq_ids) + 1] if not s.busy]


def _prompt_blocks(prefilling: list[SlotState], base: int, budget: int, capacity: int,
                   more_blocks: bool) -> dict[int, int]:
    """Prompt tokens per sequence id beyond `base`, in blocks of consecutive sequences with equal
    chunks (prompt_blocks.py: one micro-batch each), the oldest request's block first. Later blocks
    only when worth their pass, and only beside decodes: without a decode micro-batch spanning them,
    the fillers between blocks would make a micro-batch of their own."""
    avail = {s.seq_id: s.pending - base for s in prefilling if s.pending > base}
    chunks: dict[int, int] = {}
    for oldest in prefilling:  # sorted by request id
        if budget <= 0:
            break
        if oldest.seq_id not in avail:
            continue
        first = last = oldest.seq_id
        while first - 1 in avail:
            first -= 1
        while last + 1 in avail:
            last += 1
        run = range(first, last + 1)
        a, b, chunk = best_block([avail[i] for i in run], oldest.seq_id - first, budget)
        if chunks and (b - a + 1) * chunk < capacity // 4:
            break
        for seq_id in run[a:b + 1]:
            chunks[seq_id] = chunk
            del avail[seq_id]
        budget -= (b - a + 1) * chunk
        if not more_blocks:
            break
    return chunks
