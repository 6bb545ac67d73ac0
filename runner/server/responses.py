"""OpenAI Responses API (/v1/responses), as newer Ollama offers: input items in, output items out."""

from __future__ import annotations

import json
import secrets
import time

from aiohttp import web

from .generate import gather_chat, prepare_chat
from .http import ApiError, dumps, translating
from .openai import _bad, _options, _text_content, openai_errors, read_request


def _input_messages(body: dict) -> list[dict]:
    """`instructions` + `input` (a string or a list of items) as native chat messages."""
    messages = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("input must be a string or a non-empty list of items", "input")
    names: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            raise _bad("each input item must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role")
            if role not in ("system", "user", "assistant"):
                raise _bad("message items need a role: system, developer, user or assistant", "input")
            messages.append({"role": role, "content": _text_content(item.get("content"))})
        elif kind == "function_call":
            try:
                args = json.loads(item.get("arguments") or "{}")
            except json.JSONDecodeError:
                raise _bad("function_call arguments must be JSON", "input") from None
            names[item.get("call_id", "")] = item.get("name", "")
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"function": {"name": item.get("name", ""), "arguments": args}}]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": str(item.get("output", "")),
                             "tool_name": names.get(item.get("call_id", ""), "")})
        else:
            raise _bad(f"unsupported input item type {kind!r}", "input")
    return messages


def _tools(body: dict) -> list[dict] | None:
    """Responses-style function tools ({type, name, parameters}) in the chat shape."""
    tools = body.get("tools")
    if not tools:
        return None
    out = []
    for t in tools:
        if not isinstance(t, dict) or t.get("type") != "function":
            raise _bad("only function tools are supported", "tools")
        out.append({"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                                     "parameters": t.get("parameters") or {}}})
    return out


def _format(body: dict):
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("schema") or {}
    if fmt.get("type") == "json_object":
        return "json"
    return None


@openai_errors
async def create_response(request: web.Request) -> web.StreamResponse:
    body, model = await read_request(request)
    if body.get("max_output_tokens") is not None:
        body = {**body, "max_tokens": body["max_output_tokens"]}
    with translating("response"):
        native = {"model": model, "messages": _input_messages(body), "options": _options(body), "stream": True}
        if (tools := _tools(body)) is not None:
            native["tools"] = tools
        if (fmt := _format(body)) is not None:
            native["format"] = fmt
    prep = await prepare_chat(request, native)

    rid, mid = f"resp_{secrets.token_hex(12)}", f"msg_{secrets.token_hex(12)}"
    response = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
                "model": model, "output": [], "usage": None, "incomplete_details": None, "error": None,
                "instructions": body.get("instructions"), "parallel_tool_calls": True, "tools": body.get("tools") or [],
                "temperature": body.get("temperature"), "top_p": body.get("top_p"),
                "max_output_tokens": body.get("max_output_tokens"), "metadata": body.get("metadata") or {}}
    stream = bool(body.get("stream"))
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"}) if stream else None
    seq = 0

    async def event(kind: str, **payload) -> None:
        nonlocal seq
        if not out.prepared:
            await out.prepare(request)
        await out.write(f"event: {kind}\ndata: ".encode() + dumps({"type": kind, "sequence_number": seq, **payload})
                        + b"\n\n")
        seq += 1

    if out:
        await event("response.created", response=response)
        await event("response.in_progress", response=response)
        item = {"type": "message", "id": mid, "status": "in_progress", "role": "assistant", "content": []}
        await event("response.output_item.added", output_index=0, item=item)
        await event("response.content_part.added", item_id=mid, output_index=0, content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []})

    async def text_delta(content: str) -> None:
        await event("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=content)

    answer = await gather_chat(prep, text_delta if out else None)
    if answer.error:
        if out:
            await event("error", message=answer.error, code="server_error", param=None)
            await out.write_eof()
            return out
        raise ApiError(500, answer.error)
    full, calls, final = answer.text, answer.tool_calls, answer.final
    message = {"type": "message", "id": mid, "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": full, "annotations": []}]}
    outputs = [message] + [
        {"type": "function_call", "id": f"fc_{secrets.token_hex(8)}", "call_id": f"call_{secrets.token_hex(8)}",
         "name": c["function"]["name"], "arguments": json.dumps(c["function"].get("arguments", {})),
         "status": "completed"} for c in calls]
    truncated = final.get("done_reason") == "length"
    p, c = final.get("prompt_eval_count", 0), final.get("eval_count", 0)
    response.update(status="incomplete" if truncated else "completed", output=outputs,
                    incomplete_details={"reason": "max_output_tokens"} if truncated else None,
                    usage={"input_tokens": p, "output_tokens": c, "total_tokens": p + c,
                           "input_tokens_details": {"cached_tokens": 0},
                           "output_tokens_details": {"reasoning_tokens": 0}})
    if not out:
        return web.json_response(response)
    await event("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=full)
    await event("response.content_part.done", item_id=mid, output_index=0, content_index=0,
                part=message["content"][0])
    await event("response.output_item.done", output_index=0, item=message)
    for i, call in enumerate(outputs[1:], start=1):
        await event("response.output_item.added", output_index=i, item=call)
        await event("response.output_item.done", output_index=i, item=call)
    await event("response.incomplete" if truncated else "response.completed", response=response)
    await out.write_eof()
    return out


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/v1/responses", create_response)
