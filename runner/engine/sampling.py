"""The llama.cpp sampler chain built from a sequence's sampling options.

Sampling runs in C (llama.cpp sampler chains): Python never loops over the vocabulary.
"""

from __future__ import annotations

import ctypes

import llama_cpp as ll
import numpy as np

# The options themselves are part of the daemon-runner contract (protocol.py); this module builds the
# llama.cpp chain that runs them.
from runner.engine.protocol import SamplingOptions


class SamplerChain:
    """Owns one llama.cpp sampler chain; free() must be called when the sequence ends."""

    def __init__(self, opts: SamplingOptions, vocab, n_vocab: int):
        # A greedy chain with no state of its own (no grammar, no penalty history) picks the row's
        # largest logit whatever it has seen, so a verify row can skip building the chain's candidate
        # array over the whole vocabulary (speculative.verify; see greedy_row).
        self.stateless_greedy = (opts.temperature <= 0 and not opts.grammar and opts.repeat_penalty == 1.0
                                 and not opts.presence_penalty and not opts.frequency_penalty)
        self.n_vocab = n_vocab
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        self.ptr = ll.llama_sampler_chain_init(params)
        add = lambda s: ll.llama_sampler_chain_add(self.ptr, s)  # noqa: E731 - local shorthand

        if opts.grammar:
            grammar = ll.llama_sampler_init_grammar(vocab, opts.grammar.encode(), b"root")
            if not grammar:
                ll.llama_sampler_free(self.ptr)
                raise ValueError("invalid grammar")
            add(grammar)
        if opts.top_k > 0:
            # top_k first: the penalty sampler then scans 40 candidates, not the whole vocabulary
            # (measured: penalties over 262k logits cost more per token than the rest of the chain).
            add(ll.llama_sampler_init_top_k(opts.top_k))
        if opts.repeat_penalty != 1.0 or opts.presence_penalty or opts.frequency_penalty:
            last_n = n_vocab if opts.repeat_last_n < 0 else opts.repeat_last_n
            add(ll.llama_sampler_init_penalties(n_vocab, last_n, opts.repeat_penalty, opts.frequency_penalty,
                                                opts.presence_penalty))
        if opts.temperature <= 0:
            # Greedy as "keep the most likely token, then draw from what is left", not llama.cpp's greedy
            # sampler: on the backend, after top_k, that one returns the token's rank among the top k
            # instead of its id. The draw from a single candidate needs no randomness.
            add(ll.llama_sampler_init_temp(0.0))
            add(ll.llama_sampler_init_dist(0))
            return
        if 0 < opts.typical_p < 1:
            add(ll.llama_sampler_init_typical(opts.typical_p, 1))
        if 0 < opts.top_p < 1:
            add(ll.llama_sampler_init_top_p(opts.top_p, 1))
        if opts.min_p > 0:
            add(ll.llama_sampler_init_min_p(opts.min_p, 1))
        add(ll.llama_sampler_init_temp(opts.temperature))
        # A negative seed means "random", as in Ollama: llama.cpp's LLAMA_DEFAULT_SEED draws a fresh
        # seed when the chain is made and again at every reset.
        seed = opts.seed if opts.seed >= 0 else ll.LLAMA_DEFAULT_SEED
        add(ll.llama_sampler_init_dist(ctypes.c_uint32(seed).value))

    def sample(self, ctx, index: int) -> int:
        """Samples the `index`-th output of the last decode and accepts it into the chain's state."""
        return ll.llama_sampler_sample(self.ptr, ctx, index)

    def greedy_row(self, ctx, index: int) -> int:
        """What `sample` would return for a stateless greedy chain, read with one pass over the row.

        The chain keeps the single largest logit (top_k keeps it, temperature 0 keeps only it), so where
        that maximum is unique the result is the same token; a tie (which the chain breaks by its own sort
        order) goes through the chain itself."""
        row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), shape=(self.n_vocab,))
        best = int(row.argmax())
        if np.count_nonzero(row == row[best]) == 1:
            return best
        return self.sample(ctx, index)

    def reset(self) -> None:
        """Back to the state of a new chain: penalty history cleared, the seed drawn again."""
        ll.llama_sampler_reset(self.ptr)

    def free(self) -> None:
        if self.ptr:
            ll.llama_sampler_free(self.ptr)
            self.ptr = None
