"""Settings from the environment: `LM_<NAME>`, falling back to `OLLAMA_<NAME>` so existing setups work."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
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


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value) -> float:
    """Seconds from a number of seconds or a Go duration string ("5m", "1h30m", "-1"). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"invalid duration {value!r}")
    return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


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
    flash_attention: bool
    kv_cache_type: str
    load_timeout: float
    debug: bool
    noprune: bool

    @classmethod
    def from_env(cls) -> "Settings":
        host, port, _ = parse_host(env("HOST"))
        models = env("MODELS") or platformdirs.user_data_dir("lm") + "/models"
        return cls(
            host=host,
            port=port,
            models_dir=Path(models).expanduser(),
            keep_alive=parse_duration(env("KEEP_ALIVE", "5m")),
            num_parallel=env_int("NUM_PARALLEL", 0),
            max_loaded_models=env_int("MAX_LOADED_MODELS", 0),
            max_queue=env_int("MAX_QUEUE", 512),
            context_length=env_int("CONTEXT_LENGTH", 4096),
            flash_attention=env_bool("FLASH_ATTENTION"),
            kv_cache_type=env("KV_CACHE_TYPE", "f16"),
            load_timeout=parse_duration(env("LOAD_TIMEOUT", "5m")),
            debug=env_bool("DEBUG"),
            noprune=env_bool("NOPRUNE"),
        )


def client_base_url() -> str:
    """The daemon's URL as the CLI reaches it (a bind-all address is reached on loopback)."""
    host, port, scheme = parse_host(env("HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
