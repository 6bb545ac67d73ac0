"""Where a new request's prompt prefix comes from: a pure decision over one group's slots.

The slots of a group (batch.py) are sequences of one llama.cpp context, each in its own KV stream.
A prompt whose leading tokens another slot has already computed need not compute them again: the
engine copies that slot's stream (llama_memory_seq_cp, which between streams copies a whole stream)
and trims the copy to the shared prefix. When a slot of the group is still prefilling a prompt that
shares a long prefix with the newcomer, the newcomer waits for it instead of computing the same
tokens beside it (64 clients sending one system prompt at once would otherwise compute it 64 times).

`decide` says, for one request in its chosen slot, one of: copy n tokens from slot X, wait for slot
X, or compute (keeping what the slot itself already holds). `choose_slot` picks that slot among the
free ones. The engine turns slots into `SlotView`s; nothing here touches llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class SlotView:
    """One slot of the group as the decision sees it."""

    seq_id: int
    cached: Sequence[int] = ()  # tokens whose KV is in the slot's stream, in order
    prefilled: int = 0  # how many leading `cached` tokens prefill computed (the only ones shared)
    pending: Sequence[int] = ()  # prompt tokens it is still prefilling (empty unless it is)
    last_used: int = 0  # when a request last began or ended in it (larger: more recent)


@dataclass(frozen=True)
class Decision:
    kind: str  # "copy", "wait" or "compute"
    source: int | None = None  # the slot to copy from or wait for
    n_tokens: int = 0  # copy: the prefix length taken from the source; compute: kept from the slot itself


@dataclass(frozen=True)
class Rules:
    """How much of a prefix may be taken, and when a copy is worth its cost."""

    granule: int = 1  # batch-invariant steps: whole prefill chunks only (see `usable`)
    min_copy: int = 64  # a copy moves a whole stream: it must save at least this many tokens


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    # Compared in blocks of list slices (C speed) before token by token: while requests wait, the
    # engine asks this of every slot pair at every step, over prompts of thousands of tokens.
    n = min(len(a), len(b))
    i = 0
    while i < n:
        j = min(i + 256, n)
        if list(a[i:j]) != list(b[i:j]):
            break
        i = j
    while i < n and a[i] == b[i]:
        i += 1
    return i


def usable(computed: Sequence[int], computed_n: int, prompt: Sequence[int], rules: Rules) -> int:
    """How many leading prompt tokens may take the KV of `computed[:computed_n]`.

    One prompt token is always evaluated again, for its logits. With batch-invariant steps only
    whole prefill chunks are taken: the chunks computed after them then see exactly the batches (and
    so the numerics) that a run from scratch would, and the output stays bit-identical."""
    n = min(common_prefix(computed, prompt), computed_n, len(prompt) - 1)
    return max(n, 0) // rules.granule * rules.granule


def own_reuse(slot: SlotView, prompt: Sequence[int], rules: Rules) -> int:
    return usable(slot.cached, slot.prefilled, prompt, rules)


def choose_slot(free: Sequence[SlotView], prompt: Sequence[int], rules: Rules) -> SlotView:
    """The free slot for a request: the one whose own cache serves it best; among equals (most often
    all of no use) the least recently used, so that recent prefixes stay cached for the next wave."""
    return max(free, key=lambda s: (own_reuse(s, prompt, rules), -s.last_used))


def decide(prompt: Sequence[int], dst: SlotView, others: Sequence[SlotView], rules: Rules) -> Decision:
    """Where the request in slot `dst` gets its prefix. `others`: the group's other slots; those
    prefilling have their `pending` filled in (a slot that is itself waiting has none: nobody waits
    for a waiter, so waits never form a cycle)."""
    own = own_reuse(dst, prompt, rules)
    best, source = own, None
    for s in others:
        n = usable(s.cached, s.prefilled, prompt, rules)
        if n > best:
            best, source = n, s.seq_id
    # What a slot still prefilling will have computed once its prompt is in: worth waiting for when
    # it beats, by a copy's worth, what can be had now.
    wait_for, future = None, best
    for s in others:
        if not s.pending:
            continue
        # a prefilling slot's cache holds only its prompt so far: its whole prompt is cached + pending
        n = common_prefix(s.cached, prompt)
        if n == len(s.cached):
            n += common_prefix(s.pending, prompt[n:])
        n = min(n, len(prompt) - 1) // rules.granule * rules.granule
        if n > future:
            wait_for, future = s.seq_id, n
    if wait_for is not None and future - best >= rules.min_copy:
        return Decision("wait", wait_for)
    if source is not None and best - own >= rules.min_copy:
        return Decision("copy", source, best)
    return Decision("compute", None, own)
