"""Log-probabilities of sampled tokens, for the `logprobs` / `top_logprobs` request fields.

They are read from the step's raw logits, as llama-server (and so Ollama, which runs it) reports them:
the model's own distribution over the whole vocabulary at temperature 1, before the sampler chain's
penalties, top_k or top_p shape it. Only requests that ask pay for it (one pass over the vocabulary
per token, in numpy).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _entry(piece: bytes, logprob: float) -> dict:
    # Ollama's TokenLogprob: the token's text, its logprob, and its bytes (omitted when empty). The bytes
    # are the token's own, so a character split over several tokens still adds up.
    entry = {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob}
    if piece:
        entry["bytes"] = list(piece)
    return entry


def token_logprob(logits, n_vocab: int, token: int, top_n: int, piece: Callable[[int], bytes]) -> dict:
    """The entry for `token` sampled from one output row (`logits`: a float* of n_vocab values), with
    the `top_n` most likely tokens of that row, most likely first."""
    row = np.ctypeslib.as_array(logits, shape=(n_vocab,))
    peak = float(row.max())
    log_total = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
    entry = _entry(piece(token), float(row[token]) - log_total)
    if top_n > 0:
        top_n = min(top_n, n_vocab)
        best = np.argpartition(row, n_vocab - top_n)[n_vocab - top_n:]
        best = best[np.argsort(-row[best], kind="stable")]
        entry["top_logprobs"] = [_entry(piece(int(t)), float(row[t]) - log_total) for t in best]
    return entry
