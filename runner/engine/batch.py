"""Continuous batching over llama.cpp: N slots, one `llama_decode` per step, its own thread.

Each step carries one token for every generating sequence (with its drafts when it speculates) and
prompt chunks of newcomers; what goes into a step is planner.py's choice, made from the slots' state.
This module gathers that state, fills the llama_batch from the plan, decodes and samples. New requests
join between steps and finished ones leave at once. A step's results reach the server in one call
(`on_events`), so the HTTP side wakes once per step, not once per token. A new request's prompt
prefix is kept from its slot's cache, copied from another slot of its group, or waited for while
another slot prefills it (prefix_share.py).

With several contexts (pipelining, the GPU's choice for many slots) the slots are split into groups,
one per context: llama_decode returns while the GPU still computes, so the engine samples one group's
step on the CPU while the GPU computes the other's, and the host's work per step hides behind the GPU.
A group's slots change (admissions, cancellations) only while no step of that group is in flight.
Measurements behind these choices: docs/performance.md.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

import llama_cpp as ll

from runner.engine import prefix_share, speculative
from runner.engine.batch_buffer import BatchBuffer
from runner.engine.context_limit import context_full, fit_prompt, shifts
from runner.engine.logprobs import token_logprob
from runner.engine.model import LoadedModel
from runner.engine.planner import (DecodeEntry, FillerEntry, PrefillEntry, SlotState, StepPlan, StepState,
                                   plan_step, slots_to_draft)
from runner.engine.sampling import SamplerChain, SamplingOptions
from runner.engine.step_profile import StepProfile
from runner.engine.text import TextStream


# Below this many sequences per thread, handing work over costs more than it saves. A GPU host has cores
# to spare (llama.cpp's own threads idle while the GPU computes): there, threads take two sequences each.
_MIN_PER_WORKER = 4
_MIN_PER_WORKER_MANY_CORES = 2
_MANY_CORES = 8
_FILLER_TOKEN = 0  # what an idle slot decodes to close a gap between busy ones (any token id will do)
# Mixed steps: a prefix copy (a whole KV stream) is worth it from this many tokens saved.
_MIN_PREFIX_COPY = 64


@dataclass
class Event:
    """What one step produced for one request."""

    request: "Request"
    text: str = ""
    done: bool = False
    done_reason: str | None = None
    error: str | None = None
    logprobs: list[dict] | None = None  # the entries of the tokens this event's text came from (if asked)


@dataclass
class Request:
    prompt: list[int]
    options: SamplingOptions
    id: int = field(default_factory=itertools.count().__next__)
    truncate: bool = True  # Ollama's request fields: context_limit.py
    shift: bool = True
    cancelled: bool = False
    # Filled in by the engine:
    prompt_eval_count: int = 0
    eval_count: int = 0
    t_submit: float = field(default_factory=time.perf_counter)
    t_first_token: float = 0.0
    t_done: float = 0.0
    context: list[int] = field(default_factory=list)  # prompt + generated tokens, for /api/generate's `context`
    speculative: bool = False  # its options asked for a draft source (speculative.py)
    draft_count: int = 0  # tokens proposed by the draft source and verified
    draft_accepted_count: int = 0  # of those, the ones the target agreed with

    @property
    def prompt_eval_duration(self) -> float:
        return max(self.t_first_token - self.t_submit, 0.0)

    @property
    def eval_duration(self) -> float:
        return max(self.t_done - self.t_first_token, 0.0)


class _Slot:
    def __init__(self, group: "_Group", seq_id: int):
        self.group = group
        self.seq_id = seq_id  # in the group's context
        self.cached: list[int] = []  # tokens whose KV is in this slot's sequence, in order
        self.prefilled = 0  # how many of `cached` (from the start) were computed by prefill chunks
        self.req: Request | None = None
        self.pending: list[int] = []  # prompt tokens still to prefill
        self.last_token: int = -1
        self.chain: SamplerChain | None = None  # kept after a request, for the next with equal options
        self.chain_key: tuple | None = None
        self.stream: TextStream | None = None
        self.generated = 0
        self.drafter: speculative.DraftSource | None = None  # the request's draft source, if it speculates
        self.draft: list[int] = []  # tokens proposed for the step being planned or in flight
        # Its request's prefix is not settled yet (prefix_share.decide): it holds the slot but computes
        # nothing, waiting for another slot of the group to finish prefilling the prefix they share.
        self.unsettled = False
        self.last_used = 0  # the engine's clock when a request last began or ended here (LRU)

    @property
    def busy(self) -> bool:
        return self.req is not None


class _Group:
    """One llama.cpp context and the slots whose sequences live in it."""

    def __init__(self, ctx, memory, n_slots: int, capacity: int):
        self.ctx = ctx
        self.memory = memory
        self.slots = [_Slot(self, i) for i in range(n_slots)]
        self.buffer = BatchBuffer(capacity)
        self.inflight: list[tuple[_Slot, int]] = []  # outputs of a launched step not yet sampled
        self.drafted = False  # the launched step carries draft tokens to verify
        self.last_step_was_prefill = False

    @property
    def busy(self) -> int:
        return sum(s.busy for s in self.slots)


class Engine:
    def __init__(
        self,
        model: LoadedModel,
        n_slots: int,
        on_events: Callable[[list[Event]], None],
        *,
        mixed_prefill: bool = False,
        on_fatal: Callable[[str], None] | None = None,
        spec_max_sequences: int = speculative.DEFAULT_MAX_SEQUENCES,
        profile_every: int = 0,
    ):
        self.model = model
        self.n_ctx = model.cfg.num_ctx
        per_context = n_slots // len(model.contexts)
        # model.n_batch is at least the slots per context: a decode step of all of them fits.
        self.groups = [_Group(ctx, mem, per_context, model.n_batch) for ctx, mem in model.contexts]
        self.slots = [s for g in self.groups for s in g.slots]
        self._turn = 0  # the group whose step is launched next
        self.on_events = on_events
        self.on_fatal = on_fatal
        self.mixed_prefill = mixed_prefill
        # Speculation only while a group decodes at most this many sequences (speculative.py).
        self.spec_max_sequences = spec_max_sequences
        self._waiting: deque[Request] = deque()
        self._lock = threading.Condition()
        self._stop = False
        self.can_shift = ll.llama_memory_can_shift(model.memory)
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        cores = os.cpu_count() or 1
        self._workers = min(16, cores)
        self._min_per_worker = _MIN_PER_WORKER_MANY_CORES if cores >= _MANY_CORES else _MIN_PER_WORKER
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sampler") if self._workers > 1 else None
        self.fatal_error: str | None = None
        # Per-token lookups that would otherwise be a ctypes call each: a token's bytes and whether it
        # ends generation never change for a loaded model.
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._profile = StepProfile(profile_every) if profile_every > 0 else None  # LM_ENGINE_PROFILE
        self._clock = itertools.count(1).__next__  # orders slot uses, for prefix_share's LRU choice

    # -- called from other threads ---------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, req: Request) -> None:
        with self._lock:
            if self.fatal_error is None:
                self._waiting.append(req)
                self._lock.notify()
                return
        self.on_events([Event(req, done=True, error=self.fatal_error)])  # the engine thread is gone

    def cancel(self, req: Request) -> None:
        req.cancelled = True  # seen by the engine at its next step
        with self._lock:
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self.thread.ident is not None:  # started (a test may drive the steps itself)
            self.thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if not self.thread.is_alive():  # else the engine thread may still be using the chains
            for slot in self.slots:
                self._drop_chain(slot)

    @property
    def active(self) -> int:
        return sum(s.busy for s in self.slots) + len(self._waiting)

    # -- the engine thread ---------------------------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self._waiting) or any(s.busy for s in self.slots) or any(g.inflight for g in self.groups)

    def _run(self) -> None:
        try:
            while True:
                prof = self._profile
                with self._lock:
                    while not self._stop and not self._has_work():
                        self._lock.wait()
                    if self._stop:
                        break
                if prof:
                    prof.mark("idle")
                # Launch this group's step, then finish the step launched before it (the other group's,
                # computed by the GPU meanwhile; with one group, this very step).
                group = self.groups[self._turn]
                self._turn = (self._turn + 1) % len(self.groups)
                events: list[Event] = []
                self._drop_cancelled(group, events)
                self._admit(group, events)
                if prof:
                    prof.mark("admit")
                self._launch(group)
                oldest = self.groups[self._turn]
                n = len(oldest.inflight)
                if oldest.inflight:
                    self._complete(oldest, events)
                if events:
                    self.on_events(events)
                if prof:
                    prof.mark("emit")
                    prof.step_done(n)
        except Exception as exc:  # a broken engine must not leave clients waiting forever
            with self._lock:
                self.fatal_error = f"engine failure: {exc}"
            self._fail_all(self.fatal_error)
            if self.on_fatal:
                self.on_fatal(self.fatal_error)
            raise

    def _fail_all(self, message: str) -> None:
        events = [Event(s.req, done=True, error=message) for s in self.slots if s.req]
        with self._lock:
            events += [Event(r, done=True, error=message) for r in self._waiting]
            self._waiting.clear()
        if events:
            self.on_events(events)

    def _admit(self, group: _Group, events: list[Event]) -> None:
        """Waiting requests into the group's free slots, keeping the groups' loads even."""
        if not self._waiting:
            # Nothing waits (a request appended meanwhile is seen at the next step): skip the slot scans
            # below, which at one client were a fifth of the engine's Python time per token.
            return
        while True:
            free = [s for s in group.slots if not s.busy]
            if not free or any(g.busy < group.busy for g in self.groups if g is not group
                               and any(not s.busy for s in g.slots)):
                return  # another group with room is less busy: the request waits for its turn
            with self._lock:
                if not self._waiting:
                    return
                req = self._waiting.popleft()
            if req.cancelled:
                events.append(Event(req, done=True, done_reason="cancelled"))
                continue
            try:
                if not req.prompt:
                    raise ValueError("empty prompt")
                prompt = self._fit_prompt(req.prompt, req.options.num_keep, req.truncate)
                chosen = prefix_share.choose_slot([self._view(s) for s in free], prompt, self._share_rules(group))
                self._assign(group.slots[chosen.seq_id], req, prompt)
            except ValueError as exc:
                events.append(Event(req, done=True, error=str(exc)))

    def _fit_prompt(self, prompt: list[int], num_keep: int, truncate: bool = True) -> list[int]:
        """Ollama's overflow rule: keep the first num_keep tokens, drop from the front after them."""
        return fit_prompt(prompt, self.n_ctx, num_keep, truncate)

    def _assign(self, slot: _Slot, req: Request, prompt: list[int]) -> None:
        """Gives the slot its request and its fitted prompt; where the prompt's prefix comes from is
        settled at the group's next step (_settle_prefixes), or later while it waits for another slot."""
        self._set_chain(slot, req.options)
        slot.req = req
        slot.pending = prompt
        slot.unsettled = True
        slot.last_used = self._clock()
        slot.stream = TextStream(req.options.stop)
        slot.generated = 0
        slot.drafter = speculative.draft_source_for(req.options.draft_type, req.options.draft_num_predict)
        req.speculative = slot.drafter is not None
        req.context = list(prompt)

    def _share_rules(self, group: _Group) -> prefix_share.Rules:
        if self.mixed_prefill:
            return prefix_share.Rules(granule=1, min_copy=_MIN_PREFIX_COPY)
        # Batch-invariant steps: whole prefill chunks only, and one chunk is always worth a copy.
        chunk = group.buffer.capacity
        return prefix_share.Rules(granule=chunk, min_copy=chunk)

    def _view(self, slot: _Slot) -> prefix_share.SlotView:
        # A slot not yet settled is no prefill to wait for: it computes nothing until it is settled.
        pending = slot.pending if slot.busy and not slot.unsettled else ()
        return prefix_share.SlotView(slot.seq_id, slot.cached, slot.prefilled, pending, slot.last_used)

    def _settle_prefixes(self, group: _Group) -> None:
        """Settles where each new request's prompt prefix comes from, oldest request first (so that
        of several arrivals sharing a prefix the first computes it and the others wait for it).

        Runs in the group's turn before its step is launched: no step of this group is in flight then
        (_run completes each group's step before that group's next admission), so every KV the
        copies read is complete and no step writes it before the copy. llama.cpp performs a copy
        between streams at the context's next llama_decode, before that decode computes anything."""
        unsettled = [s for s in group.slots if s.unsettled]
        if not unsettled:
            return
        rules = self._share_rules(group)
        for slot in sorted(unsettled, key=lambda s: s.req.id):
            prompt = slot.pending  # the whole prompt while unsettled
            others = [self._view(s) for s in group.slots if s is not slot]
            d = prefix_share.decide(prompt, self._view(slot), others, rules)
            if d.kind == "wait":
                continue
            mem = group.memory
            keep = d.n_tokens
            if d.kind == "copy":
                source = group.slots[d.source]
                # Between streams seq_cp copies the whole stream (any other range aborts llama.cpp);
                # the trim below keeps the shared prefix.
                ll.llama_memory_seq_cp(mem, source.seq_id, slot.seq_id, -1, -1)
                slot.cached = source.cached[:keep]
                slot.prefilled = keep
                source.last_used = self._clock()  # its prefix served: keep it cached longer
            if not ll.llama_memory_seq_rm(mem, slot.seq_id, keep, -1):
                # a memory that cannot cut a sequence (recurrent): start the sequence afresh
                ll.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
                keep, slot.cached, slot.prefilled = 0, [], 0
            del slot.cached[keep:]
            slot.prefilled = min(slot.prefilled, keep)
            slot.pending = prompt[keep:]
            slot.unsettled = False
            slot.req.prompt_eval_count = len(slot.pending)  # the tokens computed: reuse shows here

    def _set_chain(self, slot: _Slot, opts: SamplingOptions) -> None:
        key = opts.chain_key()
        if slot.chain is not None and slot.chain_key == key:
            slot.chain.reset()
            return
        self._drop_chain(slot)
        slot.chain = SamplerChain(opts, self.model.vocab, self.model.n_vocab)
        slot.chain_key = key

    def _drop_chain(self, slot: _Slot) -> None:
        if slot.chain is not None:
            slot.chain.free()
        slot.chain = slot.chain_key = None

    def _release(self, slot: _Slot) -> None:
        slot.req = slot.stream = slot.drafter = None
        slot.pending = []
        slot.draft = []
        slot.unsettled = False
        slot.last_used = self._clock()

    def _drop_cancelled(self, group: _Group, events: list[Event]) -> None:
        for slot in group.slots:
            if slot.req is not None and slot.req.cancelled:
                events.append(Event(slot.req, done=True, done_reason="cancelled"))
                self._release(slot)

    def _slot_state(self, slot: _Slot) -> SlotState:
        if not slot.busy or slot.unsettled:
            # A request waiting for another slot's prefill has nothing to compute yet: to the planner
            # its slot is idle (it may carry a gap filler, recorded in its cache like any idle slot's).
            return SlotState.idle(slot.seq_id)
        if slot.pending:
            return SlotState.prefilling(slot.seq_id, len(slot.pending), slot.req.id)
        return SlotState.generating(slot.seq_id, drafts=len(slot.draft), can_draft=slot.drafter is not None)

    def _plan(self, group: _Group) -> StepPlan:
        """The group's next step (planner.py), its speculating slots' drafts proposed on the way."""
        state = StepState(tuple(self._slot_state(s) for s in group.slots), group.buffer.capacity,
                          mixed_prefill=self.mixed_prefill, last_step_was_prefill=group.last_step_was_prefill,
                          spec_max_sequences=self.spec_max_sequences)
        drafting = slots_to_draft(state)
        if drafting:
            for seq_id in drafting:
                s = group.slots[seq_id]
                k = speculative.draft_limit(
                    s.req.options.draft_num_predict, cached=len(s.cached), n_ctx=self.n_ctx,
                    generated=s.generated, num_predict=s.req.options.num_predict,
                    capacity=group.buffer.capacity, slots=len(group.slots))
                s.draft = s.drafter.propose(s.req.context, k) if k else []
            state = replace(state, slots=tuple(self._slot_state(s) for s in group.slots))
        plan = plan_step(state)
        group.last_step_was_prefill = plan.last_step_was_prefill
        return plan

    def _launch(self, group: _Group) -> None:
        """Starts one llama_decode over the group's planned step; its outputs become group.inflight.

        llama_decode returns once the work is queued on an asynchronous backend (a GPU), before the
        results exist: they are read in _complete. New requests' prefixes are settled first, so the step
        plans what they still have to compute."""
        self._settle_prefixes(group)
        plan = self._plan(group)
        if not plan.entries:
            return
        prof = self._profile
        slots = group.slots
        for entry in plan.entries:
            slot = slots[entry.seq_id]
            if (type(entry) is DecodeEntry and context_full(len(slot.cached), self.n_ctx)
                    and shifts(self.can_shift, slot.req.shift)):
                self._shift_context(slot)
        buf = group.buffer
        buf.clear()
        outputs: list[tuple[_Slot, int]] = []
        drafted = False
        for entry in plan.entries:  # in sequence id order
            slot = slots[entry.seq_id]
            start = len(slot.cached)
            kind = type(entry)
            if kind is FillerEntry:
                if start + 1 >= self.n_ctx:  # long idle: start its stream afresh
                    ll.llama_memory_seq_rm(group.memory, slot.seq_id, -1, -1)
                    slot.cached, slot.prefilled, start = [], 0, 0
                buf.add((_FILLER_TOKEN,), start, slot.seq_id, False)
                slot.cached.append(_FILLER_TOKEN)
            elif kind is PrefillEntry:
                n = entry.n_tokens
                chunk = slot.pending[:n]
                idx = buf.add(chunk, start, slot.seq_id, entry.last)
                slot.pending = slot.pending[n:]
                slot.cached.extend(chunk)
                slot.prefilled = len(slot.cached)
                if entry.last:
                    outputs.append((slot, idx))
            elif entry.drafts:  # the last token and the drafts to verify, each with its logits
                tokens = [slot.last_token, *slot.draft]
                idx = buf.add(tokens, start, slot.seq_id, True, all_logits=True)
                slot.cached.extend(tokens)
                outputs.append((slot, idx))
                drafted = True
            else:
                idx = buf.add((slot.last_token,), start, slot.seq_id, True)
                slot.cached.append(slot.last_token)
                outputs.append((slot, idx))
        if prof:
            prof.mark("build")
        rc = ll.llama_decode(group.ctx, buf.as_llama_batch())
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        group.inflight = outputs
        group.drafted = drafted
        if prof:
            prof.mark("decode")

    def _complete(self, group: _Group, events: list[Event]) -> None:
        """Samples the outputs of the group's launched step and hands on their tokens."""
        outputs, group.inflight = group.inflight, []
        prof = self._profile
        if prof:
            ll.llama_synchronize(group.ctx)  # the wait for the GPU, apart from sampling's time
            prof.mark("gpu")
        tokens = self._sample(group.ctx, outputs, group.drafted)
        if prof:
            prof.mark("sample")
        now = time.perf_counter()
        for (slot, idx), token in zip(outputs, tokens):
            if type(token) is list:
                self._take_verified(slot, token, now, events, group.ctx, idx)
            else:
                self._take_token(slot, token, now, events, group.ctx, idx)
        if prof:
            prof.mark("tokens")

    def _sample(self, ctx, outputs: list[tuple[_Slot, int]], drafted: bool = False) -> list[int | list[int]]:
        """One token per output, sampled by each sequence's C sampler chain; for a sequence that carried
        drafts (`drafted`: some did), the list of tokens its verification emits (speculative.verify).

        Sampling walks the whole vocabulary once per sequence (building its candidate array), which
        for many sequences costs more than the GPU's decode step. The chains are independent and ctypes
        drops the GIL during each call, so groups of sequences are sampled on worker threads at once.
        The first logits read synchronizes the context (and reorders outputs) before any worker starts,
        after which reads are plain memory reads.
        """
        if drafted:
            def one(slot: _Slot, idx: int) -> int | list[int]:
                if not slot.draft:
                    return slot.chain.sample(ctx, idx)
                # A verify step has k + 1 rows for this sequence; the chain's pass over the vocabulary per
                # row would cost more than the step's decode on a GPU (docs/performance.md, issue 23).
                row = slot.chain.greedy_row if slot.chain.stateless_greedy else slot.chain.sample
                return speculative.verify(lambda i: row(ctx, i), idx - len(slot.draft), slot.draft)
        else:
            one = lambda slot, idx: slot.chain.sample(ctx, idx)  # noqa: E731
        if len(outputs) < 2 * self._min_per_worker or self._pool is None:
            return [one(slot, idx) for slot, idx in outputs]
        ll.llama_get_logits_ith(ctx, outputs[0][1])
        n = min(self._workers, len(outputs) // self._min_per_worker)
        groups = [outputs[i::n] for i in range(n)]
        results = list(self._pool.map(lambda g: [one(slot, idx) for slot, idx in g], groups))
        tokens = [0] * len(outputs)
        for i, group_tokens in enumerate(results):
            tokens[i::n] = group_tokens
        return tokens

    def _take_token(self, slot: _Slot, token: int, now: float, events: list[Event], ctx, index: int) -> None:
        """Hands on the token sampled from output `index` of the context's last step."""
        req = slot.req
        if slot.generated == 0:
            req.t_first_token = now
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self.model.is_eog(token))
        if eog:
            self._finish(slot, "stop", events, now)
            return
        slot.generated += 1
        req.eval_count = slot.generated
        req.context.append(token)
        slot.last_token = token
        piece = self._piece(token)
        text = slot.stream.push(piece)
        # A token's logprob goes out with the event of its step even when its text is held back (an
        # unfinished character or stop string), so there is one entry per generated token.
        lp = None
        if req.options.logprobs:
            lp = [token_logprob(ll.llama_get_logits_ith(ctx, index), self.model.n_vocab, token,
                                req.options.top_logprobs, self._piece)]
        if slot.stream.stopped:
            events.append(Event(req, text=text, logprobs=lp))
            self._finish(slot, "stop", events, now)
            return
        limit = req.options.num_predict
        if limit >= 0 and slot.generated >= limit:
            events.append(Event(req, text=text, logprobs=lp))
            self._finish(slot, "length", events, now)
            return
        if context_full(len(slot.cached), self.n_ctx) and not shifts(self.can_shift, req.shift):
            events.append(Event(req, text=text, logprobs=lp))
            self._finish(slot, "length", events, now)
            return
        if text or lp:
            events.append(Event(req, text=text, logprobs=lp))

    def _take_verified(self, slot: _Slot, tokens: list[int], now: float, events: list[Event], ctx,
                       index: int) -> None:
        """Hands on the tokens of a verified draft (output `index` is the last draft token's row).

        The KV of the rejected drafts goes first, so that the slot's cache holds the last token and the
        accepted drafts, as if they had been decoded one by one; the next step decodes the final token
        (the target's correction or bonus) as usual. Each token then goes through _take_token with its
        own row, so EOG, stop strings, num_predict and logprobs apply per token exactly as without
        speculation; once the request finishes the rest are dropped."""
        req, draft = slot.req, slot.draft
        slot.draft = []
        accepted = len(tokens) - 1
        req.draft_count += len(draft)
        req.draft_accepted_count += accepted
        keep = len(slot.cached) - (len(draft) - accepted)
        if keep < len(slot.cached):
            ll.llama_memory_seq_rm(slot.group.memory, slot.seq_id, keep, -1)
            del slot.cached[keep:]
        first = index - len(draft)
        for j, token in enumerate(tokens):
            self._take_token(slot, token, now, events, ctx, first + j)
            if slot.req is not req:  # finished
                return

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.model.piece(token)
        return piece

    def _finish(self, slot: _Slot, reason: str, events: list[Event], now: float) -> None:
        req = slot.req
        req.t_done = now
        tail = slot.stream.flush()
        events.append(Event(req, text=tail, done=True, done_reason=reason))
        self._release(slot)

    def _shift_context(self, slot: _Slot) -> None:
        """Ollama's context shift: drop half of what follows num_keep, slide the rest down."""
        keep = min(max(slot.req.options.num_keep, 0), len(slot.cached) // 2)
        discard = (len(slot.cached) - keep) // 2
        mem, seq = slot.group.memory, slot.seq_id
        ll.llama_memory_seq_rm(mem, seq, keep, keep + discard)
        ll.llama_memory_seq_add(mem, seq, keep + discard, -1, -discard)
        del slot.cached[keep : keep + discard]
        slot.prefilled = min(slot.prefilled, keep)
