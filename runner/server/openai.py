"""OpenAI-compatible API (/v1): requests translated to the native routes' internals and back.

Chat and completions run through the same `prepare_*` + `chunks` path as /api/chat and
/api/generate, so templates, tools, grammars and scheduling behave identically.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from contextlib import aclosing

from aiohttp import web

from runner.server import embed as native_embed
from runner.server.generate import LoadOnly, chunks, load_only, prepare_generate, prepare_turns
from runner.server.inference import resolve_model
from runner.server.request import model_request
from runner.server.errors import answer_errors
from runner.server.http import ApiError, bad_request, dumps, read_json, translating
from runner.server.models_api import parse_name
from runner.server.reasoning import ReasoningError, openai_effort, think_from_effort


# Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} (runner/server/errors.py).
openai_errors = answer_errors



async def read_request(request: web.Request) -> tuple[dict, str]:
    """The JSON body of a /v1 request and the model it names (400 in OpenAI's shape without one)."""
    body = await read_json(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required", "model")
    return body, model


def _options(body: dict) -> dict:
    """OpenAI sampling fields as Ollama options (only those given)."""
    opts: dict = {}
    mapping = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
               "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
    for src, dst in mapping.items():
        if body.get(src) is not None:
            opts[dst] = body[src]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise bad_request("max_tokens must be a positive integer", "max_tokens")
        opts["num_predict"] = limit
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request("stop must be a string or a list of strings", "stop")
        opts["stop"] = stop
    n = body.get("n", 1)
    if n != 1:
        raise bad_request("only n=1 is supported", "n")
    return opts


def _format(body: dict):
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise bad_request("response_format must be an object", "response_format")
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be an object", "response_format")
        return schema
    raise bad_request(f"invalid response_format type {kind!r}", "response_format")


def _text_content(content) -> str:
    """Message content: a string, or a list of parts of which the text ones are joined."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text", "output_text"):
                raise bad_request("only text content parts are supported", "messages")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise bad_request("message content must be a string or a list of parts", "messages")


def _messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    names_by_call: dict[str, str] = {}
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request("each message needs a role", "messages")
        role = "system" if m["role"] == "developer" else m["role"]
        msg = {"role": role, "content": _text_content(m.get("content"))}
        if isinstance(thought := m.get("reasoning", m.get("reasoning_content")), str) and thought:
            msg["thinking"] = thought  # an earlier answer's reasoning, given back (Ollama's field)
        calls = []
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            args = fn.get("arguments") or "{}"
            try:
                args = json.loads(args) if isinstance(args, str) else args
            except json.JSONDecodeError:
                raise bad_request("tool call arguments must be JSON", "messages") from None
            names_by_call[call.get("id", "")] = fn.get("name", "")
            calls.append({"function": {"name": fn.get("name", ""), "arguments": args}})
        if calls:
            msg["tool_calls"] = calls
        if role == "tool":
            msg["tool_name"] = m.get("name") or names_by_call.get(m.get("tool_call_id", ""), "")
        out.append(msg)
    return out


def _logprob_fields(body: dict) -> dict:
    """OpenAI's logprobs request fields as the native ones: chat's `logprobs` (bool) with `top_logprobs`,
    completions' `logprobs` (an int: how many alternatives, 0 for the sampled token's alone)."""
    value = body.get("logprobs")
    if isinstance(value, int) and not isinstance(value, bool):
        return {"logprobs": True, "top_logprobs": value}
    return {k: body[k] for k in ("logprobs", "top_logprobs") if body.get(k) is not None}


def _choice_logprobs(entries: list[dict] | None) -> dict | None:
    """A choice's `logprobs` in the shape Ollama's /v1 gives for chat and completions alike."""
    return {"content": entries} if entries else None


def _tool_calls(calls: list[dict], start: int = 0) -> list[dict]:
    return [{"index": start + i, "id": f"call_{secrets.token_hex(8)}", "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"].get("arguments", {}), ensure_ascii=False)}}
            for i, c in enumerate(calls)]


def _finish_reason(final: dict, had_tool_calls: bool) -> str:
    if had_tool_calls:
        return "tool_calls"
    return "length" if final.get("done_reason") == "length" else "stop"


def _usage(final: dict) -> dict:
    p, c = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class _SSE:
    def __init__(self, request: web.Request):
        self.request = request
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

    async def send(self, obj) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write(b"data: " + dumps(obj) + b"\n\n")

    async def done(self) -> web.StreamResponse:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
        return self.response


@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body, model = await read_request(request)
    cfg = await resolve_model(request, body)  # and the limits, which may fill in max_tokens
    with translating("chat completion"):
        native = {"model": model, "messages": _messages(body.get("messages")), "options": _options(body),
                  "stream": True, **_logprob_fields(body)}
        if (fmt := _format(body)) is not None:
            native["format"] = fmt
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":
            native["tools"] = tools
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        try:
            if (think := think_from_effort(openai_effort(body))) is not None:
                native["think"] = think
        except ReasoningError as exc:
            raise bad_request(str(exc), "reasoning_effort") from None
    prep = await prepare_turns(request, native, "messages", cfg)
    cid, created = f"chatcmpl-{secrets.token_hex(6)}", int(time.time())
    base = {"id": cid, "created": created, "model": model, "system_fingerprint": "fp_lm"}
    stream = bool(body.get("stream"))
    content, reasoning, calls, logprobs, final = [], [], [], [], {}
    sse = _SSE(request) if stream else None
    first = True

    async def send_delta(delta: dict, logprobs: list | None = None) -> None:
        nonlocal first
        delta = {"role": "assistant", **delta} if first else delta
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        if logprobs:
            choice["logprobs"] = _choice_logprobs(logprobs)
        await sse.send({**base, "object": "chat.completion.chunk", "choices": [choice]})
        first = False

    async with aclosing(chunks(prep)) as pieces:
        async for obj in pieces:
            if "error" in obj:
                if sse:
                    await sse.send({"error": {"message": obj["error"], "type": "api_error", "param": None,
                                              "code": None}})
                    return await sse.done()
                raise ApiError(500, obj["error"])
            msg = obj.get("message", {})
            new_calls = msg.get("tool_calls") or []
            if obj.get("done"):
                final = obj
            thought, entries = msg.get("thinking"), obj.get("logprobs")
            if sse and thought:  # reasoning in a chunk of its own, before any content of the same piece (Ollama's)
                await send_delta({"content": "", "reasoning": thought}, entries)
                entries = None  # sent with the reasoning, as Ollama's split keeps them on its first chunk
            if sse and (msg.get("content") or new_calls or entries or (first and not thought)):
                delta = {"content": msg.get("content", "")}
                if new_calls:
                    delta["tool_calls"] = _tool_calls(new_calls, len(calls))
                await send_delta(delta, entries)
            reasoning.append(thought or "")
            content.append(msg.get("content", ""))
            calls += new_calls
            logprobs += obj.get("logprobs") or []
    reason = _finish_reason(final, bool(calls))
    if sse:
        await sse.send({**base, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
        if include_usage:
            await sse.send({**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(final)})
        return await sse.done()
    message = {"role": "assistant", "content": "".join(content)}
    if any(reasoning):
        message["reasoning"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = _tool_calls(calls)
    return web.json_response({**base, "object": "chat.completion", "usage": _usage(final),
                              "choices": [{"index": 0, "message": message, "finish_reason": reason,
                                           "logprobs": _choice_logprobs(logprobs)}]})


@openai_errors
async def completions(request: web.Request) -> web.StreamResponse:
    body, model = await read_request(request)
    cfg = await resolve_model(request, body)  # and the limits, which may fill in max_tokens
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string", "prompt")
    if body.get("echo"):
        raise bad_request("echo is not supported", "echo")
    with translating("completion"):
        native = {"model": model, "prompt": prompt, "options": _options(body), "stream": True,
                  **_logprob_fields(body)}
        if isinstance(body.get("suffix"), str):
            native["suffix"] = body["suffix"]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    prep = await prepare_generate(request, native, cfg)
    base = {"id": f"cmpl-{secrets.token_hex(6)}", "object": "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_lm"}
    sse = _SSE(request) if body.get("stream") else None
    text, logprobs, final = [], [], {}
    if isinstance(prep, LoadOnly):  # no prompt: the model is loaded, and the answer is empty
        final = await load_only(prep)
    else:
        async with aclosing(chunks(prep)) as pieces:
            async for obj in pieces:
                if "error" in obj:
                    raise ApiError(500, obj["error"])
                if obj.get("done"):
                    final = obj
                if sse and (obj.get("response") or obj.get("logprobs")):
                    await sse.send({**base, "choices": [{"text": obj["response"], "index": 0, "finish_reason": None,
                                                         "logprobs": _choice_logprobs(obj.get("logprobs"))}]})
                text.append(obj.get("response", ""))
                logprobs += obj.get("logprobs") or []
    reason = _finish_reason(final, False)
    if sse:
        await sse.send({**base, "choices": [{"text": "", "index": 0, "finish_reason": reason, "logprobs": None}]})
        if include_usage:
            await sse.send({**base, "choices": [], "usage": _usage(final)})
        return await sse.done()
    return web.json_response({**base, "usage": _usage(final),
                              "choices": [{"text": "".join(text), "index": 0, "finish_reason": reason,
                                           "logprobs": _choice_logprobs(logprobs)}]})


def _embedding_inputs(value) -> list:
    """OpenAI's `input`: a string, a list of strings, a token array, or a list of token arrays."""
    def tokens(x) -> bool:
        return isinstance(x, list) and bool(x) and all(type(t) is int and t >= 0 for t in x)

    if isinstance(value, str) and value:
        return [value]
    if tokens(value):
        return [value]
    if isinstance(value, list) and value and all((isinstance(x, str) and x) or tokens(x) for x in value):
        return list(value)
    raise bad_request("input must be a non-empty string, a list of non-empty strings, or token arrays", "input")


@openai_errors
async def embeddings(request: web.Request) -> web.Response:
    body, model = await read_request(request)
    inputs = _embedding_inputs(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request("encoding_format must be 'float' or 'base64'", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise bad_request("dimensions must be a positive integer", "dimensions")
    cfg = await native_embed.resolve(request, body)
    result = await native_embed.embed_texts(request, model_request(cfg, {"model": model}), inputs)
    vectors = native_embed.normalize(result.vectors)
    if dimensions and dimensions < vectors.shape[1]:
        vectors = native_embed.normalize(vectors[:, :dimensions])
    if encoding == "base64":  # little-endian float32 bytes, as the openai SDK decodes them
        rows = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = vectors.tolist()
    usage = {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count}
    return web.json_response({"object": "list", "model": model, "usage": usage,
                              "data": [{"object": "embedding", "index": i, "embedding": row}
                                       for i, row in enumerate(rows)]})


def _model_entry(stored) -> dict:
    return {"id": stored.name.display, "object": "model", "created": int(stored.modified_at.timestamp()),
            "owned_by": stored.name.namespace}


@openai_errors
async def list_models(request: web.Request) -> web.Response:
    models = request.app["store"].list_models()
    return web.json_response({"object": "list", "data": [_model_entry(m) for m in models]})


@openai_errors
async def get_model(request: web.Request) -> web.Response:
    name = parse_name(request.match_info["model"])
    found = request.app["store"].find(name)
    if found is None:
        raise ApiError(404, f"model '{request.match_info['model']}' not found")
    return web.json_response({**_model_entry(found), "id": request.match_info["model"]})  # as asked, as Ollama's


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_route("POST", "/v1/chat/completions", chat_completions)
    r.add_route("POST", "/v1/completions", completions)
    r.add_route("POST", "/v1/embeddings", embeddings)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model:.+}", get_model)
