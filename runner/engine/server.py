"""The runner process: one loaded model, served over HTTP on a Unix socket to the daemon.

Routes (internal, not a public API; the messages are runner/engine/protocol.py's, where the keys are
spelled):
  GET  /health      -> {"status": "ok", "slots", "active", "n_ctx", "gpu_layers", ...}
  POST /tokenize    TokenizeRequest -> TokenizeResult
  POST /detokenize  DetokenizeRequest -> DetokenizeResult; 400 for ids not in the vocabulary
  POST /completion  CompletionRequest -> NDJSON: Piece lines, then a FinalRecord or an ErrorRecord
  POST /embed       EmbedRequest -> EmbedResult (raw vectors, not normalised); 400 {"error"} for an input
                    too long, 501 for a model without embeddings
  POST /rerank      RerankRequest -> RerankResult (each pair's first classifier output); 400 for a query
                    too long, 501 for a model that is not a reranker

An embedding model's runner (LaunchConfig.embedding_only) has no generation engine; a generative model's runner
creates its embedding context on the first /embed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import sys

from aiohttp import web

from runner.engine.batch import Engine, Event, Request
from runner.engine.context_limit import fit_prompt
from runner.engine.embed import EmbedEngine, EmbedJob, EmbedUnsupported, InputTooLong, new_embed_engine
from runner.engine.long_prompt import tokenize_prompt
from runner.engine.model import LoadedModel
from runner.engine.protocol import (CompletionRequest, DetokenizeRequest, DetokenizeResult, EmbedRequest, EmbedResult,
                                    ErrorRecord, FinalRecord, Piece, ProtocolError, RerankRequest, RerankResult,
                                    TokenizeRequest, TokenizeResult)
from runner.engine.rerank import pair_tokens
from runner.engine.speculative import DEFAULT_MAX_SEQUENCES


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _answer(message) -> web.Response:
    return web.Response(body=message.to_json(), content_type="application/json")


def _refusal(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _Outbox:
    """One request's events not yet written, and the handler's wake-up when it sleeps on an empty box.

    Lighter than an asyncio.Queue per request (no getter deque, no per-item wake-up): the engine's step
    appends, and the handler takes everything that piled up in one go."""

    __slots__ = ("events", "waiter")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.waiter: asyncio.Future | None = None


class RunnerServer:
    def __init__(self, model: LoadedModel, n_slots: int, *, mixed_prefill: bool, info: dict,
                 embedder: EmbedEngine | None = None, spec_max_sequences: int = DEFAULT_MAX_SEQUENCES,
                 profile_every: int = 0):
        self.model = model
        self.info = info
        self.loop = asyncio.get_running_loop()
        self.outboxes: dict[int, _Outbox] = {}
        self.engine: Engine | None = None
        # An embedding model's runner has only the embedder (made before the server starts).
        self.embedder: EmbedEngine | None = embedder
        self._embed_lock = asyncio.Lock()
        self._embed_error: str | None = None
        if embedder is None:
            self.engine = Engine(model, n_slots, self._on_events_threadsafe, mixed_prefill=mixed_prefill,
                                 on_fatal=self._on_fatal_threadsafe, spec_max_sequences=spec_max_sequences,
                                 profile_every=profile_every)
            self.engine.start()

    # A runner whose engine thread died serves nothing more: it exits (after the error events have gone
    # out) so that the daemon's next request loads the model afresh.
    FATAL_EXIT_DELAY_S = 0.5

    def _on_fatal_threadsafe(self, message: str) -> None:
        print(f"runner: {message}; exiting", file=sys.stderr, flush=True)
        self.loop.call_soon_threadsafe(self.loop.call_later, self.FATAL_EXIT_DELAY_S, os._exit, 70)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.embedder is not None:
            self.embedder.stop()
            self.embedder.close()

    def _on_events_threadsafe(self, events: list[Event]) -> None:
        # One hop to the event loop per engine step, whatever the number of tokens in it.
        self.loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: list[Event]) -> None:
        outboxes = self.outboxes
        for ev in events:
            box = outboxes.get(ev.request.id)
            if box is not None:
                box.events.append(ev)
                if box.waiter is not None and not box.waiter.done():
                    box.waiter.set_result(None)

    async def health(self, _request: web.Request) -> web.Response:
        error = (self.engine.fatal_error if self.engine else None) or (
            self.embedder.fatal_error if self.embedder else None)
        return web.json_response(
            {"status": "error" if error else "ok", "error": error,
             "slots": len(self.engine.slots) if self.engine else 0,
             "active": self.engine.active if self.engine else 0, "embedding_only": self.engine is None,
             **self.info}
        )

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            req = TokenizeRequest.from_json(await request.read())
        except ProtocolError as exc:
            return _refusal(str(exc), 400)
        # Off the event loop, as every tokenizing: a long text must not stall the streams of the others.
        tokens = await asyncio.to_thread(self.model.tokenize, req.content, add_special=req.add_special)
        return _answer(TokenizeResult(tokens))

    async def detokenize(self, request: web.Request) -> web.Response:
        """Token ids back to text, special tokens written out (as llama-server's /detokenize)."""
        try:
            tokens = DetokenizeRequest.from_json(await request.read()).tokens
        except ProtocolError as exc:
            return _refusal(str(exc), 400)
        n_vocab = self.model.n_vocab
        if not all(0 <= t < n_vocab for t in tokens):
            return _refusal(f"tokens must be a list of token ids below {n_vocab}", 400)
        text = b"".join(self.model.piece(t, special=True) for t in tokens).decode("utf-8", errors="replace")
        return _answer(DetokenizeResult(text))

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.engine is None:
            return web.json_response({"error": "this model does not support generate"}, status=400)
        try:
            completion = CompletionRequest.from_json(body)
            opts, context, text = completion.options, completion.context, completion.prompt
            if any(not 0 <= t < self.model.n_vocab for t in context):
                raise ValueError("context holds token ids that are not in this model's vocabulary")
            # Bounded by the context (long_prompt.py), and a long one off the event loop: a huge prompt
            # must not stall the streams of other requests. A continued conversation (`context`) already
            # starts with BOS.
            n_ctx = self.model.cfg.num_ctx
            tokenize = functools.partial(tokenize_prompt, self.model, text, n_ctx=n_ctx, num_keep=opts.num_keep,
                                         add_special=not context, whole_head=not context)
            # A short prompt (at most 2 * n_ctx bytes: no pass over the vocabulary either) is quicker inline.
            prompt = context + (tokenize() if len(text) <= n_ctx // 2 else await asyncio.to_thread(tokenize))
            if not completion.truncate:  # refused before the stream starts, as Ollama's runner does (400)
                fit_prompt(prompt, n_ctx, opts.num_keep, truncate=False)
        except (TypeError, ValueError) as exc:  # ProtocolError and context_limit.PromptTooLong are ValueErrors
            return web.json_response({"error": str(exc)}, status=400)
        req = Request(prompt=prompt, options=opts, truncate=completion.truncate, shift=completion.shift)
        box = self.outboxes[req.id] = _Outbox()
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        self.engine.submit(req)
        try:
            done = False
            while not done:
                if not box.events:
                    box.waiter = self.loop.create_future()
                    await box.waiter
                    box.waiter = None
                events, box.events = box.events, []
                lines = []  # whatever piled up since the last write goes out in one write
                for ev in events:
                    if ev.error:
                        lines.append(ErrorRecord(ev.error).to_json() + b"\n")
                    else:
                        if ev.text or ev.logprobs:
                            lines.append(Piece(ev.text, ev.logprobs).to_json() + b"\n")
                        if ev.done:
                            lines.append(self._final(req, ev).to_json() + b"\n")
                    if ev.done:
                        done = True
                        break
                await resp.write(b"".join(lines))
        finally:
            # Reached on normal completion and when the daemon hangs up (handler cancelled).
            self.outboxes.pop(req.id, None)
            if not req.t_done:
                self.engine.cancel(req)
        await resp.write_eof()
        return resp

    @staticmethod
    def _final(req: Request, ev: Event) -> FinalRecord:
        final = FinalRecord(ev.done_reason, req.prompt_eval_count, _ns(req.prompt_eval_duration), req.eval_count,
                            _ns(req.eval_duration), req.context)
        if req.speculative:  # only requests that asked for it carry the draft counts
            final.draft_count, final.draft_accepted_count = req.draft_count, req.draft_accepted_count
        return final

    async def _embedder(self) -> EmbedEngine:
        async with self._embed_lock:
            if self.embedder is None:
                if self._embed_error:
                    raise EmbedUnsupported(self._embed_error)
                try:
                    self.embedder = await asyncio.to_thread(new_embed_engine, self.model)
                except EmbedUnsupported as exc:
                    self._embed_error = str(exc)  # for good: the model cannot embed
                    raise
            return self.embedder

    async def embed(self, request: web.Request) -> web.Response:
        try:
            req = EmbedRequest.from_json(await request.read())
        except ProtocolError as exc:
            return _refusal(str(exc), 400)
        inputs, truncate = req.input, req.truncate
        n_vocab = self.model.n_vocab

        def valid(x) -> bool:  # a text, or token ids of this vocabulary (OpenAI's token-array inputs)
            return isinstance(x, str) or (isinstance(x, list) and all(type(t) is int and 0 <= t < n_vocab for t in x))

        if not all(valid(x) for x in inputs):
            return _refusal("invalid input type", 400)
        try:
            embedder = await self._embedder()
        except EmbedUnsupported as exc:
            return web.json_response({"error": str(exc)}, status=501)
        except RuntimeError as exc:  # no memory for the context, say: the next request tries again
            return web.json_response({"error": str(exc)}, status=500)
        if embedder.rank:  # a reranker's output is a score, not an embedding
            return web.json_response({"error": "this model does not support embeddings"}, status=501)
        # Tokenizing is quick but not free: a big request is done off the event loop.
        work = lambda: [embedder.prepare(self.model.tokenize(x) if isinstance(x, str) else x, truncate)  # noqa: E731
                        for x in inputs]
        try:
            tokens = work() if sum(map(len, inputs)) < 8192 else await asyncio.to_thread(work)
        except InputTooLong as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if any(not t for t in tokens):
            return web.json_response({"error": "Input content cannot be empty"}, status=400)
        job = await self._run(embedder, tokens)
        if job.error:
            status = 501 if "does not support" in job.error else 500
            return web.json_response({"error": job.error}, status=status)
        vectors = base64.b64encode(job.vectors.astype("<f4").tobytes()).decode()
        return _answer(EmbedResult(int(job.vectors.shape[1]), vectors, [len(t) for t in tokens],
                                   _ns(job.t_done - job.t_submit)))

    async def rerank(self, request: web.Request) -> web.Response:
        try:
            req = RerankRequest.from_json(await request.read())
        except ProtocolError as exc:
            return _refusal(str(exc), 400)
        query, documents, truncate = req.query, req.documents, req.truncate
        if not documents:
            return _refusal("rerank needs a query and a non-empty list of documents", 400)
        embedder = self.embedder  # a reranker's runner makes it at start; a generative model has none
        if embedder is None or not embedder.rank:
            return web.json_response({"error": "this model does not support rerank"}, status=501)
        work = lambda: pair_tokens(self.model, query, documents, embedder.max_tokens, truncate)  # noqa: E731
        try:
            big = len(query) + sum(map(len, documents)) >= 8192
            tokens = await asyncio.to_thread(work) if big else work()  # a big request off the event loop
        except InputTooLong as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if any(not t for t in tokens):  # a model with no special tokens, and texts of no tokens
            return web.json_response({"error": "Input content cannot be empty"}, status=400)
        job = await self._run(embedder, tokens)
        if job.error:
            return web.json_response({"error": job.error}, status=500)
        return _answer(RerankResult([float(v) for v in job.vectors[:, 0]], [len(t) for t in tokens],
                                    _ns(job.t_done - job.t_submit)))

    async def _run(self, embedder: EmbedEngine, tokens: list[list[int]]) -> EmbedJob:
        """One job through the embedding engine, awaited; cancelled with the request."""
        future = self.loop.create_future()

        def done(job: EmbedJob) -> None:
            self.loop.call_soon_threadsafe(lambda: future.done() or future.set_result(job))

        job = EmbedJob(tokens, done)
        embedder.submit(job)
        try:
            await future
        except asyncio.CancelledError:  # the daemon hung up: the rest of this job is not worth computing
            job.cancelled = True
            raise
        return job

    def routes(self) -> list:
        return [
            web.get("/health", self.health),
            web.post("/tokenize", self.tokenize),
            web.post("/detokenize", self.detokenize),
            web.post("/completion", self.completion),
            web.post("/embed", self.embed),
            web.post("/rerank", self.rerank),
        ]
