"""Ollama's context rules on the daemon's side: the request's `truncate` and `shift`, and chat's
truncation by whole messages.

A chat whose rendered prompt has more tokens than the context loses its oldest messages, never its
system messages nor its newest message (Ollama's server/prompt.go chatPrompt, and routes.go
truncateNativeChatMessages): drop the oldest message, render again with the system messages that were
before it, count the tokens, repeat until it fits or only the newest is left. What still does not fit
is cut token by token in the runner (runner/engine/context_limit.py), or refused there with
`truncate: false`, which also turns this message dropping off (chatPrompt's `truncate` argument).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from runner.model.render import PromptError, chat_prompt
from runner.server.http import bad_request

if TYPE_CHECKING:  # generate.py imports this module
    from runner.server.generate import Prepared
    from runner.server.inference import Inference

# BOS and EOS: a rendered prompt of at most n_ctx - this many bytes fits for sure (a token is never
# shorter than one byte), so it needs no tokenize call to the runner.
_SPECIAL_TOKENS = 2


async def fit_messages(messages: list[dict], n_ctx: int, render: Callable[[list[dict]], str],
                       count_tokens: Callable[[str], Awaitable[int]]) -> list[dict]:
    """The messages whose rendered prompt fits `n_ctx` tokens, by chatPrompt's loop: start at message i
    (0 first), keep the system messages before it, stop at the first that fits; the newest message is
    always kept, whatever its length."""
    last = len(messages) - 1
    for i in range(len(messages)):
        kept = messages if i == 0 else [m for m in messages[:i] if m.get("role") == "system"] + messages[i:]
        if i == last:
            return kept
        text = render(kept)
        if len(text.encode()) + _SPECIAL_TOKENS <= n_ctx or await count_tokens(text) <= n_ctx:
            return kept
    return messages  # no messages


async def prompt_in_context(prep: "Prepared", inf: "Inference") -> str:
    """The prompt of a prepared request for the runner it got: a chat's, after dropping old messages that
    do not fit the runner's context (its num_ctx, as Ollama's optionsForPrompt); any other as prepared."""
    messages = prep.messages
    if not prep.chat or not prep.params.truncate or not messages or len(messages) < 2:
        return prep.prompt

    def render(msgs: list[dict]) -> str:
        if msgs is messages:
            return prep.prompt
        try:
            return chat_prompt(prep.cfg, msgs, tools=prep.tools, think=prep.params.think)
        except PromptError as exc:
            raise bad_request(str(exc)) from None

    async def count_tokens(text: str) -> int:
        return len(await inf.lm.proc.tokenize(text))

    kept = await fit_messages(messages, inf.lm.num_ctx, render, count_tokens)
    return render(kept) if kept is not messages else prep.prompt
