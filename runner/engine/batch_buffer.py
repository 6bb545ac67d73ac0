"""A llama_batch whose arrays are preallocated numpy buffers.

Filling a batch then costs a few vectorised slice assignments per sequence, not ctypes calls per token.
"""

from __future__ import annotations

import ctypes

import llama_cpp as ll
import numpy as np


class BatchBuffer:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)  # one sequence id per token
        self.logits = np.zeros(capacity, dtype=np.int8)
        # seq_id is an array of pointers, one per token, each at that token's entry in `self.seq`.
        base = self.seq.ctypes.data
        self._seq_ptrs = (ctypes.POINTER(ll.llama_seq_id) * capacity)(
            *[ctypes.cast(base + 4 * i, ctypes.POINTER(ll.llama_seq_id)) for i in range(capacity)]
        )
        self.n = 0
        # The arrays never move, so the llama_batch pointing into them is made once; a step sets its size.
        batch = self._batch = ll.llama_batch()
        batch.token = self.token.ctypes.data_as(ctypes.POINTER(ll.llama_token))
        batch.embd = None
        batch.pos = self.pos.ctypes.data_as(ctypes.POINTER(ll.llama_pos))
        batch.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = self._seq_ptrs
        batch.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens, start_pos: int, seq_id: int, want_last_logits: bool, all_logits: bool = False) -> int:
        """Appends tokens of one sequence; returns the batch index of the last one. `all_logits` asks
        for every token's logits (a speculative step verifies each draft position)."""
        k = len(tokens)
        a, b = self.n, self.n + k
        self.token[a:b] = tokens
        self.pos[a:b] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.seq[a:b] = seq_id
        self.logits[a:b] = 1 if all_logits else 0
        if want_last_logits:
            self.logits[b - 1] = 1
        self.n = b
        return b - 1

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def as_llama_batch(self) -> ll.llama_batch:
        self._batch.n_tokens = self.n
        return self._batch
