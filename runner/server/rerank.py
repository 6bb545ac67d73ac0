"""Rerank: POST /api/rerank and /v1/rerank, in the Jina/Cohere shape llama-server serves.

Request:  {"model", "query": str, "documents": [str], "top_n"?: int, "return_documents"?: bool,
           "truncate"?: bool (default true: a long document is cut to the context), "keep_alive"?, "options"?}
Response: {"model", "object": "list", "results": [{"index", "relevance_score", "document"?: {"text"}}],
           "usage": {"prompt_tokens", "total_tokens"}}

Results are sorted by score, best first, and cut to `top_n`; `index` is the document's position in the
request. The score is the cross-encoder's raw logit (llama-server's too), not a probability. The model
must be a reranker (the "rerank" capability: a GGUF that declares rank pooling, such as a converted
BertForSequenceClassification); the documents count against LM_MAX_BATCH like embedding inputs.
/api/rerank answers errors as {"error": "..."}, /v1/rerank in OpenAI's error shape like the rest of /v1.
"""

from __future__ import annotations

import math

from aiohttp import web

from runner.daemon.runner_client import RunnerError, RunnerRejected
from runner.server.embed import resolve
from runner.server.inference import Inference
from runner.server.request import model_request
from runner.server.http import ApiError, bad_request, dumps, field, read_json
from runner.server.openai import openai_errors


def _text(value, what: str) -> str:
    if not isinstance(value, str):  # (a lone surrogate never gets here: read_json refuses the body)
        raise bad_request(f"{what} must be a string")
    return value


def parse_request(body: dict) -> tuple[str, list[str], int, bool, bool]:
    """(query, documents, top_n, return_documents, truncate) of a rerank body; 400 for anything else."""
    if body.get("query") is None:
        raise bad_request("query is required")
    query = _text(body["query"], "query")
    if not query:
        raise bad_request("query must not be empty")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise bad_request("documents must be a non-empty list of strings")
    documents = [_text(d, f"documents[{i}]") for i, d in enumerate(documents)]
    top_n = field(body, "top_n", int, len(documents))
    if top_n < 1:
        raise bad_request("top_n must be a positive integer")
    return (query, documents, top_n, field(body, "return_documents", bool, False),
            field(body, "truncate", bool, True))


async def rerank_documents(request: web.Request, body: dict) -> dict:
    model = body.get("model")
    query, documents, top_n, return_documents, truncate = parse_request(body)
    cfg = await resolve(request, body)
    if "rerank" not in cfg.capabilities:
        raise bad_request(f'"{cfg.display}" does not support rerank')  # as generate's capability error
    req = model_request(cfg, body)
    rejected: RunnerRejected | None = None
    async with Inference(request, req) as inf:
        try:
            scores, counts = await inf.lm.proc.rerank(query, documents, truncate)
        except RunnerRejected as exc:  # the runner is fine: answered once out of the block
            rejected = exc
        except RunnerError as exc:
            inf.failed = True
            raise ApiError(500, str(exc)) from None
    if rejected is not None:
        raise ApiError(400 if rejected.status in (400, 501) else rejected.status, str(rejected))
    if not all(math.isfinite(s) for s in scores):
        raise ApiError(500, "rerank score is NaN or Inf")
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]  # stable: ties keep request order
    results = []
    for i in order:
        result = {"index": i, "relevance_score": scores[i]}
        if return_documents:
            result["document"] = {"text": documents[i]}
        results.append(result)
    tokens = sum(counts)
    return {"model": model, "object": "list", "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _json(obj: dict) -> web.Response:
    return web.Response(body=dumps(obj), content_type="application/json")


async def rerank(request: web.Request) -> web.Response:
    return _json(await rerank_documents(request, await read_json(request)))


@openai_errors
async def v1_rerank(request: web.Request) -> web.Response:
    return _json(await rerank_documents(request, await read_json(request)))


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/api/rerank", rerank)
    app.router.add_route("POST", "/v1/rerank", v1_rerank)
