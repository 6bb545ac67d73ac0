"""Fields and routes an Ollama or OpenAI client expects, through the real daemon and real models:
/api/tokenize and /api/detokenize, /api/tags' capabilities and context length, load_duration, Ollama's
default options in the engine, its refusals and wording for a suffix and for a missing model."""

from __future__ import annotations

import ollama
import openai
import pytest

from modelfiles.options import DEFAULT_OPTIONS

SUFFIX_TEMPLATE = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
THINK_TEMPLATE = "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}" \
                 "{{ end }}{{ if .Think }}{{ end }}"
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def extra_models(daemon, smollm2_path) -> dict[str, str]:
    daemon.create_from_gguf("fields-insert", smollm2_path, template=SUFFIX_TEMPLATE)
    daemon.create_from_gguf("fields-think", smollm2_path, template=THINK_TEMPLATE)
    daemon.create_from_gguf("g270", smollm2_path)  # a name without a tag
    return {"insert": "fields-insert", "think": "fields-think", "untagged": "g270"}


# ----------------------------------------------------------------------------- tokenize / detokenize
def test_tokenize_detokenize_round_trip(daemon, smollm2):
    text = "Why is the sky blue? Ünïcödé ☀"
    status, body = daemon.post("/api/tokenize", {"model": smollm2, "content": text})
    assert status == 200 and body["model"] == smollm2
    tokens = body["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert daemon.post("/api/detokenize", {"model": smollm2, "tokens": tokens}) == \
        (200, {"model": smollm2, "content": text})
    # Special tokens in the text are read as such, and written out again
    status, body = daemon.post("/api/tokenize", {"model": smollm2, "content": "<|im_start|>user"})
    special = body["tokens"]
    assert len(special) == 2
    assert daemon.post("/api/detokenize", {"model": smollm2, "tokens": special})[1]["content"] == "<|im_start|>user"


def test_tokenize_counts_what_generate_counts(daemon, smollm2):
    """A raw prompt's prompt_eval_count is its tokens with the model's special ones (add_special)."""
    prompt = "The quick brown fox jumps over the lazy dog."
    tokens = daemon.post("/api/tokenize", {"model": smollm2, "content": prompt, "add_special": True})[1]["tokens"]
    status, out = daemon.post("/api/generate", {"model": smollm2, "prompt": prompt, "raw": True, "stream": False,
                                                "options": {"num_predict": 1, "temperature": 0}})
    assert status == 200 and out["prompt_eval_count"] == len(tokens)


def test_tokenize_errors(daemon, smollm2):
    assert daemon.post("/api/tokenize", {"model": smollm2}) == (400, {"error": "content is required"})
    assert daemon.post("/api/tokenize", {"model": smollm2, "content": 5})[0] == 400
    assert daemon.post("/api/detokenize", {"model": smollm2, "tokens": "x"})[0] == 400
    assert daemon.post("/api/detokenize", {"model": smollm2, "tokens": [1.5]})[0] == 400
    status, body = daemon.post("/api/detokenize", {"model": smollm2, "tokens": [10**9]})
    assert status == 400 and "token ids" in body["error"]
    # beyond 64 bits: no JSON the runner protocol can carry (found by test_fuzz), refused before it
    assert daemon.post("/api/detokenize", {"model": smollm2, "tokens": [2**70]}) == \
        (400, {"error": "tokens must be a list of token ids"})
    assert daemon.post("/api/tokenize", {"model": "nope", "content": "x"}) == \
        (404, {"error": "model 'nope' not found"})
    spec = daemon.get("/openapi.json")[1]["paths"]
    assert "/api/tokenize" in spec and "/api/detokenize" in spec


# ----------------------------------------------------------------------------- /api/tags
def test_tags_carry_capabilities_and_context_length(daemon, smollm2, extra_models):
    # Raw JSON: the ollama package (0.6) does not model these two fields yet
    listed = {m["name"]: m for m in daemon.get("/api/tags")[1]["models"]}
    for name in (smollm2, "fields-think:latest", "fields-insert:latest"):
        show = daemon.post("/api/show", {"model": name})[1]
        entry = listed[name]
        assert entry["capabilities"] == show["capabilities"]
        arch = show["model_info"]["general.architecture"]
        assert entry["details"]["context_length"] == show["model_info"][f"{arch}.context_length"] == 8192
        assert entry["details"]["embedding_length"] == show["model_info"][f"{arch}.embedding_length"] == 576
    assert listed["fields-think:latest"]["capabilities"] == ["completion", "thinking"]
    assert listed["fields-insert:latest"]["capabilities"] == ["completion", "insert"]
    assert listed[smollm2]["capabilities"] == ["completion"]


# ----------------------------------------------------------------------------- load_duration
def test_load_duration_is_never_zero(daemon, smollm2):
    client = ollama.Client(host=daemon.url)
    for _ in range(2):  # the first may load the model; the second finds it loaded
        out = client.generate(model=smollm2, prompt="hi", options=GREEDY)
        assert out.load_duration > 0
        chat = client.chat(model=smollm2, messages=[{"role": "user", "content": "hi"}], options=GREEDY)
        assert chat.load_duration > 0
    streamed = list(client.generate(model=smollm2, prompt="hi", options=GREEDY, stream=True))
    assert streamed[-1].done and streamed[-1].load_duration > 0


# ----------------------------------------------------------------------------- default options
def test_engine_samples_with_ollamas_defaults(daemon, smollm2):
    """No repeat_penalty given is Ollama's 1.0 (no penalty), not 1.1: a greedy answer that repeats
    itself is the same as with 1.0 given, and differs from 1.1's."""
    prompt = "List of fruits: apple, banana,"  # smollm2 repeats lemon, orange... unless penalised

    def answer(**extra) -> str:
        status, out = daemon.post("/api/generate", {"model": smollm2, "prompt": prompt, "stream": False,
                                                    "options": {"temperature": 0, "num_predict": 40, **extra}})
        assert status == 200, out
        return out["response"]

    default = answer()
    assert default == answer(repeat_penalty=DEFAULT_OPTIONS["repeat_penalty"]) == answer(repeat_penalty=1.0)
    assert answer(repeat_penalty=1.1) != default  # the penalty matters on this prompt: the test can fail


def test_engine_defaults_are_the_one_table():
    from runner.engine.sampling import SamplingOptions

    defaults = SamplingOptions()
    for name in SamplingOptions.__dataclass_fields__:
        if name in DEFAULT_OPTIONS:
            assert getattr(defaults, name) == DEFAULT_OPTIONS[name], name
    assert defaults.repeat_penalty == 1.0


# ----------------------------------------------------------------------------- refusals and wording
def test_suffix_needs_the_insert_capability(daemon, smollm2, extra_models):
    status, body = daemon.post("/api/generate", {"model": smollm2, "prompt": "def add(", "suffix": "return x"})
    assert (status, body) == (400, {"error": "registry.ollama.ai/library/smollm2:135m does not support insert"})
    oai = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError) as exc:
        oai.completions.create(model=smollm2, prompt="def add(", suffix="return x", max_tokens=4)
    assert "does not support insert" in exc.value.body["message"]
    status, body = daemon.post("/api/generate", {"model": extra_models["insert"], "prompt": "def add(",
                                                 "suffix": "return x", "stream": False, "options": GREEDY})
    assert status == 200 and body["done"]


def test_missing_model_is_named_as_asked(daemon):
    """Ollama's words (server/routes.go): the name as the client gave it, not with :latest added."""
    expected = {"error": "model 'nope' not found"}
    for path, body in (("/api/show", {"model": "nope"}), ("/api/generate", {"model": "nope", "prompt": "x"}),
                       ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/embed", {"model": "nope", "input": "x"})):
        assert daemon.post(path, body) == (404, expected), path
    assert daemon.request("DELETE", "/api/delete", {"model": "nope"}) == (404, expected)
    assert daemon.post("/api/copy", {"source": "nope", "destination": "other"}) == \
        (404, {"error": 'model "nope" not found'})
    with pytest.raises(ollama.ResponseError) as exc:
        ollama.Client(host=daemon.url).chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404 and exc.value.error == "model 'nope' not found"


def test_openai_model_id_echoes_the_name_asked(daemon, extra_models):
    oai = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused")
    assert oai.models.retrieve("g270").id == "g270"
    assert oai.models.retrieve("g270:latest").id == "g270:latest"
