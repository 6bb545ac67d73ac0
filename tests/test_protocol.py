"""The daemon-runner contract (runner/engine/protocol.py): each message's wire form round trips, the
daemon's launch settings reach the runner as the same config, and what is not the protocol's is refused
with a message that names it. Pure logic, except one real runner process started with a bad argument."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from modelfiles.options import DEFAULT_OPTIONS
from runner.engine.protocol import (CompletionRequest, DetokenizeRequest, DetokenizeResult, EmbedRequest, EmbedResult,
                                    ErrorRecord, FinalRecord, LaunchConfig, Piece, ProtocolError, RerankRequest,
                                    RerankResult, SamplingOptions, TokenizeRequest, TokenizeResult, is_last,
                                    record_from_json)

REPO = Path(__file__).resolve().parents[1]

# Every field away from its default: a round trip that dropped or mistyped one would show.
FULL_LAUNCH = LaunchConfig(
    model="/models/blobs/sha256-x", socket="/tmp/lm-runner-1/runner.sock", daemon_pid=1234, num_ctx=8192,
    parallel=8, num_batch=1024, gpu_layers=33, main_gpu=1, split_mode="row", tensor_split=(0.625, 0.375),
    num_thread=6, flash_attn="on", kv_type="q8_0", use_mmap=False, repack=False, embedding_only=True, contexts=2,
    rpc_workers=("10.0.0.2:50052", "10.0.0.3:50052"), adapters=("/a/one.gguf", "/a/two, with comma.gguf"),
    mixed_prefill=True, spec_max_sequences=0, profile_every=50,
)


def test_launch_config_round_trips_every_field():
    for field in dataclasses.fields(LaunchConfig):
        if field.name != "model":
            assert getattr(FULL_LAUNCH, field.name) != field.default, f"{field.name} is left at its default"
    assert LaunchConfig.from_argv(FULL_LAUNCH.to_argv()) == FULL_LAUNCH
    plain = LaunchConfig(model="m.gguf", socket="s")
    assert LaunchConfig.from_argv(plain.to_argv()) == plain


def test_launch_flags_are_the_field_names():
    argv = FULL_LAUNCH.to_argv()
    assert argv[argv.index("--num-ctx") + 1] == "8192"
    assert "--no-repack" in argv and "--no-use-mmap" in argv and "--mixed-prefill" in argv
    assert argv.count("--rpc-workers") == 2 and argv.count("--tensor-split") == 2
    # a boolean at its default is left out: the flag only says "not the default"
    assert "--mixed-prefill" not in LaunchConfig(model="m", socket="s").to_argv()


def _scheduler_launch(settings_changes: dict, placement_changes: dict, capabilities=("completion",),
                      options: dict | None = None) -> LaunchConfig:
    """The LaunchConfig the scheduler gives a runner for these settings and this placement (its client is
    made, not started)."""
    from runner.daemon.placement import Placement
    from runner.daemon.scheduler import Scheduler
    from runner.settings import Settings

    settings = dataclasses.replace(Settings.from_env(), **settings_changes)
    config = SimpleNamespace(model_path=Path("/models/blobs/sha256-abc"), parameters={"num_thread": 3},
                             capabilities=list(capabilities), adapters=[Path("/models/blobs/sha256-lora")],
                             display="test:latest")
    placement = Placement(**{"gpu_layers": 0, "n_layers": 30, "parallel": 4, "weights_bytes": 1, "kv_bytes": 4,
                             **placement_changes})
    client = Scheduler(settings)._runner(config, options or {}, placement, 4096)
    try:
        return client.launch
    finally:
        os.rmdir(client._dir)  # made for the socket; never used here


def test_scheduler_launch_reaches_the_runner_as_the_same_config(monkeypatch):
    gpu = _scheduler_launch({"pipeline": None, "batch_invariant": None},
                            {"gpu_layers": 31, "split_mode": "layer", "tensor_split": (0.5, 0.5), "main_gpu": 1},
                            options={"num_batch": 256, "use_mmap": False})
    assert (gpu.model, gpu.num_ctx, gpu.parallel, gpu.gpu_layers, gpu.tensor_split) == (
        "/models/blobs/sha256-abc", 4096, 4, 31, (0.5, 0.5))
    assert gpu.mixed_prefill and gpu.contexts == 2 and gpu.repack
    assert (gpu.num_thread, gpu.num_batch, gpu.use_mmap) == (3, 256, False)
    assert gpu.adapters == ("/models/blobs/sha256-lora",)
    assert gpu.socket.endswith("runner.sock") and gpu.daemon_pid == os.getpid()
    cpu = _scheduler_launch({"batch_invariant": None, "pipeline": None}, {}, capabilities=("embedding",))
    assert not cpu.repack and cpu.embedding_only and not cpu.mixed_prefill and cpu.contexts == 1

    # The runner's own entry point reads its command line back to the same config.
    from runner.engine import __main__ as runner_main

    for launch in (gpu, cpu):
        monkeypatch.setattr(sys, "argv", ["runner.engine", *launch.to_argv()])
        assert runner_main._config() == launch


@pytest.mark.parametrize("argv, message", [
    (["--model", "m", "--socket", "s", "--ctx", "2048"], "unknown runner argument '--ctx'"),
    (["--model", "m", "--socket", "s", "--num-ctx"], "--num-ctx needs a value"),
    (["--model", "m", "--socket", "s", "--num-ctx", "big"], "--num-ctx takes int values; got 'big'"),
    (["--model", "m", "--socket", "s", "--tensor-split", "x"], "--tensor-split takes float values"),
    (["--socket", "s"], "missing runner argument(s): --model"),
    (["--model", "m", "--no-mixed-prefill"], "unknown runner argument '--no-mixed-prefill'"),
    (["--model", "m"], "missing runner argument(s): --socket"),
    (["--model", "m", "--socket", "s", "--split-mode", "diagonal"], "--split-mode must be one of none, layer, row"),
])
def test_launch_argv_refusals(argv, message):
    with pytest.raises(ProtocolError) as exc:
        LaunchConfig.from_argv(argv)
    assert message in str(exc.value)


def test_runner_refuses_a_bad_command_line_with_an_error_line():
    """The daemon reports a runner's last "error:" line: a bad argument must give one, not a traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "runner.engine", "--model", "m", "--socket", "s", "--bogus"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: unknown runner argument '--bogus'"


def test_sampling_defaults_are_ollamas_table():
    defaults = SamplingOptions()
    shared = [name for name in SamplingOptions.__dataclass_fields__ if name in DEFAULT_OPTIONS]
    assert len(shared) >= 12
    for name in shared:
        assert getattr(defaults, name) == DEFAULT_OPTIONS[name], name


def test_completion_request_round_trips():
    options = SamplingOptions(temperature=0.2, top_k=7, seed=3, stop=["\n\n", "User:"], grammar="root ::= \"x\"",
                              logprobs=True, top_logprobs=2, draft_type="ngram", draft_num_predict=6)
    request = CompletionRequest("Why is the sky blue?", options, [1, 2, 3])
    assert CompletionRequest.from_json(request.to_json()) == request
    bare = CompletionRequest("hi")
    wire = orjson.loads(bare.to_json())
    assert "context" not in wire and wire["options"] == dataclasses.asdict(SamplingOptions())
    assert CompletionRequest.from_json(bare.to_json()) == bare


def test_completion_request_from_a_requests_options():
    """The daemon's options (the model's parameters and the request's, typed) carry load-time names too;
    those are not sampling options and stay behind."""
    opts = SamplingOptions.from_options({"num_ctx": 4096, "num_gpu": 99, "temperature": 0.0, "stop": "END",
                                         "seed": None})
    assert (opts.temperature, opts.stop, opts.seed) == (0.0, ["END"], DEFAULT_OPTIONS["seed"])
    with pytest.raises(ValueError, match="draft_type"):
        SamplingOptions.from_options({"draft_type": "eagle"})


@pytest.mark.parametrize("wire, message", [
    ({"options": {}}, "lacks prompt"),
    ({"prompt": "x"}, "lacks options"),
    ({"prompt": "x", "options": {}, "images": []}, "unknown key(s) images"),
    ({"prompt": 3, "options": {}}, "prompt must be a string"),
    ({"prompt": "x", "options": {"num_ctx": 2048}}, "unknown sampling option(s): num_ctx"),
    ({"prompt": "x", "options": {"top_k": "40"}}, "'top_k' has a value of the wrong type"),
    ({"prompt": "x", "options": {"top_k": True}}, "'top_k' has a value of the wrong type"),
    ({"prompt": "x", "options": {"draft_num_predict": 99}}, "draft_num_predict must be between 0 and"),
    ({"prompt": "x", "options": {}, "context": [1, "2"]}, "context must be a list of token ids"),
])
def test_completion_request_refusals(wire, message):
    with pytest.raises(ProtocolError) as exc:
        CompletionRequest.from_json(orjson.dumps(wire))
    assert message in str(exc.value)
    with pytest.raises(ProtocolError, match="not JSON"):
        CompletionRequest.from_json(b"{prompt")


def test_pieces_round_trip_in_the_runners_wire_form():
    assert Piece("hi \"there\"").to_json() == b'{"content":"hi \\"there\\""}'
    entry = {"token": "hi", "logprob": -0.25, "bytes": [104, 105], "top_logprobs": []}
    for piece in (Piece("hi"), Piece("", [entry]), Piece("ü", [entry, entry])):
        assert record_from_json(piece.to_json()) == piece
        assert not is_last(piece)


def test_final_records_round_trip_with_and_without_drafts():
    plain = FinalRecord("stop", 12, 3_000_000, 40, 90_000_000, [1, 5, 9])
    wire = orjson.loads(plain.to_json())
    assert wire == {"done": True, "done_reason": "stop", "prompt_eval_count": 12, "prompt_eval_duration": 3_000_000,
                    "eval_count": 40, "eval_duration": 90_000_000, "context": [1, 5, 9]}
    speculated = dataclasses.replace(plain, done_reason="length", draft_count=30, draft_accepted_count=21)
    assert orjson.loads(speculated.to_json())["draft_accepted_count"] == 21
    for record in (plain, speculated):
        assert record_from_json(record.to_json()) == record and is_last(record)


def test_error_records_round_trip():
    record = ErrorRecord("the engine stopped: out of memory")
    assert orjson.loads(record.to_json()) == {"error": "the engine stopped: out of memory"}
    assert record_from_json(record.to_json()) == record and is_last(record)


@pytest.mark.parametrize("wire, message", [
    ({"done": True, "done_reason": "stop", "eval_count": 1, "eval_duration": 1, "prompt_eval_duration": 1,
      "context": []}, "lacks prompt_eval_count"),
    ({"done": True, "done_reason": "stop", "prompt_eval_count": 1, "prompt_eval_duration": 1, "eval_count": 1.5,
      "eval_duration": 1, "context": []}, "counts and durations must be integers"),
    ({"done": True, "done_reason": "stop", "prompt_eval_count": 1, "prompt_eval_duration": 1, "eval_count": 1,
      "eval_duration": 1, "context": [], "total_duration": 5}, "unknown key(s) total_duration"),
    ({"content": "x", "thinking": "y"}, "unknown key(s) thinking"),
    ({"content": 5}, "content must be a string"),
    ({"error": "x", "status": 500}, "unknown key(s) status"),
    ({"response": "x"}, "not a completion record: keys response"),
    ([1, 2], "must be a JSON object"),
])
def test_record_refusals(wire, message):
    with pytest.raises(ProtocolError) as exc:
        record_from_json(orjson.dumps(wire))
    assert message in str(exc.value)


@pytest.mark.parametrize("message", [
    TokenizeRequest("Hello, world", add_special=False), TokenizeResult([1, 2, 3]), DetokenizeRequest([5, 6]),
    DetokenizeResult("hi"), EmbedRequest(["a text", [1, 2, 3]], truncate=False),
    EmbedResult(2, "AACAPwAAAEA=", [3], 1500), RerankRequest("query", ["doc one", "doc two"]),
    RerankResult([0.5, -1.25], [7, 9], 2000),
])
def test_route_messages_round_trip(message):
    assert type(message).from_json(message.to_json()) == message


def test_route_messages_keep_their_wire_keys():
    assert orjson.loads(TokenizeRequest("x").to_json()) == {"content": "x", "add_special": True}
    assert orjson.loads(EmbedRequest(["x"]).to_json()) == {"input": ["x"], "truncate": True}
    assert orjson.loads(RerankRequest("q", ["d"]).to_json()) == {"query": "q", "documents": ["d"], "truncate": True}
    assert set(orjson.loads(EmbedResult(1, "", [], 0).to_json())) == {"dims", "vectors", "counts",
                                                                      "prompt_eval_duration"}


@pytest.mark.parametrize("kind, wire, message", [
    (TokenizeRequest, {"content": 3}, "a tokenize request's content must be a string"),
    (TokenizeRequest, {}, "a tokenize request lacks content"),
    (DetokenizeRequest, {"tokens": [1, "2"]}, "a detokenize request's tokens must be a list of integers"),
    (EmbedRequest, {"input": "x", "truncate": True}, "an embed request's input must be a list"),
    (EmbedResult, {"dims": 3}, "an embed answer lacks counts, prompt_eval_duration, vectors"),
    (RerankRequest, {"query": "q", "documents": ["d"], "top_n": 1}, "a rerank request has unknown key(s) top_n"),
    (RerankResult, ["not", "an", "object"], "a rerank answer must be a JSON object"),
])
def test_route_message_refusals(kind, wire, message):
    with pytest.raises(ProtocolError) as exc:
        kind.from_json(wire if isinstance(wire, list) else orjson.dumps(wire))
    assert message in str(exc.value)
