"""The inference path the routes share: `resolve_model` (the one lookup of a request's model) and
`Inference`, one request's run on a runner (acquire, stream, release; errors as Ollama answers them),
which takes the request as runner/server/request.py parsed it.
/api/generate and /api/chat (generate.py), the /v1 and Anthropic dialects, embeddings, rerank and the
tokenizer routes all go through it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from aiohttp import web

from runner.daemon.runner_client import RunnerError, RunnerRejected
from runner.daemon.scheduler import Lease, Scheduler, ServerBusy
from runner.engine.protocol import CompletionRequest, FinalRecord, Record, SamplingOptions
from runner.model.config import ModelConfig, ModelNotFound, load_model_config
from runner.server.http import ApiError, not_found
from runner.server.models_api import parse_name
from runner.server.request import ModelRequest
from runner.server.security import apply_limits

log = logging.getLogger("lm.generate")  # the name its lines have always had


async def resolve_model(request: web.Request, body: dict, given=None, missing: str | None = None) -> ModelConfig:
    """The model `body` names (or `given`), looked up once per request, and then the request's limits
    (security.apply_limits, which need the model's own num_predict). `body` is the body as the client
    sent it, in its route's dialect: the limits name its fields. 404 says `missing`, else Ollama's words."""
    given = body.get("model") or body.get("name") if given is None else given
    try:
        cfg = await asyncio.to_thread(load_model_config, request.app["store"], parse_name(given))
    except ModelNotFound:
        raise not_found(missing or not_found_message(body)) from None
    apply_limits(request, body, cfg)
    return cfg


def not_found_message(body: dict) -> str:
    """Ollama's words for a missing model, naming it as the client did (`g270`, not `g270:latest`)."""
    return f"model '{body.get('model') or body.get('name')}' not found"


class Inference:
    """One request's run on a runner: acquire, stream, release; errors mapped to Ollama's answers."""

    def __init__(self, request: web.Request, req: ModelRequest):
        self.request, self.cfg, self.options, self.keep_alive = request, req.cfg, req.options, req.keep_alive
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
