"""Settings from the environment: `LM_<NAME>`, falling back to `OLLAMA_<NAME>` so existing setups work."""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def env(name: str, default: str | None = None) -> str | None:
    for prefix in ("LM_", "OLLAMA_"):
        value = os.environ.get(prefix + name)
        if value not in (None, ""):
            return value
    return default


def env_int(name: str, default: int) -> int:
    value = env(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise SystemExit(f"Error: LM_{name} must be an integer, got {value!r}") from None


def env_bool(name: str) -> bool:
    return (env(name) or "").strip().lower() in ("1", "true", "yes", "on")


_TRUE, _FALSE = ("1", "t", "true", "yes", "on"), ("0", "f", "false", "no", "off")


def env_tristate(name: str) -> bool | None:
    """True / False where set (Go's ParseBool spellings and on/off, yes/no), None where unset."""
    value = env(name)
    if value is None:
        return None
    text = value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise SystemExit(f"Error: LM_{name} must be true or false (1/0, on/off), got {value!r}")


KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")  # as Ollama's OLLAMA_KV_CACHE_TYPE


def kv_cache_settings(kv_type: str | None, flash: bool | None) -> tuple[str, str, str | None]:
    """(KV cache type, flash attention "on"/"off"/"auto", warning or None) for the runners.

    llama.cpp needs flash attention for a quantized V cache. As Ollama: a quantized cache with flash
    attention turned off falls back to f16 with a warning; with flash attention unset it turns it on.
    An unknown type is a startup error (SystemExit)."""
    kv = (kv_type or "f16").strip().lower()
    if kv not in KV_CACHE_TYPES:
        raise SystemExit(f"Error: LM_KV_CACHE_TYPE must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_type!r}")
    mode = "auto" if flash is None else "on" if flash else "off"
    if kv != "f16" and mode == "off":
        return "f16", mode, (f"LM_KV_CACHE_TYPE={kv} needs flash attention, which LM_FLASH_ATTENTION "
                             "turns off: using f16")
    if kv != "f16":
        mode = "on"
    return kv, mode, None


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(value: str) -> int:
    """Bytes from "1048576", "32MiB", "32MB", "1.5g". Raises ValueError."""
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"invalid size {value!r}")
    unit = (m.group(2) or "").lower().rstrip("b")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def env_size(name: str, default: int) -> int:
    value = env(name)
    try:
        return parse_size(value) if value is not None else default
    except ValueError:
        raise SystemExit(f"Error: LM_{name} must be a size in bytes (e.g. 32MiB), got {value!r}") from None


def env_duration(name: str, default: str) -> float:
    value = env(name, default)
    try:
        return parse_duration(value)
    except ValueError:
        raise SystemExit(f"Error: LM_{name} must be a duration (e.g. 10s, 5m), got {value!r}") from None


def env_list(name: str) -> tuple[str, ...]:
    """A comma-separated setting, spaces and quotes trimmed, empty items dropped."""
    return tuple(item.strip().strip("\"'").strip() for item in (env(name) or "").split(",")
                 if item.strip().strip("\"'").strip())


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# Durations are clamped to about 300 years: longer is "forever" for every use here, and the clamp keeps
# expiry times representable as dates.
MAX_DURATION_S = 1e10


def parse_duration(value) -> float:
    """Seconds from a number of seconds or a Go duration string ("5m", "1h30m", "-1"). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _DURATION_PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"invalid duration {value!r}") from None
            seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if math.isnan(seconds):
        raise ValueError(f"invalid duration {value!r}")
    return max(-MAX_DURATION_S, min(MAX_DURATION_S, seconds))


def parse_host(value: str | None) -> tuple[str, int, str]:
    """(host, port, scheme) from "host", "host:port", ":port" or "http(s)://host:port"."""
    value = (value or "").strip()
    scheme = "http"
    if "://" in value:
        scheme, value = value.split("://", 1)
    value = value.rstrip("/")
    host, port = value, DEFAULT_PORT if scheme == "http" else 443
    if value.startswith("["):  # IPv6 literal
        end = value.find("]")
        host, rest = value[1:end], value[end + 1 :]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        port = int(port_text)
    return host or DEFAULT_HOST, port, scheme


@dataclass
class Settings:
    host: str
    port: int
    models_dir: Path
    keep_alive: float
    num_parallel: int  # 0: choose automatically
    max_loaded_models: int  # 0: as many as fit
    max_queue: int
    context_length: int
    flash_attention: bool | None  # None: llama.cpp decides (on where the device supports it)
    kv_cache_type: str  # f16, q8_0, q4_0 (see kv_cache_settings)
    load_timeout: float
    debug: bool
    noprune: bool
    # Security, limits and operations (docs/security.md, docs/operations.md). Defaults keep a bare
    # `Settings(...)` usable in code that predates them.
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # LM_API_KEYS: comma-separated bearer tokens; empty = no auth
    api_keys_file: Path | None = None  # LM_API_KEYS_FILE: one token per line (re-read when it changes)
    origins: tuple[str, ...] = ()  # LM_ORIGINS: extra CORS origins (the local defaults always apply)
    max_body: int = 32 * 1024 * 1024  # LM_MAX_BODY: largest JSON request body (blob uploads excepted)
    max_json_depth: int = 64  # LM_MAX_JSON_DEPTH: deepest nesting of objects/arrays in a request body
    max_context: int = 1 << 20  # LM_MAX_CONTEXT: largest num_ctx a request may ask for
    max_predict: int = 0  # LM_MAX_PREDICT: most tokens one request may generate (0: no cap)
    max_messages: int = 4096  # LM_MAX_MESSAGES: most messages (or input items) in one request
    max_batch: int = 2048  # LM_MAX_BATCH: most inputs in one embedding request
    shutdown_timeout: float = 10.0  # LM_SHUTDOWN_TIMEOUT: grace for in-flight requests on SIGTERM
    prune_grace: float = 3600.0  # LM_PRUNE_GRACE: unreferenced blobs younger than this are kept
    log_format: str = "text"  # LM_LOG_FORMAT: text or json
    sched_spread: bool = False  # LM_SCHED_SPREAD: split every model across all GPUs, even one that fits one
    # LM_PIPELINE: split a model's slots over two llama.cpp contexts, so that one group is sampled while
    # the GPU computes the other's step (None: the default, on where the model is on a GPU; true: on the
    # CPU too, where it gains nothing but runs the same engine path)
    pipeline: bool | None = None
    # LM_RPC_WORKERS: ggml RPC workers (`lm worker`, "host:port") whose devices models are placed on too
    rpc_workers: tuple[str, ...] = ()
    # LM_REPLICAS: copies of a model that fits one GPU, one per GPU, requests spread by free slots
    # ("auto": one per GPU; 1: one copy, as before)
    replicas: int | str = 1
    # LM_BATCH_INVARIANT: kernels whose result for a sequence does not depend on the others in its batch
    # (llama.cpp's repacked CPU weights off), so that a seed gives the same text alone and under load
    # (None: the default, on where the model runs on the CPU only; false: llama.cpp's default kernels)
    batch_invariant: bool | None = None

    @property
    def engine_kv(self) -> tuple[str, str]:
        """(KV cache type, flash attention mode) as the runners get them."""
        kv, flash, _warning = kv_cache_settings(self.kv_cache_type, self.flash_attention)
        return kv, flash

    @classmethod
    def from_env(cls) -> "Settings":
        host, port, _ = parse_host(env("HOST"))
        models = env("MODELS") or platformdirs.user_data_dir("lm") + "/models"
        flash = env_tristate("FLASH_ATTENTION")
        kv_type, _mode, warning = kv_cache_settings(env("KV_CACHE_TYPE"), flash)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return cls(
            host=host,
            port=port,
            models_dir=Path(models).expanduser(),
            keep_alive=parse_duration(env("KEEP_ALIVE", "5m")),
            num_parallel=env_int("NUM_PARALLEL", 0),
            max_loaded_models=env_int("MAX_LOADED_MODELS", 0),
            max_queue=env_int("MAX_QUEUE", 512),
            context_length=env_int("CONTEXT_LENGTH", 4096),
            flash_attention=flash,
            kv_cache_type=kv_type,
            load_timeout=parse_duration(env("LOAD_TIMEOUT", "5m")),
            debug=env_bool("DEBUG"),
            noprune=env_bool("NOPRUNE"),
            api_keys=env_list("API_KEYS"),
            api_keys_file=Path(env("API_KEYS_FILE")).expanduser() if env("API_KEYS_FILE") else None,
            origins=env_list("ORIGINS"),
            max_body=env_size("MAX_BODY", 32 * 1024 * 1024),
            max_json_depth=env_int("MAX_JSON_DEPTH", 64),
            max_context=env_int("MAX_CONTEXT", 1 << 20),
            max_predict=env_int("MAX_PREDICT", 0),
            max_messages=env_int("MAX_MESSAGES", 4096),
            max_batch=env_int("MAX_BATCH", 2048),
            shutdown_timeout=env_duration("SHUTDOWN_TIMEOUT", "10s"),
            prune_grace=env_duration("PRUNE_GRACE", "1h"),
            log_format=(env("LOG_FORMAT", "text") or "text").strip().lower(),
            sched_spread=env_tristate("SCHED_SPREAD") or False,
            pipeline=env_tristate("PIPELINE"),
            rpc_workers=_rpc_workers(),
            replicas=_replicas(),
            batch_invariant=env_tristate("BATCH_INVARIANT"),
        )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.api_keys_file)


def client_base_url() -> str:
    """The daemon's URL as the CLI reaches it (a bind-all address is reached on loopback)."""
    host, port, scheme = parse_host(env("HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _rpc_workers() -> tuple[str, ...]:
    from runner.daemon.rpc_workers import WorkerError, parse_workers

    try:
        return tuple(str(e) for e in parse_workers(env("RPC_WORKERS")))
    except WorkerError as exc:
        raise SystemExit(f"Error: LM_RPC_WORKERS: {exc}") from None


def _replicas() -> int | str:
    value = (env("REPLICAS") or "1").strip().lower()
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise SystemExit(f"Error: LM_REPLICAS must be auto or a positive integer, got {value!r}")
