"""The inference path the routes share: a request's model, options and keep_alive read from its body,
and `Inference`, one request's run on a runner (acquire, stream, release; errors as Ollama answers them).
/api/generate and /api/chat (generate.py), the /v1 and Anthropic dialects, embeddings, rerank and the
tokenizer routes all go through it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from aiohttp import web

from modelfiles import OptionError, validate_options

from runner.daemon.runner_client import RunnerError, RunnerRejected
from runner.daemon.scheduler import Lease, Scheduler, ServerBusy
from runner.engine.protocol import CompletionRequest, FinalRecord, Record, SamplingOptions
from runner.model.config import ModelConfig, ModelNotFound, load_model_config
from runner.server.http import ApiError, bad_request, field, not_found
from runner.server.models_api import parse_name
from runner.settings import parse_duration

log = logging.getLogger("lm.generate")  # the name its lines have always had


def keep_alive_of(body: dict) -> float | None:
    if body.get("keep_alive") is None:
        return None
    try:
        return parse_duration(body["keep_alive"])
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def request_options(cfg: ModelConfig, body: dict) -> dict:
    raw = field(body, "options", dict, {})
    try:
        opts, unknown = validate_options(raw)
    except OptionError as exc:
        raise bad_request(str(exc)) from None
    for name in unknown:
        log.warning("invalid option provided: %s", name)
    return {**cfg.parameters, **opts}


async def resolve_model(request: web.Request, body: dict) -> ModelConfig:
    name = parse_name(body.get("model") or body.get("name"))
    try:
        return await asyncio.to_thread(load_model_config, request.app["store"], name)
    except ModelNotFound:
        raise not_found(not_found_message(body)) from None


def not_found_message(body: dict) -> str:
    """Ollama's words for a missing model, naming it as the client did (`g270`, not `g270:latest`)."""
    return f"model '{body.get('model') or body.get('name')}' not found"


class Inference:
    """One request's run on a runner: acquire, stream, release; errors mapped to Ollama's answers."""

    def __init__(self, request: web.Request, cfg: ModelConfig, options: dict, keep_alive: float | None):
        self.request, self.cfg, self.options, self.keep_alive = request, cfg, options, keep_alive
        self.scheduler: Scheduler = request.app["scheduler"]
        self.t0 = time.perf_counter()
        self.load_duration = 0.0
        self.lm: Lease | None = None
        self.failed = False  # set when the runner broke during this request

    async def __aenter__(self) -> "Inference":
        try:
            self.lm = await self.scheduler.acquire(self.cfg, self.options, self.keep_alive)
        except ServerBusy as exc:
            raise ApiError(503, str(exc)) from None
        except RunnerError as exc:
            raise ApiError(500, str(exc)) from None
        # The time spent getting the runner, a load or only the scheduler's wait (never 0, as Ollama's)
        self.load_duration = time.perf_counter() - self.t0
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self.lm is not None:
            self.scheduler.release(self.lm)
            # Waiting for a dead runner's exit is for runner failures (which set `failed`) and the unexpected;
            # an answer the route chose (ApiError: a request the runner refused as bad, say) is not one.
            broke = self.failed or (exc is not None and not isinstance(exc, ApiError))
            await self.scheduler.reap_if_dead(self.lm, failed=broke)
            if self.lm.keep_alive == 0 and self.lm.active == 0:
                await self.scheduler.unload(self.lm.key)

    async def stream(self, prompt: str, context: list[int] | None = None, *, truncate: bool = True,
                     shift: bool = True) -> AsyncIterator[list[Record]]:
        """The runner's records for this request, in lists of those that arrived together (see
        RunnerClient.completion_batches); an ErrorRecord is left for the caller to raise, after the
        pieces before it. RunnerRejected (400) for options the engine cannot honour, as the runner
        itself would answer. `truncate` and `shift`: Ollama's request fields (runner/engine/context_limit.py)."""
        try:
            options = SamplingOptions.from_options(self.options)
        except ValueError as exc:
            raise RunnerRejected(str(exc), 400) from None
        request = CompletionRequest(prompt, options, list(context or []), truncate, shift)
        async for batch in self.lm.proc.completion_batches(request):
            yield batch

    def stats(self, final: FinalRecord) -> dict:
        stats = {
            "total_duration": int((time.perf_counter() - self.t0) * 1e9),
            "load_duration": int(self.load_duration * 1e9),
            "prompt_eval_count": final.prompt_eval_count,
            "prompt_eval_duration": final.prompt_eval_duration,
            "eval_count": final.eval_count,
            "eval_duration": final.eval_duration,
        }
        if final.draft_count is not None:  # only when the request speculated (runner/engine/speculative.py)
            stats.update(draft_count=final.draft_count, draft_accepted_count=final.draft_accepted_count)
        return stats
