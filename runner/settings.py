"""Settings from the environment: `LM_<NAME>`, falling back to `OLLAMA_<NAME>` so existing setups work.

Every setting is one entry of TABLE (name, default, parser, description, section): `Settings.from_env`
is built from it, README's settings table is generated from it (`python -m runner.settings --markdown`,
checked by tests/test_settings.py) and `lm serve --help` lists it. A setting read outside the daemon's
Settings (the CLI's, the runner process's) is an entry too, read with `setting(NAME)` or documented
where the process reading it cannot import this module's callers.

registry/ reads no environment: its settings (credentials, the bundled models' cache, transfer
streams) are entries here, and the daemon passes their values in.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import platformdirs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
TRACE = 5  # below logging.DEBUG, as Ollama's TRACE (slog -8) is below its DEBUG (-4)


def env(name: str, default: str | None = None) -> str | None:
    """The raw text of LM_<name>, else OLLAMA_<name>, else default (an empty value counts as unset)."""
    for prefix in ("LM_", "OLLAMA_"):
        value = os.environ.get(prefix + name)
        if value not in (None, ""):
            return value
    return default


# ---- parsers: text -> value; a ValueError's message completes "LM_<NAME> ..." --------------------

def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be an integer, got {text!r}") from None


SPEC_MAX_SEQUENCES = 4  # LM_SPEC_MAX_SEQUENCES unset (runner/engine/speculative.py's DEFAULT_MAX_SEQUENCES)


def parse_spec_max_sequences(text: str) -> int:
    """A count, negative as 0; text that is no integer is the default (never an error, as the engine
    read it before the table)."""
    try:
        return max(int(text), 0)
    except ValueError:
        return SPEC_MAX_SEQUENCES


def parse_profile_every(text: str) -> int:
    """LM_ENGINE_PROFILE: engine steps per profile line; 0 (or empty) is off, any other text than a
    count above 1 is every 200 steps (as the engine read it before the table)."""
    if not text or text == "0":
        return 0
    return int(text) if text.isdigit() and int(text) > 1 else 200


def parse_flag(text: str) -> bool:
    """On for 1/true/yes/on; anything else is off (never an error, as before the table)."""
    return text.strip().lower() in ("1", "true", "yes", "on")


_TRUE, _FALSE = ("1", "t", "true", "yes", "on"), ("0", "f", "false", "no", "off")


def parse_tristate(text: str) -> bool:
    """True / False (Go's ParseBool spellings and on/off, yes/no); unset is the entry's default (None)."""
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"must be true or false (1/0, on/off), got {text!r}")


def parse_list(text: str) -> tuple[str, ...]:
    """A comma-separated setting, spaces and quotes trimmed, empty items dropped."""
    return tuple(item.strip().strip("\"'").strip() for item in text.split(",") if item.strip().strip("\"'").strip())


def parse_path(text: str) -> Path:
    return Path(text).expanduser()


def parse_text(text: str) -> str:
    return text


def parse_lower(text: str) -> str:
    return text.strip().lower()


def parse_size_setting(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(f"must be a size in bytes (e.g. 32MiB), got {text!r}") from None


def parse_duration_setting(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(f"must be a duration (e.g. 10s, 5m), got {text!r}") from None


def parse_debug_level(text: str) -> int:
    """A logging level from Ollama's OLLAMA_DEBUG (envconfig.LogLevel): a true boolean is DEBUG; otherwise
    an integer n is slog level -4n (1 DEBUG, 2 TRACE, -1 WARN, -2 ERROR); false, 0 or anything else INFO."""
    value = text.strip()
    if value.lower() in _TRUE:
        return logging.DEBUG
    try:
        n = int(value)
    except ValueError:
        return logging.INFO
    return {0: logging.INFO, 1: logging.DEBUG, -1: logging.WARNING}.get(n, TRACE if n > 1 else logging.ERROR)


def parse_replicas(text: str) -> int | str:
    value = text.strip().lower()
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ValueError(f"must be auto or a positive integer, got {value!r}")


def parse_rpc_workers(text: str) -> tuple[str, ...]:
    from runner.ggml.rpc_client import WorkerError, parse_workers

    try:
        return tuple(str(e) for e in parse_workers(text))
    except WorkerError as exc:
        raise ValueError(f": {exc}") from None


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


def parse_host_setting(text: str) -> tuple[str, int, str]:
    try:
        return parse_host(text)
    except ValueError:
        raise ValueError(f"must be host, host:port or http(s)://host:port, got {text!r}") from None


# ---- the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str  # LM_<name>, falling back to OLLAMA_<name>
    default: Any  # the value when unset (already parsed; None: unset)
    parse: Callable[[str], Any]  # the text of a set variable -> its value (ValueError: a startup error)
    description: str  # README's "meaning" column, and `lm serve --help`'s
    section: str
    attr: str | None = None  # the Settings field it fills; None: read where it is used (`setting(name)`)
    shown_default: str | None = None  # README's default column, where the bare default would not say it
    variables: tuple[str, ...] = ()  # documented only: variables of other tools (HTTPS_PROXY, HF_TOKEN)

    @property
    def variable(self) -> str:
        return ", ".join(f"`{v}`" for v in self.variables) if self.variables else f"`LM_{self.name}`"

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None or self.default == ():
            return "unset"
        if self.default is False:
            return "off"
        return f"`{self.default}`" if isinstance(self.default, str) else str(self.default)

    def read(self) -> Any:
        """The setting's value from the environment; a bad value stops the program with its message."""
        text = env(self.name)
        if text is None:
            return self.default
        try:
            return self.parse(text)
        except ValueError as exc:
            tail = str(exc)
            raise SystemExit(f"Error: LM_{self.name}{tail if tail.startswith(':') else ' ' + tail}") from None


SERVER, MODELS, GPU, LIMITS, SECURITY, LOGS, STORE, REGISTRY, ENGINE, CLI = (
    "Daemon", "Models and memory", "GPUs and hosts", "Request limits", "Security", "Logs", "Model store",
    "Registries and downloads", "Runner process", "Command line")

TABLE: tuple[Setting, ...] = (
    Setting("HOST", (DEFAULT_HOST, DEFAULT_PORT, "http"), parse_host_setting,
            "where the daemon listens and the CLI connects (`host`, `host:port`, `:port`, `http(s)://host:port`)",
            SERVER, shown_default=f"`{DEFAULT_HOST}:{DEFAULT_PORT}`"),
    Setting("KEEP_ALIVE", 300.0, parse_duration_setting,
            "how long an idle model stays loaded (`0` unloads at once, negative never)", SERVER,
            attr="keep_alive", shown_default="`5m`"),
    Setting("NUM_PARALLEL", 0, parse_int, "sequences served at once per model", SERVER, attr="num_parallel",
            shown_default="auto (4 on CPU, as many as fit on a GPU)"),
    Setting("MAX_QUEUE", 512, parse_int, "requests waiting beyond the slots before 503", SERVER, attr="max_queue"),
    Setting("LOAD_TIMEOUT", 300.0, parse_duration_setting, "how long a model may take to load before the request "
            "fails", SERVER, attr="load_timeout", shown_default="`5m`"),
    Setting("SHUTDOWN_TIMEOUT", 10.0, parse_duration_setting, "on SIGTERM, how long in-flight requests may finish",
            SERVER, attr="shutdown_timeout", shown_default="`10s`"),
    Setting("MAX_LOADED_MODELS", 0, parse_int, "models kept loaded at once (`0`: 3)", MODELS,
            attr="max_loaded_models", shown_default="3"),
    Setting("CONTEXT_LENGTH", None, parse_int, "default `num_ctx` (a Modelfile's or request's `num_ctx` wins); "
            "unset, Ollama's rule: by the GPUs' total memory, 4096 below 23 GiB (and without a GPU), 32768 below "
            "47 GiB, 262144 above, at most the model's trained context", MODELS, attr="context_length",
            shown_default="by GPU memory (4096 on the CPU)"),
    Setting("KV_CACHE_TYPE", "f16", parse_text, "KV cache type: `f16`, `q8_0` (about half the memory per slot) "
            "or `q4_0`; a quantized cache needs flash attention", MODELS, attr="kv_cache_type"),
    Setting("FLASH_ATTENTION", None, parse_tristate, "`1` on, `0` off (a quantized KV cache then falls back to "
            "`f16`, with a warning)", MODELS, attr="flash_attention",
            shown_default="unset (llama.cpp decides; on for a quantized KV cache)"),
    Setting("PIPELINE", None, parse_tristate, "split a model's slots over two llama.cpp contexts, so one half is "
            "sampled on the CPU while the GPU computes the other's step (`true` also on the CPU, where it gains "
            "nothing; `false` for one context)", MODELS, attr="pipeline", shown_default="on with a GPU"),
    Setting("BATCH_INVARIANT", None, parse_tristate, "kernels whose result for a sequence does not depend on the "
            "others in its batch (llama.cpp's repacked CPU weights off), so that a fixed seed gives the same text "
            "alone and under load; `false` for llama.cpp's default kernels (see docs/performance.md for the cost)",
            MODELS, attr="batch_invariant", shown_default="on where a model runs on the CPU only"),
    Setting("SCHED_SPREAD", False, parse_tristate, "split every model across all GPUs by layers (otherwise only a "
            "model that fits no single GPU is split, in proportion to free memory)", GPU, attr="sched_spread"),
    Setting("REPLICAS", 1, parse_replicas, "`auto`: a model that fits one GPU gets a copy on each GPU (a number: "
            "on that many), requests going to the copy with the most free slots, instead of one copy split by "
            "layers; with one device (the CPU, or one GPU) one copy", GPU, attr="replicas", shown_default="`1`"),
    Setting("RPC_WORKERS", (), parse_rpc_workers, "`host:port,...` of `lm worker` processes (ggml's RPC server on "
            "other hosts): models are placed over this host's GPUs and the workers' devices by free memory (a model "
            "that fits this host's GPUs stays here); a worker serves one model at a time; docs/operations.md", GPU,
            attr="rpc_workers"),
    Setting("MAX_BODY", 32 * 1024 * 1024, parse_size_setting, "largest JSON request body (blob uploads excepted)",
            LIMITS, attr="max_body", shown_default="32MiB"),
    Setting("MAX_JSON_DEPTH", 64, parse_int, "deepest nesting of objects and arrays in a request body", LIMITS,
            attr="max_json_depth"),
    Setting("MAX_CONTEXT", 1 << 20, parse_int, "largest `num_ctx` a request may ask for", LIMITS,
            attr="max_context", shown_default="1Mi"),
    Setting("MAX_PREDICT", 0, parse_int, "most tokens one request may generate (`0`: no cap)", LIMITS,
            attr="max_predict", shown_default="none"),
    Setting("MAX_MESSAGES", 4096, parse_int, "most messages (or input items) in one request", LIMITS,
            attr="max_messages"),
    Setting("MAX_BATCH", 2048, parse_int, "most inputs in one embedding request", LIMITS, attr="max_batch"),
    Setting("API_KEYS", (), parse_list, "comma-separated bearer tokens the daemon requires (off when unset and "
            "`LM_API_KEYS_FILE` is unset)", SECURITY, attr="api_keys"),
    Setting("API_KEYS_FILE", None, parse_path, "a file of such tokens, one per line (re-read when it changes)",
            SECURITY, attr="api_keys_file"),
    Setting("ORIGINS", (), parse_list, "extra CORS origins allowed (the local ones always are)", SECURITY,
            attr="origins", shown_default="localhost origins"),
    Setting("DEBUG", logging.INFO, parse_debug_level, "log level, as Ollama's: `0`/`false` INFO, `1`/`true` DEBUG "
            "(runner output shown too), `2` TRACE, `-1` WARN, `-2` ERROR", LOGS, attr="log_level",
            shown_default="`0` (INFO)"),
    Setting("LOG_FORMAT", "text", parse_lower, "logs on stderr as text, or `json`: one JSON object per log line "
            "(with the request id)", LOGS, attr="log_format"),
    Setting("MODELS", None, parse_path, "the model store (Ollama's layout: point it at `~/.ollama/models` to "
            "use those models)", STORE, attr="models_dir", shown_default="platformdirs user data dir + `/models`"),
    Setting("NOPRUNE", False, parse_flag, "skip the startup check that removes partial files and unreferenced "
            "blobs", STORE, attr="noprune"),
    Setting("PRUNE_GRACE", 3600.0, parse_duration_setting, "unreferenced blobs younger than this are kept by the "
            "startup check", STORE, attr="prune_grace", shown_default="`1h`"),
    Setting("MAX_TRANSFER_STREAMS", 8, parse_int, "parallel ranged downloads per pull (partial downloads resume "
            "from `<models>/partial/`)", REGISTRY, attr="max_transfer_streams"),
    Setting("REGISTRY_AUTH", None, parse_text, "registry credentials: `host=user:pass,...` (wins over the config "
            "file)", REGISTRY, attr="registry_auth"),
    Setting("REGISTRY_CONFIG", None, parse_path, "a Docker-style `config.json` of registry credentials", REGISTRY,
            attr="registry_config", shown_default="`~/.docker/config.json`"),
    Setting("BUNDLED_CACHE", None, parse_path, "where the installer keeps the bundled models' GGUFs", REGISTRY,
            attr="bundled_cache", shown_default="platformdirs user cache dir + `/bundled`"),
    Setting("HTTPS_PROXY", None, parse_text, "the proxy pulls and pushes go through (https and http registries), "
            "and the hosts that bypass it; as in Python, a loopback registry is proxied unless `NO_PROXY` names "
            "it. The CLI reaches a daemon on this machine directly", REGISTRY,
            variables=("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")),
    Setting("HF_TOKEN", None, parse_text, "Hugging Face's own settings for `hf.co/...` pulls: the token for "
            "gated or private repositories, and the Hub's address", REGISTRY, variables=("HF_TOKEN", "HF_ENDPOINT")),
    Setting("SPEC_MAX_SEQUENCES", SPEC_MAX_SEQUENCES, parse_spec_max_sequences, "speculative decoding only while at most this many sequences decode "
            "together (per llama.cpp context; `0` turns it off); under more load drafts would cost steps more than "
            "they save", ENGINE, attr="spec_max_sequences"),
    Setting("ENGINE_PROFILE", 0, parse_profile_every, "`N`: every N engine steps, the runner logs where a step's "
            "time went (see docs/performance.md)", ENGINE, attr="engine_profile", shown_default="off"),
    Setting("API_KEY", None, parse_text, "the bearer token the CLI sends (one of the daemon's `LM_API_KEYS`)", CLI),
    Setting("NOHISTORY", False, parse_flag, "`1`: the interactive chat of `lm run` keeps no history file (otherwise "
            "the platformdirs user data dir + `/history`; arrow keys walk it across sessions)", CLI),
    Setting("NO_AUTOSTART", False, parse_flag, "`1`: the CLI does not start a daemon when none answers", CLI),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in TABLE if not s.variables}


def setting(name: str) -> Any:
    """The value of the table's setting `name` (a bad value stops the program with its message)."""
    return BY_NAME[name].read()


@dataclass
class Settings:
    """The daemon's settings: the fields TABLE names (`attr`), and host/port from LM_HOST."""

    host: str
    port: int
    models_dir: Path
    keep_alive: float
    num_parallel: int  # 0: choose automatically
    max_loaded_models: int  # 0: as many as fit
    max_queue: int
    context_length: int | None  # None: by GPU memory (runner/daemon/context_default.py)
    flash_attention: bool | None  # None: llama.cpp decides (on where the device supports it)
    kv_cache_type: str  # f16, q8_0, q4_0 (see kv_cache_settings)
    load_timeout: float
    debug: bool  # LM_DEBUG at DEBUG or finer: the runners' stderr is shown too
    noprune: bool
    # Defaults keep a bare `Settings(...)` usable in code that predates these; the meaning of each is its
    # TABLE entry's description.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_file: Path | None = None
    origins: tuple[str, ...] = ()
    max_body: int = 32 * 1024 * 1024
    max_json_depth: int = 64
    max_context: int = 1 << 20
    max_predict: int = 0
    max_messages: int = 4096
    max_batch: int = 2048
    shutdown_timeout: float = 10.0
    prune_grace: float = 3600.0
    log_format: str = "text"
    log_level: int = logging.INFO  # a `logging` level (TRACE below DEBUG), from LM_DEBUG
    sched_spread: bool = False
    pipeline: bool | None = None  # None: on where the model is on a GPU
    rpc_workers: tuple[str, ...] = ()
    replicas: int | str = 1
    batch_invariant: bool | None = None  # None: on where the model runs on the CPU only
    max_transfer_streams: int = 8
    registry_auth: str | None = field(default=None, repr=False)
    registry_config: Path | None = None
    bundled_cache: Path | None = None
    spec_max_sequences: int = SPEC_MAX_SEQUENCES  # handed to each runner (LaunchConfig)
    engine_profile: int = 0  # engine steps per profile line, 0: off (LaunchConfig.profile_every)

    def __post_init__(self) -> None:
        if self.debug and self.log_level > logging.DEBUG:  # Settings(debug=True) as code wrote it before
            self.log_level = logging.DEBUG

    @property
    def engine_kv(self) -> tuple[str, str]:
        """(KV cache type, flash attention mode) as the runners get them."""
        kv, flash, _warning = kv_cache_settings(self.kv_cache_type, self.flash_attention)
        return kv, flash

    @classmethod
    def from_env(cls) -> "Settings":
        values = {s.attr: s.read() for s in TABLE if s.attr}
        host, port, _ = setting("HOST")
        values["models_dir"] = values["models_dir"] or Path(platformdirs.user_data_dir("lm")) / "models"
        kv_type, _mode, warning = kv_cache_settings(values["kv_cache_type"], values["flash_attention"])
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        values["kv_cache_type"] = kv_type
        return cls(host=host, port=port, debug=values["log_level"] <= logging.DEBUG, **values)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.api_keys_file)


def client_base_url() -> str:
    """The daemon's URL as the CLI reaches it (a bind-all address is reached on loopback)."""
    host, port, scheme = setting("HOST")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# ---- the table as text: README's settings section and `lm serve --help` ----------------------------

README_BEGIN = "<!-- settings: generated by `python -m runner.settings --markdown` from runner/settings.py's TABLE -->"
README_END = "<!-- end of settings -->"


def sections() -> list[str]:
    return list(dict.fromkeys(s.section for s in TABLE))


def markdown() -> str:
    """README's settings tables, one per section, in TABLE's order."""
    lines = []
    for section in sections():
        lines += [f"### {section}", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [f"| {s.variable} | {s.default_text()} | {s.description} |" for s in TABLE if s.section == section]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def readme_block(readme: str) -> str:
    """The generated part of README.md (between the markers, without them)."""
    begin, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[begin:end].strip("\n") + "\n"


def with_readme_block(readme: str) -> str:
    begin, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[:begin] + "\n" + markdown() + "\n" + readme[end:]


def _plain(text: str) -> str:
    return text.replace("`", "")


def help_text() -> str:
    """The settings as `lm serve --help` lists them (typer's rich help keeps the lines as they are)."""
    out = ["Settings (environment; OLLAMA_* where the LM_* one is unset):"]
    for section in sections():
        out += ["", f"{section}:"]
        out += [f"  {_plain(s.variable)} ({_plain(s.default_text())}): {_plain(s.description)}"
                for s in TABLE if s.section == section]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.settings", description="lm's settings, from one table.")
    p.add_argument("--markdown", action="store_true", help="print README's settings tables")
    p.add_argument("--update-readme", type=Path, metavar="README", help="rewrite the tables in this README")
    args = p.parse_args(argv)
    if args.update_readme:
        args.update_readme.write_text(with_readme_block(args.update_readme.read_text()))
    elif args.markdown:
        sys.stdout.write(markdown())
    else:
        sys.stdout.write(help_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
