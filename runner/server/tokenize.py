"""Tokenizer routes: /api/tokenize and /api/detokenize, the model's own vocabulary over HTTP.

Ollama has none yet (requests #3582, #12031, and open pull requests); the shape is theirs where they
agree and llama-server's field names elsewhere, so a client of either works:

    POST /api/tokenize   {"model", "content", "add_special": false, "keep_alive"} -> {"model", "tokens"}
    POST /api/detokenize {"model", "tokens", "keep_alive"}                      -> {"model", "content"}

`add_special` (llama-server's name and default) adds the model's BOS/EOS as a prompt gets them; special
tokens written in the text (`<|im_start|>`) are always read as such, and written out again by detokenize.
The model's runner is loaded as for a generate request (so `keep_alive` applies).
"""

from __future__ import annotations

from aiohttp import web

from runner.daemon.runner_client import RunnerError, RunnerRejected
from runner.server.inference import Inference, resolve_model
from runner.server.request import model_request
from runner.server.security import TOKEN_MAX
from runner.server.http import ApiError, bad_request, field, read_json


async def _on_runner(request: web.Request, body: dict, call):
    cfg = await resolve_model(request, body)
    async with Inference(request, model_request(cfg, body)) as inf:
        try:
            return await call(inf.lm.proc)
        except RunnerRejected as exc:
            raise ApiError(exc.status, str(exc)) from None
        except RunnerError as exc:
            inf.failed = True
            raise ApiError(500, str(exc)) from None


async def tokenize(request: web.Request) -> web.Response:
    body = await read_json(request)
    content = field(body, "content", str, required=True)
    add_special = field(body, "add_special", bool, False)
    tokens = await _on_runner(request, body, lambda proc: proc.tokenize(content, add_special=add_special))
    return web.json_response({"model": body.get("model"), "tokens": tokens})


async def detokenize(request: web.Request) -> web.Response:
    body = await read_json(request)
    tokens = field(body, "tokens", list, required=True)
    # llama.cpp's token ids are int32: anything beyond is no id of any vocabulary (and no 64-bit JSON int)
    if not all(type(t) is int and -TOKEN_MAX - 1 <= t <= TOKEN_MAX for t in tokens):
        raise bad_request("tokens must be a list of token ids")
    content = await _on_runner(request, body, lambda proc: proc.detokenize(tokens))
    return web.json_response({"model": body.get("model"), "content": content})


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/api/tokenize", tokenize)
    app.router.add_route("POST", "/api/detokenize", detokenize)
