"""What the engine does when a sequence does not fit its context: Ollama's `truncate` and `shift`.

Both are request fields of Ollama's /api/generate and /api/chat (api/types.go GenerateRequest and
ChatRequest: Truncate and Shift, *bool, unset meaning true), passed to its runner as CompletionRequest's
Truncate and Shift (server/routes.go: `req.Truncate == nil || *req.Truncate`).

- A prompt longer than the context: with truncate, the first num_keep tokens stay and the oldest after
  them go (Ollama's runner, NewSequence in runner/ollamarunner/runner.go, before llama-server replaced
  it); without, the request fails with 400 "the input length exceeds the context length" (its
  errorInputTooLong; the same words in llm/llama_server.go normalizeEmbeddingError today).
- A sequence that reaches the end of the context while generating: with shift, half of what follows
  num_keep is dropped and generation goes on (ShiftCacheSlot); without, it stops there with
  done_reason "length" (`if !seq.shift { s.removeSequence(seqIdx, llm.DoneReasonLength) }`).

Chat's truncation by whole messages happens before, in the daemon (runner/server/chat_truncation.py);
this is the token-level rule for what still does not fit.
"""

from __future__ import annotations

INPUT_TOO_LONG = "the input length exceeds the context length"  # Ollama's errorInputTooLong


class PromptTooLong(ValueError):
    """A prompt longer than the context, with truncate off (HTTP 400)."""


def fit_prompt(prompt: list[int], n_ctx: int, num_keep: int, truncate: bool = True) -> list[int]:
    """The prompt tokens a sequence of an n_ctx context keeps: all of them when they fit (at most
    n_ctx - 1, leaving room for one generated token); else, with truncate, the first num_keep (at most
    half the room) and the newest; without, PromptTooLong."""
    limit = n_ctx - 1
    if len(prompt) <= limit:
        return prompt
    if not truncate:
        raise PromptTooLong(INPUT_TOO_LONG)
    keep = min(max(num_keep, 0), limit // 2)
    return prompt[:keep] + prompt[len(prompt) - (limit - keep):]


def context_full(cached: int, n_ctx: int) -> bool:
    """Whether a sequence holding `cached` tokens has no cell left for the next one."""
    return cached + 1 >= n_ctx


def shifts(can_shift: bool, shift: bool) -> bool:
    """At a full context: shift (drop old tokens, go on) or stop with done_reason "length". Only where
    the request allows it and the KV cache can move its cells (llama_memory_can_shift; Ollama's
    supportsContextShift likewise turns it off for models that cannot)."""
    return can_shift and shift
