"""Speculative decoding: draft sources, and how the engine verifies their proposals.

A sequence that speculates carries its last token and up to k proposed tokens into the next decode
step, each with its logits requested, beside the other sequences' tokens in the same `llama_decode`.
`verify` then samples those rows in order with the request's own sampler chain and keeps the longest
prefix the target agrees with, plus one token of the target's own (the correction at the first
mismatch, or the bonus token after a fully accepted draft). The engine (batch.py) removes the rejected
tokens' KV with `llama_memory_seq_rm`.

Request options (Ollama's style, see README):
  draft_type         "ngram" turns on n-gram lookup (NgramDraft); "" or "none" (the default) is off.
  draft_num_predict  k, the most tokens proposed per step (Ollama's option for its draft models:
                     default 4, 0 turns drafting off); 0..MAX_DRAFT_NUM_PREDICT, else a 400.

Greedy output is token for token what it is without speculation wherever llama.cpp's kernels give a
verify row the same numbers as a one-token step. On the CPU that holds for smollm2 (Q4_1) and gemma3
(Q4_K) at k = 4 because CPU models load without llama.cpp's repacked weights (LM_BATCH_INVARIANT): with
them, gemma3's answer diverged at token 44 with 4 or more rows in a step, exactly as when 4 plain
requests decode together. So speculation keeps the CPU's batch-invariance promise as far as the kernels
keep it for concurrent sequences, no further. Sampling keeps the target's distribution.

Where proposals stop paying for one request (its text stops copying), its NgramDraft backs off by
itself. Under load the GPU (or the CPU's cores) is no longer idle between the weights' reads, so extra
verify tokens cost real time: a group speculates only while at most LM_SPEC_MAX_SEQUENCES of its
sequences decode (default 4), and the step's draft tokens stay within the batch.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

DRAFT_TYPES = ("", "none", "ngram")
MAX_DRAFT_NUM_PREDICT = 32  # llama-server's --spec-draft-n-max defaults to 16; more is rarely accepted
DEFAULT_MAX_SEQUENCES = 4


def check_options(draft_type: object, draft_num_predict: object) -> None:
    """ValueError (a 400) for a draft option the engine cannot honour."""
    if not isinstance(draft_type, str) or draft_type not in DRAFT_TYPES:
        raise ValueError(f'draft_type must be one of "ngram", "none" or ""; got {draft_type!r}')
    if type(draft_num_predict) is not int or not 0 <= draft_num_predict <= MAX_DRAFT_NUM_PREDICT:
        raise ValueError(f"draft_num_predict must be between 0 and {MAX_DRAFT_NUM_PREDICT}; got {draft_num_predict!r}")


class DraftSource(Protocol):
    """Proposes the tokens a sequence is likely to continue with; one object per request.

    `history` is the request's tokens so far (prompt, then every emitted token; it only grows), `k` the
    most tokens to propose. Returning fewer, or none, is always allowed. A draft model or MTP heads
    would implement this too: a draft model keeps its own KV sequence and can tell from `history` how
    much of its last proposal was accepted."""

    def propose(self, history: Sequence[int], k: int) -> list[int]: ...


class NgramDraft:
    """N-gram lookup (llama.cpp's ngram-simple idea, no second model): find the most recent earlier
    occurrence of the last n tokens (n = 3, else 2) and propose the tokens that followed it.

    An index from each n-gram to the end of its latest occurrence is kept up to date as the history
    grows, so a proposal costs a few dict operations, not a scan of the context.

    Where the text stops copying, proposals stop paying: each costs the step k more rows. So after a
    proposal whose first token was rejected, the next 1, 2, 4, ... up to MAX_BACKOFF chances to propose
    are skipped; an accepted proposal ends the back-off. (The history shows what was accepted.)"""

    MAX_BACKOFF = 8

    def __init__(self, sizes: Sequence[int] = (3, 2)):
        self.sizes = tuple(sizes)
        self._latest: dict[int, dict[tuple, int]] = {n: {} for n in self.sizes}
        self._indexed = 0  # n-grams ending at positions 1.._indexed are in the index
        self._last: tuple[int, int] | None = None  # (history length, first token) of the last proposal
        self._backoff = 0  # chances skipped after the latest miss
        self._skip = 0  # chances still to skip

    def propose(self, history: Sequence[int], k: int) -> list[int]:
        end = len(history)
        if k <= 0:
            return []
        if self._last is not None and self._last[0] < end:  # judge the last proposal by what followed
            hit = history[self._last[0]] == self._last[1]
            self._backoff = 0 if hit else min(max(2 * self._backoff, 1), self.MAX_BACKOFF)
            self._skip = self._backoff
            self._last = None
        # Index every n-gram that ends before the last position: the one ending there is the query, and
        # an occurrence must leave at least one token after it to propose.
        for e in range(self._indexed + 1, end):
            for n, table in self._latest.items():
                if e >= n:
                    table[tuple(history[e - n:e])] = e
        self._indexed = max(self._indexed, end - 1)
        if self._skip:
            self._skip -= 1
            return []
        for n in self.sizes:
            if end < n:
                continue
            found = self._latest[n].get(tuple(history[end - n:end]))
            if found is not None:
                self._last = (end, history[found])
                return list(history[found:found + k])
        return []


def draft_source_for(draft_type: str, draft_num_predict: int) -> DraftSource | None:
    """The draft source a request's options ask for, None when it does not speculate."""
    if draft_type == "ngram" and draft_num_predict > 0:
        return NgramDraft()
    return None


def draft_limit(k: int, *, cached: int, n_ctx: int, generated: int, num_predict: int, capacity: int,
                slots: int) -> int:
    """How many draft tokens a sequence may carry into the next step.

    - Context: the step decodes positions cached..cached+k, and every token it may emit (up to k+1) must
      leave the room the engine checks for after each token (`cached + 1 < n_ctx`), so that a context
      limit or shift falls exactly where it would without speculation.
    - num_predict: a step emits at most k+1 tokens; proposing past the limit is wasted work.
    - The batch: with at most capacity // slots tokens per slot, every sequence's tokens fit in the step
      whatever the others carry (prompt chunks take what is left).
    """
    k = min(k, n_ctx - cached - 3, capacity // max(slots, 1) - 1)
    if num_predict >= 0:
        k = min(k, num_predict - generated - 1)
    return max(k, 0)


def verify(sample: Callable[[int], int], first_index: int, draft: Sequence[int]) -> list[int]:
    """The tokens a verified draft emits: its accepted prefix, then one token of the target's own.

    `sample(i)` samples output row i of the step with the request's sampler chain, accepting the token
    into the chain's state (llama_sampler_sample). Row first_index + j holds the target's logits after
    the sequence's last token and draft[:j].

    Why this is the standard rejection rule (Leviathan et al. 2023; Chen et al. 2023) and so keeps the
    target's output distribution: the rule accepts draft token x with probability min(1, p(x) / q(x))
    and on rejection draws from (p - q)+, renormalised. An n-gram draft is deterministic, so q is a
    point mass on x: x is accepted with probability p(x), and on rejection the draw is from p with x
    removed and renormalised. Drawing y ~ p with the chain and accepting iff y == x does exactly that:
    P(y == x) = p(x), and given y != x, y is distributed as p restricted to the other tokens. Here p is
    the distribution the request's chain defines (temperature, top_k, top_p, min_p, penalties,
    grammar), since the chain itself draws y. Greedy (temperature <= 0) is the special case where p is
    a point mass on the argmax: accept iff the draft equals it.

    The chain's state stays right: rows are sampled in order, and sampling stops at the first mismatch,
    so the chain has accepted exactly the emitted tokens (the draft's prefix that equals them, then the
    correction), which are also the tokens whose KV the next row's logits were computed with. With a
    fixed seed the chain draws once per emitted token, as without speculation, so a seeded request
    gives the same tokens as long as the logits are the same.
    """
    out = []
    for j, proposed in enumerate(draft):
        token = sample(first_index + j)
        out.append(token)
        if token != proposed:
            return out
    out.append(sample(first_index + len(draft)))
    return out
