"""Anthropic Messages API (/v1/messages), as newer Ollama offers."""

from __future__ import annotations

import json
import secrets

from aiohttp import web

from runner.server.generate import gather_chat, prepare_turns
from runner.server.inference import resolve_model
from runner.server.errors import answer_errors
from runner.server.http import ApiError, bad_request, dumps, read_json, translating
from runner.server.reasoning import ReasoningError, think_from_anthropic

# Errors in Anthropic's shape: {"type": "error", "error": {"type", "message"}} (runner/server/errors.py).
anthropic_errors = answer_errors


def _blocks_text(content) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content blocks")
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def _messages(body: dict) -> list[dict]:
    out = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": _blocks_text(system)})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages: must be a non-empty list")
    names: dict[str, str] = {}
    for m in raw:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad_request("messages: each message needs a role, user or assistant")
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise bad_request("messages: content must be a string or a list of content blocks")
        text, calls, thinking = [], [], []
        for b in blocks:
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text":
                text.append(str(b.get("text", "")))
            elif kind == "tool_use":
                names[b.get("id", "")] = b.get("name", "")
                calls.append({"function": {"name": b.get("name", ""), "arguments": b.get("input") or {}}})
            elif kind == "thinking":  # an earlier answer's thinking, given back
                thinking.append(str(b.get("thinking", "")))
            elif kind == "redacted_thinking":
                continue  # encrypted by another provider: nothing a local model can read
            elif kind == "tool_result":
                out.append({"role": "tool", "content": _blocks_text(b.get("content", "")),
                            "tool_name": names.get(b.get("tool_use_id", ""), "")})
            else:
                raise bad_request(f"messages: unsupported content block type {kind!r}")
        if text or calls:
            msg = {"role": m["role"], "content": "".join(text)}
            if calls:
                msg["tool_calls"] = calls
            if thinking and m["role"] == "assistant":
                msg["thinking"] = "".join(thinking)
            out.append(msg)
    return out


def _options(body: dict) -> dict:
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad_request("max_tokens: a positive integer is required")
    opts = {"num_predict": max_tokens}
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            opts[key] = body[key]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("stop_sequences: must be a list of strings")
        opts["stop"] = stops
    return opts


def _tools(body: dict) -> list[dict] | None:
    tools = body.get("tools")
    if not tools:
        return None
    return [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                              "parameters": t.get("input_schema") or {}}} for t in tools]


@anthropic_errors
async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: field required")
    cfg = await resolve_model(request, body)  # and the limits, which may fill in max_tokens
    with translating("messages"):
        native = {"model": model, "messages": _messages(body), "options": _options(body), "stream": True}
        if (tools := _tools(body)) is not None:
            native["tools"] = tools
        try:
            if (think := think_from_anthropic(body)) is not None:
                native["think"] = think
        except ReasoningError as exc:
            raise bad_request(str(exc)) from None
    prep = await prepare_turns(request, native, "messages", cfg)
    mid = f"msg_{secrets.token_hex(12)}"
    message = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"}) if body.get("stream") else None

    async def event(kind: str, **payload) -> None:
        if not out.prepared:
            await out.prepare(request)
        await out.write(f"event: {kind}\ndata: ".encode() + dumps({"type": kind, **payload}) + b"\n\n")

    # Streamed blocks open as their kind of output first comes: thinking (a model thinks first), then
    # text, then the tool calls; each is closed before the next opens, as Anthropic's streams are.
    blocks = {"open": None, "index": -1}

    async def open_block(kind: str) -> int:
        if blocks["open"] != kind:
            if blocks["open"] is not None:
                await event("content_block_stop", index=blocks["index"])
            blocks["open"], blocks["index"] = kind, blocks["index"] + 1
            start = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else \
                {"type": "text", "text": ""}
            await event("content_block_start", index=blocks["index"], content_block=start)
        return blocks["index"]

    async def text_delta(content: str) -> None:
        await event("content_block_delta", index=await open_block("text"),
                    delta={"type": "text_delta", "text": content})

    async def thinking_delta(thought: str) -> None:
        await event("content_block_delta", index=await open_block("thinking"),
                    delta={"type": "thinking_delta", "thinking": thought})

    if out:
        await event("message_start", message=message)
    answer = await gather_chat(prep, text_delta if out else None, thinking_delta if out else None)
    if answer.error:
        if out:
            await event("error", error={"type": "api_error", "message": answer.error})
            await out.write_eof()
            return out
        raise ApiError(500, answer.error)
    calls, final = answer.tool_calls, answer.final
    stop_reason = "tool_use" if calls else "max_tokens" if final.get("done_reason") == "length" else "end_turn"
    tool_blocks = [{"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}", "name": c["function"]["name"],
                    "input": c["function"].get("arguments") or {}} for c in calls]
    usage = {"input_tokens": final.get("prompt_eval_count", 0), "output_tokens": final.get("eval_count", 0)}
    if not out:
        thinking = [{"type": "thinking", "thinking": answer.thinking, "signature": ""}] if answer.thinking else []
        text = [{"type": "text", "text": answer.text}] if answer.text or not calls else []
        return web.json_response({**message, "content": thinking + text + tool_blocks, "stop_reason": stop_reason,
                                  "usage": usage})
    if blocks["open"] is None and not calls:
        await open_block("text")  # an empty answer is still one (empty) text block
    if blocks["open"] is not None:
        await event("content_block_stop", index=blocks["index"])
    for i, block in enumerate(tool_blocks, start=blocks["index"] + 1):
        await event("content_block_start", index=i, content_block={**block, "input": {}})
        await event("content_block_delta", index=i,
                    delta={"type": "input_json_delta", "partial_json": json.dumps(block["input"])})
        await event("content_block_stop", index=i)
    await event("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": None},
                usage={"output_tokens": usage["output_tokens"]})
    await event("message_stop")
    await out.write_eof()
    return out


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/v1/messages", messages)
