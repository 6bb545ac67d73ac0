"""Embedding routes: /api/embed and the legacy /api/embeddings.

As Ollama answers them:
- /api/embed: `input` a string or a list of strings (an empty string or list loads the model and
  answers `"embeddings": []`; anything else is "invalid input type"); `truncate` (default true) cuts
  an input to the context, false makes a long input a 400; every vector is L2-normalised, and
  `dimensions` keeps its first N values and normalises again. The runner embeds all inputs of a
  request in shared batches.
- /api/embeddings: `prompt` -> `embedding`, the model's raw pooled vector (not normalised), an empty
  prompt only loads the model; errors are 500s, as Ollama's.
Any model embeds: embedding models with the pooling they declare, generative ones on their last token.

`embed_texts` is the shared core (for /v1/embeddings too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from aiohttp import web

try:  # prints 500x384 float32 values in 5 ms where Python's own formatting takes over 100 ms
    import orjson
except ImportError:  # pragma: no cover - a dependency; the slow path keeps working without it
    orjson = None

from runner.model.config import ModelConfig
from runner.daemon.runner_client import RunnerError, RunnerRejected
from runner.server.inference import Inference, resolve_model
from runner.server.request import ModelRequest, model_request
from runner.server.http import ApiError, bad_request, dumps, field, read_json


@dataclass
class EmbedResult:
    vectors: np.ndarray  # (n inputs, dims), float32
    prompt_eval_count: int
    load_duration: float  # seconds
    total_duration: float


async def resolve(request: web.Request, body: dict, legacy: bool = False) -> ModelConfig:
    """The model a request names; 404 says the name as the client gave it (Ollama's messages)."""
    given = body.get("model")
    message = f'model "{given}" not found, try pulling it first' if legacy else f"model '{given}' not found"
    return await resolve_model(request, body, given="" if given is None else given, missing=message)


def parse_input(value) -> list[str]:
    """Ollama's reading of `input`: a non-empty string, or a list of strings; None is no input."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        if not all(isinstance(x, str) for x in value):
            raise bad_request("invalid input type")
        return list(value)
    raise bad_request("invalid input type")


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as Ollama (float32, norm floored at 1e-12); NaN/Inf refused."""
    if not np.isfinite(vectors).all():
        raise bad_request("embedding contains NaN or Inf values")
    v = vectors.astype(np.float32, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float32))
    v *= (np.float32(1.0) / np.maximum(norms, np.float32(1e-12)))[:, None]
    return v


def refuse_reranker(cfg: ModelConfig) -> None:
    """A cross-encoder scores pairs (/api/rerank): it has no embeddings to give (a 400, before loading)."""
    if "rerank" in cfg.capabilities:
        raise bad_request(f'"{cfg.display}" does not support embeddings')


async def embed_texts(request: web.Request, req: ModelRequest, inputs: list[str], *,
                      truncate: bool = True) -> EmbedResult:
    """Raw embeddings of `inputs` on the request's model's runner (loaded as needed); ApiError on failure."""
    t0 = time.perf_counter()
    refuse_reranker(req.cfg)
    async with Inference(request, req) as inf:
        loaded = time.perf_counter()
        if not inputs:
            return EmbedResult(np.zeros((0, 0), np.float32), 0, loaded - t0, time.perf_counter() - t0)
        try:
            vectors, counts, _ = await inf.lm.proc.embed(inputs, truncate)
        except RunnerRejected as exc:
            raise ApiError(exc.status, str(exc)) from None
        except RunnerError as exc:
            inf.failed = True
            raise ApiError(500, str(exc)) from None
    return EmbedResult(vectors, sum(counts), loaded - t0, time.perf_counter() - t0)


def float32_json(vectors: np.ndarray) -> bytes:
    """Rows as a JSON array of float32 numbers in their shortest round-trip form, as Go writes a
    []float32 (half the bytes of float64 digits)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if orjson is not None:
        return orjson.dumps(vectors, option=orjson.OPT_SERIALIZE_NUMPY)
    return ("[" + ",".join("[" + ",".join(row) + "]" for row in vectors.astype(str)) + "]").encode()


async def embed(request: web.Request) -> web.Response:
    t0 = time.perf_counter()
    body = await read_json(request)
    inputs = parse_input(body.get("input"))
    truncate = field(body, "truncate", bool, True)
    dimensions = field(body, "dimensions", int, 0)
    cfg = await resolve(request, body)
    result = await embed_texts(request, model_request(cfg, body), inputs, truncate=truncate)
    head = dumps({"model": body.get("model")})[:-1]
    if not inputs:
        return web.Response(body=head + b',"embeddings":[]}', content_type="application/json")
    vectors = normalize(result.vectors)
    if 0 < dimensions < vectors.shape[1]:
        vectors = normalize(vectors[:, :dimensions])
    rows = float32_json(vectors)
    tail = dumps({"total_duration": int((time.perf_counter() - t0) * 1e9),
                  "load_duration": int(result.load_duration * 1e9),
                  "prompt_eval_count": result.prompt_eval_count})
    return web.Response(body=head + b',"embeddings":' + rows + b"," + tail[1:],
                        content_type="application/json")


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    prompt = field(body, "prompt", str, "")
    cfg = await resolve(request, body, legacy=True)
    refuse_reranker(cfg)  # a client's mistake: a 400 here too, not the legacy route's 500
    req = model_request(cfg, body)
    try:
        result = await embed_texts(request, req, [prompt] if prompt else [], truncate=False)
    except ApiError as exc:
        if exc.status in (503, 404):
            raise
        raise ApiError(500, exc.message) from None  # Ollama's legacy route answers every failure with 500
    if not prompt:
        return web.json_response({"embedding": []})
    if not np.isfinite(result.vectors).all():
        raise ApiError(500, "embedding contains NaN or Inf values")
    # Ollama widens the float32 values to float64 here, and prints those: so does .tolist()
    return web.Response(body=dumps({"embedding": result.vectors[0].tolist()}), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/api/embed", embed)
    app.router.add_route("POST", "/api/embeddings", embeddings)
