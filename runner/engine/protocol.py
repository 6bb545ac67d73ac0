"""The one contract between the daemon and a runner process: how a runner is launched, and what a
completion request and its streamed records are.

Both sides import this module (the daemon to start a runner and read its stream, the runner to parse
its arguments and write the stream), so every key and flag is spelled here and nowhere else. It
imports nothing of the daemon, the HTTP server or the CLI, and nothing of llama.cpp: the daemon loads
it without loading a model library.

Wire forms (unchanged by this module's introduction):
  argv              --model PATH --socket PATH --num-ctx N ... (LaunchConfig.to_argv / from_argv)
  POST /completion  {"prompt": str, "options": {SamplingOptions' fields}, "context"?: [int], "truncate"?: false,
                    "shift"?: false}
  its NDJSON lines  {"content": str, "logprobs"?: [...]} (a Piece), then one last line: a FinalRecord
                    {"done": true, "done_reason", counts, durations in ns, "context", draft counts when
                    the request speculated} or an ErrorRecord {"error": str}
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields

import orjson

from modelfiles.options import DEFAULT_OPTIONS

from runner.engine.speculative import DEFAULT_MAX_SEQUENCES, check_options as check_draft_options


class ProtocolError(ValueError):
    """A launch argument, request or record that is not this protocol's: an unknown or missing key, or
    a value of the wrong type."""


# -- launching a runner ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LaunchConfig:
    """Every setting a runner process starts with, each under one name: the field's. Its command-line
    flag is the name with dashes (`num_ctx` is `--num-ctx`); a flag-only boolean is `--name` where it
    defaults to false and `--no-name` where it defaults to true; a tuple is its flag once per item.
    The names of Ollama's load-time options (num_ctx, num_batch, num_thread, main_gpu, use_mmap) are
    theirs."""

    model: str  # the GGUF file
    socket: str = ""  # the Unix socket the runner serves on (required on a command line)
    daemon_pid: int = 0  # the daemon's pid: the runner dies with it
    num_ctx: int = 2048  # context length per sequence (slot)
    parallel: int = 4  # slots: sequences decoded together
    num_batch: int = 512  # tokens per llama_decode (and micro-batch)
    gpu_layers: int = 0
    main_gpu: int = 0  # with split_mode "none": the one GPU used (-1: none)
    # "none": one GPU; "layer": whole layers (and their KV) spread over the GPUs by tensor_split
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] = ()  # share per CUDA device, by ordinal; () lets llama.cpp split by free memory
    num_thread: int = 0  # 0: all cores
    flash_attn: str = "auto"  # "auto", "on", "off"
    kv_type: str = "f16"
    use_mmap: bool = True  # weights mapped from the file (false: read into memory)
    # llama.cpp's extra CPU buffer types (weights repacked for Q4_0, Q4_K, IQ4_NL, ...): faster batched
    # kernels, but a row's result then depends on how many rows are computed with it (a four-row kernel
    # beside the one-row one), so a sequence's text would depend on the others in its batch. Off where
    # lm promises batch invariance (the CPU: LM_BATCH_INVARIANT).
    repack: bool = True
    # An embedding model (BERT and kin): no generation context at all; embeddings get their own.
    embedding_only: bool = False
    # The slots split over this many contexts (each its own KV cache and compute buffers), so that the
    # engine can sample one group's step while the GPU computes another's (runner/engine/batch.py).
    contexts: int = 1
    # ggml RPC workers (host:port) whose devices take part, after this host's GPUs (runner/ggml/rpc_client.py)
    rpc_workers: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()  # GGUF LoRA adapters, applied in this order
    mixed_prefill: bool = False  # mix prefill chunks into decode steps (GPU: throughput over batch invariance)
    # Speculative decoding only while a group decodes at most this many sequences (LM_SPEC_MAX_SEQUENCES)
    spec_max_sequences: int = DEFAULT_MAX_SEQUENCES
    profile_every: int = 0  # LM_ENGINE_PROFILE: a line on stderr every this many engine steps (0: off)

    def to_argv(self) -> list[str]:
        """The runner's command-line arguments (after `python -m runner.engine`)."""
        argv: list[str] = []
        for f, kind, item in _launch_fields():
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if kind is bool:
                if value != f.default:
                    argv.append(flag if value else "--no-" + flag[2:])
            elif kind is tuple:
                for v in value:
                    argv += [flag, _format(item, v)]
            else:
                argv += [flag, _format(kind, value)]
        return argv

    @classmethod
    def from_argv(cls, argv: list[str]) -> "LaunchConfig":
        """The config `to_argv` wrote. ProtocolError for an unknown flag, a missing value, a value of the
        wrong type or a missing --model or --socket."""
        flags: dict[str, tuple] = {}
        for f, kind, item in _launch_fields():
            name = "--" + f.name.replace("_", "-")
            if kind is bool:
                flags["--no-" + name[2:] if f.default else name] = (f, kind, item)
            else:
                flags[name] = (f, kind, item)
        values: dict[str, object] = {}
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg not in flags:
                raise ProtocolError(f"unknown runner argument {arg!r}")
            f, kind, item = flags[arg]
            if kind is bool:
                values[f.name] = not f.default
                i += 1
                continue
            if i + 1 >= len(argv):
                raise ProtocolError(f"runner argument {arg} needs a value")
            raw = argv[i + 1]
            if kind is tuple:
                values[f.name] = values.get(f.name, ()) + (_parse(arg, item, raw),)
            else:
                values[f.name] = _parse(arg, kind, raw)
            i += 2
        missing = [n for n in ("model", "socket") if not values.get(n)]
        if missing:
            raise ProtocolError("missing runner argument(s): " + ", ".join("--" + n for n in missing))
        if values.get("split_mode", "layer") not in SPLIT_MODES:
            raise ProtocolError(f"--split-mode must be one of {', '.join(SPLIT_MODES)}; got {values['split_mode']!r}")
        return cls(**values)


SPLIT_MODES = ("none", "layer", "row")


def _launch_fields() -> list[tuple]:
    """(field, kind, item kind) of each LaunchConfig field: kind is int, float, str, bool or tuple (of
    `item`)."""
    global _FIELDS
    if _FIELDS is None:
        hints = typing.get_type_hints(LaunchConfig)
        out = []
        for f in fields(LaunchConfig):
            hint = hints[f.name]
            if typing.get_origin(hint) is tuple:
                out.append((f, tuple, typing.get_args(hint)[0]))
            else:
                out.append((f, hint, None))
        _FIELDS = out
    return _FIELDS


_FIELDS: list[tuple] | None = None


def _format(kind: type, value: object) -> str:
    return repr(value) if kind is float else str(value)


def _parse(flag: str, kind: type, raw: str) -> object:
    try:
        return kind(raw)
    except ValueError:
        raise ProtocolError(f"runner argument {flag} takes {kind.__name__} values; got {raw!r}") from None


# -- a completion request -------------------------------------------------------------------------

# Every default is Ollama's, from the one table the Modelfile parser and the server use too.
_D = DEFAULT_OPTIONS


@dataclass
class SamplingOptions:
    """One request's sampling and stopping options, as the engine runs them."""

    temperature: float = _D["temperature"]
    top_k: int = _D["top_k"]
    top_p: float = _D["top_p"]
    min_p: float = _D["min_p"]
    typical_p: float = _D["typical_p"]
    repeat_last_n: int = _D["repeat_last_n"]
    repeat_penalty: float = _D["repeat_penalty"]
    presence_penalty: float = _D["presence_penalty"]
    frequency_penalty: float = _D["frequency_penalty"]
    seed: int = _D["seed"]
    grammar: str | None = None
    num_predict: int = _D["num_predict"]
    num_keep: int = _D["num_keep"]
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False  # report each sampled token's logprob (runner/engine/logprobs.py)
    top_logprobs: int = 0  # and this many most likely alternatives per token
    draft_type: str = ""  # speculative decoding's draft source: "ngram", or off (speculative.py)
    draft_num_predict: int = _D["draft_num_predict"]  # the most tokens it proposes per step (0 is off)

    @classmethod
    def from_options(cls, options: dict) -> "SamplingOptions":
        """From a request's typed options (modelfiles.validate_options over the model's parameters): the
        names that are not sampling options (num_ctx, num_gpu, ...) and nulls are left out. ValueError
        for a draft option the engine cannot honour."""
        known = {k: v for k, v in options.items() if k in cls.__dataclass_fields__ and v is not None}
        if "stop" in known and isinstance(known["stop"], str):
            known["stop"] = [known["stop"]]
        opts = cls(**known)
        check_draft_options(opts.draft_type, opts.draft_num_predict)
        return opts

    @classmethod
    def from_dict(cls, obj: object) -> "SamplingOptions":
        """The wire form (every field, as `asdict` writes it) back; ProtocolError for unknown names or
        values of the wrong type."""
        if not isinstance(obj, dict):
            raise ProtocolError("options must be an object")
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise ProtocolError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        for name, value in obj.items():
            if not _OPTION_CHECKS[name](value):
                raise ProtocolError(f"sampling option {name!r} has a value of the wrong type: {value!r}")
        try:
            return cls.from_options(obj)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None

    def chain_key(self) -> tuple:
        """What the sampler chain is built from: two requests with equal keys can share one chain,
        reset between them (a reset chain samples exactly as a new one would)."""
        return (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p, self.repeat_last_n,
                self.repeat_penalty, self.presence_penalty, self.frequency_penalty, self.seed, self.grammar)


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _is_ints(v: object) -> bool:
    return isinstance(v, list) and all(type(t) is int for t in v)


def _is_number(v: object) -> bool:
    return type(v) in (int, float)


_OPTION_CHECKS = {
    **{name: _is_int for name in ("top_k", "repeat_last_n", "seed", "num_predict", "num_keep", "top_logprobs",
                                  "draft_num_predict")},
    **{name: _is_number for name in ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                                     "presence_penalty", "frequency_penalty")},
    "grammar": lambda v: v is None or isinstance(v, str),
    "stop": lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
    "logprobs": _is_bool,
    "draft_type": _is_str,
}
assert set(_OPTION_CHECKS) == set(SamplingOptions.__dataclass_fields__)


def _object(data: bytes | str | dict, what: str) -> dict:
    if isinstance(data, dict):
        return data
    if not isinstance(data, (bytes, bytearray, memoryview, str)):  # a JSON answer of another shape
        raise ProtocolError(f"{what} must be a JSON object")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return obj


def _check_keys(obj: dict, what: str, required: frozenset, optional: frozenset = frozenset()) -> None:
    missing = required - obj.keys()
    if missing:
        raise ProtocolError(f"{what} lacks {', '.join(sorted(missing))}")
    unknown = obj.keys() - required - optional
    if unknown:
        raise ProtocolError(f"{what} has unknown key(s) {', '.join(sorted(unknown))}")


def _token_ids(value: object, what: str) -> list[int]:
    if not _is_ints(value):
        raise ProtocolError(f"{what} must be a list of token ids")
    return value


@dataclass
class CompletionRequest:
    """POST /completion: the prompt text, its options, and the token ids of a conversation it continues
    (/api/generate's `context`: the prompt then follows them, without a BOS of its own)."""

    prompt: str
    options: SamplingOptions = field(default_factory=SamplingOptions)
    context: list[int] = field(default_factory=list)
    # Ollama's request fields (runner/engine/context_limit.py): a prompt longer than the context is cut
    # (else refused, 400), and a full context shifts (else generation stops with done_reason "length").
    truncate: bool = True
    shift: bool = True

    def to_json(self) -> bytes:
        obj: dict = {"prompt": self.prompt, "options": asdict(self.options)}
        if self.context:
            obj["context"] = self.context
        if not self.truncate:  # written only when off: the common request's line stays as it was
            obj["truncate"] = False
        if not self.shift:
            obj["shift"] = False
        return orjson.dumps(obj)

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> "CompletionRequest":
        obj = _object(data, "a completion request")
        _check_keys(obj, "a completion request", frozenset({"prompt", "options"}),
                    frozenset({"context", "truncate", "shift"}))
        if not isinstance(obj["prompt"], str):
            raise ProtocolError("prompt must be a string")
        for flag in ("truncate", "shift"):
            if flag in obj and not _is_bool(obj[flag]):
                raise ProtocolError(f"a completion request's {flag} must be a boolean")
        return cls(obj["prompt"], SamplingOptions.from_dict(obj["options"]),
                   _token_ids(obj.get("context") or [], "context"), obj.get("truncate", True), obj.get("shift", True))


# -- what comes back ------------------------------------------------------------------------------

@dataclass(slots=True)
class Piece:
    """A streamed chunk of the answer's text, with the logprobs of the tokens it came from (when the
    request asked for them: runner/engine/logprobs.py's entries)."""

    content: str
    logprobs: list[dict] | None = None

    def to_json(self) -> bytes:
        if self.logprobs:
            return orjson.dumps({"content": self.content, "logprobs": self.logprobs})
        return b'{"content":' + orjson.dumps(self.content) + b"}"  # the common case, without a dict

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> "Piece":
        obj = _object(data, "a piece")
        _check_keys(obj, "a piece", _PIECE_KEYS, _PIECE_OPTIONAL)
        content, logprobs = obj["content"], obj.get("logprobs")
        if not isinstance(content, str) or not (logprobs is None or isinstance(logprobs, list)):
            raise ProtocolError("a piece's content must be a string and its logprobs a list")
        return cls(content, logprobs)


_PIECE_KEYS, _PIECE_OPTIONAL = frozenset({"content"}), frozenset({"logprobs"})


@dataclass
class FinalRecord:
    """The last line of a completion that ended well: why it ended, its counts and durations (ns), the
    tokens of the whole conversation (/api/generate's `context`), and, for a request that speculated,
    how many tokens were drafted and how many of those accepted."""

    done_reason: str | None
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    context: list[int] = field(default_factory=list)
    draft_count: int | None = None  # None: the request did not speculate (the keys are then left out)
    draft_accepted_count: int | None = None

    def to_json(self) -> bytes:
        obj = {"done": True, **asdict(self)}
        if self.draft_count is None:
            del obj["draft_count"], obj["draft_accepted_count"]
        return orjson.dumps(obj)

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> "FinalRecord":
        obj = _object(data, "a final record")
        _check_keys(obj, "a final record", _FINAL_KEYS, _FINAL_OPTIONAL)
        if obj["done"] is not True:
            raise ProtocolError("a final record must have done: true")
        counts = [obj[k] for k in _FINAL_COUNTS] + [obj[k] for k in _FINAL_OPTIONAL if k in obj]
        if not all(type(v) is int for v in counts):
            raise ProtocolError("a final record's counts and durations must be integers")
        if not (obj["done_reason"] is None or isinstance(obj["done_reason"], str)):
            raise ProtocolError("done_reason must be a string")
        return cls(obj["done_reason"], *(obj[k] for k in _FINAL_COUNTS), _token_ids(obj["context"], "context"),
                   obj.get("draft_count"), obj.get("draft_accepted_count"))


_FINAL_COUNTS = ("prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")
_FINAL_KEYS = frozenset({"done", "done_reason", "context", *_FINAL_COUNTS})
_FINAL_OPTIONAL = frozenset({"draft_count", "draft_accepted_count"})


@dataclass
class ErrorRecord:
    """The last line of a completion the engine could not finish (the pieces before it stand)."""

    error: str

    def to_json(self) -> bytes:
        return orjson.dumps({"error": self.error})

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> "ErrorRecord":
        obj = _object(data, "an error record")
        _check_keys(obj, "an error record", frozenset({"error"}))
        if not isinstance(obj["error"], str):
            raise ProtocolError("an error record's error must be a string")
        return cls(obj["error"])


Record = typing.Union[Piece, FinalRecord, ErrorRecord]


def record_from_json(data: bytes | str | dict) -> Record:
    """One line of a completion stream, as the type its keys say it is."""
    obj = _object(data, "a completion record")
    if "content" in obj:
        return Piece.from_json(obj)
    if "error" in obj:
        return ErrorRecord.from_json(obj)
    if "done" in obj:
        return FinalRecord.from_json(obj)
    raise ProtocolError(f"not a completion record: keys {', '.join(sorted(obj)) or 'none'}")


def is_last(record: Record) -> bool:
    """Whether `record` ends its stream (a final or an error record)."""
    return not isinstance(record, Piece)


# -- the other routes: tokenize, detokenize, embed, rerank ----------------------------------------
# Each type checks its keys and their JSON types; what needs the model (token ids in its vocabulary, an
# input it can take) is the runner's to check, with its own messages.

def _is_strs(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(t, str) for t in v)


def _is_numbers(v: object) -> bool:
    return isinstance(v, list) and all(type(t) in (int, float) for t in v)


def _is_list(v: object) -> bool:
    return isinstance(v, list)


_KINDS = {_is_bool: "a boolean", _is_str: "a string", _is_int: "an integer", _is_ints: "a list of integers",
          _is_strs: "a list of strings", _is_numbers: "a list of numbers", _is_list: "a list"}


class _Message:
    """A JSON object of fixed keys: `_checks` gives each field's check (see _KINDS); fields without a
    default are required."""

    _what: typing.ClassVar[str]
    _checks: typing.ClassVar[dict]

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str | dict):
        obj = _object(data, cls._what)
        names = {f.name: f for f in fields(cls)}
        required = frozenset(n for n, f in names.items()
                             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        _check_keys(obj, cls._what, required, frozenset(names) - required)
        for name, value in obj.items():
            check = cls._checks[name]
            if not check(value):
                raise ProtocolError(f"{cls._what}'s {name} must be {_KINDS[check]}")
        return cls(**obj)


@dataclass
class TokenizeRequest(_Message):
    """POST /tokenize: a text's token ids (with the BOS and such where `add_special`)."""

    content: str
    add_special: bool = True
    _what = "a tokenize request"
    _checks = {"content": _is_str, "add_special": _is_bool}


@dataclass
class TokenizeResult(_Message):
    tokens: list[int]
    _what = "a tokenize answer"
    _checks = {"tokens": _is_ints}


@dataclass
class DetokenizeRequest(_Message):
    """POST /detokenize: token ids back to text, special tokens written out."""

    tokens: list[int]
    _what = "a detokenize request"
    _checks = {"tokens": _is_ints}


@dataclass
class DetokenizeResult(_Message):
    content: str
    _what = "a detokenize answer"
    _checks = {"content": _is_str}


@dataclass
class EmbedRequest(_Message):
    """POST /embed: inputs (texts, or token ids) to embed; `truncate` cuts one too long for the context
    instead of refusing it."""

    input: list
    truncate: bool = True
    _what = "an embed request"
    _checks = {"input": _is_list, "truncate": _is_bool}


@dataclass
class EmbedResult(_Message):
    """The raw (unnormalised) embeddings: `vectors` is the base64 of float32 little-endian rows, one of
    `dims` per input; `counts` the token count of each input; the compute time in ns."""

    dims: int
    vectors: str
    counts: list[int]
    prompt_eval_duration: int
    _what = "an embed answer"
    _checks = {"dims": _is_int, "vectors": _is_str, "counts": _is_ints, "prompt_eval_duration": _is_int}


@dataclass
class RerankRequest(_Message):
    """POST /rerank: the relevance of each document to the query."""

    query: str
    documents: list[str]
    truncate: bool = True
    _what = "a rerank request"
    _checks = {"query": _is_str, "documents": _is_strs, "truncate": _is_bool}


@dataclass
class RerankResult(_Message):
    """Each (query, document) pair's score (its first classifier output) and token count; the compute time
    in ns."""

    scores: list[float]
    counts: list[int]
    prompt_eval_duration: int
    _what = "a rerank answer"
    _checks = {"scores": _is_numbers, "counts": _is_ints, "prompt_eval_duration": _is_int}


__all__ = ["ProtocolError", "LaunchConfig", "SPLIT_MODES", "SamplingOptions", "CompletionRequest", "Piece",
           "FinalRecord", "ErrorRecord", "Record", "record_from_json", "is_last", "TokenizeRequest", "TokenizeResult",
           "DetokenizeRequest", "DetokenizeResult", "EmbedRequest", "EmbedResult", "RerankRequest", "RerankResult"]
