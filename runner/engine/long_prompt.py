"""Tokenizing a prompt in a time bounded by the context, however long the text.

The engine keeps at most n_ctx - 1 prompt tokens: the first num_keep and the last ones (Ollama's
truncation, batch.Engine._fit_prompt). A text longer than n_ctx times the longest token of the
vocabulary (in bytes) has more tokens than that for sure, so its middle can never be kept; only its two
ends are tokenized then. Tokenizing all of it would take a time that grows with the text (faster than
linearly with some vocabularies: a 1 MB prompt took minutes on a small test model), for nothing.

Each end is tokenized from twice the bytes it needs, so that the tokens kept lie far from the cut (a
cut can change only the tokens next to it).
"""

from __future__ import annotations

from runner.engine.model import LoadedModel


def tokenize_prompt(model: LoadedModel, text: str, *, n_ctx: int, num_keep: int, add_special: bool,
                    whole_head: bool = True) -> list[int]:
    """The tokens of `text` the engine can keep: all of them when the text might fit the context, else
    the first tokens (when `whole_head`: the request has no earlier `context` whose start is kept instead)
    and the last ones. Holds the GIL only to build the lists (llama_tokenize releases it): run it in a
    thread to keep the event loop free."""
    data = text.encode("utf-8")
    if len(data) <= 2 * n_ctx:  # cheap test first: a token is never shorter than one byte
        return model.tokenize(text, add_special=add_special)
    per_token = model.max_token_bytes()
    window = n_ctx * per_token
    if len(data) <= 3 * window:  # might fit, or nearly: tokenized whole, exactly as it would be anyway
        return model.tokenize(text, add_special=add_special)
    head: list[int] = []
    if whole_head:
        keep = min(max(num_keep, 0), n_ctx // 2) + 1  # and a BOS
        head_text = data[: 2 * keep * per_token].decode("utf-8", errors="ignore")
        head = model.tokenize(head_text, add_special=add_special)[:keep]
    tail_text = data[len(data) - 2 * window:].decode("utf-8", errors="ignore")
    tail = model.tokenize(tail_text, add_special=False)
    return head + tail[-n_ctx:]
