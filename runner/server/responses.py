"""OpenAI Responses API (/v1/responses), as newer Ollama offers: input items in, output items out."""

from __future__ import annotations

import json
import secrets
import time

from aiohttp import web

from runner.server.generate import gather_chat, prepare_turns
from runner.server.inference import resolve_model
from runner.server.http import ApiError, bad_request, dumps, translating
from runner.server.openai import _options, _text_content, openai_errors, read_request
from runner.server.reasoning import ReasoningError, openai_effort, think_from_effort


def _input_messages(body: dict) -> list[dict]:
    """`instructions` + `input` (a string or a list of items) as native chat messages."""
    messages = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad_request("input must be a string or a non-empty list of items", "input")
    names: dict[str, str] = {}
    pending_thinking = ""  # a reasoning item given back belongs to the assistant turn after it (Ollama's reading)
    for item in items:
        if not isinstance(item, dict):
            raise bad_request("each input item must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role")
            if role not in ("system", "user", "assistant"):
                raise bad_request("message items need a role: system, developer, user or assistant", "input")
            messages.append({"role": role, "content": _text_content(item.get("content"))})
            if role == "assistant" and pending_thinking:
                messages[-1]["thinking"], pending_thinking = pending_thinking, ""
        elif kind == "reasoning":
            pending_thinking = item.get("encrypted_content") or "".join(
                str(part.get("text", "")) for part in item.get("summary") or [] if isinstance(part, dict))
        elif kind == "function_call":
            try:
                args = json.loads(item.get("arguments") or "{}")
            except json.JSONDecodeError:
                raise bad_request("function_call arguments must be JSON", "input") from None
            names[item.get("call_id", "")] = item.get("name", "")
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"function": {"name": item.get("name", ""), "arguments": args}}]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": str(item.get("output", "")),
                             "tool_name": names.get(item.get("call_id", ""), "")})
        else:
            raise bad_request(f"unsupported input item type {kind!r}", "input")
    return messages


def _tools(body: dict) -> list[dict] | None:
    """Responses-style function tools ({type, name, parameters}) in the chat shape."""
    tools = body.get("tools")
    if not tools:
        return None
    out = []
    for t in tools:
        if not isinstance(t, dict) or t.get("type") != "function":
            raise bad_request("only function tools are supported", "tools")
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


_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object"}


def _check_fields(body: dict) -> None:
    """Fields of the wrong type, and what lm cannot do, refused in OpenAI's words."""
    for name, kinds in (("instructions", (str,)), ("tool_choice", (str, dict)), ("reasoning", (dict,)),
                        ("previous_response_id", (str,))):
        value = body.get(name)
        if value is not None and not isinstance(value, kinds):
            wanted = " or ".join(_JSON_TYPES[k] for k in kinds)
            raise bad_request(f"Invalid type for '{name}': expected {wanted}, but got "
                       f"{_JSON_TYPES.get(type(value), 'a value of another type')} instead.", name)
    if body.get("previous_response_id") is not None:
        # lm keeps no responses (as Ollama): every id is unknown, so the conversation must come as input items
        raise bad_request(f"Previous response with id '{body['previous_response_id']}' not found.", "previous_response_id")


@openai_errors
async def create_response(request: web.Request) -> web.StreamResponse:
    body, model = await read_request(request)
    cfg = await resolve_model(request, body)  # and the limits, which may fill in max_output_tokens
    _check_fields(body)
    if body.get("max_output_tokens") is not None:
        body = {**body, "max_tokens": body["max_output_tokens"]}
    with translating("response"):
        native = {"model": model, "messages": _input_messages(body), "options": _options(body), "stream": True}
        if (tools := _tools(body)) is not None and body.get("tool_choice") != "none":
            native["tools"] = tools
        if (fmt := _format(body)) is not None:
            native["format"] = fmt
        try:
            if (think := think_from_effort(openai_effort(body))) is not None:
                native["think"] = think
        except ReasoningError as exc:
            raise bad_request(str(exc), "reasoning") from None
    prep = await prepare_turns(request, native, "input", cfg)

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

    # Output items open as their output first comes: the reasoning (a model thinks first), then the
    # message, then the function calls; each is done before the next is added.
    rsid = f"rs_{secrets.token_hex(12)}"
    state = {"open": None, "index": -1}
    thinking: list[str] = []
    message = {"type": "message", "id": mid, "status": "in_progress", "role": "assistant", "content": []}

    def reasoning_item() -> dict:
        text = "".join(thinking)
        return {"type": "reasoning", "id": rsid, "summary": [{"type": "summary_text", "text": text}],
                "encrypted_content": text}  # plain text, as Ollama: handed back, it is thinking again

    async def close_item() -> None:
        if state["open"] == "reasoning":
            item, part = reasoning_item(), {"type": "summary_text", "text": "".join(thinking)}
            ids = dict(item_id=rsid, output_index=state["index"], summary_index=0)
            await event("response.reasoning_summary_text.done", **ids, text=part["text"])
            await event("response.reasoning_summary_part.done", **ids, part=part)
            await event("response.output_item.done", output_index=state["index"], item=item)
        state["open"] = None

    async def open_item(kind: str) -> None:
        if state["open"] == kind:
            return
        await close_item()
        state["open"], state["index"] = kind, state["index"] + 1
        if kind == "reasoning":
            await event("response.output_item.added", output_index=state["index"],
                        item={"type": "reasoning", "id": rsid, "summary": []})
            await event("response.reasoning_summary_part.added", item_id=rsid, output_index=state["index"],
                        summary_index=0, part={"type": "summary_text", "text": ""})
        else:
            await event("response.output_item.added", output_index=state["index"], item=message)
            await event("response.content_part.added", item_id=mid, output_index=state["index"], content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []})

    async def thinking_delta(thought: str) -> None:
        thinking.append(thought)
        if out:
            await open_item("reasoning")
            await event("response.reasoning_summary_text.delta", item_id=rsid, output_index=state["index"],
                        summary_index=0, delta=thought)

    async def text_delta(content: str) -> None:
        await open_item("message")
        await event("response.output_text.delta", item_id=mid, output_index=state["index"], content_index=0,
                    delta=content)

    if out:
        await event("response.created", response=response)
        await event("response.in_progress", response=response)
    answer = await gather_chat(prep, text_delta if out else None, thinking_delta)
    if answer.error:
        if out:
            await event("error", message=answer.error, code="server_error", param=None)
            await out.write_eof()
            return out
        raise ApiError(500, answer.error)
    full, calls, final = answer.text, answer.tool_calls, answer.final
    done = {**message, "status": "completed", "content": [{"type": "output_text", "text": full, "annotations": []}]}
    outputs = ([reasoning_item()] if thinking else []) + [done] + [
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
    if isinstance(body.get("reasoning"), dict):
        response["reasoning"] = {k: body["reasoning"].get(k) for k in ("effort", "summary")}
    if not out:
        return web.json_response(response)
    await open_item("message")  # the message item is there even when the answer was thinking only
    at = state["index"]
    await event("response.output_text.done", item_id=mid, output_index=at, content_index=0, text=full)
    await event("response.content_part.done", item_id=mid, output_index=at, content_index=0,
                part=done["content"][0])
    await event("response.output_item.done", output_index=at, item=done)
    for i, call in enumerate(outputs[at + 1:], start=at + 1):
        await event("response.output_item.added", output_index=i, item=call)
        await event("response.output_item.done", output_index=i, item=call)
    await event("response.incomplete" if truncated else "response.completed", response=response)
    await out.write_eof()
    return out


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/v1/responses", create_response)
