"""Which prompt tokens a mixed step carries, shaped for llama.cpp's micro-batches.

With a KV stream per sequence, llama.cpp cuts a batch into micro-batches ("split_equal"): each takes a
run of consecutive sequence ids, the same number of tokens from every sequence in the run, as many as
the shortest of them has left. Each micro-batch is one more pass over the weights and one more wait for
the host, whatever its size (~7 ms for an 8B model on an H100). Prompt chunks of uneven lengths
therefore cost several passes per step: by that rule, one decoding sequence beside prompts with 41, 277
and 192 tokens in the step (what a first-come budget of 512 gives) runs as passes of 4, 120, 302 and 85.

So a step's prompt tokens come as blocks: consecutive prefilling sequences taking equal chunks, one
micro-batch each. The oldest request's sequence is always in the first block (no prompt starves).
"""

from __future__ import annotations


def best_block(avail: list[int], must: int, budget: int) -> tuple[int, int, int]:
    """The block of consecutive sequences that carries the most prompt tokens in one micro-batch.

    `avail[i]` is how many prompt tokens the i-th of a run of consecutive sequences has left, `must` the
    index that the block has to include, `budget` the most tokens the block may take. Returns (first,
    last, chunk): sequences first..last each take `chunk` tokens. Among equal totals the block with
    fewer sequences wins: its prompts finish sooner.
    """
    # Lowest avail from `must` outwards, so any block [a, b] around it has min(left[a], right[b]).
    left = list(avail[: must + 1])
    for i in range(must - 1, -1, -1):
        left[i] = min(left[i], left[i + 1])
    right = list(avail[must:])
    for i in range(1, len(right)):
        right[i] = min(right[i], right[i - 1])
    best = (0, must, must, 0)  # (tokens, first, last, chunk)
    for a in range(must, -1, -1):
        for b in range(must, len(avail)):
            n = b - a + 1
            chunk = min(left[a], right[b - must], budget // n)
            if chunk <= 0:
                break  # wider blocks only lower the chunk further
            if n * chunk > best[0]:
                best = (n * chunk, a, b, chunk)
    return best[1], best[2], best[3]

