"""Inference routes: /api/generate, /api/chat, /api/ps."""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator

from aiohttp import web

from runner.model.output import ChatOutputParser, Delta
from runner.daemon.placement import processor_label
from runner.model.config import ModelConfig
from runner.model.render import PromptError, chat_prompt
from runner.daemon.runner_client import RunnerError, RunnerRejected
from runner.engine.protocol import FinalRecord, Piece
from runner.daemon.scheduler import ResidentModel, placement_devices
from runner.server import metrics
from runner.server.inference import Inference, resolve_model
from runner.server.request import CompletionParams, completion_params, logprobs_of
from runner.server.chat_truncation import prompt_in_context
from runner.server.http import ApiError, NDJSONStream, bad_request, dumps, field, read_json
from runner.server.models_api import model_details

log = logging.getLogger("lm.generate")


_iso_second = [-1, ""]  # the last whole second formatted, and its text: formatting is per streamed chunk


def now_iso() -> str:
    """UTC now as Ollama writes created_at (RFC 3339, microseconds unless zero), cheaply: the part up to
    the seconds is formatted once a second."""
    t = time.time()
    sec = int(t)
    us = round((t - sec) * 1e6)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    if _iso_second[0] != sec:
        _iso_second[0], _iso_second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_iso_second[1]}.{us:06d}Z" if us else f"{_iso_second[1]}Z"


@dataclass
class Prepared:
    """A parsed /api/generate or /api/chat request with its prompt rendered, ready to run: see `chunks`."""

    request: web.Request
    params: CompletionParams
    prompt: str
    context: list[int] | None = None
    tools: list | None = None
    messages: list | None = None  # a chat's, for dropping old ones that do not fit (chat_truncation.py)

    @property
    def cfg(self) -> ModelConfig:
        return self.params.cfg

    @property
    def chat(self) -> bool:
        return self.params.chat


@dataclass
class LoadOnly:
    """A request with nothing to complete (no prompt, no messages): Ollama's /api/generate and /api/chat
    then only load the model, or unload it with keep_alive 0 (`load_only`). The other dialects have no
    such request and answer it as their own 400."""

    request: web.Request
    params: CompletionParams


async def load_only(prep: LoadOnly) -> dict:
    """Loads (or, with keep_alive 0, unloads) the model; the answer Ollama gives for it."""
    params = prep.params
    base = {"model": params.model, "created_at": now_iso()}
    if params.keep_alive == 0:
        await prep.request.app["scheduler"].unload(params.cfg.key)
        reason = "unload"
    else:
        async with Inference(prep.request, params):
            pass
        reason = "load"
    payload = {"message": {"role": "assistant", "content": ""}} if params.chat else {"response": ""}
    return {**base, **payload, "done": True, "done_reason": reason}


def _require(cfg: ModelConfig, capability: str) -> None:
    """Ollama's capability check for what a request asks beyond completion (tools, a suffix to insert)."""
    if capability not in cfg.capabilities:
        raise bad_request(f"{cfg.stored.name} does not support {capability}")  # Ollama names the model in full here


async def prepare_generate(request: web.Request, body: dict, cfg: ModelConfig | None = None) -> Prepared | LoadOnly:
    """/api/generate's body parsed once and its prompt rendered; the model lookup is its only I/O (`cfg`:
    a dialect translated into this body resolved it, and applied the limits, from its own body)."""
    logprobs = logprobs_of(body)
    cfg = cfg or await resolve_model(request, body)
    if "completion" not in cfg.capabilities:
        raise bad_request(f"\"{cfg.display}\" does not support generate")
    prompt = field(body, "prompt", str, "")
    suffix = field(body, "suffix", str)
    context = field(body, "context", list)
    system, template = field(body, "system", str), field(body, "template", str)
    raw = field(body, "raw", bool, False)
    if raw and (template or system or context):
        raise bad_request("raw mode does not support template, system, or context")
    params = completion_params(cfg, body, chat=False, logprobs=logprobs)
    if suffix:
        _require(cfg, "insert")
    if not prompt and not suffix and not context:
        return LoadOnly(request, params)
    try:
        # Raw: the prompt as given, no template. Otherwise one user turn through the chat template,
        # which also sees .Think (as Ollama's generate gives it).
        text = prompt if raw else chat_prompt(cfg, [{"role": "user", "content": prompt}], template=template,
                                              system=system, suffix=suffix, think=params.think)
    except PromptError as exc:
        raise bad_request(str(exc)) from None
    if context and not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise bad_request("context must be a list of token ids")
    return Prepared(request, params, text, context=context)


def _check_messages(messages: list) -> list[dict]:
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request("invalid message: each message needs a role")
        if m.get("content") is not None and not isinstance(m["content"], str):
            raise bad_request("invalid message content: expected a string")
    return messages


async def prepare_chat(request: web.Request, body: dict, cfg: ModelConfig | None = None) -> Prepared | LoadOnly:
    """/api/chat's body parsed once and its prompt rendered; the model lookup is its only I/O (`cfg`: as
    for `prepare_generate`)."""
    logprobs = logprobs_of(body)
    cfg = cfg or await resolve_model(request, body)
    if "completion" not in cfg.capabilities:
        raise bad_request(f"\"{cfg.display}\" does not support chat")
    messages = _check_messages(field(body, "messages", list, []))
    tools = field(body, "tools", list)
    params = completion_params(cfg, body, chat=True, logprobs=logprobs)
    if tools:
        _require(cfg, "tools")
    if not messages:
        return LoadOnly(request, params)
    try:
        text = chat_prompt(cfg, messages, tools=tools, think=params.think)
    except PromptError as exc:
        raise bad_request(str(exc)) from None
    return Prepared(request, params, text, tools=tools, messages=messages)


async def prepare_turns(request: web.Request, body: dict, param: str, cfg: ModelConfig) -> Prepared:
    """`prepare_chat` for the dialects translated into it (/v1/chat/completions, /v1/responses,
    /v1/messages): they have no load-only request, so no messages is the client's mistake, a 400 that
    names the dialect's field `param` (before anything is loaded)."""
    prep = await prepare_chat(request, body, cfg)
    if isinstance(prep, LoadOnly):
        raise bad_request(f"{param} must not be empty", param)
    return prep


async def chunks(prep: Prepared) -> AsyncIterator[dict]:
    """The answer as Ollama's stream objects: pieces with `done: false`, then the final one with stats.

    Errors before the first piece raise ApiError; a runner that dies mid-answer ends the stream with
    an `{"error": ...}` object, as Ollama's streams do.
    """
    async with aclosing(chunk_batches(prep)) as batches:
        async for batch in batches:
            for obj in batch:
                yield obj


async def chunk_batches(prep: Prepared) -> AsyncIterator[list[dict]]:
    """`chunks`, in lists: the objects made from runner output that arrived together (one list per
    engine step when we keep up, several steps' worth when we fall behind), so that a stream costs one
    pass and one write per list rather than per token. Every object is the same as `chunks` gives."""
    params, cfg = prep.params, prep.cfg
    grammar, model = params.grammar, params.model
    # Thinking and tool calls are split out of the text here, so every API built on `chunks` gets them.
    # Generate parses with the model's template even when the request brings its own, as Ollama does.
    # A grammar makes the whole answer JSON, so no think block can be in it (even where the prompt opened
    # one); Ollama instead lets the model think unconstrained first, then restarts with the grammar.
    parser = ChatOutputParser(cfg.template, tools=prep.tools if prep.chat else None,
                              think=None if grammar else params.think, prompt=prep.prompt)
    plain = parser.passthrough  # no thinking, no tools: every piece is content as it comes

    def chunk(delta: Delta, created_at: str) -> dict:
        if prep.chat:
            message = {"role": "assistant", "content": delta.content}
            if delta.thinking:
                message["thinking"] = delta.thinking
            if delta.tool_calls:
                message["tool_calls"] = delta.tool_calls
            return {"model": model, "created_at": created_at, "message": message, "done": False}
        out = {"model": model, "created_at": created_at, "response": delta.content}
        if delta.thinking:
            out["thinking"] = delta.thinking
        return {**out, "done": False}

    def content_chunk(text: str, created_at: str) -> dict:  # chunk(Delta(text)), without the Delta
        if prep.chat:
            return {"model": model, "created_at": created_at, "message": {"role": "assistant", "content": text},
                    "done": False}
        return {"model": model, "created_at": created_at, "response": text, "done": False}

    started = False
    first_token_at = None
    async with Inference(prep.request, params) as inf:
        try:
            final = None
            prompt = await prompt_in_context(prep, inf)
            async with aclosing(inf.stream(prompt, prep.context, truncate=params.truncate,
                                           shift=params.shift)) as batches:
                async for batch in batches:
                    out: list[dict] = []
                    created_at = now_iso()  # one stamp per batch: its chunks go out together
                    for record in batch:
                        if type(record) is not Piece:
                            if type(record) is FinalRecord:
                                final = record
                                continue
                            if out:
                                started = True
                                yield out
                            raise RunnerError(record.error)
                        first_token_at = first_token_at or time.perf_counter()
                        # Logprobs go out as they come, even while the parser holds their text back
                        # (as Ollama's routes do), so that none is lost.
                        logprobs = record.logprobs
                        if plain:
                            if (text := record.content) or logprobs:
                                out.append(content_chunk(text, created_at))
                        elif (delta := parser.feed(record.content)) or logprobs:  # empty while held back
                            out.append(chunk(delta, created_at))
                        if logprobs:
                            out[-1]["logprobs"] = logprobs
                    if out:
                        started = True
                        yield out
        except RunnerRejected as exc:  # the request's fault (say, token ids beyond the vocabulary)
            raise ApiError(exc.status, str(exc)) from None
        except RunnerError as exc:
            inf.failed = True
            if started:
                yield [{"error": str(exc)}]
                return
            raise ApiError(500, str(exc)) from None
    metrics.observe_completion(cfg.display, final.prompt_eval_count, final.eval_count,
                               first_token_at - inf.t0 if first_token_at else None, final.eval_duration / 1e9)
    metrics.observe_drafts(cfg.display, final.draft_count, final.draft_accepted_count)
    if final.draft_count is not None and inf.lm is not None:  # for /api/ps
        inf.lm.model.draft_count += final.draft_count
        inf.lm.model.draft_accepted_count += final.draft_accepted_count or 0
    last = chunk(parser.finish(), now_iso())
    last.update(done=True, done_reason=final.done_reason or "stop", **inf.stats(final))
    if not prep.chat:
        last["context"] = final.context
    yield [last]


@dataclass
class ChatAnswer:
    text: str
    tool_calls: list
    final: dict  # the last chunk, with done_reason and the counts
    error: str | None  # the runner failed mid-answer (the text so far is kept)
    thinking: str = ""


async def gather_chat(prep: Prepared, on_text=None, on_thinking=None) -> ChatAnswer:
    """A whole chat answer for the routes that reshape it (Anthropic, Responses): each piece of text,
    and of thinking, is handed to `on_text` / `on_thinking` (async callbacks, for streaming) as it comes."""
    text, thinking, calls, final = [], [], [], {}
    async with aclosing(chunks(prep)) as pieces:
        async for obj in pieces:
            if "error" in obj:
                return ChatAnswer("".join(text), calls, final, obj["error"], "".join(thinking))
            msg = obj.get("message", {})
            if obj.get("done"):
                final = obj
            if thought := msg.get("thinking"):
                thinking.append(thought)
                if on_thinking:
                    await on_thinking(thought)
            if content := msg.get("content"):
                text.append(content)
                if on_text:
                    await on_text(content)
            calls += msg.get("tool_calls") or []
    return ChatAnswer("".join(text), calls, final, None, "".join(thinking))


async def respond(prep: Prepared | LoadOnly) -> web.StreamResponse:
    """Writes `chunks` as NDJSON (stream, the default) or as one merged object."""
    if isinstance(prep, LoadOnly):
        return web.json_response(await load_only(prep))
    # aclosing: a client that hangs up cancels us mid-loop, and the generator must then release its
    # runner request at once (not when garbage-collected), which cancels the sequence in the engine.
    if prep.params.stream:
        out = NDJSONStream(prep.request)
        async with aclosing(chunk_batches(prep)) as stream:
            async for batch in stream:
                await out.send(*batch)  # one write per batch
        return await out.finish()
    # Merged as Ollama merges: text and thinking joined, tool calls gathered, the last chunk's stats.
    key = "content" if prep.chat else "response"
    pieces: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict] = []
    logprobs: list[dict] = []
    last: dict = {}
    async with aclosing(chunks(prep)) as stream:
        async for obj in stream:
            if "error" in obj:
                raise ApiError(500, obj["error"])
            out = obj["message"] if prep.chat else obj
            pieces.append(out[key])
            thinking.append(out.get("thinking", ""))
            tool_calls.extend(out.get("tool_calls", []))
            logprobs.extend(obj.get("logprobs", []))
            last = obj
    out = last["message"] if prep.chat else last
    out[key] = "".join(pieces)
    if any(thinking):
        out["thinking"] = "".join(thinking)
    if tool_calls:
        out["tool_calls"] = tool_calls
    if logprobs:
        last["logprobs"] = logprobs
    return web.Response(body=dumps(last), content_type="application/json")


async def generate(request: web.Request) -> web.StreamResponse:
    return await respond(await prepare_generate(request, await read_json(request)))


async def chat(request: web.Request) -> web.StreamResponse:
    return await respond(await prepare_chat(request, await read_json(request)))


def _expires(lm: ResidentModel) -> str:
    if lm.expires_at == float("inf"):
        return "2318-01-01T00:00:00Z" if lm.keep_alive < 0 or lm.active else now_iso()
    return datetime.fromtimestamp(lm.expires_at, timezone.utc).isoformat().replace("+00:00", "Z")


async def ps(request: web.Request) -> web.Response:
    store = request.app["store"]
    models = []
    for lm in request.app["scheduler"].loaded.values():
        p = lm.placement
        # all replicas together (LM_REPLICAS: a copy per GPU), as the memory they take
        size, size_vram = sum(r.placement.size for r in lm.replicas), sum(r.placement.size_vram for r in lm.replicas)
        models.append({
            "name": lm.config.display, "model": lm.config.display, "size": size, "digest": lm.config.digest,
            "details": model_details(store, lm.config.stored), "expires_at": _expires(lm), "size_vram": size_vram,
            "context_length": lm.num_ctx, "processor": processor_label(size, size_vram),
            # Beyond Ollama's fields: where the GPU share lies, and what the KV cache costs
            "gpus": placement_devices(p),
            "kv_cache": {"type": p.kv_type, "slots": p.parallel, "bytes_per_slot": p.kv_bytes_per_slot},
        })
        if len(lm.replicas) > 1:  # LM_REPLICAS: a copy per GPU, each with its own slots
            models[-1]["replicas"] = [{"gpus": placement_devices(r.placement), "slots": r.placement.parallel,
                                       "active": r.active} for r in lm.replicas]
        if lm.draft_count:  # speculative decoding served some of its requests
            models[-1]["speculative"] = {"draft_count": lm.draft_count,
                                         "draft_accepted_count": lm.draft_accepted_count}
    return web.json_response({"models": models})


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/api/generate", generate)
    app.router.add_route("POST", "/api/chat", chat)
    app.router.add_get("/api/ps", ps)
