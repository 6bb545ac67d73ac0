"""An OpenAPI 3 description of every route, served at /openapi.json.

Built per daemon from its settings, so the maximums it states (num_ctx, num_predict, message and batch
counts) are the ones this daemon enforces. Fuzzed by tests/test_fuzz.py with schemathesis.
"""

from __future__ import annotations

from aiohttp import web

from runner import __version__
from runner.settings import Settings
from runner.engine.speculative import DRAFT_TYPES
from runner.server.security import option_bounds

_INT64_MAX = 2**63 - 1
DIGEST = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$", "example": "sha256:" + "0" * 64}
MODEL = {"type": "string", "minLength": 1, "maxLength": 300, "description": "[host/][namespace/]model[:tag]",
         "example": "smollm2:135m"}
DURATION = {"description": 'Seconds, or a Go duration ("5m", "1h30m"); 0 unloads at once, negative keeps loaded',
            "oneOf": [{"type": "number"}, {"type": "string", "maxLength": 40}]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict, required: tuple[str, ...] = (), **extra) -> dict:
    out = {"type": "object", "properties": properties, **extra}
    if required:
        out["required"] = list(required)
    return out


def _json(schema: dict, description: str = "") -> dict:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


def _body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, tag: str, *, body: dict | None = None, ok: dict | None = None, errors=(400, 401, 413, 500),
        params: list | None = None, public: bool = False) -> dict:
    responses = {"200": ok or {"description": "OK"}}
    texts = {400: "Bad request", 401: "Missing or invalid API key (when keys are configured)",
             403: "Origin or Host not allowed", 404: "Model not found", 413: "Request body too large",
             500: "Engine failure", 503: "Server busy: the queue is full"}
    for code in errors:
        responses[str(code)] = _error(texts[code])
    op = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def _schemas(s: Settings) -> dict:
    max_predict = s.max_predict if s.max_predict > 0 else _INT64_MAX
    bounds = {name: {"minimum": low, "maximum": high} for name, (low, high, _) in option_bounds(s).items()}
    # The options the daemon refuses out of range state its ranges (security.option_bounds); the other
    # ranges are advice (what sensible values are), not refused.
    options = _obj({
        "num_keep": {"type": "integer", **bounds["num_keep"]},
        "seed": {"type": "integer", "minimum": -1, "maximum": 2**31 - 1},
        "num_predict": {"type": "integer", **bounds["num_predict"],
                        "description": "-1: no limit, -2: fill the context"},
        "top_k": {"type": "integer", **bounds["top_k"]},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "typical_p": {"type": "number", "minimum": 0, "maximum": 1},
        "repeat_last_n": {"type": "integer", **bounds["repeat_last_n"]},
        "temperature": {"type": "number", "minimum": 0, "maximum": 5},
        "repeat_penalty": {"type": "number", "minimum": 0, "maximum": 5},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "stop": {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 16},
        "num_ctx": {"type": "integer", **bounds["num_ctx"]},
        "num_batch": {"type": "integer", **bounds["num_batch"]},
        "num_gpu": {"type": "integer", "minimum": -1, "maximum": 1000},
        "main_gpu": {"type": "integer", "minimum": 0, "maximum": 16},
        "use_mmap": {"type": "boolean"},
        "num_thread": {"type": "integer", **bounds["num_thread"]},
        "draft_type": {"type": "string", "enum": list(DRAFT_TYPES),
                       "description": 'speculative decoding: "ngram" proposes tokens from the prompt and text so far'},
        "draft_num_predict": {"type": "integer", **bounds["draft_num_predict"],
                              "description": "the most tokens drafted per step (0: no speculation)"},
    }, description="Model options; unknown names are ignored with a warning")
    fmt = {"description": '"json", or a JSON schema the answer must follow',
           "oneOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}]}
    think = {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["high", "medium", "low", "max"]}]}
    logprobs = {"logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20}}
    # Ollama's context fields (runner/engine/context_limit.py): cut an overlong prompt (else 400), shift a full context
    context_flags = {"truncate": {"type": "boolean"}, "shift": {"type": "boolean"}}
    token_logprob = {"token": {"type": "string"}, "logprob": {"type": "number"},
                     "bytes": {"type": "array", "items": {"type": "integer"}}}
    logprob_list = {"type": "array", "items": _obj({**token_logprob, "top_logprobs": {
        "type": "array", "items": _obj(token_logprob)}})}
    tool_call = _obj({"function": _obj({"name": {"type": "string"}, "arguments": {"type": "object"}}, ("name",))})
    tool = _obj({"type": {"type": "string", "enum": ["function"]},
                 "function": _obj({"name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
                                   "parameters": {"type": "object"}}, ("name",))}, ("type", "function"))
    message = _obj({"role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
                    "content": {"type": "string"}, "thinking": {"type": "string"},
                    "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                    "tool_calls": {"type": "array", "items": tool_call}, "tool_name": {"type": "string"}}, ("role",))
    stats = {"total_duration": {"type": "integer"}, "load_duration": {"type": "integer"},
             "prompt_eval_count": {"type": "integer"}, "prompt_eval_duration": {"type": "integer"},
             "eval_count": {"type": "integer"}, "eval_duration": {"type": "integer"},
             "draft_count": {"type": "integer", "description": "with speculation: tokens drafted"},
             "draft_accepted_count": {"type": "integer", "description": "with speculation: drafts accepted"},
             "done": {"type": "boolean"}, "done_reason": {"type": "string"}, "model": {"type": "string"},
             "created_at": {"type": "string"}}
    details = _obj({k: {"type": "string"} for k in ("parent_model", "format", "family", "parameter_size",
                                                     "quantization_level")})
    # /api/ps: each device a model uses; with RPC workers its name (RPC[host:port]#0) and layers too
    gpus = {"type": "array", "items": _obj({"id": {"type": "integer"}, "size_vram": {"type": "integer"},
                                            "name": {"type": "string"}, "layers": {"type": "integer"}})}
    openai_message = _obj({"role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                           "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _obj(
                               {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
                               ("type", "text"))}]},
                           "name": {"type": "string"}, "tool_call_id": {"type": "string"}}, ("role",))
    effort = {"type": "string", "enum": ["none", "minimal", "low", "medium", "high", "xhigh", "ultra", "max"]}
    openai_common = {
        "model": MODEL, "stream": {"type": "boolean"},
        "stream_options": _obj({"include_usage": {"type": "boolean"}}),
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": max_predict},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    }
    return {
        "Error": _obj({"error": {"description": "A message (Ollama routes) or an error object (/v1 routes)"}},
                      ("error",)),
        "Options": options,
        "GenerateRequest": _obj({
            "model": MODEL, "prompt": {"type": "string"}, "suffix": {"type": "string"},
            "system": {"type": "string"}, "template": {"type": "string"},
            "context": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": s.max_context},
            "raw": {"type": "boolean"}, "format": fmt,
            "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
            "think": think, "options": _ref("Options"), "keep_alive": DURATION, "stream": {"type": "boolean"},
            **logprobs, **context_flags,
        }, ("model",)),
        "GenerateResponse": _obj({**stats, "response": {"type": "string"}, "thinking": {"type": "string"},
                                  "context": {"type": "array", "items": {"type": "integer"}},
                                  "logprobs": logprob_list}),
        "Message": message,
        "Tool": tool,
        "ChatRequest": _obj({
            "model": MODEL, "messages": {"type": "array", "items": _ref("Message"), "maxItems": s.max_messages},
            "tools": {"type": "array", "items": _ref("Tool")}, "format": fmt, "think": think,
            "options": _ref("Options"), "keep_alive": DURATION, "stream": {"type": "boolean"},
            **logprobs, **context_flags,
        }, ("model",)),
        "ChatResponse": _obj({**stats, "message": _ref("Message"), "logprobs": logprob_list}),
        "EmbedRequest": _obj({
            "model": MODEL,
            "input": {"oneOf": [{"type": "string"},
                                {"type": "array", "items": {"type": "string"}, "maxItems": s.max_batch}]},
            "truncate": {"type": "boolean"}, "dimensions": {"type": "integer", "minimum": 1},
            "options": _ref("Options"), "keep_alive": DURATION,
        }, ("model",)),
        "EmbedResponse": _obj({"model": {"type": "string"},
                               "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                               "prompt_eval_count": {"type": "integer"}, "total_duration": {"type": "integer"},
                               "load_duration": {"type": "integer"}}),
        "RerankRequest": _obj({
            "model": MODEL, "query": {"type": "string", "minLength": 1},
            "documents": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": s.max_batch},
            "top_n": {"type": "integer", "minimum": 1}, "return_documents": {"type": "boolean"},
            "truncate": {"type": "boolean"}, "options": _ref("Options"), "keep_alive": DURATION,
        }, ("model", "query", "documents")),
        "RerankResponse": _obj({
            "model": {"type": "string"}, "object": {"type": "string"},
            "results": {"type": "array", "items": _obj({
                "index": {"type": "integer"}, "relevance_score": {"type": "number"},
                "document": _obj({"text": {"type": "string"}})}, ("index", "relevance_score"))},
            "usage": _obj({"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}),
        }, ("model", "results", "usage")),
        "EmbeddingsRequest": _obj({"model": MODEL, "prompt": {"type": "string"}, "options": _ref("Options"),
                                   "keep_alive": DURATION}, ("model",)),
        "ModelRequest": _obj({"model": MODEL, "verbose": {"type": "boolean"}}, ("model",)),
        "CreateRequest": _obj({
            "model": MODEL, "from": {"type": "string"},
            "requires": {"type": "string", "description": "the oldest Ollama the model works with (semver)"},
            "files": {"type": "object", "additionalProperties": DIGEST, "maxProperties": 64},
            "adapters": {"type": "object", "additionalProperties": DIGEST, "maxProperties": 64},
            "template": {"type": "string"}, "system": {"type": "string"},
            "parameters": {"type": "object"}, "messages": {"type": "array", "items": _ref("Message")},
            "license": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "quantize": {"type": "string"}, "stream": {"type": "boolean"},
        }, ("model",)),
        "TokenizeRequest": _obj({"model": MODEL, "content": {"type": "string"}, "add_special": {"type": "boolean"},
                                 "options": _ref("Options"), "keep_alive": DURATION}, ("model", "content")),
        "TokenizeResponse": _obj({"model": {"type": "string"},
                                  "tokens": {"type": "array", "items": {"type": "integer"}}}),
        "DetokenizeRequest": _obj({"model": MODEL, "options": _ref("Options"), "keep_alive": DURATION,
                                   "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                              "maxItems": s.max_context}}, ("model", "tokens")),
        "DetokenizeResponse": _obj({"model": {"type": "string"}, "content": {"type": "string"}}),
        "CopyRequest": _obj({"source": MODEL, "destination": MODEL}, ("source", "destination")),
        "PullRequest": _obj({"model": MODEL, "insecure": {"type": "boolean"}, "stream": {"type": "boolean"}},
                            ("model",)),
        "Status": _obj({"status": {"type": "string"}, "digest": {"type": "string"}, "total": {"type": "integer"},
                        "completed": {"type": "integer"}}),
        "ModelList": _obj({"models": {"type": "array", "items": _obj({
            "name": {"type": "string"}, "model": {"type": "string"}, "modified_at": {"type": "string"},
            "size": {"type": "integer"}, "digest": {"type": "string"}, "details": details,
            "expires_at": {"type": "string"}, "size_vram": {"type": "integer"},
            "context_length": {"type": "integer"}, "processor": {"type": "string"},
            "gpus": gpus,
            "kv_cache": _obj({"type": {"type": "string"}, "slots": {"type": "integer"},
                              "bytes_per_slot": {"type": "integer"}}),
            # LM_REPLICAS: one entry per copy of the model, where there are several
            "replicas": {"type": "array", "items": _obj({"gpus": gpus, "slots": {"type": "integer"},
                                                          "active": {"type": "integer"}})},
            "speculative": _obj({"draft_count": {"type": "integer"}, "draft_accepted_count": {"type": "integer"}},
                                description="/api/ps, once speculative decoding served a request: tokens "
                                            "drafted and accepted since the model loaded")})}}),
        "ShowResponse": _obj({k: {"type": "string"} for k in ("license", "modelfile", "parameters", "template",
                                                              "system", "modified_at")}
                             | {"details": details, "model_info": {"type": "object"},
                                "capabilities": {"type": "array", "items": {"type": "string"}},
                                "adapters": {"type": "array", "items": {"type": "object"}}}),
        "OpenAIChatRequest": _obj({
            **openai_common,
            "messages": {"type": "array", "items": openai_message, "minItems": 1, "maxItems": s.max_messages},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": max_predict},
            "n": {"type": "integer", "enum": [1]},
            "response_format": _obj({"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                                     "json_schema": _obj({"name": {"type": "string"}, "schema": {"type": "object"}})},
                                    ("type",)),
            "tools": {"type": "array", "items": _ref("Tool")},
            "tool_choice": {"oneOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {"type": "object"}]},
            **logprobs,
            "reasoning_effort": effort, "reasoning": _obj({"effort": effort}),
        }, ("model", "messages")),
        "OpenAICompletionRequest": _obj({**openai_common, "prompt": {"type": "string"}, "suffix": {"type": "string"},
                                         "logprobs": {"type": "integer", "minimum": 0, "maximum": 20}},
                                        ("model", "prompt")),
        "OpenAIEmbeddingRequest": _obj({
            "model": MODEL, "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                                      "maxItems": s.max_batch}]},
        }, ("model", "input")),
        "OpenAIModel": _obj({"id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
                             "owned_by": {"type": "string"}}),
        "ResponsesRequest": _obj({
            "model": MODEL, "instructions": {"type": "string"}, "stream": {"type": "boolean"},
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": s.max_messages, "items": _obj({
                "type": {"type": "string", "enum": ["message", "function_call", "function_call_output", "reasoning"]},
                "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                "content": {"type": "string"}, "call_id": {"type": "string"}, "name": {"type": "string"},
                "arguments": {"type": "string"}, "output": {"type": "string"}})}]},
            "max_output_tokens": {"type": "integer", "minimum": 1, "maximum": max_predict},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "tools": {"type": "array", "items": _obj({"type": {"type": "string", "enum": ["function"]},
                                                      "name": {"type": "string"}, "parameters": {"type": "object"}},
                                                     ("type", "name"))},
            "text": _obj({"format": _obj({"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                                          "schema": {"type": "object"}})}),
            "reasoning": _obj({"effort": effort, "summary": {"type": "string"}}),
            "tool_choice": {"oneOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {"type": "object"}]},
            "previous_response_id": {"type": "string", "description": "refused: lm keeps no responses"},
        }, ("model", "input")),
        "AnthropicMessagesRequest": _obj({
            "model": MODEL, "max_tokens": {"type": "integer", "minimum": 1, "maximum": max_predict},
            "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": _obj(
                {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}, ("type", "text"))}]},
            "messages": {"type": "array", "minItems": 1, "maxItems": s.max_messages, "items": _obj({
                "role": {"type": "string", "enum": ["user", "assistant"]},
                "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _obj({
                    "type": {"type": "string", "enum": ["text", "tool_use", "tool_result", "thinking",
                                                        "redacted_thinking"]},
                    "text": {"type": "string"}, "id": {"type": "string"}, "name": {"type": "string"},
                    "input": {"type": "object"}, "tool_use_id": {"type": "string"},
                    "content": {"type": "string"}}, ("type",))}]}}, ("role", "content"))},
            "stop_sequences": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {"type": "integer", "minimum": 0, "maximum": bounds["top_k"]["maximum"]},  # Anthropic's lowest
            "stream": {"type": "boolean"},
            "tools": {"type": "array", "items": _obj({"name": {"type": "string"}, "description": {"type": "string"},
                                                      "input_schema": {"type": "object"}}, ("name",))},
            "thinking": _obj({"type": {"type": "string", "enum": ["enabled", "disabled", "adaptive"]},
                              "budget_tokens": {"type": "integer", "minimum": 0}}, ("type",)),
        }, ("model", "max_tokens", "messages")),
    }


def build_spec(s: Settings) -> dict:
    ndjson = {"application/x-ndjson": {"schema": {"type": "string"}}}
    sse = {"text/event-stream": {"schema": {"type": "string"}}}

    def streamed(schema: str, *, events: dict = ndjson) -> dict:
        return {"description": "One JSON object (stream false), or a stream", "content": {
            "application/json": {"schema": _ref(schema)}, **events}}

    digest_param = [{"name": "digest", "in": "path", "required": True, "schema": DIGEST}]
    model_param = [{"name": "model", "in": "path", "required": True, "schema": MODEL}]
    text_ok = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    html_ok = {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}
    ui_param = [{"name": "path", "in": "path", "required": True, "schema": {
        "type": "string", "pattern": "^[A-Za-z0-9._/-]+$", "maxLength": 200, "example": "js/chat.js"}}]
    version_ok = _json(_obj({"version": {"type": "string"}}, ("version",)))
    infer = (400, 401, 404, 413, 500, 503)
    paths = {
        "/": {"get": _op("Health check", "general", ok=text_ok, errors=(), public=True),
              "head": _op("Health check", "general", errors=(), public=True)},
        "/api/version": {"get": _op("Version", "general", ok=version_ok, errors=(), public=True),
                         "head": _op("Version", "general", errors=(), public=True)},
        # The browser page (webui.py): static files, no key needed; a browser asking for / is sent to /ui/.
        "/ui": {"get": {"summary": "Redirects to /ui/", "tags": ["ui"], "security": [],
                        "responses": {"302": {"description": "Location: /ui/"}}}},
        "/ui/": {"get": _op("The chat and models page", "ui", ok=html_ok, errors=(), public=True)},
        "/ui/{path}": {"get": _op("A file of the page (script, style, licence)", "ui", ok={"description": "OK"},
                                  errors=(404,), params=ui_param, public=True)},
        "/api/generate": {"post": _op("Generate a completion", "native", body=_body(_ref("GenerateRequest")),
                                      ok=streamed("GenerateResponse"), errors=infer)},
        "/api/chat": {"post": _op("Chat", "native", body=_body(_ref("ChatRequest")), ok=streamed("ChatResponse"),
                                  errors=infer)},
        "/api/embed": {"post": _op("Embed inputs (L2-normalised)", "native", body=_body(_ref("EmbedRequest")),
                                   ok=_json(_ref("EmbedResponse")), errors=infer)},
        "/api/embeddings": {"post": _op("Embed one prompt (legacy)", "native", body=_body(_ref("EmbeddingsRequest")),
                                        ok=_json(_obj({"embedding": {"type": "array", "items": {"type": "number"}}})),
                                        errors=infer)},
        "/api/rerank": {"post": _op("Rerank documents by relevance to a query (a reranker model)", "native",
                                    body=_body(_ref("RerankRequest")), ok=_json(_ref("RerankResponse")),
                                    errors=infer)},
        "/api/tokenize": {"post": _op("Text to the model's token ids", "native", body=_body(_ref("TokenizeRequest")),
                                      ok=_json(_ref("TokenizeResponse")), errors=infer)},
        "/api/detokenize": {"post": _op("Token ids to text", "native", body=_body(_ref("DetokenizeRequest")),
                                        ok=_json(_ref("DetokenizeResponse")), errors=infer)},
        "/api/tags": {"get": _op("List local models", "models", ok=_json(_ref("ModelList")), errors=(401, 500)),
                      "head": _op("List local models", "models", errors=(401,))},
        "/api/show": {"post": _op("Show a model", "models", body=_body(_ref("ModelRequest")),
                                  ok=_json(_ref("ShowResponse")), errors=(400, 401, 404, 413, 500))},
        "/api/create": {"post": _op("Create a model from uploaded blobs or another model", "models",
                                    body=_body(_ref("CreateRequest")),
                                    ok={"description": "Progress", "content": {
                                        "application/json": {"schema": _ref("Status")}, **ndjson}},
                                    errors=(400, 401, 404, 413, 500))},
        "/api/blobs/{digest}": {
            "head": _op("Whether a blob exists", "models", params=digest_param, errors=(400, 401, 404)),
            "post": _op("Upload a blob (streamed to disk, verified against the digest)", "models",
                        params=digest_param,
                        body={"required": True, "content": {"application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}}}},
                        ok={"description": "Already present"}, errors=(400, 401, 500)) | {
                "responses": {"201": {"description": "Stored"}, "200": {"description": "Stored"},
                              "400": _error("Bad digest or digest mismatch"), "401": _error("Unauthorized"),
                              "500": _error("Storage failure (e.g. disk full)")}},
        },
        "/api/copy": {"post": _op("Copy a model", "models", body=_body(_ref("CopyRequest")),
                                  errors=(400, 401, 404, 413))},
        "/api/delete": {"delete": _op("Delete a model", "models", body=_body(_ref("ModelRequest")),
                                      errors=(400, 401, 404, 413))},
        "/api/pull": {"post": _op("Pull a model from a registry", "models", body=_body(_ref("PullRequest")),
                                  ok={"description": "Progress", "content": {
                                      "application/json": {"schema": _ref("Status")}, **ndjson}},
                                  errors=(400, 401, 404, 413, 500))},
        "/api/push": {"post": _op("Push a model to a registry", "models", body=_body(_ref("PullRequest")),
                                  ok={"description": "Progress", "content": {
                                      "application/json": {"schema": _ref("Status")}, **ndjson}},
                                  errors=(400, 401, 404, 413, 500))},
        "/api/ps": {"get": _op("Loaded models", "models", ok=_json(_ref("ModelList")), errors=(401,))},
        "/v1/chat/completions": {"post": _op("OpenAI chat completions", "openai",
                                             body=_body(_ref("OpenAIChatRequest")),
                                             ok={"description": "OK", "content": {
                                                 "application/json": {"schema": {"type": "object"}}, **sse}},
                                             errors=infer)},
        "/v1/completions": {"post": _op("OpenAI completions", "openai", body=_body(_ref("OpenAICompletionRequest")),
                                        ok={"description": "OK", "content": {
                                            "application/json": {"schema": {"type": "object"}}, **sse}},
                                        errors=infer)},
        "/v1/embeddings": {"post": _op("OpenAI embeddings", "openai", body=_body(_ref("OpenAIEmbeddingRequest")),
                                       ok=_json({"type": "object"}), errors=infer)},
        "/v1/rerank": {"post": _op("Rerank (Jina/Cohere shape, as llama-server's)", "openai",
                                   body=_body(_ref("RerankRequest")), ok=_json(_ref("RerankResponse")),
                                   errors=infer)},
        "/v1/models": {"get": _op("OpenAI model list", "openai", ok=_json(_obj({
            "object": {"type": "string"}, "data": {"type": "array", "items": _ref("OpenAIModel")}})), errors=(401,))},
        "/v1/models/{model}": {"get": _op("OpenAI model", "openai", params=model_param,
                                          ok=_json(_ref("OpenAIModel")), errors=(400, 401, 404))},
        "/v1/responses": {"post": _op("OpenAI Responses API", "openai", body=_body(_ref("ResponsesRequest")),
                                      ok={"description": "OK", "content": {
                                          "application/json": {"schema": {"type": "object"}}, **sse}},
                                      errors=infer)},
        "/v1/messages": {"post": _op("Anthropic Messages API", "anthropic",
                                     body=_body(_ref("AnthropicMessagesRequest")),
                                     ok={"description": "OK", "content": {
                                         "application/json": {"schema": {"type": "object"}}, **sse}},
                                     errors=infer)},
        "/metrics": {"get": _op("Prometheus metrics", "operations", errors=(401,), ok={
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}})},
        "/openapi.json": {"get": _op("This description", "operations", errors=(401,),
                                     ok=_json({"type": "object"}))},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "lm", "version": __version__,
                 "description": "A local model runner with Ollama's API, plus OpenAI- and Anthropic-compatible "
                                "routes. Limits stated here are this daemon's (LM_MAX_* settings)."},
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(s),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Needed only when the daemon has LM_API_KEYS or LM_API_KEYS_FILE set"}},
        },
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app["openapi_spec"])


__all__ = ["build_spec", "openapi_handler"]
