"""A request's body read once into typed values: which model, with which options, kept loaded how long,
and (for /api/generate and /api/chat) how the answer is shaped. Pure: the model is resolved before these
are built (runner/server/inference.py `resolve_model`), and nothing here does I/O. Every later step
(generate.py's `chunks`, inference.py's `Inference`, the scheduler) takes these values, not the body."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from modelfiles import OptionError, validate_options
from modelfiles.gotemplate import go_quote

from runner.model.config import ModelConfig
from runner.model.thinking import THINK_LEVELS, think_enabled
from runner.server.grammar import grammar_for_format
from runner.server.http import bad_request, field
from runner.settings import parse_duration

log = logging.getLogger("lm.generate")  # the name its warnings have always had

MAX_TOP_LOGPROBS = 20  # Ollama's bound (server/routes.go)


def keep_alive_of(body: dict) -> float | None:
    """The request's keep_alive in seconds (None: the model's or the daemon's default)."""
    if body.get("keep_alive") is None:
        return None
    try:
        return parse_duration(body["keep_alive"])
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def request_options(cfg: ModelConfig, body: dict) -> dict:
    """The model's parameters with the request's `options` over them, validated (unknown names are
    warned about and dropped, as Ollama does)."""
    raw = field(body, "options", dict, {})
    try:
        opts, unknown = validate_options(raw)
    except OptionError as exc:
        raise bad_request(str(exc)) from None
    for name in unknown:
        log.warning("invalid option provided: %s", name)
    return {**cfg.parameters, **opts}


@dataclass(frozen=True)
class ModelRequest:
    """What every route that runs a model asks of the scheduler: the model, its options, its keep_alive."""

    model: str | None  # the model as the client named it, echoed in the answers
    cfg: ModelConfig
    options: dict  # the model's parameters under the request's options, validated once
    keep_alive: float | None


def model_request(cfg: ModelConfig, body: dict) -> ModelRequest:
    return ModelRequest(body.get("model"), cfg, request_options(cfg, body), keep_alive_of(body))


@dataclass(frozen=True)
class CompletionParams(ModelRequest):
    """/api/generate or /api/chat (and the dialects translated into them), parsed: `options` also carries
    the grammar (from `format`) and logprobs the engine samples with, read back by the properties."""

    chat: bool = True  # /api/chat's shape (messages, answers with `message`), else /api/generate's
    stream: bool = True
    think: bool | str | None = None  # after Ollama's defaulting (see `think_of`)
    # Ollama's context rules (api/types.go Truncate/Shift, *bool, unset means true): see chat_truncation.py
    truncate: bool = True
    shift: bool = True

    @property
    def grammar(self) -> str | None:
        return self.options.get("grammar")

    @property
    def logprobs(self) -> bool:
        return self.options.get("logprobs", False)

    @property
    def top_logprobs(self) -> int:
        return self.options.get("top_logprobs", 0)


def logprobs_of(body: dict) -> tuple[bool, int]:
    """Ollama's `logprobs` / `top_logprobs` request fields, checked as its routes check them."""
    logprobs = field(body, "logprobs", bool, False)
    top = field(body, "top_logprobs", int, 0)
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    return logprobs, top if logprobs else 0


def think_of(body: dict, cfg: ModelConfig) -> bool | str | None:
    """The request's think, checked as Ollama's ThinkValue is; a thinking model thinks unless told not to."""
    value = body.get("think")
    if isinstance(value, str) and value not in THINK_LEVELS:
        raise bad_request(f'invalid think value: {go_quote(value)} (must be "high", "medium", "low", "max", true, '
                          'or false)')
    if value is not None and not isinstance(value, (bool, str)):
        raise bad_request('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')
    if "thinking" in cfg.capabilities:
        return True if value is None else value
    if think_enabled(value):
        raise bad_request(f"{go_quote(str(body.get('model') or body.get('name')))} does not support thinking")
    return value


def completion_params(cfg: ModelConfig, body: dict, *, chat: bool,
                      logprobs: tuple[bool, int] | None = None) -> CompletionParams:
    """The typed request of a generate or chat body whose model is `cfg` (`logprobs`: when the caller
    checked them already, before resolving the model, as Ollama orders its errors)."""
    logprobs, top = logprobs if logprobs is not None else logprobs_of(body)
    think = think_of(body, cfg)
    stream = field(body, "stream", bool, True)
    options = request_options(cfg, body)
    grammar = grammar_for_format(body.get("format"))
    if grammar:
        options["grammar"] = grammar
    if logprobs:
        options.update(logprobs=True, top_logprobs=top)
    return CompletionParams(body.get("model"), cfg, options, keep_alive_of(body), chat=chat, stream=stream,
                            think=think, truncate=field(body, "truncate", bool, True),
                            shift=field(body, "shift", bool, True))
